//! Network policy: per-agent default action, mode and rules, the global blocklist and the
//! quarantine allow-list, validated and compiled into the kernel's map entries.
//!
//! The kernel takes the longest matching destination prefix and scans its rule list in order.
//! So that shorter prefixes still apply when a longer one's rules do not match the port or
//! protocol, each prefix's list holds its own rules and those of every shorter prefix that
//! contains it: longer prefixes first, and at equal length deny before allow (deny wins at
//! equal specificity), then in the order written.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use agentd_common::{NET_RULES_PER_PREFIX, NetRule, NetRuleList, net_action};
use serde::Deserialize;

use super::fields::{FieldError, check_rule_id};
use crate::netfamily::SocketFamily;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deny what the policy denies.
    #[default]
    Enforce,
    /// Report "would deny" and allow.
    Audit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    /// UDP and UDP-Lite.
    Udp,
    /// ICMP and `ICMPv6` (ping sockets).
    Icmp,
}

impl Protocol {
    /// The protocol number the kernel compares, 0 for any. The kernel compares UDP-Lite as UDP
    /// and `ICMPv6` as ICMP.
    pub fn kernel_number(self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Icmp => 1,
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// An agent's `[agent.network]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentNetworkSpec {
    /// For destinations no rule matches. Default: allow.
    #[serde(default)]
    pub default: Action,
    #[serde(default)]
    pub mode: Mode,
    /// Whether its processes may create raw sockets (`SOCK_RAW`, IPv4 and IPv6) and packet
    /// sockets (`AF_PACKET`), which no destination rule can judge. Default: deny.
    #[serde(default)]
    pub raw_sockets: RawSockets,
    /// Socket families beyond IPv4, IPv6, unix, netlink and alg that its processes may create
    /// (`vsock`, `tipc`, ...; `crate::netfamily`). Default: none.
    #[serde(default)]
    pub socket_families: Vec<SocketFamily>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<NetRuleSpec>,
}

/// `raw_sockets`: raw sockets carry whatever packets their process builds, so no rule on
/// destinations can judge them; they are allowed or denied as a whole.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawSockets {
    Allow,
    #[default]
    Deny,
}

impl RawSockets {
    /// The kernel's `net_action` value.
    pub fn kernel_value(self) -> u8 {
        match self {
            Self::Allow => net_action::ALLOW,
            Self::Deny => net_action::DENY,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetRuleSpec {
    pub id: String,
    pub action: Action,
    /// An IPv4 or IPv6 prefix (`10.0.0.0/8`, `2001:db8::/32`, or an address). Default: any.
    pub cidr: Option<String>,
    /// A domain name (`api.openai.com`) or wildcard (`*.github.com`: its subdomains). The rule
    /// applies to the addresses the agent's DNS answers give for it, for their TTL.
    pub domain: Option<String>,
    /// A web category from the category database (`ai-apis`, `file-sharing`, ...).
    pub category: Option<String>,
    /// A destination named in `[[network.destination]]` (an MCP server, an API).
    pub destination: Option<String>,
    /// A port (`443`) or range (`8000-8100`). Default: any.
    pub ports: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// On an allow rule by name (`domain`, `category`, `destination`): its learned addresses
    /// are allowed even where a CIDR deny rule of the agent covers them. Default: false, so
    /// that a CIDR deny holds against a DNS answer pointing into it (rebinding).
    #[serde(default)]
    pub override_cidr_deny: bool,
}

/// The top-level `[network]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GlobalNetworkSpec {
    /// Named destinations, such as MCP servers and APIs, that rules refer to by name.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationSpec>,
    /// Threat-intel prefixes: always denied for every agent, and reported as alerts.
    #[serde(default)]
    pub blocklist: Vec<String>,
    /// Destinations a quarantined agent may still reach: the control plane and exceptions.
    #[serde(default)]
    pub quarantine_allow: Vec<String>,
}

/// `[[network.destination]]`: a name for a set of domains and prefixes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// The web category database: domain patterns and the category each belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categories {
    by_category: BTreeMap<String, Vec<DomainPattern>>,
}

/// The sample database that ships inside agentd (`agentd/data/categories.txt`).
pub const SAMPLE_CATEGORIES: &str = include_str!("../../data/categories.txt");

impl Categories {
    /// Parses `pattern category` lines; `#` starts a comment. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_category: BTreeMap<String, Vec<DomainPattern>> = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(pattern), Some(category), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {}: expected `DOMAIN CATEGORY`", number + 1));
            };
            let pattern = DomainPattern::parse(pattern)
                .map_err(|reason| format!("line {}: {reason}", number + 1))?;
            by_category
                .entry(category.to_owned())
                .or_default()
                .push(pattern);
        }
        Ok(Self { by_category })
    }

    /// The shipped sample.
    #[must_use]
    pub fn sample() -> Self {
        Self::parse(SAMPLE_CATEGORIES).expect("the shipped category database parses")
    }

    pub fn patterns(&self, category: &str) -> Option<&[DomainPattern]> {
        self.by_category.get(category).map(Vec::as_slice)
    }

    /// The category names, for error messages.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_category.keys().map(String::as_str)
    }
}

/// Named destinations after validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    by_name: BTreeMap<String, (Vec<DomainPattern>, Vec<Prefix>)>,
}

/// What rules can refer to by name: categories and destinations.
pub struct NameContext<'a> {
    pub categories: &'a Categories,
    pub destinations: &'a Destinations,
}

/// An IP prefix with its host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    fn any(v6: bool) -> Self {
        if v6 {
            Self {
                addr: IpAddr::from([0u8; 16]),
                len: 0,
            }
        } else {
            Self {
                addr: IpAddr::from([0u8; 4]),
                len: 0,
            }
        }
    }

    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }

    fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    /// Whether `self` contains `other` (same family, not longer, same leading bits).
    pub fn contains(&self, other: &Self) -> bool {
        if self.is_v6() != other.is_v6() || self.len > other.len {
            return false;
        }
        let mask = if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.len))
        };
        self.bits() & mask == other.bits() & mask
    }

    /// The address bytes, for map keys.
    pub fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or prefix"))?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
        };
        let prefix = Self { addr, len };
        let host_bits = if len == 0 {
            prefix.bits()
        } else {
            prefix.bits() & !(u128::MAX << (128 - u32::from(len)))
        };
        let host_bits = if addr.is_ipv6() {
            host_bits
        } else {
            host_bits >> 96
        };
        if host_bits != 0 {
            return Err(format!("{text:?} has host bits set below /{len}"));
        }
        Ok(prefix)
    }
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |part: &str| {
        part.trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("{text:?}: a port is a number from 1 to 65535"))
    };
    match text.split_once('-') {
        None => port(text).map(|port| (port, port)),
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(format!("{text:?}: the range's start is above its end"));
            }
            Ok((lo, hi))
        }
    }
}

/// A validated rule, before it is laid out per prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledNetRule {
    /// `agent/rule`, the name events report.
    pub name: String,
    pub prefix: Prefix,
    pub ports: (u16, u16),
    pub protocol: Protocol,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledAgentNetwork {
    pub default: Action,
    pub mode: Mode,
    pub raw_sockets: RawSockets,
    pub socket_families: Vec<SocketFamily>,
    pub rules: Vec<CompiledNetRule>,
    pub domains: Vec<DomainRule>,
}

/// `override_cidr_deny` is only for an allow rule by name.
fn check_override(rule: &NetRuleSpec, at: &str) -> Option<FieldError> {
    let by_name = rule.domain.is_some() || rule.category.is_some() || rule.destination.is_some();
    (rule.override_cidr_deny && (rule.action != Action::Allow || !by_name)).then(|| FieldError {
        field: format!("{at}.override_cidr_deny"),
        reason:
            "only an allow rule by `domain`, `category` or `destination` can override a CIDR deny"
                .to_owned(),
    })
}

/// A rule by domain name, applied to addresses learned from DNS answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    /// `agent/rule`.
    pub name: String,
    pub pattern: DomainPattern,
    pub ports: (u16, u16),
    pub protocol: Protocol,
    pub action: Action,
    /// The allow beats a CIDR deny of the agent (`override_cidr_deny`).
    pub override_cidr_deny: bool,
}

/// `example.com` (exactly) or `*.example.com` (any name below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    Exact(String),
    Subdomains(String),
}

impl DomainPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("{text:?} is not a domain name or a `*.` wildcard"));
        }
        Ok(if wildcard {
            Self::Subdomains(name)
        } else {
            Self::Exact(name)
        })
    }

    /// Whether a name from a DNS answer matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Self::Exact(want) => name == *want,
            Self::Subdomains(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl Action {
    /// The kernel's `net_action` value.
    pub fn kernel_value(self) -> u8 {
        match self {
            Self::Allow => net_action::ALLOW,
            Self::Deny => net_action::DENY,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledGlobalNetwork {
    pub blocklist: Vec<Prefix>,
    pub quarantine_allow: Vec<Prefix>,
}

impl AgentNetworkSpec {
    /// Validates the table at `at` (e.g. `agent[0].network`) for agent `agent`.
    #[expect(
        clippy::too_many_lines,
        reason = "one pass over the table's fields, each checked where it is read"
    )]
    pub fn compile(
        &self,
        agent: &str,
        at: &str,
        names: &NameContext<'_>,
        errors: &mut Vec<FieldError>,
    ) -> CompiledAgentNetwork {
        let mut error = |field: String, reason: String| errors.push(FieldError { field, reason });
        let mut rules = Vec::new();
        let mut domains = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rule[{i}]");
            if let Some(problem) = check_rule_id(&rule.id, &at, &mut ids) {
                error(problem.field, problem.reason);
            }
            let ports = match rule.ports.as_deref().map(parse_ports) {
                // Every port, and none: ICMP datagrams name port 0.
                None => (0, u16::MAX),
                Some(Ok(ports)) => ports,
                Some(Err(reason)) => {
                    error(format!("{at}.ports"), reason);
                    continue;
                }
            };
            let targets = [
                rule.cidr.is_some(),
                rule.domain.is_some(),
                rule.category.is_some(),
                rule.destination.is_some(),
            ];
            if targets.iter().filter(|given| **given).count() > 1 {
                error(
                    at.clone(),
                    "give at most one of `cidr`, `domain`, `category` and `destination`".to_owned(),
                );
                continue;
            }
            if let Some(problem) = check_override(rule, &at) {
                error(problem.field, problem.reason);
            }
            let domain_rule = |pattern: DomainPattern| DomainRule {
                name: format!("{agent}/{}", rule.id),
                pattern,
                ports,
                protocol: rule.protocol,
                action: rule.action,
                override_cidr_deny: rule.override_cidr_deny,
            };
            if let Some(domain) = &rule.domain {
                match DomainPattern::parse(domain) {
                    Ok(pattern) => domains.push(domain_rule(pattern)),
                    Err(reason) => error(format!("{at}.domain"), reason),
                }
                continue;
            }
            if let Some(category) = &rule.category {
                match names.categories.patterns(category) {
                    Some(patterns) => domains.extend(patterns.iter().cloned().map(domain_rule)),
                    None => error(
                        format!("{at}.category"),
                        format!(
                            "unknown category {category:?} (known: {})",
                            names.categories.names().collect::<Vec<_>>().join(", ")
                        ),
                    ),
                }
                continue;
            }
            let mut named_prefixes = None;
            if let Some(destination) = &rule.destination {
                let Some((patterns, prefixes)) = names.destinations.by_name.get(destination) else {
                    error(
                        format!("{at}.destination"),
                        format!("unknown destination {destination:?}"),
                    );
                    continue;
                };
                domains.extend(patterns.iter().cloned().map(domain_rule));
                named_prefixes = Some(prefixes.clone());
            }
            let prefixes = match (&rule.cidr, named_prefixes) {
                (_, Some(prefixes)) => prefixes,
                (None, None) => vec![Prefix::any(false), Prefix::any(true)],
                (Some(cidr), None) => match cidr.parse::<Prefix>() {
                    Ok(prefix) => vec![prefix],
                    Err(reason) => {
                        error(format!("{at}.cidr"), reason);
                        continue;
                    }
                },
            };
            for prefix in prefixes {
                rules.push(CompiledNetRule {
                    name: format!("{agent}/{}", rule.id),
                    prefix,
                    ports,
                    protocol: rule.protocol,
                    action: rule.action,
                });
            }
        }
        CompiledAgentNetwork {
            default: self.default,
            mode: self.mode,
            raw_sockets: self.raw_sockets,
            socket_families: self.socket_families.clone(),
            rules,
            domains,
        }
    }
}

impl GlobalNetworkSpec {
    pub fn compile(&self, errors: &mut Vec<FieldError>) -> CompiledGlobalNetwork {
        let mut parse = |list: &[String], field: &str| -> Vec<Prefix> {
            list.iter()
                .enumerate()
                .filter_map(|(i, text)| match text.parse() {
                    Ok(prefix) => Some(prefix),
                    Err(reason) => {
                        errors.push(FieldError {
                            field: format!("network.{field}[{i}]"),
                            reason,
                        });
                        None
                    }
                })
                .collect()
        };
        CompiledGlobalNetwork {
            blocklist: parse(&self.blocklist, "blocklist"),
            quarantine_allow: parse(&self.quarantine_allow, "quarantine_allow"),
        }
    }

    /// Validates the named destinations.
    pub fn destinations(&self, errors: &mut Vec<FieldError>) -> Destinations {
        let mut by_name = BTreeMap::new();
        for (i, destination) in self.destinations.iter().enumerate() {
            let at = format!("network.destination[{i}]");
            let mut error =
                |field: String, reason: String| errors.push(FieldError { field, reason });
            if destination.name.is_empty() || by_name.contains_key(&destination.name) {
                error(
                    format!("{at}.name"),
                    format!("{:?} is empty or a duplicate", destination.name),
                );
                continue;
            }
            let mut patterns = Vec::new();
            for (j, domain) in destination.domains.iter().enumerate() {
                match DomainPattern::parse(domain) {
                    Ok(pattern) => patterns.push(pattern),
                    Err(reason) => error(format!("{at}.domains[{j}]"), reason),
                }
            }
            let mut prefixes = Vec::new();
            for (j, cidr) in destination.cidrs.iter().enumerate() {
                match cidr.parse::<Prefix>() {
                    Ok(prefix) => prefixes.push(prefix),
                    Err(reason) => error(format!("{at}.cidrs[{j}]"), reason),
                }
            }
            by_name.insert(destination.name.clone(), (patterns, prefixes));
        }
        Destinations { by_name }
    }
}

/// The rule lists of one agent, one per prefix, in the order the kernel scans them. `number`
/// maps a rule's name to the number events carry. Fails, naming the prefix, when a list would
/// exceed [`NET_RULES_PER_PREFIX`].
pub fn layout(
    network: &CompiledAgentNetwork,
    mut number: impl FnMut(&str) -> u32,
) -> Result<BTreeMap<Prefix, NetRuleList>, String> {
    let prefixes: std::collections::BTreeSet<Prefix> =
        network.rules.iter().map(|rule| rule.prefix).collect();
    let mut lists = BTreeMap::new();
    for prefix in prefixes {
        let mut applicable: Vec<(usize, &CompiledNetRule)> = network
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.prefix.contains(&prefix))
            .collect();
        // Longer prefix first; at equal length deny first; then as written.
        applicable.sort_by_key(|(order, rule)| {
            (
                std::cmp::Reverse(rule.prefix.len),
                rule.action != Action::Deny,
                *order,
            )
        });
        if applicable.len() > NET_RULES_PER_PREFIX {
            return Err(format!(
                "{} rules apply to {prefix} (its own and those of shorter prefixes); at most {NET_RULES_PER_PREFIX} can",
                applicable.len()
            ));
        }
        let mut list = NetRuleList {
            count: 0,
            rules: [NetRule {
                port_lo: 0,
                port_hi: 0,
                protocol: 0,
                action: 0,
                pad: 0,
                rule: 0,
            }; NET_RULES_PER_PREFIX],
        };
        for (slot, (_, rule)) in list.rules.iter_mut().zip(&applicable) {
            *slot = NetRule {
                port_lo: rule.ports.0,
                port_hi: rule.ports.1,
                protocol: rule.protocol.kernel_number(),
                action: rule.action.kernel_value(),
                pad: 0,
                rule: number(&rule.name),
            };
        }
        list.count = u32::try_from(applicable.len()).expect("at most 16");
        lists.insert(prefix, list);
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> AgentNetworkSpec {
        toml::from_str(text).unwrap()
    }

    fn compile(text: &str) -> Result<CompiledAgentNetwork, Vec<String>> {
        let mut errors = Vec::new();
        let categories = Categories::sample();
        let destinations = Destinations::default();
        let names = NameContext {
            categories: &categories,
            destinations: &destinations,
        };
        let compiled = spec(text).compile("a", "agent[0].network", &names, &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        assert_eq!("10.0.0.0/8".parse::<Prefix>().unwrap().len, 8);
        assert_eq!("2001:db8::/32".parse::<Prefix>().unwrap().len, 32);
        assert_eq!("127.0.0.1".parse::<Prefix>().unwrap().len, 32);
        assert!(
            "10.0.0.1/8"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            "example.com"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("not an IP")
        );
    }

    #[test]
    fn override_cidr_deny_is_only_for_allow_rules_by_name() {
        let compiled = compile(
            r#"
            [[rule]]
            id = "api"
            action = "allow"
            domain = "api.internal.test"
            override_cidr_deny = true
            "#,
        )
        .unwrap();
        assert!(compiled.domains[0].override_cidr_deny);
        let errors = compile(
            r#"
            [[rule]]
            id = "net"
            action = "allow"
            cidr = "10.0.0.0/8"
            override_cidr_deny = true
            [[rule]]
            id = "deny"
            action = "deny"
            domain = "x.test"
            override_cidr_deny = true
            "#,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("agent[0].network.rule[0].override_cidr_deny"));
        assert!(errors[1].starts_with("agent[0].network.rule[1].override_cidr_deny"));
    }

    #[test]
    fn bad_fields_are_named() {
        let errors = compile(
            r#"
            [[rule]]
            id = "a"
            action = "allow"
            cidr = "300.1.1.1/8"
            [[rule]]
            id = "b"
            action = "deny"
            ports = "90-80"
            [[rule]]
            id = "b"
            action = "deny"
            ports = "0"
            "#,
        )
        .unwrap_err();
        assert!(
            errors[0].starts_with("agent[0].network.rule[0].cidr: "),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("agent[0].network.rule[1].ports: "),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("agent[0].network.rule[2].id: duplicate"),
            "{errors:?}"
        );
        assert!(
            errors[3].starts_with("agent[0].network.rule[2].ports: "),
            "{errors:?}"
        );
        let err = toml::from_str::<AgentNetworkSpec>("default = \"block\"").unwrap_err();
        assert!(err.to_string().contains("block"), "{err}");
        let err = toml::from_str::<AgentNetworkSpec>("raw_sockets = \"maybe\"").unwrap_err();
        assert!(err.to_string().contains("raw_sockets"), "{err}");
        assert!(err.to_string().contains("`allow` or `deny`"), "{err}");
    }

    #[test]
    fn raw_sockets_default_to_deny_and_icmp_is_a_rule_protocol() {
        assert_eq!(spec("").raw_sockets, RawSockets::Deny);
        assert_eq!(
            spec("raw_sockets = \"allow\"").raw_sockets.kernel_value(),
            net_action::ALLOW
        );
        let network =
            compile("[[rule]]\nid = \"ping\"\naction = \"deny\"\nprotocol = \"icmp\"\n").unwrap();
        assert_eq!(network.rules[0].protocol.kernel_number(), 1);
    }

    #[test]
    fn lists_carry_shorter_prefixes_after_their_own_with_deny_first() {
        let network = compile(
            r#"
            [[rule]]
            id = "wide-allow"
            action = "allow"
            cidr = "10.0.0.0/8"
            [[rule]]
            id = "narrow-allow-web"
            action = "allow"
            cidr = "10.1.0.0/16"
            ports = "443"
            [[rule]]
            id = "narrow-deny"
            action = "deny"
            cidr = "10.1.0.0/16"
            "#,
        )
        .unwrap();
        let mut names = Vec::new();
        let lists = layout(&network, |name| {
            names.push(name.to_owned());
            u32::try_from(names.len()).unwrap()
        })
        .unwrap();
        let narrow = lists[&"10.1.0.0/16".parse().unwrap()];
        let order: Vec<&str> = narrow.rules[..narrow.count as usize]
            .iter()
            .map(|rule| names[rule.rule as usize - 1].as_str())
            .collect();
        assert_eq!(
            order,
            ["a/narrow-deny", "a/narrow-allow-web", "a/wide-allow"]
        );
        let wide = lists[&"10.0.0.0/8".parse().unwrap()];
        assert_eq!(wide.count, 1);
    }

    #[test]
    fn categories_expand_to_domain_rules_and_unknown_ones_are_named() {
        let network =
            compile("[[rule]]\nid = \"ai\"\naction = \"allow\"\ncategory = \"ai-apis\"\n").unwrap();
        assert!(
            network
                .domains
                .iter()
                .any(|rule| rule.pattern.matches("api.openai.com"))
        );
        assert!(network.domains.iter().all(|rule| rule.name == "a/ai"));
        let errors = compile("[[rule]]\nid = \"x\"\naction = \"deny\"\ncategory = \"gambling\"\n")
            .unwrap_err();
        assert!(
            errors[0]
                .starts_with("agent[0].network.rule[0].category: unknown category \"gambling\""),
            "{errors:?}"
        );
        let err = Categories::parse("example.com\n").unwrap_err();
        assert!(err.starts_with("line 1"), "{err}");
    }

    #[test]
    fn domain_patterns_match_names_and_refuse_garbage() {
        let exact = DomainPattern::parse("API.openai.com.").unwrap();
        assert!(exact.matches("api.openai.com"));
        assert!(!exact.matches("x.api.openai.com"));
        let wild = DomainPattern::parse("*.github.com").unwrap();
        assert!(wild.matches("api.github.com"));
        assert!(wild.matches("a.b.github.com."));
        assert!(!wild.matches("github.com"));
        assert!(!wild.matches("evilgithub.com"));
        assert!(DomainPattern::parse("bad..name").is_err());
        assert!(DomainPattern::parse("-x.com").is_err());
        let errors =
            compile("[[rule]]\nid = \"d\"\naction = \"allow\"\ndomain = \"a b\"\n").unwrap_err();
        assert!(
            errors[0].starts_with("agent[0].network.rule[0].domain: "),
            "{errors:?}"
        );
        let errors = compile(
            "[[rule]]\nid = \"d\"\naction = \"allow\"\ndomain = \"a.b\"\ncidr = \"10.0.0.0/8\"\n",
        )
        .unwrap_err();
        assert!(errors[0].contains("at most one of"), "{errors:?}");
    }

    #[test]
    fn a_rule_without_cidr_covers_both_families() {
        let network = compile(
            "[[rule]]\nid = \"web\"\naction = \"allow\"\nports = \"443\"\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        let lists = layout(&network, |_| 1).unwrap();
        assert_eq!(lists.len(), 2);
        assert!(lists.keys().any(Prefix::is_v6));
    }

    #[test]
    fn too_many_rules_for_one_prefix_are_refused() {
        use std::fmt::Write as _;
        let mut text = String::new();
        for i in 0..=NET_RULES_PER_PREFIX {
            let _ = write!(
                text,
                "[[rule]]\nid = \"r{i}\"\naction = \"allow\"\ncidr = \"10.0.0.0/8\"\nports = \"{}\"\n",
                i + 1
            );
        }
        let err = layout(&compile(&text).unwrap(), |_| 1).unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }
}
