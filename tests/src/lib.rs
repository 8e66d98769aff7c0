//! Shared helpers for the privileged test tiers (`host/` and `vm/`).
//!
//! These tests load real programs into the running kernel. They must run as root and one at a
//! time (`--test-threads=1`, which `cargo xtask test` passes), since they share kernel state.

#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers fail the test by panicking with context"
)]

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

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
    let mounts = fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .map(|fields| PathBuf::from(fields[1]))
        .expect("cgroup v2 is not mounted")
}

/// How many programs named `name` (truncated to the kernel's 15 bytes) are loaded.
pub fn loaded_program_count(name: &str) -> usize {
    let name = &name.as_bytes()[..name.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| program.name() == name)
        .count()
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
