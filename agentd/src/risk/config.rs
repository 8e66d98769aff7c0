//! The `[risk]` table of agentd.toml: detections, aggregation, decay and remediation.
//!
//! Every setting has a default (the `Default` impls below, documented in docs/risk.md), so an
//! empty `[risk]` table, or none at all, gives a working engine. [`RiskConfig::validate`]
//! names the first offending field and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Severity, baseline::Baseline};

/// The largest `denied_burst.count`: the engine keeps that many timestamps per agent.
pub const MAX_BURST_COUNT: u32 = 10_000;
/// The most interpreter patterns (one bit each in a per-agent mask).
pub const MAX_INTERPRETERS: usize = 64;

/// The shells and interpreters `unexpected_interpreter` watches by default. A trailing `*`
/// matches a version suffix of digits and dots (`python*` matches `python3.11`).
pub const DEFAULT_INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox", "python*",
    "perl*", "ruby*", "node", "nodejs", "php*", "lua*", "tclsh*", "pwsh", "deno", "bun",
];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Seconds from an agent's first observation during which it is learned, not judged, by
    /// the novelty detections. Default: 3600. 0 judges from the first observation.
    pub learning_window_secs: u64,
    /// Destinations remembered per agent; beyond it the least recently used is forgotten.
    /// Default: 4096.
    pub max_destinations: u32,
    /// Binaries remembered per agent, with the same eviction. Default: 1024.
    pub max_binaries: u32,
    /// Detection records kept per agent for its history. Default: 1024.
    pub max_detections: u32,
    /// Risk transitions kept per agent for its history. Default: 256.
    pub max_transitions: u32,
    pub decay: DecayConfig,
    pub escalation: EscalationConfig,
    pub remediation: RemediationConfig,
    pub unfamiliar_destination: UnfamiliarDestinationConfig,
    pub denied_burst: DeniedBurstConfig,
    pub secret_read_then_egress: SecretReadThenEgressConfig,
    pub new_binary: NewBinaryConfig,
    pub unexpected_interpreter: UnexpectedInterpreterConfig,
    pub threat_intel_hit: ThreatIntelHitConfig,
    pub egress_spike: EgressSpikeConfig,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            learning_window_secs: 3600,
            max_destinations: 4096,
            max_binaries: 1024,
            max_detections: 1024,
            max_transitions: 256,
            decay: DecayConfig::default(),
            escalation: EscalationConfig::default(),
            remediation: RemediationConfig::default(),
            unfamiliar_destination: UnfamiliarDestinationConfig::default(),
            denied_burst: DeniedBurstConfig::default(),
            secret_read_then_egress: SecretReadThenEgressConfig::default(),
            new_binary: NewBinaryConfig::default(),
            unexpected_interpreter: UnexpectedInterpreterConfig::default(),
            threat_intel_hit: ThreatIntelHitConfig::default(),
            egress_spike: EgressSpikeConfig::default(),
        }
    }
}

/// How long an active detection counts towards risk, by severity, from the last time its
/// condition occurred.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DecayConfig {
    /// Default: 3600 (1 hour).
    pub low_secs: u64,
    /// Default: 14400 (4 hours).
    pub medium_secs: u64,
    /// Default: 86400 (24 hours).
    pub high_secs: u64,
}

impl Default for DecayConfig {
    fn default() -> Self {
        Self {
            low_secs: 3600,
            medium_secs: 14_400,
            high_secs: 86_400,
        }
    }
}

impl DecayConfig {
    pub fn secs(&self, severity: Severity) -> u64 {
        match severity {
            Severity::Low => self.low_secs,
            Severity::Medium => self.medium_secs,
            Severity::High => self.high_secs,
        }
    }
}

/// Several active detections of one severity raise the level one step. 0 turns a rule off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EscalationConfig {
    /// This many active medium detections make the level high. Default: 3.
    pub mediums_for_high: u32,
    /// This many active low detections make the level medium. Default: 3.
    pub lows_for_medium: u32,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            mediums_for_high: 3,
            lows_for_medium: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RemediationConfig {
    /// Quarantine an agent when its level reaches `quarantine_at`. Default: true.
    pub quarantine: bool,
    /// The level that triggers remediation: `low`, `medium` or `high`. Default: `high`.
    pub quarantine_at: Severity,
    /// Also kill the agent's processes when the level reaches `quarantine_at`. Default: false.
    pub kill_processes: bool,
    /// Release the quarantine when the level falls below the threshold by decay alone.
    /// Default: false: only an admin action (confirm safe, dismiss) releases it.
    pub auto_release: bool,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        Self {
            quarantine: true,
            quarantine_at: Severity::High,
            kill_processes: false,
            auto_release: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UnfamiliarDestinationConfig {
    pub enabled: bool,
    /// Default: `low`.
    pub severity: Severity,
    /// Per agent name, the destinations it is expected to reach: domains (`api.example.com`),
    /// domain suffixes (`*.example.com`), addresses and CIDRs (`10.0.0.0/8`). An agent with a
    /// baseline is judged against it from its first connect, learning window or not.
    pub baseline: BTreeMap<String, Vec<String>>,
}

impl Default for UnfamiliarDestinationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::Low,
            baseline: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DeniedBurstConfig {
    pub enabled: bool,
    /// Default: `medium`.
    pub severity: Severity,
    /// Denied accesses (network or file) that make a burst. Default: 10.
    pub count: u32,
    /// Within this many seconds. Default: 10.
    pub window_secs: u64,
}

impl Default for DeniedBurstConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::Medium,
            count: 10,
            window_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SecretReadThenEgressConfig {
    pub enabled: bool,
    /// Default: `high`.
    pub severity: Severity,
    /// A connect to a new destination this many seconds or less after the read. Default: 60.
    pub within_secs: u64,
}

impl Default for SecretReadThenEgressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::High,
            within_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NewBinaryConfig {
    pub enabled: bool,
    /// Default: `low`.
    pub severity: Severity,
}

impl Default for NewBinaryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::Low,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UnexpectedInterpreterConfig {
    pub enabled: bool,
    /// Default: `medium`.
    pub severity: Severity,
    /// Program names (the exec'd file's last path component); a trailing `*` matches a
    /// version suffix of digits and dots. Default: [`DEFAULT_INTERPRETERS`].
    pub interpreters: Vec<String>,
}

impl Default for UnexpectedInterpreterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::Medium,
            interpreters: DEFAULT_INTERPRETERS.iter().map(|&s| s.to_owned()).collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ThreatIntelHitConfig {
    pub enabled: bool,
    /// Default: `high`.
    pub severity: Severity,
}

impl Default for ThreatIntelHitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::High,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSpikeConfig {
    pub enabled: bool,
    /// Default: `medium`.
    pub severity: Severity,
    /// The window bytes are summed over. Default: 60.
    pub window_secs: u64,
    /// A window's bytes above `factor` × the bytes per window learned during the learning
    /// window is a spike; 0 turns this comparison off. Default: 10.
    pub factor: u32,
    /// ... but never below this many bytes, so that a quiet learning window does not make
    /// every later byte a spike. Default: 1048576 (1 MiB).
    pub min_bytes: u64,
    /// A window's bytes above this are a spike whatever was learned; 0 turns it off.
    /// Default: 0.
    pub absolute_bytes: u64,
}

impl Default for EgressSpikeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::Medium,
            window_secs: 60,
            factor: 10,
            min_bytes: 1_048_576,
            absolute_bytes: 0,
        }
    }
}

/// A `[risk]` setting that cannot work, by name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RiskConfigError {
    /// The dotted path of the setting, for example `risk.denied_burst.count`.
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> RiskConfigError {
    RiskConfigError {
        field: format!("risk.{field}"),
        reason: reason.into(),
    }
}

fn at_least_one(field: &str, value: u64) -> Result<(), RiskConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn off_or_at_least_two(field: &str, value: u32) -> Result<(), RiskConfigError> {
    if value == 1 {
        return Err(invalid(field, "must be 0 (off) or at least 2"));
    }
    Ok(())
}

impl RiskConfig {
    /// Checks every setting; the error names the first one that cannot work and why.
    pub fn validate(&self) -> Result<(), RiskConfigError> {
        let Self {
            learning_window_secs: _,
            max_destinations,
            max_binaries,
            max_detections,
            max_transitions,
            decay,
            escalation,
            remediation: _,
            unfamiliar_destination,
            denied_burst,
            secret_read_then_egress,
            new_binary: _,
            unexpected_interpreter,
            threat_intel_hit: _,
            egress_spike,
        } = self;
        at_least_one("max_destinations", (*max_destinations).into())?;
        at_least_one("max_binaries", (*max_binaries).into())?;
        at_least_one("max_detections", (*max_detections).into())?;
        at_least_one("max_transitions", (*max_transitions).into())?;
        at_least_one("decay.low_secs", decay.low_secs)?;
        at_least_one("decay.medium_secs", decay.medium_secs)?;
        at_least_one("decay.high_secs", decay.high_secs)?;
        off_or_at_least_two("escalation.mediums_for_high", escalation.mediums_for_high)?;
        off_or_at_least_two("escalation.lows_for_medium", escalation.lows_for_medium)?;
        for (agent, entries) in &unfamiliar_destination.baseline {
            Baseline::parse(entries).map_err(|reason| {
                invalid(&format!("unfamiliar_destination.baseline.{agent}"), reason)
            })?;
        }
        at_least_one("denied_burst.count", denied_burst.count.into())?;
        if denied_burst.count > MAX_BURST_COUNT {
            return Err(invalid(
                "denied_burst.count",
                format!("must be at most {MAX_BURST_COUNT}"),
            ));
        }
        at_least_one("denied_burst.window_secs", denied_burst.window_secs)?;
        at_least_one(
            "secret_read_then_egress.within_secs",
            secret_read_then_egress.within_secs,
        )?;
        validate_interpreters(&unexpected_interpreter.interpreters)?;
        at_least_one("egress_spike.window_secs", egress_spike.window_secs)?;
        if egress_spike.factor == 0 && egress_spike.absolute_bytes == 0 {
            return Err(invalid(
                "egress_spike",
                "factor and absolute_bytes are both 0: nothing could be a spike (set enabled = \
                 false instead)",
            ));
        }
        Ok(())
    }

    /// The parsed baseline of the agent named `agent`, if the configuration gives one.
    pub fn baseline_for(&self, agent: &str) -> Result<Option<Baseline>, RiskConfigError> {
        self.unfamiliar_destination
            .baseline
            .get(agent)
            .map(|entries| {
                Baseline::parse(entries).map_err(|reason| {
                    invalid(&format!("unfamiliar_destination.baseline.{agent}"), reason)
                })
            })
            .transpose()
    }
}

fn validate_interpreters(patterns: &[String]) -> Result<(), RiskConfigError> {
    const FIELD: &str = "unexpected_interpreter.interpreters";
    if patterns.len() > MAX_INTERPRETERS {
        return Err(invalid(
            FIELD,
            format!("at most {MAX_INTERPRETERS} entries, not {}", patterns.len()),
        ));
    }
    for pattern in patterns {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if name.is_empty() || name.contains(['/', '*']) {
            return Err(invalid(
                FIELD,
                format!(
                    "`{pattern}` is not a program name (no `/`, and `*` only at the end after \
                     a name)"
                ),
            ));
        }
    }
    Ok(())
}
