//! Policy-to-table compilation: the identity policy turned into the sensors' kernel tables.

use std::collections::HashSet;

use agentd_common::{
    AgentTag, DiscoveryMatch, NetAgentPolicy, TagSource, file_name_kind, net_action,
};

use super::{
    error::DaemonError,
    self_protect::{ANONYMOUS_EXEC_RULE, SELF_PROTECTION_RULE},
    state::{FileEntries, State},
};
use crate::{
    api::Applied,
    cgroups,
    conditional::{self},
    file_links,
    identity::discovery::{RuleMatch, UserspaceRules},
    policy::{
        CompiledPolicy, IdentityPolicy, Matcher,
        files::FileTarget,
        network::{Mode, layout},
    },
    sensors::{
        files::{self},
        net::NetTables,
    },
};

impl State {
    /// Validates `policy` as a whole, then makes it the one in force. On any error nothing
    /// changes: the policy in force stays as it was.
    pub fn apply(&mut self, policy: &IdentityPolicy) -> Result<Applied, DaemonError> {
        let mut compiled = policy.compile(&self.cgroup_root, &self.categories)?;
        self.adopt_into(&mut compiled);
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
        let objects = conditional::merge_file_rules(&file_entries.objects, &self.ca.files);
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
                &conditional::merge_file_rules(&self.file_entries.objects, &self.ca.files),
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
    pub(super) fn persist_registry(&mut self) -> Result<(), crate::pins::PinError> {
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
}
