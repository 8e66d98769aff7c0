//! agentd's connection to the control plane: enrolment with a join token, then a watch of the
//! host's Conditional Access decisions that resumes from the last version applied,
//! acknowledgements, heartbeats and detection reports. It runs as one task; the daemon owns the
//! kernel and talks to it through two channels.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agentd_proto::v1::{self as proto, host_service_client::HostServiceClient};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{access::DecisionSet, config::ControlPlaneConfig};

/// What the task tells the daemon.
#[derive(Debug)]
pub enum FromControl {
    /// A new, validated decision set to apply (and then acknowledge).
    Decisions(DecisionSet),
    /// The control plane answered: the decisions in force are current.
    Confirmed,
    /// The connection is down, and why; the task keeps retrying.
    Disconnected(String),
    /// A decision set arrived that the host cannot use; the last good one stays.
    Refused(String),
}

/// What the daemon asks of the task.
#[derive(Debug)]
pub enum ToControl {
    /// The decision version now in force on this host.
    Ack(u64),
    /// Detections to report.
    Detections(Vec<proto::HostDetection>),
    /// The registered agents (control-plane ids) with processes on this host now.
    Agents(Vec<String>),
}

/// The host's credentials, kept in the state directory (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Credentials {
    host_id: String,
    host_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no credentials in {path} and no join token configured (control_plane.join_token or join_token_file)"
    )]
    NotEnrolled { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> ControlError {
    move |status| ControlError::Call {
        call: name,
        status: Box::new(status),
    }
}

/// The path of the kept decision set.
pub fn decisions_path(state_dir: &Path) -> PathBuf {
    state_dir.join("decisions.json")
}

fn credentials_path(state_dir: &Path) -> PathBuf {
    state_dir.join("host.json")
}

fn hostname(config: &ControlPlaneConfig) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "localhost".to_owned(), |name| name.trim().to_owned())
    })
}

async fn connect(url: &str) -> Result<Channel, ControlError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|source| ControlError::Connect {
            url: url.to_owned(),
            source,
        })?;
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|source| ControlError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// The saved credentials, or new ones from enrolling with the join token.
async fn credentials(
    config: &ControlPlaneConfig,
    channel: Channel,
) -> Result<Credentials, ControlError> {
    let path = credentials_path(&config.state_dir);
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(saved) = serde_json::from_slice::<Credentials>(&bytes)
    {
        return Ok(saved);
    }
    let token = match (&config.join_token, &config.join_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(io(format!("reading {}", file.display())))?
            .trim()
            .to_owned(),
        (None, None) => return Err(ControlError::NotEnrolled { path }),
    };
    let enrolled = HostServiceClient::new(channel)
        .enroll_host(proto::EnrollHostRequest {
            join_token: token,
            hostname: hostname(config),
            csr_pem: String::new(),
            agentd_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await
        .map_err(call("EnrollHost"))?
        .into_inner();
    let credentials = Credentials {
        host_id: enrolled.host_id,
        host_token: enrolled.host_token,
    };
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io(format!("creating {}", config.state_dir.display())))?;
    let bytes = serde_json::to_vec(&credentials).map_err(|err| ControlError::Io {
        what: "encoding the credentials".to_owned(),
        source: std::io::Error::other(err),
    })?;
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("writing {}", path.display())))?;
        std::io::Write::write_all(&mut file, &bytes)
            .map_err(io(format!("writing {}", path.display())))?;
    }
    tracing::info!(
        host_id = credentials.host_id,
        "enrolled with the control plane"
    );
    Ok(credentials)
}

/// A request carrying the host's bearer token.
fn authed<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// Runs until the daemon drops its end: connects, enrols if needed, watches decisions from
/// `after_version`, and reconnects with backoff after any failure.
pub async fn run(
    config: ControlPlaneConfig,
    mut after_version: u64,
    to_daemon: mpsc::Sender<FromControl>,
    mut from_daemon: mpsc::Receiver<ToControl>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match session(&config, &mut after_version, &to_daemon, &mut from_daemon).await {
            Ok(()) => return,
            Err(err) => {
                if to_daemon
                    .send(FromControl::Disconnected(err.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                tracing::warn!(%err, retry_in = ?backoff, "control plane unreachable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection: returns `Ok` only when the daemon has gone away.
async fn session(
    config: &ControlPlaneConfig,
    after_version: &mut u64,
    to_daemon: &mpsc::Sender<FromControl>,
    from_daemon: &mut mpsc::Receiver<ToControl>,
) -> Result<(), ControlError> {
    let url = config.url.clone().unwrap_or_default();
    let channel = connect(&url).await?;
    let credentials = credentials(config, channel.clone()).await?;
    let token: MetadataValue<_> = format!("Bearer {}", credentials.host_token)
        .parse()
        .map_err(|_| ControlError::Io {
            what: "the host token".to_owned(),
            source: std::io::Error::other("not valid in a header"),
        })?;
    let mut client = HostServiceClient::new(channel);
    let mut stream = client
        .watch_decisions(authed(
            proto::WatchDecisionsRequest {
                after_version: *after_version,
            },
            &token,
        ))
        .await
        .map_err(call("WatchDecisions"))?
        .into_inner();
    if to_daemon.send(FromControl::Confirmed).await.is_err() {
        return Ok(());
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_secs.max(1)));
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message.map_err(call("WatchDecisions"))? else {
                    return Err(call("WatchDecisions")(tonic::Status::unavailable("the stream ended")));
                };
                let Some(raw) = message.decision_set else { continue };
                let update = match DecisionSet::from_proto(&raw) {
                    Ok(set) => {
                        *after_version = set.version;
                        FromControl::Decisions(set)
                    }
                    Err(err) => FromControl::Refused(format!("decision set {}: {err}", raw.version)),
                };
                if to_daemon.send(update).await.is_err() {
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                client
                    .heartbeat(authed(
                        proto::HeartbeatRequest { agentd_version: env!("CARGO_PKG_VERSION").to_owned() },
                        &token,
                    ))
                    .await
                    .map_err(call("Heartbeat"))?;
                if to_daemon.send(FromControl::Confirmed).await.is_err() {
                    return Ok(());
                }
            }
            request = from_daemon.recv() => match request {
                None => return Ok(()),
                Some(ToControl::Ack(version)) => {
                    client
                        .ack_decisions(authed(proto::AckDecisionsRequest { version }, &token))
                        .await
                        .map_err(call("AckDecisions"))?;
                }
                Some(ToControl::Agents(agent_ids)) => {
                    client
                        .report_agents(authed(proto::ReportAgentsRequest { agent_ids }, &token))
                        .await
                        .map_err(call("ReportAgents"))?;
                }
                Some(ToControl::Detections(detections)) => {
                    client
                        .report_detections(authed(
                            proto::ReportDetectionsRequest { detections },
                            &token,
                        ))
                        .await
                        .map_err(call("ReportDetections"))?;
                }
            },
        }
    }
}
