//! The file sensor: agents' file rules in kernel maps, enforced by BPF LSM hooks (`file_open`,
//! `bprm_check_security`, and the path and inode hooks that keep protected files in place), or,
//! where BPF LSM is not active, observed through the open syscalls' tracepoints.

use std::{fs, path::Path};

use agentd_common::{FileEntryKey, FileNameKey, FileRule, FileRuleKey, InodeKey};
use aya::{
    maps::HashMap,
    programs::{Lsm, TracePoint},
};

use super::{SensorError, attach_error, load_error};
use crate::{ebpf::LoadedObject, pins::Links};

const PROGRAM: &str = "file_open";
/// Hooks that decide changes to names and truncation (`agentd-ebpf/src/files_namespace.rs`):
/// without one, that change goes undecided on this kernel while the rest still holds.
const OPTIONAL_HOOKS: [&str; 10] = [
    "path_unlink",
    "path_rename",
    "path_link",
    "path_truncate",
    "file_truncate",
    "inode_create",
    "inode_mkdir",
    "inode_symlink",
    "inode_mknod",
    "inode_rmdir",
];

/// Optional hooks that a kernel may predate, and the hook that does their work there: before
/// 6.2, `ftruncate(2)` and `O_TRUNC` call `security_path_truncate`, and `file_truncate` does not
/// exist. Such a hook is a gap only where the kernel has it.
const PREDATED_BY: [(&str, &str); 1] = [("file_truncate", "path_truncate")];

/// Whether the kernel lacks `hook` because it predates it (its BTF has no `bpf_lsm_<hook>`),
/// with the older hook that covers its calls there attached or adopted (`has`).
fn predated(btf: &aya::Btf, hook: &str, has: impl Fn(&str) -> bool) -> bool {
    PREDATED_BY.iter().any(|(newer, older)| {
        *newer == hook
            && has(older)
            && btf
                .id_by_type_name_kind(&format!("bpf_lsm_{hook}"), aya_obj::btf::BtfKind::Func)
                .is_err()
    })
}
const DENY_MAP: &str = "DENY_INODES";
const RULES_MAP: &str = "FILE_RULES";
const NAMES_MAP: &str = "FILE_NAMES";
const ENTRIES_MAP: &str = "FILE_ENTRIES";
const QUARANTINE_MAP: &str = "FILE_QUARANTINE";

/// The kernel's active LSMs, comma-separated.
pub const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// Whether BPF LSM is in the kernel's active LSM list. Where it is not, LSM programs may load
/// but never run (or, on locked-down kernels, not load at all).
pub fn bpf_lsm_active() -> std::io::Result<bool> {
    let lsms = fs::read_to_string(ACTIVE_LSMS)?;
    Ok(lsms.trim().split(',').any(|lsm| lsm == "bpf"))
}

/// Whether file enforcement works on this kernel, decided by trying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEnforcement {
    Available,
    /// Why not, and how to fix it, in words for the operator.
    Unavailable(String),
}

/// How to turn BPF LSM on, for messages.
pub const HOW_TO_ENABLE: &str = "add `bpf` to the kernel's `lsm=` boot argument, keeping the \
     LSMs already listed in /sys/kernel/security/lsm (for example \
     `lsm=lockdown,capability,landlock,bpf`), and reboot";

/// Finds out whether BPF LSM enforcement works here: the active LSM list must name `bpf`, and
/// the kernel must accept, load and attach the `file_open` program. The list alone is not
/// enough: some kernels list `bpf` and still refuse LSM programs (lockdown, or a hypervisor's
/// policy). The probe leaves nothing attached or loaded.
pub fn probe_enforcement(object: &mut LoadedObject) -> FileEnforcement {
    match bpf_lsm_active() {
        Err(err) => {
            return FileEnforcement::Unavailable(format!(
                "cannot read {ACTIVE_LSMS} ({err}): mount securityfs \
                 (`mount -t securityfs securityfs /sys/kernel/security`)"
            ));
        }
        Ok(false) => {
            return FileEnforcement::Unavailable(format!(
                "BPF LSM is not active on this kernel; to enable it, {HOW_TO_ENABLE}"
            ));
        }
        Ok(true) => {}
    }
    let LoadedObject { ebpf, btf, .. } = object;
    let attempt = (|| {
        let program: &mut Lsm = super::program(ebpf, PROGRAM)?;
        program.load(PROGRAM, btf).map_err(load_error(PROGRAM))?;
        let attached = program
            .attach()
            .map_err(attach_error(PROGRAM))
            .and_then(|link_id| program.detach(link_id).map_err(attach_error(PROGRAM)));
        let unloaded = program.unload().map_err(load_error(PROGRAM));
        attached.and(unloaded)
    })();
    match attempt {
        Ok(()) => FileEnforcement::Available,
        Err(err) => FileEnforcement::Unavailable(format!(
            "the kernel lists BPF LSM as active but refuses its programs ({:#}); file rules \
             cannot be enforced on this host",
            anyhow::Error::from(err)
        )),
    }
}

/// LSM hooks that file enforcement cannot do without: opens and execs.
const REQUIRED_HOOKS: [&str; 2] = [PROGRAM, "bprm_check_security"];
/// Syscall tracepoints that observe opens where BPF LSM is not active: (program, name).
const OBSERVERS: [(&str, &str); 6] = [
    ("observe_enter_openat", "sys_enter_openat"),
    ("observe_enter_openat2", "sys_enter_openat2"),
    ("observe_enter_open", "sys_enter_open"),
    ("observe_exit_openat", "sys_exit_openat"),
    ("observe_exit_openat2", "sys_exit_openat2"),
    ("observe_exit_open", "sys_exit_open"),
];

/// How the sensor sees file access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// BPF LSM hooks decide; `missing` names optional hooks this kernel lacks.
    Enforcing { missing: Vec<&'static str> },
    /// Syscall tracepoints report opens that break a rule, after the fact. Nothing is enforced.
    Observing,
    /// Neither: BPF LSM is not active and the tracepoints could not be attached (why, in words
    /// for the operator). The other sensors still enforce.
    Unavailable(String),
}

/// Attaches the open tracepoints, all or none: a file observer that sees `openat` but not
/// `openat2` would be a blind spot that reads as coverage. A kernel or mount that refuses them
/// (tracefs absent, tracepoints not built in) leaves the sensor [`FileMode::Unavailable`];
/// the network and process sensors do not need them.
fn attach_observers(ebpf: &mut aya::Ebpf, links: &mut Links) -> Result<FileMode, SensorError> {
    let mut attached = Vec::new();
    let mut failure = None;
    for (name, tracepoint) in OBSERVERS {
        let program: &mut TracePoint = super::program(ebpf, name)?;
        let link = program
            .load()
            .map_err(load_error(name))
            .and_then(|()| {
                program
                    .attach("syscalls", tracepoint)
                    .map_err(attach_error(name))
            })
            .and_then(|link_id| program.take_link(link_id).map_err(attach_error(name)));
        match link {
            Ok(link) => attached.push((name, link)),
            Err(err) => {
                failure = Some(format!("{:#}", anyhow::Error::from(err)));
                break;
            }
        }
    }
    if let Some(why) = failure {
        // Dropping the links detaches the observers that did attach.
        drop(attached);
        let tracefs = if crate::pseudofs::is_on(
            Path::new(crate::pseudofs::TRACEFS),
            crate::pseudofs::TRACEFS_MAGIC,
        ) {
            ""
        } else {
            "; tracefs is not mounted at /sys/kernel/tracing"
        };
        return Ok(FileMode::Unavailable(format!(
            "no BPF LSM and the open tracepoints could not be attached ({why}{tracefs}): file \
             rules are neither enforced nor observed"
        )));
    }
    for (name, link) in attached {
        links.add(name, link)?;
    }
    Ok(FileMode::Observing)
}

/// The agents' file rules in the kernel, and the programs that apply them: BPF LSM hooks where
/// enforcement works, syscall tracepoints that observe otherwise. Dropping it detaches them.
pub struct FileSensor {
    deny: HashMap<aya::maps::MapData, InodeKey, u32>,
    rules: HashMap<aya::maps::MapData, FileRuleKey, FileRule>,
    names: HashMap<aya::maps::MapData, FileNameKey, FileRule>,
    entries: HashMap<aya::maps::MapData, FileEntryKey, FileRule>,
    quarantine: HashMap<aya::maps::MapData, u32, u32>,
    mode: FileMode,
    /// The rule that agents' unresolved-location entries report.
    unresolved_rule: u32,
}

impl FileSensor {
    /// Attaches the LSM hooks when `enforce` (after [`probe_enforcement`] said they work),
    /// or the observing tracepoints otherwise; when `links` adopted an earlier agentd's
    /// programs, the mode is the one they were attached in.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let deny = super::take_map(object, DENY_MAP)?;
        let rules = super::take_map(object, RULES_MAP)?;
        let names = super::take_map(object, NAMES_MAP)?;
        let entries = super::take_map(object, ENTRIES_MAP)?;
        let quarantine = super::take_map(object, QUARANTINE_MAP)?;
        let LoadedObject { ebpf, btf, .. } = object;
        let mode = if links.adopting() {
            if links.has(PROGRAM) {
                FileMode::Enforcing {
                    missing: OPTIONAL_HOOKS
                        .into_iter()
                        .filter(|hook| {
                            !links.has(hook) && !predated(btf, hook, |older| links.has(older))
                        })
                        .collect(),
                }
            } else if links.has(OBSERVERS[0].0) {
                FileMode::Observing
            } else {
                FileMode::Unavailable(
                    "the adopted programs include no file hooks (the agentd that attached them \
                     could not attach the open tracepoints)"
                        .to_owned(),
                )
            }
        } else if enforce {
            let mut missing = Vec::new();
            let mut attached_hooks = Vec::new();
            for hook in REQUIRED_HOOKS.into_iter().chain(OPTIONAL_HOOKS) {
                let program: &mut Lsm = super::program(ebpf, hook)?;
                let attached = program
                    .load(hook, btf)
                    .map_err(load_error(hook))
                    .and_then(|()| program.attach().map_err(attach_error(hook)))
                    .and_then(|link_id| program.take_link(link_id).map_err(attach_error(hook)));
                match attached {
                    Ok(link) => {
                        links.add(hook, link)?;
                        attached_hooks.push(hook);
                    }
                    Err(err) if REQUIRED_HOOKS.contains(&hook) => return Err(err),
                    Err(_) if predated(btf, hook, |older| attached_hooks.contains(&older)) => {
                        tracing::debug!(
                            hook,
                            "this kernel predates the hook; its calls reach an older one"
                        );
                    }
                    // A kernel without CONFIG_SECURITY_PATH has no path hooks: opens and execs
                    // are still decided, moving files out of protected directories is not.
                    Err(err) => {
                        tracing::warn!(
                            hook,
                            "{:#}: this check is not enforced on this kernel",
                            anyhow::Error::from(err)
                        );
                        missing.push(hook);
                    }
                }
            }
            FileMode::Enforcing { missing }
        } else {
            attach_observers(ebpf, links)?
        };
        Ok(Self {
            deny,
            rules,
            names,
            entries,
            quarantine,
            mode,
            unresolved_rule: 0,
        })
    }

    pub fn mode(&self) -> &FileMode {
        &self.mode
    }

    /// The rule that the agents' unresolved-location entries report, from the next
    /// [`Self::set_rules`] on.
    pub fn set_unresolved_rule(&mut self, rule: u32) {
        self.unresolved_rule = rule;
    }

    /// Makes the agents' file rules exactly `objects`, `names` and `entries`, with each agent's
    /// unresolved-location entry (`files_unresolved`). On an error, the maps may hold a mix:
    /// the caller puts the previous rules back.
    pub fn set_rules(
        &mut self,
        objects: &[(FileRuleKey, FileRule)],
        names: &[(FileNameKey, FileRule)],
        entries: &[(FileEntryKey, FileRule)],
    ) -> Result<(), SensorError> {
        let mut all = objects.to_vec();
        all.extend(super::files_unresolved::unresolved_entries(
            objects,
            names,
            self.unresolved_rule,
        ));
        super::replace_all(&mut self.rules, &all, RULES_MAP)?;
        super::replace_all(&mut self.names, names, NAMES_MAP)?;
        super::replace_all(&mut self.entries, entries, ENTRIES_MAP)
    }

    /// Denies (or stops denying) every write of `agent`'s processes, reporting `rule_id`.
    pub fn set_quarantine(
        &mut self,
        agent: u32,
        rule_id: u32,
        on: bool,
    ) -> Result<(), SensorError> {
        let result = if on {
            self.quarantine.insert(agent, rule_id, 0)
        } else {
            match self.quarantine.remove(&agent) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        };
        result.map_err(super::map_error(QUARANTINE_MAP))
    }

    /// Denies every open of the file `key` names, reporting `rule_id`.
    pub fn deny(&mut self, key: InodeKey, rule_id: u32) -> Result<(), SensorError> {
        self.deny
            .insert(key, rule_id, 0)
            .map_err(super::map_error(DENY_MAP))
    }
}

/// The kernel key of a name or extension rule.
#[must_use]
pub fn name_key(agent: u32, kind: u32, name: &str) -> FileNameKey {
    let mut key = FileNameKey {
        agent,
        kind,
        name: [0; agentd_common::FILE_NAME_LEN],
    };
    let len = name.len().min(key.name.len() - 1);
    key.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    key
}

/// The kernel key of a rule on a directory entry.
#[must_use]
pub fn entry_key(agent: u32, entry: &crate::policy::files::FileEntry) -> FileEntryKey {
    let mut key = FileEntryKey {
        agent,
        pad: 0,
        dir: entry.dir,
        name: [0; agentd_common::FILE_NAME_LEN],
    };
    let len = entry.name.len().min(key.name.len() - 1);
    key.name[..len].copy_from_slice(&entry.name.as_bytes()[..len]);
    key
}
