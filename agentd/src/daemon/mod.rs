//! `agentd run`: load the kernel programs, attach the sensors, apply the identity policy, serve
//! the local API, and print events until shut down.

mod admin;
mod compile;
mod conditional;
mod enrich;
mod error;
mod output;
mod remediation;
mod resolver;
mod self_protect;
mod serve;

use std::{
    collections::HashSet,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use agentd_common::{AgentTag, DiscoveryMatch, TagSource};
use tokio::sync::mpsc;

pub use self::error::{DaemonError, RequestError};
use self::{
    admin::handle_call,
    conditional::{CaHost, start_control},
    output::Output,
    self_protect::protect_own_files,
    serve::{bind, serve_admin, serve_identity, start_metrics},
};
use crate::{
    cgroups,
    clock::boottime_ns,
    config::Config,
    dns, ebpf,
    events::{Event, EventCounts, EventReader},
    identity::{
        Agent, AgentId, Registry,
        discovery::{ExecFacts, UserspaceRules},
        policy::{CompiledPolicy, IdentityPolicy},
    },
    lineage::Lineage,
    netpolicy::Categories,
    pins::{Links, OnExit, RegistryMap},
    risk::{RiskConfig, RiskEngine},
    sensors::{
        SensorError,
        exec::ExecSensor,
        files::{self, FileEnforcement, FileSensor},
        files_held::HeldSensor,
        files_meta::MetaSensor,
        net::NetSensor,
        process::ProcessSensor,
        protect::ProtectSensor,
    },
};

/// The agents' file rules as the kernel holds them.
#[derive(Clone, Debug, Default)]
struct FileEntries {
    objects: Vec<(agentd_common::FileRuleKey, agentd_common::FileRule)>,
    names: Vec<(agentd_common::FileNameKey, agentd_common::FileRule)>,
    entries: Vec<(agentd_common::FileEntryKey, agentd_common::FileRule)>,
}

/// The daemon's state: the identity policy in force and the sensors that enforce it.
pub struct State {
    registry: Registry,
    policy: CompiledPolicy,
    userspace_rules: UserspaceRules,
    process: ProcessSensor,
    net: NetSensor,
    /// Enforcing where BPF LSM works, observing otherwise.
    files: FileSensor,
    /// Executable mappings and anonymous execs, decided where BPF LSM works.
    exec: ExecSensor,
    /// Metadata changes judged by the file rules, where BPF LSM works.
    meta: MetaSensor,
    /// Reads and writes through descriptors opened before the rules last changed.
    held: HeldSensor,
    /// Signals, ptrace and `bpf()` from agents, and changes to agentd's files by identity,
    /// denied where BPF LSM works.
    protect: ProtectSensor,
    /// agentd's own files (configuration, state, pins, binary), by kernel object, with the
    /// access every agent is denied.
    protected_files: Vec<(agentd_common::InodeKey, u32)>,
    file_entries: FileEntries,
    /// The agents' exec settings in force (`EXEC_AGENTS`).
    exec_entries: Vec<(u32, agentd_common::ExecAgent)>,
    /// The version of the network policy in force; every connection event carries it.
    net_version: u32,
    cgroup_root: PathBuf,
    categories: Categories,
    cgroup_entries: Vec<(u64, AgentTag)>,
    discovery_entries: Vec<(agentd_common::InodeKey, DiscoveryMatch)>,
    file_enforcement: FileEnforcement,
    /// Detections and risk per agent (docs/risk.md).
    risk: RiskEngine,
    /// Numbers of the file rules that protect secrets.
    sensitive_rules: HashSet<u32>,
    risk_config: RiskConfig,
    /// Parents and programs of agents' processes, for events.
    lineage: Lineage,
    /// Conditional Access: the decisions in force and the control plane's state.
    ca: CaHost,
    /// Agent number → bytes its sockets had sent at the last tick.
    egress_seen: std::collections::HashMap<u32, u64>,
    /// (rule, severity) → detections raised, and action → remediations done, for metrics.
    detection_counts: std::collections::HashMap<(String, String), u64>,
    remediation_counts: std::collections::HashMap<String, u64>,
    /// (delivered, dropped) kernel events, refreshed by the event loop before a status answer.
    event_counts: EventCounts,
    /// The programs' links: adopted from the pins, or attached by this process.
    links: Links,
    /// Where the registry of agent and rule numbers is kept across restarts, when pinning.
    registry_map: Option<RegistryMap>,
    on_exit: OnExit,
    /// What DNS answers taught (`resolver`).
    learned: dns::learned::LearnedNames,
    /// The pseudo file systems found or mounted at start-up.
    mounts: crate::pseudofs::Mounts,
    dns_enabled: bool,
    /// Writes the event output refused so far (`Output::errors`), for status and metrics.
    output_errors: u64,
}

impl State {
    /// Loads the kernel programs, probes file enforcement, attaches the sensors and opens the
    /// ring buffer. The policy in force is empty until [`State::apply`].
    fn start(
        config: &Config,
        cgroup_root: PathBuf,
        categories: Categories,
        mounts: crate::pseudofs::Mounts,
    ) -> Result<(Self, EventReader), DaemonError> {
        let risk = RiskEngine::new(config.risk.clone()).map_err(DaemonError::Risk)?;
        let mut object = ebpf::load_with(&ebpf::LoadOptions {
            max_tagged_processes: config
                .identity
                .max_tagged_processes
                .unwrap_or_else(ebpf::running_kernel_tag_capacity),
            max_processes_per_agent: config.identity.max_processes_per_agent,
            max_sockets_per_agent: config.network.max_sockets_per_agent,
            ring_buffer_bytes: config.events.ring_buffer_bytes,
            pin_root: Some(config.bpf.pin_path.clone()),
        })?;
        let mut links = match &object.pins {
            Some(layout) => Links::open(layout)?,
            None => Links::unpinned(),
        };
        let registry_map = object.pins.as_ref().map(RegistryMap::open).transpose()?;
        let mut registry = registry_map
            .as_ref()
            .map(RegistryMap::load)
            .transpose()?
            .unwrap_or_default();
        if links.adopting() {
            tracing::info!(
                pins = %config.bpf.pin_path.display(),
                "adopting the programs an earlier agentd left attached"
            );
        }
        let file_enforcement = files::probe_enforcement(&mut object);
        log_file_enforcement(&file_enforcement);
        // Every BPF LSM program goes in only where the probe found them allowed.
        let lsm = file_enforcement == FileEnforcement::Available;
        let files = FileSensor::attach(&mut object, lsm, &mut links)?;
        let exec = ExecSensor::attach(&mut object, lsm, &mut links)?;
        let meta = MetaSensor::attach(&mut object, lsm, &mut links)?;
        let held = HeldSensor::attach(&mut object, lsm, &mut links)?;
        let process = ProcessSensor::attach(&mut object, lsm, &mut links)?;
        let mut net = NetSensor::attach(&mut object, &cgroup_root, lsm, &mut links)?;
        net.set_allowed_report_interval(config.network.allowed_report_interval_ms)?;
        let mut protect = ProtectSensor::attach(&mut object, lsm, &mut links)?;
        protect.protect(&[std::process::id()])?;
        let protected_files = protect_own_files(config, &mut protect, &mut registry)?;
        let reader = EventReader::new(&mut object)?;
        let state = Self {
            exec,
            meta,
            held,
            protect,
            protected_files,
            registry,
            links,
            registry_map,
            on_exit: config.bpf.on_exit,
            policy: CompiledPolicy::default(),
            userspace_rules: UserspaceRules::default(),
            process,
            net,
            files,
            file_entries: FileEntries::default(),
            exec_entries: Vec::new(),
            net_version: 0,
            cgroup_root,
            categories,
            cgroup_entries: Vec::new(),
            discovery_entries: Vec::new(),
            file_enforcement,
            event_counts: EventCounts::default(),
            risk,
            sensitive_rules: HashSet::new(),
            risk_config: config.risk.clone(),
            lineage: Lineage::default(),
            ca: CaHost::default(),
            egress_seen: std::collections::HashMap::new(),
            detection_counts: std::collections::HashMap::new(),
            remediation_counts: std::collections::HashMap::new(),
            learned: dns::learned::LearnedNames::default(),
            mounts,
            dns_enabled: config.dns.enabled,
            output_errors: 0,
        };
        Ok((state, reader))
    }

    /// Tags `pid` and, where they are not tagged yet, the descendants it has already forked.
    fn tag_tree(&mut self, pid: u32, tag: AgentTag) {
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

    /// Takes a batch of kernel events in: each is checked for discovery and fail-closed, then
    /// enriched, written, and assessed (its notices written straight after it).
    fn on_events(&mut self, batch: &mut Vec<Event>, output: &mut Output) {
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
    }

    /// Once a second: the pinned registry, Conditional Access (expiry, reports to the control
    /// plane), egress and risk decay, and the alarm about lost events.
    fn tick(&mut self, output: &mut Output, reader: &EventReader) -> Result<(), DaemonError> {
        if let Err(err) = self.persist_registry() {
            tracing::warn!(err = %anyhow::Error::from(err), "saving agent numbers to the pinned registry");
        }
        let notices = self.ca_tick(output.format);
        output.notices.extend(notices);
        self.report_agents();
        self.send_detections();
        let now = boottime_ns();
        self.assess_egress(now, &mut output.notices, output.format);
        let outcome = self.risk.tick(now);
        if !outcome.is_empty() {
            self.conclude(&outcome, None, &mut output.notices, output.format);
        }
        output.check_losses(&reader.counts()?);
        self.output_errors = output.errors;
        output.flush();
        Ok(())
    }

    fn sweep(&mut self) -> Result<(), SensorError> {
        let removed = self.process.sweep()?;
        if removed > 0 {
            tracing::info!(removed, "removed the tags of processes that are gone");
        }
        Ok(())
    }

    /// The agent named `name` in the policy in force.
    fn agent_named(&self, name: &str) -> Result<Agent, RequestError> {
        self.policy
            .agent(name)
            .cloned()
            .ok_or_else(|| RequestError::UnknownAgent(name.to_owned()))
    }

    /// The name of the agent with `id`, for notices.
    fn agent_name(&self, id: AgentId) -> String {
        self.policy
            .agents
            .iter()
            .find(|agent| agent.agent.id == id)
            .map_or_else(|| id.to_string(), |agent| agent.agent.name.clone())
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

fn log_file_enforcement(status: &FileEnforcement) {
    match status {
        FileEnforcement::Available => {
            tracing::info!("file enforcement available: BPF LSM programs load and attach");
        }
        FileEnforcement::Unavailable(why) => tracing::warn!("file enforcement UNAVAILABLE: {why}"),
    }
}

/// The category database from `path`, or the shipped sample.
pub fn load_categories(path: Option<&Path>) -> Result<Categories, DaemonError> {
    let Some(path) = path else {
        return Ok(Categories::sample());
    };
    let invalid = |reason: String| DaemonError::Categories {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| invalid(err.to_string()))?;
    Categories::parse(&text).map_err(invalid)
}

/// Everything `run` needs from the command line and the config file.
pub struct RunOptions {
    pub config: Config,
    /// The identity policy to apply at start.
    pub policy: IdentityPolicy,
}

/// Runs until `shutdown` completes. Everything attached is detached on return, by drop.
#[expect(
    clippy::too_many_lines,
    reason = "start-up, the main loop and the exit path read in order here; splitting the \
              daemon by job is its own change"
)]
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let RunOptions { config, policy } = options;
    let cgroup_root = cgroups::root().map_err(DaemonError::Cgroup)?;
    let categories = load_categories(config.network.categories_file.as_deref())?;
    // Refuse a bad policy before anything is loaded.
    policy.compile(&cgroup_root, &categories)?;

    let mounts = crate::pseudofs::prepare(&config.bpf.pin_path, config.bpf.mount_filesystems);
    // Whatever a failed start-up pins is removed again; an earlier agentd's pins stay.
    let pins_before = crate::pins::Snapshot::take(&config.bpf.pin_path);
    let (mut state, mut reader) = State::start(&config, cgroup_root, categories, mounts)
        .inspect_err(|_| pins_before.restore())?;
    let (mut output, mut from_control, _control_tx, control_task) = match async {
        state.apply(&policy)?;
        let mut output = Output::open(&config.events)?;
        let (from_control, control_tx, control_task) =
            start_control(&config, &mut state, &mut output);
        // The local policy and the kept decisions are in the maps: this build's links take
        // over from an earlier build's (an upgrade), or were adopted as they are.
        state.commit_links()?;
        Ok::<_, DaemonError>((output, from_control, control_tx, control_task))
    }
    .await
    {
        Ok(started) => started,
        Err(err) => {
            drop(state);
            drop(reader);
            pins_before.restore();
            return Err(err);
        }
    };

    let (dns_tx, mut dns_requests) = mpsc::channel::<dns::Request>(256);
    let (calls_tx, mut calls) = mpsc::channel(64);
    let served = async {
        let dns_task = resolver::start_dns(&config.dns, &mut state, dns_tx).await?;
        let admin = bind(&config.api.admin_socket, 0o600)?;
        let identity = bind(&config.api.identity_socket, 0o666)?;
        let metrics_task = start_metrics(config.metrics.listen, &calls_tx).await?;
        Ok::<_, DaemonError>((dns_task, admin, identity, metrics_task))
    }
    .await;
    let (dns_task, admin, identity, metrics_task) = match served {
        Ok(served) => served,
        Err(err) => {
            if let Some(task) = control_task {
                task.abort();
            }
            // The policy is in force and the links are committed: leave as a stop would.
            finish(&config, &state, reader)?;
            return Err(err);
        }
    };
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let admin_task = tokio::spawn(serve_admin(
        admin,
        calls_tx.clone(),
        state.process.reader()?,
    ));
    let identity_task = tokio::spawn(serve_identity(identity, calls_tx));
    tracing::info!(
        admin = %config.api.admin_socket.display(),
        identity = %config.api.identity_socket.display(),
        "process sensor attached; printing events (Ctrl-C to stop)"
    );

    // Under systemd (Type=notify): the sensors are attached and the sockets bound.
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%err, "telling systemd that agentd is ready");
    }
    let mut batch = Vec::new();
    let sweep_every = Duration::from_secs(config.identity.sweep_interval_secs);
    let mut sweep = tokio::time::interval(if sweep_every.is_zero() {
        Duration::from_hours(1)
    } else {
        sweep_every
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            // Shutdown first, every time: a busy event stream must not starve it.
            biased;
            () = &mut shutdown => break Ok(()),
            // Then calls (apply, quarantine, status): rare and short, they must not wait behind
            // a busy event stream.
            Some(call) = calls.recv() => {
                // Errors leave the loop by `break`, never `?`: the exit path below must run.
                if let Err(err) = handle_call(call, &mut state, &reader, &mut output) {
                    break Err(err);
                }
            }
            // Then the timers (the risk tick reads egress and decays risk, the sweep and the
            // expiry of learned addresses): ready once a second at most, they cannot starve
            // the event stream, and a busy stream must not starve them.
            _ = expiry.tick(), if !state.learned.is_empty() => {
                if let Err(err) = state.sync_learned() {
                    tracing::warn!(%err, "expiring learned addresses");
                }
            }
            _ = tick.tick() => {
                if let Err(err) = state.tick(&mut output, &reader) {
                    break Err(err);
                }
            }
            _ = sweep.tick(), if !sweep_every.is_zero() => {
                if let Err(err) = state.sweep() {
                    tracing::warn!(%err, "sweeping stale tags");
                }
            }
            read = reader.read_batch(&mut batch) => {
                if let Err(err) = read {
                    break Err(err.into());
                }
                state.on_events(&mut batch, &mut output);
            }
            Some(update) = from_control.recv() => {
                let notices = state.on_control(update, output.format);
                output.notices.extend(notices);
                output.flush();
            }
            Some(request) = dns_requests.recv() => state.on_dns(request),
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for task in [
        Some(admin_task),
        Some(identity_task),
        metrics_task,
        dns_task,
        control_task,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.api.admin_socket);
    let _ = std::fs::remove_file(&config.api.identity_socket);
    let finished = finish(&config, &state, reader);
    result.and(finished)
}

/// Logs the delivery figures, then leaves the programs enforcing or tears them down.
fn finish(config: &Config, state: &State, reader: EventReader) -> Result<(), DaemonError> {
    let delivery = reader.stats();
    tracing::info!(
        delivered = delivery.delivered,
        undecodable = delivery.undecodable,
        dropped = reader.dropped()?,
        tags_lost = state.process.insert_failures()?,
        on_exit = ?state.on_exit,
        "shutting down"
    );
    if state.on_exit == OnExit::Detach {
        drop(reader);
        let links = crate::pins::teardown(&config.bpf.pin_path)?;
        tracing::info!(links, "detached the programs and removed the pins");
    } else {
        tracing::info!(
            pins = %config.bpf.pin_path.display(),
            "the programs stay attached; `agentd teardown` removes them"
        );
    }
    Ok(())
}
