//! File decisions in BPF LSM hooks, on kernel objects: a file is identified by the device and
//! inode of the `struct file` being opened, never by the path string the process passed.

use agentd_common::{
    EventKind, FILE_RULE_DEPTH, FileEvent, FileRule, FileRuleKey, InodeKey, Verdict, file_access,
    net_action,
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};

use crate::{
    events::{EVENTS, count_drop, header},
    kernel::{file_inode_key, inode_key, offsets, read_field},
    tagging::tag_of,
};

/// (agent, file or directory) → the agent's rule on it. 16,384 rules across agents.
#[map]
pub static FILE_RULES: HashMap<FileRuleKey, FileRule> = HashMap::with_max_entries(16_384, 0);

/// `f_flags` bits: the access mode, and the marker an exec's open carries.
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const FMODE_EXEC: u32 = 0x20;

/// The `file_access` bits an open with `f_flags` asks for.
#[inline(always)]
fn access_of(flags: u32) -> u32 {
    let mut access = match flags & O_ACCMODE {
        O_WRONLY => file_access::WRITE,
        O_RDWR => file_access::READ | file_access::WRITE,
        _ => file_access::READ,
    };
    if flags & FMODE_EXEC != 0 {
        access |= file_access::EXEC;
    }
    access
}

/// Files that no one may open, keyed by kernel object, valued by rule id. 4,096 rules is far
/// more than any file policy names today; `agentd` refuses to load a policy that would not fit.
#[map]
pub static DENY_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(4096, 0);

const EPERM: i32 = 1;

/// `security_file_open(struct file *file)`; BPF LSM adds the previous hook's return value as
/// the last argument.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        // An earlier LSM already denied: keep its answer.
        return previous;
    }
    match try_file_open(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_file_open(ctx: &LsmContext) -> Result<i32, i32> {
    let offsets = offsets();
    let file: *const u8 = ctx.arg(0);
    // A file whose inode cannot be read matches no rule: with no rule there is nothing to deny.
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;
    let open_flags = read_field::<u32>(file, offsets.file_flags).unwrap_or(0);
    let access = access_of(open_flags);

    let mut global_rule = 0u32;
    if let Some(rule) = DENY_INODES.get_ptr(key) {
        // SAFETY: a valid map value pointer.
        global_rule = unsafe { *rule };
    }
    if global_rule != 0 {
        report(key, global_rule, open_flags, 0, access, true, 0);
        return Ok(-EPERM);
    }

    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return Ok(0);
    };
    let dentry = read_field::<*const u8>(file, offsets.file_dentry).map_err(|_| 0)?;
    Ok(decide(&offsets, tag.agent, dentry, key, access, open_flags))
}

/// The verdict for `agent` doing `access` on the object at `dentry`: the nearest rule wins,
/// the object's own, then its directory's, then upwards. The walk follows dentries, so links,
/// renames and bind mounts lead to the same rules. Reports denials and audit hits; returns 0
/// or `-EPERM`.
#[inline(always)]
fn decide(
    offsets: &agentd_common::KernelOffsets,
    agent: u32,
    mut dentry: *const u8,
    key: InodeKey,
    access: u32,
    open_flags: u32,
) -> i32 {
    for _ in 0..FILE_RULE_DEPTH {
        let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
            break;
        };
        let Ok(node) = inode_key(offsets, inode) else {
            break;
        };
        let rule_key = FileRuleKey {
            agent,
            pad: 0,
            inode: node,
        };
        let mut found = 0u32;
        let (mut covers, mut action, mut audit, mut rule) = (0u32, 0u8, 0u8, 0u32);
        if let Some(value) = FILE_RULES.get_ptr(rule_key) {
            found = 1;
            // SAFETY: a valid map value pointer.
            unsafe {
                covers = (*value).access;
                action = (*value).action;
                audit = (*value).audit;
                rule = (*value).rule;
            }
        }
        if found != 0 && covers & access != 0 {
            if action != net_action::DENY {
                return 0;
            }
            if audit != 0 {
                report(
                    key,
                    rule,
                    open_flags,
                    agent,
                    access,
                    false,
                    FileEvent::FLAG_WOULD_DENY,
                );
                return 0;
            }
            report(key, rule, open_flags, agent, access, true, 0);
            return -EPERM;
        }
        let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
            break;
        };
        if parent == dentry {
            break;
        }
        dentry = parent;
    }
    0
}

/// The verdict for a tagged process changing the directory entry `dentry` (unlink, rename,
/// link): a change that needs `access` on an object a rule protects is denied.
#[inline(always)]
fn guard_entry(dentry: *const u8, access: u32) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return 0;
    };
    let offsets = offsets();
    let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
        return 0;
    };
    let Ok(key) = inode_key(&offsets, inode) else {
        return 0;
    };
    decide(&offsets, tag.agent, dentry, key, access, 0)
}

/// `security_path_unlink(const struct path *dir, struct dentry *dentry)`: removing a protected
/// file is writing it.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE)
}

/// `security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`: moving a protected
/// object out of its place is writing it.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE)
}

/// `security_path_link(old_dentry, new_dir, new_dentry)`: a new name for a protected file would
/// let it be reached from outside its directory, so it needs every access the rule covers.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    guard_entry(
        ctx.arg(0),
        file_access::READ | file_access::WRITE | file_access::EXEC,
    )
}

#[inline(always)]
fn report(
    inode: InodeKey,
    rule_id: u32,
    open_flags: u32,
    agent: u32,
    access: u32,
    deny: bool,
    flags: u32,
) {
    let event = FileEvent {
        header: header(EventKind::File),
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        verdict: if deny {
            Verdict::Deny as u32
        } else {
            Verdict::Allow as u32
        },
        inode,
        open_flags,
        rule_id,
        agent,
        access,
        flags,
        pad: 0,
    };
    if EVENTS.output::<FileEvent>(&event, 0).is_err() {
        count_drop();
    }
}
