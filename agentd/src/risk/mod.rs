//! The risk engine: turns what agents do ([`Observation`]s) into named [`Detection`]s, a
//! [`RiskLevel`] per agent, and the [`Remediation`]s the daemon carries out.
//!
//! The engine is pure and deterministic. It never reads a clock: every call carries the time,
//! `CLOCK_BOOTTIME` nanoseconds as the kernel stamps its events, so the same stream always gives
//! the same detections and transitions. It does no I/O and touches no kernel map; the daemon
//! feeds it, and carries out what it returns (see [`Outcome`]).
//!
//! docs/risk.md documents each detection, the aggregation into a level, decay, the admin
//! actions and remediation.
//!
//! **Architecture Invariant:** the risk engine knows no kernel types; `events` converts kernel
//! events into [`Observation`]s, and the daemon alone acts on [`Remediation`]s.

mod baseline;
mod config;
mod engine;
mod memory;
mod observation;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use self::{
    baseline::Baseline,
    config::{
        DEFAULT_INTERPRETERS, DecayConfig, DeniedBurstConfig, EgressSpikeConfig, EscalationConfig,
        MAX_BURST_COUNT, MAX_INTERPRETERS, NewBinaryConfig, RemediationConfig, RiskConfig,
        RiskConfigError, SecretReadThenEgressConfig, ThreatIntelHitConfig,
        UnexpectedInterpreterConfig, UnfamiliarDestinationConfig,
    },
    engine::RiskEngine,
    observation::{
        Access, ConnectAttempt, ExecInfo, FileAccess, Observation, ObservationKind, ThreatIntelHit,
        Verdict,
    },
};
use crate::identity::AgentId;

/// How bad one detection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

/// An agent's risk.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    #[default]
    None,
    Low,
    Medium,
    High,
}

impl From<Severity> for RiskLevel {
    fn from(severity: Severity) -> Self {
        match severity {
            Severity::Low => Self::Low,
            Severity::Medium => Self::Medium,
            Severity::High => Self::High,
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        })
    }
}

/// The detection rules, by their documented names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    UnfamiliarDestination,
    DeniedBurst,
    SecretReadThenEgress,
    NewBinary,
    UnexpectedInterpreter,
    ThreatIntelHit,
    EgressSpike,
}

impl Rule {
    pub const ALL: [Self; 7] = [
        Self::UnfamiliarDestination,
        Self::DeniedBurst,
        Self::SecretReadThenEgress,
        Self::NewBinary,
        Self::UnexpectedInterpreter,
        Self::ThreatIntelHit,
        Self::EgressSpike,
    ];

    /// The name in configuration, docs and output.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnfamiliarDestination => "unfamiliar_destination",
            Self::DeniedBurst => "denied_burst",
            Self::SecretReadThenEgress => "secret_read_then_egress",
            Self::NewBinary => "new_binary",
            Self::UnexpectedInterpreter => "unexpected_interpreter",
            Self::ThreatIntelHit => "threat_intel_hit",
            Self::EgressSpike => "egress_spike",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A detection's id: unique within the engine, increasing in the order detections are raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DetectionId(pub u64);

impl fmt::Display for DetectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One rule firing for one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    pub id: DetectionId,
    pub agent: AgentId,
    pub rule: Rule,
    pub severity: Severity,
    /// When it was raised (the triggering observation's time).
    pub ktime_ns: u64,
    /// One line for people.
    pub summary: String,
    /// The observations that made it, in time order.
    pub evidence: Vec<Observation>,
}

/// Where a detection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionState {
    /// It counts towards the agent's risk.
    Active,
    /// An admin dismissed it, alone or by confirming the agent safe.
    Dismissed,
    /// Its decay time passed.
    Decayed,
}

/// A detection in an agent's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionRecord {
    pub detection: Detection,
    pub state: DetectionState,
    /// The last time its condition occurred: the raise, or a repeat while active. Decay counts
    /// from here.
    pub last_ns: u64,
    /// How many times the condition recurred while the detection was active (and so raised no
    /// new detection).
    pub repeats: u64,
    /// When it stopped being active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ns: Option<u64>,
}

/// Why an agent's risk level changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A new detection was raised.
    Detection { id: DetectionId },
    /// Detections decayed.
    Decay { ids: Vec<DetectionId> },
    /// An admin dismissed a detection.
    Dismissed { id: DetectionId },
    /// An admin confirmed the agent compromised.
    ConfirmedCompromised,
    /// An admin confirmed the agent safe.
    ConfirmedSafe,
}

/// An agent's risk level changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskTransition {
    pub agent: AgentId,
    pub from: RiskLevel,
    pub to: RiskLevel,
    pub ktime_ns: u64,
    pub cause: Cause,
}

/// What the daemon must do about an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Remediation {
    /// Deny the agent's network except to the control plane, and its file writes where BPF LSM
    /// is active.
    Quarantine { agent: AgentId },
    /// Lift that quarantine.
    Release { agent: AgentId },
    /// Kill the agent's processes.
    Kill { agent: AgentId },
}

/// What one call to the engine produced, in order. Empty (and allocation-free) for the vast
/// majority of observations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub detections: Vec<Detection>,
    pub transitions: Vec<RiskTransition>,
    pub remediations: Vec<Remediation>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.detections.is_empty() && self.transitions.is_empty() && self.remediations.is_empty()
    }
}

/// An agent's risk and its history, as `agentd risk AGENT` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentRisk {
    pub agent: AgentId,
    pub level: RiskLevel,
    /// An admin confirmed it compromised, and has not confirmed it safe since.
    pub compromised: bool,
    /// The engine has asked for its quarantine and not yet for its release.
    pub quarantined: bool,
    /// The end of its learning window, once it has been observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_until_ns: Option<u64>,
    /// Oldest first, at most `risk.max_detections`.
    pub detections: Vec<DetectionRecord>,
    /// Oldest first, at most `risk.max_transitions`.
    pub transitions: Vec<RiskTransition>,
}

/// An admin request the engine cannot carry out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RiskError {
    #[error("no detection {0} (unknown, or no longer in its agent's history)")]
    NoSuchDetection(DetectionId),
    #[error("detection {id} is not active: it was {state:?}")]
    NotActive {
        id: DetectionId,
        state: DetectionState,
    },
}
