//! Generates the host side of the control-plane API from the proto files the control plane
//! serves (`agentd-control/proto`, the one source of the `agentd.v1` package): clients only, with
//! protox, so no system protoc is needed.

use anyhow::Context as _;

const PROTO_ROOT: &str = "../agentd-control/proto";
const PROTOS: &[&str] = &["agentd/v1/host.proto"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let protos: Vec<String> = PROTOS
        .iter()
        .map(|proto| format!("{PROTO_ROOT}/{proto}"))
        .collect();
    let descriptors =
        protox::compile(&protos, [PROTO_ROOT]).context("compiling the proto files")?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds_with_config(descriptors, prost_build::Config::new())
        .context("generating the gRPC client code")?;
    Ok(())
}
