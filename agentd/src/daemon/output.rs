//! Writing events and notices to the configured output, and the alarm about lost events.

use std::time::Duration;

use serde::Serialize;

use super::{enrich::Context, error::DaemonError};
use crate::{
    api::{AgentRef, TagInfo},
    assess::Notice,
    config::{EventsConfig, OutputFormat},
    events::{Event, EventCounts, SCHEMA_VERSION},
    lineage::Ancestor,
    sink,
};

/// One JSON line: the event with the schema version and, for agents' processes, the agent.
#[derive(Serialize)]
struct JsonLine<'a> {
    version: u32,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a AgentRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a TagInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    looks_like: Option<&'static str>,
    /// For connections: the rule that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    /// `threat-intel` for a blocklist hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<&'static str>,
    /// For agents' processes: the parent, grandparent... nearest first.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    lineage: &'a [Ancestor],
}

/// Writes one event line with its context, in `format`, newline included.
fn write_event(
    out: &mut impl std::io::Write,
    format: OutputFormat,
    event: &Event,
    context: &Context,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Text => {
            write!(out, "{}", event.to_text())?;
            if let Some(agent) = &context.agent {
                write!(out, " agent={} ({})", agent.name, agent.id)?;
            }
            if let Some(tag) = &context.tag {
                let inherited = if tag.inherited { ",inherited" } else { "" };
                write!(out, " tag={}{inherited}", tag.source)?;
            }
            if let Some(rule) = &context.rule {
                write!(out, " rule={rule}")?;
            }
            if let Some(alert) = context.alert {
                write!(out, " ALERT={alert}")?;
            }
            if let Some(hint) = context.looks_like {
                write!(out, " looks_like={hint}")?;
            }
            writeln!(out)
        }
        OutputFormat::Json => {
            let line = JsonLine {
                version: SCHEMA_VERSION,
                event,
                agent: context.agent.as_ref(),
                tag: context.tag.as_ref(),
                looks_like: context.looks_like,
                rule: context.rule.as_deref(),
                alert: context.alert,
                lineage: &context.lineage,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)
        }
    }
}

/// Where events and notices go, in the configured format, and the alarm about lost events.
pub(super) struct Output {
    sink: Box<dyn sink::Sink>,
    pub(super) format: OutputFormat,
    line: Vec<u8>,
    /// Notice lines waiting for the next flush.
    pub(super) notices: Vec<String>,
    losses: LossAlarm,
    /// Writes that failed (a closed stdout, a full disk): counted and logged, never fatal, so
    /// that agentd keeps enforcing and reaches its exit path.
    pub(super) errors: u64,
    last_error_logged: Option<std::time::Instant>,
}

impl Output {
    pub(super) fn open(config: &EventsConfig) -> Result<Self, DaemonError> {
        let sink = sink::open(&config.output, config.rotate_bytes, config.rotate_keep).map_err(
            |source| DaemonError::OpenOutput {
                path: config.output.clone(),
                source,
            },
        )?;
        Ok(Self {
            sink,
            format: config.format,
            line: Vec::new(),
            notices: Vec::new(),
            losses: LossAlarm::new(Duration::from_secs(config.loss_alert_interval_secs)),
            errors: 0,
            last_error_logged: None,
        })
    }

    /// Counts a failed write and logs it (at most once every ten seconds, with the count).
    fn failed(&mut self, err: &std::io::Error) {
        self.errors += 1;
        let now = std::time::Instant::now();
        if self
            .last_error_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
        {
            self.last_error_logged = Some(now);
            tracing::error!(
                %err,
                failed_writes = self.errors,
                "the event output cannot be written; agentd goes on enforcing"
            );
        }
    }

    /// Writes one event line; a failed write is counted, never fatal.
    pub(super) fn event(&mut self, event: &Event, context: &Context) {
        self.line.clear();
        let written = write_event(&mut self.line, self.format, event, context)
            .and_then(|()| self.sink.write_line(&self.line));
        if let Err(err) = written {
            self.failed(&err);
        }
    }

    /// Raises the alarm about lost events when the kernel dropped some since the last alarm
    /// (at most once per interval): a warning in the log and a notice in the output.
    pub(super) fn check_losses(&mut self, counts: &EventCounts) {
        if let Some(dropped) = self.losses.check(counts.dropped) {
            tracing::warn!(
                dropped,
                total = counts.dropped,
                produced = counts.produced,
                "the kernel dropped events: agentd is not seeing everything"
            );
            self.notices.push(notice_line(
                &Notice::EventsLost {
                    dropped,
                    dropped_total: counts.dropped,
                    dropped_per_cpu: &counts.dropped_per_cpu,
                    produced_total: counts.produced,
                },
                self.format,
            ));
        }
    }

    pub(super) fn write_notices(&mut self) {
        let notices = std::mem::take(&mut self.notices);
        for notice in notices {
            if let Err(err) = self.sink.write_line(notice.as_bytes()) {
                self.failed(&err);
            }
        }
    }

    pub(super) fn flush(&mut self) {
        self.write_notices();
        if let Err(err) = self.sink.flush() {
            self.failed(&err);
        }
    }
}

/// Raises the alarm about lost events at most once per interval, with what was lost since the
/// last alarm.
struct LossAlarm {
    interval: Duration,
    reported: u64,
    last: Option<std::time::Instant>,
}

impl LossAlarm {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            reported: 0,
            last: None,
        }
    }

    /// With the kernel's drop count now: what to report, if anything.
    fn check(&mut self, dropped: u64) -> Option<u64> {
        if dropped <= self.reported {
            return None;
        }
        if self.last.is_some_and(|last| last.elapsed() < self.interval) {
            return None;
        }
        let new = dropped - self.reported;
        self.reported = dropped;
        self.last = Some(std::time::Instant::now());
        Some(new)
    }
}

/// One line for a notice, in the configured format, newline included.
pub(super) fn notice_line(notice: &Notice<'_>, format: OutputFormat) -> String {
    match format {
        OutputFormat::Text => format!("{}\n", notice.to_text()),
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Versioned<'a> {
                version: u32,
                #[serde(flatten)]
                notice: &'a Notice<'a>,
            }
            let mut line = serde_json::to_string(&Versioned {
                version: SCHEMA_VERSION,
                notice,
            })
            .unwrap_or_else(|err| format!("{{\"kind\":\"error\",\"error\":\"{err}\"}}"));
            line.push('\n');
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use agentd_common::{AgentTag, TagSource};

    use super::*;
    use crate::{
        events::Exec,
        identity::{Agent, AgentId, Registry},
    };

    fn exec(tag: AgentTag) -> Event {
        Event::Exec(Exec {
            ktime_ns: 1,
            pid: 2,
            ppid: Some(1),
            uid: 0,
            gid: 0,
            cgroup_id: 3,
            comm: "sh".into(),
            filename: "/bin/sh".into(),
            filename_truncated: false,
            exe_dev: 1,
            exe_ino: 2,
            args: vec!["sh".into()],
            args_truncated: false,
            newly_tagged: false,
            tag,
        })
    }

    #[test]
    fn json_line_carries_schema_version_kind_and_agent() {
        let mut registry = Registry::default();
        let index = registry.intern_agent(&Agent {
            id: AgentId::from_name("coder"),
            name: "coder".into(),
        });
        let event = exec(AgentTag::new(index, TagSource::Launch, 0).inherited());
        let mut out = Vec::new();
        let lineage = [Ancestor {
            pid: 7,
            exe: "/usr/bin/python3".into(),
        }];
        let context = Context::of(&event, &registry, lineage.to_vec());
        write_event(&mut out, OutputFormat::Json, &event, &context).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["version"], SCHEMA_VERSION);
        assert_eq!(line["lineage"][0]["pid"], 7);
        assert_eq!(line["lineage"][0]["exe"], "/usr/bin/python3");
        assert_eq!(line["kind"], "exec");
        assert_eq!(line["filename"], "/bin/sh");
        assert_eq!(line["agent"]["name"], "coder");
        assert_eq!(line["agent"]["id"], AgentId::from_name("coder").to_string());
        assert_eq!(line["tag"]["source"], "launch");
        assert_eq!(line["tag"]["inherited"], true);
    }

    #[test]
    fn untagged_exec_has_no_agent_field() {
        let mut out = Vec::new();
        let event = exec(AgentTag::NONE);
        let context = Context::of(&event, &Registry::default(), Vec::new());
        write_event(&mut out, OutputFormat::Json, &event, &context).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(line.get("agent").is_none(), "{line}");
    }
}
