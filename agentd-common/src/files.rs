//! File rules and file events: kernel objects by (device, inode), rules by object, name and
//! directory entry, the walk's limits, and the exec settings of agents.

use core::mem::size_of;

use crate::{events::EventHeader, inode::InodeKey};

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
