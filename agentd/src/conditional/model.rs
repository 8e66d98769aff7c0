//! The decision model: what a decision set says about each agent, its offline standing, and
//! the clocks that turn its expiries into kernel instants.

use agentd_common::file_access;
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self, at: &str) -> Result<(), DecisionError> {
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
    pub(super) fn bits(&self) -> u32 {
        self.access
            .iter()
            .filter_map(|access| access_bit(access))
            .fold(0, |bits, bit| bits | bit)
    }
}

pub(super) fn access_bit(name: &str) -> Option<u32> {
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

/// Clock readings to turn wall-clock expiries into the kernel's `CLOCK_BOOTTIME`.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub unix_ms: i64,
    pub boot_ns: u64,
}

impl Clocks {
    /// The boot-clock instant of a Unix-millisecond time; 1 ns (already past) for times before
    /// now, never 0 (which means "no expiry").
    pub(super) fn boot_ns(self, unix_ms: i64) -> u64 {
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

pub(super) fn error(field: String, reason: impl Into<String>) -> DecisionError {
    DecisionError {
        field,
        reason: reason.into(),
    }
}

/// The host and port of an MCP server's URL (`https://mcp.example.com/sse` → name, 443).
pub(super) fn mcp_host(url: &str) -> Result<(String, u16), String> {
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
