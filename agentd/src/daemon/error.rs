//! The daemon's errors: [`DaemonError`] ends `agentd run`; [`RequestError`] refuses one request
//! (an admin or identity call, a decision set) and leaves the daemon running. Both stay typed
//! until the socket or the notice that reports them.

use std::path::PathBuf;

use crate::{
    conditional::DecisionError, ebpf::LoadError, events::ReaderError,
    identity::attest::AttestError, policy::PolicyError, risk::RiskConfigError,
    sensors::SensorError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cgroup v2")]
    Cgroup(#[source] std::io::Error),
    #[error("the category database {path}: {reason}")]
    Categories { path: String, reason: String },
    #[error("creating the launch cgroup {path}")]
    LaunchCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing events")]
    Output(#[source] std::io::Error),
    #[error("opening the event output {path}")]
    OpenOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the risk configuration")]
    Risk(#[source] RiskConfigError),
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
}

/// Why one request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown agent {0:?}: it is not in the policy")]
    UnknownAgent(String),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    /// The caller could not be identified at accept.
    #[error(transparent)]
    Attest(#[from] AttestError),
    #[error("the connecting process has exited")]
    PeerExited,
    #[error("not an agent: process {0} carries no agent tag")]
    Untagged(u32),
    #[error("not an agent: unknown agent index {0}")]
    UnknownIndex(u32),
    /// A decision set that cannot be put in force here.
    #[error(transparent)]
    Decisions(#[from] DecisionError),
}

impl RequestError {
    /// The error with its causes, `: `-separated, as a socket answers it or a notice says it.
    pub fn describe(self) -> String {
        format!("{:#}", anyhow::Error::from(self))
    }
}
