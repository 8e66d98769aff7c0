//! Shared helpers for the privileged test tiers (`host/` and `vm/`).
//!
//! These tests load real programs into the running kernel. They must run as root and one at a
//! time (`--test-threads=1`, which `cargo xtask test` passes), since they share kernel state.

#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers fail the test by panicking with context"
)]

mod agent_io;
pub mod pid_reuse;

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// The clocks, as agentd reads them: `CLOCK_BOOTTIME` nanoseconds (every event's `ktime_ns`)
/// and Unix milliseconds.
pub use agentd::clock::{boottime_ns, unix_ms};
use agentd::{
    ebpf::{self, LoadedObject},
    events::{Event, EventReader},
};

/// How long a test waits for an event it caused before it fails. Not a performance bound: only
/// a guard against a hang when the event never comes.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(30);

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged test tier: run as root, through `cargo xtask test --tier host|vm`"
    );
}

/// Loads agentd's eBPF object for the running kernel.
pub fn load_object() -> LoadedObject {
    require_root();
    ebpf::load().unwrap_or_else(|err| panic!("loading agentd's eBPF object: {err}"))
}

/// Reads events until one satisfies `matches`, failing after [`EVENT_DEADLINE`].
pub async fn wait_for_event<F>(reader: &mut EventReader, what: &str, mut matches: F) -> Event
where
    F: FnMut(&Event) -> bool,
{
    let mut seen = 0usize;
    let search = async {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            reader
                .read_batch(&mut batch)
                .await
                .unwrap_or_else(|err| panic!("reading events while waiting for {what}: {err}"));
            seen += batch.len();
            if let Some(event) = batch.iter().find(|event| matches(event)) {
                return event.clone();
            }
        }
    };
    let found = tokio::time::timeout(EVENT_DEADLINE, search).await;
    found.unwrap_or_else(|_elapsed| {
        panic!("no event for {what} within {EVENT_DEADLINE:?} ({seen} other events seen)")
    })
}

/// Copies the executable at `program` to a fresh directory under a name no other process uses,
/// so that its exec can be told apart from everything else on the machine.
pub fn unique_executable(program: &Path, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = dir.path().join(name);
    fs::copy(program, &path)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", program.display(), path.display()));
    (dir, path)
}

/// The cgroup v2 id (the cgroup directory's inode number) of the calling process.
pub fn own_cgroup_id() -> u64 {
    let cgroups = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let relative = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("no cgroup v2 entry in /proc/self/cgroup");
    let mount = cgroup2_mount();
    let dir = mount.join(relative.trim_start_matches('/'));
    fs::metadata(&dir)
        .unwrap_or_else(|err| panic!("stat {}: {err}", dir.display()))
        .ino()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
pub fn cgroup2_mount() -> PathBuf {
    agentd::cgroups::root().expect("finding the cgroup v2 mount")
}

/// The ids of the loaded programs named `name` (truncated to the kernel's 15 bytes, so
/// `sched_process_exec` also finds `sched_process_exit`). Tests compare id sets, not counts: the
/// kernel frees an earlier test's programs asynchronously, so a count taken before can shrink
/// while the test runs.
pub fn loaded_program_ids(name: &str) -> std::collections::BTreeSet<u32> {
    let name = &name.as_bytes()[..name.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| program.name() == name)
        .map(|program| program.id())
        .collect()
}

/// Polls `done` until it holds, failing after [`EVENT_DEADLINE`]. The kernel frees programs and
/// links asynchronously (after an RCU grace period) once their last reference is gone.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still not true after {EVENT_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`], with what `explain` says added to the failure: for conditions whose
/// failure the polled state alone does not explain (agentd's log, its view of an agent).
pub fn wait_until_explained(
    what: &str,
    mut done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    let mut explain = Some(explain);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still not true after {EVENT_DEADLINE:?}\n{}",
            explain.take().map_or_else(String::new, |explain| explain())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agentd binary: `cargo xtask test` builds it and names it in `AGENTD_BIN`.
pub fn agentd_bin() -> PathBuf {
    std::env::var_os("AGENTD_BIN").map_or_else(
        || panic!("AGENTD_BIN is not set: run this tier through `cargo xtask test`"),
        PathBuf::from,
    )
}

/// A running `agentd run` with its own sockets, config and identity policy in a temporary
/// directory. Dropping it stops the daemon with SIGINT.
pub struct Daemon {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    /// Where this daemon pins its maps and links (its own directory, removed on drop).
    pub pin_path: PathBuf,
    pub admin: PathBuf,
    pub identity: PathBuf,
    stdout: std::sync::mpsc::Receiver<String>,
    stdout_tx: std::sync::mpsc::Sender<String>,
    /// How agentd is started: under a wrapper command, in a mount namespace of its own.
    launch: Launch,
}

/// How a test's agentd is started.
#[derive(Clone, Debug, Default)]
struct Launch {
    /// A command that agentd runs under (its arguments end with agentd's path), or empty.
    wrapper: Vec<String>,
    /// Mount points unmounted in agentd's own private mount namespace (empty: none of its own).
    unmount: Vec<PathBuf>,
}

/// `agentd run` with the configuration and policy in `dir`, under `launch.wrapper` if not
/// empty; with `launch.unmount`, in a private mount namespace of its own where those mount
/// points are unmounted first, as on a newly booted machine that has not mounted them.
fn agentd_command(dir: &Path, env: &[(&str, &str)], launch: &Launch) -> std::process::Command {
    let mut command = match launch.wrapper.as_slice() {
        [] => std::process::Command::new(agentd_bin()),
        [program, args @ ..] => {
            let mut command = std::process::Command::new(program);
            command.args(args).arg(agentd_bin());
            command
        }
    };
    command
        .arg("run")
        .arg("--config")
        .arg(dir.join("agentd.toml"))
        .arg("--policy")
        .arg(dir.join("policy.toml"))
        .args(["--format", "json"])
        .envs(env.iter().copied());
    if !launch.unmount.is_empty() {
        let targets: Vec<std::ffi::CString> = launch
            .unmount
            .iter()
            .map(|path| std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap())
            .collect();
        // SAFETY: only async-signal-safe calls (unshare, mount, umount2) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nothing done here may reach the host's mounts.
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for target in &targets {
                    // Unmount every layer: a file system mounted twice stays visible otherwise.
                    while libc::umount2(target.as_ptr(), libc::MNT_DETACH) == 0 {}
                }
                Ok(())
            });
        }
    }
    command
}

/// Starts agentd, forwards its stdout lines to `tx`, and waits until it answers on `admin`.
fn spawn_agentd(
    dir: &Path,
    admin: &Path,
    tx: &std::sync::mpsc::Sender<String>,
    env: &[(&str, &str)],
    launch: &Launch,
) -> std::process::Child {
    let log = dir.join("agentd.log");
    let mut child = agentd_command(dir, env, launch)
        .stdout(std::process::Stdio::piped())
        .stderr(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("creating the log"),
        )
        .spawn()
        .expect("starting agentd run");
    let out = child.stdout.take().expect("piped stdout");
    let tx = tx.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Start-up under emulation (the vm tier) can take far longer than an event.
    let start_deadline = EVENT_DEADLINE * 4;
    let deadline = std::time::Instant::now() + start_deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&log).unwrap_or_default();
            panic!("agentd exited during start-up: {status}\n{log}");
        }
        if agentd::api::admin::<agentd::api::Status>(admin, &agentd::api::AdminRequest::Status)
            .is_ok()
        {
            return child;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let log = fs::read_to_string(&log).unwrap_or_default();
            panic!("agentd did not answer on its admin socket within {start_deadline:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Starts agentd with `policy` (TOML) and the tag sweep off, so that tests see exactly what
    /// the kernel hooks leave behind.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, "")
    }

    /// Like [`Daemon::start`], with more `[identity]` settings.
    pub fn start_with(policy: &str, identity_settings: &str) -> Self {
        Self::start_configured(policy, identity_settings, "enabled = false\n", "")
    }

    /// Like [`Daemon::start_with`], with agentd started as the last argument of `wrapper`
    /// (for example a shell that first changes agentd's mount namespace).
    pub fn start_wrapped(policy: &str, identity_settings: &str, wrapper: &[&str]) -> Self {
        let launch = Launch {
            wrapper: wrapper.iter().map(|arg| (*arg).to_owned()).collect(),
            unmount: Vec::new(),
        };
        Self::start_in(policy, identity_settings, "enabled = false\n", "", launch)
    }

    /// Like [`Daemon::start`], with agents' DNS steered through agentd to `upstream`, and more
    /// configuration (whole tables) in `extra`.
    pub fn start_with_dns(policy: &str, upstream: &str, extra: &str) -> Self {
        Self::start_configured(policy, "", &format!("upstream = \"{upstream}\"\n"), extra)
    }

    /// Like [`Daemon::start_with_dns`], with more `[dns]` settings (lines) in `dns`.
    pub fn start_with_dns_settings(policy: &str, upstream: &str, dns: &str, extra: &str) -> Self {
        Self::start_configured(
            policy,
            "",
            &format!("upstream = \"{upstream}\"\n{dns}"),
            extra,
        )
    }

    /// Like [`Daemon::start`], with more configuration (whole tables) in `extra`.
    pub fn start_with_config(policy: &str, extra: &str) -> Self {
        Self::start_configured(policy, "", "enabled = false\n", extra)
    }

    /// Like [`Daemon::start_with_config`], in a private mount namespace where `unmount` (for
    /// example tracefs and securityfs) are not mounted.
    pub fn start_without_mounts(policy: &str, extra: &str, unmount: &[&str]) -> Self {
        let launch = Launch {
            wrapper: Vec::new(),
            unmount: unmount.iter().map(PathBuf::from).collect(),
        };
        Self::start_in(policy, "", "enabled = false\n", extra, launch)
    }

    fn start_configured(
        policy: &str,
        identity_settings: &str,
        dns_settings: &str,
        extra: &str,
    ) -> Self {
        Self::start_in(
            policy,
            identity_settings,
            dns_settings,
            extra,
            Launch::default(),
        )
    }

    fn start_in(
        policy: &str,
        identity_settings: &str,
        dns_settings: &str,
        extra: &str,
        launch: Launch,
    ) -> Self {
        require_root();
        let dir = tempfile::tempdir().expect("temporary directory");
        let admin = dir.path().join("admin.sock");
        let identity = dir.path().join("identity.sock");
        let config = dir.path().join("agentd.toml");
        // Each daemon pins under its own directory and detaches on a clean stop, unless the
        // test configures pinning itself.
        let pin_path = extra
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("pin_path = \"")
                    .and_then(|rest| rest.strip_suffix('"'))
                    .map(PathBuf::from)
            })
            .unwrap_or_else(unique_pin_path);
        let bpf = if extra.contains("[bpf]") {
            String::new()
        } else {
            format!(
                "[bpf]\npin_path = \"{}\"\non_exit = \"detach\"\n",
                pin_path.display()
            )
        };
        fs::write(
            &config,
            format!(
                "[api]\nadmin_socket = \"{}\"\nidentity_socket = \"{}\"\n\n\
                 [identity]\n{sweep}{identity_settings}\n\n[dns]\n{dns_settings}\n{bpf}{extra}",
                admin.display(),
                identity.display(),
                // Off unless the test sets it.
                sweep = if identity_settings.contains("sweep_interval_secs") {
                    ""
                } else {
                    "sweep_interval_secs = 0\n"
                },
            ),
        )
        .expect("writing the config");
        let policy_file = dir.path().join("policy.toml");
        fs::write(&policy_file, policy).expect("writing the policy");
        let (tx, stdout) = std::sync::mpsc::channel();
        let child = spawn_agentd(dir.path(), &admin, &tx, &[], &launch);
        Self {
            child,
            dir,
            pin_path,
            admin,
            identity,
            stdout,
            stdout_tx: tx,
            launch,
        }
    }

    /// Kills agentd with SIGKILL (no clean-up of any kind), then starts it again with the same
    /// configuration and policy, and `env`; waits until it answers.
    pub fn sigkill_and_restart(&mut self, env: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_agentd(
            self.dir.path(),
            &self.admin,
            &self.stdout_tx,
            env,
            &self.launch,
        );
    }

    /// SIGKILLs agentd and leaves it dead.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `agentd run` with this daemon's configuration and policy and `env`, expecting it
    /// to fail at start-up; returns its exit status and log.
    pub fn start_failing(&self, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
        let log = self.dir.path().join("failing.log");
        let status = agentd_command(self.dir.path(), env, &self.launch)
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).expect("creating the log"))
            .status()
            .expect("running agentd");
        (status, fs::read_to_string(&log).unwrap_or_default())
    }

    pub fn try_status(&self) -> Result<agentd::api::Status, agentd::api::ClientError> {
        agentd::api::admin(&self.admin, &agentd::api::AdminRequest::Status)
    }

    pub fn status(&self) -> agentd::api::Status {
        self.try_status().expect("agentd status")
    }

    pub fn ps(&self) -> Vec<agentd::api::ProcessInfo> {
        agentd::api::admin(&self.admin, &agentd::api::AdminRequest::Ps).expect("agentd ps")
    }

    /// The agent `pid` belongs to, by name, as agentd reports it.
    pub fn agent_of(&self, pid: u32) -> Option<agentd::api::ProcessInfo> {
        self.ps().into_iter().find(|process| process.pid == pid)
    }

    /// Waits until `pid` is reported as a process of `agent`.
    pub fn wait_tagged(&self, pid: u32, agent: &str) -> agentd::api::ProcessInfo {
        let mut found = None;
        wait_until(&format!("process {pid} is tagged as {agent}"), || {
            found = self
                .agent_of(pid)
                .filter(|process| process.agent.name == agent);
            found.is_some()
        });
        found.expect("checked above")
    }

    /// `agentd launch --agent AGENT -- ARGS...` against this daemon.
    pub fn launch(&self, agent: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(agentd_bin());
        command
            .arg("launch")
            .arg("--socket")
            .arg(&self.admin)
            .args(["--agent", agent, "--"])
            .args(args);
        command
    }

    /// Replaces the policy through `agentd apply`; returns the command's output.
    pub fn apply(&self, policy: &str) -> std::process::Output {
        let file = self.dir.path().join("apply.toml");
        fs::write(&file, policy).expect("writing the policy");
        std::process::Command::new(agentd_bin())
            .arg("apply")
            .arg(&file)
            .arg("--socket")
            .arg(&self.admin)
            .output()
            .expect("running agentd apply")
    }

    /// agentd's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's admin socket.
    pub fn admin_socket(&self) -> &Path {
        &self.admin
    }

    /// What agentd has logged so far (its stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agentd.log")).unwrap_or_default()
    }

    /// `agentd risk show AGENT --json`, as JSON.
    pub fn risk(&self, agent: &str) -> serde_json::Value {
        agentd::api::admin(
            &self.admin,
            &agentd::api::AdminRequest::Risk(agentd::api::RiskRequest::Show {
                agent: agent.to_owned(),
            }),
        )
        .expect("asking for the agent's risk")
    }

    /// Sends a risk request and returns the answer.
    pub fn risk_request(
        &self,
        request: agentd::api::RiskRequest,
    ) -> Result<serde_json::Value, agentd::api::ClientError> {
        agentd::api::admin(&self.admin, &agentd::api::AdminRequest::Risk(request))
    }

    /// The JSON event lines agentd has printed so far.
    pub fn events(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let _ = self.child.wait();
        // Whatever the daemon left (a crash, `on_exit = "keep"`) goes with the test.
        let _ = agentd::pins::teardown(&self.pin_path);
    }
}

/// A pin directory no other test uses.
#[must_use]
pub fn unique_pin_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/agentd-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

/// Reads a pid that a test script wrote to `path`, waiting for the file to appear.
pub fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    wait_until(&format!("{} is written", path.display()), || {
        pid = fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    });
    pid.expect("checked above")
}

/// Kills `pid` with SIGKILL, ignoring a process that is already gone.
pub fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills every process in the cgroup at its path and removes the cgroup when dropped.
pub struct CgroupGuard(pub PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let kill_file = self.0.join("cgroup.kill");
        if fs::write(&kill_file, "1").is_err() {
            for pid in agentd::cgroups::procs(&self.0).unwrap_or_default() {
                kill(pid);
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// A guard for the launch cgroup agentd creates for `agent`.
pub fn launch_cgroup(agent: &str) -> CgroupGuard {
    CgroupGuard(agentd::cgroups::launch_dir(&cgroup2_mount(), agent))
}

/// Whether the kernel names a socket through `NETLINK_SOCK_DIAG`, which agentd's resolver needs
/// to tell which agent asks (where `inet_diag`, `udp_diag` and `tcp_diag` are modules that
/// cannot be loaded, as in the vm tier's initramfs, it cannot). Prints why not.
pub fn sock_diag_available() -> bool {
    match agentd::dns::peer::probe() {
        Ok(()) => true,
        Err(err) => {
            println!("skipped: {err}");
            false
        }
    }
}

/// A policy with one agent and nothing else.
pub fn agent_policy(name: &str) -> String {
    format!("[[agent]]\nname = \"{name}\"\n")
}

/// The test helper binary: `built` (the test crate's `CARGO_BIN_EXE_agentd-test-helper`), or
/// inside the vm tier, where it is installed beside the test binaries, `AGENTD_TEST_HELPER`.
pub fn test_helper(built: &str) -> PathBuf {
    std::env::var_os("AGENTD_TEST_HELPER").map_or_else(|| PathBuf::from(built), PathBuf::from)
}
