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
    share_ebpf_target_dir()?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

/// aya-build builds the eBPF crate in a cargo target directory inside `OUT_DIR`, which is new
/// for every variant of this build script's run (debug and release, `cargo test` and `cargo
/// build` of different package sets): each would rebuild `core` and the programs from scratch
/// (about 90 s here). Pointing that directory at one shared `<target>/agentd-ebpf` makes every
/// variant after the first a no-op build of an unchanged object; cargo's own lock serializes
/// concurrent builds in it.
fn share_ebpf_target_dir() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // OUT_DIR is <target>/<profile>/build/agentd-<hash>/out (or with a target triple in
    // between): the target directory is the ancestor that holds `CACHEDIR.TAG`.
    let Some(target_dir) = out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    else {
        return Ok(());
    };
    let shared = target_dir.join("agentd-ebpf");
    let link = out_dir.join("aya-build").join("target").join(EBPF_PACKAGE);
    if fs::read_link(&link).is_ok_and(|to| to == shared) {
        return Ok(());
    }
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let parent = link.parent().context("the link has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if link.is_dir() && !link.is_symlink() {
        fs::remove_dir_all(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}
