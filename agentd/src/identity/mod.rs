//! Agent identities on this host: who the agents are, and the compact index each one has in
//! the kernel's tag maps.

pub mod attest;
pub mod discovery;
pub mod policy;

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
}

impl Registry {
    /// The index of `agent`, assigning the next one on first sight. A renamed agent keeps its
    /// index and takes the new name.
    pub fn intern_agent(&mut self, agent: &Agent) -> u32 {
        if let Some(&index) = self.by_id.get(&agent.id) {
            self.agents[index as usize - 1].name.clone_from(&agent.name);
            return index;
        }
        self.agents.push(agent.clone());
        let index = u32::try_from(self.agents.len()).expect("fewer than 2^32 agents");
        self.by_id.insert(agent.id, index);
        index
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
        self.rules.push(name.to_owned());
        let number = u32::try_from(self.rules.len()).expect("fewer than 2^32 rules");
        self.rule_numbers.insert(name.to_owned(), number);
        number
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
    fn name_derived_ids_are_deterministic_and_distinct() {
        assert_eq!(AgentId::from_name("x"), AgentId::from_name("x"));
        assert_ne!(AgentId::from_name("x"), AgentId::from_name("y"));
    }
}
