//! agentd's build and test tasks: `cargo xtask --help`.

#![allow(
    clippy::doc_markdown,
    reason = "doc comments on the CLI types are --help text for users, not rustdoc"
)]

mod bench;
mod cmd;
mod fuzz;
mod install;
mod pseudofs;
mod run;
mod setup;
mod test;
mod tier_result;
mod vm;
mod vm_modules;
mod vm_systemd;
mod workspace;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    test::Tier,
    vm::{Accel, KernelSpec, VmOptions},
};

/// Build, set up and test agentd. Start with `cargo xtask run` (build and start the daemon)
/// or `cargo xtask test` (every test tier). Both run `setup` first.
#[derive(Parser)]
#[command(bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AccelArg {
    /// KVM where a quick probe boot succeeds, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl AccelArg {
    fn choice(self) -> Option<Accel> {
        match self {
            Self::Auto => None,
            Self::Kvm => Some(Accel::Kvm),
            Self::Tcg => Some(Accel::Tcg),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
struct VmArgs {
    /// Kernel to boot: 6.1 (Debian 12's), 6.12, or a Debian package name. Repeat for a matrix.
    #[arg(long = "kernel", value_name = "KERNEL", default_values = ["6.1", "6.12"])]
    kernels: Vec<KernelSpec>,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Seconds the guest may run (boot and tests) before the run counts as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    timeout: u64,
    /// Run only the tests whose names contain this (as `cargo test NAME`).
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
}

impl VmArgs {
    fn options(&self) -> VmOptions {
        VmOptions {
            kernels: self.kernels.clone(),
            accel: self.accel.choice(),
            timeout: Duration::from_secs(self.timeout),
            filter: self.filter.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): Debian packages (qemu-system-x86,
    /// busybox-static, cpio, binutils, postgresql, systemd, mmdebstrap), rust-src for nightly,
    /// bpf-linker 0.10.3, the VM kernels and the vm-systemd tier's Debian root file system,
    /// cached under ~/.cache/agentd.
    Setup {
        /// Kernels to fetch for the vm tier.
        #[arg(long = "kernel", value_name = "KERNEL", default_values = ["6.1", "6.12"])]
        kernels: Vec<KernelSpec>,
    },
    /// Build the cargo-fuzz targets in fuzz/ (nightly) and run each for a bounded time from
    /// its seed corpus: policy_yaml (the control plane's policy YAML), host_policy (agentd's
    /// TOML policy, parsed and checked), rpc_requests (every RPC's request through the real
    /// service over SQLite). Prints the executions of each and exits non-zero on a finding,
    /// which libFuzzer leaves in fuzz/artifacts/TARGET/. See docs/testing.md.
    Fuzz {
        /// Target to run; repeat for several. Default: all of them.
        #[arg(long = "target", value_name = "TARGET")]
        targets: Vec<String>,
        /// Seconds each target runs.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        seconds: u64,
    },
    /// Build agentd with its embedded eBPF object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build and start the whole system in the foreground: a control plane on
    /// 127.0.0.1:7443 (SQLite under ~/.cache/agentd/run, the demo agent registered) and agentd
    /// enrolled with it, printing live events. Ctrl-C stops both and detaches everything agentd
    /// attached. Needs root. Without `--policy`, agentd applies examples/agents.toml (one agent,
    /// `demo`: try `agentd launch --agent demo -- sh`).
    Run {
        /// Arguments after `--` go to `agentd run`, e.g. `cargo xtask run -- --format json`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run test tiers (default: all) and print a summary. Exits non-zero when any
    /// test fails.
    Test {
        /// Tier to run; repeat to run several. Default: all of them, in the order unit, control,
        /// fuzz, host, vm, vm-systemd, bench.
        #[arg(long = "tier", value_enum)]
        tiers: Vec<Tier>,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Build release binaries and install agentd and its control plane as systemd services:
    /// /usr/local/sbin/{agentd,agentd-control}, /usr/local/bin/agentctl, the units in
    /// /etc/systemd/system, /etc/agentd/agentd.toml (kept if present) and the state
    /// directories. Then `systemctl enable --now agentd`.
    Install {
        /// Install under this directory instead of / (for packaging).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Remove the binaries and units instead (configuration and state stay).
        #[arg(long)]
        uninstall: bool,
        /// With --uninstall: also remove /etc/agentd and the state and log directories.
        #[arg(long, requires = "uninstall")]
        purge: bool,
    },
    /// Lint every crate with clippy, warnings as errors: the userspace crates and the tests on
    /// stable, the eBPF crate on nightly for bpfel-unknown-none.
    Clippy,
    /// Run the benchmarks (root) and write BENCHMARKS.md and BENCHMARKS.json at the repository
    /// root: overhead with ÷ without agentd, program cost, event pipeline, control-plane scale,
    /// risk to quarantine, SVIDs from the host cache and their issuance. See docs/benchmarks.md.
    Bench {
        /// Every row briefly, to prove the harness works; writes to target/bench-smoke.
        #[arg(long)]
        smoke: bool,
        /// Only this row (repeatable): connect, untagged, open, prog-cost, open-lsm,
        /// prog-cost-lsm (these two run in a QEMU guest with BPF LSM), pipeline, policy-eval,
        /// propagation, control-plane, risk-quarantine, svid-cache, svid-issuance. Other rows
        /// are kept from the previous BENCHMARKS.json.
        #[arg(long = "only", value_name = "ROW")]
        only: Vec<String>,
        /// Write the results here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Run the vm tier alone: build an initramfs with the test binaries, boot each kernel with
    /// BPF LSM under QEMU, run the tests inside and report.
    VmTest {
        #[command(flatten)]
        vm: VmArgs,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask test`: sets up what the chosen tiers need, then runs them.
fn test_task(mut tiers: Vec<Tier>, vm: &VmArgs) -> anyhow::Result<bool> {
    if tiers.is_empty() {
        tiers = vec![
            Tier::Unit,
            Tier::Control,
            Tier::Fuzz,
            Tier::Host,
            Tier::Vm,
            Tier::VmSystemd,
            Tier::Bench,
        ];
    }
    tiers.sort();
    tiers.dedup();
    let mut kernels = if tiers.contains(&Tier::Vm) {
        vm.kernels.clone()
    } else {
        Vec::new()
    };
    let vm_systemd = tiers.contains(&Tier::VmSystemd);
    let systemd_kernel = KernelSpec::Series(vm_systemd::KERNEL.to_owned());
    if vm_systemd && !kernels.contains(&systemd_kernel) {
        kernels.push(systemd_kernel);
    }
    if tiers.contains(&Tier::Bench) {
        // The bench smoke runs every row, the BPF LSM rows in a guest.
        for kernel in bench::kernels(&[]) {
            if !kernels.contains(&kernel) {
                kernels.push(kernel);
            }
        }
    }
    setup::run(&setup::Options {
        kernels,
        vm_systemd,
        fuzz: tiers.contains(&Tier::Fuzz),
    })?;
    if tiers
        .iter()
        .any(|tier| matches!(tier, Tier::Host | Tier::Bench))
        && cmd::is_root()
    {
        // The same step as `run` and `bench`: a newly booted machine has no tracefs or
        // securityfs mounted.
        pseudofs::mount()?;
    }
    test::run(&tiers, &vm.options())
}

/// `cargo xtask fuzz`: every target (or those named) for `seconds` each.
fn fuzz_task(targets: Vec<String>, seconds: u64) -> anyhow::Result<bool> {
    setup::run(&setup::Options {
        fuzz: true,
        ..setup::Options::default()
    })?;
    let targets = if targets.is_empty() {
        fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        targets
    };
    let outcomes = fuzz::run_all(
        &workspace::workspace_root(),
        &targets,
        Duration::from_secs(seconds),
    )?;
    for outcome in &outcomes {
        println!("{outcome}");
    }
    Ok(outcomes.iter().all(fuzz::Outcome::ok))
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Task::Setup { kernels } => setup::run(&setup::Options {
            kernels,
            vm_systemd: true,
            fuzz: true,
        })?,
        Task::Fuzz { targets, seconds } => return fuzz_task(targets, seconds),
        Task::Build { release } => {
            setup::run(&setup::Options::default())?;
            let agentd = workspace::build_agentd(release)?;
            println!("built {}", agentd.display());
        }
        Task::Install {
            root,
            uninstall,
            purge,
        } => {
            if uninstall {
                install::uninstall(&root, purge)?;
            } else {
                let binaries = workspace::build_release_binaries(&["agentd", "agentd-control"])?;
                install::install(&root, &binaries)?;
                install::verify(&root)?;
                println!("installed; start with: systemctl enable --now agentd");
            }
        }
        Task::Run { args } => {
            anyhow::ensure!(
                cmd::is_root(),
                "agentd loads eBPF programs: run `cargo xtask run` as root"
            );
            let status = run::run(&args)?;
            return Ok(status.success());
        }
        Task::Test { tiers, vm } => return test_task(tiers, &vm),
        Task::Clippy => {
            setup::run(&setup::Options::default())?;
            cmd::run(workspace::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            cmd::run(workspace::cargo().args([
                "clippy",
                "--package",
                "agentd-tests",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            cmd::run(
                Command::new("cargo")
                    .current_dir(workspace::workspace_root())
                    .args([
                        &format!("+{}", setup::NIGHTLY),
                        "clippy",
                        "--package",
                        "agentd-ebpf",
                    ])
                    .args([
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--release",
                    ])
                    .args(["--", "-D", "warnings"])
                    // The cfg aya-build passes when it builds the object for real.
                    .env(
                        "CARGO_ENCODED_RUSTFLAGS",
                        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                    ),
            )?;
        }
        Task::Bench {
            smoke,
            only,
            out_dir,
        } => {
            setup::run(&setup::Options {
                kernels: bench::kernels(&only),
                vm_systemd: false,
                fuzz: false,
            })?;
            let options = bench::Options {
                smoke,
                only,
                out_dir,
            };
            return bench::run(&options, |line| println!("{line}"));
        }
        Task::VmTest { vm } => {
            setup::run(&setup::Options {
                kernels: vm.kernels.clone(),
                vm_systemd: false,
                fuzz: false,
            })?;
            let results = test::vm_tier(&vm.options())?;
            return Ok(test::summarize(&results));
        }
    }
    Ok(true)
}
