//! The evaluator: pure and allocation-light. Given the facts about one agent (its registry
//! record, governance state, risk), the host, the time, the agent's active access packages and
//! the policies, it returns one [`Decision`], and for what-if one [`PolicyVerdict`] per policy.
//!
//! Semantics (docs/conditional-access.md, "Evaluation"):
//! - A policy *applies* when its include selector picks the agent, its exclude selector does
//!   not, and every condition holds. Disabled policies never apply.
//! - Deny wins. The action is the strongest among the applying enabled policies: QUARANTINE over
//!   BLOCK over ALLOW. Governance blocks agents that are not ACTIVE or have no sponsor.
//! - Network allow-lists of several applying policies intersect: a destination is allowed only
//!   when every restricting policy allows it (a CIDR inside another's, a domain under another's
//!   `*.`, equal categories or MCP servers, ports narrowed to the common range). Destinations of
//!   different kinds never match, so mixing kinds across policies denies them (deny wins).
//! - Denials and file rules of all applying policies add up; a file deny beats an allow.
//! - Active access packages add their destinations to the grants, with the package's expiry,
//!   after the intersection; denials still beat them.
//! - Report-only policies change nothing enforced: they yield `report_only_action` and the
//!   network the agent would have with them enabled.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    Action, ActivePolicy, Cidr, Decision, Destination, FileAccess, FileAction, FileControl,
    NetworkGrant, NetworkVerdict, PolicyState, PolicyVerdict, Ports, RiskLevel,
    document::{DAY_NAMES, PolicyDocument, Selector, TimeWindow},
};
use crate::{
    clock::UnixTime,
    model::{AgentState, OfflineBehavior, Resource, ResourceKind},
};

/// What the evaluator knows about the agent.
#[derive(Clone, Debug)]
pub struct Subject {
    pub id: String,
    pub name: String,
    pub blueprint: String,
    /// Effective attributes (blueprint's overlaid with the agent's).
    pub attributes: BTreeMap<String, String>,
    pub state: AgentState,
    pub disabled_reason: String,
    /// No sponsor left.
    pub orphaned: bool,
    pub risk: RiskLevel,
    pub offline_behavior: OfflineBehavior,
    pub offline_ttl_seconds: u32,
}

/// The host the decision is for.
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
}

/// An active access package's resources.
#[derive(Clone, Debug)]
pub struct PackageGrant {
    pub package_id: String,
    pub resources: Vec<Resource>,
    pub expires_at: UnixTime,
}

pub struct Facts<'a> {
    pub subject: &'a Subject,
    pub host: Option<&'a Place>,
    pub now: UnixTime,
    pub packages: &'a [PackageGrant],
}

/// Policies prepared for evaluation once, when they are loaded: indexed by what their include
/// selectors name, so that deciding for one agent checks only the policies that may select it
/// (a policy the index does not offer cannot apply: its include selector does not pick the
/// agent, or it is disabled), with the reason each adds to a decision written beforehand.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<ActivePolicy>,
    /// Per policy: its id, and the reason a decision gives when it applies (by its state).
    ids: Vec<Arc<str>>,
    applies: Vec<Arc<str>>,
    /// Enabled and report-only policies that include all agents.
    everyone: Vec<usize>,
    /// ... that name agents (ids or names), by name.
    by_agent: HashMap<String, Vec<usize>>,
    /// ... that name blueprints, by blueprint.
    by_blueprint: HashMap<String, Vec<usize>>,
    /// ... that filter on attributes, by the first key of the filter and each of its values
    /// (an agent they select has that key with one of these values).
    by_attribute: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl PolicySet {
    pub fn new(policies: Vec<ActivePolicy>) -> Self {
        let mut set = Self {
            ids: Vec::with_capacity(policies.len()),
            applies: Vec::with_capacity(policies.len()),
            ..Self::default()
        };
        for (index, policy) in policies.iter().enumerate() {
            let doc = &policy.document;
            set.ids.push(Arc::from(policy.id.as_str()));
            set.applies.push(Arc::from(match policy.state {
                PolicyState::ReportOnly => format!("report-only policy {} would apply", doc.name),
                PolicyState::Enabled | PolicyState::Disabled => {
                    format!("policy {} applies", doc.name)
                }
            }));
            if policy.state == PolicyState::Disabled {
                continue;
            }
            let include = &doc.include;
            if include.all {
                set.everyone.push(index);
            }
            for agent in &include.agents {
                set.by_agent.entry(agent.clone()).or_default().push(index);
            }
            for blueprint in &include.blueprints {
                set.by_blueprint
                    .entry(blueprint.clone())
                    .or_default()
                    .push(index);
            }
            if let Some((key, values)) = include.attributes.iter().next() {
                let by_value = set.by_attribute.entry(key.clone()).or_default();
                for value in values {
                    by_value.entry(value.clone()).or_default().push(index);
                }
            }
        }
        set.policies = policies;
        set
    }

    pub fn policies(&self) -> &[ActivePolicy] {
        &self.policies
    }

    /// The indices of the policies that may select `subject`, in policy order, without
    /// duplicates: every policy whose include selector picks the subject is among them.
    fn candidates(&self, subject: &Subject) -> Vec<usize> {
        let mut lists: Vec<&[usize]> = vec![&self.everyone];
        lists.extend(
            [
                self.by_agent.get(&subject.id),
                self.by_agent.get(&subject.name),
                self.by_blueprint.get(&subject.blueprint),
            ]
            .into_iter()
            .flatten()
            .map(Vec::as_slice),
        );
        lists.extend(subject.attributes.iter().filter_map(|(key, value)| {
            self.by_attribute
                .get(key)
                .and_then(|by_value| by_value.get(value))
                .map(Vec::as_slice)
        }));
        let mut found = Vec::with_capacity(lists.iter().map(|list| list.len()).sum());
        for list in lists {
            found.extend_from_slice(list);
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

impl From<Vec<ActivePolicy>> for PolicySet {
    fn from(policies: Vec<ActivePolicy>) -> Self {
        Self::new(policies)
    }
}

/// Whether a policy applies, with the reasons (why, or the first reason why not).
fn check(policy: &ActivePolicy, facts: &Facts<'_>, explain: bool) -> (bool, Vec<String>) {
    let doc = &policy.document;
    let subject = facts.subject;
    let mut reasons = Vec::new();
    if policy.state == PolicyState::Disabled {
        if explain {
            reasons.push("the policy is disabled".to_owned());
        }
        return (false, reasons);
    }
    let Some(included) = selects(&doc.include, subject) else {
        if explain {
            reasons.push(format!(
                "assignments.include does not select agent {}",
                subject.name
            ));
        }
        return (false, reasons);
    };
    if let Some(excluded) = selects(&doc.exclude, subject) {
        if explain {
            reasons.push(format!("agent {} is excluded ({excluded})", subject.name));
        }
        return (false, reasons);
    }
    if explain {
        reasons.push(format!("includes agent {} ({included})", subject.name));
    }
    let conditions = &doc.conditions;
    if !conditions.risk_levels.is_empty() {
        if !conditions.risk_levels.contains(&subject.risk) {
            if explain {
                reasons.push(format!(
                    "risk level {} is not in [{}]",
                    subject.risk,
                    join(conditions.risk_levels.iter())
                ));
            }
            return (false, reasons);
        }
        if explain {
            reasons.push(format!("risk level {} matches", subject.risk));
        }
    }
    if !conditions.hosts.is_empty() {
        let matched = facts.host.is_some_and(|host| {
            conditions
                .hosts
                .iter()
                .any(|h| h.matches(&host.id, &host.hostname))
        });
        if !matched {
            if explain {
                reasons.push(format!(
                    "host {} is not in [{}]",
                    facts.host.map_or("(none)", |h| h.hostname.as_str()),
                    join(conditions.hosts.iter())
                ));
            }
            return (false, reasons);
        }
        if explain {
            reasons.push("host matches".to_owned());
        }
    }
    if !conditions.host_labels.is_empty() {
        let missing = conditions.host_labels.iter().find(|(key, value)| {
            facts
                .host
                .and_then(|host| host.labels.get(*key))
                .is_none_or(|have| have != *value)
        });
        if let Some((key, value)) = missing {
            if explain {
                reasons.push(format!("host lacks label {key}={value}"));
            }
            return (false, reasons);
        }
        if explain {
            reasons.push("host labels match".to_owned());
        }
    }
    if !conditions.time_windows.is_empty() {
        if !conditions
            .time_windows
            .iter()
            .any(|window| in_window(window, facts.now))
        {
            if explain {
                reasons.push(format!(
                    "{} is outside every time window",
                    crate::clock::format_time(facts.now)
                ));
            }
            return (false, reasons);
        }
        if explain {
            reasons.push("within a time window".to_owned());
        }
    }
    (true, reasons)
}

/// `Some(why)` when the selector picks the subject.
fn selects(selector: &Selector, subject: &Subject) -> Option<&'static str> {
    if selector.all {
        return Some("all agents");
    }
    if selector
        .agents
        .iter()
        .any(|agent| *agent == subject.id || *agent == subject.name)
    {
        return Some("named");
    }
    if selector.blueprints.contains(&subject.blueprint) {
        return Some("by blueprint");
    }
    if !selector.attributes.is_empty()
        && selector.attributes.iter().all(|(key, values)| {
            subject
                .attributes
                .get(key)
                .is_some_and(|have| values.iter().any(|v| v == have))
        })
    {
        return Some("by attributes");
    }
    None
}

fn in_window(window: &TimeWindow, now: UnixTime) -> bool {
    let local = now + i64::from(window.offset_seconds);
    let day = local.div_euclid(86_400);
    let minute = u16::try_from(local.rem_euclid(86_400) / 60).unwrap_or(0);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = |day: i64| u32::try_from((day + 3).rem_euclid(7)).unwrap_or(0);
    let has = |weekday: u32| window.days & (1 << weekday) != 0;
    if window.start_minute < window.end_minute {
        has(weekday(day)) && minute >= window.start_minute && minute < window.end_minute
    } else {
        // Wraps past midnight: the evening belongs to today, the early hours to yesterday.
        (minute >= window.start_minute && has(weekday(day)))
            || (minute < window.end_minute && has(weekday(day - 1)))
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Accumulates the controls of applying policies. It borrows them from the policies: only what
/// ends up in the decision is copied, once, in [`Combined::network`] and [`Combined::files`].
#[derive(Default)]
struct Combined<'a> {
    action: Option<Action>,
    /// One allow-list per restricting policy, with the policy's id.
    allow_lists: Vec<(&'a str, &'a [NetworkGrant])>,
    denials: Vec<(&'a str, &'a NetworkGrant)>,
    files: Vec<(&'a str, &'a FileControl)>,
}

/// A grant or rule of a policy, as the decision carries it: its source is the policy's id.
fn sourced<T: Clone + Sourced>(id: &str, item: &T) -> T {
    let mut owned = item.clone();
    owned.set_source(id);
    owned
}

trait Sourced {
    fn set_source(&mut self, id: &str);
}

impl Sourced for NetworkGrant {
    fn set_source(&mut self, id: &str) {
        id.clone_into(&mut self.source);
    }
}

impl Sourced for FileControl {
    fn set_source(&mut self, id: &str) {
        id.clone_into(&mut self.source);
    }
}

impl<'a> Combined<'a> {
    fn add(&mut self, id: &'a str, doc: &'a PolicyDocument) {
        let controls = &doc.controls;
        let action = if controls.quarantine {
            Action::Quarantine
        } else if controls.block {
            Action::Block
        } else {
            Action::Allow
        };
        self.action = Some(self.action.map_or(action, |a| a.max(action)));
        if let Some(allow) = &controls.network_allow {
            self.allow_lists.push((id, allow));
        }
        self.denials
            .extend(controls.network_deny.iter().map(|grant| (id, grant)));
        self.files
            .extend(controls.files.iter().map(|rule| (id, rule)));
    }

    fn network(&self, package_grants: &[NetworkGrant]) -> NetworkVerdict {
        let restricted = !self.allow_lists.is_empty();
        let mut grants = intersect(&self.allow_lists);
        grants.extend(package_grants.iter().cloned());
        // Sorted and deduplicated as the sourced grants would be (their derived order, with
        // the policy id as the source), before copying them.
        let mut denials = self.denials.clone();
        let key =
            |(id, g): &(&'a str, &'a NetworkGrant)| (&g.destination, g.ports, g.expires_at, *id);
        denials.sort_by(|a, b| key(a).cmp(&key(b)));
        denials.dedup_by(|a, b| key(a) == key(b));
        NetworkVerdict {
            restricted,
            grants,
            denials: denials.iter().map(|(id, g)| sourced(id, *g)).collect(),
        }
    }

    fn files(&self) -> Vec<FileControl> {
        self.files
            .iter()
            .map(|(id, rule)| sourced(id, *rule))
            .collect()
    }
}

/// The destinations every list allows (see the module docs), with their policy as the source.
fn intersect(lists: &[(&str, &[NetworkGrant])]) -> Vec<NetworkGrant> {
    let Some(((id, first), rest)) = lists.split_first() else {
        return Vec::new();
    };
    if rest.is_empty() {
        return first.iter().map(|grant| sourced(id, grant)).collect();
    }
    let mut out: Vec<NetworkGrant> = Vec::new();
    for (index, (id, list)) in lists.iter().enumerate() {
        'candidate: for candidate in *list {
            let mut ports = candidate.ports;
            for (other_index, (_, other)) in lists.iter().enumerate() {
                if other_index == index {
                    continue;
                }
                let narrowed = other.iter().find_map(|grant| {
                    if grant.destination.covers(&candidate.destination) {
                        Ports::intersect(ports, grant.ports)
                    } else {
                        None
                    }
                });
                match narrowed {
                    Some(p) => ports = p,
                    None => continue 'candidate,
                }
            }
            if !out
                .iter()
                .any(|o| o.destination == candidate.destination && o.ports == ports)
            {
                let mut kept = sourced(id, candidate);
                kept.ports = ports;
                out.push(kept);
            }
        }
    }
    out
}

/// Network grants and file allows from active access packages.
fn package_controls(
    packages: &[PackageGrant],
    now: UnixTime,
) -> (Vec<NetworkGrant>, Vec<FileControl>) {
    let mut grants = Vec::new();
    let mut files = Vec::new();
    for package in packages.iter().filter(|p| p.expires_at > now) {
        for resource in &package.resources {
            let expires_at = Some(package.expires_at);
            let source = package.package_id.clone();
            match resource.kind {
                ResourceKind::NetworkDestination => {
                    if let Some((destination, ports)) = parse_package_destination(&resource.value) {
                        grants.push(NetworkGrant {
                            destination,
                            ports,
                            expires_at,
                            source,
                        });
                    }
                }
                ResourceKind::McpServer => grants.push(NetworkGrant {
                    destination: Destination::McpServer(resource.value.clone()),
                    ports: None,
                    expires_at,
                    source,
                }),
                ResourceKind::FilePath => files.push(FileControl {
                    path: resource.value.clone(),
                    access: vec![FileAccess::Read, FileAccess::Write],
                    action: FileAction::Allow,
                    expires_at,
                    source,
                }),
            }
        }
    }
    (grants, files)
}

/// Access-package destinations: `host:port`, an address, `cidr`, `cidr:port`, `[v6]:port`.
fn parse_package_destination(value: &str) -> Option<(Destination, Option<Ports>)> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        (inner, after.strip_prefix(':'))
    } else if value.matches(':').count() == 1 {
        let (host, port) = value.split_once(':')?;
        (host, Some(port))
    } else {
        (value, None)
    };
    let ports = match port {
        Some(port) => Some(Ports::parse(port)?),
        None => None,
    };
    let destination = match Cidr::parse(host) {
        Some(cidr) => Destination::Cidr(cidr),
        None => Destination::Domain(host.to_ascii_lowercase()),
    };
    Some((destination, ports))
}

/// Why governance blocks the agent, if it does.
fn governance_block(subject: &Subject) -> Option<String> {
    match subject.state {
        AgentState::Active if subject.orphaned => {
            Some("governance: the agent has no sponsor (orphaned)".to_owned())
        }
        AgentState::Active => None,
        AgentState::Disabled if !subject.disabled_reason.is_empty() => Some(format!(
            "governance: the agent is disabled ({})",
            subject.disabled_reason
        )),
        state => Some(format!("governance: the agent is {state}")),
    }
}

/// Evaluates every policy for the agent; returns the decision and, when `explain`, one verdict
/// per policy (in the order given).
pub fn evaluate(
    set: &PolicySet,
    facts: &Facts<'_>,
    explain: bool,
) -> (Decision, Vec<PolicyVerdict>) {
    let subject = facts.subject;
    let mut enforced = Combined::default();
    let mut would = Combined::default();
    let mut policy_ids = Vec::new();
    let mut report_only_policy_ids = Vec::new();
    // Each applying policy adds a reason, and a few more may come: one allocation, mostly.
    let mut reasons = Vec::with_capacity(32);
    let mut verdicts = Vec::new();
    let mut report_only_network = false;
    // What-if explains every policy; a decision needs only those that may select the agent.
    let considered = if explain {
        (0..set.policies.len()).collect()
    } else {
        set.candidates(subject)
    };
    for index in considered {
        let policy = &set.policies[index];
        let (applies, why) = check(policy, facts, explain);
        if applies {
            let doc = &policy.document;
            would.add(&policy.id, doc);
            match policy.state {
                PolicyState::Enabled => {
                    enforced.add(&policy.id, doc);
                    policy_ids.push(Arc::clone(&set.ids[index]));
                    reasons.push(Arc::clone(&set.applies[index]));
                }
                PolicyState::ReportOnly => {
                    report_only_policy_ids.push(Arc::clone(&set.ids[index]));
                    report_only_network |= doc.controls.network_allow.is_some()
                        || !doc.controls.network_deny.is_empty();
                    reasons.push(Arc::clone(&set.applies[index]));
                }
                PolicyState::Disabled => {}
            }
        }
        if explain {
            verdicts.push(PolicyVerdict {
                policy_id: policy.id.clone(),
                policy_name: policy.document.name.clone(),
                state: policy.state,
                applies,
                reasons: why,
            });
        }
    }
    let (package_grants, package_files) = package_controls(facts.packages, facts.now);
    let mut action = enforced.action.unwrap_or(Action::Allow);
    let mut report_only_action =
        (!report_only_policy_ids.is_empty()).then(|| would.action.unwrap_or(Action::Allow));
    if let Some(why) = governance_block(subject) {
        action = action.max(Action::Block);
        report_only_action = report_only_action.map(|a| a.max(Action::Block));
        reasons.insert(0, Arc::from(why));
    }
    let network = enforced.network(&package_grants);
    let report_only_network = report_only_network.then(|| would.network(&package_grants));
    let mut files = enforced.files();
    files.extend(package_files);
    files.sort();
    files.dedup();
    if !package_grants.is_empty() {
        reasons.push(Arc::from(format!(
            "{} access-package grant(s)",
            package_grants.len()
        )));
    }
    if subject.risk > RiskLevel::None {
        reasons.push(Arc::from(format!("risk level {}", subject.risk)));
    }
    let decision = Decision {
        agent_id: subject.id.clone(),
        agent_name: subject.name.clone(),
        action,
        network,
        files,
        policy_ids,
        report_only_policy_ids,
        report_only_action,
        report_only_network,
        offline_behavior: match subject.offline_behavior {
            OfflineBehavior::Inherit => OfflineBehavior::LastKnown,
            other => other,
        },
        offline_ttl_seconds: subject.offline_ttl_seconds,
        risk: subject.risk,
        reasons,
    };
    (decision, verdicts)
}

/// The days of a window, for explanations.
pub fn describe_days(days: u8) -> String {
    DAY_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| days & (1 << i) != 0)
        .map(|(_, d)| *d)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::policy::parse_document;

    fn subject() -> Subject {
        Subject {
            id: "7b0c1d4e-0000-4000-8000-000000000001".into(),
            name: "billing-bot".into(),
            blueprint: "finance".into(),
            attributes: [("dept".to_owned(), "finance".to_owned())].into(),
            state: AgentState::Active,
            disabled_reason: String::new(),
            orphaned: false,
            risk: RiskLevel::None,
            offline_behavior: OfflineBehavior::FailClosed,
            offline_ttl_seconds: 600,
        }
    }

    fn policy(id: &str, yaml: &str) -> ActivePolicy {
        let document = parse_document(yaml).unwrap_or_else(|err| panic!("{id}: {err}"));
        ActivePolicy {
            id: id.into(),
            state: document.state,
            document,
        }
    }

    fn decide(policies: &[ActivePolicy], subject: &Subject, now: UnixTime) -> Decision {
        let facts = Facts {
            subject,
            host: None,
            now,
            packages: &[],
        };
        evaluate(&PolicySet::new(policies.to_vec()), &facts, false).0
    }

    const ALLOW_BANK: &str = "name: bank\nstate: enabled\nassignments:\n  include: {blueprints: [finance]}\ncontrols:\n  network:\n    allow:\n      - cidr: 10.0.0.0/8\n      - domain: '*.bank.example'\n        ports: 443\n";
    const BLOCK_HIGH: &str = "name: high\nstate: enabled\nassignments:\n  include: {all: true}\nconditions:\n  riskLevels: [high]\ncontrols:\n  block: true\n";

    #[test]
    fn with_no_policy_an_active_agent_is_allowed_unrestricted() {
        let decision = decide(&[], &subject(), 0);
        assert_eq!(decision.action, Action::Allow);
        assert!(!decision.network.restricted);
        assert_eq!(decision.report_only_action, None);
        assert_eq!(decision.offline_behavior, OfflineBehavior::FailClosed);
        assert_eq!(decision.offline_ttl_seconds, 600);
    }

    #[test]
    fn block_beats_allow_and_quarantine_beats_block() {
        let mut agent = subject();
        agent.risk = RiskLevel::High;
        let quarantine = "name: q\nstate: enabled\nassignments:\n  include: {agents: [billing-bot]}\ncontrols:\n  quarantine: true\n";
        let policies = [policy("a", ALLOW_BANK), policy("b", BLOCK_HIGH)];
        let decision = decide(&policies, &agent, 0);
        assert_eq!(decision.action, Action::Block);
        assert_eq!(decision.policy_ids, [Arc::from("a"), Arc::from("b")]);
        let policies = [
            policy("a", ALLOW_BANK),
            policy("b", BLOCK_HIGH),
            policy("c", quarantine),
        ];
        assert_eq!(decide(&policies, &agent, 0).action, Action::Quarantine);
        agent.risk = RiskLevel::Medium;
        let decision = decide(&policies[..2], &agent, 0);
        assert_eq!(
            decision.action,
            Action::Allow,
            "the risk condition does not hold"
        );
        assert_eq!(decision.policy_ids, [Arc::from("a")]);
    }

    #[test]
    fn allow_lists_of_several_policies_intersect() {
        let narrow = "name: narrow\nstate: enabled\nassignments:\n  include: {attributes: {dept: finance}}\ncontrols:\n  network:\n    allow:\n      - cidr: 10.1.0.0/16\n        ports: 400-500\n      - domain: api.bank.example\n      - domain: other.example\n";
        let decision = decide(
            &[policy("a", ALLOW_BANK), policy("b", narrow)],
            &subject(),
            0,
        );
        assert!(decision.network.restricted);
        let got: Vec<String> = decision
            .network
            .grants
            .iter()
            .map(|g| {
                format!(
                    "{} {}",
                    g.destination,
                    g.ports.map(|p| p.to_string()).unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            got,
            ["cidr 10.1.0.0/16 400-500", "domain api.bank.example 443"]
        );
    }

    #[test]
    fn denials_beat_grants_and_add_up() {
        let deny = "name: deny\nstate: enabled\nassignments:\n  include: {all: true}\ncontrols:\n  network:\n    deny:\n      - domain: evil.example\n";
        let decision = decide(&[policy("a", ALLOW_BANK), policy("d", deny)], &subject(), 0);
        assert_eq!(decision.network.denials.len(), 1);
        assert_eq!(decision.network.denials[0].source, "d");
        assert!(
            decision.network.restricted,
            "the allow-list still restricts"
        );
    }

    #[test]
    fn report_only_policies_only_report() {
        let mut agent = subject();
        agent.risk = RiskLevel::High;
        let report_only = BLOCK_HIGH.replace("state: enabled", "state: reportOnly");
        let decision = decide(
            &[policy("a", ALLOW_BANK), policy("r", &report_only)],
            &agent,
            0,
        );
        assert_eq!(decision.action, Action::Allow);
        assert_eq!(decision.report_only_action, Some(Action::Block));
        assert_eq!(decision.report_only_policy_ids, [Arc::from("r")]);
        assert!(decision.policy_ids == [Arc::from("a")]);
        agent.risk = RiskLevel::Low;
        let decision = decide(&[policy("r", &report_only)], &agent, 0);
        assert_eq!(
            decision.report_only_action, None,
            "not applying: nothing to report"
        );
    }

    #[test]
    fn disabled_expired_and_orphaned_agents_are_blocked() {
        for (state, orphaned) in [
            (AgentState::Disabled, false),
            (AgentState::Expired, false),
            (AgentState::Created, false),
            (AgentState::Active, true),
        ] {
            let mut agent = subject();
            agent.state = state;
            agent.orphaned = orphaned;
            let decision = decide(&[policy("a", ALLOW_BANK)], &agent, 0);
            assert_eq!(
                decision.action,
                Action::Block,
                "{state} orphaned={orphaned}"
            );
            assert!(
                decision.reasons[0].starts_with("governance:"),
                "{:?}",
                decision.reasons
            );
        }
    }

    #[test]
    fn access_packages_add_grants_with_their_expiry_until_it_passes() {
        let packages = [PackageGrant {
            package_id: "pkg".into(),
            resources: vec![
                Resource {
                    kind: ResourceKind::NetworkDestination,
                    value: "api.partner.example:443".into(),
                },
                Resource {
                    kind: ResourceKind::FilePath,
                    value: "/srv/shared".into(),
                },
            ],
            expires_at: 1_000,
        }];
        let agent = subject();
        let policies = [policy("a", ALLOW_BANK)];
        let facts = Facts {
            subject: &agent,
            host: None,
            now: 500,
            packages: &packages,
        };
        let decision = evaluate(&PolicySet::new(policies.to_vec()), &facts, false).0;
        let grant = decision
            .network
            .grants
            .iter()
            .find(|g| g.source == "pkg")
            .expect("package grant");
        assert_eq!(
            grant.destination,
            Destination::Domain("api.partner.example".into())
        );
        assert_eq!(grant.expires_at, Some(1_000));
        assert_eq!(decision.files.len(), 1);
        let facts = Facts {
            now: 1_000,
            ..facts
        };
        let decision = evaluate(&PolicySet::new(policies.to_vec()), &facts, false).0;
        assert!(decision.network.grants.iter().all(|g| g.source != "pkg"));
    }

    #[test]
    fn exclusions_host_labels_and_time_windows_are_conditions() {
        let yaml = "name: office\nstate: enabled\nassignments:\n  include: {all: true}\n  exclude: {blueprints: [ops]}\nconditions:\n  hostLabels: {env: prod}\n  timeWindows:\n    - days: [mon]\n      hours: 22:00-02:00\n      timeZone: UTC\ncontrols:\n  block: true\n";
        let policies = [policy("o", yaml)];
        let agent = subject();
        let prod = Place {
            id: "h".into(),
            hostname: "h1".into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
        };
        // 1970-01-05 was a Monday.
        let monday_2300 = 4 * 86_400 + 23 * 3600;
        let tuesday_0100 = 5 * 86_400 + 3600;
        let tuesday_2300 = 5 * 86_400 + 23 * 3600;
        let run = |host: Option<&Place>, now| {
            let facts = Facts {
                subject: &agent,
                host,
                now,
                packages: &[],
            };
            evaluate(&PolicySet::new(policies.to_vec()), &facts, true)
        };
        assert_eq!(run(Some(&prod), monday_2300).0.action, Action::Block);
        assert_eq!(
            run(Some(&prod), tuesday_0100).0.action,
            Action::Block,
            "wraps past midnight"
        );
        let (decision, verdicts) = run(Some(&prod), tuesday_2300);
        assert_eq!(decision.action, Action::Allow);
        assert!(
            verdicts[0]
                .reasons
                .last()
                .expect("reason")
                .contains("outside every time window")
        );
        let (_, verdicts) = run(None, monday_2300);
        assert_eq!(
            verdicts[0].reasons.last().map(String::as_str),
            Some("host lacks label env=prod")
        );
        let mut ops = subject();
        ops.blueprint = "ops".into();
        let facts = Facts {
            subject: &ops,
            host: Some(&prod),
            now: monday_2300,
            packages: &[],
        };
        let (decision, verdicts) = evaluate(&PolicySet::new(policies.to_vec()), &facts, true);
        assert_eq!(decision.action, Action::Allow);
        assert!(
            verdicts[0].reasons[0].contains("excluded"),
            "{:?}",
            verdicts[0].reasons
        );
    }

    /// The index offers every policy that may select an agent: a decision from it equals the
    /// one from walking every policy (what-if's walk), for agents named by id or name, by
    /// blueprint, by attribute filters of one or more keys, with exclusions and in every state.
    #[test]
    fn the_index_decides_as_walking_every_policy_does() {
        let include = |i: usize| match i % 8 {
            0 => "{all: true}".to_owned(),
            1 => format!("{{agents: [agent-{}, other-{i}]}}", i % 6),
            2 => format!("{{agents: [00000000-0000-4000-8000-00000000000{}]}}", i % 6),
            3 => format!("{{blueprints: [bp-{}, bp-x]}}", i % 3),
            4 => format!("{{attributes: {{dept: [d{}, dx]}}}}", i % 4),
            5 => format!(
                "{{attributes: {{dept: d{}, tier: [\"{}\"]}}}}",
                i % 4,
                i % 3
            ),
            6 => format!("{{attributes: {{tier: \"{}\", zone: [z1]}}}}", i % 3),
            _ => format!("{{agents: [agent-{}], blueprints: [bp-{}]}}", i % 5, i % 2),
        };
        let policies: Vec<ActivePolicy> = (0..400)
            .map(|i| {
                let state = ["enabled", "reportOnly", "disabled"][i % 3];
                let yaml = format!(
                    "name: p{i}\nstate: {state}\nassignments:\n  include: {}\n  exclude: {{agents: [agent-{}]}}\ncontrols:\n  network:\n    deny:\n      - domain: d{i}.example\n  block: {}\n",
                    include(i),
                    i % 7,
                    i % 5 == 0
                );
                policy(&format!("p{i}"), &yaml)
            })
            .collect();
        let set = PolicySet::new(policies);
        for n in 0..6 {
            let mut agent = subject();
            agent.id = format!("00000000-0000-4000-8000-00000000000{n}");
            agent.name = format!("agent-{n}");
            agent.blueprint = format!("bp-{}", n % 3);
            agent.attributes = [
                ("dept".to_owned(), format!("d{}", n % 4)),
                ("tier".to_owned(), (n % 3).to_string()),
                ("zone".to_owned(), format!("z{}", n % 2)),
            ]
            .into();
            let facts = Facts {
                subject: &agent,
                host: None,
                now: 0,
                packages: &[],
            };
            let indexed = evaluate(&set, &facts, false).0;
            let walked = evaluate(&set, &facts, true).0;
            assert!(!indexed.policy_ids.is_empty(), "agent {n}");
            assert_eq!(indexed, walked, "agent {n}");
        }
    }

    /// One agent's decision over 1,000 policies of every kind is right. How fast it is lives in
    /// the benchmarks (`cargo xtask bench`), never in a timed test.
    #[test]
    fn one_agent_over_a_thousand_policies_is_decided() {
        let policies: Vec<ActivePolicy> = (0..1_000)
            .map(|i| {
                let yaml = match i % 4 {
                    0 => format!("name: p{i}\nstate: enabled\nassignments:\n  include: {{agents: [agent-{i}]}}\ncontrols:\n  block: true\n"),
                    1 => format!("name: p{i}\nstate: reportOnly\nassignments:\n  include: {{blueprints: [bp-{i}]}}\ncontrols:\n  quarantine: true\n"),
                    2 => format!("name: p{i}\nstate: enabled\nassignments:\n  include: {{attributes: {{dept: d{i}}}}}\nconditions:\n  riskLevels: [high]\ncontrols:\n  block: true\n"),
                    _ => format!("name: p{i}\nstate: enabled\nassignments:\n  include: {{all: true}}\n  exclude: {{agents: [billing-bot]}}\ncontrols:\n  network:\n    deny:\n      - domain: d{i}.example\n"),
                };
                policy(&i.to_string(), &yaml)
            })
            .collect();
        let agent = subject();
        let decision = decide(&policies, &agent, 0);
        assert_eq!(decision.action, Action::Allow);
    }
}
