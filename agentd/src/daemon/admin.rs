//! Admin requests, and the local calls (identity, metrics, health) that the socket tasks pass to
//! the state.

use tokio::sync::oneshot;

use super::{
    caller::AdminCaller,
    enrich::{agent_ref, tag_info},
    error::{DaemonError, RequestError},
    output::Output,
    state::State,
};
use crate::{
    api::{
        self, AdminRequest, AgentRef, ControlPlaneStatus, IdentityDocument, LaunchTarget,
        ProcessInfo, Quarantined, Reply, Status,
    },
    cgroups,
    clock::unix_ms,
    events::EventReader,
    identity::attest::{AttestError, Peer},
    metrics,
    policy::IdentityPolicy,
    risk::RiskLevel,
    sensors::{
        SensorError,
        files::{FileEnforcement, FileMode},
    },
};

impl State {
    pub(super) fn quarantine(
        &mut self,
        agent: &str,
        on: bool,
    ) -> Result<Quarantined, RequestError> {
        let found = self
            .policy
            .agent(agent)
            .ok_or_else(|| RequestError::UnknownAgent(agent.to_owned()))?
            .clone();
        let index = self.registry.intern_agent(&found);
        let rule = self.registry.intern_rule("quarantine");
        let files_on = on || self.ca.blocked.contains(&index);
        self.net
            .set_quarantine(index, on)
            .and_then(|()| self.files.set_quarantine(index, rule, files_on))?;
        if on {
            self.refresh_held();
        }
        self.held_svids.standing_changed();
        tracing::warn!(agent, quarantined = on, "quarantine changed");
        Ok(Quarantined {
            agent: agent.to_owned(),
            quarantined: on,
        })
    }

    pub(super) fn ps(&self) -> Result<Vec<ProcessInfo>, SensorError> {
        let boot = procfs::boot_time_secs().unwrap_or(0);
        let hz = procfs::ticks_per_second().max(1);
        let mut processes: Vec<ProcessInfo> = self
            .process
            .tagged()?
            .into_iter()
            .filter_map(|(pid, tag)| {
                let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
                let stat = process.stat().ok()?;
                let command = process
                    .cmdline()
                    .ok()
                    .filter(|args| !args.is_empty())
                    .map_or_else(|| format!("[{}]", stat.comm), |args| args.join(" "));
                Some(ProcessInfo {
                    pid,
                    ppid: u32::try_from(stat.ppid).unwrap_or(0),
                    agent: agent_ref(&self.registry, tag)?,
                    tag: tag_info(&self.registry, tag),
                    started: boot + stat.starttime / hz,
                    command,
                })
            })
            .collect();
        processes.sort_by_key(|process| process.pid);
        Ok(processes)
    }

    pub(super) fn launch(&self, agent: &str) -> Result<LaunchTarget, RequestError> {
        let found = self
            .policy
            .agent(agent)
            .ok_or_else(|| RequestError::UnknownAgent(agent.to_owned()))?;
        Ok(LaunchTarget {
            agent: AgentRef {
                id: found.id,
                name: found.name.clone(),
            },
            cgroup: cgroups::launch_dir(&self.cgroup_root, agent)
                .display()
                .to_string(),
        })
    }

    pub(super) fn status(&self) -> Result<Status, SensorError> {
        let quarantined = self
            .net
            .quarantined()?
            .into_iter()
            .filter_map(|index| self.registry.agent(index).map(|agent| agent.name.clone()))
            .collect();
        let pins = self.links.layout().map(|layout| crate::pins::PinStatus {
            root: layout.root.display().to_string(),
            layout: layout.layout.clone(),
            build: layout.build.clone(),
            adopted: self.links.adopting(),
            on_exit: Some(self.on_exit),
            links: self.links.status(),
        });
        let sensors = self.sensor_health();
        Ok(Status {
            self_protection: if self.protect.active() {
                "lsm: agents may not signal or ptrace agentd, use bpf(), or open its files"
                    .to_owned()
            } else {
                "partial: BPF LSM unavailable; the admin socket refuses agents, file rules are \
                 observed only"
                    .to_owned()
            },
            pins,
            events_delivered: self.event_counts.delivered,
            events_dropped: self.event_counts.dropped,
            events_produced: self.event_counts.produced,
            events_undecodable: self.event_counts.undecodable,
            events_dropped_per_cpu: self.event_counts.dropped_per_cpu.clone(),
            network_version: self.net_version,
            quarantined,
            agents: self.policy.agents.len(),
            rules: self.policy.rules.len(),
            tagged_processes: self.process.tagged()?.len(),
            tags_lost: self.process.insert_failures()?,
            tags_over_cap: self.process.over_cap()?.0,
            forks_refused_over_cap: self.process.over_cap()?.1,
            file_enforcement: match &self.file_enforcement {
                FileEnforcement::Available => "available".to_owned(),
                FileEnforcement::Unavailable(why) => format!("unavailable: {why}"),
            },
            control_plane: self.ca.path.as_ref().map(|_| {
                let now = unix_ms();
                let set = self.ca.set.as_ref();
                ControlPlaneStatus {
                    connected: self.ca.connected,
                    error: self.ca.last_error.clone(),
                    decision_version: set.map_or(0, |set| set.version),
                    decision_age_secs: set.map(|set| now.saturating_sub(set.issued_unix_ms) / 1000),
                    confirmed_age_secs: set
                        .map(|set| now.saturating_sub(set.confirmed_unix_ms) / 1000),
                    blocked_agents: self
                        .ca
                        .blocked
                        .iter()
                        .filter_map(|index| self.registry.agent(*index))
                        .map(|agent| agent.name.clone())
                        .collect(),
                    host_certificate_expires_at: self.ca.certificate_expires_at,
                }
            }),
            file_monitoring: match self.files.mode() {
                FileMode::Enforcing { missing } if missing.is_empty() => "lsm".to_owned(),
                FileMode::Enforcing { missing } => format!(
                    "lsm, degraded: no {} hook on this kernel",
                    missing.join(", ")
                ),
                FileMode::Observing => {
                    "tracepoints: opens that break a rule are reported, not denied".to_owned()
                }
                FileMode::Unavailable(why) => format!("none: {why}"),
            },
            health: crate::health::summary(&sensors).to_owned(),
            sensors,
            output_errors: self.output_errors,
            svids: self.held_svids.status(unix_ms() / 1000),
        })
    }

    /// Each sensor's state (docs/operations.md, "Health").
    fn sensor_health(&self) -> Vec<api::SensorHealth> {
        let lsm_unavailable = match &self.file_enforcement {
            FileEnforcement::Available => None,
            FileEnforcement::Unavailable(why) => Some(why.as_str()),
        };
        crate::health::sensors(&crate::health::Inputs {
            files: self.files.mode(),
            self_protection: self.protect.active(),
            socket_families: self.net.decides_families(),
            self_protection_missing: self.protect.missing(),
            file_hooks_missing: &[
                self.exec.missing(),
                self.meta.missing(),
                self.held.missing(),
            ]
            .concat(),
            lsm_unavailable,
            dns: self.dns_enabled,
            mounts: &self.mounts,
        })
    }

    /// The identity document of a pinned peer. The tag is trusted only if the peer is still
    /// alive after the lookup (so the pid was still its own).
    pub(super) fn whoami(&self, peer: &Peer) -> Result<IdentityDocument, RequestError> {
        let tag = self.process.tag_of(peer.pid)?;
        if !peer.alive() {
            return Err(RequestError::PeerExited);
        }
        let tag = tag.ok_or(RequestError::Untagged(peer.pid))?;
        let agent = agent_ref(&self.registry, tag).ok_or(RequestError::UnknownIndex(tag.agent))?;
        Ok(IdentityDocument {
            pid: peer.pid,
            agent,
            tag: tag_info(&self.registry, tag),
            attestation: peer.pinning,
        })
    }

    /// The figures `/metrics` serves.
    pub(super) fn metrics(&self) -> Result<metrics::Snapshot, SensorError> {
        let level = |level: RiskLevel| match level {
            RiskLevel::None => 0,
            RiskLevel::Low => 1,
            RiskLevel::Medium => 2,
            RiskLevel::High => 3,
        };
        Ok(metrics::Snapshot {
            events: self.event_counts.clone(),
            tagged_processes: self.process.tagged()?.len() as u64,
            tags_lost: self.process.insert_failures()?,
            tags_over_cap: self.process.over_cap()?,
            agents: self.policy.agents.len() as u64,
            quarantined_agents: self.net.quarantined()?.len() as u64,
            file_enforcement: self.file_enforcement == FileEnforcement::Available,
            network_policy_version: u64::from(self.net_version),
            detections: self
                .detection_counts
                .iter()
                .map(|(key, value)| (key.clone(), *value))
                .collect(),
            remediations: self
                .remediation_counts
                .iter()
                .map(|(key, value)| (key.clone(), *value))
                .collect(),
            risk_levels: self
                .policy
                .agents
                .iter()
                .map(|agent| {
                    (
                        agent.agent.name.clone(),
                        level(self.risk.level(agent.agent.id)),
                    )
                })
                .collect(),
            sensors: self
                .sensor_health()
                .into_iter()
                .map(|sensor| (sensor.name, sensor.state))
                .collect(),
            output_errors: self.output_errors,
            svids: self.held_svids.status(unix_ms() / 1000),
            host_certificate_expiry: self.ca.certificate_expires_at,
        })
    }

    fn handle_admin(&mut self, request: AdminRequest) -> String {
        match request {
            AdminRequest::Status => self.status().map_or_else(Reply::err, Reply::ok).to_line(),
            AdminRequest::Ps => self.ps().map_or_else(Reply::err, Reply::ok).to_line(),
            AdminRequest::Quarantine { agent, release } => self
                .quarantine(&agent, !release)
                .map_or_else(|err| Reply::err(err.describe()), Reply::ok)
                .to_line(),
            AdminRequest::Launch { agent } => self
                .launch(&agent)
                .map_or_else(|err| Reply::err(err.describe()), Reply::ok)
                .to_line(),
            AdminRequest::Risk(_) => Reply::<()>::err("handled by the event loop").to_line(),
            AdminRequest::Apply { policy } => {
                let result = IdentityPolicy::parse(&policy)
                    .map_err(DaemonError::from)
                    .and_then(|policy| self.apply(&policy));
                result
                    .map_or_else(
                        |err| Reply::err(format!("{:#}", anyhow::Error::from(err))),
                        Reply::ok,
                    )
                    .to_line()
            }
        }
    }
}

/// A request from a socket task to the state, with where to send the answer line.
pub(super) enum Call {
    /// A request on the admin socket, with the caller admitted at accept.
    Admin(AdminRequest, AdminCaller, oneshot::Sender<String>),
    Whoami(Result<Peer, AttestError>, oneshot::Sender<String>),
    /// A SPIFFE Workload API caller: which agent, by its control-plane id, if it may hold a
    /// credential now.
    Workload(crate::spiffe::server::Ask),
    /// A Prometheus scrape: the text exposition.
    Metrics(oneshot::Sender<String>),
    /// `GET /healthz`: whether every sensor runs, and each one's state, as JSON.
    Health(oneshot::Sender<(bool, String)>),
}

/// Answers one call from a socket task.
pub(super) fn handle_call(
    call: Call,
    state: &mut State,
    reader: &EventReader,
    output: &mut Output,
) -> Result<(), DaemonError> {
    match call {
        Call::Admin(_, caller, reply) if let Err(refusal) = caller.recheck(&state.process) => {
            // Self-protection: an agent running as root still may not steer agentd.
            tracing::warn!(pid = caller.pid(), %refusal, "refused a request on the admin socket");
            let _ = reply.send(Reply::<()>::err(refusal.to_string()).to_line());
        }
        Call::Admin(AdminRequest::Risk(request), _, reply) => {
            let (answer, written) = state.risk_request(request, output.format);
            output.notices.extend(written);
            output.flush();
            let _ = reply.send(answer);
        }
        Call::Admin(request, _, reply) => {
            if request == AdminRequest::Status {
                state.event_counts = reader.counts()?;
            }
            let _ = reply.send(state.handle_admin(request));
        }
        Call::Whoami(peer, reply) => {
            let answer = peer
                .map_err(RequestError::from)
                .and_then(|peer| state.whoami(&peer))
                .map_err(RequestError::describe);
            let _ = reply.send(answer.map_or_else(Reply::err, Reply::ok).to_line());
        }
        Call::Workload(ask) => {
            let _ = ask.reply.send(state.workload_subject(&ask.peer));
        }
        Call::Metrics(reply) => {
            state.event_counts = reader.counts()?;
            let _ = reply.send(metrics::encode(&state.metrics()?));
        }
        Call::Health(reply) => {
            let sensors = state.sensor_health();
            let health = crate::health::summary(&sensors);
            let body = serde_json::json!({ "health": health, "sensors": sensors });
            let _ = reply.send((health == "healthy", body.to_string()));
        }
    }
    Ok(())
}
