//! Process file descriptors: a handle on one process that, unlike its pid, cannot come to mean
//! another process. Used to pin the peers of local sockets (`identity::attest`) and to confirm
//! that a process is really gone before its tag is removed (`sensors::process`).

use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

/// A process's start time in clock ticks after boot (`/proc/PID/stat` field 22).
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))
}

/// `pidfd_open(2)` of `pid` (a thread-group leader).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: plain syscall; a non-negative return is a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` is still alive (signal 0 through the pidfd).
#[must_use]
pub fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; the pidfd is the caller's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Whether the kernel says that no process `pid` exists: `pidfd_open` fails with `ESRCH`. Any
/// other answer, including an error that proves nothing (out of file descriptors, a pid that
/// is not a thread-group leader), is "not known to be gone". `/proc` is never consulted: what a
/// process can hide from a view of `/proc` (a mount over it, `hidepid`) cannot hide it from
/// the pid table.
#[must_use]
pub fn known_gone(pid: u32) -> bool {
    matches!(open(pid), Err(err) if err.raw_os_error() == Some(libc::ESRCH))
}

/// Sends `SIGKILL` to process `pid` if it is the process that existed at `boottime_ns`
/// (`CLOCK_BOOTTIME`, as kernel events carry it): its start time, read after its pidfd was
/// opened, is not later than that. Returns whether it was killed. A process that started later
/// holds a reused pid and is left alone.
pub fn kill_if_started_by(pid: u32, boottime_ns: u64) -> io::Result<bool> {
    let pidfd = open(pid)?;
    let started = start_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    // One tick of slack: start times are rounded down to ticks.
    if started.saturating_mul(1_000_000_000) / hz.max(1) > boottime_ns {
        return Ok(false);
    }
    // SAFETY: plain syscall on a pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(true)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_not_gone_and_a_reaped_one_is_not_alive() {
        assert!(!known_gone(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let pidfd = open(pid).unwrap();
        child.wait().unwrap();
        assert!(
            !alive(&pidfd),
            "a reaped child is not alive through its pidfd"
        );
    }

    #[test]
    fn kill_spares_a_process_that_started_after_the_event() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!kill_if_started_by(child.id(), 0).unwrap());
        assert!(kill_if_started_by(child.id(), u64::MAX / 2).unwrap());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn a_pid_beyond_pid_max_is_gone() {
        assert!(known_gone(u32::try_from(libc::pid_t::MAX).unwrap()));
    }
}
