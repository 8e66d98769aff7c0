//! Conditional Access on this host: the decisions in force, the control plane's updates, and what
//! this host reports back.

use std::{collections::HashSet, path::Path};

use tokio::sync::mpsc;

use super::{
    error::RequestError,
    output::{Output, notice_line},
    state::State,
};
use crate::{
    assess::Notice,
    clock::{boottime_ns, unix_ms},
    conditional::{self, Clocks, DecisionSet, Standing},
    config::{Config, OutputFormat},
    control::{FromControl, ToControl},
};

impl State {
    /// Says which agents of the local policy the control plane knows by another id (matched by
    /// name): host events name them by the local id, the registry and their SPIFFE ID by the
    /// control plane's.
    fn warn_of_other_ids(&self, set: &DecisionSet) {
        for decision in &set.decisions {
            let other = self.policy.agents.iter().find(|agent| {
                agent.id_given
                    && agent.agent.name == decision.agent_name
                    && agent.agent.id.to_string() != decision.agent_id
            });
            if let Some(agent) = other {
                tracing::warn!(
                    agent = %agent.agent.name,
                    local_id = %agent.agent.id,
                    control_plane_id = %decision.agent_id,
                    "the local policy names this agent by another id than the control plane: \
                     host events use the local one; set `id` in the policy to the control \
                     plane's, or leave it out to adopt it (docs/identity.md)"
                );
            }
        }
    }

    /// Puts a Conditional Access decision set in force: kernel tables first (grants before the
    /// flags that restrict), then file-write blocks, then the set is kept on disk. On any error
    /// the previous set stays in force and the error is returned. Returns notice lines.
    fn apply_decisions(
        &mut self,
        mut set: DecisionSet,
        format: OutputFormat,
    ) -> Result<Vec<String>, RequestError> {
        self.adopt_from(&set);
        let now_ms = unix_ms();
        let stale_ms = now_ms.saturating_sub(set.confirmed_unix_ms);
        let standings: Vec<Standing> = set
            .decisions
            .iter()
            .map(|decision| decision.standing(stale_ms))
            .collect();
        let clocks = Clocks {
            unix_ms: now_ms,
            boot_ns: boottime_ns(),
        };
        // Each decision's agent, by id or else by name, unless offline baseline drops it.
        let indices: Vec<Option<u32>> = set
            .decisions
            .iter()
            .zip(&standings)
            .map(|(decision, standing)| {
                if *standing == Standing::Baseline {
                    return None;
                }
                let agent = self.policy.agents.iter().find(|agent| {
                    agent.agent.id.to_string() == decision.agent_id
                        || agent.agent.name == decision.agent_name
                })?;
                Some(self.registry.intern_agent(&agent.agent))
            })
            .collect();
        let mut index_of = |decision: &conditional::AgentDecision| {
            set.decisions
                .iter()
                .position(|d| std::ptr::eq(d, decision))
                .and_then(|i| indices[i])
        };
        let blocked = |decision: &conditional::AgentDecision| {
            set.decisions
                .iter()
                .position(|d| std::ptr::eq(d, decision))
                .is_some_and(|i| standings[i] == Standing::FailClosed)
        };
        let registry = &mut self.registry;
        let tables = conditional::tables(
            &set,
            &mut index_of,
            &blocked,
            &mut |source| registry.intern_rule(source),
            &|path| crate::inode::inode_key(Path::new(path)),
            &self.categories,
            clocks,
        )?;
        for missing in &tables.missing_paths {
            tracing::warn!(
                control = %missing,
                "a file control names a path that does not exist here; nothing to protect"
            );
        }
        let files_changed = self.ca.files != tables.files;
        self.write_ca_tables(&tables)?;
        self.ca.domains.clone_from(&tables.domains);
        if let Err(err) = self.sync_learned() {
            tracing::warn!(%err, "applying Conditional Access domain grants to learned addresses");
        }
        let now_blocked: HashSet<u32> = tables
            .agents
            .iter()
            .filter(|(_, ca)| ca.flags & agentd_common::CaAgent::FLAG_BLOCK != 0)
            .map(|(index, _)| *index)
            .collect();
        self.block_file_writes(&now_blocked)?;
        if files_changed || !now_blocked.is_subset(&self.ca.blocked) {
            self.refresh_held();
        }
        self.ca.blocked = now_blocked;
        self.ca.standings = standings;
        self.held_svids.standing_changed();
        let notices = if self.ca.applied_version == set.version {
            Vec::new()
        } else {
            self.warn_of_other_ids(&set);
            decision_notices(&set, tables.agents.len(), format)
        };
        self.ca.applied_version = set.version;
        if set.confirmed_unix_ms == 0 {
            set.confirmed_unix_ms = now_ms;
        }
        if let Some(path) = &self.ca.path
            && let Err(err) = set.save(path)
        {
            tracing::warn!(%err, path = %path.display(), "keeping the decisions on disk");
        }
        self.ca.set = Some(set);
        Ok(notices)
    }

    /// Writes a decision set's kernel tables: file controls first (they join the local rules'
    /// entries), then the network tables; if the network refuses, the file entries go back, so
    /// the previous set stays whole.
    fn write_ca_tables(&mut self, tables: &conditional::CaTables) -> Result<(), RequestError> {
        let (names, entries) = (&self.file_entries.names, &self.file_entries.entries);
        self.files.set_rules(
            &conditional::merge_file_rules(&self.file_entries.objects, &tables.files),
            names,
            entries,
        )?;
        if let Err(err) = self.net.set_conditional_access(tables) {
            if let Err(restore) = self.files.set_rules(
                &conditional::merge_file_rules(&self.file_entries.objects, &self.ca.files),
                names,
                entries,
            ) {
                tracing::error!(%restore, "restoring the previous file controls");
            }
            return Err(err.into());
        }
        self.ca.files.clone_from(&tables.files);
        Ok(())
    }

    /// Denies the file writes of agents the decisions block, and lifts it from those no longer
    /// blocked unless an admin or the risk engine quarantined them.
    fn block_file_writes(&mut self, now_blocked: &HashSet<u32>) -> Result<(), RequestError> {
        let manual: HashSet<u32> = self.net.quarantined()?.into_iter().collect();
        let rule = self.registry.intern_rule("conditional-access/block");
        for index in now_blocked.union(&self.ca.blocked) {
            let on = now_blocked.contains(index) || manual.contains(index);
            self.files.set_quarantine(*index, rule, on)?;
        }
        Ok(())
    }

    /// Hands the pending detections to the control-plane task, after the agents running here:
    /// the control plane takes detections only for agents the host reported running, and an
    /// agent whose processes already exited is reported while it has detections to send.
    pub(super) fn send_detections(&mut self) {
        if self.ca.pending_detections.is_empty() {
            return;
        }
        self.report_agents();
        let Some(tx) = &self.ca.to_control else {
            return;
        };
        let detections = std::mem::take(&mut self.ca.pending_detections);
        if let Err(err) = tx.try_send(ToControl::Detections(detections)) {
            tracing::warn!(%err, "the control plane task is busy; detections not reported");
        }
    }

    /// Tells the control plane which of its agents run here, when that changed. An agent with
    /// detections still to send counts as running (its processes may have exited, or been
    /// killed, since): the control plane accepts detections only for agents a host reported.
    pub(super) fn report_agents(&mut self) {
        let (Some(tx), Some(set)) = (&self.ca.to_control, &self.ca.set) else {
            return;
        };
        let Ok(tagged) = self.process.tagged() else {
            return;
        };
        let running: HashSet<&str> = tagged
            .iter()
            .filter_map(|(_, tag)| self.registry.agent(tag.agent))
            .map(|agent| agent.name.as_str())
            .collect();
        let mut ids: Vec<String> = set
            .decisions
            .iter()
            .filter(|decision| {
                running.contains(decision.agent_name.as_str())
                    || self
                        .ca
                        .pending_detections
                        .iter()
                        .any(|d| d.agent_id == decision.agent_id)
            })
            .map(|decision| decision.agent_id.clone())
            .collect();
        ids.sort();
        if ids != self.ca.reported_agents && tx.try_send(ToControl::Agents(ids.clone())).is_ok() {
            self.ca.reported_agents = ids;
        }
    }

    /// Once a second: re-applies the decisions when an agent's offline standing changed.
    pub(super) fn ca_tick(&mut self, format: OutputFormat) -> Vec<String> {
        let Some(set) = self.ca.set.clone() else {
            return Vec::new();
        };
        let stale_ms = unix_ms().saturating_sub(set.confirmed_unix_ms);
        let standings: Vec<Standing> = set
            .decisions
            .iter()
            .map(|decision| decision.standing(stale_ms))
            .collect();
        if standings == self.ca.standings {
            return Vec::new();
        }
        tracing::warn!(
            stale_ms,
            "offline behaviour changed what the decisions enforce"
        );
        self.apply_decisions(set, format).unwrap_or_else(|err| {
            tracing::error!(err = err.describe(), "re-applying the decisions");
            Vec::new()
        })
    }

    /// What the control plane task reported.
    pub(super) fn on_control(&mut self, update: FromControl, format: OutputFormat) -> Vec<String> {
        match update {
            FromControl::Decisions(set) => {
                let version = set.version;
                match self.apply_decisions(set, format) {
                    Ok(notices) => {
                        self.ca.connected = true;
                        if let Some(tx) = &self.ca.to_control {
                            let _ = tx.try_send(ToControl::Ack(version));
                        }
                        notices
                    }
                    Err(err) => {
                        let err = err.describe();
                        tracing::error!(
                            version,
                            err,
                            "refused a decision set; the previous one stays"
                        );
                        vec![notice_line(
                            &Notice::Decisions {
                                decision_version: version,
                                result: format!("refused: {err}"),
                                agents: 0,
                            },
                            format,
                        )]
                    }
                }
            }
            FromControl::Refused(why) => {
                tracing::error!(%why, "refused a decision set; the previous one stays");
                Vec::new()
            }
            FromControl::Confirmed => {
                self.ca.connected = true;
                self.ca.last_error = None;
                let now = unix_ms();
                if let Some(set) = &mut self.ca.set {
                    set.confirmed_unix_ms = now;
                    if let Some(path) = &self.ca.path {
                        let _ = set.save(path);
                    }
                }
                self.ca_tick(format)
            }
            FromControl::Bundle(pem) => {
                if let Err(err) = self.held_svids.set_bundle(&pem) {
                    tracing::warn!(%err, "the control plane's new trust bundle; open streams keep theirs");
                }
                Vec::new()
            }
            FromControl::Certificate { expires_at } => {
                self.ca.certificate_expires_at = Some(expires_at);
                Vec::new()
            }
            FromControl::Disconnected(why) => {
                self.ca.connected = false;
                self.ca.last_error = Some(why);
                Vec::new()
            }
        }
    }
}

/// The notices for a decision set coming into force: "would block" for report-only policies
/// that would block or quarantine an agent, and the set itself.
fn decision_notices(set: &DecisionSet, agents: usize, format: OutputFormat) -> Vec<String> {
    let mut notices = Vec::new();
    for decision in &set.decisions {
        if let Some(action @ (conditional::Action::Block | conditional::Action::Quarantine)) =
            decision.report_only_action
        {
            notices.push(notice_line(
                &Notice::WouldBlock {
                    agent_name: &decision.agent_name,
                    action,
                    policy_ids: &decision.report_only_policy_ids,
                    decision_version: set.version,
                },
                format,
            ));
        }
    }
    notices.push(notice_line(
        &Notice::Decisions {
            decision_version: set.version,
            result: "applied".to_owned(),
            agents,
        },
        format,
    ));
    notices
}

/// The channel from the control-plane task, a sender kept so that the channel stays open when
/// there is none, and the task. Before the task starts, the decisions kept on disk are put in
/// force, so that a restart while the control plane is unreachable enforces them.
#[allow(
    clippy::type_complexity,
    reason = "a one-off tuple of the three things run() keeps"
)]
pub(super) fn start_control(
    config: &Config,
    state: &mut State,
    output: &mut Output,
) -> (
    mpsc::Receiver<FromControl>,
    mpsc::Sender<FromControl>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let (from_tx, from_rx) = mpsc::channel(16);
    if config.control_plane.url.is_none() {
        return (from_rx, from_tx, None);
    }
    let path = crate::control::decisions_path(&config.control_plane.state_dir);
    state.ca.path = Some(path.clone());
    let mut after_version = 0;
    match DecisionSet::load(&path) {
        Ok(Some(kept)) => {
            after_version = kept.version;
            tracing::info!(
                version = kept.version,
                "enforcing the decisions kept on disk"
            );
            match state.apply_decisions(kept, output.format) {
                Ok(notices) => output.notices.extend(notices),
                Err(err) => tracing::error!(
                    err = err.describe(),
                    "the decisions kept on disk cannot be applied"
                ),
            }
        }
        Ok(None) => {}
        Err(err) => tracing::error!(%err, path = %path.display(), "reading the kept decisions"),
    }
    let (to_tx, to_rx) = mpsc::channel(64);
    state.ca.to_control = Some(to_tx);
    let task = tokio::spawn(crate::control::run(
        config.control_plane.clone(),
        after_version,
        from_tx.clone(),
        to_rx,
    ));
    (from_rx, from_tx, Some(task))
}
