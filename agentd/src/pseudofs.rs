//! The pseudo file systems agentd reads: securityfs (the active LSM list), tracefs (the syscall
//! tracepoints of the file observer) and a BPF file system (the pins). Many hosts boot without
//! some of them mounted; agentd mounts what is absent, unless told not to, and says so. What
//! stays absent is reported by the sensor that needs it, never fatal on its own.

use std::{
    ffi::CString,
    fmt, io,
    path::{Path, PathBuf},
};

/// `statfs(2)` magic numbers (linux/magic.h).
const SECURITYFS_MAGIC: i64 = 0x7363_6673;
pub const TRACEFS_MAGIC: i64 = 0x7472_6163;
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where securityfs and tracefs belong.
pub const SECURITYFS: &str = "/sys/kernel/security";
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// The usual BPF file system mount point.
pub const BPF_FS: &str = "/sys/fs/bpf";

/// What happened to one pseudo file system at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was mounted already.
    Present,
    /// agentd mounted it.
    Mounted,
    /// It is absent and agentd was told not to mount (`[bpf] mount_filesystems = false`).
    Absent,
    /// It is absent and mounting it failed.
    Failed(String),
}

/// One pseudo file system and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PseudoFs {
    pub fstype: &'static str,
    pub target: PathBuf,
    pub outcome: Outcome,
}

impl PseudoFs {
    /// Whether it is there to use now.
    pub fn usable(&self) -> bool {
        matches!(self.outcome, Outcome::Present | Outcome::Mounted)
    }
}

impl fmt::Display for PseudoFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (fstype, target) = (self.fstype, self.target.display());
        match &self.outcome {
            Outcome::Present => write!(f, "{fstype} is mounted at {target}"),
            Outcome::Mounted => write!(f, "agentd mounted {fstype} at {target}"),
            Outcome::Absent => write!(
                f,
                "{fstype} is not mounted at {target} and [bpf] mount_filesystems is false \
                 (mount it: `mount -t {fstype} {fstype} {target}`)"
            ),
            Outcome::Failed(why) => write!(f, "{fstype} is not mounted at {target}: {why}"),
        }
    }
}

/// The state of the three pseudo file systems after [`prepare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounts {
    pub securityfs: PseudoFs,
    pub tracefs: PseudoFs,
    pub bpffs: PseudoFs,
}

impl Mounts {
    pub fn all(&self) -> [&PseudoFs; 3] {
        [&self.securityfs, &self.tracefs, &self.bpffs]
    }
}

/// The file system type magic of `path`.
fn magic(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: a zeroed statfs is a valid value of the plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) on a NUL-terminated path into a struct we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::useless_conversion,
        reason = "f_type's type differs between libcs"
    )]
    Ok(i64::from(stat.f_type))
}

/// Whether `path` is on a file system with `want` magic.
pub fn is_on(path: &Path, want: i64) -> bool {
    magic(path).is_ok_and(|found| found == want)
}

/// Whether `path` (or, when it does not exist yet, its nearest existing ancestor) is on a BPF
/// file system.
pub fn on_bpf_fs(path: &Path) -> bool {
    path.ancestors()
        .find(|dir| dir.exists())
        .is_some_and(|dir| is_on(dir, BPF_FS_MAGIC))
}

fn mount(fstype: &str, target: &Path) -> io::Result<()> {
    let to_c = |text: &[u8]| {
        CString::new(text).map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
    };
    let (source, kind, target_c) = (
        to_c(fstype.as_bytes())?,
        to_c(fstype.as_bytes())?,
        to_c(target.as_os_str().as_encoded_bytes())?,
    );
    // SAFETY: mount(2) with NUL-terminated strings we own and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            kind.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes sure `fstype` is mounted at `target`, mounting it when absent and `may_mount`.
fn ensure(fstype: &'static str, target: &Path, want: i64, may_mount: bool) -> PseudoFs {
    let outcome = if is_on(target, want) {
        Outcome::Present
    } else if !may_mount {
        Outcome::Absent
    } else {
        match std::fs::create_dir_all(target).and_then(|()| mount(fstype, target)) {
            Ok(()) if is_on(target, want) => Outcome::Mounted,
            Ok(()) => Outcome::Failed("mounted, but the mount is not visible".to_owned()),
            Err(err) => Outcome::Failed(format!("mounting it failed: {err}")),
        }
    };
    PseudoFs {
        fstype,
        target: target.to_owned(),
        outcome,
    }
}

/// Where the BPF file system for `pin_path` belongs: `/sys/fs/bpf` for pins under it (the
/// default), the pin directory itself otherwise.
fn bpf_fs_target(pin_path: &Path) -> PathBuf {
    if pin_path.starts_with(BPF_FS) {
        PathBuf::from(BPF_FS)
    } else {
        pin_path.to_owned()
    }
}

/// Mounts what is absent (when `may_mount`) and logs each pseudo file system agentd did or
/// could not mount.
pub fn prepare(pin_path: &Path, may_mount: bool) -> Mounts {
    let securityfs = ensure(
        "securityfs",
        Path::new(SECURITYFS),
        SECURITYFS_MAGIC,
        may_mount,
    );
    let tracefs = ensure("tracefs", Path::new(TRACEFS), TRACEFS_MAGIC, may_mount);
    let bpffs = if on_bpf_fs(pin_path) {
        PseudoFs {
            fstype: "bpf",
            target: pin_path.to_owned(),
            outcome: Outcome::Present,
        }
    } else {
        ensure("bpf", &bpf_fs_target(pin_path), BPF_FS_MAGIC, may_mount)
    };
    let mounts = Mounts {
        securityfs,
        tracefs,
        bpffs,
    };
    for fs in mounts.all() {
        match fs.outcome {
            Outcome::Present => tracing::debug!("{fs}"),
            Outcome::Mounted => tracing::info!("{fs} (it was absent)"),
            Outcome::Absent | Outcome::Failed(_) => tracing::warn!("{fs}"),
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_under_sys_fs_bpf_mount_it_there_and_others_in_place() {
        assert_eq!(
            bpf_fs_target(Path::new("/sys/fs/bpf/agentd")),
            Path::new("/sys/fs/bpf")
        );
        assert_eq!(
            bpf_fs_target(Path::new("/run/agentd/pins")),
            Path::new("/run/agentd/pins")
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_pseudo_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_on(dir.path(), TRACEFS_MAGIC));
        assert!(!on_bpf_fs(&dir.path().join("not/yet")));
    }

    #[test]
    fn an_absent_file_system_says_how_to_mount_it() {
        let dir = tempfile::tempdir().unwrap();
        let fs = ensure("tracefs", dir.path(), TRACEFS_MAGIC, false);
        assert_eq!(fs.outcome, Outcome::Absent);
        assert!(!fs.usable());
        assert!(
            fs.to_string().contains(&format!(
                "mount -t tracefs tracefs {}",
                dir.path().display()
            )),
            "{fs}"
        );
    }
}
