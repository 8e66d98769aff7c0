//! Conditional Access: policy documents (YAML, validated into [`PolicyDocument`]) and the pure
//! evaluator that turns policies, an agent's facts and its access packages into one
//! [`Decision`]. Neither knows protobuf nor the database. docs/conditional-access.md describes the
//! document and the semantics.

mod controls;
pub mod document;
mod document_fields;
pub mod evaluate;
pub mod host_ref;
mod libyaml;
pub mod selection;
pub mod yaml_limits;

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

pub use self::{
    document::{PolicyDocument, parse_document, parse_stored_document},
    host_ref::HostRef,
};
pub use crate::model::{PolicyState, RiskLevel};
use crate::{clock::UnixTime, model::OfflineBehavior};

/// The name of the managed baseline policy created at start-up.
pub const BASELINE_POLICY_NAME: &str = "block-high-risk-agents";

/// The managed baseline: report-only until an administrator enables it.
pub const BASELINE_POLICY_YAML: &str = "\
name: block-high-risk-agents
description: Managed baseline. Blocks agents whose aggregated risk is high (detections on any host, or confirmed compromised). Starts in report-only; enable it with `agentctl policy set-state block-high-risk-agents enabled`.
state: reportOnly
assignments:
  include:
    all: true
conditions:
  riskLevels: [high]
controls:
  block: true
";

/// What a decision tells the host to do with an agent, ordered by strength: deny wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Block,
    Quarantine,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Quarantine => "quarantine",
        }
    }
}

/// A network destination of a grant or a denial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Cidr(Cidr),
    /// Lower case; `*.example.com` matches subdomains only.
    Domain(String),
    Category(String),
    McpServer(String),
}

impl Destination {
    /// True when every connection `other` allows is also one this allows (same kind only:
    /// a domain and a CIDR are never compared).
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Cidr(a), Self::Cidr(b)) => a.contains(b),
            (Self::Domain(a), Self::Domain(b)) => {
                a == b
                    || a.strip_prefix("*.").is_some_and(|suffix| {
                        let bare = b.strip_prefix("*.").unwrap_or(b);
                        bare.len() > suffix.len()
                            && bare.ends_with(suffix)
                            && bare.as_bytes()[bare.len() - suffix.len() - 1] == b'.'
                    })
            }
            (Self::Category(a), Self::Category(b)) | (Self::McpServer(a), Self::McpServer(b)) => {
                a == b
            }
            _ => false,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(cidr) => write!(f, "cidr {cidr}"),
            Self::Domain(domain) => write!(f, "domain {domain}"),
            Self::Category(category) => write!(f, "category {category}"),
            Self::McpServer(url) => write!(f, "MCP server {url}"),
        }
    }
}

/// An IPv4 or IPv6 network; the address is stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address (a /32 or /128).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        Some(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, other: &Self) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && mask(other.addr, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(_) if prefix == 0 => IpAddr::V4(0.into()),
        IpAddr::V4(v4) => {
            IpAddr::V4((u32::from(v4) & (u32::MAX << (32 - u32::from(prefix)))).into())
        }
        IpAddr::V6(_) if prefix == 0 => IpAddr::V6(0.into()),
        IpAddr::V6(v6) => {
            IpAddr::V6((u128::from(v6) & (u128::MAX << (128 - u32::from(prefix)))).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive port range; `None` in a grant means any port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    /// `"443"` or `"8000-8100"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let first: u16 = first.trim().parse().ok().filter(|&p| p > 0)?;
        let last: u16 = last.trim().parse().ok().filter(|&p| p > 0)?;
        (first <= last).then_some(Self { first, last })
    }

    /// The ports both allow; `None` (any) is the identity.
    pub fn intersect(a: Option<Self>, b: Option<Self>) -> Option<Option<Self>> {
        match (a, b) {
            (None, other) | (other, None) => Some(other),
            (Some(a), Some(b)) => {
                let first = a.first.max(b.first);
                let last = a.last.min(b.last);
                (first <= last).then_some(Some(Self { first, last }))
            }
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A destination an agent may (in an allow-list) or may not (in a denial list) reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkGrant {
    pub destination: Destination,
    /// `None`: any port.
    pub ports: Option<Ports>,
    /// `None`: no expiry.
    pub expires_at: Option<UnixTime>,
    /// The policy id or access-package id it comes from.
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    Read,
    Write,
    Exec,
}

impl FileAccess {
    pub const ALL: &[Self] = &[Self::Read, Self::Write, Self::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Exec => "exec",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Allow,
    Deny,
}

impl FileAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileControl {
    pub path: String,
    pub access: Vec<FileAccess>,
    pub action: FileAction,
    pub expires_at: Option<UnixTime>,
    pub source: String,
}

/// The network part of a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkVerdict {
    /// True: only `grants` are reachable (default deny).
    pub restricted: bool,
    pub grants: Vec<NetworkGrant>,
    /// Never reachable, whatever the grants say.
    pub denials: Vec<NetworkGrant>,
}

/// The effective decision for one agent (on one host, at one time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub agent_id: String,
    pub agent_name: String,
    pub action: Action,
    pub network: NetworkVerdict,
    pub files: Vec<FileControl>,
    /// Shared with the [`evaluate::PolicySet`] they come from (as are most reasons): a
    /// decision copies no string for them.
    pub policy_ids: Vec<Arc<str>>,
    pub report_only_policy_ids: Vec<Arc<str>>,
    /// `None` when no report-only policy applies.
    pub report_only_action: Option<Action>,
    /// What the network would be with the report-only policies enabled; `None` when no
    /// applying report-only policy has network controls.
    pub report_only_network: Option<NetworkVerdict>,
    pub offline_behavior: OfflineBehavior,
    pub offline_ttl_seconds: u32,
    pub risk: RiskLevel,
    pub reasons: Vec<Arc<str>>,
}

/// One policy's verdict for one agent, for what-if.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub policy_id: String,
    pub policy_name: String,
    pub state: PolicyState,
    pub applies: bool,
    pub reasons: Vec<String>,
}

/// A stored policy with its current state, as the evaluator sees it.
#[derive(Clone, Debug)]
pub struct ActivePolicy {
    pub id: String,
    pub state: PolicyState,
    pub document: PolicyDocument,
}

/// Attribute filter values: one of these values matches.
pub type AttributeFilter = BTreeMap<String, Vec<String>>;
