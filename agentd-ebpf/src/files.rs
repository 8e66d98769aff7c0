//! File decisions in BPF LSM hooks, on kernel objects: a file is identified by the device and
//! inode of the object being opened, executed, created, truncated, moved or removed, and by the
//! directories above it, never by the path string the process passed. Where BPF LSM is not
//! active, the same rules are evaluated after the fact from the open syscalls' tracepoints and
//! reported as observed, never enforced.

use agentd_common::{
    CaAgent, EventKind, FILE_EXTENSION_LEN, FILE_NAME_LEN, FILE_PATH_LEN, FILE_RULE_DEPTH,
    FileEvent, FileHook, FileNameKey, FileRule, FileRuleKey, InodeKey, KernelOffsets, Verdict,
    file_access, file_name_kind, net_action,
};
use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes,
    },
    macros::{lsm, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{LsmContext, TracePointContext},
};

use crate::{
    events::{header, reserve, wakeup},
    kernel::{file_inode_key, inode_key, offsets, read_at, read_field},
    net_access::CA_AGENTS,
    tagging::{cgroup_tag, tag_of},
};

/// (agent, file or directory) → the agent's rule on it. 16,384 rules across agents.
#[map]
pub static FILE_RULES: HashMap<FileRuleKey, FileRule> = HashMap::with_max_entries(16_384, 0);

/// (agent, file name or extension) → the agent's rule on such files. 4,096 across agents: the
/// shipped sensitive-files set names about twenty.
#[map]
pub static FILE_NAMES: HashMap<FileNameKey, FileRule> = HashMap::with_max_entries(4096, 0);

/// Files that no one may open, keyed by kernel object, valued by rule id. 4,096 rules is far
/// more than any file policy names today; `agentd` refuses to load a policy that would not fit.
#[map]
pub static DENY_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(4096, 0);

/// Quarantined agents → the rule id reported: their writes are denied everywhere. 4,096, as
/// many as agents can be named.
#[map]
pub static FILE_QUARANTINE: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Thread id → the user pointer of the file name it passed to an open syscall, from syscall
/// entry to exit, for tagged processes only, where BPF LSM is not active. LRU: a thread that
/// never returns (killed mid-call) cannot fill it; 8,192 threads in an open at once is plenty.
#[map]
static OPEN_NAMES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// `f_flags` bits of the access mode.
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;

const EPERM: i32 = 1;

/// How an event names the file.
pub(crate) mod path_kind {
    /// `bpf_d_path` on the hook's `struct path`.
    pub const RESOLVED: u8 = 0;
    /// The last component, from the dentry.
    pub const NAME: u8 = 1;
    /// The string the process passed to the syscall (observation only).
    pub const AS_PASSED: u8 = 2;
}

/// What a rule says about an access.
mod outcome {
    /// No rule covers the access here: keep looking.
    pub const NONE: u32 = 0;
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
    /// Audit mode: it would deny.
    pub const WOULD_DENY: u32 = 3;
}

/// The `file_access` bits an open with `f_flags` asks for. An exec's open asks for read: the
/// exec itself is decided in `bprm_check_security`.
#[inline(always)]
fn access_of(flags: u32) -> u32 {
    match flags & O_ACCMODE {
        O_WRONLY => file_access::WRITE,
        O_RDWR => file_access::READ | file_access::WRITE,
        _ => file_access::READ,
    }
}

/// One access to decide.
pub(crate) struct Access {
    pub(crate) agent: u32,
    /// The dentry whose name name-and-extension rules match.
    pub(crate) name_dentry: *const u8,
    /// The dentry where the walk up the tree starts: the object itself, or for a creation the
    /// directory it is created in.
    pub(crate) walk: *const u8,
    /// For creations: name rules are checked before the walk, since the object has no inode
    /// yet. Otherwise they come right after the object's own rule.
    pub(crate) names_first: bool,
    /// The object reported in events.
    pub(crate) key: InodeKey,
    pub(crate) access: u32,
    pub(crate) open_flags: u32,
    pub(crate) hook: FileHook,
    /// A `struct path *` (for `path_kind::RESOLVED`) or a user string (`AS_PASSED`).
    pub(crate) path: *const u8,
    /// A tracepoint saw the access after it happened: report, never deny.
    pub(crate) observed: bool,
}

/// The rule on `value`, if it covers `access`: an `outcome` and the rule's id.
#[inline(always)]
fn judge(value: *const FileRule, access: u32, rule: &mut u32) -> u32 {
    // SAFETY: a valid map value pointer, copied out field by field.
    let (covers, action, audit, id) = unsafe {
        (
            (*value).access,
            (*value).action,
            (*value).audit,
            (*value).rule,
        )
    };
    if covers & access == 0 {
        return outcome::NONE;
    }
    *rule = id;
    if action != net_action::DENY {
        outcome::ALLOW
    } else if audit != 0 {
        outcome::WOULD_DENY
    } else {
        outcome::DENY
    }
}

/// The agent's rule on the object at `dentry`, by kernel object.
#[inline(always)]
fn object_rule(
    offsets: &KernelOffsets,
    agent: u32,
    dentry: *const u8,
    access: u32,
    rule: &mut u32,
) -> Result<u32, i64> {
    let inode = read_field::<*const u8>(dentry, offsets.dentry_inode)?;
    let node = inode_key(offsets, inode)?;
    let key = FileRuleKey {
        agent,
        pad: 0,
        inode: node,
    };
    Ok(match FILE_RULES.get_ptr(key) {
        Some(value) => judge(value, access, rule),
        None => outcome::NONE,
    })
}

/// The agent's rule on files with `dentry`'s name, then on files with its extension (what
/// follows the last `.` that is not the name's first character).
#[inline(always)]
fn name_rule(
    offsets: &KernelOffsets,
    agent: u32,
    dentry: *const u8,
    access: u32,
    rule: &mut u32,
) -> u32 {
    let Ok(name) = read_field::<*const u8>(dentry, offsets.dentry_name) else {
        return outcome::NONE;
    };
    let Ok(len) = read_field::<u32>(dentry, offsets.dentry_name_len) else {
        return outcome::NONE;
    };
    let len = len as usize;
    if len == 0 {
        return outcome::NONE;
    }
    let mut key = FileNameKey {
        agent,
        kind: file_name_kind::NAME,
        name: [0; FILE_NAME_LEN],
    };
    if len < FILE_NAME_LEN {
        // SAFETY: the helper validates the kernel address.
        if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.name) }.is_ok()
            && let Some(value) = FILE_NAMES.get_ptr(key)
        {
            let found = judge(value, access, rule);
            if found != outcome::NONE {
                return found;
            }
        }
    }

    // The name's last FILE_EXTENSION_LEN bytes (fewer for a short name).
    let tail_start = len.saturating_sub(FILE_EXTENSION_LEN);
    let tail_len = len - tail_start;
    // SAFETY: the helper validates the kernel address.
    let Ok(tail) =
        (unsafe { bpf_probe_read_kernel::<[u8; FILE_EXTENSION_LEN]>(name.add(tail_start).cast()) })
    else {
        return outcome::NONE;
    };
    let mut dot = FILE_EXTENSION_LEN;
    for back in 1..=FILE_EXTENSION_LEN {
        let at = FILE_EXTENSION_LEN - back;
        if at < tail_len && tail[at] == b'.' {
            dot = at;
            break;
        }
    }
    // No dot, a dot that starts the name (`.bashrc`), or a dot that ends it: no extension.
    if dot >= FILE_EXTENSION_LEN || tail_start + dot == 0 || dot + 1 >= tail_len {
        return outcome::NONE;
    }
    key.kind = file_name_kind::EXTENSION;
    key.name = [0; FILE_NAME_LEN];
    for i in 0..FILE_EXTENSION_LEN - 1 {
        let from = dot + 1 + i;
        if from >= tail_len {
            break;
        }
        key.name[i] = tail[from & (FILE_EXTENSION_LEN - 1)];
    }
    match FILE_NAMES.get_ptr(key) {
        Some(value) => judge(value, access, rule),
        None => outcome::NONE,
    }
}

/// The decision's file control on one access (`slot`: 0 read, 1 write, 2 exec) nearest to
/// `dentry`: the object's own, then its directory's, then upwards. A lapsed control (its expiry
/// passed at `now`) is as if it were not there. Returns true, with the control's rule, when the
/// nearest control in force denies.
#[inline(always)]
fn decision_denies(
    offsets: &KernelOffsets,
    agent: u32,
    start: *const u8,
    slot: usize,
    now: u64,
    rule: &mut u32,
) -> bool {
    let mut dentry = start;
    for _ in 0..FILE_RULE_DEPTH {
        let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
            return false;
        };
        let Ok(node) = inode_key(offsets, inode) else {
            return false;
        };
        let key = FileRuleKey {
            agent,
            pad: 0,
            inode: node,
        };
        if let Some(value) = FILE_RULES.get_ptr(key) {
            // SAFETY: a valid map value pointer; `slot` is below the array's length.
            let (present, action, id, expires) = unsafe {
                let control = &(*value).decision[slot % 3];
                (
                    control.present,
                    control.action,
                    control.rule,
                    control.expires_ns,
                )
            };
            if present != 0 && (expires == 0 || now < expires) {
                *rule = id;
                return action == net_action::DENY;
            }
        }
        let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
            return false;
        };
        if parent == dentry {
            return false;
        }
        dentry = parent;
    }
    false
}

/// Whether the agent's Conditional Access decision denies the access: for each access asked
/// for, the nearest file control in force decides. Deny wins over the local rules, which are
/// judged only when the decision does not deny; a decision never widens what they allow.
#[inline(always)]
fn decision_verdict(offsets: &KernelOffsets, access: &Access, rule: &mut u32) -> bool {
    let mut flags = 0u32;
    if let Some(ca) = CA_AGENTS.get_ptr(access.agent) {
        // SAFETY: a valid map value pointer.
        flags = unsafe { (*ca).flags };
    }
    if flags & CaAgent::FLAG_FILE_CONTROLS == 0 {
        return false;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // The object itself, or for a creation the directory it is created in.
    let start = access.walk;
    (access.access & file_access::READ != 0
        && decision_denies(offsets, access.agent, start, 0, now, rule))
        || (access.access & file_access::WRITE != 0
            && decision_denies(offsets, access.agent, start, 1, now, rule))
        || (access.access & file_access::EXEC != 0
            && decision_denies(offsets, access.agent, start, 2, now, rule))
}

/// The verdict for one access: the nearest rule that covers it decides. The object's own rule,
/// then rules on its name and extension, then its directory's, then upwards. The walk follows
/// dentries, so links, renames and bind mounts lead to the same rules. Reports denials, audit
/// hits and observed violations; returns 0 or `-EPERM`.
#[inline(always)]
pub(crate) fn decide<const PATH: u8>(offsets: &KernelOffsets, access: &Access) -> i32 {
    let mut rule = 0u32;
    let mut found = outcome::NONE;
    if access.access & file_access::WRITE != 0
        && let Some(quarantine) = FILE_QUARANTINE.get_ptr(access.agent)
    {
        // SAFETY: a valid map value pointer.
        rule = unsafe { *quarantine };
        found = outcome::DENY;
    }
    let mut via = 0u32;
    if found == outcome::NONE && decision_verdict(offsets, access, &mut rule) {
        found = outcome::DENY;
        via = FileEvent::FLAG_CONDITIONAL_ACCESS;
    }
    if found == outcome::NONE && access.names_first {
        found = name_rule(
            offsets,
            access.agent,
            access.name_dentry,
            access.access,
            &mut rule,
        );
    }
    let mut dentry = access.walk;
    if found == outcome::NONE {
        for level in 0..FILE_RULE_DEPTH {
            let Ok(here) = object_rule(offsets, access.agent, dentry, access.access, &mut rule)
            else {
                break;
            };
            found = here;
            if found != outcome::NONE {
                break;
            }
            if level == 0 && !access.names_first {
                found = name_rule(
                    offsets,
                    access.agent,
                    access.name_dentry,
                    access.access,
                    &mut rule,
                );
                if found != outcome::NONE {
                    break;
                }
            }
            let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
                break;
            };
            if parent == dentry {
                break;
            }
            dentry = parent;
        }
    }
    if found == outcome::DENY && !access.observed {
        report::<PATH>(offsets, access, rule, true, via);
        -EPERM
    } else if found == outcome::DENY {
        report::<PATH>(
            offsets,
            access,
            rule,
            false,
            FileEvent::FLAG_WOULD_DENY | FileEvent::FLAG_OBSERVED | via,
        );
        0
    } else if found == outcome::WOULD_DENY {
        let observed = if access.observed {
            FileEvent::FLAG_OBSERVED
        } else {
            0
        };
        report::<PATH>(
            offsets,
            access,
            rule,
            false,
            FileEvent::FLAG_WOULD_DENY | observed,
        );
        0
    } else {
        0
    }
}

/// The calling process's agent: its tag, or, before its first exec in an agent's cgroup has
/// tagged it (the exec that `agentd launch` makes is decided before it is tagged), the
/// cgroup's agent.
#[inline(always)]
pub(crate) fn current_agent() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    tag_of(tgid).or_else(cgroup_tag).map(|tag| tag.agent)
}

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
    let dentry = read_field::<*const u8>(file, offsets.file_dentry).map_err(|_| 0)?;
    // SAFETY: `file` is the hook's own `struct file *`; `f_path` lies inside it.
    let path = unsafe { file.add(offsets.file_path as usize) };
    if global_rule != 0 {
        let access = Access {
            agent: 0,
            name_dentry: dentry,
            walk: dentry,
            names_first: false,
            key,
            access,
            open_flags,
            hook: FileHook::Open,
            path,
            observed: false,
        };
        report::<{ path_kind::RESOLVED }>(&offsets, &access, global_rule, true, 0);
        return Ok(-EPERM);
    }
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: dentry,
        names_first: false,
        key,
        access,
        open_flags,
        hook: FileHook::Open,
        path,
        observed: false,
    };
    Ok(decide::<{ path_kind::RESOLVED }>(&offsets, &access))
}

/// `security_bprm_check_security(struct linux_binprm *bprm)`: runs for the program and again
/// for each interpreter it names (`#!`, binfmt_misc), so an agent cannot run a denied binary
/// through a script either.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    match try_bprm_check(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_bprm_check(ctx: &LsmContext) -> Result<i32, i32> {
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    let offsets = offsets();
    let bprm: *const u8 = ctx.arg(0);
    // A direct load keeps the verifier's knowledge that this is the exec's `struct file`,
    // which `bpf_d_path` needs.
    // SAFETY: `bprm` is the hook's own argument; the verifier checks the access.
    let file: *const u8 = unsafe {
        core::ptr::read_volatile(bprm.add(offsets.bprm_file as usize).cast::<*const u8>())
    };
    let key = file_inode_key(&offsets, file).map_err(|_| 0)?;
    let dentry = read_field::<*const u8>(file, offsets.file_dentry).map_err(|_| 0)?;
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: dentry,
        names_first: false,
        key,
        access: file_access::EXEC,
        open_flags: 0,
        hook: FileHook::Exec,
        // SAFETY: `f_path` lies inside the exec's `struct file`.
        path: unsafe { file.add(offsets.file_path as usize) },
        observed: false,
    };
    Ok(decide::<{ path_kind::RESOLVED }>(&offsets, &access))
}

/// The verdict for a tagged process changing the directory entry `dentry` (unlink, rename,
/// link, truncate): a change that needs `access` on an object a rule protects is denied.
#[inline(always)]
fn guard_entry(dentry: *const u8, access: u32, hook: FileHook) -> i32 {
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
        access,
        open_flags: 0,
        hook,
        path: core::ptr::null(),
        observed: false,
    };
    decide::<{ path_kind::NAME }>(&offsets, &access)
}

/// `security_path_unlink(const struct path *dir, struct dentry *dentry)`: removing a protected
/// file is writing it.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Unlink)
}

/// `security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`: moving a protected
/// object out of its place is writing it.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    guard_entry(ctx.arg(1), file_access::WRITE, FileHook::Rename)
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
        FileHook::Link,
    )
}

/// `security_path_truncate(const struct path *path)`: `truncate(2)` by name opens nothing, so
/// it is decided here as a write.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let path: *const u8 = ctx.arg(0);
    let Ok(dentry) = read_at::<*const u8>(path, offsets().path_dentry) else {
        return 0;
    };
    guard_entry(dentry, file_access::WRITE, FileHook::Truncate)
}

/// `security_inode_create(struct inode *dir, struct dentry *dentry, umode_t mode)`: a new file
/// in a protected directory is a write to that directory; a new file whose name a rule covers
/// is a write to it.
#[lsm(hook = "inode_create")]
pub fn inode_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let offsets = offsets();
    let dir: *const u8 = ctx.arg(0);
    let dentry: *const u8 = ctx.arg(1);
    let Ok(key) = inode_key(&offsets, dir) else {
        return 0;
    };
    let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
        return 0;
    };
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: parent,
        names_first: true,
        key,
        access: file_access::WRITE,
        open_flags: 0,
        hook: FileHook::Create,
        path: core::ptr::null(),
        observed: false,
    };
    decide::<{ path_kind::NAME }>(&offsets, &access)
}

/// Syscall tracepoints (`syscalls/sys_enter_*`): the file name argument's offset in the record.
const OPENAT_NAME: usize = 24;
const OPEN_NAME: usize = 16;
/// `syscalls/sys_exit_*`: the return value's offset.
const EXIT_RET: usize = 16;

/// Remembers a tagged thread's file name pointer for its open's exit.
#[inline(always)]
fn remember_open(ctx: &TracePointContext, name_at: usize) -> u32 {
    if current_agent().is_none() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: reading the tracepoint record at the format's offset.
    if let Ok(name) = unsafe { ctx.read_at::<u64>(name_at) } {
        // A full LRU map evicts the oldest entry, never fails for lack of room.
        let _ = OPEN_NAMES.insert(pid_tgid as u32, name, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn observe_enter_openat(ctx: TracePointContext) -> u32 {
    remember_open(&ctx, OPENAT_NAME)
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn observe_enter_openat2(ctx: TracePointContext) -> u32 {
    remember_open(&ctx, OPENAT_NAME)
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn observe_enter_open(ctx: TracePointContext) -> u32 {
    remember_open(&ctx, OPEN_NAME)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn observe_exit_openat(ctx: TracePointContext) -> u32 {
    observe_open(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn observe_exit_openat2(ctx: TracePointContext) -> u32 {
    observe_open(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn observe_exit_open(ctx: TracePointContext) -> u32 {
    observe_open(&ctx)
}

/// A tagged thread's open returned: find the opened `struct file` in its descriptor table and
/// evaluate the agent's rules on it, as the LSM hook would have. Violations are reported as
/// observed; nothing can be denied here.
#[inline(always)]
fn observe_open(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out at once.
    let Some(name) = (unsafe { OPEN_NAMES.get(tid) }).copied() else {
        return 0;
    };
    let _ = OPEN_NAMES.remove(tid);
    // SAFETY: reading the tracepoint record at the format's offset.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(EXIT_RET) }) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let offsets = offsets();
    let Ok(file) = fd_file(&offsets, fd as u64) else {
        return 0;
    };
    let Ok(key) = file_inode_key(&offsets, file) else {
        return 0;
    };
    let Ok(dentry) = read_field::<*const u8>(file, offsets.file_dentry) else {
        return 0;
    };
    let open_flags = read_field::<u32>(file, offsets.file_flags).unwrap_or(0);
    let access = Access {
        agent,
        name_dentry: dentry,
        walk: dentry,
        names_first: false,
        key,
        access: access_of(open_flags),
        open_flags,
        hook: FileHook::ObservedOpen,
        path: name as *const u8,
        observed: true,
    };
    decide::<{ path_kind::AS_PASSED }>(&offsets, &access);
    0
}

/// The current task's `struct file` behind descriptor `fd`.
#[inline(always)]
fn fd_file(offsets: &KernelOffsets, fd: u64) -> Result<*const u8, i64> {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read_field::<*const u8>(task, offsets.task_files)?;
    let fdt = read_field::<*const u8>(files, offsets.files_fdt)?;
    let max = read_at::<u32>(fdt, offsets.fdtable_max_fds)?;
    if fd >= u64::from(max) {
        return Err(-1);
    }
    let table = read_field::<*const u8>(fdt, offsets.fdtable_fd)?;
    // SAFETY: `fd` is below the table's size; the helper validates the address anyway.
    let slot = unsafe { table.add(fd as usize * 8) };
    let file = read_at::<*const u8>(slot, 0)?;
    if file.is_null() { Err(-1) } else { Ok(file) }
}

#[inline(always)]
pub(crate) fn report<const PATH: u8>(
    offsets: &KernelOffsets,
    access: &Access,
    rule_id: u32,
    deny: bool,
    flags: u32,
) {
    let Some(mut entry) = reserve::<FileEvent>() else {
        return;
    };
    let event = entry.as_mut_ptr();
    let mut flags = flags;
    // SAFETY: `event` points at a reserved, writable ring-buffer slot of the right size; every
    // field is written before submit (the path up to its NUL, the rest is never read).
    unsafe {
        (*event).header = header(EventKind::File);
        (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).verdict = if deny {
            Verdict::Deny as u32
        } else {
            Verdict::Allow as u32
        };
        (*event).inode = access.key;
        (*event).open_flags = access.open_flags;
        (*event).rule_id = rule_id;
        (*event).agent = access.agent;
        (*event).access = access.access;
        (*event).hook = access.hook as u32;
        (*event).pad = 0;

        let buf = &mut (*event).path;
        let mut len = 0usize;
        if PATH == path_kind::RESOLVED {
            let written = bpf_d_path(
                access.path.cast_mut().cast::<path>(),
                buf.as_mut_ptr().cast(),
                FILE_PATH_LEN as u32,
            );
            // The length written, with its NUL; negative when the path does not fit.
            if written > 0 {
                len = (written - 1) as usize;
            } else {
                flags |= FileEvent::FLAG_PATH_TRUNCATED;
            }
        } else if PATH == path_kind::AS_PASSED {
            flags |= FileEvent::FLAG_PATH_AS_PASSED;
            match bpf_probe_read_user_str_bytes(access.path, buf) {
                Ok(read) => len = read.len(),
                Err(_) => flags |= FileEvent::FLAG_PATH_TRUNCATED,
            }
        } else {
            flags |= FileEvent::FLAG_PATH_NAME_ONLY;
            let read = read_field::<*const u8>(access.name_dentry, offsets.dentry_name)
                .map_err(|_| 0)
                .and_then(|name| bpf_probe_read_kernel_str_bytes(name, buf).map(<[u8]>::len));
            match read {
                Ok(read) => len = read,
                Err(_) => flags |= FileEvent::FLAG_PATH_TRUNCATED,
            }
        }
        if len >= FILE_PATH_LEN - 1 {
            flags |= FileEvent::FLAG_PATH_TRUNCATED;
        }
        if len == 0 {
            buf[0] = 0;
        }
        (*event).path_len = len as u32;
        (*event).flags = flags;
    }
    // A rule hit: the risk engine acts on it.
    entry.submit(wakeup::URGENT);
}
