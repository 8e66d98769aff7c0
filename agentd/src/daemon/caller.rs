//! Who may steer agentd through its admin socket: root, and never an agent.
//!
//! The caller is the process that connected, pinned with a pidfd at accept
//! ([`attest::Peer`]), not whatever process holds the connection when it writes a request:
//! a tagged process could otherwise connect, hand the descriptor to an untagged one (a child
//! of another tree, over `SCM_RIGHTS`) and exit, and its pid would then name nobody tagged.
//! The caller is judged twice: at accept, and again when its request is handled, and each
//! time its tag is believed only if the pinned process is still alive after the lookup (a live
//! process keeps its pid). A connection whose process has exited is refused: its answer
//! would go to a process nobody can name.

use crate::{
    identity::attest::{AttestError, Peer},
    sensors::{SensorError, process::TagLookup},
};

/// Why a connection to the admin socket is not served.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Also a process that exited before it could be pinned: "has exited" is in the text.
    #[error("could not pin the connecting process: {0}")]
    Unpinned(AttestError),
    #[error(
        "the process that opened this connection (pid {pid}) has exited: a connection is \
         served only while the process that opened it lives"
    )]
    Exited { pid: u32 },
    #[error("agents may not use the admin socket: process {pid} carries agent {agent}'s tag")]
    Agent { pid: u32, agent: u32 },
    #[error("the admin socket is for root only (the connecting process runs as uid {uid})")]
    NotRoot { uid: u32 },
    #[error("looking up the caller's tag")]
    Lookup(#[source] SensorError),
}

/// A caller admitted at accept.
#[derive(Debug)]
pub struct AdminCaller {
    peer: Peer,
}

impl AdminCaller {
    /// Judges a connection at accept: `peer` is [`Peer::of`] the accepted stream.
    pub fn admit(peer: Result<Peer, AttestError>, tags: &impl TagLookup) -> Result<Self, Refusal> {
        let peer = peer.map_err(Refusal::Unpinned)?;
        let caller = Self { peer };
        caller.check(tags)?;
        Ok(caller)
    }

    /// Judges the caller again, when its request is handled.
    pub fn recheck(&self, tags: &impl TagLookup) -> Result<(), Refusal> {
        self.check(tags)
    }

    /// The pinned process's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.peer.pid
    }

    fn check(&self, tags: &impl TagLookup) -> Result<(), Refusal> {
        let Peer { pid, uid, .. } = self.peer;
        let tag = tags.tag_of(pid).map_err(Refusal::Lookup)?;
        // The lookup was about the pinned process only if it still owns its pid.
        if !self.peer.alive() {
            return Err(Refusal::Exited { pid });
        }
        if let Some(tag) = tag.filter(|tag| tag.agent != 0) {
            return Err(Refusal::Agent {
                pid,
                agent: tag.agent,
            });
        }
        if uid != 0 {
            return Err(Refusal::NotRoot { uid });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, os::unix::net::UnixStream};

    use agentd_common::{AgentTag, TagSource};

    use super::*;
    use crate::clock::boottime_ticks;

    /// Tags every pid with `tag` once `tagged` is set.
    struct Tags {
        tagged: Cell<bool>,
    }

    impl TagLookup for Tags {
        fn tag_of(&self, _pid: u32) -> Result<Option<AgentTag>, SensorError> {
            Ok(self
                .tagged
                .get()
                .then(|| AgentTag::new(7, TagSource::Launch, 0)))
        }
    }

    #[test]
    fn a_tagged_caller_is_refused_at_accept() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let tags = Tags {
            tagged: Cell::new(true),
        };
        let refusal = AdminCaller::admit(Peer::of(&ours, boottime_ticks()), &tags).unwrap_err();
        assert!(
            matches!(refusal, Refusal::Agent { agent: 7, pid } if pid == std::process::id()),
            "{refusal:?}"
        );
        assert!(
            refusal
                .to_string()
                .contains("agents may not use the admin socket")
        );
    }

    #[test]
    fn a_caller_tagged_after_accept_is_refused_when_its_request_is_handled() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let tags = Tags {
            tagged: Cell::new(false),
        };
        let admitted = AdminCaller::admit(Peer::of(&ours, boottime_ticks()), &tags);
        // SAFETY: no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            // The unit tests also run unprivileged: then the last check refuses.
            assert!(
                matches!(admitted, Err(Refusal::NotRoot { uid: refused }) if refused == uid),
                "{admitted:?}"
            );
            return;
        }
        let caller = admitted.unwrap();
        assert!(caller.recheck(&tags).is_ok());
        tags.tagged.set(true);
        assert!(matches!(
            caller.recheck(&tags),
            Err(Refusal::Agent { agent: 7, .. })
        ));
    }
}
