//! File decisions in BPF LSM hooks, on kernel objects: a file is identified by the device and
//! inode of the object being opened or executed, and by the directories above it, never by the
//! path string the process passed. Where BPF LSM is not active, the same rules are evaluated
//! after the fact from the open syscalls' tracepoints and reported as observed, never enforced.
//! Creating, moving, linking, removing and truncating are decided in `files_namespace`; the
//! rules and the walk live in `file_rules`.

use agentd_common::{FileHook, InodeKey, KernelOffsets, file_access};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{lsm, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{LsmContext, TracePointContext},
};

use crate::{
    file_rules::{Access, EPERM, Hit, current_agent, decide, path_kind, report},
    kernel::{bprm_file, file_inode_key, offsets, read_at, read_field},
    walk::file_walk_start,
};

/// Files that no one may open, keyed by kernel object, valued by rule id. 4,096 rules is far
/// more than any file policy names today; `agentd` refuses to load a policy that would not fit.
#[map]
pub static DENY_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(4096, 0);

/// Thread id → the user pointer of the file name it passed to an open syscall, from syscall
/// entry to exit, for tagged processes only, where BPF LSM is not active. LRU: a thread that
/// never returns (killed mid-call) cannot fill it; 8,192 threads in an open at once is plenty.
#[map]
static OPEN_NAMES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// `f_flags` bits of the access mode.
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
/// `O_TRUNC` (x86-64 and arm64 alike). `do_dentry_open` clears it from `f_flags` only after
/// `security_file_open` has run, so the hook sees it.
const O_TRUNC: u32 = 0o1000;

/// The `file_access` bits an open with `f_flags` asks for. `O_TRUNC` empties the file whatever
/// the access mode (`open(O_RDONLY | O_TRUNC)` truncates too), so it is a write. An exec's open
/// asks for read: the exec itself is decided in `bprm_check_security`.
#[inline(always)]
pub(crate) fn access_of(flags: u32) -> u32 {
    let mode = match flags & O_ACCMODE {
        O_WRONLY => file_access::WRITE,
        O_RDWR => file_access::READ | file_access::WRITE,
        _ => file_access::READ,
    };
    if flags & O_TRUNC == 0 {
        mode
    } else {
        mode | file_access::WRITE
    }
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
            flags: 0,
        };
        let hit = Hit {
            rule: global_rule,
            access: access.access,
        };
        report::<{ path_kind::RESOLVED }>(&offsets, &access, &hit, true, 0);
        return Ok(-EPERM);
    }
    let Some(agent) = current_agent() else {
        return Ok(0);
    };
    // The real file's dentry where overlayfs opened it under the overlay's path.
    let walk = file_walk_start(file);
    let access = Access {
        agent,
        name_dentry: walk,
        walk,
        names_first: false,
        key,
        access,
        open_flags,
        hook: FileHook::Open,
        path,
        observed: false,
        flags: 0,
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
    let file = bprm_file(&offsets, bprm);
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
        flags: 0,
    };
    Ok(decide::<{ path_kind::RESOLVED }>(&offsets, &access))
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
        flags: 0,
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
