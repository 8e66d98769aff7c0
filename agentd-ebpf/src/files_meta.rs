//! Metadata changes judged as writes: `chmod`, `chown`, `utimes` and truncation
//! (`inode_setattr`), extended attributes (`inode_setxattr`, `inode_removexattr`) and POSIX
//! ACLs, which kernels from 6.2 set through their own hooks (`inode_set_acl`,
//! `inode_remove_acl`). A tagged process changing the metadata of an object that a rule
//! write-protects (agentd's own files among them), or any object while its agent is
//! quarantined, is refused, as the same rules refuse opening it for writing.

use agentd_common::{FileHook, file_access};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    file_rules::{Access, current_agent, decide, path_kind},
    kernel::{inode_key, offsets, read_field},
};

/// The verdict on a tagged process changing the metadata of the object at `dentry`.
#[inline(always)]
fn guard_metadata(dentry: *const u8, hook: FileHook) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let offsets = offsets();
    let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
        return 0;
    };
    let Ok(key) = inode_key(&offsets, inode) else {
        return 0;
    };
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: dentry,
        names_first: false,
        key,
        access: file_access::WRITE,
        open_flags: 0,
        hook,
        path: core::ptr::null(),
        observed: false,
        flags: 0,
    };
    decide::<{ path_kind::NAME }>(&offsets, &access)
}

/// `security_inode_setattr(dentry, attr)`, up to 6.8. Userspace attaches this program or
/// [`meta_setattr_idmap`], whichever matches the kernel's prototype (its BTF says).
#[lsm(hook = "inode_setattr")]
pub fn meta_setattr(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(0), FileHook::SetAttr)
}

/// `security_inode_setattr(idmap, dentry, attr)`, from 6.9.
#[lsm(hook = "inode_setattr")]
pub fn meta_setattr_idmap(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(1), FileHook::SetAttr)
}

/// `security_inode_setxattr(idmap, dentry, name, value, size, flags)` (a user namespace in
/// front of the dentry before 6.3: the same position).
#[lsm(hook = "inode_setxattr")]
pub fn meta_setxattr(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(6);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(1), FileHook::SetXattr)
}

/// `security_inode_removexattr(idmap, dentry, name)`.
#[lsm(hook = "inode_removexattr")]
pub fn meta_removexattr(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(1), FileHook::RemoveXattr)
}

/// `security_inode_set_acl(idmap, dentry, acl_name, kacl)`, from 6.2 (before, ACLs are set
/// through `inode_setxattr`).
#[lsm(hook = "inode_set_acl")]
pub fn meta_set_acl(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(1), FileHook::SetXattr)
}

/// `security_inode_remove_acl(idmap, dentry, acl_name)`, from 6.2.
#[lsm(hook = "inode_remove_acl")]
pub fn meta_remove_acl(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_metadata(ctx.arg(1), FileHook::RemoveXattr)
}
