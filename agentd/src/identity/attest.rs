//! Who is on the other end of a Unix socket, from the kernel's own record, never from anything
//! the caller says.
//!
//! The peer's pid comes from `SO_PEERCRED`, taken by the kernel at `connect(2)`. A pid alone can
//! be reused, so the peer is pinned with a pidfd: `SO_PEERPIDFD` (Linux 6.5+) gives one for the
//! exact process that connected. On older kernels agentd opens a pidfd for the pid and refuses
//! it if that process started after the connection was accepted (a reused pid). Whatever is
//! looked up for the pid is trusted only if the pidfd's process is still alive afterwards: a
//! live process keeps its pid, so the answer was about that process.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

/// How the peer was pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pinning {
    /// `SO_PEERPIDFD`: the kernel's pidfd of the connecting process.
    PeerPidfd,
    /// `pidfd_open` of the `SO_PEERCRED` pid, checked against the connection time.
    PidfdOpen,
}

/// A connected peer process, pinned.
#[derive(Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub pinning: Pinning,
    pidfd: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("reading the peer's credentials")]
    PeerCred(#[source] io::Error),
    #[error("the connecting process has exited")]
    PeerGone,
    #[error("pid {0} now belongs to a process that started after the connection")]
    PidReused(u32),
    #[error("opening a pidfd for pid {pid}")]
    Pidfd {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

fn getsockopt<T>(fd: RawFd, option: libc::c_int, value: &mut T) -> io::Result<()> {
    let mut len = libc::socklen_t::try_from(size_of::<T>()).expect("small option");
    // SAFETY: `value` is a valid, writable T and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::from_mut(value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Peer {
    /// Identifies and pins the process at the other end of `socket`. `accepted_at` is
    /// [`crate::clock::boottime_ticks`] taken when the connection was accepted.
    pub fn of(socket: &impl AsRawFd, accepted_at: u64) -> Result<Self, AttestError> {
        let fd = socket.as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        getsockopt(fd, libc::SO_PEERCRED, &mut cred).map_err(AttestError::PeerCred)?;
        let pid = u32::try_from(cred.pid).map_err(|_| AttestError::PeerGone)?;

        let mut raw: libc::c_int = -1;
        let peer = if getsockopt(fd, libc::SO_PEERPIDFD, &mut raw).is_ok() && raw >= 0 {
            // SAFETY: the kernel returned a new fd that we now own.
            let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
            Self {
                pid,
                uid: cred.uid,
                pinning: Pinning::PeerPidfd,
                pidfd,
            }
        } else {
            let pidfd = crate::pidfd::open(pid).map_err(|source| {
                if source.raw_os_error() == Some(libc::ESRCH) {
                    AttestError::PeerGone
                } else {
                    AttestError::Pidfd { pid, source }
                }
            })?;
            let started = crate::pidfd::start_ticks(pid).map_err(|_| AttestError::PeerGone)?;
            if started > accepted_at {
                return Err(AttestError::PidReused(pid));
            }
            Self {
                pid,
                uid: cred.uid,
                pinning: Pinning::PidfdOpen,
                pidfd,
            }
        };
        if !peer.alive() {
            return Err(AttestError::PeerGone);
        }
        Ok(peer)
    }

    /// Whether the pinned process is still alive (and so still owns `pid`).
    #[must_use]
    pub fn alive(&self) -> bool {
        crate::pidfd::alive(&self.pidfd)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::clock::boottime_ticks;

    #[test]
    fn a_connected_peer_is_this_process_and_alive() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let peer = Peer::of(&ours, boottime_ticks()).unwrap();
        assert_eq!(peer.pid, std::process::id());
        assert!(peer.alive());
        drop(theirs);
    }

    #[test]
    fn start_time_is_before_now() {
        let started = crate::pidfd::start_ticks(std::process::id()).unwrap();
        assert!(started <= boottime_ticks());
    }
}
