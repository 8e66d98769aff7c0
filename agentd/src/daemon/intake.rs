//! What the state does with each kernel event it takes in: discovery tagging, fail-closed
//! quarantine of an agent whose process could not be tagged, then enrichment, the output and
//! the risk engine; and the sweep of stale tags.

use agentd_common::{AgentTag, TagSource};

use super::{output::Output, state::State};
use crate::{events::Event, identity::discovery::ExecFacts, sensors::SensorError};

impl State {
    /// Takes a batch of kernel events in: each is checked for discovery and fail-closed, then
    /// enriched, written, and assessed (its notices written straight after it).
    pub(super) fn on_events(&mut self, batch: &mut Vec<Event>, output: &mut Output) {
        let now = std::time::Instant::now();
        for mut event in batch.drain(..) {
            self.discover(&mut event);
            self.fail_closed(&event);
            let context = self.enrich(&mut event, now);
            output.event(&event, &context);
            self.assess(&event, &mut output.notices, output.format);
            output.write_notices();
        }
        output.flush();
        self.output_errors = output.errors;
        // Execs and forks in this batch may have tagged running processes.
        self.settle_late();
    }

    /// Tags `pid` and, where they are not tagged yet, the descendants it has already forked.
    pub(super) fn tag_tree(&mut self, pid: u32, tag: AgentTag) {
        let mut pending = vec![(pid, tag)];
        // Bounded: a process tree larger than the tag map cannot be tagged anyway.
        let mut budget = 65_536;
        while let Some((pid, tag)) = pending.pop() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            match self.process.tag(pid, tag) {
                Ok(_) => {}
                Err(err) => tracing::warn!(pid, %err, "could not tag process"),
            }
            for child in children(pid) {
                pending.push((child, tag.inherited()));
            }
        }
    }

    /// A process the kernel could not tag (`TagLost`) must not run as nobody's: agentd tags it
    /// from userspace; if that fails too, it kills the process; either way it quarantines the
    /// agent (docs/identity.md, "When a tag cannot be stored").
    fn fail_closed(&mut self, event: &Event) {
        let Event::TagLost(lost) = event else { return };
        let Some(name) = self
            .registry
            .agent(lost.tag.agent)
            .map(|agent| agent.name.clone())
        else {
            return;
        };
        match self.process.tag(lost.pid, lost.tag) {
            Ok(_) => {
                tracing::error!(pid = lost.pid, agent = %name, "the kernel could not tag a process; tagged it from userspace");
            }
            Err(err) => {
                // Ok(true): killed; Ok(false): the pid is another process's by now.
                let killed = crate::pidfd::kill_if_started_by(lost.pid, lost.ktime_ns);
                tracing::error!(pid = lost.pid, agent = %name, %err, ?killed, "a process of an agent cannot be tagged; killing it");
            }
        }
        if self
            .net
            .quarantined()
            .is_ok_and(|quarantined| quarantined.contains(&lost.tag.agent))
        {
            return;
        }
        if let Err(err) = self.quarantine(&name, true) {
            tracing::error!(agent = %name, err = err.describe(), "quarantining an agent whose process could not be tagged");
        }
    }

    /// Userspace discovery for an exec that the kernel left untagged.
    fn discover(&mut self, event: &mut Event) {
        let Event::Exec(exec) = event else { return };
        if exec.tag.agent != 0 || self.userspace_rules.is_empty() {
            return;
        }
        let facts = ExecFacts {
            pid: exec.pid,
            exe: agentd_common::InodeKey {
                dev: exec.exe_dev,
                pad: 0,
                ino: exec.exe_ino,
            },
            args: &exec.args,
        };
        if let Some(found) = self.userspace_rules.evaluate(&facts) {
            let tag = AgentTag::new(found.agent, TagSource::Discovery, found.rule);
            self.tag_tree(exec.pid, tag);
            exec.tag = tag;
            exec.newly_tagged = true;
        }
    }

    pub(super) fn sweep(&mut self) -> Result<(), SensorError> {
        let removed = self.process.sweep()?;
        if removed > 0 {
            tracing::info!(removed, "removed the tags of processes that are gone");
        }
        Ok(())
    }
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}
