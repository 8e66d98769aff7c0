//! From kernel events to the risk engine and back: what an event tells the engine about its
//! agent ([`observations`]), and the lines agentd writes about what the engine concluded
//! ([`Notice`]).

use std::collections::HashSet;

use serde::Serialize;

use crate::{
    events::{Event, VerdictName},
    identity::{AgentId, Registry},
    risk::{
        self, ConnectAttempt, Detection, ExecInfo, FileAccess, Observation, ObservationKind,
        Remediation, RiskTransition, ThreatIntelHit,
    },
};

fn verdict(verdict: VerdictName) -> risk::Verdict {
    match verdict {
        VerdictName::Allow => risk::Verdict::Allow,
        VerdictName::Deny => risk::Verdict::Deny,
    }
}

/// What `event` tells the risk engine, for an agent's event: none for untagged processes, for
/// process bookkeeping (fork, exit) and for DNS queries steered to agentd's own resolver; two
/// for a connection to a blocklisted destination (the connect and a threat-intel hit).
/// `sensitive` holds the numbers of file rules that protect secrets (the shipped file sets).
pub fn observations<S: std::hash::BuildHasher>(
    event: &Event,
    registry: &Registry,
    sensitive: &HashSet<u32, S>,
) -> Vec<Observation> {
    let tag = event.tag();
    let Some(agent) = registry.agent(tag.agent).filter(|_| tag.agent != 0) else {
        return Vec::new();
    };
    let observe = |ktime_ns: u64, kind: ObservationKind| Observation {
        agent: agent.id,
        ktime_ns,
        kind,
    };
    match event {
        Event::Exec(exec) => vec![observe(
            exec.ktime_ns,
            ObservationKind::Exec(ExecInfo {
                filename: exec.filename.clone(),
                dev: exec.exe_dev,
                ino: exec.exe_ino,
                comm: exec.comm.clone(),
            }),
        )],
        Event::File(file) => {
            let reads = file.access.contains(&"read");
            let writes = file.access.contains(&"write");
            let access = if file.access.contains(&"exec") {
                risk::Access::Exec
            } else if reads && writes {
                risk::Access::ReadWrite
            } else if writes {
                risk::Access::Write
            } else {
                risk::Access::Read
            };
            vec![observe(
                file.ktime_ns,
                ObservationKind::File(FileAccess {
                    path: (!file.path.is_empty()).then(|| file.path.clone()),
                    dev: file.dev,
                    ino: file.ino,
                    access,
                    verdict: verdict(file.verdict),
                    rule: registry.rule(file.rule_id).map(str::to_owned),
                    sensitive: sensitive.contains(&file.rule_id),
                }),
            )]
        }
        Event::Net(connection) if connection.decided_by != "dns" => {
            let mut seen = vec![observe(
                connection.ktime_ns,
                ObservationKind::Connect(ConnectAttempt {
                    address: connection.address,
                    port: connection.port,
                    domain: connection.domain.clone(),
                    verdict: verdict(connection.verdict),
                    rule: (connection.rule_number != 0)
                        .then(|| registry.rule(connection.rule_number).map(str::to_owned))
                        .flatten(),
                }),
            )];
            if connection.decided_by == "blocklist" {
                seen.push(observe(
                    connection.ktime_ns,
                    ObservationKind::ThreatIntel(ThreatIntelHit {
                        indicator: connection.address.to_string(),
                        source: "network.blocklist".to_owned(),
                    }),
                ));
            }
            seen
        }
        Event::Net(_)
        | Event::Fork(_)
        | Event::Exit(_)
        | Event::TagLost(_)
        | Event::TagCap(_)
        | Event::Tamper(_) => Vec::new(),
    }
}

/// A line agentd writes about what it concluded or did, beside the kernel's events.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice<'a> {
    /// A detection rule fired.
    Detection {
        agent_name: &'a str,
        #[serde(flatten)]
        detection: &'a Detection,
    },
    /// An agent's risk level changed.
    RiskChange {
        agent_name: &'a str,
        #[serde(flatten)]
        transition: &'a RiskTransition,
    },
    /// agentd carried out (or failed to carry out) a remediation.
    Remediation {
        agent_name: &'a str,
        #[serde(flatten)]
        remediation: &'a Remediation,
        /// From the kernel event that triggered it to the remediation in force.
        #[serde(skip_serializing_if = "Option::is_none")]
        latency_ns: Option<u64>,
        /// `done`, or what went wrong.
        result: String,
    },
    /// Report-only Conditional Access policies would block or quarantine the agent.
    WouldBlock {
        agent_name: &'a str,
        action: crate::conditional::Action,
        policy_ids: &'a [String],
        decision_version: u64,
    },
    /// A Conditional Access decision set came into force (or was refused).
    Decisions {
        decision_version: u64,
        /// `applied`, or why it was refused (the previous set stays in force).
        result: String,
        agents: usize,
    },
    /// The kernel dropped events since the last such notice: agentd did not see everything.
    EventsLost {
        /// Dropped since the previous notice.
        dropped: u64,
        /// Dropped since agentd started, and per CPU.
        dropped_total: u64,
        dropped_per_cpu: &'a [u64],
        produced_total: u64,
    },
}

impl Notice<'_> {
    /// One human-readable line.
    pub fn to_text(&self) -> String {
        match self {
            Self::Detection {
                agent_name,
                detection,
            } => format!(
                "DETECTION id={} agent={agent_name} rule={} severity={:?} {}",
                detection.id, detection.rule, detection.severity, detection.summary
            ),
            Self::RiskChange {
                agent_name,
                transition,
            } => format!(
                "RISK agent={agent_name} {} -> {} cause={:?}",
                transition.from, transition.to, transition.cause
            ),
            Self::Remediation {
                agent_name,
                remediation,
                latency_ns,
                result,
            } => format!(
                "REMEDIATION agent={agent_name} {remediation:?} latency_ns={} result={result}",
                latency_ns.map_or_else(|| "-".to_owned(), |ns| ns.to_string())
            ),
            Self::WouldBlock {
                agent_name,
                action,
                policy_ids,
                decision_version,
            } => format!(
                "WOULD BLOCK agent={agent_name} action={action:?} report-only policies={} decisions={decision_version}",
                policy_ids.join(",")
            ),
            Self::Decisions {
                decision_version,
                result,
                agents,
            } => format!("DECISIONS version={decision_version} agents={agents} {result}"),
            Self::EventsLost {
                dropped,
                dropped_total,
                produced_total,
                ..
            } => format!(
                "EVENTS LOST: the kernel dropped {dropped} events (total {dropped_total} of \
                 {produced_total}); agentd is not seeing everything"
            ),
        }
    }

    /// The agent the notice is about.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            Self::Detection { detection, .. } => Some(detection.agent),
            Self::RiskChange { transition, .. } => Some(transition.agent),
            Self::Remediation { remediation, .. } => Some(match remediation {
                Remediation::Quarantine { agent }
                | Remediation::Release { agent }
                | Remediation::Kill { agent } => *agent,
            }),
            Self::EventsLost { .. } | Self::WouldBlock { .. } | Self::Decisions { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use agentd_common::{AgentTag, TagSource};

    use super::*;
    use crate::{
        events::{Connection, FileDecision},
        identity::Agent,
    };

    fn registry() -> (Registry, AgentTag) {
        let mut registry = Registry::default();
        let index = registry.intern_agent(&Agent {
            id: AgentId::from_name("a"),
            name: "a".into(),
        });
        (registry, AgentTag::new(index, TagSource::Launch, 0))
    }

    #[test]
    fn a_secret_read_becomes_a_sensitive_file_observation() {
        let (mut registry, tag) = registry();
        let rule = registry.intern_rule("a/secrets");
        let event = Event::File(FileDecision {
            ktime_ns: 9,
            pid: 1,
            dev: 2,
            ino: 3,
            verdict: VerdictName::Allow,
            open_flags: 0,
            rule_id: rule,
            access: vec!["read"],
            would_deny: true,
            hook: "observed_open",
            side: "object",
            observed: true,
            path: "/root/.ssh/id_rsa".into(),
            path_source: "as_passed",
            path_truncated: false,
            decided_by: "rule",
            tag,
        });
        let seen = observations(&event, &registry, &HashSet::from([rule]));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].agent, AgentId::from_name("a"));
        let ObservationKind::File(file) = &seen[0].kind else {
            panic!("{seen:?}")
        };
        assert!(file.sensitive && file.access.reads());
        assert_eq!(file.rule.as_deref(), Some("a/secrets"));
        assert_eq!(file.path.as_deref(), Some("/root/.ssh/id_rsa"));
        // Untagged: nothing.
        let untagged = Event::File(FileDecision {
            tag: AgentTag::NONE,
            ..match event {
                Event::File(file) => file,
                _ => unreachable!(),
            }
        });
        assert!(observations(&untagged, &registry, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_blocklisted_connect_is_also_a_threat_intel_hit_and_dns_steering_is_skipped() {
        let (registry, tag) = registry();
        let connection = |decided_by| {
            Event::Net(Connection {
                ktime_ns: 5,
                pid: 1,
                comm: "curl".into(),
                hook: "connect",
                protocol: "tcp".into(),
                address: "203.0.113.9".parse().unwrap(),
                port: 443,
                verdict: VerdictName::Deny,
                would_deny: false,
                decided_by,
                address_form: None,
                socket_family: None,
                domain: None,
                policy_version: 1,
                rule_number: 0,
                tag,
            })
        };
        let seen = observations(&connection("blocklist"), &registry, &HashSet::new());
        assert_eq!(seen.len(), 2);
        assert!(matches!(&seen[1].kind, ObservationKind::ThreatIntel(hit)
            if hit.indicator == "203.0.113.9"));
        assert!(observations(&connection("dns"), &registry, &HashSet::new()).is_empty());
        assert_eq!(
            observations(&connection("rule"), &registry, &HashSet::new()).len(),
            1
        );
    }
}
