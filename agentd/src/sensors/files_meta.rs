//! Metadata changes judged by the file rules as writes: `chmod`, `chown`, `utimes` and
//! truncation (`inode_setattr`), extended attributes (`inode_setxattr`, `inode_removexattr`)
//! and, on kernels that route them through hooks of their own (6.2 and later), POSIX ACLs
//! (`inode_set_acl`, `inode_remove_acl`). The programs read `FILE_RULES`, `FILE_NAMES` and
//! `FILE_QUARANTINE`, which `sensors::files` owns; this unit only attaches them.

use super::{SensorError, attach_optional_lsm};
use crate::{ebpf::LoadedObject, pins::Links};

/// The metadata hooks' programs on this kernel, and the hooks none can serve here.
fn programs(object: &LoadedObject) -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    let mut programs = Vec::new();
    let mut missing = Vec::new();
    // The hook gained an idmap parameter in front of the dentry in 6.9.
    match object.hook_params("inode_setattr") {
        Some(3) => programs.push(("meta_setattr_idmap", "inode_setattr")),
        Some(2) => programs.push(("meta_setattr", "inode_setattr")),
        _ => missing.push("inode_setattr"),
    }
    programs.push(("meta_setxattr", "inode_setxattr"));
    programs.push(("meta_removexattr", "inode_removexattr"));
    // Kernels without these hooks set ACLs through `inode_setxattr`: nothing is missing then.
    if object.hook_params("inode_set_acl").is_some() {
        programs.push(("meta_set_acl", "inode_set_acl"));
    }
    if object.hook_params("inode_remove_acl").is_some() {
        programs.push(("meta_remove_acl", "inode_remove_acl"));
    }
    (programs, missing)
}

/// The attached metadata hooks.
pub struct MetaSensor {
    missing: Vec<&'static str>,
}

impl MetaSensor {
    /// Attaches the hooks when `enforce` (BPF LSM works), unless `links` adopted them.
    pub fn attach(
        object: &mut LoadedObject,
        enforce: bool,
        links: &mut Links,
    ) -> Result<Self, SensorError> {
        let (programs, mut missing) = programs(object);
        if enforce || links.adopting() {
            missing.extend(attach_optional_lsm(object, &programs, links)?);
        } else {
            missing.extend(programs.iter().map(|(_, hook)| *hook));
        }
        Ok(Self { missing })
    }

    /// The LSM hooks of this unit that are not enforced here.
    #[must_use]
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }
}
