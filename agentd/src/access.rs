//! Conditional Access on the host: the decisions the control plane streams (docs/conditional-access.md),
//! as agentd keeps them on disk and turns them into kernel tables.
//!
//! A decision never widens what the local policy allows: the network hooks apply it after the
//! local verdict, so deny wins. Grants carry their expiry into the kernel, which checks it on
//! every connect: a lapsed grant stops allowing even when agentd and the control plane are down.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use agentd_common::{
    CA_GRANTS_PER_PREFIX, CaAgent, CaGrant, CaGrantList, CaKeyV4, CaKeyV6, net_action,
};
use agentd_proto::v1 as proto;
use serde::{Deserialize, Serialize};

use crate::netpolicy::{Categories, DomainPattern, Prefix};

/// What a decision does with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Enforce the decision's network and file controls.
    Allow,
    /// Deny all network connections and file writes.
    Block,
    /// As block, and the agent is treated as compromised.
    Quarantine,
}

/// What to enforce while the control plane cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offline {
    /// Keep the last decisions (fail-open).
    KeepLast,
    /// Block the agent once its decisions are older than the TTL.
    FailClosed,
    /// Once older than the TTL, drop the decision: the local policy alone applies.
    Baseline,
}

/// Where a grant points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Cidr(String),
    Domain(String),
    Category(String),
    McpServer(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub destination: Destination,
    /// Inclusive port range; `(0, 65535)` for any.
    pub ports: (u16, u16),
    /// Unix milliseconds; none: no expiry.
    pub expires_unix_ms: Option<i64>,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileControl {
    pub path: String,
    pub access: Vec<String>,
    pub action: String,
    pub expires_unix_ms: Option<i64>,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDecision {
    pub agent_id: String,
    pub agent_name: String,
    pub action: Action,
    pub network_restricted: bool,
    pub grants: Vec<Grant>,
    pub denials: Vec<Grant>,
    pub file_controls: Vec<FileControl>,
    /// What report-only policies would do, if any applies.
    pub report_only_action: Option<Action>,
    pub offline: Offline,
    pub offline_ttl_secs: u32,
    pub risk_level: String,
    pub reasons: Vec<String>,
    #[serde(default)]
    pub policy_ids: Vec<String>,
    #[serde(default)]
    pub report_only_policy_ids: Vec<String>,
}

/// One complete set of decisions, as received and as kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionSet {
    pub version: u64,
    /// When the control plane issued it, Unix milliseconds.
    pub issued_unix_ms: i64,
    /// When the control plane last confirmed it current (the watch stream open and answering),
    /// Unix milliseconds: offline behaviours count from here.
    #[serde(default)]
    pub confirmed_unix_ms: i64,
    pub decisions: Vec<AgentDecision>,
}

/// A decision the host cannot use, with the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct DecisionError {
    pub field: String,
    pub reason: String,
}

fn error(field: String, reason: impl Into<String>) -> DecisionError {
    DecisionError {
        field,
        reason: reason.into(),
    }
}

fn unix_ms(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn action(value: i32, field: &str) -> Result<Action, DecisionError> {
    match proto::Action::try_from(value) {
        Ok(proto::Action::Allow) => Ok(Action::Allow),
        Ok(proto::Action::Block) => Ok(Action::Block),
        Ok(proto::Action::Quarantine) => Ok(Action::Quarantine),
        _ => Err(error(field.to_owned(), format!("unknown action {value}"))),
    }
}

/// `"443"`, `"8000-8100"` or `""` (any).
fn ports(text: &str, field: &str) -> Result<(u16, u16), DecisionError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok((0, u16::MAX));
    }
    let parse = |part: &str| {
        part.trim()
            .parse::<u16>()
            .map_err(|_| error(field.to_owned(), format!("{text:?} is not a port or range")))
    };
    let (lo, hi) = if let Some((lo, hi)) = text.split_once('-') {
        (parse(lo)?, parse(hi)?)
    } else {
        let port = parse(text)?;
        (port, port)
    };
    if lo > hi {
        return Err(error(field.to_owned(), format!("{text:?}: empty range")));
    }
    Ok((lo, hi))
}

fn grant(raw: &proto::NetworkGrant, field: &str) -> Result<Grant, DecisionError> {
    use proto::network_grant::Destination as Raw;
    let destination = match &raw.destination {
        Some(Raw::Cidr(cidr)) => {
            cidr.parse::<Prefix>()
                .map_err(|reason| error(format!("{field}.cidr"), reason))?;
            Destination::Cidr(cidr.clone())
        }
        Some(Raw::Domain(domain)) => {
            DomainPattern::parse(domain)
                .map_err(|reason| error(format!("{field}.domain"), reason))?;
            Destination::Domain(domain.clone())
        }
        Some(Raw::Category(category)) => Destination::Category(category.clone()),
        Some(Raw::McpServer(url)) => {
            mcp_host(url).map_err(|reason| error(format!("{field}.mcp_server"), reason))?;
            Destination::McpServer(url.clone())
        }
        None => return Err(error(field.to_owned(), "no destination")),
    };
    Ok(Grant {
        destination,
        ports: ports(&raw.ports, &format!("{field}.ports"))?,
        expires_unix_ms: unix_ms(raw.expire_time.as_ref()),
        source: raw.source.clone(),
    })
}

/// The host and port of an MCP server's URL (`https://mcp.example.com/sse` → name, 443).
fn mcp_host(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let default = match scheme {
        "https" | "wss" => 443,
        "http" | "ws" => 80,
        other => return Err(format!("{url:?}: unsupported scheme {other:?}")),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {port:?}"))?,
        ),
        _ => (authority, default),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.trim_matches(['[', ']']).to_ascii_lowercase(), port))
}

/// How an agent's decision stands when the control plane last confirmed it `stale_ms` ago.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Enforce it as it is.
    Current,
    /// Offline past its TTL with fail-closed: block the agent.
    FailClosed,
    /// Offline past its TTL with baseline: drop it, the local policy alone applies.
    Baseline,
}

impl AgentDecision {
    /// Its standing after `stale_ms` without confirmation from the control plane.
    pub fn standing(&self, stale_ms: i64) -> Standing {
        let ttl_ms = i64::from(self.offline_ttl_secs) * 1000;
        if stale_ms <= ttl_ms {
            return Standing::Current;
        }
        match self.offline {
            Offline::KeepLast => Standing::Current,
            Offline::FailClosed => Standing::FailClosed,
            Offline::Baseline => Standing::Baseline,
        }
    }
}

impl DecisionSet {
    /// Validates a set from the control plane; any bad field refuses the whole set.
    pub fn from_proto(raw: &proto::DecisionSet) -> Result<Self, DecisionError> {
        let mut decisions = Vec::new();
        for (i, d) in raw.decisions.iter().enumerate() {
            let at = format!("decisions[{i}]");
            let grants = d
                .network_grants
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.network_grants[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let denials = d
                .network_denials
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.network_denials[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut file_controls = Vec::new();
            for (j, f) in d.file_controls.iter().enumerate() {
                if !f.path.starts_with('/') {
                    return Err(error(
                        format!("{at}.file_controls[{j}].path"),
                        format!("{:?} is not an absolute path", f.path),
                    ));
                }
                file_controls.push(FileControl {
                    path: f.path.clone(),
                    access: f.access.clone(),
                    action: f.action.clone(),
                    expires_unix_ms: unix_ms(f.expire_time.as_ref()),
                    source: f.source.clone(),
                });
            }
            let report_only_action = match proto::Action::try_from(d.report_only_action) {
                Ok(proto::Action::Unspecified) => None,
                _ => Some(action(
                    d.report_only_action,
                    &format!("{at}.report_only_action"),
                )?),
            };
            let offline = match proto::OfflineBehavior::try_from(d.offline_behavior) {
                Ok(proto::OfflineBehavior::FailClosed) => Offline::FailClosed,
                Ok(proto::OfflineBehavior::Baseline) => Offline::Baseline,
                _ => Offline::KeepLast,
            };
            decisions.push(AgentDecision {
                agent_id: d.agent_id.clone(),
                agent_name: d.agent_name.clone(),
                action: action(d.action, &format!("{at}.action"))?,
                network_restricted: d.network_restricted,
                grants,
                denials,
                file_controls,
                report_only_action,
                offline,
                offline_ttl_secs: d.offline_ttl_seconds,
                risk_level: d.risk_level.clone(),
                reasons: d.reasons.clone(),
                policy_ids: d.policy_ids.clone(),
                report_only_policy_ids: d.report_only_policy_ids.clone(),
            });
        }
        let issued_unix_ms = unix_ms(raw.issue_time.as_ref()).unwrap_or(0);
        Ok(Self {
            version: raw.version,
            issued_unix_ms,
            confirmed_unix_ms: issued_unix_ms,
            decisions,
        })
    }

    /// Reads the set kept at `path`, if there is one.
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the set to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(
            &partial,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&partial, path)
    }
}

/// Clock readings to turn wall-clock expiries into the kernel's `CLOCK_BOOTTIME`.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub unix_ms: i64,
    pub boot_ns: u64,
}

impl Clocks {
    /// The boot-clock instant of a Unix-millisecond time; 1 ns (already past) for times before
    /// now, never 0 (which means "no expiry").
    fn boot_ns(self, unix_ms: i64) -> u64 {
        let ahead_ms = unix_ms.saturating_sub(self.unix_ms);
        if ahead_ms <= 0 {
            return 1;
        }
        self.boot_ns.saturating_add(
            u64::try_from(ahead_ms)
                .unwrap_or(u64::MAX)
                .saturating_mul(1_000_000),
        )
    }
}

/// The kernel's Conditional Access tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaTables {
    pub agents: Vec<(u32, CaAgent)>,
    pub v4: Vec<(u8, CaKeyV4, CaGrantList)>,
    pub v6: Vec<(u8, CaKeyV6, CaGrantList)>,
    /// Per agent, the domain patterns of its grants and denials, for addresses learned from DNS.
    pub domains: Vec<(u32, DomainPattern, CaGrant)>,
}

/// One entry before layout.
#[derive(Clone, Copy, Debug)]
struct Entry {
    prefix: Prefix,
    grant: CaGrant,
}

fn kernel_grant(grant: &Grant, deny: bool, rule: u32, clocks: Clocks) -> CaGrant {
    CaGrant {
        port_lo: grant.ports.0,
        port_hi: grant.ports.1,
        action: if deny {
            net_action::DENY
        } else {
            net_action::ALLOW
        },
        pad: [0; 3],
        rule,
        pad2: 0,
        expires_ns: grant.expires_unix_ms.map_or(0, |ms| clocks.boot_ns(ms)),
    }
}

/// Lists per prefix: each prefix's own entries and those of every prefix containing it,
/// denials first, longer prefixes first. Refuses a layout that needs more than
/// `CA_GRANTS_PER_PREFIX` entries under one prefix.
fn layout(entries: &[Entry], agent: &str) -> Result<Vec<(Prefix, CaGrantList)>, DecisionError> {
    let mut prefixes: Vec<Prefix> = entries.iter().map(|e| e.prefix).collect();
    prefixes.sort();
    prefixes.dedup();
    let mut out = Vec::new();
    for prefix in prefixes {
        let mut covering: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.prefix.contains(&prefix))
            .collect();
        covering.sort_by_key(|e| {
            (
                e.grant.action != net_action::DENY,
                std::cmp::Reverse(e.prefix.len),
            )
        });
        if covering.len() > CA_GRANTS_PER_PREFIX {
            return Err(error(
                format!("decision for {agent}"),
                format!(
                    "{} grants and denials apply under {prefix}; the kernel scans at most {CA_GRANTS_PER_PREFIX}",
                    covering.len()
                ),
            ));
        }
        let mut list = CaGrantList {
            count: u32::try_from(covering.len()).unwrap_or(0),
            pad: 0,
            grants: [CaGrant {
                port_lo: 0,
                port_hi: 0,
                action: 0,
                pad: [0; 3],
                rule: 0,
                pad2: 0,
                expires_ns: 0,
            }; CA_GRANTS_PER_PREFIX],
        };
        for (slot, entry) in list.grants.iter_mut().zip(&covering) {
            *slot = entry.grant;
        }
        out.push((prefix, list));
    }
    Ok(out)
}

/// What the kernel needs for the decisions in `set` of the agents agentd knows: `index_of`
/// maps an agent id (or, failing that, name) to its kernel number (none: leave the agent out,
/// as for an offline baseline), `blocked` says whether to block an agent whatever its decision
/// (offline fail-closed), `rule_of` maps a source to a rule number.
pub fn tables(
    set: &DecisionSet,
    index_of: &mut dyn FnMut(&AgentDecision) -> Option<u32>,
    blocked: &dyn Fn(&AgentDecision) -> bool,
    rule_of: &mut dyn FnMut(&str) -> u32,
    categories: &Categories,
    clocks: Clocks,
) -> Result<CaTables, DecisionError> {
    let mut tables = CaTables::default();
    for decision in &set.decisions {
        let Some(agent) = index_of(decision) else {
            continue;
        };
        let default_rule = rule_of(&format!("conditional-access/{}", decision.agent_name));
        let mut flags = 0;
        if decision.network_restricted {
            flags |= CaAgent::FLAG_RESTRICTED;
        }
        if matches!(decision.action, Action::Block | Action::Quarantine) || blocked(decision) {
            flags |= CaAgent::FLAG_BLOCK;
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (deny, grant) in decision
            .denials
            .iter()
            .map(|g| (true, g))
            .chain(decision.grants.iter().map(|g| (false, g)))
        {
            let rule = rule_of(&format!("conditional-access/{}", grant.source));
            place(
                grant,
                kernel_grant(grant, deny, rule, clocks),
                agent,
                &decision.agent_name,
                categories,
                &mut entries,
                &mut tables.domains,
            )?;
        }
        for (prefix, list) in layout(&entries, &decision.agent_name)? {
            match prefix.addr {
                IpAddr::V4(v4) => tables.v4.push((
                    prefix.len,
                    CaKeyV4 {
                        agent,
                        addr: v4.octets(),
                    },
                    list,
                )),
                IpAddr::V6(v6) => tables.v6.push((
                    prefix.len,
                    CaKeyV6 {
                        agent,
                        addr: v6.octets(),
                    },
                    list,
                )),
            }
        }
        tables.agents.push((
            agent,
            CaAgent {
                flags,
                rule: default_rule,
            },
        ));
    }
    Ok(tables)
}

/// Files one grant or denial: prefixes into `entries`, names into `domains`.
fn place(
    grant: &Grant,
    kernel: CaGrant,
    agent: u32,
    agent_name: &str,
    categories: &Categories,
    entries: &mut Vec<Entry>,
    domains: &mut Vec<(u32, DomainPattern, CaGrant)>,
) -> Result<(), DecisionError> {
    let bad = |reason: String| error(format!("decision for {agent_name}"), reason);
    match &grant.destination {
        Destination::Cidr(cidr) => entries.push(Entry {
            prefix: cidr.parse().map_err(bad)?,
            grant: kernel,
        }),
        Destination::Domain(name) => {
            domains.push((agent, DomainPattern::parse(name).map_err(bad)?, kernel));
        }
        Destination::Category(category) => {
            for pattern in categories.patterns(category).unwrap_or_default() {
                domains.push((agent, pattern.clone(), kernel));
            }
        }
        Destination::McpServer(url) => {
            let (host, port) = mcp_host(url).map_err(bad)?;
            let kernel = CaGrant {
                port_lo: port,
                port_hi: port,
                ..kernel
            };
            match host.parse::<IpAddr>() {
                Ok(addr) => entries.push(Entry {
                    prefix: Prefix {
                        addr,
                        len: if addr.is_ipv6() { 128 } else { 32 },
                    },
                    grant: kernel,
                }),
                Err(_) => domains.push((agent, DomainPattern::parse(&host).map_err(bad)?, kernel)),
            }
        }
    }
    Ok(())
}

/// The learned-address entries for Conditional Access domain grants: `answers` maps names from
/// DNS answers to their IPv4 addresses. Where entries of one agent meet on an address, denials
/// come first.
pub fn learned(
    domains: &[(u32, DomainPattern, CaGrant)],
    answers: &BTreeMap<String, Vec<[u8; 4]>>,
) -> Vec<(agentd_common::LearnedKeyV4, CaGrantList)> {
    let mut by_key: BTreeMap<(u32, [u8; 4]), Vec<CaGrant>> = BTreeMap::new();
    for (agent, pattern, grant) in domains {
        for (name, addresses) in answers {
            if pattern.matches(name) {
                for addr in addresses {
                    by_key.entry((*agent, *addr)).or_default().push(*grant);
                }
            }
        }
    }
    by_key
        .into_iter()
        .map(|((agent, addr), mut grants)| {
            grants.sort_by_key(|g| g.action != net_action::DENY);
            grants.dedup();
            grants.truncate(CA_GRANTS_PER_PREFIX);
            let mut list = CaGrantList {
                count: u32::try_from(grants.len()).unwrap_or(0),
                pad: 0,
                grants: [grants[0]; CA_GRANTS_PER_PREFIX],
            };
            for (slot, grant) in list.grants.iter_mut().zip(&grants) {
                *slot = *grant;
            }
            (agentd_common::LearnedKeyV4 { agent, addr }, list)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_grant(cidr: &str, ports: &str, expire: Option<i64>) -> proto::NetworkGrant {
        proto::NetworkGrant {
            destination: Some(proto::network_grant::Destination::Cidr(cidr.to_owned())),
            ports: ports.to_owned(),
            expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            source: "pkg-1".to_owned(),
        }
    }

    fn raw_set(grants: Vec<proto::NetworkGrant>) -> proto::DecisionSet {
        proto::DecisionSet {
            version: 7,
            issue_time: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            decisions: vec![proto::AgentDecision {
                agent_id: "id".into(),
                agent_name: "coder".into(),
                action: proto::Action::Allow as i32,
                network_restricted: true,
                network_grants: grants,
                network_denials: vec![raw_grant("10.1.0.0/16", "", None)],
                offline_behavior: proto::OfflineBehavior::FailClosed as i32,
                offline_ttl_seconds: 60,
                ..proto::AgentDecision::default()
            }],
        }
    }

    #[test]
    fn a_set_becomes_kernel_lists_with_denials_first_and_boot_clock_expiries() {
        let set = DecisionSet::from_proto(&raw_set(vec![
            raw_grant("10.0.0.0/8", "443", Some(1_060)),
            raw_grant("192.0.2.1", "", None),
        ]))
        .unwrap();
        assert_eq!(set.version, 7);
        assert_eq!(set.decisions[0].offline, Offline::FailClosed);
        let clocks = Clocks {
            unix_ms: 1_000_000,
            boot_ns: 5_000_000_000,
        };
        let tables = tables(
            &set,
            &mut |_| Some(3),
            &|_| false,
            &mut |_| 9,
            &Categories::sample(),
            clocks,
        )
        .unwrap();
        assert_eq!(
            tables.agents,
            vec![(
                3,
                CaAgent {
                    flags: CaAgent::FLAG_RESTRICTED,
                    rule: 9
                }
            )]
        );
        let (len, key, list) = tables
            .v4
            .iter()
            .find(|(len, _, _)| *len == 16)
            .expect("the denial's prefix");
        assert_eq!((*len, key.addr), (16, [10, 1, 0, 0]));
        // Under 10.1/16: the denial first, then the /8 grant that contains it.
        assert_eq!(list.count, 2);
        assert_eq!(list.grants[0].action, net_action::DENY);
        assert_eq!(list.grants[1].port_lo, 443);
        // Expires 60 s after `clocks`: 60 s later on the boot clock.
        assert_eq!(list.grants[1].expires_ns, 5_000_000_000 + 60_000_000_000);
        let host = tables.v4.iter().find(|(len, _, _)| *len == 32).unwrap();
        assert_eq!(host.2.grants[0].expires_ns, 0, "no expiry");
    }

    #[test]
    fn bad_fields_refuse_the_set_by_name() {
        let err = DecisionSet::from_proto(&raw_set(vec![raw_grant("10.0.0.0/33", "", None)]))
            .unwrap_err();
        assert_eq!(err.field, "decisions[0].network_grants[0].cidr");
        let err = DecisionSet::from_proto(&raw_set(vec![raw_grant("10.0.0.0/8", "70000", None)]))
            .unwrap_err();
        assert_eq!(err.field, "decisions[0].network_grants[0].ports");
        assert_eq!(
            mcp_host("https://mcp.example.com/sse").unwrap(),
            ("mcp.example.com".into(), 443)
        );
        assert_eq!(
            mcp_host("http://127.0.0.1:8931/mcp").unwrap(),
            ("127.0.0.1".into(), 8931)
        );
        assert!(mcp_host("mcp.example.com").is_err());
    }

    #[test]
    fn offline_standing_follows_the_behaviour_after_the_ttl() {
        let mut decision = DecisionSet::from_proto(&raw_set(Vec::new()))
            .unwrap()
            .decisions[0]
            .clone();
        assert_eq!(decision.standing(59_000), Standing::Current);
        assert_eq!(decision.standing(61_000), Standing::FailClosed);
        decision.offline = Offline::Baseline;
        assert_eq!(decision.standing(61_000), Standing::Baseline);
        decision.offline = Offline::KeepLast;
        assert_eq!(decision.standing(i64::MAX), Standing::Current);
        let set = DecisionSet::from_proto(&raw_set(Vec::new())).unwrap();
        let blocked = tables(
            &set,
            &mut |_| Some(1),
            &|_| true,
            &mut |_| 2,
            &Categories::sample(),
            Clocks {
                unix_ms: 0,
                boot_ns: 0,
            },
        )
        .unwrap();
        assert_ne!(blocked.agents[0].1.flags & CaAgent::FLAG_BLOCK, 0);
    }

    #[test]
    fn expired_grants_get_an_instant_in_the_past_never_zero() {
        let clocks = Clocks {
            unix_ms: 10_000,
            boot_ns: 77,
        };
        assert_eq!(clocks.boot_ns(5_000), 1);
        assert_eq!(clocks.boot_ns(10_001), 77 + 1_000_000);
    }
}
