//! Decision sets: loads what the evaluator needs from the store (policies, agents with their
//! governance state and blueprint settings, aggregated risk, active access packages), evaluates
//! every agent for one host, and digests the result so that a new version is issued only when
//! the content changes.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use crate::{
    clock::UnixTime,
    error::Result,
    model::{AccessPackageState, DEFAULT_OFFLINE_TTL_SECONDS, Host, ResolvedAgent},
    policy::{
        ActivePolicy, Decision, PolicyVerdict, RiskLevel,
        evaluate::{Facts, PackageGrant, Place, Subject, evaluate},
    },
    risk::{AgentRisk, aggregate},
    store::{Store, registry::AgentFilter},
};

/// Everything decisions depend on except the host and the time, loaded once per evaluation
/// round and shared by every host evaluated in it.
pub struct Inputs {
    pub policies: Vec<ActivePolicy>,
    pub subjects: Vec<Subject>,
    pub packages: HashMap<String, Vec<PackageGrant>>,
    pub risks: HashMap<String, AgentRisk>,
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
        policies,
        subjects,
        packages,
        risks,
    })
}

fn subject(resolved: ResolvedAgent, risk: RiskLevel, offline_ttl_seconds: u32) -> Subject {
    let ResolvedAgent {
        agent,
        effective_attributes,
        effective_offline_behavior,
        effective_governance: _,
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
