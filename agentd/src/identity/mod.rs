//! Agent identities on this host: who the agents are, and the compact index each one has in
//! the kernel's tag maps.

pub mod attest;
pub mod discovery;

use std::{collections::HashMap, fmt};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An agent's stable identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub Uuid);

/// The namespace of agent ids derived from names (`UUIDv5`), for agents registered without one.
const AGENT_NAMESPACE: Uuid = Uuid::from_u128(0x6167_656e_7464_4000_8000_6167_656e_7401);

impl AgentId {
    /// The id an agent registered by name alone gets: the same name gives the same id on every
    /// host.
    #[must_use]
    pub fn from_name(name: &str) -> Self {
        Self(Uuid::new_v5(&AGENT_NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An agent as userspace knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
}

/// The table from kernel agent index to identity, and from discovery rule number to rule name.
///
/// Indexes are handed out once and never reused while the daemon runs: a process may keep an
/// old index after its agent's registration changes, and must still resolve to who it was.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Vec<Agent>,
    by_id: HashMap<AgentId, u32>,
    rules: Vec<String>,
    rule_numbers: HashMap<String, u32>,
    /// Something changed since [`Registry::take_changed`] was last called.
    changed: bool,
}

impl Registry {
    /// The index of `agent`, assigning the next one on first sight. A renamed agent keeps its
    /// index and takes the new name.
    /// The index of `agent`, if it has one.
    pub fn agent_index(&self, agent: &Agent) -> Option<u32> {
        self.by_id.get(&agent.id).copied()
    }

    pub fn intern_agent(&mut self, agent: &Agent) -> u32 {
        if let Some(&index) = self.by_id.get(&agent.id) {
            let known = &mut self.agents[index as usize - 1];
            if known.name != agent.name {
                known.name.clone_from(&agent.name);
                self.changed = true;
            }
            return index;
        }
        self.changed = true;
        self.agents.push(agent.clone());
        let index = u32::try_from(self.agents.len()).expect("fewer than 2^32 agents");
        self.by_id.insert(agent.id, index);
        index
    }

    /// Renames the agent known as `old` to `new`, behind the index it has: processes tagged
    /// before resolve to `new` from now on. Returns the index; `None` (and no change) when `old`
    /// has none.
    pub fn adopt(&mut self, old: AgentId, new: AgentId) -> Option<u32> {
        if old == new {
            return self.by_id.get(&old).copied();
        }
        let index = self.by_id.remove(&old)?;
        self.agents[index as usize - 1].id = new;
        self.by_id.insert(new, index);
        self.changed = true;
        Some(index)
    }

    /// The agent behind a kernel index; `None` for 0 and unknown indexes.
    #[must_use]
    pub fn agent(&self, index: u32) -> Option<&Agent> {
        self.agents.get((index as usize).checked_sub(1)?)
    }

    pub fn intern_rule(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.rule_numbers.get(name) {
            return number;
        }
        self.changed = true;
        self.rules.push(name.to_owned());
        let number = u32::try_from(self.rules.len()).expect("fewer than 2^32 rules");
        self.rule_numbers.insert(name.to_owned(), number);
        number
    }

    /// A registry holding the numbers an earlier agentd handed out (from the pinned registry
    /// map). Numbers never seen are filled with placeholders so that later ones keep theirs.
    #[must_use]
    pub fn restore(mut agents: Vec<(u32, Agent)>, mut rules: Vec<(u32, String)>) -> Self {
        let mut registry = Self::default();
        agents.sort_by_key(|(number, _)| *number);
        rules.sort_by_key(|(number, _)| *number);
        for (number, agent) in agents {
            if number == 0 {
                continue;
            }
            while registry.agents.len() + 1 < number as usize {
                registry.agents.push(Agent {
                    id: AgentId(Uuid::nil()),
                    name: format!("unknown-{}", registry.agents.len() + 1),
                });
            }
            registry.by_id.insert(agent.id, number);
            registry.agents.push(agent);
        }
        for (number, rule) in rules {
            if number == 0 {
                continue;
            }
            while registry.rules.len() + 1 < number as usize {
                registry
                    .rules
                    .push(format!("unknown-{}", registry.rules.len() + 1));
            }
            registry.rule_numbers.insert(rule.clone(), number);
            registry.rules.push(rule);
        }
        registry
    }

    /// Whether numbers were handed out or names changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Makes the next [`Registry::take_changed`] say true.
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Every agent with its number.
    pub fn agents(&self) -> impl Iterator<Item = (u32, &Agent)> {
        (1..).zip(self.agents.iter())
    }

    /// Every rule with its number.
    pub fn rules(&self) -> impl Iterator<Item = (u32, &str)> {
        (1..).zip(self.rules.iter().map(String::as_str))
    }

    #[must_use]
    pub fn rule(&self, number: u32) -> Option<&str> {
        self.rules
            .get((number as usize).checked_sub(1)?)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> Agent {
        Agent {
            id: AgentId::from_name(name),
            name: name.to_owned(),
        }
    }

    #[test]
    fn indexes_start_at_one_and_are_stable() {
        let mut registry = Registry::default();
        assert_eq!(registry.intern_agent(&agent("a")), 1);
        assert_eq!(registry.intern_agent(&agent("b")), 2);
        assert_eq!(registry.intern_agent(&agent("a")), 1);
        assert_eq!(registry.agent(2).map(|a| a.name.as_str()), Some("b"));
        assert_eq!(registry.agent(0), None);
        assert_eq!(registry.agent(3), None);
    }

    #[test]
    fn renamed_agent_keeps_its_index() {
        let mut registry = Registry::default();
        let mut coder = agent("coder");
        let index = registry.intern_agent(&coder);
        coder.name = "coder-v2".into();
        assert_eq!(registry.intern_agent(&coder), index);
        assert_eq!(registry.agent(index).unwrap().name, "coder-v2");
    }

    #[test]
    fn an_adopted_id_keeps_the_index_and_the_old_id_is_forgotten() {
        let mut registry = Registry::default();
        let coder = agent("coder");
        let index = registry.intern_agent(&coder);
        assert!(registry.take_changed());
        let adopted = AgentId(Uuid::from_u128(7));
        assert_eq!(registry.adopt(coder.id, adopted), Some(index));
        assert!(
            registry.take_changed(),
            "the pinned registry must be rewritten"
        );
        assert_eq!(registry.agent(index).unwrap().id, adopted);
        let renamed = Agent {
            id: adopted,
            name: "coder".into(),
        };
        assert_eq!(registry.intern_agent(&renamed), index);
        // The derived id is a new agent now, and adopting an unknown id changes nothing.
        assert_ne!(registry.intern_agent(&coder), index);
        assert_eq!(registry.adopt(AgentId(Uuid::from_u128(8)), adopted), None);
    }

    #[test]
    fn a_restored_registry_keeps_every_number() {
        let mut registry = Registry::default();
        registry.intern_agent(&agent("a"));
        registry.intern_agent(&agent("b"));
        registry.intern_rule("r1");
        let agents: Vec<(u32, Agent)> = registry
            .agents()
            .filter(|(number, _)| *number == 2)
            .map(|(number, agent)| (number, agent.clone()))
            .collect();
        let rules = registry
            .rules()
            .map(|(number, rule)| (number, rule.to_owned()))
            .collect();
        let mut restored = Registry::restore(agents, rules);
        assert_eq!(restored.intern_agent(&agent("b")), 2);
        assert_eq!(restored.intern_rule("r1"), 1);
        // Number 1 was not kept: it stays taken, and a new agent gets 3.
        assert_eq!(restored.intern_agent(&agent("c")), 3);
        assert_eq!(restored.intern_agent(&agent("a")), 4);
    }

    #[test]
    fn name_derived_ids_are_deterministic_and_distinct() {
        assert_eq!(AgentId::from_name("x"), AgentId::from_name("x"));
        assert_ne!(AgentId::from_name("x"), AgentId::from_name("y"));
    }
}
