//! One id per agent everywhere: an agent that the local policy names without an `id` takes the
//! control plane's id for it (the decisions match it by name), so that host events, the
//! identity socket, the registry and its SPIFFE ID all name the same agent. Until the control
//! plane has named it, its id is derived from its name (`AgentId::from_name`).
//!
//! The adopted ids are kept with the decision set on disk, so that a restart compiles the
//! policy with them before anything is tagged. An agent renamed in the registry keeps its
//! kernel index: processes tagged before resolve to the adopted id.

use std::collections::HashMap;

use uuid::Uuid;

use super::state::State;
use crate::{conditional::DecisionSet, config::Config, identity::AgentId, policy::CompiledPolicy};

/// The control plane's id for each agent name in `set`.
pub(super) fn ids_of(set: &DecisionSet) -> HashMap<String, AgentId> {
    set.decisions
        .iter()
        .filter_map(|decision| {
            let id = Uuid::parse_str(&decision.agent_id).ok()?;
            Some((decision.agent_name.clone(), AgentId(id)))
        })
        .collect()
}

/// The ids in the decision set kept on disk, when a control plane is configured. A set that
/// cannot be read adopts nothing here (`start_control` reports it).
pub(super) fn kept_ids(config: &Config) -> HashMap<String, AgentId> {
    if config.control_plane.url.is_none() {
        return HashMap::new();
    }
    let path = crate::control::decisions_path(&config.control_plane.state_dir);
    match DecisionSet::load(&path) {
        Ok(Some(set)) => ids_of(&set),
        Ok(None) | Err(_) => HashMap::new(),
    }
}

impl State {
    /// Gives the agents of a freshly compiled policy that have no `id` the control plane's, and
    /// renames them in the registry if an earlier policy knew them by their derived id.
    pub(super) fn adopt_into(&mut self, compiled: &mut CompiledPolicy) {
        let given: Vec<AgentId> = compiled
            .agents
            .iter()
            .filter(|agent| agent.id_given)
            .map(|agent| agent.agent.id)
            .collect();
        for agent in compiled.agents.iter_mut().filter(|agent| !agent.id_given) {
            let Some(&adopted) = self.ca.adopted.get(&agent.agent.name) else {
                continue;
            };
            if given.contains(&adopted) {
                tracing::warn!(
                    agent = %agent.agent.name,
                    control_plane_id = %adopted,
                    "another agent of the local policy has the control plane's id for this one; \
                     it keeps the id derived from its name"
                );
                continue;
            }
            let derived = AgentId::from_name(&agent.agent.name);
            self.registry.adopt(derived, adopted);
            self.risk.rename(derived, adopted);
            agent.agent.id = adopted;
        }
    }

    /// Adopts the ids of a decision set for the agents in force that have no `id` of their own:
    /// each is renamed behind its kernel index, its risk state follows, and the pinned registry
    /// is rewritten. An agent whose `id` the policy gave keeps it (`warn_of_other_ids`).
    pub(super) fn adopt_from(&mut self, set: &DecisionSet) {
        let ids = ids_of(set);
        let given: Vec<AgentId> = self
            .policy
            .agents
            .iter()
            .filter(|agent| agent.id_given)
            .map(|agent| agent.agent.id)
            .collect();
        let mut changed = false;
        for agent in self.policy.agents.iter_mut().filter(|a| !a.id_given) {
            let Some(&adopted) = ids.get(&agent.agent.name) else {
                continue;
            };
            if agent.agent.id == adopted || given.contains(&adopted) {
                continue;
            }
            let old = agent.agent.id;
            self.registry.adopt(old, adopted);
            self.risk.rename(old, adopted);
            agent.agent.id = adopted;
            changed = true;
            tracing::info!(
                agent = %agent.agent.name,
                from = %old,
                id = %adopted,
                "the agent takes the control plane's id"
            );
        }
        // Kept for a later policy even if the control plane stops naming the agent.
        self.ca.adopted.extend(ids);
        if changed && let Err(err) = self.persist_registry() {
            tracing::warn!(err = %anyhow::Error::from(err), "saving adopted agent ids to the pinned registry");
        }
    }
}
