//! Descriptors opened before a rule: `file_permission` runs at every read and write (and
//! directory listing) of an open file. A tagged process's read or write of a file in
//! `HELD_FILES` is judged by the file rules as an open with that access would be, so that a
//! descriptor an agent opened before a rule applied, or before it was quarantined, is refused
//! from then on. Userspace fills the list, after each change of the rules, with the files that
//! agents' processes hold open at that moment; files opened later were judged at their open.
//! A process tagged while it ran (an exec or a fork that tagged it, or agentd tagging it) holds
//! descriptors it opened untagged: until agentd has listed them, every read and write it makes
//! is judged (`tagging::LATE_TAGGED`). While the list is empty and no such process is pending,
//! every read and write pays three array reads.
//!
//! A descriptor can also reach an agent without an open by it: passed over a unix socket
//! (`SCM_RIGHTS`) or taken from another process (`pidfd_getfd`). Both go through
//! `file_receive`, which judges the received file as an open with the access its descriptor
//! was opened for, so a file the rules deny cannot be handed to an agent.

use agentd_common::{FileHook, InodeKey, file_access};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::{Array, HashMap},
    programs::LsmContext,
};

use crate::{
    file_rules::{Access, current_agent, decide, path_kind},
    files::access_of,
    kernel::{file_inode_key, offsets, read_field},
    tagging::{is_late, late_tags_pending},
    walk::file_walk_start,
};

/// Files that agents' processes held open when the rules last changed, by kernel object. 16,384:
/// userspace lists at most that many and says when it had to stop.
#[map]
pub static HELD_FILES: HashMap<InodeKey, u32> = HashMap::with_max_entries(16_384, 0);

/// `[0]`: how many entries `HELD_FILES` has; 0 lets every read and write through at once.
#[map]
pub static HELD_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// `MAY_WRITE`, `MAY_READ` and `MAY_APPEND` in the hook's mask (`include/linux/fs.h`).
const MAY_WRITE: i32 = 0x2;
const MAY_READ: i32 = 0x4;
const MAY_APPEND: i32 = 0x8;

/// `security_file_receive(struct file *file)`: a descriptor installed in a tagged process by
/// `SCM_RIGHTS` or `pidfd_getfd`. A refusal leaves it out (`recvmsg` reports `MSG_CTRUNC`;
/// `pidfd_getfd` fails with `EPERM`).
#[lsm(hook = "file_receive")]
pub fn file_received(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    match try_file_received(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_file_received(ctx: &LsmContext) -> Result<i32, i32> {
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    let offsets = offsets();
    let file: *const u8 = ctx.arg(0);
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;
    let flags = read_field::<u32>(file, offsets.file_flags).unwrap_or(0);
    // `O_TRUNC` is long cleared from an open file's flags: the access mode alone counts.
    Ok(judge_open_file(
        file,
        agent,
        key,
        access_of(flags),
        flags,
        FileHook::Receive,
    ))
}

/// The file rules' verdict on `agent` using the open `file` (`key`) for `access`, as an open
/// with that access would be judged. Events name the file's dentry: `bpf_d_path` is not
/// offered to these hooks.
#[inline(always)]
fn judge_open_file(
    file: *const u8,
    agent: u32,
    key: InodeKey,
    access: u32,
    open_flags: u32,
    hook: FileHook,
) -> i32 {
    // The real file's dentry where overlayfs opened it under the overlay's path, as at open.
    let walk = file_walk_start(file);
    let access = Access {
        agent,
        name_dentry: walk,
        walk,
        names_first: false,
        key,
        access,
        open_flags,
        hook,
        path: core::ptr::null(),
        observed: false,
        flags: 0,
    };
    decide::<{ path_kind::NAME }>(&offsets(), &access)
}

/// `security_file_permission(struct file *file, int mask)`.
#[lsm(hook = "file_permission")]
pub fn file_held(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    match try_file_held(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_file_held(ctx: &LsmContext) -> Result<i32, i32> {
    let held = HELD_COUNT.get(0).is_some_and(|count| *count != 0);
    let late = late_tags_pending();
    if !held && !late {
        return Ok(0);
    }
    let mask: i32 = ctx.arg(1);
    let mut access = 0;
    if mask & MAY_READ != 0 {
        access |= file_access::READ;
    }
    if mask & (MAY_WRITE | MAY_APPEND) != 0 {
        access |= file_access::WRITE;
    }
    if access == 0 {
        return Ok(0);
    }
    let offsets = offsets();
    let file: *const u8 = ctx.arg(0);
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;
    let listed = held && HELD_FILES.get_ptr(key).is_some();
    // A process tagged while it ran, whose descriptors agentd has not listed yet: every file.
    if !listed && !(late && is_late((bpf_get_current_pid_tgid() >> 32) as u32)) {
        return Ok(0);
    }
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    Ok(judge_open_file(file, agent, key, access, 0, FileHook::Held))
}
