//! Compiles `proto/agentd/v1/*.proto`, the one source of the `agentd.v1` package, with protox
//! (pure Rust: no system protoc needed) and generates the prost messages with their type names,
//! the tonic clients (feature `client`) and servers (feature `server`). The encoded descriptor
//! set is written next to them, for agentctl's JSON output and for the tests that list every
//! method of every service.

use std::path::PathBuf;

use anyhow::Context as _;
use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/agentd/v1/registry.proto",
    "proto/agentd/v1/governance.proto",
    "proto/agentd/v1/access.proto",
    "proto/agentd/v1/audit.proto",
    "proto/agentd/v1/host.proto",
    "proto/agentd/v1/auth.proto",
    "proto/agentd/v1/policy.proto",
    "proto/agentd/v1/risk.proto",
    "proto/agentd/v1/credential.proto",
];

/// The SPIFFE Workload API (no package), generated on its own so that the `agentd.v1`
/// descriptor set lists only agentd's services.
const WORKLOAD_PROTO: &str = "proto/spiffe/workload.proto";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"]).context("compiling the proto files")?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    std::fs::write(
        out_dir.join("agentd_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )
    .context("writing the descriptor set")?;
    // Type names (`prost::Name`) let agentctl find each message's descriptor for JSON output.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds_with_config(descriptors, config)
        .context("generating the gRPC code")?;
    let workload =
        protox::compile([WORKLOAD_PROTO], ["proto"]).context("compiling the Workload API")?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(workload)
        .context("generating the Workload API's gRPC code")?;
    Ok(())
}
