//! The risk engine's input: what an agent did, decoupled from the kernel's record layout.
//!
//! The daemon turns each decoded kernel event (and each threat-intel or egress-volume report)
//! into an [`Observation`]. Times are `CLOCK_BOOTTIME` nanoseconds, as the kernel stamps its
//! events, so that the engine never reads a clock of its own.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::AgentId;

/// One thing an agent did, at one time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub agent: AgentId,
    /// `CLOCK_BOOTTIME` nanoseconds when it happened (the kernel event's `ktime_ns`).
    pub ktime_ns: u64,
    #[serde(flatten)]
    pub kind: ObservationKind,
}

/// What the agent did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObservationKind {
    /// A `connect(2)` or datagram send, and the kernel's verdict.
    Connect(ConnectAttempt),
    /// An open of a file that a rule names (or that the daemon knows to be sensitive).
    File(FileAccess),
    /// A completed exec.
    Exec(ExecInfo),
    /// Bytes the agent sent, as counted since the previous report (for example by a
    /// `cgroup_skb` egress counter read periodically).
    Egress { bytes: u64 },
    /// The agent touched an indicator that a threat-intel feed lists.
    ThreatIntel(ThreatIntelHit),
}

/// Allowed or denied by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectAttempt {
    pub address: IpAddr,
    pub port: u16,
    /// The name the address was learned from, when a DNS answer gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub verdict: Verdict,
    /// The deciding rule's name, if a rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// What an open asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Exec,
}

impl Access {
    /// The access reads the file's content.
    pub fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAccess {
    /// The kernel-resolved path, when the daemon knows it (a rule's path, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file by kernel object: the super block's `dev_t` and the inode number.
    pub dev: u32,
    pub ino: u64,
    pub access: Access,
    pub verdict: Verdict,
    /// The deciding file rule's name, if a rule decided (a "file-rule hit").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The file holds secrets (credentials, keys, tokens), as the policy marks it.
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInfo {
    /// The file name the kernel exec'd (`bprm->filename`).
    pub filename: String,
    /// The executed file by kernel object; `0, 0` when unknown (then the name identifies it).
    pub dev: u32,
    pub ino: u64,
    /// The task's `comm` after the exec.
    pub comm: String,
}

impl ExecInfo {
    /// The last component of the exec'd file name, or `comm` when the name is empty.
    pub fn program(&self) -> &str {
        let name = self.filename.rsplit('/').next().unwrap_or_default();
        if name.is_empty() { &self.comm } else { name }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreatIntelHit {
    /// What matched: an address, a CIDR, a domain or a file hash.
    pub indicator: String,
    /// Which feed or blocklist listed it.
    pub source: String,
}
