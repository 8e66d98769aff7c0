//! `cargo xtask bench`: builds agentd, agentd-control and agentd-bench in release mode and runs
//! `agentd-bench run`, which writes BENCHMARKS.md and BENCHMARKS.json (docs/benchmarks.md).

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{cmd, test};

pub struct Options {
    pub smoke: bool,
    pub only: Vec<String>,
    /// Where the results go: the workspace root for a full run, target/bench-smoke for a smoke
    /// run (so that a smoke never overwrites the committed results).
    pub out_dir: Option<PathBuf>,
}

/// Builds the three binaries and returns (agentd, agentd-control, agentd-bench).
fn build() -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    // One cargo invocation, so that all three share one feature resolution: agentd-bench links
    // agentd's library (row 7 applies decisions with its `access` module), and a second
    // resolution would build agentd, and its kernel programs, twice.
    let built = test::build_executables(&[
        "build",
        "--release",
        "--package",
        "agentd",
        "--package",
        "agentd-control",
        "--package",
        "agentd-bench",
    ])?;
    let find = |name: &str| {
        built
            .iter()
            .find_map(|(target, path)| (target == name).then(|| path.clone()))
            .with_context(|| format!("cargo built no {name} binary"))
    };
    Ok((
        find("agentd")?,
        find("agentd-control")?,
        find("agentd-bench")?,
    ))
}

/// Runs the benchmarks, streaming their output through `on_line`. Returns whether every
/// harness worked (a missed target is not a failure).
pub fn run(options: &Options, mut on_line: impl FnMut(&str)) -> anyhow::Result<bool> {
    anyhow::ensure!(
        crate::is_root(),
        "the benchmarks load eBPF programs: run `cargo xtask bench` as root"
    );
    crate::mount_pseudo_filesystems()?;
    let (agentd, control, bench) = build()?;
    let root = test::workspace_root();
    let out_dir = options.out_dir.clone().unwrap_or_else(|| {
        if options.smoke {
            root.join("target/bench-smoke")
        } else {
            root.clone()
        }
    });
    let mut command = Command::new(bench);
    command
        .arg("run")
        .arg("--agentd")
        .arg(agentd)
        .arg("--control")
        .arg(control)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--repo")
        .arg(&root);
    if options.smoke {
        command.arg("--smoke");
    }
    for row in &options.only {
        command.args(["--only", row]);
    }
    cmd::stream(&mut command, |line| on_line(line))
}
