//! Builds `agentd-ebpf` for `bpfel-unknown-none` (nightly, `-Z build-std=core`, bpf-linker) and
//! leaves the object in `OUT_DIR/agentd`, where `src/ebpf.rs` embeds it in the binary.
//!
//! `AYA_BUILD_SKIP=1` writes an empty object instead, so that `cargo check`, clippy and unit tests
//! work on a machine without the eBPF toolchain. A binary built that way refuses to start and says
//! why (`agentd::ebpf::LoadError::NoObject`).

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use cargo_metadata::{Metadata, MetadataCommand, Package};

const EBPF_PACKAGE: &str = "agentd-ebpf";
/// The name of the eBPF crate's binary target, and so of the object in `OUT_DIR`.
const EBPF_OBJECT: &str = "agentd";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        let stub = out_dir.join(EBPF_OBJECT);
        fs::write(&stub, []).with_context(|| format!("writing {}", stub.display()))?;
        return Ok(());
    }

    let Metadata { packages, .. } = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let Package { manifest_path, .. } = packages
        .into_iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found in the workspace"))?;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{manifest_path} has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
