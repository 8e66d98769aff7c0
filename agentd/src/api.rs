//! agentd's local API: two Unix sockets speaking one JSON object per line.
//!
//! - The **admin socket** (root only, mode 0600): `status`, `ps`, `launch`, `apply`,
//!   `quarantine`.
//! - The **identity socket** (everyone, mode 0666): a process sends `whoami` and gets the
//!   identity document of its agent, attested from the kernel tag of the connecting process.
//!
//! `docs/api.md` documents the messages. The types here are the wire format; the daemon
//! answers them.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::identity::{AgentId, attest::Pinning};

/// The default admin socket.
pub const ADMIN_SOCKET: &str = "/run/agentd/admin.sock";
/// The default identity socket.
pub const IDENTITY_SOCKET: &str = "/run/agentd/identity.sock";
/// The SPIFFE Workload API socket (`SPIFFE_ENDPOINT_SOCKET=unix:///run/agentd/spiffe.sock`).
pub const SPIFFE_SOCKET: &str = "/run/agentd/spiffe.sock";
/// The line a process sends on the identity socket.
pub const WHOAMI: &str = "whoami";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    Status,
    Ps,
    /// Prepare a launch of `agent`: answers the cgroup to enter before exec.
    Launch {
        agent: String,
    },
    /// Replace the policy with this TOML document, validated as a whole.
    Apply {
        policy: String,
    },
    /// Quarantine an agent (or release it with `release: true`): its network is denied except
    /// the quarantine allow-list, from its next connect or datagram.
    Quarantine {
        agent: String,
        #[serde(default)]
        release: bool,
    },
    /// The risk engine: an agent's risk and history, admin confirmations and dismissals.
    Risk(RiskRequest),
}

/// `agentd risk ...` (docs/risk.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "risk", rename_all = "snake_case")]
pub enum RiskRequest {
    /// The agent's level, detections and transitions.
    Show { agent: String },
    /// An admin confirms the agent compromised (`compromised: true`, risk high) or safe.
    Confirm { agent: String, compromised: bool },
    /// An admin dismisses one detection.
    Dismiss { detection: u64 },
}

/// Every answer: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T: Serialize> Reply<T> {
    /// The reply as one JSON line, without the newline.
    #[must_use]
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| {
            serde_json::json!({"ok": false, "error": format!("encoding the answer: {err}")})
                .to_string()
        })
    }
}

impl<T> Reply<T> {
    pub fn ok(result: T) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "used as a function value on error types: `map_or_else(Reply::err, Reply::ok)`"
    )]
    pub fn err(error: impl ToString) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(error.to_string()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentRef {
    pub id: AgentId,
    pub name: String,
}

/// How a process got its tag, as reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagInfo {
    /// `launch`, `cgroup` or `discovery`.
    pub source: String,
    /// Inherited from its parent at fork rather than tagged itself.
    pub inherited: bool,
    /// The discovery rule, for `discovery`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub agent: AgentRef,
    pub tag: TagInfo,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub command: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchTarget {
    pub agent: AgentRef,
    /// The cgroup directory to enter before exec.
    pub cgroup: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub agents: usize,
    pub rules: usize,
    /// The network policy version now in force; connection events carry it.
    pub network_version: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantined {
    pub agent: String,
    pub quarantined: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub agents: usize,
    pub rules: usize,
    pub tagged_processes: usize,
    /// Tags the kernel could not record because its map was full.
    pub tags_lost: u64,
    /// New processes of agents at their process cap: created and tagged (no BPF LSM), and
    /// refused with `EAGAIN` (BPF LSM).
    #[serde(default)]
    pub tags_over_cap: u64,
    #[serde(default)]
    pub forks_refused_over_cap: u64,
    /// `available`, or why not.
    pub file_enforcement: String,
    /// The control plane and the Conditional Access decisions in force, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneStatus>,
    /// How file access is seen: `lsm` (decided in BPF LSM hooks, with any missing hook named),
    /// or `tracepoints` (observed after the fact, never denied).
    pub file_monitoring: String,
    /// The network policy version in force.
    pub network_version: u32,
    /// Agents whose network is quarantined.
    pub quarantined: Vec<String>,
    /// Kernel events delivered to agentd, and lost because the ring buffer was full.
    pub events_delivered: u64,
    pub events_dropped: u64,
    /// Events the kernel programs tried to send; once quiet, delivered + undecodable +
    /// dropped = produced.
    pub events_produced: u64,
    pub events_undecodable: u64,
    pub events_dropped_per_cpu: Vec<u64>,
    /// What protects agentd from the agents it watches (docs/operations.md).
    #[serde(default)]
    pub self_protection: String,
    /// The pinned programs and maps (docs/operations.md), when pinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins: Option<crate::pins::PinStatus>,
    /// `healthy` when every sensor does all it can on this kernel, `degraded` when one could
    /// not attach (each one's reason is in `sensors`).
    #[serde(default)]
    pub health: String,
    /// Each sensor (hook family) and each pseudo file system it needs, with its state.
    #[serde(default)]
    pub sensors: Vec<SensorHealth>,
    /// Event lines and notices the output could not write (a closed stdout, a full disk).
    #[serde(default)]
    pub output_errors: u64,
    /// The SVIDs the Workload API holds for agents (docs/credentials.md).
    #[serde(default)]
    pub svids: SvidStatus,
}

/// The SVIDs agentd holds for agents: what the Workload API would serve now without asking
/// the control plane.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SvidStatus {
    /// X.509-SVIDs held (one per agent), not expired.
    pub x509_svids: u64,
    /// The earliest expiry among them (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_next_expiry: Option<i64>,
    /// JWT-SVIDs held (by agent and audiences), not expired.
    pub jwt_svids: u64,
}

/// One sensor's state in `agentd status` and the health endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SensorHealth {
    /// `process`, `network`, `files`, `self_protection`, `dns`, or a pseudo file system
    /// (`securityfs`, `tracefs`, `bpf`).
    pub name: String,
    /// `active`; `limited` (doing all this kernel allows, e.g. observing files without BPF
    /// LSM); `unavailable` (could not attach: nothing of it runs); `disabled` (by configuration).
    pub state: String,
    /// What it does or why not, in words for the operator.
    pub detail: String,
}

impl SensorHealth {
    pub fn new(name: &str, state: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            state: state.to_owned(),
            detail: detail.into(),
        }
    }

    /// Whether this sensor is not doing what it could.
    pub fn degraded(&self) -> bool {
        self.state == "unavailable"
    }
}

/// `agentd status`'s view of the control plane.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlPlaneStatus {
    /// The decision stream is open.
    pub connected: bool,
    /// Why it is not, when it is not.
    pub error: Option<String>,
    /// The decision set in force (0: none yet).
    pub decision_version: u64,
    /// Seconds since the control plane issued it.
    pub decision_age_secs: Option<i64>,
    /// Seconds since the control plane last confirmed it current; offline behaviours count from
    /// here.
    pub confirmed_age_secs: Option<i64>,
    /// Agents the decisions block (by decision, or offline fail-closed).
    pub blocked_agents: Vec<String>,
    /// When the host's mTLS client certificate in use expires (Unix seconds); agentd renews
    /// it at half-life. `None` over plain http or before the first connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_certificate_expires_at: Option<i64>,
}

/// The identity document the identity socket returns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityDocument {
    pub pid: u32,
    pub agent: AgentRef,
    pub tag: TagInfo,
    /// How the caller was identified: always from the kernel tag of the pinned peer.
    pub attestation: Pinning,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path} (is agentd running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to agentd")]
    Io(#[from] std::io::Error),
    #[error("agentd sent an answer that does not parse")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

fn exchange<T: DeserializeOwned>(socket: &Path, line: &str) -> Result<T, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let reply: Reply<T> = serde_json::from_str(&answer)?;
    match (reply.ok, reply.result) {
        (true, Some(result)) => Ok(result),
        _ => Err(ClientError::Refused(
            reply.error.unwrap_or_else(|| "no answer".to_owned()),
        )),
    }
}

/// Sends one admin request and returns the result.
pub fn admin<T: DeserializeOwned>(socket: &Path, request: &AdminRequest) -> Result<T, ClientError> {
    exchange(socket, &serde_json::to_string(request)?)
}

/// Asks the identity socket who the calling process is.
pub fn whoami(socket: &Path) -> Result<IdentityDocument, ClientError> {
    exchange(socket, WHOAMI)
}
