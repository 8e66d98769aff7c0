//! agentd's files protected by identity, in BPF LSM hooks of their own. `SELF_OBJECTS` names
//! agentd's binary, configuration, policy, state, pins and event output by kernel object, and
//! the directories above them. No tagged process may rename, replace (rename over, exchange),
//! link, unlink or create anything in or over them, or mount over them or a directory above
//! them: each would give agentd's names other contents without touching the objects that
//! opens are checked against. Reads and writes of the objects themselves, and `chmod`,
//! `chown` and `setxattr`, are judged by the file rules agentd adds for every agent.

use agentd_common::{FileEvent, FileHook, InodeKey, SelfObject, self_object};
use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};

use crate::{
    file_rules::{Access, Hit, current_agent, path_kind, report},
    kernel::{inode_key, offsets, read_at, read_field},
};

/// agentd's objects and the directories above them. 256: a handful of objects, each with a
/// few dozen ancestors at most.
#[map]
pub static SELF_OBJECTS: HashMap<InodeKey, SelfObject> = HashMap::with_max_entries(256, 0);

const EPERM: i32 = 1;

/// How far up the walk looks for agentd's directories. Bounded and unrolled (a `bpf_loop` walk
/// here did not load on 6.1): agentd's objects sit a few levels below the root, and nothing
/// can be put deeper below them, since no agent may create anything inside them.
const SELF_WALK_DEPTH: usize = 16;

/// The protected object `dentry` is or lies in: the dentry itself when it is one of agentd's
/// objects (or, with `ancestors`, a directory above one), else the nearest of its parents that
/// is one of agentd's directories. A negative dentry (a name about to be created) has no
/// object of its own; its parents still count. Returns the object's key and rule.
#[inline(always)]
fn protected(dentry: *const u8, ancestors: bool) -> Option<(InodeKey, u32)> {
    let offsets = offsets();
    let mut here = dentry;
    for level in 0..SELF_WALK_DEPTH {
        if let Ok(inode) = read_field::<*const u8>(here, offsets.dentry_inode)
            && let Ok(key) = inode_key(&offsets, inode)
            && let Some(value) = SELF_OBJECTS.get_ptr(key)
        {
            // SAFETY: a valid map value pointer, copied out field by field.
            let (kind, rule) = unsafe { ((*value).kind, (*value).rule) };
            let wanted = if ancestors && level == 0 {
                self_object::OWN | self_object::ANCESTOR
            } else {
                self_object::OWN
            };
            if kind & wanted != 0 {
                return Some((key, rule));
            }
        }
        let Ok(parent) = read_field::<*const u8>(here, offsets.dentry_parent) else {
            return None;
        };
        if parent == here {
            return None;
        }
        here = parent;
    }
    None
}

/// The verdict on a tagged process changing the names at `dentries` (null entries skipped):
/// denied, and reported, when one is or lies in agentd's objects.
#[inline(always)]
fn guard(dentries: [*const u8; 2], ancestors: bool, hook: FileHook) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    for dentry in dentries {
        if dentry.is_null() {
            continue;
        }
        if let Some((key, rule)) = protected(dentry, ancestors) {
            let access = Access {
                agent,
                name_dentry: dentry,
                walk: dentry,
                names_first: false,
                key,
                access: agentd_common::file_access::WRITE,
                open_flags: 0,
                hook,
                path: core::ptr::null(),
                observed: false,
                flags: 0,
            };
            report::<{ path_kind::NAME }>(
                &offsets(),
                &access,
                &Hit {
                    rule,
                    access: agentd_common::file_access::WRITE,
                },
                true,
                FileEvent::FLAG_SELF_PROTECTION,
            );
            return -EPERM;
        }
    }
    0
}

/// `security_inode_rename(old_dir, old_dentry, new_dir, new_dentry)`: the kernel calls it
/// twice for `RENAME_EXCHANGE`, once each way. Both names are judged: moving one of agentd's
/// objects (or a directory above one) away, and renaming something over one or into one.
#[lsm(hook = "inode_rename")]
pub fn protect_inode_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), ctx.arg(3)], true, FileHook::Rename)
}

/// `security_inode_link(old_dentry, dir, new_dentry)`: a new name for one of agentd's files,
/// or a file linked into one of its directories.
#[lsm(hook = "inode_link")]
pub fn protect_inode_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(0), ctx.arg(2)], false, FileHook::Link)
}

/// `security_inode_unlink(dir, dentry)`.
#[lsm(hook = "inode_unlink")]
pub fn protect_inode_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), core::ptr::null()], false, FileHook::Unlink)
}

/// `security_inode_rmdir(dir, dentry)`: an empty policy directory could be replaced.
#[lsm(hook = "inode_rmdir")]
pub fn protect_inode_rmdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), core::ptr::null()], false, FileHook::Unlink)
}

/// `security_inode_mkdir(dir, dentry, mode)`.
#[lsm(hook = "inode_mkdir")]
pub fn protect_inode_mkdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), core::ptr::null()], false, FileHook::Create)
}

/// `security_inode_symlink(dir, dentry, old_name)`.
#[lsm(hook = "inode_symlink")]
pub fn protect_inode_symlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), core::ptr::null()], false, FileHook::Create)
}

/// `security_inode_mknod(dir, dentry, mode, dev)`: FIFOs, sockets and device nodes.
#[lsm(hook = "inode_mknod")]
pub fn protect_inode_mknod(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    guard([ctx.arg(1), core::ptr::null()], false, FileHook::Create)
}

/// The dentry of a `struct path *`.
#[inline(always)]
fn path_dentry(path: *const u8) -> *const u8 {
    read_at::<*const u8>(path, offsets().path_dentry).unwrap_or(core::ptr::null())
}

/// `security_sb_mount(dev_name, path, type, flags, data)`: every `mount(2)`, with `path` its
/// target (a new mount, a bind, a move, a remount, a propagation change). A mount over one of
/// agentd's objects or a directory above one would hide it behind other contents.
#[lsm(hook = "sb_mount")]
pub fn protect_sb_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    guard(
        [path_dentry(ctx.arg(1)), core::ptr::null()],
        true,
        FileHook::Mount,
    )
}

/// `security_move_mount(from_path, to_path)`: the new mount API's attach (`fsmount` and
/// `open_tree` followed by `move_mount`), and moving a mount that agentd's files live on away.
#[lsm(hook = "move_mount")]
pub fn protect_move_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard(
        [path_dentry(ctx.arg(0)), path_dentry(ctx.arg(1))],
        true,
        FileHook::Mount,
    )
}
