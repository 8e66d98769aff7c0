//! The agents' file rules and how one access is judged against them: the rule maps, the walk
//! from an object up its directories, and the event that reports a denial. Shared by the open
//! and exec hooks (`files`) and the namespace-change hooks (`files_namespace`).

use agentd_common::{
    CaAgent, EventKind, FILE_EXTENSION_LEN, FILE_NAME_LEN, FILE_PATH_LEN, FileEntryKey, FileEvent,
    FileHook, FileNameKey, FileRule, FileRuleKey, InodeKey, KernelOffsets, Verdict, file_access,
    file_name_kind, net_action,
};
use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes,
    },
    macros::map,
    maps::HashMap,
};

use crate::{
    events::{header, reserve, wakeup},
    kernel::{inode_key, offsets, read_field},
    net_access::CA_AGENTS,
    tagging::{cgroup_tag, tag_of},
    walk::{End, Visit, disconnected, walk_above, walk_up},
};

/// (agent, file or directory) → the agent's rule on it. 16,384 rules across agents.
#[map]
pub static FILE_RULES: HashMap<FileRuleKey, FileRule> = HashMap::with_max_entries(16_384, 0);

/// (agent, file name or extension) → the agent's rule on such files. 4,096 across agents: the
/// shipped sensitive-files set names about twenty.
#[map]
pub static FILE_NAMES: HashMap<FileNameKey, FileRule> = HashMap::with_max_entries(4096, 0);

/// (agent, directory, name) → the agent's rule on that directory entry, whatever object it
/// holds: `path` rules, so that they cover the file that replaces theirs by rename. 8,192
/// across agents: one per `path` rule on a file with a name of at most 31 bytes.
#[map]
pub static FILE_ENTRIES: HashMap<FileEntryKey, FileRule> = HashMap::with_max_entries(8192, 0);

/// Quarantined agents → the rule id reported: their writes are denied everywhere. 4,096, as
/// many as agents can be named.
#[map]
pub static FILE_QUARANTINE: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

pub(crate) const EPERM: i32 = 1;

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

/// One access to decide.
pub(crate) struct Access {
    pub agent: u32,
    /// The dentry whose name name-and-extension rules match.
    pub name_dentry: *const u8,
    /// The dentry where the walk up the tree starts: the object itself, or for a creation the
    /// directory it is created in.
    pub walk: *const u8,
    /// For creations: name rules are checked before the walk, since the object has no inode
    /// yet. Otherwise they come right after the object's own rule.
    pub names_first: bool,
    /// The object reported in events.
    pub key: InodeKey,
    pub access: u32,
    pub open_flags: u32,
    pub hook: FileHook,
    /// A `struct path *` (for `path_kind::RESOLVED`) or a user string (`AS_PASSED`).
    pub path: *const u8,
    /// A tracepoint saw the access after it happened: report, never deny.
    pub observed: bool,
    /// `FileEvent::FLAG_*` bits the event carries whatever the verdict (`FLAG_DESTINATION`).
    pub flags: u32,
}

/// The rule that decided and the accesses it covered of those asked for: what the event
/// reports.
#[derive(Copy, Clone)]
pub(crate) struct Hit {
    pub rule: u32,
    pub access: u32,
}

/// The rule on `value`, if it covers `access`: an `outcome`, and in `hit` the rule's id and the
/// accesses it covers of those asked for.
#[inline(always)]
fn judge(value: *const FileRule, access: u32, hit: &mut Hit) -> u32 {
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
    hit.rule = id;
    hit.access = covers & access;
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
    hit: &mut Hit,
) -> Result<u32, i64> {
    let inode = read_field::<*const u8>(dentry, offsets.dentry_inode)?;
    let node = inode_key(offsets, inode)?;
    let key = FileRuleKey {
        agent,
        pad: 0,
        inode: node,
    };
    Ok(match FILE_RULES.get_ptr(key) {
        Some(value) => judge(value, access, hit),
        None => outcome::NONE,
    })
}

/// The agent's rule on the directory entry `dentry` (its name in its parent directory), whatever
/// object it holds now.
#[inline(always)]
fn entry_rule(
    offsets: &KernelOffsets,
    agent: u32,
    dentry: *const u8,
    access: u32,
    hit: &mut Hit,
) -> u32 {
    let Ok(len) = read_field::<u32>(dentry, offsets.dentry_name_len) else {
        return outcome::NONE;
    };
    if len == 0 || len as usize >= FILE_NAME_LEN {
        return outcome::NONE;
    }
    let (Ok(name), Ok(parent)) = (
        read_field::<*const u8>(dentry, offsets.dentry_name),
        read_field::<*const u8>(dentry, offsets.dentry_parent),
    ) else {
        return outcome::NONE;
    };
    if parent == dentry {
        return outcome::NONE;
    }
    let Ok(directory) = read_field::<*const u8>(parent, offsets.dentry_inode) else {
        return outcome::NONE;
    };
    let Ok(dir) = inode_key(offsets, directory) else {
        return outcome::NONE;
    };
    let mut key = FileEntryKey {
        agent,
        pad: 0,
        dir,
        name: [0; FILE_NAME_LEN],
    };
    // SAFETY: the helper validates the kernel address.
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.name) }.is_err() {
        return outcome::NONE;
    }
    match FILE_ENTRIES.get_ptr(key) {
        Some(value) => judge(value, access, hit),
        None => outcome::NONE,
    }
}

/// The agent's rule on files with `dentry`'s name, then on files with its extension (what
/// follows the last `.` that is not the name's first character).
#[inline(always)]
fn name_rule(
    offsets: &KernelOffsets,
    agent: u32,
    dentry: *const u8,
    access: u32,
    hit: &mut Hit,
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
            let found = judge(value, access, hit);
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
        Some(value) => judge(value, access, hit),
        None => outcome::NONE,
    }
}

/// The agent's rule for objects whose place in the tree the walk could not establish
/// (`InodeKey::UNRESOLVED`): it denies what any of the agent's deny rules denies, so that an
/// object reached by handle, or buried deeper than the walk goes, is not treated as outside
/// every directory rule.
#[inline(always)]
fn unresolved_rule(agent: u32) -> Option<*const FileRule> {
    FILE_RULES.get_ptr(FileRuleKey {
        agent,
        pad: 0,
        inode: InodeKey::UNRESOLVED,
    })
}

/// The decision's file controls met on the way up: for each access asked for (bit `1 << slot`,
/// slot 0 read, 1 write, 2 exec) the nearest control in force decides. A lapsed control (its
/// expiry passed at `now`) is as if it were not there.
struct ControlWalk {
    agent: u32,
    /// The slots no control has decided yet.
    open: u32,
    now: u64,
    hit: Hit,
    denied: bool,
    /// A dentry or inode could not be read: the walk stopped short of the root.
    failed: bool,
}

impl ControlWalk {
    /// Lets the controls in `value` decide the open slots. True once the walk can stop: a
    /// control denied, or every slot is decided.
    #[inline(always)]
    fn judge(&mut self, value: *const FileRule) -> bool {
        for slot in 0..3usize {
            if self.open & (1 << slot) == 0 {
                continue;
            }
            // SAFETY: a valid map value pointer; `slot` is below the array's length.
            let (present, action, id, expires) = unsafe {
                let control = &(*value).decision[slot];
                (
                    control.present,
                    control.action,
                    control.rule,
                    control.expires_ns,
                )
            };
            if present != 0 && (expires == 0 || self.now < expires) {
                self.open &= !(1 << slot);
                if action == net_action::DENY {
                    self.hit.rule = id;
                    self.hit.access = 1 << slot;
                    self.denied = true;
                    return true;
                }
            }
        }
        self.open == 0
    }
}

impl Visit for ControlWalk {
    #[inline(always)]
    fn visit(&mut self, dentry: *const u8, _level: u32) -> bool {
        let offsets = offsets();
        let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
            self.failed = true;
            return true;
        };
        let Ok(node) = inode_key(&offsets, inode) else {
            self.failed = true;
            return true;
        };
        let key = FileRuleKey {
            agent: self.agent,
            pad: 0,
            inode: node,
        };
        match FILE_RULES.get_ptr(key) {
            Some(value) => self.judge(value),
            None => false,
        }
    }
}

/// Whether the agent's Conditional Access decision denies the access: for each access asked
/// for, the nearest file control in force decides. Deny wins over the local rules, which are
/// judged only when the decision does not deny; a decision never widens what they allow. An
/// object the walk could not place is judged by the agent's unresolved-location entry, which
/// carries every deny control of the decision.
#[inline(always)]
fn decision_verdict(access: &Access, hit: &mut Hit) -> bool {
    let mut flags = 0u32;
    if let Some(ca) = CA_AGENTS.get_ptr(access.agent) {
        // SAFETY: a valid map value pointer.
        flags = unsafe { (*ca).flags };
    }
    if flags & CaAgent::FLAG_FILE_CONTROLS == 0 {
        return false;
    }
    let open = [file_access::READ, file_access::WRITE, file_access::EXEC]
        .iter()
        .enumerate()
        .fold(0u32, |open, (slot, bit)| {
            if access.access & bit != 0 {
                open | 1 << slot
            } else {
                open
            }
        });
    let controls = ControlWalk {
        agent: access.agent,
        open,
        // SAFETY: a plain helper call.
        now: unsafe { bpf_ktime_get_boot_ns() },
        hit: Hit {
            rule: 0,
            access: access.access,
        },
        denied: false,
        failed: false,
    };
    // The object itself, or for a creation the directory it is created in.
    let (mut controls, end) = walk_up(access.walk, controls);
    if !controls.denied
        && controls.open != 0
        && (controls.failed || end.unresolved())
        && let Some(value) = unresolved_rule(access.agent)
    {
        controls.judge(value);
    }
    if controls.denied {
        *hit = controls.hit;
    }
    controls.denied
}

/// The local rules met on the way up from the object's directory: each directory's own rule.
struct RuleWalk {
    agent: u32,
    access: u32,
    hit: Hit,
    found: u32,
    /// A dentry or inode could not be read: the walk stopped short of the root.
    failed: bool,
}

impl Visit for RuleWalk {
    #[inline(always)]
    fn visit(&mut self, dentry: *const u8, _level: u32) -> bool {
        let offsets = offsets();
        match object_rule(&offsets, self.agent, dentry, self.access, &mut self.hit) {
            Ok(found) => self.found = found,
            Err(_) => self.failed = true,
        }
        self.failed || self.found != outcome::NONE
    }
}

/// The verdict for one access: the nearest rule that covers it decides. The object's own rule,
/// then rules on its name and extension, then its directory's, then upwards. The walk follows
/// dentries, so links, renames and bind mounts lead to the same rules. An object the walk
/// cannot place (a disconnected dentry, a tree deeper than the walk goes) is judged by the
/// agent's unresolved-location rule. Reports denials, audit hits and observed violations;
/// returns 0 or `-EPERM`.
#[inline(always)]
pub(crate) fn decide<const PATH: u8>(offsets: &KernelOffsets, access: &Access) -> i32 {
    let mut hit = Hit {
        rule: 0,
        access: access.access,
    };
    let mut found = outcome::NONE;
    if access.access & file_access::WRITE != 0
        && let Some(quarantine) = FILE_QUARANTINE.get_ptr(access.agent)
    {
        // SAFETY: a valid map value pointer.
        hit.rule = unsafe { *quarantine };
        hit.access = file_access::WRITE;
        found = outcome::DENY;
    }
    let mut via = 0u32;
    if found == outcome::NONE && decision_verdict(access, &mut hit) {
        found = outcome::DENY;
        via = FileEvent::FLAG_CONDITIONAL_ACCESS;
    }
    // A creation, or the free end of a rename or link: the entry it makes first.
    if found == outcome::NONE && access.names_first {
        found = entry_rule(
            offsets,
            access.agent,
            access.name_dentry,
            access.access,
            &mut hit,
        );
    }
    if found == outcome::NONE && access.names_first {
        found = name_rule(
            offsets,
            access.agent,
            access.name_dentry,
            access.access,
            &mut hit,
        );
    }
    // The object's own rule (for a creation, its directory's), then, unless judged before,
    // its name's; then the directories above, in the walk.
    let mut failed = false;
    if found == outcome::NONE {
        match object_rule(offsets, access.agent, access.walk, access.access, &mut hit) {
            Ok(here) => found = here,
            Err(_) => failed = true,
        }
    }
    if found == outcome::NONE && !failed && !access.names_first {
        found = entry_rule(
            offsets,
            access.agent,
            access.name_dentry,
            access.access,
            &mut hit,
        );
    }
    if found == outcome::NONE && !failed && !access.names_first {
        found = name_rule(
            offsets,
            access.agent,
            access.name_dentry,
            access.access,
            &mut hit,
        );
    }
    if found == outcome::NONE {
        let mut end = End::Unfinished;
        if !failed {
            let rules = RuleWalk {
                agent: access.agent,
                access: access.access,
                hit,
                found,
                failed: false,
            };
            let (rules, ended) = walk_above(access.walk, rules);
            hit = rules.hit;
            found = rules.found;
            failed = rules.failed;
            end = ended;
        }
        if found == outcome::NONE
            && (failed || end.unresolved())
            && let Some(value) = unresolved_rule(access.agent)
        {
            found = judge(value, access.access, &mut hit);
            if found != outcome::NONE {
                via |= FileEvent::FLAG_UNRESOLVED;
            }
        }
    }
    if found == outcome::DENY && !access.observed {
        report::<PATH>(offsets, access, &hit, true, via);
        -EPERM
    } else if found == outcome::DENY {
        report::<PATH>(
            offsets,
            access,
            &hit,
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
            &hit,
            false,
            FileEvent::FLAG_WOULD_DENY | observed | via,
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

/// The verdict for a tagged process changing the directory entry `dentry` (creating, removing,
/// renaming or linking it, or truncating its file): a change that needs `access` on an object a
/// rule protects is denied. A name that exists is judged as its object (its own rule, its name,
/// then its directories); a name that does not exist yet (a creation, or the free end of a
/// rename or link) as a new object in its directory: its name's rules first, then the directory
/// upwards, so that creating a protected name or anything in a protected directory is a write
/// to it. `flags` go into the event (`FileEvent::FLAG_DESTINATION`).
#[inline(always)]
pub(crate) fn guard_entry(dentry: *const u8, access: u32, hook: FileHook, flags: u32) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let offsets = offsets();
    let Ok(inode) = read_field::<*const u8>(dentry, offsets.dentry_inode) else {
        return 0;
    };
    let (walk, names_first, key) = if inode.is_null() {
        let Ok(parent) = read_field::<*const u8>(dentry, offsets.dentry_parent) else {
            return 0;
        };
        let Ok(directory) = read_field::<*const u8>(parent, offsets.dentry_inode) else {
            return 0;
        };
        let Ok(key) = inode_key(&offsets, directory) else {
            return 0;
        };
        (parent, true, key)
    } else {
        let Ok(key) = inode_key(&offsets, inode) else {
            return 0;
        };
        (dentry, false, key)
    };
    let access = Access {
        agent,
        name_dentry: dentry,
        walk,
        names_first,
        key,
        access,
        open_flags: 0,
        hook,
        path: core::ptr::null(),
        observed: false,
        flags,
    };
    decide::<{ path_kind::NAME }>(&offsets, &access)
}

#[inline(always)]
pub(crate) fn report<const PATH: u8>(
    offsets: &KernelOffsets,
    access: &Access,
    hit: &Hit,
    deny: bool,
    flags: u32,
) {
    let Some(mut entry) = reserve::<FileEvent>() else {
        return;
    };
    let event = entry.as_mut_ptr();
    let mut flags = flags | access.flags;
    if disconnected(access.name_dentry) {
        flags |= FileEvent::FLAG_PATH_UNRESOLVED;
    }
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
        (*event).rule_id = hit.rule;
        (*event).agent = access.agent;
        (*event).access = hit.access;
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
