//! Agent identity in the kernel: which process belongs to which agent.
//!
//! A process carries an [`AgentTag`] in `TASK_AGENT`, keyed by its tgid. It gets one when it
//! execs or forks inside a registered cgroup (`CGROUP_AGENT`), when its exec matches a
//! discovery rule by file (`DISCOVERY_INODES`), or from userspace (discovery rules that need a
//! hash or a script). Children inherit their parent's tag at fork, so the tag survives exec,
//! setsid, double forks and leaving the cgroup. It is removed when the last thread exits.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agentd_common::{
    AgentTag, DiscoveryMatch, EventKind, InodeKey, MAX_AGENTS, ProcessEvent, TagSource, late_tags,
    tag_stats,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, lsm, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, LsmContext},
};

use crate::{
    events::{header, output, wakeup},
    kernel::{offsets, read_field},
};

/// tgid → tag of every tagged process. agentd sizes it at load to the most processes the
/// running kernel can have at once (`min(pid_max, threads-max)`, docs/identity.md), so that it
/// cannot fill while those limits hold; not preallocated (allowed for tracing programs from
/// Linux 6.1), so memory is spent per live entry. An insert that still fails (no memory, or a
/// limit raised after load) is counted in `TAG_STATS` and reported as a `TagLost` event, on
/// which agentd quarantines the agent.
#[map]
pub static TASK_AGENT: HashMap<u32, AgentTag> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// Agent index → live tagged processes the kernel counted (tagged at fork or exec, untagged at
/// exit), updated atomically. One slot per agent index the network maps can name.
#[map]
pub static AGENT_PROCS: Array<u64> = Array::with_max_entries(MAX_AGENTS, 0);

/// Agent index → processes userspace tagged, less those it untagged (the sweep). Written only
/// by agentd; the live count is the wrapping sum of both arrays.
#[map]
pub static AGENT_PROCS_USER: Array<u64> = Array::with_max_entries(MAX_AGENTS, 0);

/// Written by agentd at load (`identity.max_processes_per_agent`): the most live processes one
/// agent may have tagged. 0, the compiled-in value, would mean no cap; agentd never loads it.
#[unsafe(no_mangle)]
static MAX_PROCESSES_PER_AGENT: u32 = 0;

/// cgroup v2 id → tag for processes in that cgroup: agentd-managed launch cgroups and cgroups
/// named in agent registrations. 4,096 is far above the agents one host runs.
#[map]
pub static CGROUP_AGENT: HashMap<u64, AgentTag> = HashMap::with_max_entries(4_096, 0);

/// Executable file (device, inode) → agent, for discovery rules by binary path. 4,096 rules.
#[map]
pub static DISCOVERY_INODES: HashMap<InodeKey, DiscoveryMatch> =
    HashMap::with_max_entries(4_096, 0);

/// Processes tagged while they ran: at an exec that an agent's cgroup or a discovery rule
/// tagged, at a fork whose untagged parent was in an agent's cgroup (parent and child), or by
/// agentd (userspace discovery, processes found in a cgroup at apply). Their descriptors were
/// opened before the tag, so until agentd has listed those files in `HELD_FILES`,
/// `file_permission` judges every read and write they make. tgid → 1. 16,384: agentd settles
/// the list after each batch of events.
#[map]
pub static LATE_TAGGED: HashMap<u32, u32> = HashMap::with_max_entries(16_384, 0);

/// `[late_tags::MARKED]`: how many marks the kernel has made in `LATE_TAGGED` (it only adds);
/// `[late_tags::SETTLED]`: the mark count agentd has settled up to (agentd writes it, and
/// writes `late_tags::PENDING` when it marks a process itself). Equal: nothing is pending.
#[map]
pub static LATE_TAGS: Array<u64> = Array::with_max_entries(late_tags::LEN, 0);

/// Per-CPU counters; slots are `agentd_common::tag_stats`.
#[map]
pub static TAG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tag_stats::LEN, 0);

#[inline(always)]
pub fn tag_of(tgid: u32) -> Option<AgentTag> {
    // SAFETY: the value is copied out at once.
    unsafe { TASK_AGENT.get(tgid) }.copied()
}

/// The tag for a process in the current cgroup, if that cgroup is an agent's.
#[inline(always)]
pub fn cgroup_tag() -> Option<AgentTag> {
    // SAFETY: plain helper call.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once.
    unsafe { CGROUP_AGENT.get(cgroup) }.copied()
}

/// The tag for an exec of `exe`, if a discovery rule names that file.
#[inline(always)]
pub fn discovery_tag(exe: &InodeKey) -> Option<AgentTag> {
    // SAFETY: the value is copied out at once.
    let found = unsafe { DISCOVERY_INODES.get(exe) }.copied()?;
    Some(AgentTag::new(found.agent, TagSource::Discovery, found.rule))
}

/// Records `tag` for `tgid` and counts it for its agent. A failed insert is counted and
/// reported: the process must not go untagged silently.
#[inline(always)]
pub fn set_tag(tgid: u32, tag: &AgentTag) -> bool {
    // A tag already there (a stale one under a reused pid, at fork) is replaced: its agent
    // loses the count.
    let replaced = tag_of(tgid);
    if TASK_AGENT.insert(tgid, tag, 0).is_ok() {
        if let Some(old) = replaced {
            add_live(old.agent, u64::MAX);
        }
        add_live(tag.agent, 1);
        return true;
    }
    count(tag_stats::INSERT_FAILED);
    report(EventKind::TagLost, tgid, 0, tag, 0);
    false
}

/// Whether some process is marked in `LATE_TAGGED` and agentd has not settled it yet: while
/// not, reads and writes pay two array reads.
#[inline(always)]
pub fn late_tags_pending() -> bool {
    match (
        LATE_TAGS.get(late_tags::MARKED),
        LATE_TAGS.get(late_tags::SETTLED),
    ) {
        // SAFETY: both point into the array's memory; volatile, as the kernel and agentd
        // change them behind this program.
        (Some(marked), Some(settled)) => unsafe {
            core::ptr::read_volatile(marked) != core::ptr::read_volatile(settled)
        },
        _ => false,
    }
}

/// Whether `tgid` is marked as tagged while it ran and not settled yet.
#[inline(always)]
pub fn is_late(tgid: u32) -> bool {
    // SAFETY: only presence is read.
    unsafe { LATE_TAGGED.get(tgid) }.is_some()
}

/// Marks `tgid` as tagged while it ran. The entry goes in before the count moves, so that
/// agentd, which reads the count before it lists the entries, never settles a count past an
/// entry it did not see.
#[inline(always)]
pub fn mark_late(tgid: u32) {
    if LATE_TAGGED.insert(tgid, 1, 0).is_err() {
        count(tag_stats::LATE_LOST);
        return;
    }
    if let Some(slot) = LATE_TAGS.get_ptr_mut(late_tags::MARKED) {
        // SAFETY: a live, aligned u64 in the map's memory; a plain atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(slot) = TAG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to `agent`'s live count.
#[inline(always)]
fn add_live(agent: u32, delta: u64) {
    if let Some(slot) = AGENT_PROCS.get_ptr_mut(agent) {
        // SAFETY: the slot is a live, aligned u64 in the map's memory. The result is unused,
        // so this compiles to a plain atomic add (`BPF_ATOMIC | BPF_ADD`).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// Whether `agent` has as many live tagged processes as its cap allows. An agent index without
/// a slot is at its cap.
#[inline(always)]
fn at_cap(agent: u32) -> bool {
    // SAFETY: reading a plain static that the loader rewrote (see `kernel::offsets`).
    let cap = unsafe { core::ptr::read_volatile(&raw const MAX_PROCESSES_PER_AGENT) };
    if cap == 0 {
        return false;
    }
    let (Some(kernel), Some(user)) = (AGENT_PROCS.get(agent), AGENT_PROCS_USER.get(agent)) else {
        return true;
    };
    kernel.wrapping_add(*user) >= u64::from(cap)
}

#[inline(always)]
fn report(kind: EventKind, pid: u32, ppid: u32, tag: &AgentTag, exit_code: u32) {
    let event = ProcessEvent {
        header: header(kind),
        pid,
        ppid,
        tag: *tag,
        exit_code,
    };
    output(&event, wakeup::QUIET);
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, in the parent's
/// context. A new process (not a thread) of a tagged parent, or of a parent in an agent's
/// cgroup, is tagged.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    match try_fork(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let offsets = offsets();
    let child: *const u8 = ctx.arg(1);
    let child_pid = read_field::<i32>(child, offsets.task_pid).map_err(|_| ())?;
    let child_tgid = read_field::<i32>(child, offsets.task_tgid).map_err(|_| ())?;
    if child_pid != child_tgid {
        // A new thread shares its process's tag.
        return Ok(());
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child = child_tgid.cast_unsigned();
    let tag = if let Some(tag) = tag_of(parent) {
        // The child holds its parent's descriptors: a parent not settled yet passes that on.
        if late_tags_pending() && is_late(parent) {
            mark_late(child);
        }
        tag
    } else {
        // An untagged process in an agent's cgroup (moved there without an exec): tag it too.
        // Both hold descriptors it opened before.
        let tag = cgroup_tag().ok_or(())?;
        if set_tag(parent, &tag) {
            mark_late(parent);
        }
        mark_late(child);
        tag
    };
    let tag = tag.inherited();
    // Without BPF LSM (`task_alloc` below) the process exists already: it is tagged all the
    // same, never left unrestricted, and reported.
    let over_cap = at_cap(tag.agent);
    if set_tag(child, &tag) {
        report(EventKind::Fork, child, parent, &tag, 0);
        if over_cap {
            count(tag_stats::OVER_CAP);
            report(EventKind::TagCap, child, parent, &tag, 0);
        }
    }
    Ok(())
}

/// `clone(2)`'s flag for a new thread of the same process.
const CLONE_THREAD: u64 = 0x0001_0000;
const EAGAIN: i32 = 11;

/// `security_task_alloc(struct task_struct *task, unsigned long clone_flags)`, in the parent's
/// context before the child gets a pid. A new process (not a thread) of a tagged parent whose
/// agent is at its cap is refused with `EAGAIN`, as `RLIMIT_NPROC` refuses it.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let clone_flags: u64 = ctx.arg(1);
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(parent).or_else(cgroup_tag) else {
        return 0;
    };
    if !at_cap(tag.agent) {
        return 0;
    }
    count(tag_stats::REFUSED);
    report(
        EventKind::TagCap,
        parent,
        parent,
        &tag,
        EAGAIN.cast_unsigned(),
    );
    -EAGAIN
}

/// `sched_process_exit(struct task_struct *p, ...)`, once per exiting thread. The kernel has
/// already decremented `p->signal->live`; zero means this was the process's last thread.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let offsets = offsets();
    let task: *const u8 = ctx.arg(0);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tag = tag_of(tgid).ok_or(())?;
    let last_thread = read_field::<*const u8>(task, offsets.task_signal)
        .and_then(|signal| read_field::<i32>(signal, offsets.signal_live))
        // Unreadable: fall back to the leader's exit, so that tags never leak.
        .map_or(pid_tgid as u32 == tgid, |live| live == 0);
    if !last_thread {
        return Ok(());
    }
    let exit_code = read_field::<i32>(task, offsets.task_exit_code).unwrap_or(0);
    // Remove first: a lost event must not leave a stale tag behind. Only the remover counts
    // the exit, so a race with agentd's sweep cannot count it twice.
    if TASK_AGENT.remove(tgid).is_ok() {
        add_live(tag.agent, u64::MAX);
    }
    report(EventKind::Exit, tgid, 0, &tag, exit_code.cast_unsigned());
    Ok(())
}
