//! Decisions to protobuf, and the per-host decision set behind `WatchDecisions`.

use std::sync::Arc;

use tokio::time::Instant;

use super::{ControlPlane, batch, optional_timestamp, registry::offline_to_proto, timestamp};
use crate::{
    clock::UnixTime,
    decisions::{self, Shared, place},
    error::{Error, Result},
    policy::{Action, Decision, Destination, FileControl, NetworkGrant, NetworkVerdict},
    proto,
};

pub(super) fn action_to_proto(action: Action) -> proto::Action {
    match action {
        Action::Allow => proto::Action::Allow,
        Action::Block => proto::Action::Block,
        Action::Quarantine => proto::Action::Quarantine,
    }
}

fn grant_to_proto(grant: &NetworkGrant) -> proto::NetworkGrant {
    use proto::network_grant::Destination as D;
    proto::NetworkGrant {
        destination: Some(match &grant.destination {
            Destination::Cidr(cidr) => D::Cidr(cidr.to_string()),
            Destination::Domain(domain) => D::Domain(domain.clone()),
            Destination::Category(category) => D::Category(category.clone()),
            Destination::McpServer(url) => D::McpServer(url.clone()),
        }),
        ports: grant.ports.map(|p| p.to_string()).unwrap_or_default(),
        expire_time: optional_timestamp(grant.expires_at),
        source: grant.source.clone(),
    }
}

fn file_to_proto(rule: &FileControl) -> proto::FileControl {
    proto::FileControl {
        path: rule.path.clone(),
        access: rule.access.iter().map(|a| a.as_str().to_owned()).collect(),
        action: rule.action.as_str().to_owned(),
        expire_time: optional_timestamp(rule.expires_at),
        source: rule.source.clone(),
    }
}

pub(super) fn decision_to_proto(decision: &Decision) -> proto::AgentDecision {
    let Decision {
        agent_id,
        agent_name,
        action,
        network,
        files,
        policy_ids,
        report_only_policy_ids,
        report_only_action,
        report_only_network,
        offline_behavior,
        offline_ttl_seconds,
        risk,
        reasons,
    } = decision;
    let grants = |verdict: &NetworkVerdict| verdict.grants.iter().map(grant_to_proto).collect();
    let denials = |verdict: &NetworkVerdict| verdict.denials.iter().map(grant_to_proto).collect();
    proto::AgentDecision {
        agent_id: agent_id.clone(),
        agent_name: agent_name.clone(),
        action: action_to_proto(*action).into(),
        network_restricted: network.restricted,
        network_grants: grants(network),
        file_controls: files.iter().map(file_to_proto).collect(),
        policy_ids: policy_ids.iter().map(ToString::to_string).collect(),
        report_only_policy_ids: report_only_policy_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
        report_only_action: report_only_action
            .map_or(proto::Action::Unspecified, action_to_proto)
            .into(),
        offline_behavior: offline_to_proto(*offline_behavior).into(),
        offline_ttl_seconds: *offline_ttl_seconds,
        risk_level: risk.as_str().to_owned(),
        reasons: reasons.iter().map(ToString::to_string).collect(),
        network_denials: denials(network),
        report_only_network_restricted: report_only_network.as_ref().is_some_and(|n| n.restricted),
        report_only_network_grants: report_only_network.as_ref().map(grants).unwrap_or_default(),
        report_only_network_denials: report_only_network
            .as_ref()
            .map(denials)
            .unwrap_or_default(),
    }
}

/// A decision set's content for the wire: digested and converted to protobuf once, shared by
/// every host that has it (`decisions::Shared`).
pub(super) struct SharedSet {
    digest: String,
    decisions: Vec<proto::AgentDecision>,
}

impl SharedSet {
    fn of(decided: &[Decision]) -> Self {
        Self {
            digest: decisions::digest(decided),
            decisions: decided.iter().map(decision_to_proto).collect(),
        }
    }
}

/// A host's decision version to settle: host id, digest, time.
pub(super) type Settle = (String, String, UnixTime);

impl ControlPlane {
    /// [`Store::settle_decisions`], batched with the other hosts' (see [`batch`]): returns the
    /// host's version and its issue time.
    async fn settle(&self, host_id: &str, digest: &str, now: UnixTime) -> Result<(i64, i64)> {
        let store = self.store.clone();
        let item = (host_id.to_owned(), digest.to_owned(), now);
        let write = move |items: Vec<Settle>| {
            let store = store.clone();
            async move {
                let borrowed: Vec<(&str, &str, UnixTime)> = items
                    .iter()
                    .map(|(host, digest, now)| (host.as_str(), digest.as_str(), *now))
                    .collect();
                store
                    .settle_decisions_batch(&borrowed)
                    .await
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, hosts = items.len(), "settling decision versions together; settling each alone");
                    })
                    .ok()
            }
        };
        match batch::submit(&self.settles, item, write).await {
            Some(settled) => Ok(settled),
            None => self.store.settle_decisions(host_id, digest, now).await,
        }
    }

    /// The inputs of every host's decisions at `now`, shared by the watches of this replica
    /// (`decisions::InputsCache`). `fresh_after` asks for inputs loaded after that instant.
    async fn decision_inputs(
        &self,
        now: UnixTime,
        fresh_after: Option<Instant>,
    ) -> Result<Arc<Shared<SharedSet>>> {
        let generation = *self.changes.borrow();
        let load =
            decisions::load_inputs(&self.store, now, self.decision_options.risk_window_seconds);
        self.inputs.get(generation, now, fresh_after, load).await
    }

    /// The calling host's current decision set, with a version that changes only when the
    /// content does; `None` when the host is revoked or gone. `fresh_after`: see
    /// [`ControlPlane::decision_inputs`].
    pub(super) async fn current_decision_set(
        &self,
        host_id: &str,
        fresh_after: Option<Instant>,
    ) -> Result<Option<proto::DecisionSet>> {
        let now = self.now();
        let loaded = self.decision_inputs(now, fresh_after).await?;
        // The inputs hold every host that was active when they were loaded (revoking a host
        // signals a change, so they are reloaded); a host enrolled since is read alone.
        let enrolled;
        let host = match loaded.inputs.hosts.get(host_id) {
            Some(host) => host,
            None => match self.store.get_host(host_id).await {
                Ok(host) if host.revoked_at.is_none() => {
                    enrolled = place(&host);
                    &enrolled
                }
                Ok(_) | Err(Error::NotFound { .. }) => return Ok(None),
                Err(err) => return Err(err),
            },
        };
        let set = loaded.set_for(host, now, SharedSet::of);
        let (version, issued_at) = self.settle(host_id, &set.digest, now).await?;
        Ok(Some(proto::DecisionSet {
            version: u64::try_from(version).unwrap_or_default(),
            issue_time: Some(timestamp(issued_at)),
            decisions: set.decisions.clone(),
        }))
    }
}
