//! The daemon's state: the identity policy in force, the sensors that enforce it, the risk
//! engine and Conditional Access, and how it starts. Each job's verbs live in their own file as
//! an `impl State` block.

use std::{collections::HashSet, path::PathBuf};

use agentd_common::{AgentTag, DiscoveryMatch};
use tokio::sync::mpsc;

use super::{
    error::{DaemonError, RequestError},
    self_protect::protect_own_files,
};
use crate::{
    conditional::{DecisionSet, Standing},
    config::Config,
    control::{Detected, ToControl},
    dns, ebpf,
    events::{EventCounts, EventReader},
    identity::{Agent, AgentId, Registry, discovery::UserspaceRules},
    lineage::Lineage,
    pins::{Links, OnExit, RegistryMap},
    policy::{CompiledPolicy, network::Categories},
    risk::{RiskConfig, RiskEngine},
    sensors::{
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
pub(super) struct FileEntries {
    pub(super) objects: Vec<(agentd_common::FileRuleKey, agentd_common::FileRule)>,
    pub(super) names: Vec<(agentd_common::FileNameKey, agentd_common::FileRule)>,
    pub(super) entries: Vec<(agentd_common::FileEntryKey, agentd_common::FileRule)>,
}

/// The daemon's state: the identity policy in force and the sensors that enforce it.
pub struct State {
    pub(super) registry: Registry,
    pub(super) policy: CompiledPolicy,
    pub(super) userspace_rules: UserspaceRules,
    pub(super) process: ProcessSensor,
    pub(super) net: NetSensor,
    /// Enforcing where BPF LSM works, observing otherwise.
    pub(super) files: FileSensor,
    /// Executable mappings and anonymous execs, decided where BPF LSM works.
    pub(super) exec: ExecSensor,
    /// Metadata changes judged by the file rules, where BPF LSM works.
    pub(super) meta: MetaSensor,
    /// Reads and writes through descriptors opened before the rules last changed.
    pub(super) held: HeldSensor,
    /// Signals, ptrace and `bpf()` from agents, and changes to agentd's files by identity,
    /// denied where BPF LSM works.
    pub(super) protect: ProtectSensor,
    /// agentd's own files (configuration, state, pins, binary), by kernel object, with the
    /// access every agent is denied.
    pub(super) protected_files: Vec<(agentd_common::InodeKey, u32)>,
    pub(super) file_entries: FileEntries,
    /// The agents' exec settings in force (`EXEC_AGENTS`).
    pub(super) exec_entries: Vec<(u32, agentd_common::ExecAgent)>,
    /// The version of the network policy in force; every connection event carries it.
    pub(super) net_version: u32,
    pub(super) cgroup_root: PathBuf,
    pub(super) categories: Categories,
    pub(super) cgroup_entries: Vec<(u64, AgentTag)>,
    pub(super) discovery_entries: Vec<(agentd_common::InodeKey, DiscoveryMatch)>,
    pub(super) file_enforcement: FileEnforcement,
    /// Detections and risk per agent (docs/risk.md).
    pub(super) risk: RiskEngine,
    /// Numbers of the file rules that protect secrets.
    pub(super) sensitive_rules: HashSet<u32>,
    pub(super) risk_config: RiskConfig,
    /// Parents and programs of agents' processes, for events.
    pub(super) lineage: Lineage,
    /// Conditional Access: the decisions in force and the control plane's state.
    pub(super) ca: CaHost,
    /// Agent number → bytes its sockets had sent at the last tick.
    pub(super) egress_seen: std::collections::HashMap<u32, u64>,
    /// (rule, severity) → detections raised, and action → remediations done, for metrics.
    pub(super) detection_counts: std::collections::HashMap<(String, String), u64>,
    pub(super) remediation_counts: std::collections::HashMap<String, u64>,
    /// (delivered, dropped) kernel events, refreshed by the event loop before a status answer.
    pub(super) event_counts: EventCounts,
    /// The programs' links: adopted from the pins, or attached by this process.
    pub(super) links: Links,
    /// Where the registry of agent and rule numbers is kept across restarts, when pinning.
    pub(super) registry_map: Option<RegistryMap>,
    pub(super) on_exit: OnExit,
    /// What DNS answers taught (`resolver`).
    pub(super) learned: dns::learned::LearnedNames,
    /// The pseudo file systems found or mounted at start-up.
    pub(super) mounts: crate::pseudofs::Mounts,
    pub(super) dns_enabled: bool,
    /// Writes the event output refused so far (`Output::errors`), for status and metrics.
    pub(super) output_errors: u64,
    /// The SVIDs the Workload API holds, for status and metrics.
    pub(super) held_svids: crate::spiffe::server::Held,
}

/// Conditional Access on this host.
#[derive(Default)]
pub(super) struct CaHost {
    /// The decision set in force.
    pub(super) set: Option<DecisionSet>,
    /// The control plane's id for each agent name, adopted by agents the local policy names
    /// without one (`adopt`).
    pub(super) adopted: std::collections::HashMap<String, AgentId>,
    /// Where it is kept; `None` when no control plane is configured.
    pub(super) path: Option<PathBuf>,
    pub(super) connected: bool,
    pub(super) last_error: Option<String>,
    pub(super) applied_version: u64,
    /// Domain grants and denials, for learned addresses.
    pub(super) domains: Vec<(
        u32,
        crate::policy::network::DomainPattern,
        agentd_common::CaGrant,
    )>,
    /// The file controls in force, joined with the local file rules in the kernel.
    pub(super) files: Vec<(
        agentd_common::FileRuleKey,
        [agentd_common::CaFileControl; 3],
    )>,
    /// Agents whose decision blocks them now.
    pub(super) blocked: HashSet<u32>,
    /// The offline standing of each decision when last applied.
    pub(super) standings: Vec<Standing>,
    pub(super) pending_detections: Vec<Detected>,
    pub(super) to_control: Option<mpsc::Sender<ToControl>>,
    /// The control-plane ids of the agents last reported running here.
    pub(super) reported_agents: Vec<String>,
    /// When the host's client certificate in use expires (Unix seconds).
    pub(super) certificate_expires_at: Option<i64>,
}

impl State {
    /// Loads the kernel programs, probes file enforcement, attaches the sensors and opens the
    /// ring buffer. The policy in force is empty until [`State::apply`].
    pub(super) fn start(
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
            held_svids: crate::spiffe::server::Held::default(),
        };
        Ok((state, reader))
    }

    /// The agent named `name` in the policy in force.
    pub(super) fn agent_named(&self, name: &str) -> Result<Agent, RequestError> {
        self.policy
            .agent(name)
            .cloned()
            .ok_or_else(|| RequestError::UnknownAgent(name.to_owned()))
    }

    /// The name of the agent with `id`, for notices.
    pub(super) fn agent_name(&self, id: AgentId) -> String {
        self.policy
            .agents
            .iter()
            .find(|agent| agent.agent.id == id)
            .map_or_else(|| id.to_string(), |agent| agent.agent.name.clone())
    }
}

fn log_file_enforcement(status: &FileEnforcement) {
    match status {
        FileEnforcement::Available => {
            tracing::info!("file enforcement available: BPF LSM programs load and attach");
        }
        FileEnforcement::Unavailable(why) => tracing::warn!("file enforcement UNAVAILABLE: {why}"),
    }
}
