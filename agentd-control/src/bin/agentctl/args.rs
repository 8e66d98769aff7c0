//! Argument vocabulary that several nouns share: network defaults, offline behaviour, governance
//! fields, KEY=VALUE pairs and times.

use std::time::SystemTime;

use agentd_control::proto::{self};
use clap::{Args, ValueEnum};
use prost_types::Timestamp;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NetworkDefault {
    Allow,
    Deny,
}

impl NetworkDefault {
    pub(crate) fn proto(self) -> proto::DefaultAction {
        match self {
            Self::Allow => proto::DefaultAction::Allow,
            Self::Deny => proto::DefaultAction::Deny,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Offline {
    /// Inherit (agents: the blueprint's; blueprints: last-known).
    Inherit,
    /// Keep enforcing the last decisions received, however old (fail-open).
    LastKnown,
    /// Block the agent (network and file writes) once the decisions are older than the TTL.
    FailClosed,
    /// Fall back to the blueprint's baseline once the decisions are older than the TTL.
    Baseline,
}

impl Offline {
    pub(crate) fn proto(self) -> proto::OfflineBehavior {
        match self {
            Self::Inherit => proto::OfflineBehavior::Unspecified,
            Self::LastKnown => proto::OfflineBehavior::LastKnown,
            Self::FailClosed => proto::OfflineBehavior::FailClosed,
            Self::Baseline => proto::OfflineBehavior::Baseline,
        }
    }
}

#[derive(Args)]
#[allow(
    clippy::struct_field_names,
    reason = "the fields are the --...-days flags, named as in the proto"
)]
pub(crate) struct GovernanceArgs {
    /// Days after creation at which agents expire (0: not set).
    #[arg(long, default_value_t = 0)]
    pub(crate) lifetime_days: u32,
    /// A sponsor must reconfirm at least every this many days, or the agent is disabled.
    #[arg(long, default_value_t = 0)]
    pub(crate) reconfirm_every_days: u32,
    /// Disable agents no host has reported running for this many days.
    #[arg(long, default_value_t = 0)]
    pub(crate) inactivity_disable_days: u32,
}

impl GovernanceArgs {
    pub(crate) fn proto(&self) -> proto::GovernanceSettings {
        proto::GovernanceSettings {
            lifetime_days: self.lifetime_days,
            reconfirm_every_days: self.reconfirm_every_days,
            inactivity_disable_days: self.inactivity_disable_days,
        }
    }
}

/// Governance periods to change (unset flags keep the current value; 0 means "not set").
#[derive(Args)]
#[allow(
    clippy::struct_field_names,
    reason = "the fields are the --...-days flags, named as in the proto"
)]
pub(crate) struct GovernanceChanges {
    /// Days after creation at which it expires.
    #[arg(long)]
    pub(crate) lifetime_days: Option<u32>,
    /// A sponsor must reconfirm at least every this many days.
    #[arg(long)]
    pub(crate) reconfirm_every_days: Option<u32>,
    /// Disable after this many days without a host reporting the agent running.
    #[arg(long)]
    pub(crate) inactivity_disable_days: Option<u32>,
}

impl GovernanceChanges {
    pub(crate) fn apply(
        &self,
        current: Option<proto::GovernanceSettings>,
    ) -> proto::GovernanceSettings {
        let current = current.unwrap_or_default();
        proto::GovernanceSettings {
            lifetime_days: self.lifetime_days.unwrap_or(current.lifetime_days),
            reconfirm_every_days: self
                .reconfirm_every_days
                .unwrap_or(current.reconfirm_every_days),
            inactivity_disable_days: self
                .inactivity_disable_days
                .unwrap_or(current.inactivity_disable_days),
        }
    }
}

pub(crate) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// An RFC 3339 time, or `+DURATION` from now (`+30d`, `+8h`).
pub(crate) fn parse_when(text: &str) -> Result<Timestamp, String> {
    let at = if let Some(duration) = text.strip_prefix('+') {
        let duration = humantime::parse_duration(duration).map_err(|err| err.to_string())?;
        SystemTime::now() + duration
    } else {
        humantime::parse_rfc3339_weak(text)
            .map_err(|err| format!("{err}: use RFC 3339 (2027-01-31T12:00:00Z) or +DURATION"))?
    };
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?
        .as_secs();
    Ok(Timestamp {
        seconds: i64::try_from(seconds).map_err(|err| err.to_string())?,
        nanos: 0,
    })
}
