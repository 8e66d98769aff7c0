//! Who calls the SPIFFE Workload API (`spiffe::server`): the agent that the calling process's
//! kernel tag names, by the control plane's id for it, and whether that agent may hold a
//! credential on this host now (its decision allows it and it is not quarantined here).

use tonic::Status;

use super::{enrich::agent_ref, error::RequestError, state::State};
use crate::{
    clock::unix_ms,
    conditional::{Action, Standing},
    spiffe::server::{PeerInfo, Subject},
};

impl State {
    pub(super) fn workload_subject(&self, peer: &PeerInfo) -> Result<Subject, Status> {
        let denied = |err: RequestError| Status::permission_denied(err.describe());
        let peer =
            peer.0.as_ref().as_ref().map_err(|err| {
                Status::permission_denied(format!("identifying the caller: {err}"))
            })?;
        let tag = self
            .process
            .tag_of(peer.pid)
            .map_err(|err| denied(err.into()))?;
        // The answer is about the process that connected only if it is still alive.
        if !peer.alive() {
            return Err(denied(RequestError::PeerExited));
        }
        let tag = tag.ok_or_else(|| denied(RequestError::Untagged(peer.pid)))?;
        let agent = agent_ref(&self.registry, tag)
            .ok_or_else(|| denied(RequestError::UnknownIndex(tag.agent)))?;
        let set = self.ca.set.as_ref().ok_or_else(|| {
            Status::unavailable(
                "no decisions from the control plane yet: agents' SVIDs are signed by it",
            )
        })?;
        let decision = set
            .decisions
            .iter()
            .find(|decision| decision.agent_name == agent.name)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "agent {} is not registered with the control plane: it has no SPIFFE ID",
                    agent.name
                ))
            })?;
        let stale_ms = unix_ms().saturating_sub(set.confirmed_unix_ms);
        let blocked = match decision.standing(stale_ms) {
            Standing::FailClosed => Some("blocked: offline past its TTL, fail-closed".to_owned()),
            Standing::Current | Standing::Baseline => match decision.action {
                Action::Allow => None,
                action => Some(format!("its decision on this host is {action:?}").to_lowercase()),
            },
        };
        let quarantined = self
            .net
            .quarantined()
            .is_ok_and(|quarantined| quarantined.contains(&tag.agent));
        if let Some(why) = blocked.or(quarantined.then(|| "it is quarantined".to_owned())) {
            return Err(Status::permission_denied(format!(
                "agent {} may not hold a credential now: {why}",
                agent.name
            )));
        }
        Ok(Subject {
            agent_id: decision.agent_id.clone(),
            agent_name: agent.name,
        })
    }
}
