//! The pure table compiler: a decision set, the agents' numbers and the clocks in, the kernel's
//! Conditional Access entries out (`CA_AGENTS`, the grant prefixes, file controls), and the join
//! of file controls with the local file rules.

use std::{collections::BTreeMap, net::IpAddr};

use agentd_common::{
    CA_GRANTS_PER_PREFIX, CaAgent, CaFileControl, CaGrant, CaGrantList, CaKeyV4, CaKeyV6, FileRule,
    FileRuleKey, InodeKey, net_action,
};

use super::model::{
    Action, AgentDecision, Clocks, DecisionError, DecisionSet, Destination, Grant, error, mcp_host,
};
use crate::policy::network::{Categories, DomainPattern, Prefix};

/// The kernel's Conditional Access tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaTables {
    pub agents: Vec<(u32, CaAgent)>,
    pub v4: Vec<(u8, CaKeyV4, CaGrantList)>,
    pub v6: Vec<(u8, CaKeyV6, CaGrantList)>,
    /// Per agent, the domain patterns of its grants and denials, for addresses learned from DNS.
    pub domains: Vec<(u32, DomainPattern, CaGrant)>,
    /// The file controls, by agent and kernel object: one slot per access (read, write, exec).
    /// [`merge_file_rules`] puts them into the local rules' entries.
    pub files: Vec<(FileRuleKey, [CaFileControl; 3])>,
    /// File controls whose path does not exist on this host (`agent: path`): nothing to protect
    /// until the decisions are applied again.
    pub missing_paths: Vec<String>,
}

/// One entry before layout.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    prefix: Prefix,
    grant: CaGrant,
}

pub(super) fn kernel_grant(
    grant: &Grant,
    deny: bool,
    flags: u8,
    rule: u32,
    clocks: Clocks,
) -> CaGrant {
    CaGrant {
        port_lo: grant.ports.0,
        port_hi: grant.ports.1,
        action: if deny {
            net_action::DENY
        } else {
            net_action::ALLOW
        },
        flags,
        pad: [0; 2],
        rule,
        pad2: 0,
        expires_ns: grant.expires_unix_ms.map_or(0, |ms| clocks.boot_ns(ms)),
    }
}

/// Lists per prefix: each prefix's own entries and those of every prefix containing it,
/// denials first, longer prefixes first. Refuses a layout that needs more than
/// `CA_GRANTS_PER_PREFIX` entries under one prefix.
pub(super) fn layout(
    entries: &[Entry],
    agent: &str,
) -> Result<Vec<(Prefix, CaGrantList)>, DecisionError> {
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
                flags: 0,
                pad: [0; 2],
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
/// (offline fail-closed), `rule_of` maps a source to a rule number, and `resolve` finds the
/// kernel object behind a file control's path.
pub fn tables(
    set: &DecisionSet,
    index_of: &mut dyn FnMut(&AgentDecision) -> Option<u32>,
    blocked: &dyn Fn(&AgentDecision) -> bool,
    rule_of: &mut dyn FnMut(&str) -> u32,
    resolve: &dyn Fn(&str) -> std::io::Result<InodeKey>,
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
        let mut layers = vec![(0, &decision.denials, &decision.grants)];
        if let Some(would) = &decision.report_only_network {
            flags |= CaAgent::FLAG_REPORT_ONLY;
            if would.restricted {
                flags |= CaAgent::FLAG_REPORT_ONLY_RESTRICTED;
            }
            layers.push((CaGrant::FLAG_REPORT_ONLY, &would.denials, &would.grants));
        }
        if matches!(
            decision.report_only_action,
            Some(Action::Block | Action::Quarantine)
        ) {
            flags |= CaAgent::FLAG_REPORT_ONLY | CaAgent::FLAG_REPORT_ONLY_BLOCK;
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (layer, denials, grants) in layers {
            for (deny, grant) in denials
                .iter()
                .map(|g| (true, g))
                .chain(grants.iter().map(|g| (false, g)))
            {
                let rule = rule_of(&format!("conditional-access/{}", grant.source));
                place(
                    grant,
                    kernel_grant(grant, deny, layer, rule, clocks),
                    agent,
                    &decision.agent_name,
                    categories,
                    &mut entries,
                    &mut tables.domains,
                )?;
            }
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
        file_controls(decision, agent, rule_of, resolve, clocks, &mut tables);
        if tables.files.iter().any(|(key, _)| key.agent == agent) {
            flags |= CaAgent::FLAG_FILE_CONTROLS;
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

/// Files `decision`'s file controls for kernel agent `agent` into `tables.files`, one slot per
/// access; paths that do not resolve go to `tables.missing_paths`.
pub(super) fn file_controls(
    decision: &AgentDecision,
    agent: u32,
    rule_of: &mut dyn FnMut(&str) -> u32,
    resolve: &dyn Fn(&str) -> std::io::Result<InodeKey>,
    clocks: Clocks,
    tables: &mut CaTables,
) {
    for control in &decision.file_controls {
        let inode = match resolve(&control.path) {
            Ok(inode) => inode,
            Err(err) => {
                tables
                    .missing_paths
                    .push(format!("{}: {} ({err})", decision.agent_name, control.path));
                continue;
            }
        };
        let key = FileRuleKey {
            agent,
            pad: 0,
            inode,
        };
        let slot = CaFileControl {
            present: 1,
            action: if control.action == "deny" {
                net_action::DENY
            } else {
                net_action::ALLOW
            },
            pad: 0,
            rule: rule_of(&format!("conditional-access/{}", control.source)),
            expires_ns: control.expires_unix_ms.map_or(0, |ms| clocks.boot_ns(ms)),
        };
        let at = if let Some(at) = tables.files.iter().position(|(k, _)| *k == key) {
            at
        } else {
            tables.files.push((key, [CaFileControl::NONE; 3]));
            tables.files.len() - 1
        };
        let slots = &mut tables.files[at].1;
        for (i, current) in slots.iter_mut().enumerate() {
            if control.bits() & (1 << i) != 0 {
                *current = stronger(*current, slot);
            }
        }
    }
}

/// Of two file controls on the same object and access, the one the kernel keeps: a deny beats
/// an allow (also once the deny lapses: the allow is gone), and of two alike the one that lasts
/// longer.
pub(super) fn stronger(a: CaFileControl, b: CaFileControl) -> CaFileControl {
    if a.present == 0 {
        return b;
    }
    if b.present == 0 {
        return a;
    }
    if a.action != b.action {
        return if a.action == net_action::DENY { a } else { b };
    }
    let lasts = |c: &CaFileControl| {
        if c.expires_ns == 0 {
            u64::MAX
        } else {
            c.expires_ns
        }
    };
    if lasts(&b) > lasts(&a) { b } else { a }
}

/// The kernel's file rule entries: the local rules `local` with the decisions' file controls
/// `controls` joined in. An object both name gets one entry with both layers; the hooks judge
/// the local rule and the controls separately, and deny wins.
#[must_use]
pub fn merge_file_rules(
    local: &[(FileRuleKey, FileRule)],
    controls: &[(FileRuleKey, [CaFileControl; 3])],
) -> Vec<(FileRuleKey, FileRule)> {
    let mut merged = local.to_vec();
    let at: std::collections::HashMap<FileRuleKey, usize> = merged
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (*key, i))
        .collect();
    for (key, slots) in controls {
        if let Some(&i) = at.get(key) {
            merged[i].1.decision = *slots;
        } else {
            let mut rule = FileRule::local(0, net_action::ALLOW, false, 0);
            rule.decision = *slots;
            merged.push((*key, rule));
        }
    }
    merged
}

/// Files one grant or denial: prefixes into `entries`, names into `domains`.
pub(super) fn place(
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
