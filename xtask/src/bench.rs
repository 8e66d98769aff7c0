//! `cargo xtask bench`: builds agentd, agentd-control and agentd-bench in release mode and runs
//! `agentd-bench run`, which writes BENCHMARKS.md and BENCHMARKS.json (docs/benchmarks.md).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    cmd,
    vm::{self, KernelSpec, Payload},
    workspace,
};

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
    let built = workspace::build_executables(&[
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
        cmd::is_root(),
        "the benchmarks load eBPF programs: run `cargo xtask bench` as root"
    );
    crate::pseudofs::mount()?;
    let (agentd, control, bench) = build()?;
    let root = workspace::workspace_root();
    let out_dir = options.out_dir.clone().unwrap_or_else(|| {
        if options.smoke {
            root.join("target/bench-smoke")
        } else {
            root.clone()
        }
    });
    let lsm_rows = if wants_lsm_rows(&options.only) {
        Some(lsm_rows(options, &agentd, &control, &bench, &mut on_line)?)
    } else {
        None
    };
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
    if let Some(rows) = &lsm_rows {
        command.arg("--lsm-rows").arg(rows);
    }
    if options.smoke {
        command.arg("--smoke");
    }
    for row in &options.only {
        command.args(["--only", row]);
    }
    cmd::stream(&mut command, |line| on_line(line))
}

/// The rows measured in a QEMU guest, because this host's kernel refuses BPF LSM programs.
const LSM_ROWS: [&str; 2] = ["open-lsm", "prog-cost-lsm"];

/// The guest kernel of the LSM rows: the vm-systemd tier's, with BPF LSM on the command line.
const LSM_KERNEL: &str = crate::vm_systemd::KERNEL;

fn wants_lsm_rows(only: &[String]) -> bool {
    only.is_empty() || only.iter().any(|row| LSM_ROWS.contains(&row.as_str()))
}

/// The kernels a bench run of the rows `only` (all when empty) boots, for setup to fetch.
pub fn kernels(only: &[String]) -> Vec<KernelSpec> {
    if wants_lsm_rows(only) {
        vec![KernelSpec::Series(LSM_KERNEL.to_owned())]
    } else {
        Vec::new()
    }
}

/// What the guest runs: agentd-bench's `open` and `prog-cost` rows, its BENCHMARKS.json
/// printed between markers, then the result marker.
const LSM_SCRIPT: &str = r#"mkdir -p /tmp/bench
if /bin/agentd-bench run --agentd /bin/agentd --control /bin/agentd-control --out-dir /tmp/bench --repo / --only open --only prog-cost @SMOKE@; then
    echo AGENTD-BENCH-JSON-BEGIN
    cat /tmp/bench/BENCHMARKS.json
    echo AGENTD-BENCH-JSON-END
    echo "@PASS@"
else
    echo "@FAIL@"
fi
"#;

/// Boots the LSM kernel with agentd, agentd-control and agentd-bench, runs the `open` and
/// `prog-cost` rows there and returns the file holding the guest's BENCHMARKS.json.
fn lsm_rows(
    options: &Options,
    agentd: &Path,
    control: &Path,
    bench: &Path,
    on_line: &mut impl FnMut(&str),
) -> anyhow::Result<PathBuf> {
    // Fetched by setup (see [`kernels`]).
    let kernel = KernelSpec::Series(LSM_KERNEL.to_owned());
    let payload = Payload {
        tests: Vec::new(),
        agentd: agentd.to_owned(),
        helpers: vec![
            ("agentd-bench".to_owned(), bench.to_owned()),
            ("agentd-control".to_owned(), control.to_owned()),
        ],
        filter: None,
        script: Some(
            LSM_SCRIPT
                .replace("@SMOKE@", if options.smoke { "--smoke" } else { "" })
                .replace("@PASS@", vm::RESULT_PASS)
                .replace("@FAIL@", vm::RESULT_FAIL),
        ),
    };
    on_line(&format!(
        "bench: rows {} in a QEMU guest (kernel {LSM_KERNEL}, BPF LSM)",
        LSM_ROWS.join(", ")
    ));
    let timeout = Duration::from_mins(if options.smoke { 10 } else { 30 });
    let run = vm::run_tests(&kernel, &payload, None, None, 2, timeout, |line| {
        on_line(&format!("bench-vm| {line}"));
    })?;
    let out = workspace::workspace_root().join("target/bench-lsm.json");
    let json: Vec<&str> = run
        .console
        .iter()
        .skip_while(|line| !line.contains("AGENTD-BENCH-JSON-BEGIN"))
        .skip(1)
        .take_while(|line| !line.contains("AGENTD-BENCH-JSON-END"))
        .map(String::as_str)
        .collect();
    // An empty file when the guest printed nothing: agentd-bench then reports the rows' error.
    fs::write(&out, json.join("\n")).with_context(|| format!("writing {}", out.display()))?;
    if run.outcome != (vm::Outcome::Finished { passed: true }) {
        on_line(&format!(
            "bench: the guest did not finish the LSM rows: {:?}",
            run.outcome
        ));
    }
    Ok(out)
}
