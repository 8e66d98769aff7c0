//! Decision sets: loads what the evaluator needs from the store (policies, agents with their
//! governance state and blueprint settings, aggregated risk, active access packages), evaluates
//! every agent for one host, and digests the result so that a new version is issued only when
//! the content changes. Hosts that the policies cannot tell apart (the same values of every
//! label a policy names, and the same policy-named host ids and hostnames) get the same
//! decisions: [`Inputs::host_key`] says which, so that they are evaluated once.

mod cache;

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest as _, Sha256};

pub use self::cache::{InputsCache, Shared};
use crate::{
    clock::UnixTime,
    error::Result,
    model::{AccessPackageState, DEFAULT_OFFLINE_TTL_SECONDS, Host, ResolvedAgent},
    policy::{
        ActivePolicy, Decision, HostRef, PolicyVerdict, RiskLevel,
        evaluate::{Facts, PackageGrant, Place, PolicySet, Subject, evaluate},
    },
    risk::{AgentRisk, aggregate},
    store::{Store, registry::AgentFilter},
};

/// Everything decisions depend on except the host and the time, loaded once per evaluation
/// round and shared by every host evaluated in it.
pub struct Inputs {
    /// Indexed once per load (see [`PolicySet`]), for every host and agent evaluated.
    pub policies: PolicySet,
    pub subjects: Vec<Subject>,
    pub packages: HashMap<String, Vec<PackageGrant>>,
    pub risks: HashMap<String, AgentRisk>,
    /// Every host that was not revoked when the inputs were loaded, by id.
    pub hosts: HashMap<String, Place>,
    /// What of a host the policies look at (see [`Inputs::host_key`]).
    host_conditions: HostConditions,
}

/// The host facts that policy conditions read: label keys (`conditions.hostLabels`) and host
/// ids or hostnames (`conditions.hosts`), each sorted and without duplicates.
#[derive(Debug, Default)]
struct HostConditions {
    label_keys: Vec<String>,
    names: Vec<HostRef>,
}

impl HostConditions {
    fn of(policies: &[ActivePolicy]) -> Self {
        let mut label_keys = BTreeSet::new();
        let mut names = BTreeSet::new();
        for policy in policies {
            let conditions = &policy.document.conditions;
            label_keys.extend(conditions.host_labels.keys().cloned());
            names.extend(conditions.hosts.iter().cloned());
        }
        Self {
            label_keys: label_keys.into_iter().collect(),
            names: names.into_iter().collect(),
        }
    }
}

/// What a host's decisions depend on: the host's value of every label key that some policy's
/// conditions name, and which of the host ids and hostnames that policies name are this
/// host's. With the same inputs and time, hosts with equal keys get equal decisions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    labels: Vec<Option<String>>,
    names: Vec<usize>,
}

/// Loads the inputs as they stand at `now`.
pub async fn load_inputs(store: &Store, now: UnixTime, risk_window: i64) -> Result<Inputs> {
    let policies = store.active_policies().await?;
    let agents = store.list_agents(&AgentFilter::default()).await?;
    let ttl_by_blueprint: HashMap<String, u32> = store
        .list_blueprints()
        .await?
        .into_iter()
        .map(|b| (b.name, b.spec.offline_ttl_seconds))
        .collect();
    let detections = store.recent_detections(now - risk_window).await?;
    let confirmations = store.risk_confirmations().await?;
    let mut packages: HashMap<String, Vec<PackageGrant>> = HashMap::new();
    for package in store
        .list_access_packages(None, Some(AccessPackageState::Active), now)
        .await?
    {
        packages
            .entry(package.agent_id.clone())
            .or_default()
            .push(PackageGrant {
                package_id: package.id,
                resources: package.spec.resources,
                expires_at: package.expires_at,
            });
    }
    let hosts = store
        .active_host_facts()
        .await?
        .into_iter()
        .map(|host| {
            let place = Place {
                id: host.id,
                hostname: host.hostname,
                labels: host.labels,
            };
            (place.id.clone(), place)
        })
        .collect();
    let mut risks = HashMap::new();
    let mut subjects = Vec::with_capacity(agents.len());
    for resolved in agents {
        let confirmation = confirmations
            .iter()
            .find(|c| c.agent_id == resolved.agent.id);
        let risk = aggregate(
            &resolved.agent.id,
            &detections,
            confirmation,
            now,
            risk_window,
        );
        let ttl = ttl_by_blueprint
            .get(&resolved.agent.blueprint)
            .copied()
            .filter(|&ttl| ttl > 0)
            .unwrap_or(DEFAULT_OFFLINE_TTL_SECONDS);
        subjects.push(subject(resolved, risk.level, ttl));
        risks.insert(risk.agent_id.clone(), risk);
    }
    Ok(Inputs {
        host_conditions: HostConditions::of(&policies),
        policies: PolicySet::new(policies),
        subjects,
        packages,
        risks,
        hosts,
    })
}

fn subject(resolved: ResolvedAgent, risk: RiskLevel, offline_ttl_seconds: u32) -> Subject {
    let ResolvedAgent {
        agent,
        effective_attributes,
        effective_offline_behavior,
        effective_governance: _,
        svid_lifetimes: _,
    } = resolved;
    Subject {
        orphaned: agent.sponsors.is_empty(),
        id: agent.id,
        name: agent.name,
        blueprint: agent.blueprint,
        attributes: effective_attributes,
        state: agent.state,
        disabled_reason: agent.disabled_reason,
        risk,
        offline_behavior: effective_offline_behavior,
        offline_ttl_seconds,
    }
}

pub fn place(host: &Host) -> Place {
    Place {
        id: host.id.clone(),
        hostname: host.hostname.clone(),
        labels: host.labels.clone(),
    }
}

impl Inputs {
    /// The host's [`HostKey`] for these inputs' policies.
    pub fn host_key(&self, host: &Place) -> HostKey {
        let conditions = &self.host_conditions;
        HostKey {
            labels: conditions
                .label_keys
                .iter()
                .map(|key| host.labels.get(key).cloned())
                .collect(),
            names: conditions
                .names
                .iter()
                .enumerate()
                .filter(|(_, name)| name.matches(&host.id, &host.hostname))
                .map(|(index, _)| index)
                .collect(),
        }
    }

    /// One decision per registered (not deleted) agent, in agent-name order.
    pub fn decide_for_host(&self, host: &Place, now: UnixTime) -> Vec<Decision> {
        self.subjects
            .iter()
            .map(|subject| {
                let facts = Facts {
                    subject,
                    host: Some(host),
                    now,
                    packages: self.packages.get(&subject.id).map_or(&[], Vec::as_slice),
                };
                evaluate(&self.policies, &facts, false).0
            })
            .collect()
    }

    /// What-if for one agent, with optional overrides.
    pub fn explain(
        &self,
        agent_id: &str,
        risk: Option<RiskLevel>,
        host: Option<&Place>,
        now: UnixTime,
    ) -> Option<(Decision, Vec<PolicyVerdict>)> {
        let mut subject = self.subjects.iter().find(|s| s.id == agent_id)?.clone();
        if let Some(risk) = risk {
            subject.risk = risk;
        }
        let facts = Facts {
            subject: &subject,
            host,
            now,
            packages: self.packages.get(agent_id).map_or(&[], Vec::as_slice),
        };
        Some(evaluate(&self.policies, &facts, true))
    }
}

/// A digest of a decision set's content (not its version or issue time).
pub fn digest(decisions: &[Decision]) -> String {
    let json = serde_json::to_vec(decisions).expect("decisions serialize to JSON");
    hex::encode(Sha256::digest(json))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        model::{AgentState, OfflineBehavior},
        policy::{Action, parse_document},
    };

    fn inputs(yamls: &[&str]) -> Inputs {
        let policies: Vec<ActivePolicy> = yamls
            .iter()
            .enumerate()
            .map(|(i, yaml)| {
                let document = parse_document(yaml).expect("valid policy");
                ActivePolicy {
                    id: format!("p{i}"),
                    state: document.state,
                    document,
                }
            })
            .collect();
        let subject = Subject {
            id: "00000000-0000-4000-8000-000000000001".into(),
            name: "billing-bot".into(),
            blueprint: "finance".into(),
            attributes: BTreeMap::new(),
            state: AgentState::Active,
            disabled_reason: String::new(),
            orphaned: false,
            risk: RiskLevel::None,
            offline_behavior: OfflineBehavior::FailClosed,
            offline_ttl_seconds: 600,
        };
        Inputs {
            host_conditions: HostConditions::of(&policies),
            policies: PolicySet::new(policies),
            subjects: vec![subject],
            packages: HashMap::new(),
            risks: HashMap::new(),
            hosts: HashMap::new(),
        }
    }

    fn host(id: &str, hostname: &str, labels: &[(&str, &str)]) -> Place {
        Place {
            id: id.into(),
            hostname: hostname.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Equal keys must mean equal decisions, and every fact a policy reads must split the keys.
    #[test]
    fn host_keys_tell_hosts_apart_exactly_where_policies_do() {
        let inputs = inputs(&[
            "name: prod\nstate: enabled\nassignments:\n  include: {all: true}\nconditions:\n  hostLabels: {env: prod}\ncontrols:\n  block: true\n",
            "name: named\nstate: enabled\nassignments:\n  include: {all: true}\nconditions:\n  hosts: [web-1, 5584eb25-0000-4000-8000-00000000000d]\ncontrols:\n  network:\n    deny:\n      - domain: evil.example\n",
        ]);
        let hosts = [
            host("a", "h-a", &[("env", "prod"), ("zone", "1")]),
            host("b", "h-b", &[("env", "prod"), ("zone", "2")]),
            host("c", "h-c", &[("env", "dev")]),
            host("d", "h-d", &[]),
            host("e", "web-1", &[("env", "prod")]),
            host(
                "5584eb25-0000-4000-8000-00000000000d",
                "h-f",
                &[("env", "prod")],
            ),
            host("g", "h-g", &[("env", "dev"), ("zone", "1")]),
        ];
        let keys: Vec<HostKey> = hosts.iter().map(|h| inputs.host_key(h)).collect();
        let decided: Vec<Vec<Decision>> =
            hosts.iter().map(|h| inputs.decide_for_host(h, 0)).collect();
        for i in 0..hosts.len() {
            for j in 0..hosts.len() {
                if keys[i] == keys[j] {
                    assert_eq!(
                        decided[i], decided[j],
                        "{} and {}",
                        hosts[i].id, hosts[j].id
                    );
                }
            }
        }
        // A label no policy names does not split; a named label's value and a named host do.
        assert_eq!(keys[0], keys[1]);
        assert_eq!(keys[2], keys[6]);
        assert_ne!(keys[0], keys[2]);
        assert_ne!(keys[2], keys[3], "a missing label is not another value");
        assert_ne!(keys[0], keys[4], "named by hostname");
        assert_ne!(keys[0], keys[5], "named by id");
        assert_eq!(decided[0][0].action, Action::Block);
        assert_eq!(decided[2][0].action, Action::Allow);
        assert!(decided[0][0].network.denials.is_empty());
        assert_eq!(decided[4][0].network.denials.len(), 1);
    }
}
