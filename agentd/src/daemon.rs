//! `agentd run`: load the kernel programs, attach the sensors, print events until shut down.

use std::{future::Future, io::Write as _};

use serde::Serialize;

use crate::{
    config::{Config, OutputFormat},
    ebpf::{self, LoadError},
    events::{Event, EventReader, ReaderError, SCHEMA_VERSION},
    sensors::{
        SensorError,
        exec::ExecSensor,
        files::{self, FileEnforcement},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("writing events")]
    Output(#[source] std::io::Error),
}

/// One JSON line: the event with the schema version beside its fields.
#[derive(Serialize)]
struct JsonLine<'a> {
    version: u32,
    #[serde(flatten)]
    event: &'a Event,
}

fn write_event(
    out: &mut impl std::io::Write,
    format: OutputFormat,
    event: &Event,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Text => writeln!(out, "{}", event.to_text()),
        OutputFormat::Json => {
            let line = JsonLine {
                version: SCHEMA_VERSION,
                event,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)
        }
    }
}

/// Runs until `shutdown` completes. Everything attached is detached on return, by drop.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let mut object = ebpf::load()?;
    match files::probe_enforcement(&mut object) {
        FileEnforcement::Available => {
            tracing::info!("file enforcement available: BPF LSM programs load and attach");
        }
        FileEnforcement::Unavailable(why) => {
            tracing::warn!("file enforcement UNAVAILABLE: {why}");
        }
    }
    let _exec = ExecSensor::attach(&mut object)?;
    let mut reader = EventReader::new(&mut object)?;
    tracing::info!("exec sensor attached; printing events (Ctrl-C to stop)");

    let mut batch = Vec::new();
    let mut stdout = std::io::stdout().lock();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            read = reader.read_batch(&mut batch) => {
                read?;
                for event in batch.drain(..) {
                    write_event(&mut stdout, config.events.format, &event).map_err(DaemonError::Output)?;
                }
                stdout.flush().map_err(DaemonError::Output)?;
            }
        }
    }
    let stats = reader.stats();
    let dropped = reader.dropped()?;
    tracing::info!(
        delivered = stats.delivered,
        undecodable = stats.undecodable,
        dropped,
        "shutting down; detaching programs"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Exec;

    #[test]
    fn json_line_carries_schema_version_and_kind() {
        let event = Event::Exec(Exec {
            ktime_ns: 1,
            pid: 2,
            ppid: Some(1),
            uid: 0,
            gid: 0,
            cgroup_id: 3,
            comm: "sh".into(),
            filename: "/bin/sh".into(),
            filename_truncated: false,
        });
        let mut out = Vec::new();
        write_event(&mut out, OutputFormat::Json, &event).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["version"], SCHEMA_VERSION);
        assert_eq!(line["kind"], "exec");
        assert_eq!(line["filename"], "/bin/sh");
        assert_eq!(line["ppid"], 1);
    }
}
