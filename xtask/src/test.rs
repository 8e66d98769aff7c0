//! `cargo xtask test`: runs the tiers and ends with one summary line per tier and the plain
//! `N passed, N failed` line.

use std::{process::Command, time::Duration};

use anyhow::Context as _;

use crate::{
    cmd,
    tier_result::TierResult,
    vm::{self, Outcome, Payload, VmOptions},
    workspace::{build_agentd, build_binaries, build_executables, cargo, workspace_root},
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

fn unit() -> anyhow::Result<TierResult> {
    // The default members (agentd, bench, agentd-common, agentd-proto, agentd-control, xtask):
    // the control plane's API tests run here against SQLite.
    cargo_test(
        "unit",
        cargo().arg("test").env(
            "AGENTD_TEST_PYTHON",
            crate::setup::python_venv()?.join("bin/python"),
        ),
    )
}

fn control() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("control");
    if !cmd::is_root() {
        result.fail("needs root: the tests run PostgreSQL as the postgres user");
        return Ok(result);
    }
    // Both backends: a PostgreSQL that cannot start fails the tier, it is never skipped.
    cargo_test(
        "control",
        cargo()
            .args(["test", "--package", "agentd-control", "--test", "api"])
            .env("AGENTD_CONTROL_TEST_BACKENDS", "sqlite,postgres")
            .env(
                "AGENTD_TEST_PYTHON",
                crate::setup::python_venv()?.join("bin/python"),
            ),
    )
}

fn host() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("host");
    if !cmd::is_root() {
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
            .env("AGENTCTL_BIN", binary("agentctl")?)
            .env(
                "AGENTD_TEST_PYTHON",
                crate::setup::python_venv()?.join("bin/python"),
            ),
    )
}

fn bench() -> anyhow::Result<TierResult> {
    let mut result = TierResult::new("bench");
    if !cmd::is_root() {
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
