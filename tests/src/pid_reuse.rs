//! Forcing pid reuse, for the tests that an identification made by pid cannot be taken over:
//! `/proc/sys/kernel/ns_last_pid` (`CONFIG_CHECKPOINT_RESTORE`) sets the pid the next fork gets.

use std::{fs, path::Path, process::Child};

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// Whether this kernel lets a test choose the next pid; if not, says why on stderr (the test
/// is then skipped).
#[must_use]
pub fn can_force_pid_reuse() -> bool {
    let available = Path::new(NS_LAST_PID).exists();
    if !available {
        eprintln!(
            "skipped: this kernel has no ns_last_pid (CONFIG_CHECKPOINT_RESTORE), so pid reuse \
             cannot be forced"
        );
    }
    available
}

/// A process started by `spawn` whose pid is `pid` (a pid whose process has exited), tried up
/// to 200 times (another fork on the machine may take the pid first). Every other process
/// started is killed.
pub fn spawn_with_pid(pid: u32, mut spawn: impl FnMut() -> Child) -> Option<Child> {
    for _ in 0..200 {
        fs::write(NS_LAST_PID, (pid - 1).to_string()).expect("writing ns_last_pid");
        let mut child = spawn();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}
