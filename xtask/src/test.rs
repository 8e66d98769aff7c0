//! `cargo xtask test`: runs the tiers and ends with one summary line per tier and the plain
//! `N passed, N failed` line.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use cargo_metadata::{Artifact, Message};

use crate::{
    cmd,
    vm::{self, Accel, KernelSpec, Outcome, Payload},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Tier {
    /// `cargo test` of the userspace crates; no privileges.
    Unit,
    /// The control plane's API tests against SQLite and a PostgreSQL server they start; root
    /// (PostgreSQL runs as the `postgres` user).
    Control,
    /// Every cargo-fuzz target in fuzz/ for a bounded time (`cargo xtask fuzz`); fails on a
    /// finding.
    Fuzz,
    /// Real eBPF on the running kernel; root.
    Host,
    /// A distribution kernel with BPF LSM under QEMU.
    Vm,
    /// agentd and its control plane as systemd services in a Debian userspace under QEMU
    /// (6.12, BPF LSM), reporting healthy; root.
    VmSystemd,
    /// A short smoke of every benchmark (`cargo xtask bench --smoke`); root. Fails only when a
    /// harness breaks, never on a missed target.
    Bench,
}

/// The counts of one tier (or one kernel of the vm tier).
#[derive(Debug, Default)]
pub struct TierResult {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// Why the tier failed when no test result says so (a build error, a boot failure...).
    pub error: Option<String>,
}

impl TierResult {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds the counts of a libtest `test result:` line, if `line` is one.
    fn count(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let number_before = |word: &str| -> Option<u64> {
            let words: Vec<&str> = rest
                .split([' ', ';', '.'])
                .filter(|w| !w.is_empty())
                .collect();
            let at = words.iter().position(|w| *w == word)?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        };
        self.passed += number_before("passed").unwrap_or(0);
        self.failed += number_before("failed").unwrap_or(0);
    }

    /// Records a failure that no test counted: it still counts as one failed test, so the
    /// closing line can never read "0 failed" for a tier that did not run.
    pub fn fail(&mut self, why: impl Into<String>) {
        if self.failed == 0 {
            self.failed = 1;
        }
        self.error = Some(why.into());
    }

    fn ok(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }
}

impl fmt::Display for TierResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} passed, {} failed",
            self.name, self.passed, self.failed
        )?;
        if let Some(error) = &self.error {
            write!(f, " ({error})")?;
        }
        Ok(())
    }
}

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

/// Runs a `cargo test` command, echoing its output and counting its results.
fn cargo_test(name: &str, cmd: &mut Command) -> anyhow::Result<TierResult> {
    let mut result = TierResult::new(name);
    let success = cmd::stream(cmd, |line| {
        println!("{line}");
        result.count(line);
    })?;
    if !success && result.failed == 0 {
        result.fail("cargo test failed before any test failed: see the build output above");
    }
    Ok(result)
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

fn unit() -> anyhow::Result<TierResult> {
    // The default members: agentd, agentd-common and xtask.
    cargo_test("unit", cargo().arg("test"))
}

fn control() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("control");
    if !crate::is_root() {
        result.fail("needs root: the tests run PostgreSQL as the postgres user");
        return Ok(result);
    }
    // Both backends: a PostgreSQL that cannot start fails the tier, it is never skipped.
    cargo_test(
        "control",
        cargo()
            .args(["test", "--package", "agentd-control", "--test", "api"])
            .env("AGENTD_CONTROL_TEST_BACKENDS", "sqlite,postgres"),
    )
}

fn host() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("host");
    if !crate::is_root() {
        result.fail("needs root: real eBPF programs are loaded into the running kernel");
        return Ok(result);
    }
    let built = build_binaries(&["agentd", "agentd-control"], false)?;
    let binary = |name: &str| {
        built
            .iter()
            .find_map(|(built, path)| (built == name).then(|| path.clone()))
            .with_context(|| format!("cargo built no {name} binary"))
    };
    cargo_test(
        "host",
        cargo()
            .args([
                "test",
                "--package",
                "agentd-tests",
                "--test",
                "host",
                "--test",
                "fleet",
                // Both test binaries run even when the first has a failure.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .env("AGENTD_BIN", binary("agentd")?)
            .env("AGENTD_CONTROL_BIN", binary("agentd-control")?)
            .env("AGENTCTL_BIN", binary("agentctl")?),
    )
}

fn bench() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("bench");
    if !crate::is_root() {
        result.fail("needs root: the benchmarks load eBPF programs");
        return Ok(result);
    }
    let options = crate::bench::Options {
        smoke: true,
        only: Vec::new(),
        out_dir: None,
    };
    let success = crate::bench::run(&options, |line| {
        println!("{line}");
        result.count(line);
    })?;
    if !success && result.failed == 0 {
        result.fail("agentd-bench failed before any row finished: see the output above");
    }
    Ok(result)
}

/// Options of the vm tier.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub kernels: Vec<KernelSpec>,
    pub accel: Option<Accel>,
    pub timeout: Duration,
    /// Run only the tests whose names contain this.
    pub filter: Option<String>,
}

/// Builds the test binaries, boots each kernel and counts the results printed inside.
pub fn vm_tier(options: &VmOptions) -> anyhow::Result<Vec<TierResult>> {
    let built = build_executables(&[
        "test",
        "--no-run",
        "--package",
        "agentd-tests",
        "--test",
        "vm",
        "--test",
        "host",
    ])?;
    let (tests, helpers): (Vec<_>, Vec<_>) = built
        .into_iter()
        .partition(|(name, _)| name == "vm" || name == "host");
    let payload = Payload {
        tests,
        agentd: build_agentd(false)?,
        helpers,
        filter: options.filter.clone(),
        script: None,
    };
    // The guests boot side by side, one virtual CPU each, as many at once as the host has
    // cores: under TCG a guest's tests run on one host core anyway (one test at a time, and
    // agentd's start-up is mostly the verifier, single-threaded). One virtual CPU also keeps
    // TCG clear of cross-CPU code patching: with two, a 6.12 guest hit int3 oops while
    // programs attached and detached (`text_poke` on one vCPU, the patched code running on
    // the other), alone as well as beside another guest.
    let count = options.kernels.len();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runs: Vec<anyhow::Result<vm::Run>> = options
        .kernels
        .chunks(cores.max(1))
        .enumerate()
        .flat_map(|(chunk, kernels)| {
            let payload = &payload;
            std::thread::scope(|scope| {
                let handles: Vec<_> = kernels
                    .iter()
                    .enumerate()
                    .map(|(offset, kernel)| {
                        // The host tests are shared out among the guests (each runs on one
                        // guest kernel, and all of them on the host's in the host tier); the
                        // vm tests run whole on every kernel.
                        let shard = Some(vm::Shard {
                            index: chunk * cores + offset,
                            count,
                        });
                        scope.spawn(move || {
                            vm::run_tests(
                                kernel,
                                payload,
                                shard,
                                options.accel,
                                1,
                                options.timeout,
                                |line| println!("vm {kernel}| {line}"),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest's thread panicked")))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results = Vec::new();
    for (kernel, run) in options.kernels.iter().zip(runs) {
        let mut result = TierResult::new(format!("vm ({kernel})"));
        let run = match run {
            Ok(run) => run,
            Err(err) => {
                result.fail(format!("{err:#}"));
                results.push(result);
                continue;
            }
        };
        for line in &run.console {
            result.count(line);
        }
        match run.outcome {
            Outcome::Finished { passed: true } => {}
            Outcome::Finished { passed: false } => {
                if result.failed == 0 {
                    result
                        .fail("a test binary failed without a test result: see the console above");
                }
            }
            Outcome::BootFailure(why) => result.fail(format!("boot failure: {why}")),
            Outcome::TimedOut(after) => result.fail(format!("timed out after {after:?}")),
        }
        results.push(result);
    }
    Ok(results)
}

/// Runs the tiers in order and prints the summary. Returns whether everything passed.
pub fn run(tiers: &[Tier], vm_options: &VmOptions) -> anyhow::Result<bool> {
    let mut results = Vec::new();
    for tier in tiers {
        println!("== tier {tier:?} ==");
        match tier {
            Tier::Unit => results.push(unit()?),
            Tier::Control => results.push(control()?),
            Tier::Fuzz => results.push(fuzz_tier()),
            Tier::Host => results.push(host()?),
            Tier::Vm => results.extend(vm_tier(vm_options)?),
            Tier::VmSystemd => results.push(crate::vm_systemd::tier(vm_options)),
            Tier::Bench => results.push(bench()?),
        }
    }
    Ok(summarize(&results))
}

/// Seconds each fuzz target runs in the fuzz tier.
const FUZZ_TIER_SECS: u64 = 60;

/// The fuzz tier: one test per target, passed when its bounded run found nothing.
fn fuzz_tier() -> TierResult {
    let mut result = TierResult::new("fuzz");
    let targets: Vec<String> = crate::fuzz::TARGETS
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    match crate::fuzz::run_all(
        &workspace_root(),
        &targets,
        Duration::from_secs(FUZZ_TIER_SECS),
    ) {
        Ok(outcomes) => {
            for outcome in outcomes {
                println!("{outcome}");
                if outcome.ok() {
                    result.passed += 1;
                } else {
                    result.failed += 1;
                    result.error = Some(match result.error.take() {
                        Some(before) => format!("{before}; {outcome}"),
                        None => outcome.to_string(),
                    });
                }
            }
        }
        Err(err) => result.fail(format!("{err:#}")),
    }
    result
}

/// Prints one line per tier and the closing `N passed, N failed` line.
pub fn summarize(results: &[TierResult]) -> bool {
    println!("== summary ==");
    for result in results {
        println!("{result}");
    }
    let passed: u64 = results.iter().map(|r| r.passed).sum();
    let failed: u64 = results.iter().map(|r| r.failed).sum();
    println!("{passed} passed, {failed} failed");
    results.iter().all(TierResult::ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_result_lines_are_summed() {
        let mut result = TierResult::new("unit");
        result.count("test result: ok. 15 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        result.count(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        result.count("running 4 tests");
        assert_eq!((result.passed, result.failed), (18, 2));
        assert!(!result.ok());
    }

    #[test]
    fn a_tier_that_could_not_run_counts_as_a_failure() {
        let mut result = TierResult::new("vm (6.1)");
        result.fail("boot failure: no boot marker within 120s");
        assert_eq!(result.failed, 1);
        assert_eq!(
            result.to_string(),
            "vm (6.1): 0 passed, 1 failed (boot failure: no boot marker within 120s)"
        );
    }
}
