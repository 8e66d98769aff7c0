//! Descriptors that agents opened before a rule applied or before they were tagged: the state
//! lists the files agents' processes hold open (`sensors::files_held`) after each change of the
//! rules, and after a process is tagged while it ran (`sensors::late_tags`).

use std::path::Path;

use super::state::State;
use crate::sensors::{files_held, late_tags::Pending};

impl State {
    /// Lists the files agents' processes hold open now, so that the rules just written judge
    /// their reads and writes too (`sensors::files_held`). Every tagged process is listed, so
    /// the processes tagged while they ran that were pending before the listing are settled
    /// too. Best effort: a failure is logged and leaves the previous list.
    pub(super) fn refresh_held(&mut self) {
        if !self.held.active() {
            return;
        }
        // Read before the listing: the kernel tags a process before it marks it.
        let pending = self.late_pending();
        let pids: Vec<u32> = match self.process.tagged() {
            Ok(tagged) => tagged.into_iter().map(|(pid, _)| pid).collect(),
            Err(err) => {
                tracing::warn!(%err, "listing tagged processes for their open files");
                return;
            }
        };
        let held =
            files_held::held_files(Path::new("/proc"), &pids, files_held::HELD_FILES_CAPACITY);
        if held.truncated {
            tracing::warn!(
                listed = held.files.len(),
                "agents hold more open files than agentd lists; reads and writes of the rest \
                 are judged at their next open only"
            );
        }
        if let Err(err) = self.held.set(&held.files) {
            tracing::warn!(%err, "writing the files agents hold open");
            return;
        }
        if let Some(pending) = pending
            && !held.truncated
        {
            self.settle(&pending);
        }
    }

    /// Lists the open files of processes tagged while they ran (an exec or fork that tagged
    /// them in the kernel, or agentd tagging them), then settles them: until then the kernel
    /// judges every read and write they make. Cheap when nothing is pending (two array reads).
    pub(super) fn settle_late(&mut self) {
        let Some(pending) = self.late_pending() else {
            return;
        };
        if self.held.active() {
            let held = files_held::held_files(
                Path::new("/proc"),
                &pending.pids,
                files_held::HELD_FILES_CAPACITY,
            );
            if let Err(err) = self.held.add(&held.files) {
                // Left pending: their reads and writes stay judged one by one.
                tracing::warn!(%err, processes = pending.pids.len(), "listing the files of processes tagged while they ran");
                return;
            }
            if held.truncated {
                tracing::warn!(
                    processes = pending.pids.len(),
                    "processes tagged while they ran hold more open files than agentd lists; \
                     left judged one by one"
                );
                return;
            }
        }
        self.settle(&pending);
    }

    /// The processes tagged while they ran that are not settled, if any.
    fn late_pending(&self) -> Option<Pending> {
        self.process.late_pending().unwrap_or_else(|err| {
            tracing::warn!(%err, "reading the processes tagged while they ran");
            None
        })
    }

    /// `pending`'s open files are listed: the kernel stops judging each read and write.
    fn settle(&mut self, pending: &Pending) {
        if let Err(err) = self.process.settle_late(pending) {
            tracing::warn!(%err, "settling the processes tagged while they ran");
        }
    }
}
