//! What the state adds to a kernel event before it is written: the agent and how its process was
//! tagged, the rule that decided, a threat-intelligence alert, the learned domain of a connection
//! and the process's lineage. The writer (`output`) only writes what this gives it.

use std::time::Instant;

use agentd_common::{AgentTag, TagSource};

use super::state::State;
use crate::{
    api::{AgentRef, TagInfo},
    events::Event,
    identity::{Registry, discovery::looks_like_agent},
    lineage::Ancestor,
};

/// How a tag reads in events, `ps` and identity documents.
pub(super) fn tag_info(registry: &Registry, tag: AgentTag) -> TagInfo {
    let source = match TagSource::from_raw(tag.source) {
        Some(TagSource::Launch) => "launch",
        Some(TagSource::Cgroup) => "cgroup",
        Some(TagSource::Discovery) => "discovery",
        None => "unknown",
    };
    TagInfo {
        source: source.to_owned(),
        inherited: tag.flags & AgentTag::FLAG_INHERITED != 0,
        rule: (tag.rule != 0).then(|| registry.rule(tag.rule).unwrap_or("?").to_owned()),
    }
}

/// The agent a tag names, if the registry knows it.
pub(super) fn agent_ref(registry: &Registry, tag: AgentTag) -> Option<AgentRef> {
    registry.agent(tag.agent).map(|agent| AgentRef {
        id: agent.id,
        name: agent.name.clone(),
    })
}

/// What an event's line says beyond the event itself.
#[derive(Debug, Default)]
pub(super) struct Context {
    pub(super) agent: Option<AgentRef>,
    /// How the process was tagged: on process events of agents only (connection and file
    /// events name the agent; how its process was tagged is in its exec and fork events).
    pub(super) tag: Option<TagInfo>,
    /// For an untagged exec that looks like an agent: which one.
    pub(super) looks_like: Option<&'static str>,
    /// For connections and agents' file decisions: the rule that decided.
    pub(super) rule: Option<String>,
    /// `threat-intel` for a blocklist hit.
    pub(super) alert: Option<&'static str>,
    /// For agents' processes: the parent, grandparent... nearest first.
    pub(super) lineage: Vec<Ancestor>,
}

impl Context {
    /// The context of `event` by the registry's names, with the lineage already looked up.
    pub(super) fn of(event: &Event, registry: &Registry, lineage: Vec<Ancestor>) -> Self {
        let tag = event.tag();
        let agent = agent_ref(registry, tag);
        let looks_like = match event {
            Event::Exec(exec) if agent.is_none() => looks_like_agent(&exec.filename, &exec.args),
            _ => None,
        };
        let (rule, alert) = match event {
            Event::File(decision) if decision.tag.agent != 0 => {
                (registry.rule(decision.rule_id).map(str::to_owned), None)
            }
            Event::Net(connection) => (
                (connection.rule_number != 0).then(|| {
                    registry
                        .rule(connection.rule_number)
                        .unwrap_or("?")
                        .to_owned()
                }),
                (connection.decided_by == "blocklist").then_some("threat-intel"),
            ),
            _ => (None, None),
        };
        let tag_detail = !matches!(event, Event::Net(_) | Event::File(_));
        Self {
            tag: agent
                .as_ref()
                .filter(|_| tag_detail)
                .map(|_| tag_info(registry, tag)),
            agent,
            looks_like,
            rule,
            alert,
            lineage,
        }
    }
}

impl State {
    /// Records `event` in what the state keeps about processes and names (a connection's
    /// domain as DNS taught it, the lineage) and returns its context for the output.
    pub(super) fn enrich(&mut self, event: &mut Event, now: Instant) -> Context {
        if let Event::Net(connection) = event {
            connection.domain = self
                .learned
                .domain(connection.tag.agent, connection.address, now)
                .map(str::to_owned);
        }
        self.lineage.record(event);
        let lineage = match event.tag().agent {
            0 => Vec::new(),
            _ => self.lineage.ancestors(event.pid()),
        };
        Context::of(event, &self.registry, lineage)
    }
}
