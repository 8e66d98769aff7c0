//! Ring-buffer records: the kind every record starts with, exec and process events, the
//! verdict of a decision, and the per-CPU event statistics.

use core::mem::size_of;

use crate::{inode::InodeKey, tag::AgentTag};

/// Length of `task_struct::comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// How many bytes of an exec'd file name the kernel copies into an event. Longer names are
/// truncated and flagged with [`ExecEvent::FLAG_FILENAME_TRUNCATED`].
pub const FILENAME_LEN: usize = 256;

/// The kind of a ring-buffer record. Every record starts with an [`EventHeader`] whose `kind` is
/// one of these values; userspace dispatches on it.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`ExecEvent`]: a process called execve and the new image is in place.
    Exec = 1,
    /// [`FileEvent`]: an LSM file hook decided on a file.
    File = 2,
    /// [`ProcessEvent`]: a tagged process forked a new process, which inherited the tag.
    Fork = 3,
    /// [`ProcessEvent`]: the last thread of a tagged process exited; its tag was removed.
    Exit = 4,
    /// [`ProcessEvent`]: a process should have been tagged but `TASK_AGENT` was full.
    TagLost = 5,
    /// [`NetEvent`]: a tagged process connected or sent a datagram.
    Net = 6,
    /// [`TamperEvent`]: a tagged process tried to stop or tamper with agentd and was denied.
    Tamper = 7,
    /// [`ProcessEvent`]: a tagged process created a process while its agent was at its cap on
    /// live processes: refused with `EAGAIN` where BPF LSM runs, else tagged and reported.
    TagCap = 8,
}

impl EventKind {
    /// Maps a raw `kind` back to the enum; `None` for kinds this build does not know.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Exec),
            2 => Some(Self::File),
            3 => Some(Self::Fork),
            4 => Some(Self::Exit),
            5 => Some(Self::TagLost),
            6 => Some(Self::Net),
            7 => Some(Self::Tamper),
            8 => Some(Self::TagCap),
            _ => None,
        }
    }
}

/// The first field of every ring-buffer record.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// The CPU the event was produced on.
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()` when the event was produced (`CLOCK_BOOTTIME`).
    pub ktime_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// A process completed an exec: produced by the `sched_process_exec` hook.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Thread-group id (the userspace "pid") of the process.
    pub pid: u32,
    /// Thread-group id of `task->real_parent`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup v2 id of the process (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `ExecEvent::FLAG_*` bits.
    pub flags: u32,
    /// Bytes of `filename` in use, excluding the terminating NUL.
    pub filename_len: u32,
    /// `task->comm` after the exec, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The file name the kernel resolved for the exec (`bprm->filename`), NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
    /// The agent the process belongs to after this exec; `agent == 0` when untagged.
    pub tag: AgentTag,
    /// Bytes of `args` in use.
    pub args_len: u32,
    /// The file that was executed (`bprm->file`), by kernel object.
    pub exe: InodeKey,
    /// The new program's argument vector as the kernel laid it out (NUL-separated), read
    /// before the program ran its first instruction.
    pub args: [u8; ARGS_LEN],
}
const _: () = assert!(
    size_of::<ExecEvent>() == 16 + 16 + 8 + 8 + COMM_LEN + FILENAME_LEN + 12 + 4 + 16 + ARGS_LEN
);

impl ExecEvent {
    /// The file name did not fit in [`FILENAME_LEN`] bytes and was cut.
    pub const FLAG_FILENAME_TRUNCATED: u32 = 1 << 0;
    /// The parent could not be read; `ppid` is 0.
    pub const FLAG_PPID_UNKNOWN: u32 = 1 << 1;
    /// The arguments did not fit in [`ARGS_LEN`] bytes and were cut.
    pub const FLAG_ARGS_TRUNCATED: u32 = 1 << 2;
    /// This exec tagged the process (by cgroup or discovery rule); it was untagged before.
    pub const FLAG_NEWLY_TAGGED: u32 = 1 << 3;
}

/// How many bytes of an exec's argument vector the kernel copies into an event.
pub const ARGS_LEN: usize = 256;

/// A tagged process was created, exited, or could not be tagged: see [`EventKind`].
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub pid: u32,
    /// For `Fork`, the parent's tgid; otherwise 0.
    pub ppid: u32,
    pub tag: AgentTag,
    /// For `Exit`, the process's exit code as `wait(2)` encodes it; for `TagCap`, the errno the
    /// new process was refused with (`EAGAIN`), or 0 when it was created and tagged; otherwise 0.
    pub exit_code: u32,
}
const _: () = assert!(size_of::<ProcessEvent>() == 16 + 8 + 12 + 4);

/// Slots of the per-CPU `EVENT_STATS` array.
pub mod event_stats {
    /// Events that found the ring buffer full.
    pub const DROPPED: u32 = 0;
    /// Events programs tried to send, delivered or not.
    pub const PRODUCED: u32 = 1;
    /// Number of slots.
    pub const LEN: u32 = 2;
}

/// Verdicts that kernel programs return and report.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 0,
    Deny = 1,
}
