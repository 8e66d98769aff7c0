//! The optional export of the audit log to an append-only file (`agentd-control serve
//! --audit-export PATH`): one JSON line per event, chain fields included, in sequence order.
//! The file is opened `O_APPEND` (and created mode 0600); at start agentd-control tries
//! `chattr +a` on it (Linux, needs `CAP_LINUX_IMMUTABLE`; a file system without the flag or a
//! process without the capability is logged and the export goes on without it). With the flag
//! set, not even root can rewrite or truncate the file without clearing it first, which the
//! kernel audits as a separate act. The exporter tails the database, so it exports what other
//! replicas wrote too, and resumes after the last line it finds in the file.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    model::{AuditEvent, AuditFilter},
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("audit export {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit export {path}: the last line is not an exported event")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("audit export: reading the log")]
    Store(#[from] crate::error::Error),
}

/// One exported event: the stored event with its chain fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedEvent {
    pub sequence: i64,
    /// 0: written before the chain existed.
    pub chain_index: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub previous: Option<String>,
    pub current: Option<String>,
    pub previous_digest: String,
    pub digest: String,
}

impl From<AuditEvent> for ExportedEvent {
    fn from(event: AuditEvent) -> Self {
        let AuditEvent {
            sequence,
            at,
            actor,
            action,
            target_type,
            target_id,
            previous,
            current,
            chain,
        } = event;
        let (chain_index, previous_digest, digest) = chain
            .map_or((0, String::new(), String::new()), |link| {
                (link.index, link.previous_digest, link.digest)
            });
        Self {
            sequence,
            chain_index,
            at,
            actor,
            action,
            target_type,
            target_id,
            previous,
            current,
            previous_digest,
            digest,
        }
    }
}

/// An open export file and the sequence number of the last event in it.
pub struct AuditExport {
    file: File,
    path: PathBuf,
    last_sequence: i64,
    /// Whether `chattr +a` took.
    pub append_only_flag: bool,
}

const PAGE: i64 = 1000;

impl AuditExport {
    pub fn open(path: &Path) -> Result<Self, ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let append_only_flag = set_append_only(path);
        let last_sequence = match last_line(path).map_err(io)? {
            Some(line) => {
                serde_json::from_str::<ExportedEvent>(&line)
                    .map_err(|source| ExportError::Malformed {
                        path: path.to_owned(),
                        source,
                    })?
                    .sequence
            }
            None => 0,
        };
        file.flush().map_err(io)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            last_sequence,
            append_only_flag,
        })
    }

    /// Appends every event stored after the last one exported, and syncs the file. Returns how
    /// many were written.
    pub async fn export_new(&mut self, store: &Store) -> Result<usize, ExportError> {
        let mut written = 0;
        loop {
            let events = store
                .list_audit_events(&AuditFilter {
                    after_sequence: self.last_sequence,
                    limit: PAGE,
                    ..AuditFilter::default()
                })
                .await?;
            let count = events.len();
            let mut text = String::new();
            let mut last = self.last_sequence;
            for event in events {
                last = event.sequence;
                text.push_str(
                    &serde_json::to_string(&ExportedEvent::from(event))
                        .expect("an event serializes"),
                );
                text.push('\n');
            }
            if !text.is_empty() {
                let io = |source| ExportError::Io {
                    path: self.path.clone(),
                    source,
                };
                self.file.write_all(text.as_bytes()).map_err(io)?;
                self.file.sync_data().map_err(io)?;
                self.last_sequence = last;
                written += count;
            }
            if i64::try_from(count).unwrap_or(i64::MAX) < PAGE {
                return Ok(written);
            }
        }
    }

    /// Exports every `interval` until the process ends; errors are logged and retried.
    pub async fn run(mut self, store: Store, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            if let Err(err) = self.export_new(&store).await {
                tracing::error!(error = %err, "exporting the audit log");
            }
        }
    }
}

/// Tries `chattr +a`; says what happened in the log.
fn set_append_only(path: &Path) -> bool {
    match std::process::Command::new("chattr")
        .arg("+a")
        .arg(path)
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(output) if output.status.success() => {
            tracing::info!(path = %path.display(), "audit export is append-only (chattr +a)");
            true
        }
        Ok(output) => {
            tracing::warn!(
                path = %path.display(),
                reason = %String::from_utf8_lossy(&output.stderr).trim(),
                "chattr +a failed: the audit export is opened O_APPEND only"
            );
            false
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "chattr not available: the audit export is opened O_APPEND only");
            false
        }
    }
}

/// The file's last complete line, reading at most its last 1 MiB.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(str::to_owned))
}
