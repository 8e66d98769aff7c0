//! Types shared by the kernel programs (`agentd-ebpf`) and userspace (`agentd`).
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and has its size pinned by a
//! compile-time assertion, so that a layout change on one side cannot go unnoticed on the other.

#![no_std]

use core::mem::size_of;

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

/// How a process came to carry its agent's identity.
#[repr(u16)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TagSource {
    /// Started by `agentd launch` in the agent's agentd-managed cgroup.
    Launch = 1,
    /// Runs in a cgroup named in the agent's registration (e.g. a systemd unit's).
    Cgroup = 2,
    /// Its exec matched a discovery rule.
    Discovery = 3,
}

impl TagSource {
    #[must_use]
    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Launch),
            2 => Some(Self::Cgroup),
            3 => Some(Self::Discovery),
            _ => None,
        }
    }
}

/// The identity a process carries in the kernel: the agent's compact index (userspace maps it
/// to the agent's UUID and name) and how the tag was obtained.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AgentTag {
    /// 1-based agent index; 0 means "not an agent".
    pub agent: u32,
    /// A [`TagSource`] as `u16`.
    pub source: u16,
    /// `AgentTag::FLAG_*` bits.
    pub flags: u16,
    /// The discovery rule that matched (for [`TagSource::Discovery`]), else 0.
    pub rule: u32,
}
const _: () = assert!(size_of::<AgentTag>() == 12);

impl AgentTag {
    /// No agent.
    pub const NONE: Self = Self {
        agent: 0,
        source: 0,
        flags: 0,
        rule: 0,
    };
    /// The process got its tag from its parent at fork.
    pub const FLAG_INHERITED: u16 = 1 << 0;

    #[must_use]
    pub const fn new(agent: u32, source: TagSource, rule: u32) -> Self {
        Self {
            agent,
            source: source as u16,
            flags: 0,
            rule,
        }
    }

    /// The same tag, marked as inherited.
    #[must_use]
    pub const fn inherited(self) -> Self {
        Self {
            flags: self.flags | Self::FLAG_INHERITED,
            ..self
        }
    }
}

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

/// Slots of the per-CPU `TAG_STATS` counters.
pub mod tag_stats {
    /// A process should have been tagged but the `TASK_AGENT` insert failed (map full, or no
    /// memory for a new entry).
    pub const INSERT_FAILED: u32 = 0;
    /// A process was created and tagged while its agent was at its cap (no BPF LSM to refuse).
    pub const OVER_CAP: u32 = 1;
    /// A new process of an agent at its cap was refused with `EAGAIN` (BPF LSM `task_alloc`).
    pub const REFUSED: u32 = 2;
    /// Number of slots.
    pub const LEN: u32 = 3;
}

/// How many agents the per-agent counters (`AGENT_PROCS`, `AGENT_PROCS_USER`) have slots for,
/// the same bound as the network quarantine map. An agent index beyond it counts as being at
/// its cap: it can never mean "unlimited".
pub const MAX_AGENTS: u32 = 4_096;

/// The symbol name of the per-agent cap on live tagged processes (a `u32` global written at
/// load; 0 would mean no cap, which agentd never writes).
pub const TAG_CAP_SYMBOL: &str = "MAX_PROCESSES_PER_AGENT";

/// The global holding `network.max_sockets_per_agent`, written by agentd at load.
pub const SOCKET_CAP_SYMBOL: &str = "MAX_SOCKETS_PER_AGENT";

/// Slots of the per-CPU `EVENT_STATS` array.
pub mod event_stats {
    /// Events that found the ring buffer full.
    pub const DROPPED: u32 = 0;
    /// Events programs tried to send, delivered or not.
    pub const PRODUCED: u32 = 1;
    /// Number of slots.
    pub const LEN: u32 = 2;
}

/// What the kernel does with an exec that matches a discovery rule by file (`DISCOVERY_INODES`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryMatch {
    pub agent: u32,
    pub rule: u32,
}
const _: () = assert!(size_of::<DiscoveryMatch>() == 8);

/// Identifies a file by its kernel object: the device of its super block and its inode number.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// The kernel's `dev_t` of `inode->i_sb->s_dev`: `major << 20 | minor`.
    pub dev: u32,
    /// Always 0: makes the padding explicit so that keys hash the same on both sides.
    pub pad: u32,
    pub ino: u64,
}
const _: () = assert!(size_of::<InodeKey>() == 16);

impl InodeKey {
    /// No file has it (device 0 is never a super block's, inode 0 never a file's): the key of
    /// an agent's unresolved-location rule in the file rule map, which the kernel applies to an
    /// object whose place in the tree it cannot establish.
    pub const UNRESOLVED: Self = Self {
        dev: 0,
        pad: 0,
        ino: 0,
    };

    /// Builds a key from the major and minor numbers that `stat(2)` reports for `st_dev`.
    #[must_use]
    pub const fn new(major: u32, minor: u32, ino: u64) -> Self {
        Self {
            dev: (major << 20) | (minor & 0xf_ffff),
            pad: 0,
            ino,
        }
    }
}

/// Access bits of file rules and events.
pub mod file_access {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const EXEC: u32 = 1 << 2;
}

/// Key of an agent's file rule: the agent and the file or directory it names, by kernel object.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileRuleKey {
    pub agent: u32,
    pub pad: u32,
    pub inode: InodeKey,
}
const _: () = assert!(size_of::<FileRuleKey>() == 24);

/// An agent's rule on a file or a directory subtree.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileRule {
    /// `file_access` bits the rule covers.
    pub access: u32,
    /// A `net_action` value (allow or deny).
    pub action: u8,
    /// 1: audit mode (report "would deny", allow).
    pub audit: u8,
    pub pad: u16,
    pub rule: u32,
    pub pad2: u32,
    /// The agent's Conditional Access decision on this object (its file controls), one slot
    /// per access: read, write, exec, in the bit order of `file_access`. It is judged after the
    /// local rule, and deny wins: a decision never widens what the local rules allow.
    pub decision: [CaFileControl; 3],
}
const _: () = assert!(size_of::<FileRule>() == 64);

impl FileRule {
    /// A local rule, with no decision on the object.
    #[must_use]
    pub fn local(access: u32, action: u8, audit: bool, rule: u32) -> Self {
        Self {
            access,
            action,
            audit: u8::from(audit),
            pad: 0,
            rule,
            pad2: 0,
            decision: [CaFileControl::NONE; 3],
        }
    }
}

/// A Conditional Access decision's control on one access of a file or directory subtree.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaFileControl {
    /// 1: the decision has a control on this access here; 0: it says nothing.
    pub present: u8,
    /// A `net_action` value (allow or deny).
    pub action: u8,
    pub pad: u16,
    /// The rule number reported (the policy or access package it comes from).
    pub rule: u32,
    /// `CLOCK_BOOTTIME` nanoseconds from which the control no longer applies; 0: never expires.
    /// The hooks check it: a lapsed control stops applying whether or not agentd runs.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<CaFileControl>() == 16);

impl CaFileControl {
    pub const NONE: Self = Self {
        present: 0,
        action: 0,
        pad: 0,
        rule: 0,
        expires_ns: 0,
    };
}

/// How many dentries the walk from an object up to its file system's root visits at most (the
/// object itself included). Far above any tree a path can name: `PATH_MAX` (4,096 bytes) holds
/// at most 2,048 components. An object whose walk does not reach the root within it (a tree
/// built deeper through relative opens) is judged as unresolved, never as outside the rules.
pub const FILE_WALK_LIMIT: u32 = 4096;

/// `DCACHE_DISCONNECTED` in `dentry.d_flags` (the same bit, 0x20, in every kernel agentd runs
/// on): a dentry made for a file opened by handle (`open_by_handle_at`) whose parents are not
/// in the cache. Its parent is itself, like a root's, but it is not its file system's root.
pub const DCACHE_DISCONNECTED: u32 = 0x20;

/// `OVERLAYFS_SUPER_MAGIC` (`super_block.s_magic` of an overlay): its files stand for a file
/// of one of its layers, which holds the bytes that are read, mapped and run.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Verdicts that kernel programs return and report.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 0,
    Deny = 1,
}

/// Bytes of a file's path carried in a [`FileEvent`], including the terminating NUL.
pub const FILE_PATH_LEN: usize = 256;

/// A file hook decided on (or, without BPF LSM, observed) an access that matched a rule.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct FileEvent {
    pub header: EventHeader,
    pub pid: u32,
    /// A [`Verdict`] as `u32`.
    pub verdict: u32,
    pub inode: InodeKey,
    /// The `f_flags` the file was opened with (0 where the hook has no open file).
    pub open_flags: u32,
    /// The id of the rule that matched.
    pub rule_id: u32,
    /// The agent (0 for the global deny list).
    pub agent: u32,
    /// The `file_access` bits the deciding rule covers of those asked for: what it denied (or,
    /// in audit mode, would deny). A rename or link asks for every access of the object it
    /// moves, since a new name can put the object beyond the rules on its old place.
    pub access: u32,
    /// `FileEvent::FLAG_*` bits.
    pub flags: u32,
    /// A [`FileHook`] as `u32`: where the decision was taken.
    pub hook: u32,
    /// Bytes of `path` in use, excluding the NUL.
    pub path_len: u32,
    pub pad: u32,
    /// The path, NUL-terminated: resolved by the kernel (`bpf_d_path`) unless a `FLAG_PATH_*`
    /// bit says otherwise.
    pub path: [u8; FILE_PATH_LEN],
}
const _: () = assert!(size_of::<FileEvent>() == 16 + 8 + 16 + 8 + 24 + FILE_PATH_LEN);

/// The hook behind a [`FileEvent`].
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FileHook {
    /// LSM `file_open`.
    Open = 1,
    /// LSM `bprm_check_security`: an exec.
    Exec = 2,
    /// LSM `path_unlink`.
    Unlink = 3,
    /// LSM `path_rename`.
    Rename = 4,
    /// LSM `path_link`.
    Link = 5,
    /// LSM `inode_create`: a new file in a directory.
    Create = 6,
    /// LSM `path_truncate` (`truncate(2)`, and on kernels before 6.2 `ftruncate(2)` and
    /// `O_TRUNC`) or `file_truncate` (6.2 on: `ftruncate(2)` and `O_TRUNC`).
    Truncate = 7,
    /// The `open`/`openat`/`openat2` syscall tracepoints, where BPF LSM is not active: the open
    /// already happened.
    ObservedOpen = 8,
    /// LSM `mmap_file`: a mapping with `PROT_EXEC` (what the dynamic loader makes of the
    /// program it is asked to run), judged as an exec.
    MapExec = 16,
    /// LSM `file_mprotect`: an existing file mapping made executable, judged as an exec.
    ProtectExec = 17,
    /// LSM `inode_setattr`: `chmod`, `chown`, `utimes`, or a truncation, judged as a write.
    SetAttr = 18,
    /// LSM `inode_setxattr` (and `inode_set_acl`): an extended attribute or ACL set, a write.
    SetXattr = 19,
    /// LSM `inode_removexattr` (and `inode_remove_acl`): one removed, a write.
    RemoveXattr = 24,
    /// LSM `sb_mount` or `move_mount`: a mount over (or a remount of) agentd's files.
    Mount = 25,
    /// LSM `inode_mkdir`: a new directory.
    Mkdir = 20,
    /// LSM `inode_symlink`: a new symbolic link.
    Symlink = 21,
    /// LSM `inode_mknod`: a new FIFO, socket or device node.
    Mknod = 22,
    /// LSM `inode_rmdir`: a directory removed.
    Rmdir = 23,
    /// LSM `file_permission`: a read or write through a descriptor opened before the rules
    /// last changed (`HELD_FILES`).
    Held = 26,
    /// LSM `file_receive`: a descriptor passed to the process (`SCM_RIGHTS`, `pidfd_getfd`),
    /// judged as an open with the access it was opened for.
    Receive = 27,
}

impl FileHook {
    #[must_use]
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Open,
            2 => Self::Exec,
            3 => Self::Unlink,
            4 => Self::Rename,
            5 => Self::Link,
            6 => Self::Create,
            7 => Self::Truncate,
            8 => Self::ObservedOpen,
            16 => Self::MapExec,
            17 => Self::ProtectExec,
            18 => Self::SetAttr,
            19 => Self::SetXattr,
            24 => Self::RemoveXattr,
            25 => Self::Mount,
            26 => Self::Held,
            27 => Self::Receive,
            20 => Self::Mkdir,
            21 => Self::Symlink,
            22 => Self::Mknod,
            23 => Self::Rmdir,
            _ => return None,
        })
    }
}

/// What a [`FileNameKey`] matches.
pub mod file_name_kind {
    /// The whole last component of the path, e.g. `.env`.
    pub const NAME: u32 = 1;
    /// What follows the last `.` of the last component, e.g. `pem`.
    pub const EXTENSION: u32 = 2;
}

/// Bytes of a name in a [`FileNameKey`], NUL-padded; longer names cannot be named by a rule.
pub const FILE_NAME_LEN: usize = 32;
/// Bytes of an extension the kernel compares (without the dot), NUL-padded.
pub const FILE_EXTENSION_LEN: usize = 16;

/// Key of an agent's rule on files by name or by extension.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileNameKey {
    pub agent: u32,
    /// A `file_name_kind` value.
    pub kind: u32,
    /// The name or extension, NUL-padded.
    pub name: [u8; FILE_NAME_LEN],
}
const _: () = assert!(size_of::<FileNameKey>() == 40);

/// Key of an agent's rule on a directory entry: the name `name` in the directory `dir`, whatever
/// object it holds. A `path` rule is written both by object ([`FileRuleKey`]) and by entry, so
/// that it keeps covering the file that takes the name when the file is replaced by writing a
/// new one and renaming it over the old (how editors, `passwd` and package managers save).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileEntryKey {
    pub agent: u32,
    /// Always 0.
    pub pad: u32,
    pub dir: InodeKey,
    /// The entry's name, NUL-padded; longer names are kept by object only.
    pub name: [u8; FILE_NAME_LEN],
}
const _: () = assert!(size_of::<FileEntryKey>() == 56);

impl FileEvent {
    /// Audit mode allowed what enforce mode would deny.
    pub const FLAG_WOULD_DENY: u32 = 1 << 0;
    /// Seen by a tracepoint after the fact: nothing was enforced.
    pub const FLAG_OBSERVED: u32 = 1 << 1;
    /// `path` is the name the process passed to the syscall, not a kernel-resolved path.
    pub const FLAG_PATH_AS_PASSED: u32 = 1 << 2;
    /// `path` is only the file's last component (the hook has no `struct path` to resolve).
    pub const FLAG_PATH_NAME_ONLY: u32 = 1 << 3;
    /// `path` did not fit in [`FILE_PATH_LEN`] bytes, or could not be read.
    pub const FLAG_PATH_TRUNCATED: u32 = 1 << 4;
    /// The agent's Conditional Access decision (a file control) denied, not a local rule.
    pub const FLAG_CONDITIONAL_ACCESS: u32 = 1 << 5;
    /// The exec was of a file with no name left in any directory (a memfd, an `O_TMPFILE`, an
    /// unlinked file), refused because the agent's policy does not allow anonymous executables.
    pub const FLAG_ANONYMOUS: u32 = 1 << 6;
    /// agentd's self-protection decided (an agentd file or a directory above one), not a rule
    /// of the agent's policy.
    pub const FLAG_SELF_PROTECTION: u32 = 1 << 7;
    /// The decision is on where a rename or link leads (the name taken, replaced or swapped in,
    /// and its directory), not on the object moved or linked.
    pub const FLAG_DESTINATION: u32 = 1 << 8;
    /// The walk up the object's directories could not place it (a disconnected dentry, or a
    /// tree deeper than [`FILE_WALK_LIMIT`]): the agent's unresolved-location rule decided,
    /// which denies what any of its deny rules denies (fail closed).
    pub const FLAG_UNRESOLVED: u32 = 1 << 9;
    /// The object's dentry is disconnected: the kernel cannot name its path (`path` holds what
    /// `bpf_d_path` gave, which is not where the file is).
    pub const FLAG_PATH_UNRESOLVED: u32 = 1 << 10;
}

/// An agent's exec settings (`EXEC_AGENTS`): what the kernel does when one of its processes
/// executes a file that has no name in any directory (a memfd, an `O_TMPFILE`, an unlinked
/// file). An agent with no entry is denied.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ExecAgent {
    /// 1: `allow_anonymous_exec = true`.
    pub allow_anonymous: u8,
    /// 1: the agent's file rules are in audit mode (report "would deny", allow).
    pub audit: u8,
    pub pad: u16,
    /// The rule number reported for a denial.
    pub rule: u32,
}
const _: () = assert!(size_of::<ExecAgent>() == 8);

/// What an entry of `SELF_OBJECTS` is to agentd.
pub mod self_object {
    /// One of agentd's own files or directories (binary, configuration, policy, state, pins,
    /// event output): no agent may rename, replace, link, mount over or change it, nor
    /// anything inside it.
    pub const OWN: u32 = 1 << 0;
    /// A directory above one of them: renaming it or mounting over it would swap agentd's
    /// files by name, so both are denied; what is inside it is not otherwise protected.
    pub const ANCESTOR: u32 = 1 << 1;
}

/// An entry of `SELF_OBJECTS`: agentd's objects, by kernel object.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SelfObject {
    /// `self_object` bits.
    pub kind: u32,
    /// The rule number reported in events.
    pub rule: u32,
}
const _: () = assert!(size_of::<SelfObject>() == 8);

/// Byte offsets of kernel struct fields that the programs read, resolved by userspace from the
/// running kernel's BTF at load time and written into the programs' read-only data. Zero means
/// "not resolved": programs treat the value as unreadable rather than guess.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `linux_binprm.filename`
    pub bprm_filename: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live` (an `atomic_t`: live threads of the process)
    pub signal_live: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `linux_binprm.file`
    pub bprm_file: u32,
    /// `file.f_path.dentry` (`file.f_path` plus `path.dentry`)
    pub file_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `file.f_path`
    pub file_path: u32,
    /// `path.dentry` (may legitimately be 0: it is read only together with `file_path`)
    pub path_dentry: u32,
    /// `dentry.d_name.name` (`dentry.d_name` plus `qstr.name`)
    pub dentry_name: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds` (may legitimately be 0: it is read only together with `fdtable_fd`)
    pub fdtable_max_fds: u32,
    /// `dentry.d_name.len` (`dentry.d_name` plus `qstr.len`)
    pub dentry_name_len: u32,
    /// `inode.i_nlink` (0 for a memfd, an `O_TMPFILE` not linked in, an unlinked file)
    pub inode_nlink: u32,
    /// `vm_area_struct.vm_file`
    pub vma_file: u32,
    /// `dentry.d_flags` (may legitimately be 0: the first field)
    pub dentry_flags: u32,
    /// `inode.i_dentry` (the `hlist_head` of the inode's dentries)
    pub inode_dentries: u32,
    /// `dentry.d_u` (whose `d_alias` links the dentry into its inode's `i_dentry`)
    pub dentry_alias: u32,
    /// `super_block.s_magic` (the file system's kind: overlayfs's files stand for a layer's)
    pub sb_magic: u32,
    /// `file.private_data` (an overlay file's: the layer's file it reads and maps)
    pub file_private_data: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 136);

impl KernelOffsets {
    /// Every offset unresolved: the value compiled into the eBPF object.
    pub const UNRESOLVED: Self = Self {
        task_real_parent: 0,
        task_tgid: 0,
        bprm_filename: 0,
        file_inode: 0,
        file_flags: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_pid: 0,
        task_signal: 0,
        signal_live: 0,
        task_exit_code: 0,
        task_mm: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        bprm_file: 0,
        file_dentry: 0,
        dentry_parent: 0,
        dentry_inode: 0,
        file_path: 0,
        path_dentry: 0,
        dentry_name: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        fdtable_max_fds: 0,
        dentry_name_len: 0,
        inode_nlink: 0,
        vma_file: 0,
        dentry_flags: 0,
        inode_dentries: 0,
        dentry_alias: 0,
        sb_magic: 0,
        file_private_data: 0,
    };
}

/// The symbol name of the `KernelOffsets` global in the eBPF object.
pub const KERNEL_OFFSETS_SYMBOL: &str = "KERNEL_OFFSETS";

/// How many rules the kernel scans for one destination prefix (the prefix's own rules and
/// those of every shorter prefix that contains it, most specific first). Userspace refuses a
/// policy that would need more.
pub const NET_RULES_PER_PREFIX: usize = 16;

/// Verdict actions in network rules and defaults.
pub mod net_action {
    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
}

/// One network rule as the kernel scans it: it matches a destination port range and protocol
/// (0 = any) inside the prefix it is stored under.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetRule {
    pub port_lo: u16,
    pub port_hi: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 for any.
    pub protocol: u8,
    /// A `net_action` value.
    pub action: u8,
    pub pad: u16,
    /// The rule's number; userspace maps it back to the rule's name.
    pub rule: u32,
}
const _: () = assert!(size_of::<NetRule>() == 12);

/// The rules that apply under one destination prefix, in the order they are tried.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetRuleList {
    pub count: u32,
    pub rules: [NetRule; NET_RULES_PER_PREFIX],
}
const _: () = assert!(size_of::<NetRuleList>() == 4 + 12 * NET_RULES_PER_PREFIX);

/// LPM trie key data for IPv4 rules: the policy generation and agent are matched in full (the
/// first 64 bits of every prefix), then the address prefix.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetKeyV4 {
    pub generation: u32,
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<NetKeyV4>() == 12);

/// LPM trie key data for IPv6 rules; see [`NetKeyV4`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetKeyV6 {
    pub generation: u32,
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetKeyV6>() == 24);

/// LPM trie key data of the global blocklist, IPv4 (generation, then address prefix).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockKeyV4 {
    pub generation: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<BlockKeyV4>() == 8);

/// LPM trie key data of the global blocklist, IPv6.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockKeyV6 {
    pub generation: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<BlockKeyV6>() == 20);

/// Key of an agent's network settings for one generation.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetAgentKey {
    pub generation: u32,
    pub agent: u32,
}
const _: () = assert!(size_of::<NetAgentKey>() == 8);

/// An agent's network settings.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetAgentPolicy {
    /// The policy version this generation holds, reported in every event.
    pub version: u32,
    /// A `net_action` value for destinations no rule matches.
    pub default_action: u8,
    /// 1: audit mode (report "would deny", allow).
    pub audit: u8,
    /// A `net_action` value for the raw sockets (`SOCK_RAW`) and packet sockets (`AF_PACKET`)
    /// its processes create.
    pub raw_sockets: u8,
    pub pad: u8,
    /// Bit `n` set: its processes may create sockets of address family `n` (`AF_*`), besides
    /// those always allowed ([`socket_family::ALWAYS`]) and `AF_PACKET` (`raw_sockets`).
    pub socket_families: u64,
}
const _: () = assert!(size_of::<NetAgentPolicy>() == 16);

/// Socket address families, as the BPF LSM `socket_create` hook sees them.
pub mod socket_family {
    pub const UNIX: u32 = 1;
    pub const INET: u32 = 2;
    pub const INET6: u32 = 10;
    pub const NETLINK: u32 = 16;
    pub const PACKET: u32 = 17;
    pub const ALG: u32 = 38;
    /// One past the largest family a `socket_families` bit can name (Linux's `AF_MAX` is 46).
    pub const LIMIT: u32 = 64;
    /// Families every agent's processes may create: local (unix, netlink, the kernel's crypto
    /// API) or decided by the address hooks (inet, inet6).
    pub const ALWAYS: u64 = 1 << UNIX | 1 << INET | 1 << INET6 | 1 << NETLINK | 1 << ALG;
}

/// A tagged process's connect or datagram, and what the kernel decided.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct NetEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub agent: u32,
    /// The policy version that decided.
    pub version: u32,
    /// A [`Verdict`] as `u8`: what happened to the call.
    pub verdict: u8,
    /// `NetEvent::FLAG_*` bits.
    pub flags: u8,
    /// 4 or 6.
    pub family: u8,
    pub protocol: u8,
    /// Destination port, host byte order.
    pub port: u16,
    /// `NetEvent::HOOK_*`.
    pub hook: u8,
    /// `NetEvent::FORM_*`: how the destination was read from what the process named.
    pub form: u8,
    /// The rule that decided; 0 for the default action, quarantine and blocklist hits name
    /// their list entry's rule number.
    pub rule: u32,
    /// Destination address; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<NetEvent>() == 16 + 12 + 8 + 4 + 16 + COMM_LEN);

impl NetEvent {
    pub const HOOK_CONNECT: u8 = 1;
    pub const HOOK_SENDMSG: u8 = 2;
    /// `cgroup/sock_create`: a raw socket was created (`port` and `addr` are 0).
    pub const HOOK_SOCKET: u8 = 3;
    /// `cgroup/setsockopt`: a source route was set on a socket (`addr` is 0).
    pub const HOOK_SETSOCKOPT: u8 = 4;
    /// `cgroup_skb/egress`: a packet of an agent's socket, to a destination no allowed call
    /// named (reported at most once per report interval and destination).
    pub const HOOK_EGRESS: u8 = 5;
    /// BPF LSM `socket_create`: a socket of a family no address hook sees (`AF_PACKET`,
    /// `AF_VSOCK`, ...). `port` holds the family (`AF_*`), `protocol` the socket protocol's low
    /// byte, `addr` is 0.
    pub const HOOK_FAMILY: u8 = 6;
    /// The address is the one the process named.
    pub const FORM_AS_NAMED: u8 = 0;
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), decided and reported as IPv4.
    pub const FORM_V4_MAPPED: u8 = 1;
    /// `0.0.0.0` or `::`, which the kernel connects to the local host: decided and reported as
    /// `127.0.0.1` or `::1`.
    pub const FORM_UNSPECIFIED: u8 = 2;
    /// Audit mode turned a deny into an allow.
    pub const FLAG_WOULD_DENY: u8 = 1 << 0;
    /// The global blocklist matched.
    pub const FLAG_BLOCKLIST: u8 = 1 << 1;
    /// The agent is quarantined.
    pub const FLAG_QUARANTINE: u8 = 1 << 2;
    /// No rule matched: the agent's default action decided.
    pub const FLAG_DEFAULT: u8 = 1 << 3;
    /// A DNS query, steered to agentd's resolver.
    pub const FLAG_DNS: u8 = 1 << 4;
    /// A destination learned from a DNS answer matched a domain rule.
    pub const FLAG_LEARNED: u8 = 1 << 5;
    /// The agent's Conditional Access decision decided (deny, or would deny in report-only).
    pub const FLAG_CONDITIONAL_ACCESS: u8 = 1 << 6;
    /// The call was allowed, but its socket could not be recorded for the egress check (its
    /// agent at `network.max_sockets_per_agent`, or `SOCK_AGENT` full): denied, fail closed.
    pub const FLAG_UNTRACKED: u8 = 1 << 7;
}

/// What the kernel remembers of an agent's socket (`SOCK_AGENT`, by socket cookie): its agent
/// and the destination the last allowed connect or sendmsg named, so that the egress check
/// lets a packet to that destination through at once and decides any other.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SocketAgent {
    pub agent: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// 4 or 6; 0: no destination yet (a ping or raw socket recorded at creation).
    pub family: u8,
    pub pad: u8,
    /// IPv4 in the first 4 bytes, the rest zero; or IPv6.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SocketAgent>() == 24);

/// What the network hooks' verdict cache depends on (`NET_CACHE[0]`).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCacheConfig {
    /// Bumped by agentd after every change to a map a network verdict reads (policy generation,
    /// blocklist, quarantine, learned destinations, Conditional Access): verdicts cached under
    /// an older epoch are never read again.
    pub epoch: u32,
    /// Allowed calls to a destination already reported are reported again only after this
    /// many milliseconds; 0 reports every one. Denials and would-denials are always reported.
    pub allowed_report_interval_ms: u32,
}
const _: () = assert!(size_of::<NetCacheConfig>() == 8);

/// A key of the network verdict cache: one agent's calls to one destination through one hook,
/// under one [`NetCacheConfig::epoch`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetVerdictKey {
    pub epoch: u32,
    pub agent: u32,
    /// IPv4 in the first 4 bytes, the rest zero; or IPv6.
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    /// `NetEvent::HOOK_*`.
    pub hook: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<NetVerdictKey>() == 32);

/// A cached network verdict, as the hook decided it, and when it was last reported.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetVerdict {
    /// `CLOCK_BOOTTIME` nanoseconds at which the verdict must be decided again (the soonest
    /// expiry of a Conditional Access entry it rests on); 0: not before the epoch changes.
    pub valid_until_ns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the last event reported for this key.
    pub reported_ns: u64,
    pub rule: u32,
    pub version: u32,
    /// 1: allowed.
    pub allow: u8,
    /// `NetEvent::FLAG_*` bits.
    pub flags: u8,
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<NetVerdict>() == 32);

/// Where the kernel steers tagged processes' DNS queries: agentd's resolver.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DnsRedirect {
    /// 0: off.
    pub enabled: u32,
    /// The resolver's IPv4 address, network byte order as `bpf_sock_addr.user_ip4`.
    pub ip4: u32,
    /// The resolver's port, network byte order in the low 16 bits as `bpf_sock_addr.user_port`.
    pub port: u32,
}
const _: () = assert!(size_of::<DnsRedirect>() == 12);

/// A DNS query's original destination, kept per socket so replies can be shown as from it, and
/// the agent whose process steered it (agentd's resolver judges the query by that agent).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OriginalDestination {
    pub ip4: u32,
    pub port: u32,
    pub agent: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<OriginalDestination>() == 16);

/// How many Conditional Access grants the kernel scans for one destination prefix (the
/// prefix's own and those of every shorter prefix containing it, denials first).
pub const CA_GRANTS_PER_PREFIX: usize = 8;

/// An agent's Conditional Access decision, as the network hooks apply it after the local policy
/// allowed a connect: deny wins.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaAgent {
    /// `CaAgent::FLAG_*` bits.
    pub flags: u32,
    /// The rule number reported when the allow-list has no grant for a destination.
    pub rule: u32,
}
const _: () = assert!(size_of::<CaAgent>() == 8);

impl CaAgent {
    /// The agent may reach only its grants (default deny).
    pub const FLAG_RESTRICTED: u32 = 1 << 0;
    /// Report-only policies have network controls: after the decision allowed a connect, the
    /// entries flagged [`CaGrant::FLAG_REPORT_ONLY`] (with `FLAG_REPORT_ONLY_RESTRICTED` and
    /// `FLAG_REPORT_ONLY_BLOCK`) are judged as the decision the agent would have with them
    /// enabled; what that would deny is reported ("would deny") and allowed.
    pub const FLAG_REPORT_ONLY: u32 = 1 << 1;
    /// Blocked: every connect is denied.
    pub const FLAG_BLOCK: u32 = 1 << 2;
    /// With report-only policies enabled, the agent could reach only their grants.
    pub const FLAG_REPORT_ONLY_RESTRICTED: u32 = 1 << 3;
    /// With report-only policies enabled, the agent would be blocked.
    pub const FLAG_REPORT_ONLY_BLOCK: u32 = 1 << 4;
    /// The decision has file controls in `FILE_RULES` (the file hooks judge them).
    pub const FLAG_FILE_CONTROLS: u32 = 1 << 5;
}

/// One Conditional Access grant or denial: a port range, until an expiry the hook checks.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaGrant {
    pub port_lo: u16,
    pub port_hi: u16,
    /// A `net_action` value.
    pub action: u8,
    /// `CaGrant::FLAG_*` bits.
    pub flags: u8,
    pub pad: [u8; 2],
    /// The rule number reported (the policy or access package it comes from).
    pub rule: u32,
    pub pad2: u32,
    /// `CLOCK_BOOTTIME` nanoseconds from which the entry no longer applies; 0: never expires.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<CaGrant>() == 24);

impl CaGrant {
    /// The entry belongs to what report-only policies would decide ([`CaAgent::FLAG_REPORT_ONLY`]),
    /// not to the decision in force.
    pub const FLAG_REPORT_ONLY: u8 = 1 << 0;
}

/// The Conditional Access entries that apply under one destination prefix, in scan order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaGrantList {
    pub count: u32,
    pub pad: u32,
    pub grants: [CaGrant; CA_GRANTS_PER_PREFIX],
}
const _: () = assert!(size_of::<CaGrantList>() == 8 + 24 * CA_GRANTS_PER_PREFIX);

/// Key of `CA_GRANTS_V4`: the agent and an IPv4 prefix (LPM, prefix length counts the agent's
/// 32 bits).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaKeyV4 {
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<CaKeyV4>() == 8);

/// Key of `CA_GRANTS_V6`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaKeyV6 {
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<CaKeyV6>() == 20);

/// Key of a destination learned from a DNS answer, for one agent.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKeyV4 {
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<LearnedKeyV4>() == 8);

/// What a DNS answer made apply to a learned destination (`NET_LEARNED_V4`, `NET_LEARNED_V6`):
/// the domain rule's ports, protocol and action, and whether its allow also holds against a
/// prefix deny of the agent ([`LearnedRule::FLAG_OVERRIDES_PREFIX_DENY`]).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LearnedRule {
    pub port_lo: u16,
    pub port_hi: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 for any.
    pub protocol: u8,
    /// A `net_action` value.
    pub action: u8,
    pub flags: u16,
    /// The domain rule's number.
    pub rule: u32,
}
const _: () = assert!(size_of::<LearnedRule>() == 12);

impl LearnedRule {
    /// The rule says `override_cidr_deny = true`: its allow beats a prefix deny. Without it a
    /// prefix deny of the agent wins over the learned allow (DNS rebinding).
    pub const FLAG_OVERRIDES_PREFIX_DENY: u16 = 1 << 0;
}

/// Key of an IPv6 destination learned from a DNS answer (AAAA), for one agent.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKeyV6 {
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LearnedKeyV6>() == 20);

/// What a tagged process tried against agentd ([`TamperEvent::hook`]).
pub mod tamper_hook {
    /// A signal to agentd (`task_kill`); `detail` is the signal number.
    pub const KILL: u32 = 1;
    /// ptrace of agentd (`ptrace_access_check`); `detail` is the ptrace mode.
    pub const PTRACE: u32 = 2;
    /// The `bpf()` system call (`bpf`): maps, programs, links, pins; `detail` is the command.
    pub const BPF: u32 = 3;
}

/// A tagged process tried to stop or tamper with agentd; the kernel denied it.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct TamperEvent {
    pub header: EventHeader,
    /// The acting process (tgid).
    pub pid: u32,
    /// agentd's tgid for `KILL` and `PTRACE`; 0 for `BPF`.
    pub target: u32,
    /// A [`tamper_hook`] value.
    pub hook: u32,
    pub detail: u32,
    pub tag: AgentTag,
    pub pad: u32,
}
const _: () = assert!(size_of::<TamperEvent>() == 16 + 16 + 12 + 4);

/// The version of what the kernel maps mean. Bump it when a map keeps its key and value sizes
/// but changes what the bytes mean: agentd then creates new pinned maps instead of adopting the
/// old ones (docs/operations.md, "Enforcement that survives the daemon").
pub const MAP_SCHEMA: u32 = 4;

/// Longest name a [`RegistryEntry`] keeps.
pub const REGISTRY_NAME_LEN: usize = 120;

/// One entry of agentd's registry of kernel numbers, kept in a pinned map beside the other maps
/// so that a restarted agentd gives agents and rules the numbers the kernel's tags already use.
/// Userspace only: no program reads it. The key is `kind << 32 | number`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The agent's UUID; zero for a rule.
    pub id: [u8; 16],
    /// Bytes of `name` in use.
    pub name_len: u32,
    pub pad: u32,
    pub name: [u8; REGISTRY_NAME_LEN],
}
const _: () = assert!(size_of::<RegistryEntry>() == 144);

impl RegistryEntry {
    /// [`RegistryEntry`] key kinds.
    pub const AGENT: u64 = 1;
    pub const RULE: u64 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
    // and has no implicit padding (sizes are asserted above), so any bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::FileEvent {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::AgentTag {}
    unsafe impl aya::Pod for super::ProcessEvent {}
    unsafe impl aya::Pod for super::DiscoveryMatch {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::NetRuleList {}
    unsafe impl aya::Pod for super::NetKeyV4 {}
    unsafe impl aya::Pod for super::NetKeyV6 {}
    unsafe impl aya::Pod for super::BlockKeyV4 {}
    unsafe impl aya::Pod for super::BlockKeyV6 {}
    unsafe impl aya::Pod for super::NetAgentKey {}
    unsafe impl aya::Pod for super::NetAgentPolicy {}
    unsafe impl aya::Pod for super::NetEvent {}
    unsafe impl aya::Pod for super::DnsRedirect {}
    unsafe impl aya::Pod for super::NetCacheConfig {}
    unsafe impl aya::Pod for super::NetVerdictKey {}
    unsafe impl aya::Pod for super::NetVerdict {}
    unsafe impl aya::Pod for super::OriginalDestination {}
    unsafe impl aya::Pod for super::LearnedKeyV4 {}
    unsafe impl aya::Pod for super::LearnedKeyV6 {}
    unsafe impl aya::Pod for super::LearnedRule {}
    unsafe impl aya::Pod for super::FileRuleKey {}
    unsafe impl aya::Pod for super::FileRule {}
    unsafe impl aya::Pod for super::CaFileControl {}
    unsafe impl aya::Pod for super::FileNameKey {}
    unsafe impl aya::Pod for super::FileEntryKey {}
    unsafe impl aya::Pod for super::CaAgent {}
    unsafe impl aya::Pod for super::CaGrantList {}
    unsafe impl aya::Pod for super::CaKeyV4 {}
    unsafe impl aya::Pod for super::CaKeyV6 {}
    unsafe impl aya::Pod for super::RegistryEntry {}
    unsafe impl aya::Pod for super::TamperEvent {}
    unsafe impl aya::Pod for super::SelfObject {}
    unsafe impl aya::Pod for super::ExecAgent {}
}
