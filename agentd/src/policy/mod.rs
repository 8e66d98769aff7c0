//! The host policy: which agents exist on this host, how their processes are found, and the
//! network (`network`) and file (`files`) rules they run under, with the field-error and
//! rule-id vocabulary both share (`fields`).
//!
//! A policy is a TOML document (`docs/identity.md`). It is validated as a whole before anything
//! changes; every problem is reported with the field that has it, and a policy with any problem
//! is refused entirely, so the policy in force stays as it was.

pub mod fields;
pub mod files;
pub mod network;

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use agentd_common::InodeKey;
use serde::Deserialize;
use uuid::Uuid;

use self::{
    fields::{FieldError, check_rule_id, valid_name},
    files::{AgentFilesSpec, CompiledAgentFiles, Homes},
    network::{
        AgentNetworkSpec, Categories, CompiledAgentNetwork, CompiledGlobalNetwork,
        GlobalNetworkSpec, NameContext, layout,
    },
};
use crate::{
    identity::{Agent, AgentId},
    inode::inode_key,
};

/// The document as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityPolicy {
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentSpec>,
    #[serde(default)]
    pub discovery: Vec<DiscoverySpec>,
    /// The global network lists (blocklist, quarantine allow-list).
    #[serde(default)]
    pub network: GlobalNetworkSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Unique on the host: letters, digits, `.`, `_` and `-`, at most 64 bytes.
    pub name: String,
    /// The agent's UUID. Default: derived from the name (`UUIDv5`), the same on every host.
    pub id: Option<String>,
    /// cgroups, relative to the cgroup v2 root, whose processes are this agent's: for an agent
    /// that runs as a systemd service, its unit's cgroup (`/system.slice/NAME.service`).
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// The agent's network policy (docs/network.md). Without it, the agent's connections are
    /// allowed and logged.
    pub network: Option<AgentNetworkSpec>,
    /// The agent's file rules (docs/files.md).
    pub files: Option<AgentFilesSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySpec {
    /// Unique rule name, reported in events.
    pub id: String,
    /// The agent that a matching process becomes.
    pub agent: String,
    /// Matches an exec of this file (by device and inode, so links and renames still match).
    pub path: Option<PathBuf>,
    /// Matches an exec of a file with this SHA-256 (hex).
    pub sha256: Option<String>,
    /// With `script`: matches `INTERPRETER ... SCRIPT`, e.g. `/usr/bin/python3` and
    /// `/opt/agent/agent.py`.
    pub interpreter: Option<PathBuf>,
    pub script: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("parsing the identity policy")]
    Parse(#[source] toml::de::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("in {path}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<PolicyError>,
    },
    #[error("invalid identity policy: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

/// How a discovery rule recognises an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// The executed file, by kernel object; matched in the kernel at exec.
    Exe(InodeKey),
    /// The executed file's content hash; matched in userspace right after the exec.
    Sha256([u8; 32]),
    /// An interpreter running a script; matched in userspace from the exec's arguments.
    Script {
        interpreter: InodeKey,
        script: InodeKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledAgent {
    pub agent: Agent,
    /// The policy gave the id. Otherwise the id is derived from the name until the control plane
    /// names the agent, and then it is the control plane's (`daemon::adopt`).
    pub id_given: bool,
    /// (path relative to the cgroup root, cgroup id).
    pub cgroups: Vec<(String, u64)>,
    pub network: Option<CompiledAgentNetwork>,
    pub files: Option<CompiledAgentFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub id: String,
    /// The agent's name; agents in the same policy resolve it.
    pub agent: String,
    pub matcher: Matcher,
}

/// A validated policy, with every path resolved to a kernel object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub agents: Vec<CompiledAgent>,
    pub rules: Vec<CompiledRule>,
    pub network: CompiledGlobalNetwork,
}

impl CompiledPolicy {
    #[must_use]
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents
            .iter()
            .map(|compiled| &compiled.agent)
            .find(|agent| agent.name == name)
    }
}

/// Resolves a path in a rule to the executable or script it names.
fn resolve_file(path: &Path) -> Result<InodeKey, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let meta = fs::metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let kind = meta.file_type();
    if !kind.is_file() || kind.is_fifo() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.size() == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    inode_key(path).map_err(|err| format!("{}: {err}", path.display()))
}

impl IdentityPolicy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(PolicyError::Parse)
    }

    pub fn load_file(path: &Path) -> Result<Self, PolicyError> {
        let text = fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| PolicyError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Reads every `*.toml` in `dir`, in name order, into one policy. A missing directory is an
    /// empty policy.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read_error = |source| PolicyError::Read {
            path: dir.to_owned(),
            source,
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => return Err(read_error(err)),
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "toml"));
        paths.sort();
        let mut merged = Self::default();
        for path in paths {
            let Self {
                agents,
                discovery,
                network,
            } = Self::load_file(&path)?;
            merged.agents.extend(agents);
            merged.discovery.extend(discovery);
            merged.network.blocklist.extend(network.blocklist);
            merged
                .network
                .quarantine_allow
                .extend(network.quarantine_allow);
        }
        Ok(merged)
    }

    /// Checks the whole document and resolves it against this host: agent cgroups under
    /// `cgroup_root`, rule paths to files. Nothing is changed.
    pub fn compile(
        &self,
        cgroup_root: &Path,
        categories: &Categories,
    ) -> Result<CompiledPolicy, PolicyError> {
        let mut errors = Vec::new();
        let mut network_errors = Vec::new();
        let destinations = self.network.destinations(&mut network_errors);
        let referable = NameContext {
            categories,
            destinations: &destinations,
        };
        let mut error = |field: String, reason: String| errors.push(FieldError { field, reason });
        let mut compiled = CompiledPolicy::default();
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let homes = Homes::system();

        for (i, spec) in self.agents.iter().enumerate() {
            let at = format!("agent[{i}]");
            if !valid_name(&spec.name) {
                error(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a valid agent name (letters, digits, '.', '_', '-'; 1 to 64 bytes)",
                        spec.name
                    ),
                );
            } else if !names.insert(spec.name.clone()) {
                error(
                    format!("{at}.name"),
                    format!("duplicate agent name {:?}", spec.name),
                );
            }
            let id = match &spec.id {
                None => Some(AgentId::from_name(&spec.name)),
                Some(text) => match Uuid::parse_str(text) {
                    Ok(uuid) => Some(AgentId(uuid)),
                    Err(err) => {
                        error(format!("{at}.id"), format!("{text:?} is not a UUID: {err}"));
                        None
                    }
                },
            };
            if let Some(id) = id
                && !ids.insert(id)
            {
                error(format!("{at}.id"), format!("duplicate agent id {id}"));
            }
            let mut cgroups = Vec::new();
            for (j, cgroup) in spec.cgroups.iter().enumerate() {
                let field = format!("{at}.cgroups[{j}]");
                let relative = cgroup.trim_start_matches('/');
                if !cgroup.starts_with('/') || relative.split('/').any(|part| part == "..") {
                    error(
                        field,
                        format!("{cgroup:?} must be an absolute cgroup path without '..'"),
                    );
                    continue;
                }
                match crate::cgroups::id(&cgroup_root.join(relative)) {
                    Ok(cgroup_id) => cgroups.push((cgroup.clone(), cgroup_id)),
                    Err(err) => error(field, format!("no such cgroup {cgroup:?}: {err}")),
                }
            }
            let network = spec.network.as_ref().map(|network| {
                let at = format!("{at}.network");
                let compiled = network.compile(&spec.name, &at, &referable, &mut network_errors);
                if let Err(reason) = layout(&compiled, |_| 0) {
                    network_errors.push(FieldError { field: at, reason });
                }
                compiled
            });
            let files = spec.files.as_ref().map(|files| {
                files.compile(
                    &spec.name,
                    &format!("{at}.files"),
                    &homes,
                    &mut network_errors,
                )
            });
            if let Some(id) = id {
                compiled.agents.push(CompiledAgent {
                    agent: Agent {
                        id,
                        name: spec.name.clone(),
                    },
                    id_given: spec.id.is_some(),
                    cgroups,
                    network,
                    files,
                });
            }
        }

        compiled.rules = self.compile_rules(&names, &mut error);
        compiled.network = self.network.compile(&mut network_errors);
        errors.extend(network_errors);

        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(PolicyError::Invalid(errors))
        }
    }
    /// Checks the discovery rules against the agents named in the policy.
    fn compile_rules(
        &self,
        names: &HashSet<String>,
        error: &mut impl FnMut(String, String),
    ) -> Vec<CompiledRule> {
        let mut compiled = Vec::new();
        let mut rule_ids = HashSet::new();
        for (i, rule) in self.discovery.iter().enumerate() {
            let at = format!("discovery[{i}]");
            if let Some(FieldError { field, reason }) = check_rule_id(&rule.id, &at, &mut rule_ids)
            {
                error(field, reason);
            }
            let at = format!("{at} ({:?})", rule.id);
            if !names.contains(&rule.agent) {
                error(
                    format!("{at}.agent"),
                    format!("unknown agent {:?}", rule.agent),
                );
            }
            let matcher = match (&rule.path, &rule.sha256, &rule.interpreter, &rule.script) {
                (Some(path), None, None, None) => resolve_file(path)
                    .map(Matcher::Exe)
                    .map_err(|reason| (format!("{at}.path"), reason)),
                (None, Some(hash), None, None) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hash, &mut digest)
                        .map(|()| Matcher::Sha256(digest))
                        .map_err(|err| {
                            (
                                format!("{at}.sha256"),
                                format!("{hash:?} is not 64 hex digits: {err}"),
                            )
                        })
                }
                (None, None, Some(interpreter), Some(script)) => {
                    match (resolve_file(interpreter), resolve_file(script)) {
                        (Ok(interpreter), Ok(script)) => Ok(Matcher::Script {
                            interpreter,
                            script,
                        }),
                        (Err(reason), _) => Err((format!("{at}.interpreter"), reason)),
                        (_, Err(reason)) => Err((format!("{at}.script"), reason)),
                    }
                }
                _ => Err((
                    at.clone(),
                    "give exactly one of `path`, `sha256`, or `interpreter` with `script`"
                        .to_owned(),
                )),
            };
            match matcher {
                Ok(matcher) => compiled.push(CompiledRule {
                    id: rule.id.clone(),
                    agent: rule.agent.clone(),
                    matcher,
                }),
                Err((field, reason)) => error(field, reason),
            }
        }

        compiled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("cg/system.slice/coder.service")).unwrap();
            fs::write(dir.path().join("agent-bin"), b"\x7fELF").unwrap();
            fs::write(dir.path().join("python3"), b"\x7fELF").unwrap();
            fs::write(dir.path().join("agent.py"), b"print()").unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn compile(&self, text: &str) -> Result<CompiledPolicy, PolicyError> {
            IdentityPolicy::parse(text)?.compile(&self.dir.path().join("cg"), &Categories::sample())
        }
    }

    fn messages(err: PolicyError) -> Vec<String> {
        match err {
            PolicyError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }

    #[test]
    fn allow_anonymous_exec_defaults_to_false_and_a_bad_value_names_the_field() {
        let host = Host::new();
        let compiled = host
            .compile("[[agent]]\nname = \"a\"\n[agent.files]\n")
            .expect("valid policy");
        let files = compiled.agents[0].files.as_ref().expect("files table");
        assert!(!files.allow_anonymous_exec);
        let compiled = host
            .compile("[[agent]]\nname = \"a\"\n[agent.files]\nallow_anonymous_exec = true\n")
            .expect("valid policy");
        assert!(
            compiled.agents[0]
                .files
                .as_ref()
                .unwrap()
                .allow_anonymous_exec
        );
        let err = host
            .compile("[[agent]]\nname = \"a\"\n[agent.files]\nallow_anonymous_exec = \"yes\"\n")
            .expect_err("a string is not a boolean");
        // The parser's error (the source) quotes the line and the key.
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("allow_anonymous_exec"), "{text}");
        assert!(text.contains("boolean"), "{text}");
    }

    #[test]
    fn a_full_policy_compiles_to_kernel_objects() {
        let host = Host::new();
        let text = format!(
            r#"
            [[agent]]
            name = "coder"
            cgroups = ["/system.slice/coder.service"]

            [[agent]]
            name = "helper"
            id = "0b5a7bb4-31c6-4a36-8d8e-6d0c93c3f1d2"

            [[discovery]]
            id = "coder-bin"
            agent = "coder"
            path = "{bin}"

            [[discovery]]
            id = "coder-hash"
            agent = "coder"
            sha256 = "{hash}"

            [[discovery]]
            id = "helper-py"
            agent = "helper"
            interpreter = "{python}"
            script = "{script}"
            "#,
            bin = host.path("agent-bin"),
            hash = "ab".repeat(32),
            python = host.path("python3"),
            script = host.path("agent.py"),
        );
        let compiled = host.compile(&text).unwrap();
        assert_eq!(compiled.agents.len(), 2);
        assert_eq!(compiled.agents[0].agent.id, AgentId::from_name("coder"));
        assert_eq!(compiled.agents[0].cgroups.len(), 1);
        assert_eq!(
            compiled.agents[1].agent.id.to_string(),
            "0b5a7bb4-31c6-4a36-8d8e-6d0c93c3f1d2"
        );
        let bin = inode_key(Path::new(&host.path("agent-bin"))).unwrap();
        assert_eq!(compiled.rules[0].matcher, Matcher::Exe(bin));
        assert_eq!(compiled.rules[1].matcher, Matcher::Sha256([0xab; 32]));
        assert!(matches!(compiled.rules[2].matcher, Matcher::Script { .. }));
    }

    #[test]
    fn every_bad_field_is_named() {
        let host = Host::new();
        let text = format!(
            r#"
            [[agent]]
            name = "coder"
            id = "not-a-uuid"
            cgroups = ["/system.slice/missing.service", "relative"]

            [[agent]]
            name = "coder"

            [[discovery]]
            id = "bad-path"
            agent = "coder"
            path = "{missing}"

            [[discovery]]
            id = "bad-hash"
            agent = "coder"
            sha256 = "xyz"

            [[discovery]]
            id = "ghost"
            agent = "nobody"
            path = "{bin}"

            [[discovery]]
            id = "two-matchers"
            agent = "coder"
            path = "{bin}"
            sha256 = "{hash}"
            "#,
            missing = host.path("missing"),
            bin = host.path("agent-bin"),
            hash = "00".repeat(32),
        );
        let errors = messages(host.compile(&text).unwrap_err());
        let expect = [
            "agent[0].id: \"not-a-uuid\" is not a UUID",
            "agent[0].cgroups[0]: no such cgroup \"/system.slice/missing.service\"",
            "agent[0].cgroups[1]: \"relative\" must be an absolute cgroup path",
            "agent[1].name: duplicate agent name \"coder\"",
            "discovery[0] (\"bad-path\").path: ",
            "discovery[1] (\"bad-hash\").sha256: \"xyz\" is not 64 hex digits",
            "discovery[2] (\"ghost\").agent: unknown agent \"nobody\"",
            "discovery[3] (\"two-matchers\"): give exactly one of",
        ];
        for (expected, got) in expect.iter().zip(&errors) {
            assert!(
                got.starts_with(expected),
                "expected {expected:?}, got {got:?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }

    #[test]
    fn relative_and_non_file_rule_paths_are_refused() {
        let host = Host::new();
        let text = format!(
            "[[agent]]\nname = \"a\"\n[[discovery]]\nid = \"r\"\nagent = \"a\"\npath = \"bin/agent\"\n\
             [[discovery]]\nid = \"d\"\nagent = \"a\"\npath = \"{dir}\"\n",
            dir = host.dir.path().display()
        );
        let errors = messages(host.compile(&text).unwrap_err());
        assert!(errors[0].contains("is not an absolute path"), "{errors:?}");
        assert!(errors[1].contains("is not a regular file"), "{errors:?}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = IdentityPolicy::parse("[[agent]]\nname = \"a\"\ncgroup = \"/x\"\n").unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("unknown field `cgroup`"), "{message}");
    }
}

#[cfg(test)]
mod drop_in_tests {
    use super::*;

    #[test]
    fn drop_ins_merge_in_name_order_and_a_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("20-b.toml"), "[[agent]]\nname = \"b\"\n").unwrap();
        fs::write(dir.path().join("10-a.toml"), "[[agent]]\nname = \"a\"\n").unwrap();
        fs::write(dir.path().join("README"), "not a policy").unwrap();
        let policy = IdentityPolicy::load_dir(dir.path()).unwrap();
        let names: Vec<_> = policy.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let missing = IdentityPolicy::load_dir(&dir.path().join("nope")).unwrap();
        assert_eq!(missing, IdentityPolicy::default());
    }

    #[test]
    fn a_bad_drop_in_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("bad.toml"), "[[agent]]\nnmae = \"x\"\n").unwrap();
        let err = IdentityPolicy::load_dir(dir.path()).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(
            message.contains("bad.toml") && message.contains("nmae"),
            "{message}"
        );
    }
}
