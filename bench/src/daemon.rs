//! A running `agentd run` for a benchmark: its own sockets, config and policy in a temporary
//! directory, events written to a file. Dropping it stops the daemon with SIGINT and waits.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The agent the tagged benchmarks launch into. A name no test uses, so that a benchmark and
/// another worktree's tests never share a launch cgroup.
pub const AGENT: &str = "agentd-bench";

/// How long agentd may take to answer after it starts. Start-up verifies every program, which
/// takes about a minute in a QEMU guest under TCG (the BPF LSM rows), as in the vm tier.
const START_DEADLINE: Duration = Duration::from_mins(3);

pub struct Agentd {
    child: Child,
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub admin: PathBuf,
    pub events: PathBuf,
}

impl Agentd {
    /// Starts `agentd run` with `policy` and more configuration (whole tables) in `extra`, and
    /// waits until its admin socket answers.
    pub fn start(bin: &Path, policy: &str, extra: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let admin = dir.path().join("admin.sock");
        let events = dir.path().join("events.jsonl");
        let config = dir.path().join("agentd.toml");
        fs::write(
            &config,
            format!(
                "[events]\nformat = \"json\"\noutput = \"{}\"\n\n\
                 [api]\nadmin_socket = \"{}\"\nidentity_socket = \"{}\"\n\n\
                 [identity]\nsweep_interval_secs = 0\n\n[dns]\nenabled = false\n\n\
                 [bpf]\npin_path = \"/sys/fs/bpf/agentd-bench-{}\"\non_exit = \"detach\"\n\n{extra}",
                events.display(),
                admin.display(),
                dir.path().join("identity.sock").display(),
                std::process::id(),
            ),
        )?;
        let policy_file = dir.path().join("policy.toml");
        fs::write(&policy_file, policy)?;
        let log = fs::File::create(dir.path().join("agentd.log"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--policy")
            .arg(&policy_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let mut agentd = Self {
            child,
            bin: bin.to_owned(),
            dir,
            admin,
            events,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = agentd.child.try_wait()? {
                bail!("agentd exited during start-up: {status}\n{}", agentd.log());
            }
            // agentd binds its admin socket once its programs are attached: no `agentd status`
            // process starts before, while the kernel patches the hooks it would run through
            // (under TCG, patching a hook that another vCPU is running has oopsed the guest).
            if agentd.admin.exists() && agentd.status().is_ok() {
                return Ok(agentd);
            }
            if Instant::now() > deadline {
                bail!(
                    "agentd did not answer within {START_DEADLINE:?}\n{}",
                    agentd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agentd.log")).unwrap_or_default()
    }

    /// `agentd status` as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(&["status"])?;
        serde_json::from_str(&out).context("parsing agentd status")
    }

    /// Runs an `agentd` subcommand against this daemon and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli_with(args, &[])
    }

    /// Runs `agentd ARGS --socket ADMIN MORE`: `--socket` belongs to `args`' last command,
    /// `more` to its subcommand (`agentd risk --socket S confirm AGENT --safe`).
    pub fn cli_with(&self, args: &[&str], more: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.admin)
            .args(more)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running agentd {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "agentd {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `program args` as agent [`AGENT`] (`agentd launch`).
    pub fn launch(&self, program: &Path, args: &[String]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg("launch")
            .arg("--socket")
            .arg(&self.admin)
            .args(["--agent", AGENT, "--"])
            .arg(program)
            .args(args);
        command
    }

    /// The JSON lines agentd has written to its event output so far.
    pub fn event_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// User + system CPU time of the daemon so far, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesized comm: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("utime")?.parse()?;
        let stime: u64 = fields.get(12).context("stime")?.parse()?;
        Ok(utime + stime)
    }
}

impl Drop for Agentd {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let _ = self.child.wait();
        // The launch cgroup agentd made for the bench agent: kill leftovers, remove it.
        if let Some(dir) = launch_cgroup() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..50 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `<cgroup2 root>/agentd/<AGENT>`, where `agentd launch` puts the bench agent's processes.
fn launch_cgroup() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let root = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })?;
    Some(root.join("agentd").join(AGENT))
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100).max(1)
}
