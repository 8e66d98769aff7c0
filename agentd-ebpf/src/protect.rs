//! agentd's self-protection, in BPF LSM hooks: a tagged process may not signal or ptrace agentd,
//! nor use the `bpf()` system call at all (which is how maps, programs, links and pins are
//! reached). agentd's files (configuration, state, pins) are protected by file rules that agentd
//! adds for every agent (`files.rs`). Each denial is reported.

use agentd_common::{AgentTag, EventKind, TamperEvent, tamper_hook};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};

use crate::{
    events::{header, output, wakeup},
    kernel::{offsets, read_field},
    tagging::{cgroup_tag, tag_of},
};

/// agentd's own processes (tgid → 1). A handful: agentd and, during an upgrade, its successor.
#[map]
pub static PROTECTED: HashMap<u32, u32> = HashMap::with_max_entries(16, 0);

const EPERM: i32 = 1;

/// The calling process's tag: its own, or its cgroup's before its first exec is tagged.
#[inline(always)]
fn current_tag() -> Option<(u32, AgentTag)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    tag_of(tgid).or_else(cgroup_tag).map(|tag| (tgid, tag))
}

#[inline(always)]
fn deny(pid: u32, tag: AgentTag, hook: u32, target: u32, detail: u32) -> i32 {
    let event = TamperEvent {
        header: header(EventKind::Tamper),
        pid,
        target,
        hook,
        detail,
        tag,
        pad: 0,
    };
    output(&event, wakeup::URGENT);
    -EPERM
}

/// Whether `task` (a `struct task_struct *`) belongs to agentd.
#[inline(always)]
fn is_agentd(task: *const u8) -> Option<u32> {
    let tgid = read_field::<u32>(task, offsets().task_tgid).ok()?;
    // SAFETY: only the presence of the key is used.
    unsafe { PROTECTED.get(tgid) }.map(|_| tgid)
}

/// `security_task_kill(p, info, sig, cred)`: signals to agentd from agents are denied. Signal 0
/// (does it exist?) is allowed.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    let Some((pid, tag)) = current_tag() else {
        return 0;
    };
    match is_agentd(ctx.arg(0)) {
        Some(target) => deny(pid, tag, tamper_hook::KILL, target, sig as u32),
        None => 0,
    }
}

/// `security_ptrace_access_check(child, mode)`: attaching to agentd, or reading its memory
/// through /proc, is denied to agents.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some((pid, tag)) = current_tag() else {
        return 0;
    };
    let mode: u32 = ctx.arg(1);
    match is_agentd(ctx.arg(0)) {
        Some(target) => deny(pid, tag, tamper_hook::PTRACE, target, mode),
        None => 0,
    }
}

/// `security_bpf(cmd, attr, size[, kernel])`: agents may not use `bpf()`. The previous program's
/// verdict is not read here, since its position changed between kernels (an argument was
/// added); it need not be: the trampoline stops at the first program that returns non-zero, so
/// this one runs only when nothing before it denied.
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some((pid, tag)) = current_tag() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    deny(pid, tag, tamper_hook::BPF, 0, cmd as u32)
}
