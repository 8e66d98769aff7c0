//! Process lineage of agents' processes, from the kernel's exec, fork and exit events: who
//! started whom, and what each one runs. Events are enriched with the chain of ancestors.

use std::collections::HashMap;

use serde::Serialize;

use crate::events::Event;

/// Processes remembered at most: as many as the kernel's default tag map holds. A full table
/// stops recording new processes (their events carry a shorter lineage) rather than evict.
pub const MAX_PROCESSES: usize = 65_536;
/// Ancestors reported per event.
pub const MAX_DEPTH: usize = 8;

/// One ancestor in an event's lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    /// The program it runs, as its last exec named it; empty when unknown.
    pub exe: String,
}

#[derive(Clone, Debug)]
struct Entry {
    ppid: u32,
    exe: String,
}

/// pid → (parent, program) of tagged processes.
#[derive(Debug, Default)]
pub struct Lineage {
    processes: HashMap<u32, Entry>,
}

impl Lineage {
    /// Records what `event` says about a tagged process.
    pub fn record(&mut self, event: &Event) {
        if event.tag().agent == 0 {
            return;
        }
        match event {
            Event::Exec(exec) => {
                let ppid = exec.ppid.unwrap_or(0);
                self.insert(exec.pid, ppid, exec.filename.clone());
            }
            Event::Fork(fork) => {
                let ppid = fork.ppid.unwrap_or(0);
                // A fork runs its parent's program until it execs.
                let exe = self
                    .processes
                    .get(&ppid)
                    .map(|parent| parent.exe.clone())
                    .unwrap_or_default();
                self.insert(fork.pid, ppid, exe);
            }
            Event::Exit(exit) => {
                self.processes.remove(&exit.pid);
            }
            Event::File(_)
            | Event::Net(_)
            | Event::TagLost(_)
            | Event::TagCap(_)
            | Event::Tamper(_) => {}
        }
    }

    fn insert(&mut self, pid: u32, parent: u32, exe: String) {
        if self.processes.len() < MAX_PROCESSES || self.processes.contains_key(&pid) {
            self.processes.insert(pid, Entry { ppid: parent, exe });
        }
    }

    /// `pid`'s parent, grandparent and so on, nearest first, as far as they are known.
    pub fn ancestors(&self, pid: u32) -> Vec<Ancestor> {
        let mut chain = Vec::new();
        let mut at = self.processes.get(&pid).map(|entry| entry.ppid);
        while let Some(pid) = at.filter(|pid| *pid != 0) {
            if chain.len() == MAX_DEPTH {
                break;
            }
            let entry = self.processes.get(&pid);
            chain.push(Ancestor {
                pid,
                exe: entry.map(|entry| entry.exe.clone()).unwrap_or_default(),
            });
            at = entry.map(|entry| entry.ppid);
        }
        chain
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use agentd_common::{AgentTag, TagSource};

    use super::*;
    use crate::events::{Exec, ProcessChange};

    fn tag() -> AgentTag {
        AgentTag::new(1, TagSource::Launch, 0)
    }

    fn exec(pid: u32, parent: u32, filename: &str) -> Event {
        Event::Exec(Exec {
            ktime_ns: 0,
            pid,
            ppid: Some(parent),
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            comm: String::new(),
            filename: filename.to_owned(),
            filename_truncated: false,
            exe_dev: 0,
            exe_ino: 0,
            args: Vec::new(),
            args_truncated: false,
            newly_tagged: false,
            tag: tag(),
        })
    }

    fn change(pid: u32, parent: Option<u32>) -> ProcessChange {
        ProcessChange {
            ktime_ns: 0,
            pid,
            ppid: parent,
            exit_code: None,
            tag: tag(),
        }
    }

    #[test]
    fn ancestors_follow_forks_and_execs_and_forget_exits() {
        let mut lineage = Lineage::default();
        lineage.record(&exec(10, 1, "/usr/bin/python3"));
        lineage.record(&Event::Fork(change(11, Some(10))));
        assert_eq!(
            lineage.ancestors(11),
            vec![
                Ancestor {
                    pid: 10,
                    exe: "/usr/bin/python3".into()
                },
                // Known as a parent, not recorded itself.
                Ancestor {
                    pid: 1,
                    exe: String::new()
                }
            ]
        );
        lineage.record(&exec(11, 10, "/bin/sh"));
        lineage.record(&Event::Fork(change(12, Some(11))));
        lineage.record(&exec(12, 11, "/usr/bin/curl"));
        let chain: Vec<(u32, String)> = lineage
            .ancestors(12)
            .into_iter()
            .map(|ancestor| (ancestor.pid, ancestor.exe))
            .collect();
        assert_eq!(
            chain,
            vec![
                (11, "/bin/sh".to_owned()),
                (10, "/usr/bin/python3".to_owned()),
                (1, String::new())
            ]
        );
        lineage.record(&Event::Exit(change(11, None)));
        assert_eq!(
            lineage.ancestors(12),
            vec![Ancestor {
                pid: 11,
                exe: String::new()
            }],
            "an exited parent is known by pid only"
        );
        // Untagged processes are not recorded.
        let mut untagged = exec(20, 1, "/bin/true");
        if let Event::Exec(exec) = &mut untagged {
            exec.tag = AgentTag::NONE;
        }
        lineage.record(&untagged);
        assert!(lineage.ancestors(20).is_empty());
        assert_eq!(lineage.len(), 2);
    }
}
