//! `agentd run`: load the kernel programs, attach the sensors, apply the identity policy, serve
//! the local API, and print events until shut down.

mod resolver;

use std::{
    collections::HashSet,
    future::Future,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use agentd_common::{
    AgentTag, DiscoveryMatch, NetAgentPolicy, TagSource, file_access, file_name_kind, net_action,
};
use agentd_proto::v1 as proto;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    access::{self, Clocks, DecisionSet, Standing},
    api::{
        self, AdminRequest, AgentRef, Applied, ControlPlaneStatus, IdentityDocument, LaunchTarget,
        ProcessInfo, Quarantined, Reply, RiskRequest, Status, TagInfo,
    },
    assess::{self, Notice},
    cgroups,
    clock::{boottime_ns, boottime_ticks, unix_ms},
    config::{Config, EventsConfig, OutputFormat},
    control::{FromControl, ToControl},
    dns,
    ebpf::{self, LoadError},
    events::{Event, EventCounts, EventReader, ReaderError, SCHEMA_VERSION},
    file_links,
    filepolicy::FileTarget,
    identity::{
        Agent, AgentId, Registry,
        attest::Peer,
        caller::AdminCaller,
        discovery::{ExecFacts, RuleMatch, UserspaceRules, looks_like_agent},
        policy::{CompiledPolicy, IdentityPolicy, Matcher, PolicyError},
    },
    lineage::{Ancestor, Lineage},
    metrics,
    netpolicy::{Categories, Mode, layout},
    pins::{Links, OnExit, RegistryMap},
    risk::{
        self, AgentRisk, DetectionId, Outcome, Remediation, RiskConfig, RiskConfigError,
        RiskEngine, RiskLevel,
    },
    sensors::{
        SensorError,
        exec::ExecSensor,
        files::{self, FileEnforcement, FileMode, FileSensor},
        files_held::{self, HeldSensor},
        files_meta::MetaSensor,
        net::{NetSensor, NetTables},
        process::{ProcessSensor, TagReader},
        protect::ProtectSensor,
    },
    sink,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cgroup v2")]
    Cgroup(#[source] std::io::Error),
    #[error("the category database {path}: {reason}")]
    Categories { path: String, reason: String },
    #[error("creating the launch cgroup {path}")]
    LaunchCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing events")]
    Output(#[source] std::io::Error),
    #[error("opening the event output {path}")]
    OpenOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the risk configuration")]
    Risk(#[source] RiskConfigError),
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
}

/// How a tag reads in events, `ps` and identity documents.
fn tag_info(registry: &Registry, tag: AgentTag) -> TagInfo {
    let source = match TagSource::from_raw(tag.source) {
        Some(TagSource::Launch) => "launch",
        Some(TagSource::Cgroup) => "cgroup",
        Some(TagSource::Discovery) => "discovery",
        None => "unknown",
    };
    TagInfo {
        source: source.to_owned(),
        inherited: tag.flags & AgentTag::FLAG_INHERITED != 0,
        rule: (tag.rule != 0).then(|| registry.rule(tag.rule).unwrap_or("?").to_owned()),
    }
}

fn agent_ref(registry: &Registry, tag: AgentTag) -> Option<AgentRef> {
    registry.agent(tag.agent).map(|agent| AgentRef {
        id: agent.id,
        name: agent.name.clone(),
    })
}

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

    /// Validates `policy` as a whole, then makes it the one in force. On any error nothing
    /// changes: the policy in force stays as it was.
    pub fn apply(&mut self, policy: &IdentityPolicy) -> Result<Applied, DaemonError> {
        let compiled = policy.compile(&self.cgroup_root, &self.categories)?;
        // Launch cgroups first: creating a directory changes nothing that is enforced.
        let mut launch_dirs = Vec::new();
        for agent in &compiled.agents {
            let dir = cgroups::launch_dir(&self.cgroup_root, &agent.agent.name);
            let id = cgroups::ensure(&dir).map_err(|source| DaemonError::LaunchCgroup {
                path: dir.clone(),
                source,
            })?;
            launch_dirs.push((dir, id));
        }
        let mut cgroup_entries = Vec::new();
        let mut tag_dirs = Vec::new();
        for (agent, (dir, launch_id)) in compiled.agents.iter().zip(launch_dirs) {
            let index = self.registry.intern_agent(&agent.agent);
            let launch = AgentTag::new(index, TagSource::Launch, 0);
            cgroup_entries.push((launch_id, launch));
            tag_dirs.push((dir, launch));
            for (path, id) in &agent.cgroups {
                let tag = AgentTag::new(index, TagSource::Cgroup, 0);
                cgroup_entries.push((*id, tag));
                tag_dirs.push((self.cgroup_root.join(path.trim_start_matches('/')), tag));
            }
        }
        let (kernel_rules, userspace_rules) = self.discovery_tables(&compiled);

        let net_version = self.net_version + 1;
        let tables = self.net_tables(&compiled, net_version);
        let (file_entries, sensitive_rules) = self.file_rules(&compiled);
        let exec_agents = self.exec_agents(&compiled);
        let quarantine_rule = self.registry.intern_rule("quarantine-allow");
        let unresolved_rule = self.registry.intern_rule("unresolved-location");
        self.files.set_unresolved_rule(unresolved_rule);
        // The numbers go into the pinned registry before any kernel map holds them.
        self.persist_registry()?;

        self.process.set_cgroups(&cgroup_entries)?;
        let files = &mut self.files;
        let objects = access::merge_file_rules(&file_entries.objects, &self.ca.files);
        let rest = self
            .process
            .set_discovery(&kernel_rules)
            .and_then(|()| files.set_rules(&objects, &file_entries.names, &file_entries.entries))
            .and_then(|()| self.exec.set_agents(&exec_agents))
            .and_then(|()| self.net.apply(&tables))
            .and_then(|()| {
                self.net
                    .set_quarantine_allow(&compiled.network.quarantine_allow, quarantine_rule)
            });
        if let Err(err) = rest {
            // Put the identity maps back as they were: the old policy stays whole. The network
            // maps switch generations atomically, so a failed network apply changed nothing.
            self.process.set_cgroups(&self.cgroup_entries)?;
            self.process.set_discovery(&self.discovery_entries)?;
            self.files.set_rules(
                &access::merge_file_rules(&self.file_entries.objects, &self.ca.files),
                &self.file_entries.names,
                &self.file_entries.entries,
            )?;
            self.exec.set_agents(&self.exec_entries)?;
            return Err(err.into());
        }
        self.net_version = net_version;
        let applied = Applied {
            agents: compiled.agents.len(),
            rules: compiled.rules.len(),
            network_version: net_version,
        };
        self.cgroup_entries = cgroup_entries;
        self.discovery_entries = kernel_rules;
        self.file_entries = file_entries;
        self.exec_entries = exec_agents;
        self.sensitive_rules = sensitive_rules;
        self.userspace_rules = userspace_rules;
        for agent in &compiled.agents {
            // Validated when the configuration loaded.
            if let Ok(baseline) = self.risk_config.baseline_for(&agent.agent.name) {
                self.risk.set_baseline(agent.agent.id, baseline);
            }
        }
        self.policy = compiled;
        // Domain rules may have changed: recompute what the answers already seen allow.
        if let Err(err) = self.sync_learned() {
            tracing::warn!(%err, "applying domain rules to learned addresses");
        }

        // Processes already in an agent's cgroup (a running systemd unit) are tagged now; new
        // ones are tagged by the kernel when they exec or fork.
        for (dir, tag) in tag_dirs {
            for pid in cgroups::procs(&dir).unwrap_or_default() {
                self.tag_tree(pid, tag);
            }
        }
        self.refresh_held();
        tracing::info!(
            agents = applied.agents,
            rules = applied.rules,
            "identity policy applied"
        );
        Ok(applied)
    }

    /// Writes new agent and rule numbers to the pinned registry, so that an agentd adopting the
    /// kernel maps reads the tags as this one wrote them.
    fn persist_registry(&mut self) -> Result<(), crate::pins::PinError> {
        if self.registry.take_changed()
            && let Some(map) = &mut self.registry_map
            && let Err(err) = map.save(&self.registry)
        {
            // Try again next time.
            self.registry.mark_changed();
            return Err(err);
        }
        Ok(())
    }

    /// Makes the programs attached by this process the pinned ones, detaching an earlier
    /// build's (an upgrade); once the policy is in the maps.
    pub fn commit_links(&mut self) -> Result<(), crate::pins::PinError> {
        self.links.commit()
    }

    /// Splits the discovery rules into the kernel's (by executable) and userspace's (by hash,
    /// by script).
    fn discovery_tables(
        &mut self,
        compiled: &CompiledPolicy,
    ) -> (
        Vec<(agentd_common::InodeKey, DiscoveryMatch)>,
        UserspaceRules,
    ) {
        let mut kernel_rules = Vec::new();
        let mut sha256 = Vec::new();
        let mut scripts = Vec::new();
        for rule in &compiled.rules {
            let agent = compiled
                .agent(&rule.agent)
                .expect("compile checked that every rule names an agent of the policy");
            let found = RuleMatch {
                agent: self.registry.intern_agent(agent),
                rule: self.registry.intern_rule(&rule.id),
            };
            match rule.matcher {
                Matcher::Exe(exe) => kernel_rules.push((
                    exe,
                    DiscoveryMatch {
                        agent: found.agent,
                        rule: found.rule,
                    },
                )),
                Matcher::Sha256(digest) => sha256.push((found, digest)),
                Matcher::Script {
                    interpreter,
                    script,
                } => scripts.push((found, interpreter, script)),
            }
        }

        (kernel_rules, UserspaceRules::new(sha256, scripts))
    }

    /// The kernel's network tables for `compiled`, stamped with `version`.
    fn net_tables(&mut self, compiled: &CompiledPolicy, version: u32) -> NetTables {
        let mut tables = NetTables::default();
        for agent in &compiled.agents {
            let Some(network) = &agent.network else {
                continue;
            };
            let index = self.registry.intern_agent(&agent.agent);
            tables.agents.push((
                index,
                NetAgentPolicy {
                    version,
                    default_action: network.default.kernel_value(),
                    audit: u8::from(network.mode == Mode::Audit),
                    raw_sockets: network.raw_sockets.kernel_value(),
                    pad: 0,
                    socket_families: crate::netfamily::kernel_bits(&network.socket_families),
                },
            ));
            let lists = layout(network, |name| self.registry.intern_rule(name))
                .expect("compile checked that every prefix's list fits");
            tables.rules.push((index, lists));
        }
        for prefix in &compiled.network.blocklist {
            let rule = self.registry.intern_rule(&format!("blocklist:{prefix}"));
            tables.blocklist.push((*prefix, rule));
        }
        tables
    }

    /// The kernel's file rules for `compiled`, and the numbers of those that protect secrets.
    fn file_rules(&mut self, compiled: &CompiledPolicy) -> (FileEntries, HashSet<u32>) {
        let mut entries = FileEntries::default();
        let mut sensitive = HashSet::new();
        let (mut scan_entries, mut scan_marks) =
            (file_links::SCAN_ENTRIES, file_links::MARKED_FILES);
        for agent in &compiled.agents {
            let Some(files) = &agent.files else { continue };
            let index = self.registry.intern_agent(&agent.agent);
            let first_object = entries.objects.len();
            let mut dirs = Vec::new();
            for rule in &files.rules {
                let value = agentd_common::FileRule::local(
                    rule.access,
                    rule.action.kernel_value(),
                    files.mode == Mode::Audit,
                    self.registry.intern_rule(&rule.name),
                );
                if rule.sensitive {
                    sensitive.insert(value.rule);
                }
                if let Some(entry) = &rule.entry {
                    entries
                        .entries
                        .push((files::entry_key(index, entry), value));
                }
                if let Some(path) = &rule.path
                    && path.is_dir()
                {
                    dirs.push((path.clone(), value));
                }
                match &rule.target {
                    FileTarget::Object(inode) => entries.objects.push((
                        agentd_common::FileRuleKey {
                            agent: index,
                            pad: 0,
                            inode: *inode,
                        },
                        value,
                    )),
                    FileTarget::Name(name) => entries
                        .names
                        .push((files::name_key(index, file_name_kind::NAME, name), value)),
                    FileTarget::Extension(extension) => entries.names.push((
                        files::name_key(index, file_name_kind::EXTENSION, extension),
                        value,
                    )),
                }
            }
            // Files under the directory rules with names elsewhere get the rule as their own.
            let own: std::collections::HashMap<agentd_common::InodeKey, agentd_common::FileRule> =
                entries.objects[first_object..]
                    .iter()
                    .map(|(key, value)| (key.inode, *value))
                    .collect();
            let linked = file_links::scan(&dirs, &own, &mut scan_entries, &mut scan_marks);
            if linked.truncated {
                tracing::warn!(
                    agent = %agent.agent.name,
                    entries = file_links::SCAN_ENTRIES,
                    files = file_links::MARKED_FILES,
                    "the directory rules' trees hold more than agentd looks through at an apply: \
                     files past that with hard links elsewhere are covered only through their \
                     names inside the directories"
                );
            }
            entries
                .objects
                .extend(linked.marked.into_iter().map(|(inode, value)| {
                    (
                        agentd_common::FileRuleKey {
                            agent: index,
                            pad: 0,
                            inode,
                        },
                        value,
                    )
                }));
        }
        // Self-protection: no agent reads or writes agentd's own files. Last, so that it wins
        // over an agent's rule on the same object.
        if !self.protected_files.is_empty() {
            let rule = self.registry.intern_rule(SELF_PROTECTION_RULE);
            for agent in &compiled.agents {
                let index = self.registry.intern_agent(&agent.agent);
                for (inode, access) in &self.protected_files {
                    let key = agentd_common::FileRuleKey {
                        agent: index,
                        pad: 0,
                        inode: *inode,
                    };
                    entries.objects.retain(|(existing, _)| *existing != key);
                    entries.objects.push((
                        key,
                        agentd_common::FileRule::local(*access, net_action::DENY, false, rule),
                    ));
                }
            }
        }
        (entries, sensitive)
    }

    /// The kernel's exec settings for `compiled`: one entry per agent (an agent without one
    /// would be denied anonymous execs all the same, but reported under no rule).
    fn exec_agents(&mut self, compiled: &CompiledPolicy) -> Vec<(u32, agentd_common::ExecAgent)> {
        let rule = self.registry.intern_rule(ANONYMOUS_EXEC_RULE);
        compiled
            .agents
            .iter()
            .map(|agent| {
                let files = agent.files.as_ref();
                (
                    self.registry.intern_agent(&agent.agent),
                    agentd_common::ExecAgent {
                        allow_anonymous: u8::from(files.is_some_and(|f| f.allow_anonymous_exec)),
                        audit: u8::from(files.is_some_and(|f| f.mode == Mode::Audit)),
                        pad: 0,
                        rule,
                    },
                )
            })
            .collect()
    }

    /// Lists the files agents' processes hold open now, so that the rules just written judge
    /// their reads and writes too (`sensors::files_held`). Best effort: a failure is logged and
    /// leaves the previous list.
    fn refresh_held(&mut self) {
        if !self.held.active() {
            return;
        }
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
        }
    }

    fn quarantine(&mut self, agent: &str, on: bool) -> Result<Quarantined, String> {
        let found = self
            .policy
            .agent(agent)
            .ok_or_else(|| format!("unknown agent {agent:?}: it is not in the policy"))?
            .clone();
        let index = self.registry.intern_agent(&found);
        let rule = self.registry.intern_rule("quarantine");
        let files_on = on || self.ca.blocked.contains(&index);
        self.net
            .set_quarantine(index, on)
            .and_then(|()| self.files.set_quarantine(index, rule, files_on))
            .map_err(|err| format!("{:#}", anyhow::Error::from(err)))?;
        if on {
            self.refresh_held();
        }
        tracing::warn!(agent, quarantined = on, "quarantine changed");
        Ok(Quarantined {
            agent: agent.to_owned(),
            quarantined: on,
        })
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
            tracing::error!(agent = %name, %err, "quarantining an agent whose process could not be tagged");
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

    fn sweep(&mut self) -> Result<(), SensorError> {
        let removed = self.process.sweep()?;
        if removed > 0 {
            tracing::info!(removed, "removed the tags of processes that are gone");
        }
        Ok(())
    }

    fn ps(&self) -> Result<Vec<ProcessInfo>, SensorError> {
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

    fn launch(&self, agent: &str) -> Result<LaunchTarget, String> {
        let found = self
            .policy
            .agent(agent)
            .ok_or_else(|| format!("unknown agent {agent:?}: it is not in the identity policy"))?;
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

    fn status(&self) -> Result<Status, SensorError> {
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
    fn whoami(&self, peer: &Peer) -> Result<IdentityDocument, String> {
        let tag = self
            .process
            .tag_of(peer.pid)
            .map_err(|err| err.to_string())?;
        if !peer.alive() {
            return Err("the connecting process has exited".to_owned());
        }
        let Some(tag) = tag else {
            return Err(format!(
                "not an agent: process {} carries no agent tag",
                peer.pid
            ));
        };
        let agent = agent_ref(&self.registry, tag)
            .ok_or_else(|| format!("not an agent: unknown agent index {}", tag.agent))?;
        Ok(IdentityDocument {
            pid: peer.pid,
            agent,
            tag: tag_info(&self.registry, tag),
            attestation: peer.pinning,
        })
    }

    /// Puts a Conditional Access decision set in force: kernel tables first (grants before the
    /// flags that restrict), then file-write blocks, then the set is kept on disk. On any error
    /// the previous set stays in force and the error is returned. Returns notice lines.
    fn apply_decisions(
        &mut self,
        mut set: DecisionSet,
        format: OutputFormat,
    ) -> Result<Vec<String>, String> {
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
        let mut index_of = |decision: &access::AgentDecision| {
            set.decisions
                .iter()
                .position(|d| std::ptr::eq(d, decision))
                .and_then(|i| indices[i])
        };
        let blocked = |decision: &access::AgentDecision| {
            set.decisions
                .iter()
                .position(|d| std::ptr::eq(d, decision))
                .is_some_and(|i| standings[i] == Standing::FailClosed)
        };
        let registry = &mut self.registry;
        let tables = access::tables(
            &set,
            &mut index_of,
            &blocked,
            &mut |source| registry.intern_rule(source),
            &|path| crate::inode::inode_key(Path::new(path)),
            &self.categories,
            clocks,
        )
        .map_err(|err| err.to_string())?;
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
        let notices = if self.ca.applied_version == set.version {
            Vec::new()
        } else {
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
    fn write_ca_tables(&mut self, tables: &access::CaTables) -> Result<(), String> {
        let (names, entries) = (&self.file_entries.names, &self.file_entries.entries);
        self.files
            .set_rules(
                &access::merge_file_rules(&self.file_entries.objects, &tables.files),
                names,
                entries,
            )
            .map_err(|err| format!("{:#}", anyhow::Error::from(err)))?;
        if let Err(err) = self.net.set_conditional_access(tables) {
            if let Err(restore) = self.files.set_rules(
                &access::merge_file_rules(&self.file_entries.objects, &self.ca.files),
                names,
                entries,
            ) {
                tracing::error!(%restore, "restoring the previous file controls");
            }
            return Err(format!("{:#}", anyhow::Error::from(err)));
        }
        self.ca.files.clone_from(&tables.files);
        Ok(())
    }

    /// Denies the file writes of agents the decisions block, and lifts it from those no longer
    /// blocked unless an admin or the risk engine quarantined them.
    fn block_file_writes(&mut self, now_blocked: &HashSet<u32>) -> Result<(), String> {
        let manual: HashSet<u32> = self
            .net
            .quarantined()
            .map_err(|err| err.to_string())?
            .into_iter()
            .collect();
        let rule = self.registry.intern_rule("conditional-access/block");
        for index in now_blocked.union(&self.ca.blocked) {
            let on = now_blocked.contains(index) || manual.contains(index);
            self.files
                .set_quarantine(*index, rule, on)
                .map_err(|err| err.to_string())?;
        }
        Ok(())
    }

    /// Hands the pending detections to the control-plane task, after the agents running here:
    /// the control plane takes detections only for agents the host reported running, and an
    /// agent whose processes already exited is reported while it has detections to send.
    fn send_detections(&mut self) {
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
    fn report_agents(&mut self) {
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
    fn ca_tick(&mut self, format: OutputFormat) -> Vec<String> {
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
            tracing::error!(%err, "re-applying the decisions");
            Vec::new()
        })
    }

    /// What the control plane task reported.
    fn on_control(&mut self, update: FromControl, format: OutputFormat) -> Vec<String> {
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
                        tracing::error!(version, %err, "refused a decision set; the previous one stays");
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
            FromControl::Disconnected(why) => {
                self.ca.connected = false;
                self.ca.last_error = Some(why);
                Vec::new()
            }
        }
    }

    /// The figures `/metrics` serves.
    fn metrics(&self) -> Result<metrics::Snapshot, SensorError> {
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
        })
    }

    /// The agent named `name` in the policy in force.
    fn agent_named(&self, name: &str) -> Result<Agent, String> {
        self.policy
            .agent(name)
            .cloned()
            .ok_or_else(|| format!("unknown agent {name:?}: it is not in the policy"))
    }

    /// The name of the agent with `id`, for notices.
    fn agent_name(&self, id: AgentId) -> String {
        self.policy
            .agents
            .iter()
            .find(|agent| agent.agent.id == id)
            .map_or_else(|| id.to_string(), |agent| agent.agent.name.clone())
    }

    /// Feeds `event` to the risk engine and carries out what it concludes.
    fn assess(&mut self, event: &Event, notices: &mut Vec<String>, format: OutputFormat) {
        for observation in assess::observations(event, &self.registry, &self.sensitive_rules) {
            let outcome = self.risk.observe(&observation);
            if !outcome.is_empty() {
                self.conclude(&outcome, Some(observation.ktime_ns), notices, format);
            }
        }
    }

    /// Writes the notices for `outcome` and carries out its remediations. `trigger_ns` is the
    /// kernel time of the event behind it, for the latency of the remediation.
    fn conclude(
        &mut self,
        outcome: &Outcome,
        trigger_ns: Option<u64>,
        notices: &mut Vec<String>,
        format: OutputFormat,
    ) {
        for detection in &outcome.detections {
            // The control plane knows the agent by its own id: the one its decisions carry.
            let name = self.agent_name(detection.agent);
            let registered = self.ca.set.as_ref().and_then(|set| {
                set.decisions
                    .iter()
                    .find(|decision| decision.agent_name == name)
                    .map(|decision| decision.agent_id.clone())
            });
            if let (Some(agent_id), true) = (registered, self.ca.to_control.is_some()) {
                self.ca.pending_detections.push(proto::HostDetection {
                    agent_id,
                    rule: detection.rule.name().to_owned(),
                    severity: format!("{:?}", detection.severity).to_lowercase(),
                    detect_time: Some(prost_types::Timestamp {
                        seconds: unix_ms() / 1000,
                        nanos: 0,
                    }),
                    summary: detection.summary.clone(),
                });
            }
            *self
                .detection_counts
                .entry((
                    detection.rule.name().to_owned(),
                    format!("{:?}", detection.severity).to_lowercase(),
                ))
                .or_default() += 1;
            let name = self.agent_name(detection.agent);
            notices.push(notice_line(
                &Notice::Detection {
                    agent_name: &name,
                    detection,
                },
                format,
            ));
        }
        // Detections go to the control plane at once: its risk loop waits on them.
        self.send_detections();
        for transition in &outcome.transitions {
            let name = self.agent_name(transition.agent);
            notices.push(notice_line(
                &Notice::RiskChange {
                    agent_name: &name,
                    transition,
                },
                format,
            ));
        }
        for remediation in &outcome.remediations {
            let (agent, result) = match *remediation {
                Remediation::Quarantine { agent } => {
                    let name = self.agent_name(agent);
                    (agent, self.quarantine(&name, true).map(drop))
                }
                Remediation::Release { agent } => {
                    let name = self.agent_name(agent);
                    (agent, self.quarantine(&name, false).map(drop))
                }
                Remediation::Kill { agent } => (agent, self.kill_agent(agent)),
            };
            let latency_ns = trigger_ns.map(|trigger| boottime_ns().saturating_sub(trigger));
            if result.is_ok() {
                let action = match remediation {
                    Remediation::Quarantine { .. } => "quarantine",
                    Remediation::Release { .. } => "release",
                    Remediation::Kill { .. } => "kill",
                };
                *self
                    .remediation_counts
                    .entry(action.to_owned())
                    .or_default() += 1;
            }
            let name = self.agent_name(agent);
            if let Err(err) = &result {
                tracing::error!(agent = name, ?remediation, %err, "remediation failed");
            }
            notices.push(notice_line(
                &Notice::Remediation {
                    agent_name: &name,
                    remediation,
                    latency_ns,
                    result: result.err().unwrap_or_else(|| "done".to_owned()),
                },
                format,
            ));
        }
    }

    /// Feeds the bytes each agent sent since the last tick to the risk engine.
    fn assess_egress(&mut self, now_ns: u64, notices: &mut Vec<String>, format: OutputFormat) {
        let totals = match self.net.egress_bytes() {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!(%err, "reading agents' egress bytes");
                return;
            }
        };
        for (index, total) in totals {
            let before = self.egress_seen.insert(index, total).unwrap_or(0);
            let Some(agent) = self.registry.agent(index) else {
                continue;
            };
            if total > before {
                let outcome = self.risk.observe(&risk::Observation {
                    agent: agent.id,
                    ktime_ns: now_ns,
                    kind: risk::ObservationKind::Egress {
                        bytes: total - before,
                    },
                });
                if !outcome.is_empty() {
                    self.conclude(&outcome, None, notices, format);
                }
            }
        }
    }

    /// Kills every process tagged with `agent`.
    fn kill_agent(&mut self, agent: AgentId) -> Result<(), String> {
        let name = self.agent_name(agent);
        let found = self.agent_named(&name)?;
        let index = self.registry.intern_agent(&found);
        let tagged = self.process.tagged().map_err(|err| err.to_string())?;
        for (pid, _) in tagged.into_iter().filter(|(_, tag)| tag.agent == index) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: a plain signal; a pid that went away makes it fail harmlessly.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        Ok(())
    }

    fn risk_request(
        &mut self,
        request: RiskRequest,
        format: OutputFormat,
    ) -> (String, Vec<String>) {
        let now = boottime_ns();
        let mut notices = Vec::new();
        let reply = match request {
            RiskRequest::Show { agent } => match self.agent_named(&agent) {
                Ok(found) => match self.risk.report(found.id) {
                    Some(report) => Reply::ok(report).to_line(),
                    None => Reply::ok(AgentRisk {
                        agent: found.id,
                        level: RiskLevel::None,
                        compromised: false,
                        quarantined: false,
                        learning_until_ns: None,
                        detections: Vec::new(),
                        transitions: Vec::new(),
                    })
                    .to_line(),
                },
                Err(err) => Reply::<()>::err(err).to_line(),
            },
            RiskRequest::Confirm { agent, compromised } => match self.agent_named(&agent) {
                Ok(found) => {
                    let outcome = if compromised {
                        self.risk.confirm_compromised(found.id, now)
                    } else {
                        self.risk.confirm_safe(found.id, now)
                    };
                    self.conclude(&outcome, None, &mut notices, format);
                    Reply::ok(self.risk.level(found.id)).to_line()
                }
                Err(err) => Reply::<()>::err(err).to_line(),
            },
            RiskRequest::Dismiss { detection } => {
                match self.risk.dismiss(DetectionId(detection), now) {
                    Ok(outcome) => {
                        self.conclude(&outcome, None, &mut notices, format);
                        Reply::ok(detection).to_line()
                    }
                    Err(err) => Reply::<()>::err(err.to_string()).to_line(),
                }
            }
        };
        (reply, notices)
    }

    fn handle_admin(&mut self, request: AdminRequest) -> String {
        match request {
            AdminRequest::Status => self.status().map_or_else(Reply::err, Reply::ok).to_line(),
            AdminRequest::Ps => self.ps().map_or_else(Reply::err, Reply::ok).to_line(),
            AdminRequest::Quarantine { agent, release } => self
                .quarantine(&agent, !release)
                .map_or_else(Reply::err, Reply::ok)
                .to_line(),
            AdminRequest::Launch { agent } => self
                .launch(&agent)
                .map_or_else(Reply::err, Reply::ok)
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

/// One JSON line: the event with the schema version and, for agents' processes, the agent.
#[derive(Serialize)]
struct JsonLine<'a> {
    version: u32,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<TagInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    looks_like: Option<&'static str>,
    /// For connections: the rule that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// `threat-intel` for a blocklist hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<&'static str>,
    /// For agents' processes: the parent, grandparent... nearest first.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    lineage: &'a [Ancestor],
}

fn write_event(
    out: &mut impl std::io::Write,
    format: OutputFormat,
    event: &Event,
    registry: &Registry,
    lineage: &[Ancestor],
) -> std::io::Result<()> {
    let tag = event.tag();
    let agent = agent_ref(registry, tag);
    let looks_like = match event {
        Event::Exec(exec) if agent.is_none() => looks_like_agent(&exec.filename, &exec.args),
        _ => None,
    };
    let (rule, alert) = match event {
        Event::File(decision) if decision.tag.agent != 0 => {
            (registry.rule(decision.rule_id).map(str::to_owned), None)
        }
        Event::Net(connection) => (
            (connection.rule_number != 0).then(|| {
                registry
                    .rule(connection.rule_number)
                    .unwrap_or("?")
                    .to_owned()
            }),
            (connection.decided_by == "blocklist").then_some("threat-intel"),
        ),
        _ => (None, None),
    };
    // Connection events name the agent; how its process was tagged is in its exec and fork events.
    let tag_detail = !matches!(event, Event::Net(_) | Event::File(_));
    match format {
        OutputFormat::Text => {
            write!(out, "{}", event.to_text())?;
            if let Some(agent) = &agent {
                write!(out, " agent={} ({})", agent.name, agent.id)?;
                if tag_detail {
                    let info = tag_info(registry, tag);
                    let inherited = if info.inherited { ",inherited" } else { "" };
                    write!(out, " tag={}{inherited}", info.source)?;
                }
            }
            if let Some(rule) = &rule {
                write!(out, " rule={rule}")?;
            }
            if let Some(alert) = alert {
                write!(out, " ALERT={alert}")?;
            }
            if let Some(hint) = looks_like {
                write!(out, " looks_like={hint}")?;
            }
            writeln!(out)
        }
        OutputFormat::Json => {
            let line = JsonLine {
                version: SCHEMA_VERSION,
                event,
                tag: agent
                    .as_ref()
                    .filter(|_| tag_detail)
                    .map(|_| tag_info(registry, tag)),
                agent,
                looks_like,
                rule,
                alert,
                lineage,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)
        }
    }
}

/// Where events and notices go, in the configured format, and the alarm about lost events.
struct Output {
    sink: Box<dyn sink::Sink>,
    format: OutputFormat,
    line: Vec<u8>,
    /// Notice lines waiting for the next flush.
    notices: Vec<String>,
    losses: LossAlarm,
    /// Writes that failed (a closed stdout, a full disk): counted and logged, never fatal, so
    /// that agentd keeps enforcing and reaches its exit path.
    errors: u64,
    last_error_logged: Option<std::time::Instant>,
}

impl Output {
    fn open(config: &EventsConfig) -> Result<Self, DaemonError> {
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

    /// Enriches, writes and assesses a batch of kernel events.
    fn events(&mut self, state: &mut State, batch: &mut Vec<Event>) {
        let now = std::time::Instant::now();
        for mut event in batch.drain(..) {
            state.discover(&mut event);
            state.fail_closed(&event);
            if let Event::Net(connection) = &mut event {
                connection.domain = state
                    .learned
                    .domain(connection.tag.agent, connection.address, now)
                    .map(str::to_owned);
            }
            state.lineage.record(&event);
            let ancestors = match event.tag().agent {
                0 => Vec::new(),
                _ => state.lineage.ancestors(event.pid()),
            };
            self.line.clear();
            let written = write_event(
                &mut self.line,
                self.format,
                &event,
                &state.registry,
                &ancestors,
            )
            .and_then(|()| self.sink.write_line(&self.line));
            if let Err(err) = written {
                self.failed(&err);
            }
            state.assess(&event, &mut self.notices, self.format);
            self.write_notices();
        }
        if let Err(err) = self.sink.flush() {
            self.failed(&err);
        }
        state.output_errors = self.errors;
    }

    /// Once a second: risk decay, and the alarm about lost events.
    fn tick(&mut self, state: &mut State, reader: &EventReader) -> Result<(), DaemonError> {
        if let Err(err) = state.persist_registry() {
            tracing::warn!(err = %anyhow::Error::from(err), "saving agent numbers to the pinned registry");
        }
        let notices = state.ca_tick(self.format);
        self.notices.extend(notices);
        state.report_agents();
        state.send_detections();
        let now = boottime_ns();
        state.assess_egress(now, &mut self.notices, self.format);
        let outcome = state.risk.tick(now);
        if !outcome.is_empty() {
            state.conclude(&outcome, None, &mut self.notices, self.format);
        }
        let counts = reader.counts()?;
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
        state.output_errors = self.errors;
        self.flush();
        Ok(())
    }

    fn write_notices(&mut self) {
        let notices = std::mem::take(&mut self.notices);
        for notice in notices {
            if let Err(err) = self.sink.write_line(notice.as_bytes()) {
                self.failed(&err);
            }
        }
    }

    fn flush(&mut self) {
        self.write_notices();
        if let Err(err) = self.sink.flush() {
            self.failed(&err);
        }
    }
}

/// The notices for a decision set coming into force: "would block" for report-only policies
/// that would block or quarantine an agent, and the set itself.
fn decision_notices(set: &DecisionSet, agents: usize, format: OutputFormat) -> Vec<String> {
    let mut notices = Vec::new();
    for decision in &set.decisions {
        if let Some(action @ (access::Action::Block | access::Action::Quarantine)) =
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

/// Conditional Access on this host.
#[derive(Default)]
struct CaHost {
    /// The decision set in force.
    set: Option<DecisionSet>,
    /// Where it is kept; `None` when no control plane is configured.
    path: Option<PathBuf>,
    connected: bool,
    last_error: Option<String>,
    applied_version: u64,
    /// Domain grants and denials, for learned addresses.
    domains: Vec<(u32, crate::netpolicy::DomainPattern, agentd_common::CaGrant)>,
    /// The file controls in force, joined with the local file rules in the kernel.
    files: Vec<(
        agentd_common::FileRuleKey,
        [agentd_common::CaFileControl; 3],
    )>,
    /// Agents whose decision blocks them now.
    blocked: HashSet<u32>,
    /// The offline standing of each decision when last applied.
    standings: Vec<Standing>,
    pending_detections: Vec<proto::HostDetection>,
    to_control: Option<mpsc::Sender<ToControl>>,
    /// The control-plane ids of the agents last reported running here.
    reported_agents: Vec<String>,
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
fn notice_line(notice: &Notice<'_>, format: OutputFormat) -> String {
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

/// A request from a socket task to the state, with where to send the answer line.
enum Call {
    /// A request on the admin socket, with the caller admitted at accept.
    Admin(AdminRequest, AdminCaller, oneshot::Sender<String>),
    Whoami(Result<Peer, String>, oneshot::Sender<String>),
    /// A Prometheus scrape: the text exposition.
    Metrics(oneshot::Sender<String>),
    /// `GET /healthz`: whether every sensor runs, and each one's state, as JSON.
    Health(oneshot::Sender<(bool, String)>),
}

/// Answers one call from a socket task.
fn handle_call(
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
            let answer = peer.and_then(|peer| state.whoami(&peer));
            let _ = reply.send(answer.map_or_else(Reply::err, Reply::ok).to_line());
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

/// The channel from the control-plane task, a sender kept so that the channel stays open when
/// there is none, and the task. Before the task starts, the decisions kept on disk are put in
/// force, so that a restart while the control plane is unreachable enforces them.
#[allow(
    clippy::type_complexity,
    reason = "a one-off tuple of the three things run() keeps"
)]
fn start_control(
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
                Err(err) => tracing::error!(%err, "the decisions kept on disk cannot be applied"),
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

/// Binds the metrics endpoint, if one is configured, and serves it on a task.
async fn start_metrics(
    listen: Option<std::net::SocketAddr>,
    calls: &mpsc::Sender<Call>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Bind {
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
    tracing::info!(%listen, "serving Prometheus metrics at /metrics");
    Ok(Some(tokio::spawn(serve_metrics(listener, calls.clone()))))
}

/// Serves `GET /metrics` until the task is aborted.
async fn serve_metrics(listener: tokio::net::TcpListener, calls: mpsc::Sender<Call>) {
    async fn scrape(
        axum::extract::State(calls): axum::extract::State<mpsc::Sender<Call>>,
    ) -> Result<([(axum::http::header::HeaderName, &'static str); 1], String), axum::http::StatusCode>
    {
        let (tx, rx) = oneshot::channel();
        calls
            .send(Call::Metrics(tx))
            .await
            .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
        let text = rx
            .await
            .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
        Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ))
    }
    async fn healthz(
        axum::extract::State(calls): axum::extract::State<mpsc::Sender<Call>>,
    ) -> (
        axum::http::StatusCode,
        [(axum::http::header::HeaderName, &'static str); 1],
        String,
    ) {
        let (tx, rx) = oneshot::channel();
        let answer = match calls.send(Call::Health(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let (status, body) = match answer {
            // Degraded is still 200: agentd enforces what it can, and a probe that restarts it
            // would not bring a missing hook back. The body says which sensor and why.
            Some((_, body)) => (axum::http::StatusCode::OK, body),
            None => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                r#"{"health":"stopping"}"#.to_owned(),
            ),
        };
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    }
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(calls);
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(%err, "the metrics endpoint stopped");
    }
}

fn bind(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    let bind_error = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(bind_error(err)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}

/// Reads one request line, with a deadline so that a silent client cannot hold a task forever.
async fn read_request(stream: &mut UnixStream) -> Option<String> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim().to_owned()),
        _ => None,
    }
}

async fn answer(
    mut stream: UnixStream,
    call: impl FnOnce(oneshot::Sender<String>) -> Call,
    calls: mpsc::Sender<Call>,
) {
    let (reply_tx, reply_rx) = oneshot::channel();
    if calls.send(call(reply_tx)).await.is_err() {
        return;
    }
    if let Ok(mut line) = reply_rx.await {
        line.push('\n');
        let _ = stream.write_all(line.as_bytes()).await;
    }
}

/// Answers a request that will not be served with an error line.
async fn refuse(stream: &mut UnixStream, error: String) {
    let line = format!("{}\n", Reply::<()>::err(error).to_line());
    let _ = stream.write_all(line.as_bytes()).await;
}

async fn serve_admin(listener: UnixListener, calls: mpsc::Sender<Call>, tags: TagReader) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted_at = boottime_ticks();
        // Defence in depth beside the socket's 0600 mode: the process that connected, pinned
        // now, must be root and not an agent (see `identity::caller`).
        let caller = AdminCaller::admit(Peer::of(&stream, accepted_at), &tags);
        let calls = calls.clone();
        tokio::spawn(async move {
            let Some(line) = read_request(&mut stream).await else {
                return;
            };
            let caller = match caller {
                Ok(caller) => caller,
                Err(refusal) => {
                    tracing::warn!(%refusal, "refused a connection to the admin socket");
                    refuse(&mut stream, refusal.to_string()).await;
                    return;
                }
            };
            match serde_json::from_str::<AdminRequest>(&line) {
                Ok(request) => {
                    answer(stream, |tx| Call::Admin(request, caller, tx), calls).await;
                }
                Err(err) => {
                    refuse(&mut stream, format!("bad request: {err}")).await;
                }
            }
        });
    }
}

async fn serve_identity(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted_at = boottime_ticks();
        // Pin the peer before anything else: the kernel's record, not what it will say.
        let peer = Peer::of(&stream, accepted_at).map_err(|err| err.to_string());
        let calls = calls.clone();
        tokio::spawn(async move {
            if read_request(&mut stream).await.as_deref() == Some(api::WHOAMI) {
                answer(stream, |tx| Call::Whoami(peer, tx), calls).await;
            } else {
                refuse(&mut stream, format!("send {:?}", api::WHOAMI)).await;
            }
        });
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

/// The rule reported when agentd's self-protection denies.
const SELF_PROTECTION_RULE: &str = "agentd-self-protection";
/// The rule reported when an agent is refused an anonymous exec (`allow_anonymous_exec`).
const ANONYMOUS_EXEC_RULE: &str = "anonymous-exec";

/// Protects agentd's own files by identity (`SELF_OBJECTS`) and returns them by kernel object
/// with the access every agent is denied, for the file rules.
fn protect_own_files(
    config: &Config,
    protect: &mut ProtectSensor,
    registry: &mut Registry,
) -> Result<Vec<(agentd_common::InodeKey, u32)>, SensorError> {
    let own_paths = protected_paths(config);
    let paths: Vec<&Path> = own_paths.iter().map(|(path, _)| path.as_path()).collect();
    protect.protect_files(&paths, registry.intern_rule(SELF_PROTECTION_RULE))?;
    Ok(own_paths
        .iter()
        .filter_map(|(path, access)| Some((crate::inode::inode_key(path).ok()?, *access)))
        .collect())
}

/// agentd's own files and the access no agent gets to them: its configuration, policy, state
/// (credentials, kept decisions), pins and event output may be neither read nor written; its
/// binary may not be written (agents may run `agentd whoami`).
fn protected_paths(config: &Config) -> Vec<(PathBuf, u32)> {
    let all = file_access::READ | file_access::WRITE;
    let mut paths = vec![
        (config.bpf.pin_path.clone(), all),
        (config.control_plane.state_dir.clone(), all),
        (config.identity.policy_dir.clone(), all),
    ];
    if let Some(source) = &config.source {
        paths.push((source.clone(), all));
    }
    if config.events.output != Path::new("-") {
        paths.push((config.events.output.clone(), all));
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        paths.push((exe, file_access::WRITE));
    }
    paths
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
                if let Err(err) = output.tick(&mut state, &reader) {
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
                output.events(&mut state, &mut batch);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::Exec,
        identity::{Agent, AgentId},
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
        write_event(&mut out, OutputFormat::Json, &event, &registry, &lineage).unwrap();
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
        write_event(
            &mut out,
            OutputFormat::Json,
            &exec(AgentTag::NONE),
            &Registry::default(),
            &[],
        )
        .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(line.get("agent").is_none(), "{line}");
    }
}
