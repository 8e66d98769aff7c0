//! Decisions to protobuf, and the per-host decision set behind `WatchDecisions`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::time::Instant;

use super::{ControlPlane, batch, optional_timestamp, registry::offline_to_proto, timestamp};
use crate::{
    clock::UnixTime,
    decisions::{self, Inputs, place},
    error::{Error, Result},
    policy::{
        Action, Decision, Destination, FileControl, NetworkGrant, NetworkVerdict, evaluate::Place,
    },
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

/// Decision inputs loaded once and shared by the watches that re-evaluate after one change.
pub(super) struct CachedInputs {
    /// The change generation read before loading: the inputs reflect every change signalled
    /// up to it.
    generation: u64,
    /// The time they were loaded for (risk windows and access-package expiry depend on it).
    now: UnixTime,
    /// When loading started: the inputs reflect every write committed before it.
    load_started: Instant,
    inputs: Arc<Loaded>,
}

/// Inputs, and the decision sets evaluated from them so far: one per distinct
/// [`HostKey`](decisions::HostKey) and time, shared by every host with that key. They live
/// and go with the inputs, so a change (which loads new inputs) never sees an older set.
pub(super) struct Loaded {
    inputs: Inputs,
    sets: Mutex<HashMap<(decisions::HostKey, UnixTime), Arc<SharedSet>>>,
}

/// A decision set's content, evaluated, digested and converted to protobuf once.
struct SharedSet {
    digest: String,
    decisions: Vec<proto::AgentDecision>,
}

impl Loaded {
    fn new(inputs: Inputs) -> Self {
        Self {
            inputs,
            sets: Mutex::default(),
        }
    }

    /// The decision set of a host with these facts at `now`, evaluated on first use.
    fn set_for(&self, host: &Place, now: UnixTime) -> Arc<SharedSet> {
        let key = (self.inputs.host_key(host), now);
        let sets = || self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = sets().get(&key) {
            return Arc::clone(set);
        }
        // Evaluated without the lock: two hosts racing for the same key evaluate the same set.
        let decided = self.inputs.decide_for_host(host, now);
        let set = Arc::new(SharedSet {
            digest: decisions::digest(&decided),
            decisions: decided.iter().map(decision_to_proto).collect(),
        });
        Arc::clone(sets().entry(key).or_insert(set))
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

    /// The inputs of every host's decisions at `now`. A change on this replica bumps the change
    /// generation and wakes every watch; they share one load per generation (and second)
    /// instead of each running the same queries and parsing every policy again, and the
    /// decision sets evaluated from it. `fresh_after` asks for inputs loaded after that instant
    /// (a watch woken by polling, for changes made through another replica or by time alone),
    /// which are then shared likewise.
    async fn decision_inputs(
        &self,
        now: UnixTime,
        fresh_after: Option<Instant>,
    ) -> Result<Arc<Loaded>> {
        let generation = *self.changes.borrow();
        let usable = |cached: &CachedInputs| {
            cached.generation == generation
                && cached.now == now
                && fresh_after.is_none_or(|after| cached.load_started >= after)
        };
        // Held while loading: the watches woken by one change wait for one load.
        let mut cache = self.inputs.lock().await;
        if let Some(cached) = cache.as_ref().filter(|cached| usable(cached)) {
            return Ok(Arc::clone(&cached.inputs));
        }
        let load_started = Instant::now();
        let inputs = Arc::new(Loaded::new(
            decisions::load_inputs(&self.store, now, self.decision_options.risk_window_seconds)
                .await?,
        ));
        *cache = Some(CachedInputs {
            generation,
            now,
            load_started,
            inputs: Arc::clone(&inputs),
        });
        Ok(inputs)
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
        let set = loaded.set_for(host, now);
        let (version, issued_at) = self.settle(host_id, &set.digest, now).await?;
        Ok(Some(proto::DecisionSet {
            version: u64::try_from(version).unwrap_or_default(),
            issue_time: Some(timestamp(issued_at)),
            decisions: set.decisions.clone(),
        }))
    }
}
