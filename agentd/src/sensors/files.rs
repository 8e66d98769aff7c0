//! The file sensor: BPF LSM `file_open`, denying opens of files named by kernel object.
//!
//! This is the first piece of file enforcement: a deny list of (device, inode) pairs. Policy
//! compilation, audit mode and the other hooks arrive with the file-controls work.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use agentd_common::{FileRule, FileRuleKey, InodeKey};
use aya::{
    maps::HashMap,
    programs::{Lsm, lsm::LsmLink},
};

use super::{SensorError, attach_error, load_error};
use crate::ebpf::LoadedObject;

const PROGRAM: &str = "file_open";
/// Hooks that stop a protected file being moved, removed or linked out of its directory.
const PATH_HOOKS: [&str; 3] = ["path_unlink", "path_rename", "path_link"];
const DENY_MAP: &str = "DENY_INODES";
const RULES_MAP: &str = "FILE_RULES";

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

/// The (device, inode) key of the file at `path`, as the kernel programs see it.
pub fn inode_key(path: &Path) -> std::io::Result<InodeKey> {
    Ok(inode_key_of(&fs::metadata(path)?))
}

/// The (device, inode) key of a file from its metadata.
#[must_use]
pub fn inode_key_of(meta: &fs::Metadata) -> InodeKey {
    let dev = meta.dev();
    // glibc's major() and minor() of a 64-bit dev_t; both fit in 32 bits.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    InodeKey::new(
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
        meta.ino(),
    )
}

/// The attached `file_open` hook, its global deny map and the agents' file rules. Dropping it
/// detaches the program.
pub struct FileSensor {
    deny: HashMap<aya::maps::MapData, InodeKey, u32>,
    rules: HashMap<aya::maps::MapData, FileRuleKey, FileRule>,
    _links: Vec<LsmLink>,
}

impl FileSensor {
    pub fn attach(object: &mut LoadedObject) -> Result<Self, SensorError> {
        let LoadedObject { ebpf, btf, .. } = object;
        let deny = ebpf
            .take_map(DENY_MAP)
            .ok_or(SensorError::MissingMap { map: DENY_MAP })?;
        let deny = HashMap::try_from(deny).map_err(|source| SensorError::Map {
            map: DENY_MAP,
            source,
        })?;
        let rules = ebpf
            .take_map(RULES_MAP)
            .ok_or(SensorError::MissingMap { map: RULES_MAP })?;
        let rules = HashMap::try_from(rules).map_err(super::map_error(RULES_MAP))?;
        let mut links = Vec::new();
        for hook in [PROGRAM].into_iter().chain(PATH_HOOKS) {
            let program: &mut Lsm = super::program(ebpf, hook)?;
            let attached = program
                .load(hook, btf)
                .map_err(load_error(hook))
                .and_then(|()| program.attach().map_err(attach_error(hook)))
                .and_then(|link_id| program.take_link(link_id).map_err(attach_error(hook)));
            match attached {
                Ok(link) => links.push(link),
                Err(err) if hook == PROGRAM => return Err(err),
                // A kernel without CONFIG_SECURITY_PATH has no path hooks: opens are still
                // decided, moving files out of protected directories is not.
                Err(err) => tracing::warn!(
                    hook,
                    "{:#}: protected directories do not stop renames, unlinks and links here",
                    anyhow::Error::from(err)
                ),
            }
        }
        Ok(Self {
            deny,
            rules,
            _links: links,
        })
    }

    /// Makes the agents' file rules exactly `want`.
    pub fn set_rules(&mut self, want: &[(FileRuleKey, FileRule)]) -> Result<(), SensorError> {
        super::replace_all(&mut self.rules, want, RULES_MAP)
    }

    /// Denies every open of the file `key` names, reporting `rule_id`.
    pub fn deny(&mut self, key: InodeKey, rule_id: u32) -> Result<(), SensorError> {
        self.deny
            .insert(key, rule_id, 0)
            .map_err(|source| SensorError::Map {
                map: DENY_MAP,
                source,
            })
    }
}
