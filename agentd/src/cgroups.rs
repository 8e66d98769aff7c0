//! cgroup v2: where it is mounted, cgroup ids, and the cgroups agentd manages for launched
//! agents (`<cgroup2 root>/agentd/<agent name>`).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The directory under the cgroup v2 root that holds agentd's launch cgroups.
pub const MANAGED_DIR: &str = "agentd";

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a pure cgroup v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn root() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .map(|fields| PathBuf::from(fields[1]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "cgroup v2 is not mounted"))
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`) for the cgroup at `dir`: the
/// inode number of its directory.
pub fn id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// The launch cgroup of `agent` under `root`.
#[must_use]
pub fn launch_dir(root: &Path, agent: &str) -> PathBuf {
    root.join(MANAGED_DIR).join(agent)
}

/// Creates `dir` (and its parents) if needed and returns its cgroup id.
pub fn ensure(dir: &Path) -> io::Result<u64> {
    fs::create_dir_all(dir)?;
    id(dir)
}

/// Moves the calling process into the cgroup at `dir`.
pub fn enter(dir: &Path) -> io::Result<()> {
    // Writing "0" moves the writer itself.
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?
        .write_all(b"0")
}

/// The processes in the cgroup at `dir` (not its descendants).
pub fn procs(dir: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}
