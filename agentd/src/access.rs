//! Conditional Access on the host: the decisions the control plane streams (docs/conditional-access.md),
//! as agentd keeps them on disk and turns them into kernel tables.
//!
//! A decision never widens what the local policy allows: the network hooks apply it after the
//! local verdict, so deny wins. Grants carry their expiry into the kernel, which checks it on
//! every connect: a lapsed grant stops allowing even when agentd and the control plane are down.
//! File controls join the agents' local file rules in the same kernel entries, as a second layer
//! the file hooks judge after the local rule (deny wins), with their expiry checked on the hook.
//! What report-only policies would do to the network is a second layer of grant entries, flagged
//! report-only: the hooks report what it would deny and allow it.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use agentd_common::{
    CA_GRANTS_PER_PREFIX, CaAgent, CaFileControl, CaGrant, CaGrantList, CaKeyV4, CaKeyV6, FileRule,
    FileRuleKey, InodeKey, file_access, net_action,
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

/// A file control: a file or directory subtree, by path, with the accesses it allows or denies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileControl {
    /// Absolute; a file or a directory subtree.
    pub path: String,
    /// Any of `read`, `write`, `exec`.
    pub access: Vec<String>,
    /// `allow` or `deny`.
    pub action: String,
    pub expires_unix_ms: Option<i64>,
    pub source: String,
}

impl FileControl {
    /// Checks the control; `at` names it (e.g. `decisions[3].file_controls[0]`).
    fn check(&self, at: &str) -> Result<(), DecisionError> {
        if !self.path.starts_with('/') {
            return Err(error(
                format!("{at}.path"),
                format!("{:?} is not an absolute path", self.path),
            ));
        }
        if self.path.contains('\0') {
            return Err(error(format!("{at}.path"), "a path cannot contain NUL"));
        }
        if self.access.is_empty() {
            return Err(error(
                format!("{at}.access"),
                "name at least one of read, write, exec",
            ));
        }
        for (k, access) in self.access.iter().enumerate() {
            if access_bit(access).is_none() {
                return Err(error(
                    format!("{at}.access[{k}]"),
                    format!("unknown access {access:?} (read, write or exec)"),
                ));
            }
        }
        if !matches!(self.action.as_str(), "allow" | "deny") {
            return Err(error(
                format!("{at}.action"),
                format!("unknown action {:?} (allow or deny)", self.action),
            ));
        }
        Ok(())
    }

    /// The `file_access` bits it covers (checked already).
    fn bits(&self) -> u32 {
        self.access
            .iter()
            .filter_map(|access| access_bit(access))
            .fold(0, |bits, bit| bits | bit)
    }
}

fn access_bit(name: &str) -> Option<u32> {
    match name {
        "read" => Some(file_access::READ),
        "write" => Some(file_access::WRITE),
        "exec" => Some(file_access::EXEC),
        _ => None,
    }
}

/// What report-only policies would do to the agent's network: the network it would have with
/// them enabled. Connects this would deny are reported ("would deny") and allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportOnlyNetwork {
    pub restricted: bool,
    pub grants: Vec<Grant>,
    pub denials: Vec<Grant>,
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
    /// What report-only policies would do to the network, when one has network controls.
    #[serde(default)]
    pub report_only_network: Option<ReportOnlyNetwork>,
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
                let control = FileControl {
                    path: f.path.clone(),
                    access: f.access.clone(),
                    action: f.action.clone(),
                    expires_unix_ms: unix_ms(f.expire_time.as_ref()),
                    source: f.source.clone(),
                };
                control.check(&format!("{at}.file_controls[{j}]"))?;
                file_controls.push(control);
            }
            let report_only_grants = d
                .report_only_network_grants
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.report_only_network_grants[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let report_only_denials = d
                .report_only_network_denials
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.report_only_network_denials[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let report_only_network = (d.report_only_network_restricted
                || !report_only_grants.is_empty()
                || !report_only_denials.is_empty())
            .then_some(ReportOnlyNetwork {
                restricted: d.report_only_network_restricted,
                grants: report_only_grants,
                denials: report_only_denials,
            });
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
                report_only_network,
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
    /// The file controls, by agent and kernel object: one slot per access (read, write, exec).
    /// [`merge_file_rules`] puts them into the local rules' entries.
    pub files: Vec<(FileRuleKey, [CaFileControl; 3])>,
    /// File controls whose path does not exist on this host (`agent: path`): nothing to protect
    /// until the decisions are applied again.
    pub missing_paths: Vec<String>,
}

/// One entry before layout.
#[derive(Clone, Copy, Debug)]
struct Entry {
    prefix: Prefix,
    grant: CaGrant,
}

fn kernel_grant(grant: &Grant, deny: bool, flags: u8, rule: u32, clocks: Clocks) -> CaGrant {
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
fn file_controls(
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
fn stronger(a: CaFileControl, b: CaFileControl) -> CaFileControl {
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
            &|_| Err(std::io::ErrorKind::NotFound.into()),
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
            &|_| Err(std::io::ErrorKind::NotFound.into()),
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

    fn raw_file(
        path: &str,
        access: &[&str],
        action: &str,
        expire: Option<i64>,
    ) -> proto::FileControl {
        proto::FileControl {
            path: path.to_owned(),
            access: access.iter().map(|a| (*a).to_owned()).collect(),
            action: action.to_owned(),
            expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            source: format!("{action}-{path}"),
        }
    }

    fn with_files(files: Vec<proto::FileControl>) -> proto::DecisionSet {
        let mut raw = raw_set(Vec::new());
        raw.decisions[0].file_controls = files;
        raw
    }

    #[test]
    fn bad_file_controls_refuse_the_set_by_field() {
        let cases = [
            (
                raw_file("srv/ledger", &["read"], "deny", None),
                "decisions[0].file_controls[1].path",
            ),
            (
                raw_file("/srv", &[], "deny", None),
                "decisions[0].file_controls[1].access",
            ),
            (
                raw_file("/srv", &["read", "delete"], "deny", None),
                "decisions[0].file_controls[1].access[1]",
            ),
            (
                raw_file("/srv", &["read"], "block", None),
                "decisions[0].file_controls[1].action",
            ),
        ];
        for (bad, field) in cases {
            let good = raw_file("/srv", &["write"], "deny", None);
            let err = DecisionSet::from_proto(&with_files(vec![good, bad])).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let set = DecisionSet::from_proto(&with_files(vec![raw_file(
            "/srv",
            &["read", "exec"],
            "allow",
            Some(2_000),
        )]))
        .unwrap();
        assert_eq!(
            set.decisions[0].file_controls[0].expires_unix_ms,
            Some(2_000_000)
        );
    }

    fn inode(ino: u64) -> InodeKey {
        InodeKey::new(8, 1, ino)
    }

    #[test]
    fn file_controls_merge_per_access_and_join_the_local_rules() {
        let set = DecisionSet::from_proto(&with_files(vec![
            // An access package's allow, which expires, and a policy's deny of writes on the
            // same directory: the deny wins for writes, the allow stays for reads.
            raw_file("/srv/ledger", &["read", "write"], "allow", Some(1_060)),
            raw_file("/srv/ledger", &["write"], "deny", None),
            raw_file("/srv/keys", &["read"], "deny", Some(1_030)),
            raw_file("/nowhere", &["read"], "deny", None),
        ]))
        .unwrap();
        let clocks = Clocks {
            unix_ms: 1_000_000,
            boot_ns: 5_000_000_000,
        };
        let resolve = |path: &str| match path {
            "/srv/ledger" => Ok(inode(10)),
            "/srv/keys" => Ok(inode(11)),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        };
        let tables = tables(
            &set,
            &mut |_| Some(3),
            &|_| false,
            &mut |source| if source.contains("deny") { 7 } else { 8 },
            &resolve,
            &Categories::sample(),
            clocks,
        )
        .unwrap();
        assert_ne!(tables.agents[0].1.flags & CaAgent::FLAG_FILE_CONTROLS, 0);
        assert_eq!(tables.missing_paths.len(), 1, "{:?}", tables.missing_paths);
        assert!(tables.missing_paths[0].contains("/nowhere"));
        let ledger = tables
            .files
            .iter()
            .find(|(key, _)| key.inode == inode(10))
            .unwrap();
        assert_eq!(ledger.0.agent, 3);
        let [read, write, exec] = ledger.1;
        assert_eq!(
            (read.present, read.action, read.rule),
            (1, net_action::ALLOW, 8)
        );
        assert_eq!(read.expires_ns, 5_000_000_000 + 60_000_000_000);
        assert_eq!(
            (write.present, write.action, write.rule),
            (1, net_action::DENY, 7)
        );
        assert_eq!(write.expires_ns, 0, "the deny does not expire");
        assert_eq!(exec.present, 0);
        let keys = tables
            .files
            .iter()
            .find(|(key, _)| key.inode == inode(11))
            .unwrap();
        assert_eq!(keys.1[0].expires_ns, 5_000_000_000 + 30_000_000_000);

        // The local rules: one on the same directory (audit deny of exec), one elsewhere.
        let local_key = |ino| FileRuleKey {
            agent: 3,
            pad: 0,
            inode: inode(ino),
        };
        let local = vec![
            (
                local_key(10),
                FileRule::local(file_access::EXEC, net_action::DENY, true, 1),
            ),
            (
                local_key(12),
                FileRule::local(file_access::READ, net_action::DENY, false, 2),
            ),
        ];
        let merged = merge_file_rules(&local, &tables.files);
        assert_eq!(merged.len(), 3);
        let entry = |ino| merged.iter().find(|(k, _)| *k == local_key(ino)).unwrap().1;
        // The local rule is kept as it was, with the decision beside it.
        assert_eq!(
            (entry(10).access, entry(10).audit, entry(10).rule),
            (file_access::EXEC, 1, 1)
        );
        assert_eq!(entry(10).decision, ledger.1);
        assert_eq!(entry(12), local[1].1);
        // An object only the decision names: no local rule (covers nothing), the controls.
        assert_eq!(entry(11).access, 0);
        assert_eq!(entry(11).decision[0].action, net_action::DENY);
        // Without decisions, the local rules alone.
        assert_eq!(merge_file_rules(&local, &[]), local);
    }

    #[test]
    fn report_only_network_is_a_second_flagged_layer() {
        let mut raw = raw_set(vec![raw_grant("10.0.0.0/8", "", None)]);
        raw.decisions[0].report_only_network_restricted = true;
        raw.decisions[0].report_only_network_grants = vec![raw_grant("10.0.0.0/8", "443", None)];
        raw.decisions[0].report_only_network_denials = vec![raw_grant("10.9.0.0/16", "", None)];
        let set = DecisionSet::from_proto(&raw).unwrap();
        let would = set.decisions[0].report_only_network.as_ref().unwrap();
        assert!(would.restricted);
        let clocks = Clocks {
            unix_ms: 0,
            boot_ns: 0,
        };
        let built = tables(
            &set,
            &mut |_| Some(1),
            &|_| false,
            &mut |_| 2,
            &|_| Err(std::io::ErrorKind::NotFound.into()),
            &Categories::sample(),
            clocks,
        )
        .unwrap();
        let flags = built.agents[0].1.flags;
        assert_ne!(flags & CaAgent::FLAG_REPORT_ONLY, 0);
        assert_ne!(flags & CaAgent::FLAG_REPORT_ONLY_RESTRICTED, 0);
        assert_eq!(flags & CaAgent::FLAG_REPORT_ONLY_BLOCK, 0);
        let (_, _, list) = built
            .v4
            .iter()
            .find(|(len, key, _)| *len == 16 && key.addr == [10, 9, 0, 0])
            .unwrap();
        let entries: Vec<(u8, u8, u16)> = list.grants[..list.count as usize]
            .iter()
            .map(|g| (g.flags, g.action, g.port_lo))
            .collect();
        // The enforced denial of 10.1/16 is not under 10.9/16; the report-only denial comes
        // first, then the /8 grants of both layers.
        assert!(
            entries.contains(&(CaGrant::FLAG_REPORT_ONLY, net_action::DENY, 0)),
            "{entries:?}"
        );
        assert!(
            entries.contains(&(CaGrant::FLAG_REPORT_ONLY, net_action::ALLOW, 443)),
            "{entries:?}"
        );
        assert!(entries.contains(&(0, net_action::ALLOW, 0)), "{entries:?}");
        assert_eq!(entries[0].1, net_action::DENY);

        // Without report-only network controls: no second layer.
        let plain = DecisionSet::from_proto(&raw_set(Vec::new())).unwrap();
        assert_eq!(plain.decisions[0].report_only_network, None);
        // A report-only block: every connect would be denied.
        let mut raw = raw_set(Vec::new());
        raw.decisions[0].report_only_action = proto::Action::Block as i32;
        let set = DecisionSet::from_proto(&raw).unwrap();
        let built = tables(
            &set,
            &mut |_| Some(1),
            &|_| false,
            &mut |_| 2,
            &|_| Err(std::io::ErrorKind::NotFound.into()),
            &Categories::sample(),
            clocks,
        )
        .unwrap();
        assert_ne!(built.agents[0].1.flags & CaAgent::FLAG_REPORT_ONLY_BLOCK, 0);
    }
}
