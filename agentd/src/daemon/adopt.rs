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

/// What [`adopt`] did to one agent.
enum Adopted {
    /// It took the control plane's id; it was known by the first one.
    Renamed(AgentId, AgentId),
    /// Another agent's `id` in the policy is the control plane's id for this one.
    Taken(AgentId),
}

/// Gives each agent of `agents` without an `id` of its own the id `ids` has for its name:
/// renamed in `registry` behind its kernel index, with its risk state. Returns what changed,
/// by agent name.
fn adopt(
    registry: &mut crate::identity::Registry,
    risk: &mut crate::risk::RiskEngine,
    agents: &mut [crate::policy::CompiledAgent],
    ids: &HashMap<String, AgentId>,
) -> Vec<(String, Adopted)> {
    let given: Vec<AgentId> = agents
        .iter()
        .filter(|agent| agent.id_given)
        .map(|agent| agent.agent.id)
        .collect();
    let mut done = Vec::new();
    for agent in agents.iter_mut().filter(|agent| !agent.id_given) {
        let Some(&adopted) = ids.get(&agent.agent.name) else {
            continue;
        };
        if agent.agent.id == adopted {
            continue;
        }
        if given.contains(&adopted) {
            done.push((agent.agent.name.clone(), Adopted::Taken(adopted)));
            continue;
        }
        let old = agent.agent.id;
        registry.adopt(old, adopted);
        risk.rename(old, adopted);
        agent.agent.id = adopted;
        done.push((agent.agent.name.clone(), Adopted::Renamed(old, adopted)));
    }
    done
}

impl State {
    /// Gives the agents of a freshly compiled policy that have no `id` the control plane's, and
    /// renames them in the registry if an earlier policy knew them by their derived id.
    pub(super) fn adopt_into(&mut self, compiled: &mut CompiledPolicy) {
        let done = adopt(
            &mut self.registry,
            &mut self.risk,
            &mut compiled.agents,
            &self.ca.adopted,
        );
        for (name, adopted) in done {
            if let Adopted::Taken(id) = adopted {
                tracing::warn!(
                    agent = %name,
                    control_plane_id = %id,
                    "another agent of the local policy has the control plane's id for this one; \
                     it keeps the id derived from its name"
                );
            }
        }
    }

    /// Adopts the ids of a decision set for the agents in force that have no `id` of their own:
    /// each is renamed behind its kernel index, its risk state follows, and the pinned registry
    /// is rewritten. An agent whose `id` the policy gave keeps it (`warn_of_other_ids`).
    pub(super) fn adopt_from(&mut self, set: &DecisionSet) {
        let ids = ids_of(set);
        let done = adopt(
            &mut self.registry,
            &mut self.risk,
            &mut self.policy.agents,
            &ids,
        );
        let mut changed = false;
        for (name, adopted) in done {
            if let Adopted::Renamed(old, id) = adopted {
                changed = true;
                tracing::info!(
                    agent = %name,
                    from = %old,
                    id = %id,
                    "the agent takes the control plane's id"
                );
            }
        }
        // Kept for a later policy even if the control plane stops naming the agent.
        self.ca.adopted.extend(ids);
        if changed && let Err(err) = self.persist_registry() {
            tracing::warn!(err = %anyhow::Error::from(err), "saving adopted agent ids to the pinned registry");
        }
    }
}
