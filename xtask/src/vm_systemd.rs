//! The vm-systemd tier: agentd and its control plane installed as systemd services in a Debian
//! userspace, booted under QEMU, and seen to run healthy.
//!
//! 1. Setup builds a minimal Debian 12 root file system with systemd (mmdebstrap from the
//!    machine's apt sources), once, cached under `~/.cache/agentd/vm-systemd/`.
//! 2. Each run copies it, installs agentd there with `cargo xtask install`'s own code (debug
//!    binaries, debug info stripped), checks the units with `systemd-analyze verify`, enables
//!    them as `systemctl enable` does, adds the guest's check units (`xtask/vm-systemd/`) and
//!    packs the whole tree as an initramfs whose `/init` is systemd.
//! 3. The 6.12 kernel boots it with BPF LSM. systemd starts the enabled units; the check unit
//!    waits for their start jobs, prints what systemd and `agentd status` say on the serial
//!    console, stops agentd and powers off.
//! 4. The host parses those lines ([`Report`]) and decides ([`checks`]): agentd active after
//!    READY=1 and never restarted, healthy (file enforcement by BPF LSM with every hook, nothing
//!    dropped or lost), logging to the journal, the control plane up and answering, no failed
//!    unit, and agentd stopping cleanly on SIGINT.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd, install,
    tier_result::TierResult,
    vm::{self, KernelSpec, Outcome, VmOptions},
    workspace,
};

/// The Debian release of the guest: the one this project's machines run.
const RELEASE: &str = "bookworm";
/// Packages on top of the `minbase` variant: systemd as PID 1, nothing else.
const PACKAGES: &str = "systemd,systemd-sysv";
/// Raise when the recipe below changes, so that a cached root file system is built again.
const RECIPE_VERSION: u32 = 1;
/// The kernel the tier boots.
pub const KERNEL: &str = "6.12";

/// The guest's own units and check script.
const GUEST_FILES: [(&str, &str, u32); 4] = [
    (
        "etc/systemd/system/agentd-vm-booted.service",
        include_str!("../vm-systemd/agentd-vm-booted.service"),
        0o644,
    ),
    (
        "etc/systemd/system/agentd-vm-token.service",
        include_str!("../vm-systemd/agentd-vm-token.service"),
        0o644,
    ),
    (
        "etc/systemd/system/agentd-vm-check.service",
        include_str!("../vm-systemd/agentd-vm-check.service"),
        0o644,
    ),
    (
        "usr/local/libexec/agentd-vm-check",
        include_str!("../vm-systemd/agentd-vm-check"),
        0o755,
    ),
];
/// Enabled in the guest: the product's units, exactly as an operator enables them, and the
/// tier's own.
const ENABLE: [&str; 5] = [
    "agentd.service",
    "agentd-control.service",
    "agentd-vm-booted.service",
    "agentd-vm-token.service",
    "agentd-vm-check.service",
];
/// Masked in the guest: a login prompt on the serial console would hang up the check's
/// terminal.
const MASK: [&str; 2] = ["getty.target", "serial-getty@ttyS0.service"];

const BOOTED: &str = "AGENTD-VM-BOOTED";
const UNIT: &str = "AGENTD-SYSTEMD-UNIT";
const STATUS: &str = "AGENTD-SYSTEMD-STATUS";
const CONTROL: &str = "AGENTD-SYSTEMD-CONTROL";
const ENROLLED: &str = "AGENTD-SYSTEMD-ENROLLED";
const JOURNAL: &str = "AGENTD-SYSTEMD-JOURNAL";
const FAILED: &str = "AGENTD-SYSTEMD-FAILED";
const DONE: &str = "AGENTD-SYSTEMD-DONE";

/// agentd's log line once its programs are attached and its sockets bound (just before it
/// sends READY=1).
const READY_LOG: &str = "process sensor attached";

/// The apt sources the root file system is built from: the machine's own.
fn apt_sources() -> anyhow::Result<PathBuf> {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
    .context("no apt sources on this machine (/etc/apt/sources.list.d/debian.sources)")
}

/// mmdebstrap's arguments, building into `target` from `sources`.
fn mmdebstrap_args(target: &Path, sources: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--mode=root",
        "--variant=minbase",
        // Merged /usr from the start (bookworm would otherwise pull in usrmerge and perl).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--aptopt=APT::Install-Recommends \"false\"",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(format!("--include={PACKAGES}"));
    // Documentation, manuals and translations: a smaller image boots faster under TCG.
    for excluded in ["man", "doc", "info", "locale"] {
        args.push(format!("--dpkgopt=path-exclude=/usr/share/{excluded}/*"));
    }
    args.push(RELEASE.to_owned());
    args.push(target.display().to_string());
    args.push(sources.display().to_string());
    args
}

/// What the cached root file system was built from; a change builds it again.
fn recipe(sources: &Path) -> anyhow::Result<String> {
    let sources_text =
        fs::read_to_string(sources).with_context(|| format!("reading {}", sources.display()))?;
    Ok(format!(
        "recipe {RECIPE_VERSION}\nmmdebstrap {}\n{sources_text}",
        mmdebstrap_args(Path::new("ROOT"), sources).join(" ")
    ))
}

fn rootfs_dir() -> anyhow::Result<PathBuf> {
    Ok(workspace::cache_dir()?.join("vm-systemd"))
}

/// The cached root file system, if it is there and was built from the current recipe.
fn cached_rootfs() -> anyhow::Result<Option<PathBuf>> {
    let dir = rootfs_dir()?;
    let root = dir.join(RELEASE);
    let stamp = dir.join(format!("{RELEASE}.recipe"));
    let current = recipe(&apt_sources()?)?;
    Ok((root.join("usr/lib/systemd/systemd").exists()
        && fs::read_to_string(stamp).is_ok_and(|built| built == current))
    .then_some(root))
}

/// Builds the Debian root file system with systemd, unless the cache has it. Root (mmdebstrap
/// runs dpkg in a chroot, and the files must belong to root in the guest).
pub fn ensure_rootfs() -> anyhow::Result<PathBuf> {
    if let Some(root) = cached_rootfs()? {
        println!(
            "setup: vm-systemd root file system already cached at {}",
            root.display()
        );
        return Ok(root);
    }
    anyhow::ensure!(
        cmd::is_root(),
        "building the vm-systemd root file system needs root (mmdebstrap)"
    );
    let dir = rootfs_dir()?;
    let root = dir.join(RELEASE);
    let sources = apt_sources()?;
    println!(
        "setup: building the vm-systemd root file system ({RELEASE}, minbase + {PACKAGES}) from {}",
        sources.display()
    );
    fs::create_dir_all(&dir)?;
    let staging = tempfile::tempdir_in(&dir)?;
    let target = staging.path().join("root");
    let started = Instant::now();
    cmd::run(Command::new("mmdebstrap").args(mmdebstrap_args(&target, &sources)))?;
    // The build machine's name server and host name stay out of the guest.
    fs::write(target.join("etc/resolv.conf"), "nameserver 127.0.0.1\n")?;
    fs::write(target.join("etc/hostname"), "agentd-vm\n")?;
    // Move into place only when complete, so an interrupted build is never taken as cached.
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::rename(&target, &root).with_context(|| format!("moving into {}", root.display()))?;
    fs::write(dir.join(format!("{RELEASE}.recipe")), recipe(&sources)?)?;
    println!(
        "setup: vm-systemd root file system built in {:.0?} at {}",
        started.elapsed(),
        root.display()
    );
    Ok(root)
}

/// Copies the cached root file system to `guest` and installs agentd, the control plane and
/// the tier's check units in it, then packs it as `initramfs`.
fn prepare_guest(
    base: &Path,
    guest: &Path,
    binaries: &[(String, PathBuf)],
    initramfs: &Path,
) -> anyhow::Result<()> {
    cmd::run(Command::new("cp").arg("-a").arg(base).arg(guest))?;
    install::install(guest, binaries)?;
    install::verify(guest)?;
    for (path, text, mode) in GUEST_FILES {
        let path = guest.join(path);
        fs::create_dir_all(path.parent().context("guest file has a parent")?)?;
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    // A fixed machine id: an empty one would make systemd treat the boot as the first one.
    fs::write(
        guest.join("etc/machine-id"),
        "a9e7d0c1f2b34c5d8e6f7a8b9c0d1e2f\n",
    )?;
    // The kernel runs /init from an initramfs; systemd runs from it as from any root, as long
    // as /etc/initrd-release is absent.
    std::os::unix::fs::symlink("/usr/lib/systemd/systemd", guest.join("init"))?;
    let root_arg = format!("--root={}", guest.display());
    cmd::output(
        Command::new("systemctl")
            .arg(&root_arg)
            .arg("enable")
            .args(ENABLE),
    )?;
    cmd::output(
        Command::new("systemctl")
            .arg(&root_arg)
            .arg("mask")
            .args(MASK),
    )?;
    vm::cpio(guest, initramfs)
}

/// A unit's state, as `systemctl show` printed it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnitState(BTreeMap<String, String>);

impl UnitState {
    fn parse(text: &str) -> Self {
        Self(
            text.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("?", String::as_str)
    }

    /// `ActiveState/SubState (Result=..., NRestarts=..., exit ...)`, for messages.
    fn describe(&self) -> String {
        format!(
            "{}/{} (Result={}, NRestarts={}, ExecMainCode={}, ExecMainStatus={})",
            self.get("ActiveState"),
            self.get("SubState"),
            self.get("Result"),
            self.get("NRestarts"),
            self.get("ExecMainCode"),
            self.get("ExecMainStatus"),
        )
    }

    /// Running, and never restarted.
    fn running(&self) -> bool {
        self.get("ActiveState") == "active"
            && self.get("SubState") == "running"
            && self.get("NRestarts") == "0"
    }
}

/// An exit code and one line of output.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub rc: i32,
    pub output: String,
}

impl Answer {
    fn parse(text: &str) -> Option<Self> {
        let (rc, output) = text.split_once(' ').unwrap_or((text, ""));
        Some(Self {
            rc: rc.strip_prefix("rc=")?.parse().ok()?,
            output: output.trim().to_owned(),
        })
    }
}

/// What the guest reported on its console.
#[derive(Debug, Default)]
pub struct Report {
    /// The boot marker's details (kernel, LSMs, PID 1).
    pub booted: Option<String>,
    /// Units as they were when their start jobs were over.
    pub started: BTreeMap<String, UnitState>,
    /// Units after `systemctl restart` (agentd, once enrolled).
    pub restarted: BTreeMap<String, UnitState>,
    /// Units after `systemctl stop`.
    pub stopped: BTreeMap<String, UnitState>,
    /// `agentd status`.
    pub status: Option<Answer>,
    /// `agentctl agent list` against the control plane.
    pub control: Option<Answer>,
    /// `agentd status` once agentd, restarted with the control plane configured, is connected
    /// (or has given up waiting).
    pub enrolled: Option<Answer>,
    /// (unit, line) from the journal.
    pub journal: Vec<(String, String)>,
    /// Units systemd lists as failed.
    pub failed_units: Vec<String>,
    /// The check script ran to its end.
    pub done: bool,
}

impl Report {
    pub fn parse(console: &[String]) -> Self {
        let mut report = Self::default();
        for line in console {
            // Markers can follow other output on the same line (a kernel message without
            // its newline, a terminal escape).
            let Some(at) = line.find("AGENTD-") else {
                continue;
            };
            let line = line[at..].trim_end();
            let (marker, rest) = line.split_once(' ').unwrap_or((line, ""));
            match marker {
                BOOTED => report.booted = Some(rest.to_owned()),
                UNIT => {
                    let mut words = rest.splitn(3, ' ');
                    let (Some(label), Some(unit)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let state = UnitState::parse(words.next().unwrap_or(""));
                    match label {
                        "started" => report.started.insert(unit.to_owned(), state),
                        "restarted" => report.restarted.insert(unit.to_owned(), state),
                        "stopped" => report.stopped.insert(unit.to_owned(), state),
                        _ => None,
                    };
                }
                STATUS => report.status = Answer::parse(rest),
                CONTROL => report.control = Answer::parse(rest),
                ENROLLED => report.enrolled = Answer::parse(rest),
                JOURNAL => {
                    let (unit, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    report.journal.push((unit.to_owned(), text.to_owned()));
                }
                FAILED => {
                    if let Some(unit) = rest.split_whitespace().next() {
                        report.failed_units.push(unit.to_owned());
                    }
                }
                DONE => report.done = true,
                _ => {}
            }
        }
        report
    }
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "missing".to_owned(), |value| format!("{value:?}"))
}

/// What in `agentd status` (JSON) is not healthy; empty when healthy.
pub fn health_problems(status: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let text = |key: &str| status.get(key).and_then(serde_json::Value::as_str);
    let number = |key: &str| status.get(key).and_then(serde_json::Value::as_u64);
    match text("file_enforcement") {
        Some("available") => {}
        other => problems.push(format!(
            "file_enforcement is {}, not \"available\"",
            shown(other)
        )),
    }
    match text("file_monitoring") {
        Some("lsm") => {}
        other => problems.push(format!("file_monitoring is {}, not \"lsm\"", shown(other))),
    }
    for key in ["events_dropped", "tags_lost"] {
        match number(key) {
            Some(0) => {}
            Some(n) => problems.push(format!("{key} is {n}")),
            None => problems.push(format!("{key} is missing")),
        }
    }
    if let Some(control) = status.get("control_plane")
        && control
            .get("connected")
            .and_then(serde_json::Value::as_bool)
            != Some(true)
    {
        problems.push(format!(
            "not connected to its control plane: {}",
            control.get("error").unwrap_or(&serde_json::Value::Null)
        ));
    }
    problems
}

/// One check of the tier: its name, and why it failed.
pub struct Check {
    pub name: &'static str,
    pub result: Result<(), String>,
}

fn check(name: &'static str, result: Result<(), String>) -> Check {
    Check { name, result }
}

fn started<'a>(report: &'a Report, unit: &str) -> Result<&'a UnitState, String> {
    report
        .started
        .get(unit)
        .ok_or_else(|| format!("the guest reported no state for {unit}"))
}

/// Whether `agentd status` answered, in JSON, with nothing unhealthy; the status when so.
fn status_health(
    status: Option<&Answer>,
    agentd_active: bool,
) -> Result<serde_json::Value, String> {
    let answer = match status {
        _ if !agentd_active => return Err("agentd.service is not active".to_owned()),
        None => return Err("the guest printed no `agentd status`".to_owned()),
        Some(answer) => answer,
    };
    if answer.rc != 0 {
        return Err(format!(
            "`agentd status` exited {}: {}",
            answer.rc, answer.output
        ));
    }
    let status: serde_json::Value = serde_json::from_str(&answer.output)
        .map_err(|err| format!("`agentd status` printed no JSON ({err})"))?;
    let problems = health_problems(&status);
    if problems.is_empty() {
        Ok(status)
    } else {
        Err(problems.join("; "))
    }
}

/// Whether agentd, restarted with the control plane configured, came back and is healthy and
/// connected.
fn enrolled_health(report: &Report) -> Result<(), String> {
    let state = report.restarted.get("agentd.service").ok_or(
        "the guest did not enrol agentd (agentd or the control plane was not up)".to_owned(),
    )?;
    if !state.running() {
        return Err(format!(
            "after the restart, agentd.service is {}",
            state.describe()
        ));
    }
    let status = status_health(report.enrolled.as_ref(), true)?;
    if status.get("control_plane").is_none() {
        return Err("`agentd status` shows no control plane".to_owned());
    }
    // `systemctl restart` leaves the programs pinned and enforcing; the new agentd adopts them.
    let adopted = status
        .get("pins")
        .and_then(|pins| pins.get("adopted"))
        .and_then(serde_json::Value::as_bool);
    if adopted != Some(true) {
        return Err(format!(
            "after the restart, agentd did not adopt the pinned programs (pins: {})",
            status.get("pins").unwrap_or(&serde_json::Value::Null)
        ));
    }
    Ok(())
}

/// Whether agentd, once stopped, had exited 0 by itself (detaching everything on SIGINT).
fn clean_stop(stopped: Option<&UnitState>, agentd_active: bool) -> Result<(), String> {
    match stopped {
        _ if !agentd_active => Err("agentd.service was not active".to_owned()),
        None => Err("the guest reported no state after stopping agentd".to_owned()),
        // ExecMainCode 1 is CLD_EXITED: agentd exited by itself (0), not by the signal.
        Some(state)
            if state.get("ActiveState") == "inactive"
                && state.get("Result") == "success"
                && state.get("ExecMainCode") == "1"
                && state.get("ExecMainStatus") == "0" =>
        {
            Ok(())
        }
        Some(state) => Err(format!(
            "after stop, agentd.service is {}",
            state.describe()
        )),
    }
}

/// Decides, from what a guest that ran its check to the end reported, each of the tier's
/// checks.
pub fn checks(report: &Report) -> Vec<Check> {
    let agentd = started(report, "agentd.service");
    // Active, restarted or not: its status and its stop are checked on their own.
    let agentd_active = agentd
        .as_ref()
        .is_ok_and(|state| state.get("ActiveState") == "active");
    vec![
        check(
            "systemd is PID 1",
            match &report.booted {
                Some(booted) if booted.contains("init=systemd") => Ok(()),
                Some(booted) => Err(format!("the guest booted with {booted}")),
                None => Err("no boot marker".to_owned()),
            },
        ),
        check(
            "agentd.service active after READY=1, never restarted",
            agentd.clone().and_then(|state| {
                if state.get("Type") != "notify" {
                    Err(format!("Type={}, not notify", state.get("Type")))
                } else if state.running() {
                    Ok(())
                } else {
                    Err(format!("agentd.service is {}", state.describe()))
                }
            }),
        ),
        check(
            "agentd status reports healthy",
            status_health(report.status.as_ref(), agentd_active).map(drop),
        ),
        check(
            "agentd logs to the journal",
            if report
                .journal
                .iter()
                .any(|(unit, line)| unit == "agentd.service" && line.contains(READY_LOG))
            {
                Ok(())
            } else {
                Err(format!(
                    "no \"{READY_LOG}\" line in agentd.service's journal"
                ))
            },
        ),
        check(
            "agentd-control.service active, never restarted",
            started(report, "agentd-control.service").and_then(|state| {
                if state.running() {
                    Ok(())
                } else {
                    Err(format!("agentd-control.service is {}", state.describe()))
                }
            }),
        ),
        check(
            "the control plane answers",
            match &report.control {
                None => Err("the guest did not call the control plane".to_owned()),
                Some(answer) if answer.rc == 0 => Ok(()),
                Some(answer) => Err(format!(
                    "`agentctl agent list` exited {}: {}",
                    answer.rc, answer.output
                )),
            },
        ),
        check(
            "agentd restarted, adopted its pinned programs, enrolled and connected to the control plane",
            enrolled_health(report),
        ),
        check(
            "no unit failed",
            if report.failed_units.is_empty() {
                Ok(())
            } else {
                Err(format!("failed: {}", report.failed_units.join(", ")))
            },
        ),
        check(
            "agentd stops cleanly on SIGINT",
            clean_stop(report.stopped.get("agentd.service"), agentd_active),
        ),
    ]
}

/// Counts the checks into `result` and prints each.
fn record(result: &mut TierResult, checks: &[Check]) {
    for check in checks {
        match &check.result {
            Ok(()) => {
                result.passed += 1;
                println!("vm-systemd: ok: {}", check.name);
            }
            Err(why) => {
                result.failed += 1;
                println!("vm-systemd: FAILED: {}: {why}", check.name);
                result
                    .error
                    .get_or_insert_with(|| format!("{}: {why}", check.name));
            }
        }
    }
}

/// The tier: builds the binaries, prepares the guest, boots it and checks what it reported.
/// An error that stops the tier (a build, the guest's preparation) fails it, and the tiers
/// after it still run.
pub fn tier(options: &VmOptions) -> TierResult {
    let mut result = TierResult::new(format!("vm-systemd ({KERNEL})"));
    if !cmd::is_root() {
        result.fail("needs root: the guest's files must belong to root");
        return result;
    }
    if let Err(err) = run_tier(options, &mut result) {
        println!("vm-systemd: error: {err:#}");
        result.fail(format!("{err:#}"));
    }
    result
}

fn run_tier(options: &VmOptions, result: &mut TierResult) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(base) = cached_rootfs()? else {
        bail!("the vm-systemd root file system is not cached: run `cargo xtask setup`");
    };
    let kernel = KernelSpec::Series(KERNEL.to_owned());
    let package = kernel.resolve()?;
    let Some(vmlinuz) = vm::cached_vmlinuz(&package)? else {
        bail!("kernel {package} is not cached: run `cargo xtask setup --kernel {KERNEL}`");
    };

    // The debug binaries the host tier builds too, with the same cargo invocations (so CI
    // builds nothing more for this tier), installed by `cargo xtask install`'s code.
    let mut built = vec![("agentd".to_owned(), workspace::build_agentd(false)?)];
    built.extend(workspace::build_executables(&[
        "build",
        "--package",
        "agentd-control",
        "--bins",
    ])?);
    let work = tempfile::tempdir()?;
    let mut binaries = Vec::new();
    for (name, _) in install::BINARIES {
        let (_, path) = built
            .iter()
            .find(|(built, _)| built == name)
            .with_context(|| format!("cargo built no {name} binary"))?;
        let stripped = work.path().join(name);
        cmd::output(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(path),
        )?;
        binaries.push((name.to_owned(), stripped));
    }
    let prepare = Instant::now();
    let initramfs = work.path().join("initramfs.cpio");
    prepare_guest(&base, &work.path().join("root"), &binaries, &initramfs)?;
    // The copy is packed: only the archive is needed from here on.
    fs::remove_dir_all(work.path().join("root"))?;
    let size = fs::metadata(&initramfs)?.len();
    println!(
        "vm-systemd: guest prepared in {:.0?} ({} MiB initramfs)",
        prepare.elapsed(),
        size >> 20
    );

    let accel = match options.accel {
        Some(accel) => accel,
        None => vm::choose_accel(&vmlinuz, &package)?,
    };
    let log_path = workspace::workspace_root().join("target/vm-systemd/console.log");
    fs::create_dir_all(log_path.parent().context("log path has a parent")?)?;
    println!(
        "vm-systemd: booting {package} ({accel:?}); console in {}",
        log_path.display()
    );
    let boot = Instant::now();
    let run = vm::boot(
        &vmlinuz,
        &initramfs,
        accel,
        2,
        Duration::from_mins(2),
        options.timeout,
        |line| println!("vm-systemd| {line}"),
    )?;
    fs::write(&log_path, run.console.join("\n") + "\n")
        .with_context(|| format!("writing {}", log_path.display()))?;
    println!(
        "vm-systemd: guest ran for {:.0?}; tier took {:.0?}",
        boot.elapsed(),
        started.elapsed()
    );

    let report = Report::parse(&run.console);
    match run.outcome {
        Outcome::BootFailure(why) => result.fail(format!("boot failure: {why}")),
        Outcome::TimedOut(after) if report.done => result.fail(format!(
            "the check finished but the guest did not power off within {after:?}"
        )),
        Outcome::TimedOut(after) => {
            result.fail(format!(
                "timed out after {after:?} before the check finished"
            ));
        }
        Outcome::Finished { .. } if !report.done => {
            result.fail("the guest stopped before its check finished: see the console above");
        }
        Outcome::Finished { .. } => record(result, &checks(&report)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY_STATUS: &str = r#"{   "agents": 0,   "rules": 0,   "tagged_processes": 0,   "tags_lost": 0,   "file_enforcement": "available",   "file_monitoring": "lsm",   "network_version": 1,   "quarantined": [],   "events_delivered": 6,   "events_dropped": 0,   "events_produced": 6,   "events_undecodable": 0,   "events_dropped_per_cpu": [     0,     0   ],   "pins": { "adopted": true } }"#;

    const ENROLLED_STATUS: &str = r#"{   "agents": 0,   "rules": 0,   "tagged_processes": 0,   "tags_lost": 0,   "file_enforcement": "available",   "control_plane": {     "connected": true,     "error": null,     "decision_version": 1,     "decision_age_secs": 2,     "confirmed_age_secs": 1,     "blocked_agents": []   },   "file_monitoring": "lsm",   "network_version": 1,   "quarantined": [],   "events_delivered": 19,   "events_dropped": 0,   "events_produced": 19,   "events_undecodable": 0,   "events_dropped_per_cpu": [     0,     0   ],   "pins": { "adopted": true } }"#;

    /// A healthy guest's console, as the check script prints it.
    fn healthy() -> Vec<String> {
        [
            "[    7.170020] systemd[1]: Failed to find module 'autofs4'".to_owned(),
            "AGENTD-VM-BOOTED kernel=6.12.117+deb12-amd64 lsm=lockdown,capability,landlock,bpf init=systemd".to_owned(),
            "AGENTD-SYSTEMD-UNIT started agentd.service Type=notify Result=success NRestarts=0 ExecMainCode=0 ExecMainStatus=0 ActiveState=active SubState=running ".to_owned(),
            format!("AGENTD-SYSTEMD-STATUS rc=0 {HEALTHY_STATUS}"),
            "AGENTD-SYSTEMD-UNIT started agentd-control.service Type=exec Result=success NRestarts=0 ExecMainCode=0 ExecMainStatus=0 ActiveState=active SubState=running ".to_owned(),
            "AGENTD-SYSTEMD-CONTROL rc=0 {}".to_owned(),
            "AGENTD-SYSTEMD-UNIT restarted agentd.service Type=notify Result=success NRestarts=0 ExecMainCode=0 ExecMainStatus=0 ActiveState=active SubState=running ".to_owned(),
            format!("AGENTD-SYSTEMD-ENROLLED rc=0 {ENROLLED_STATUS}"),
            "AGENTD-SYSTEMD-JOURNAL agentd.service Starting agentd.service - agentd...".to_owned(),
            "AGENTD-SYSTEMD-JOURNAL agentd.service 2026-11-27T12:37:05Z  INFO agentd::daemon: process sensor attached; printing events".to_owned(),
            "AGENTD-SYSTEMD-UNIT stopped agentd.service Type=notify Result=success NRestarts=0 ExecMainCode=1 ExecMainStatus=0 ActiveState=inactive SubState=dead ".to_owned(),
            "AGENTD-SYSTEMD-DONE".to_owned(),
        ]
        .into()
    }

    fn failures(console: &[String]) -> Vec<(&'static str, String)> {
        checks(&Report::parse(console))
            .into_iter()
            .filter_map(|check| check.result.err().map(|why| (check.name, why)))
            .collect()
    }

    fn replace(console: &[String], marker: &str, with: &str) -> Vec<String> {
        console
            .iter()
            .map(|line| {
                if line.starts_with(marker) {
                    with.to_owned()
                } else {
                    line.clone()
                }
            })
            .collect()
    }

    #[test]
    fn a_healthy_guest_passes_every_check() {
        let report = Report::parse(&healthy());
        assert!(report.done);
        assert_eq!(report.started.len(), 2);
        assert_eq!(
            report.started["agentd.service"].get("Type"),
            "notify",
            "{report:?}"
        );
        assert_eq!(failures(&healthy()), []);
        assert_eq!(checks(&report).len(), 9);
    }

    #[test]
    fn agentd_that_failed_to_start_fails_the_start_status_and_stop_checks() {
        let console = replace(
            &healthy(),
            "AGENTD-SYSTEMD-UNIT started agentd.service",
            "AGENTD-SYSTEMD-UNIT started agentd.service Type=notify Result=exit-code NRestarts=5 ExecMainCode=1 ExecMainStatus=64 ActiveState=failed SubState=failed",
        );
        let console: Vec<String> = console
            .into_iter()
            .filter(|line| {
                !line.starts_with(STATUS)
                    && !line.contains(READY_LOG)
                    && !line.starts_with(ENROLLED)
                    && !line.contains(" restarted ")
            })
            .chain(["AGENTD-SYSTEMD-FAILED agentd.service loaded failed failed agentd".to_owned()])
            .collect();
        let failed = failures(&console);
        let names: Vec<&str> = failed.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "agentd.service active after READY=1, never restarted",
                "agentd status reports healthy",
                "agentd logs to the journal",
                "agentd restarted, adopted its pinned programs, enrolled and connected to the control plane",
                "no unit failed",
                "agentd stops cleanly on SIGINT",
            ]
        );
        assert!(
            failed[0]
                .1
                .contains("failed/failed (Result=exit-code, NRestarts=5"),
            "{failed:?}"
        );
    }

    #[test]
    fn agentd_that_restarted_is_not_healthy() {
        let console = replace(
            &healthy(),
            "AGENTD-SYSTEMD-UNIT started agentd.service",
            "AGENTD-SYSTEMD-UNIT started agentd.service Type=notify Result=success NRestarts=1 ExecMainCode=0 ExecMainStatus=0 ActiveState=active SubState=running",
        );
        let failed = failures(&console);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].1.contains("NRestarts=1"), "{failed:?}");
    }

    #[test]
    fn degraded_status_is_not_healthy() {
        let degraded = HEALTHY_STATUS
            .replace(
                r#""file_monitoring": "lsm""#,
                r#""file_monitoring": "lsm, degraded: no path_link hook on this kernel""#,
            )
            .replace(r#""events_dropped": 0"#, r#""events_dropped": 3"#);
        let console = replace(&healthy(), STATUS, &format!("{STATUS} rc=0 {degraded}"));
        let failed = failures(&console);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, "agentd status reports healthy");
        assert!(
            failed[0].1.contains("degraded: no path_link hook"),
            "{failed:?}"
        );
        assert!(failed[0].1.contains("events_dropped is 3"), "{failed:?}");

        let console = replace(
            &healthy(),
            STATUS,
            &format!("{STATUS} rc=1 error: connecting to /run/agentd/admin.sock"),
        );
        assert!(failures(&console)[0].1.contains("exited 1"));
        let console = replace(&healthy(), STATUS, &format!("{STATUS} rc=0 not json"));
        assert!(failures(&console)[0].1.contains("no JSON"));
    }

    #[test]
    fn health_needs_lsm_enforcement_and_a_connected_control_plane() {
        let mut status: serde_json::Value = serde_json::from_str(HEALTHY_STATUS).unwrap();
        assert_eq!(health_problems(&status), Vec::<String>::new());
        status["file_enforcement"] = "unavailable: BPF LSM is not active".into();
        status["file_monitoring"] =
            "tracepoints: opens that break a rule are reported, not denied".into();
        status["control_plane"] =
            serde_json::json!({"connected": false, "error": "connection refused"});
        let problems = health_problems(&status);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].contains("connection refused"));
        status.as_object_mut().unwrap().remove("tags_lost");
        assert!(health_problems(&status).contains(&"tags_lost is missing".to_owned()));
    }

    #[test]
    fn control_plane_that_does_not_answer_fails() {
        // The guest then does not enrol agentd either.
        let without_enrolment: Vec<String> = healthy()
            .into_iter()
            .filter(|line| !line.starts_with(ENROLLED) && !line.contains(" restarted "))
            .collect();
        let console = replace(
            &without_enrolment,
            CONTROL,
            "AGENTD-SYSTEMD-CONTROL rc=1 error: transport error",
        );
        let failed = failures(&console);
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(failed[0].0, "the control plane answers");
        assert!(failed[1].1.contains("did not enrol"), "{failed:?}");
        let console: Vec<String> = without_enrolment
            .into_iter()
            .filter(|line| !line.starts_with(CONTROL))
            .collect();
        assert_eq!(failures(&console)[0].0, "the control plane answers");
    }

    #[test]
    fn agentd_that_did_not_connect_to_its_control_plane_fails_the_enrolment_check() {
        let offline = ENROLLED_STATUS
            .replace(r#""connected": true"#, r#""connected": false"#)
            .replace(
                r#""error": null"#,
                r#""error": "enrolment refused: join token expired""#,
            );
        let console = replace(&healthy(), ENROLLED, &format!("{ENROLLED} rc=0 {offline}"));
        let failed = failures(&console);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(
            failed[0].0,
            "agentd restarted, adopted its pinned programs, enrolled and connected to the control plane"
        );
        assert!(failed[0].1.contains("join token expired"), "{failed:?}");

        // Healthy, but without the control plane configured: not enrolled.
        let console = replace(
            &healthy(),
            ENROLLED,
            &format!("{ENROLLED} rc=0 {HEALTHY_STATUS}"),
        );
        assert!(failures(&console)[0].1.contains("no control plane"));

        // agentd did not come back after the restart.
        let console = replace(
            &healthy(),
            "AGENTD-SYSTEMD-UNIT restarted",
            "AGENTD-SYSTEMD-UNIT restarted agentd.service Type=notify Result=exit-code NRestarts=3 ActiveState=activating SubState=auto-restart",
        );
        assert!(failures(&console)[0].1.contains("after the restart"));
    }

    #[test]
    fn agentd_killed_by_its_stop_signal_did_not_stop_cleanly() {
        let console = replace(
            &healthy(),
            "AGENTD-SYSTEMD-UNIT stopped",
            "AGENTD-SYSTEMD-UNIT stopped agentd.service Type=notify Result=success NRestarts=0 ExecMainCode=2 ExecMainStatus=2 ActiveState=inactive SubState=dead",
        );
        let failed = failures(&console);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "agentd stops cleanly on SIGINT");
    }

    #[test]
    fn markers_are_found_after_other_output_and_unfinished_reports_are_told_apart() {
        let console: Vec<String> = vec![
            "\u{1b}[0mAGENTD-VM-BOOTED kernel=6.12 init=bash".to_owned(),
            "AGENTD-SYSTEMD-UNIT started agentd.service ActiveState=active".to_owned(),
        ];
        let report = Report::parse(&console);
        assert!(!report.done);
        assert_eq!(report.booted.as_deref(), Some("kernel=6.12 init=bash"));
        assert_eq!(
            report.started["agentd.service"].get("ActiveState"),
            "active"
        );
        assert!(failures(&console)[0].1.contains("init=bash"));
        assert_eq!(Answer::parse("rc=x y"), None);
    }

    #[test]
    fn the_rootfs_recipe_names_the_release_packages_and_sources() {
        let args = mmdebstrap_args(
            Path::new("/cache/root"),
            Path::new("/etc/apt/sources.list.d/debian.sources"),
        );
        assert!(args.contains(&"--variant=minbase".to_owned()));
        assert!(args.contains(&"--include=systemd,systemd-sysv".to_owned()));
        assert_eq!(
            args[args.len() - 3..],
            [
                "bookworm",
                "/cache/root",
                "/etc/apt/sources.list.d/debian.sources"
            ]
        );
    }
}
