//! Where things are and how they are built: the workspace root, the cache, and the cargo
//! builds every task shares (the same selection of packages, so that one task's build is the
//! next one's).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;
use cargo_metadata::{Artifact, Message};

use crate::cmd;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds `cargo build`-style targets and returns the executables cargo reports, by target name.
pub fn build_executables(args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("+ {}", cmd::display(&cmd));
    let mut child = cmd.spawn().context("starting cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut executables = Vec::new();
    for message in Message::parse_stream(std::io::BufReader::new(stdout)) {
        if let Message::CompilerArtifact(Artifact {
            executable: Some(executable),
            target,
            ..
        }) = message.context("reading cargo's messages")?
        {
            executables.push((target.name, executable.into_std_path_buf()));
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "`{}` failed: {status}",
        cmd::display(&cmd)
    );
    Ok(executables)
}

/// Builds the binaries of `packages` in release mode: (name, path).
pub fn build_release_binaries(packages: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    build_binaries(packages, true)
}

/// Builds the binaries of `packages`: (name, path). Cargo resolves features per selection of
/// packages, so every task that needs agentd selects the same ones (`agentd` and
/// `agentd-control`): the debug build one tier made is the one the next task (`run`, another
/// tier) finds up to date.
pub fn build_binaries(packages: &[&str], release: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut args = vec!["build", "--bins"];
    if release {
        args.push("--release");
    }
    for package in packages {
        args.extend(["--package", package]);
    }
    build_executables(&args)
}

/// Builds the agentd binary and returns its path.
pub fn build_agentd(release: bool) -> anyhow::Result<PathBuf> {
    // The same selection as every other task's build, so that the build is shared.
    build_binaries(&["agentd", "agentd-control"], release)?
        .into_iter()
        .find_map(|(name, path)| (name == "agentd").then_some(path))
        .context("cargo built no agentd binary")
}

/// Where downloads are kept between runs: `$AGENTD_CACHE_DIR`, else `$XDG_CACHE_HOME/agentd`,
/// else `~/.cache/agentd`. Everything in it can be deleted; it is fetched again when needed.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("AGENTD_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("agentd")
    } else {
        let home = std::env::var_os("HOME").context("HOME is not set; set AGENTD_CACHE_DIR")?;
        PathBuf::from(home).join(".cache/agentd")
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
