//! A realistic Conditional Access policy set for rows 6 and 7: every kind of assignment (all
//! agents, named agents, blueprints, attribute filters, with exclusions), every kind of
//! condition (risk levels, hosts, host labels, time windows) and every kind of control (block,
//! quarantine, network allow- and deny-lists, file rules), in the three states. Deterministic:
//! policy `i` is always the same document.
//!
//! Most policies are about other agents, blueprints and teams, which the evaluator must reject
//! fast; on the production host, 9 to 13% of them (90 to 126 of 1,000) apply to each generated
//! agent, a heavy case, since each adds reasons, grants, denials or file rules to the decision.

use agentd_control::{
    clock::UnixTime,
    model::{AgentState, OfflineBehavior},
    policy::{
        ActivePolicy, Decision, RiskLevel,
        evaluate::{Facts, Place, PolicySet, Subject, evaluate},
        parse_document,
    },
};

/// Blueprints the generated agents belong to.
pub const BLUEPRINTS: &[&str] = &["finance", "ops", "support", "research", "sales"];

/// Policy `i`'s YAML document. `i` picks the assignment, conditions, controls and state
/// independently (coprime moduli), so that every combination occurs in 1,000 policies.
pub fn policy_yaml(i: usize) -> String {
    let state = match i % 20 {
        0..=2 => "reportOnly",
        3 => "disabled",
        _ => "enabled",
    };
    let blueprint = BLUEPRINTS[i % BLUEPRINTS.len()];
    let assignments = match i % 7 {
        // Everyone, minus a named sandbox agent.
        0 => format!("  include:\n    all: true\n  exclude:\n    agents: [sandbox-{i}]\n"),
        // Named agents (other teams' bots, sometimes one of ours).
        1 => format!(
            "  include:\n    agents: [bot-{i}, bot-{}, agent-{}]\n",
            i + 1,
            i % 20
        ),
        // A blueprint, minus a team.
        2 => format!(
            "  include:\n    blueprints: [{blueprint}, bp-{}]\n  exclude:\n    attributes:\n      team: [t{}]\n",
            i % 50,
            i % 9
        ),
        // Attribute filters.
        3 => format!(
            "  include:\n    attributes:\n      dept: [{blueprint}, d{}]\n      tier: \"{}\"\n",
            i % 30,
            i % 3 + 1
        ),
        // A team of another blueprint.
        4 => format!(
            "  include:\n    attributes:\n      team: [t{}]\n  exclude:\n    blueprints: [{}]\n",
            i % 9,
            BLUEPRINTS[(i + 1) % BLUEPRINTS.len()]
        ),
        // Departments that no longer exist (stale policies that select nothing; by name, the
        // control plane would refuse them).
        5 => format!(
            "  include:\n    attributes:\n      dept: [legacy-{i}, retired-{}]\n",
            i % 11
        ),
        // Names and blueprints together.
        _ => format!(
            "  include:\n    agents: [agent-{}]\n    blueprints: [bp-{i}]\n",
            (i * 7) % 20
        ),
    };
    let conditions = match i % 11 {
        0 | 1 => String::new(),
        2 => "conditions:\n  riskLevels: [high]\n".to_owned(),
        3 => "conditions:\n  riskLevels: [medium, high]\n".to_owned(),
        4 => "conditions:\n  riskLevels: [none, low, medium]\n".to_owned(),
        5 => "conditions:\n  hostLabels:\n    env: prod\n".to_owned(),
        6 => format!(
            "conditions:\n  hostLabels:\n    env: prod\n    region: r{}\n",
            i % 4
        ),
        7 => "conditions:\n  timeWindows:\n    - days: [mon, tue, wed, thu, fri]\n      hours: \"09:00-17:30\"\n      timeZone: \"+01:00\"\n".to_owned(),
        8 => "conditions:\n  timeWindows:\n    - days: [sat, sun]\n    - hours: \"22:00-06:00\"\n      timeZone: UTC\n".to_owned(),
        9 => format!("conditions:\n  hosts: [host-{}, web-{}]\n", i % 100, i % 7),
        _ => "conditions:\n  riskLevels: [low, medium, high]\n  hostLabels:\n    env: prod\n".to_owned(),
    };
    let controls = match i % 13 {
        0 => "controls:\n  block: true\n".to_owned(),
        1 => "controls:\n  quarantine: true\n".to_owned(),
        // Allow-lists that share 10.20.0.0/16:443, so that intersecting them leaves grants.
        2..=4 => format!(
            "controls:\n  network:\n    allow:\n      - cidr: 10.20.0.0/16\n        ports: 443\n      - cidr: 10.{}.{}.0/24\n        ports: \"8000-8100\"\n      - domain: \"*.svc{}.example\"\n      - mcpServer: https://mcp{}.example/sse\n",
            i % 200,
            i % 250,
            i % 17,
            i % 5
        ),
        5 => format!(
            "controls:\n  network:\n    allow:\n      - cidr: 10.20.{}.0/24\n        ports: \"443\"\n      - category: llm-providers\n    deny:\n      - category: paste-sites\n",
            i % 250
        ),
        6 | 7 => format!(
            "controls:\n  network:\n    deny:\n      - domain: evil{i}.example\n      - cidr: 203.0.{}.0/24\n      - category: paste-sites\n",
            i % 250
        ),
        8 | 9 => format!(
            "controls:\n  files:\n    - path: /srv/data{}\n      access: [write]\n      action: deny\n    - path: /etc/agent{}/secrets\n      access: [read, write]\n      action: deny\n",
            i % 50,
            i % 20
        ),
        10 => format!(
            "controls:\n  files:\n    - path: /srv/shared{}\n      access: [read]\n      action: allow\n  network:\n    deny:\n      - domain: \"*.exfil{}.example\"\n",
            i % 30,
            i % 10
        ),
        11 => format!(
            "controls:\n  block: true\n  files:\n    - path: /home/agent{}\n      access: [exec]\n      action: deny\n",
            i % 40
        ),
        _ => format!(
            "controls:\n  network:\n    allow:\n      - cidr: 10.20.0.0/16\n        ports: \"400-500\"\n      - domain: api{}.bank.example\n        ports: 443\n",
            i % 8
        ),
    };
    format!(
        "name: bench-{i}\ndescription: generated policy {i} for the benchmarks\nstate: {state}\nassignments:\n{assignments}{conditions}{controls}"
    )
}

/// The first `count` policies, parsed, with ids `policy-<i>`.
pub fn policies(count: usize) -> Vec<ActivePolicy> {
    (0..count)
        .map(|i| {
            let yaml = policy_yaml(i);
            let document = parse_document(&yaml)
                .unwrap_or_else(|err| panic!("generated policy {i} is invalid: {err}\n{yaml}"));
            ActivePolicy {
                id: format!("policy-{i}"),
                state: document.state,
                document,
            }
        })
        .collect()
}

/// Agent `n` of the generated registry: `agent-<n>` in a blueprint, with dept, tier and team
/// attributes, and a risk level that varies.
pub fn subject(n: usize) -> Subject {
    let blueprint = BLUEPRINTS[n % BLUEPRINTS.len()];
    Subject {
        id: format!("00000000-0000-4000-8000-{n:012}"),
        name: format!("agent-{n}"),
        blueprint: blueprint.to_owned(),
        attributes: [
            ("dept".to_owned(), blueprint.to_owned()),
            ("tier".to_owned(), (n % 3 + 1).to_string()),
            ("team".to_owned(), format!("t{}", n % 9)),
        ]
        .into(),
        state: AgentState::Active,
        disabled_reason: String::new(),
        orphaned: false,
        risk: RiskLevel::ALL[n % RiskLevel::ALL.len()],
        offline_behavior: OfflineBehavior::FailClosed,
        offline_ttl_seconds: 600,
    }
}

/// A production host with labels that several policies name.
pub fn host() -> Place {
    Place {
        id: "5584eb25-0000-4000-8000-000000000001".to_owned(),
        hostname: "host-1".to_owned(),
        labels: [
            ("env".to_owned(), "prod".to_owned()),
            ("region".to_owned(), "r1".to_owned()),
        ]
        .into(),
    }
}

/// Wednesday 2026-11-25 10:30 UTC: inside the office-hours windows.
pub const NOW: UnixTime = 1_795_602_600;

/// What row 6 evaluates: the policies, a few agents and one host. The policies are prepared
/// for evaluation (indexed) once, as agentd-control does when it loads them.
pub struct Fixture {
    pub policies: PolicySet,
    pub subjects: Vec<Subject>,
    pub host: Place,
    pub now: UnixTime,
}

impl Fixture {
    /// `policies` policies and `agents` agents.
    pub fn new(policies: usize, agents: usize) -> Self {
        Self {
            policies: PolicySet::new(self::policies(policies)),
            subjects: (0..agents).map(subject).collect(),
            host: host(),
            now: NOW,
        }
    }

    /// Agent `n`'s (mod the agent count) effective decision over every policy.
    pub fn decide(&self, n: usize) -> Decision {
        let facts = Facts {
            subject: &self.subjects[n % self.subjects.len()],
            host: Some(&self.host),
            now: self.now,
            packages: &[],
        };
        evaluate(&self.policies, &facts, false).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_policy_is_valid_and_agents_get_a_mix_of_decisions() {
        let fixture = Fixture::new(1_000, 8);
        for n in 0..8 {
            let decision = fixture.decide(n);
            assert!(
                decision.policy_ids.len() + decision.report_only_policy_ids.len() > 5,
                "agent {n}: {} policies apply",
                decision.policy_ids.len()
            );
        }
    }
}
