//! Kernel events: decoding ring-buffer records into one closed [`Event`] enum, and the reader
//! that drains the ring buffer and accounts for what the kernel could not deliver.

use std::{
    ffi::CStr,
    mem::size_of,
    net::IpAddr,
    os::fd::AsRawFd as _,
    ptr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use agentd_common::{
    AgentTag, EventHeader, EventKind, ExecEvent, FileEvent, FileHook, NetEvent, ProcessEvent,
    TagSource, Verdict, event_stats,
};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;

use crate::ebpf::LoadedObject;

/// The version of the JSON event schema (docs/events.md). Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

const EVENTS_MAP: &str = "EVENTS";
const STATS_MAP: &str = "EVENT_STATS";

/// A process completed an exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exec {
    /// `CLOCK_BOOTTIME` nanoseconds when the kernel saw the exec.
    pub ktime_ns: u64,
    pub pid: u32,
    /// `None` when the kernel could not read the parent.
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub filename: String,
    pub filename_truncated: bool,
    /// The executed file's device (kernel `dev_t`) and inode.
    pub exe_dev: u32,
    pub exe_ino: u64,
    /// The argument vector, as the kernel laid it out before the program ran.
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// This exec tagged the process (by cgroup or discovery rule).
    pub newly_tagged: bool,
    /// The agent tag after the exec; enriched into `agent` and `tag` on output.
    #[serde(skip)]
    pub tag: AgentTag,
}

/// A tagged process forked, exited, or could not be tagged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessChange {
    pub ktime_ns: u64,
    pub pid: u32,
    /// For forks, the parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// For exits, the status as `wait(2)` encodes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(skip)]
    pub tag: AgentTag,
}

/// A tagged process created a process while its agent was at its cap on live processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TagCap {
    pub ktime_ns: u64,
    /// The new process (tagged), or the parent when the new process was refused.
    pub pid: u32,
    /// The process that forked.
    pub ppid: u32,
    /// The fork failed with `EAGAIN` (BPF LSM); otherwise the new process exists and is tagged.
    pub refused: bool,
    #[serde(skip)]
    pub tag: AgentTag,
}

/// A tagged process tried to stop or tamper with agentd; the kernel denied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tamper {
    pub ktime_ns: u64,
    pub pid: u32,
    /// `kill`, `ptrace` or `bpf`.
    pub hook: &'static str,
    /// agentd's pid, for `kill` and `ptrace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// The signal (`kill`), the ptrace mode (`ptrace`) or the `bpf()` command (`bpf`).
    pub detail: u32,
    pub verdict: VerdictName,
    #[serde(skip)]
    pub tag: AgentTag,
}

/// An LSM hook decided on a file that a rule names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileDecision {
    pub ktime_ns: u64,
    pub pid: u32,
    /// The kernel `dev_t` of the file's super block (`major << 20 | minor`).
    pub dev: u32,
    pub ino: u64,
    pub verdict: VerdictName,
    pub open_flags: u32,
    /// The deciding rule's number; `rule` names it on output.
    pub rule_id: u32,
    /// `read`, `write`, `exec`: the accesses the deciding rule covers of those asked for (what
    /// it denied, or would deny). Moving or linking an object asks for all three, since its new
    /// name may lie beyond the rules on its old place.
    pub access: Vec<&'static str>,
    /// Audit mode allowed what enforce mode would deny, or (with `observed`) a tracepoint saw
    /// an access that enforcement would have denied.
    pub would_deny: bool,
    /// Where the decision was taken: `open`, `exec`, `unlink`, `rename`, `link`, `create`,
    /// `mkdir`, `symlink`, `mknod`, `rmdir`, `truncate`, `mmap` and `mprotect` (an executable
    /// mapping, judged as an exec), `setattr` (`chmod`, `chown`, `utimes`, truncation),
    /// `setxattr` and `removexattr` (extended attributes and ACLs), `mount`, or `observed_open`
    /// (a syscall tracepoint where BPF LSM is not active).
    pub hook: &'static str,
    /// What was decided: `object` (the object opened, created, removed, moved or linked) or
    /// `destination` (where a rename or link leads: the name taken, replaced or swapped in, and
    /// its directory).
    pub side: &'static str,
    /// Seen after the fact by a tracepoint: nothing was enforced.
    pub observed: bool,
    /// The file's path: resolved by the kernel unless `path_source` says otherwise.
    pub path: String,
    /// `kernel` (`bpf_d_path`), `name` (the last component only: the hook has no path to
    /// resolve), or `as_passed` (the string the process gave the syscall; observation only).
    pub path_source: &'static str,
    pub path_truncated: bool,
    /// What decided: `rule` (the local file rules, quarantine or the deny list),
    /// `conditional_access` (a file control of the agent's decision from the control plane),
    /// `self_protection` (agentd's own files, or a directory above them, by identity), or
    /// `anonymous_exec` (an exec of a file with no name in any directory, a memfd for one,
    /// which the agent's `allow_anonymous_exec = false` refuses).
    pub decided_by: &'static str,
    /// The agent whose rule decided (none for the global deny list).
    #[serde(skip)]
    pub tag: AgentTag,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictName {
    Allow,
    Deny,
}

/// A tagged process's connect or datagram, and the kernel's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub ktime_ns: u64,
    pub pid: u32,
    pub comm: String,
    /// `connect`, `sendmsg`, `socket` (a raw socket's creation: no address or port),
    /// `setsockopt` (a source route set on a socket: no address) or `egress` (a packet to a
    /// destination no allowed call of its socket named).
    pub hook: &'static str,
    /// `tcp`, `udp`, `udplite`, `icmp`, `icmpv6`, `raw`, or the protocol number.
    pub protocol: String,
    pub address: IpAddr,
    pub port: u16,
    pub verdict: VerdictName,
    /// Audit mode allowed what enforce mode would deny.
    pub would_deny: bool,
    /// What decided: `rule`, `domain`, `default`, `blocklist`, `quarantine`,
    /// `conditional_access` (the agent's decision from the control plane), `dns` for a query
    /// steered to agentd's resolver, `raw_sockets` (the agent's `raw_sockets` setting, for raw
    /// and packet sockets), `socket_families` (the agent's `socket_families`), `socket_limit`
    /// (its socket could not be recorded for the egress check: `network.max_sockets_per_agent`)
    /// or `source_route` (source routing is refused to agents).
    pub decided_by: &'static str,
    /// The socket's family (`packet`, `vsock`, ...), for a socket of a family no address hook
    /// sees (hook `socket`, decided by BPF LSM `socket_create`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_family: Option<String>,
    /// How `address` was read from what the process named, when not as named: `v4_mapped`
    /// (`::ffff:a.b.c.d`, decided as IPv4) or `unspecified` (`0.0.0.0`/`::`, decided as the
    /// loopback address the kernel connects it to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_form: Option<&'static str>,
    /// The name the destination was learned from, when a DNS answer gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The policy version in force.
    pub policy_version: u32,
    /// The deciding rule's number; `rule` names it on output.
    #[serde(skip)]
    pub rule_number: u32,
    #[serde(skip)]
    pub tag: AgentTag,
}

/// Every kind of event the kernel programs produce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Exec(Exec),
    File(FileDecision),
    /// A tagged process forked a new process, which inherited the tag.
    Fork(ProcessChange),
    /// The last thread of a tagged process exited.
    Exit(ProcessChange),
    /// A process should have been tagged, but the kernel's tag map was full.
    TagLost(ProcessChange),
    /// A process of an agent at its cap on live processes: refused, or tagged and reported.
    TagCap(TagCap),
    /// A tagged process connected or sent a datagram.
    Net(Connection),
    /// A tagged process tried to signal, ptrace or use `bpf()` against agentd: denied.
    Tamper(Tamper),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Copies a `T` out of a record after checking its length.
fn read_record<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length is checked above and `T` is one of agentd-common's plain-old-data
    // records, valid for any bit pattern; the read does not assume alignment.
    Ok(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A NUL-separated argument vector.
fn split_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// A NUL-terminated kernel string, lossily as UTF-8.
fn kernel_str(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes).map_or_else(
        |_| String::from_utf8_lossy(bytes).into_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}

impl Event {
    /// The agent tag the event carries (`AgentTag::NONE` for untagged processes and file events).
    #[must_use]
    pub fn tag(&self) -> AgentTag {
        match self {
            Self::Exec(exec) => exec.tag,
            Self::Fork(change) | Self::Exit(change) | Self::TagLost(change) => change.tag,
            Self::TagCap(cap) => cap.tag,
            Self::Net(connection) => connection.tag,
            Self::File(decision) => decision.tag,
            Self::Tamper(tamper) => tamper.tag,
        }
    }

    /// The process the event is about.
    #[must_use]
    pub fn pid(&self) -> u32 {
        match self {
            Self::Exec(exec) => exec.pid,
            Self::Fork(change) | Self::Exit(change) | Self::TagLost(change) => change.pid,
            Self::TagCap(cap) => cap.pid,
            Self::Net(connection) => connection.pid,
            Self::File(decision) => decision.pid,
            Self::Tamper(tamper) => tamper.pid,
        }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let header: EventHeader = read_record(bytes)?;
        match EventKind::from_raw(header.kind) {
            Some(EventKind::Exec) => {
                let raw: ExecEvent = read_record(bytes)?;
                let len = (raw.filename_len as usize).min(raw.filename.len());
                Ok(Self::Exec(Exec {
                    ktime_ns: raw.header.ktime_ns,
                    pid: raw.pid,
                    ppid: (raw.flags & ExecEvent::FLAG_PPID_UNKNOWN == 0).then_some(raw.ppid),
                    uid: raw.uid,
                    gid: raw.gid,
                    cgroup_id: raw.cgroup_id,
                    comm: kernel_str(&raw.comm),
                    filename: String::from_utf8_lossy(&raw.filename[..len]).into_owned(),
                    filename_truncated: raw.flags & ExecEvent::FLAG_FILENAME_TRUNCATED != 0,
                    exe_dev: raw.exe.dev,
                    exe_ino: raw.exe.ino,
                    args: split_args(&raw.args[..(raw.args_len as usize).min(raw.args.len())]),
                    args_truncated: raw.flags & ExecEvent::FLAG_ARGS_TRUNCATED != 0,
                    newly_tagged: raw.flags & ExecEvent::FLAG_NEWLY_TAGGED != 0,
                    tag: raw.tag,
                }))
            }
            Some(EventKind::File) => Self::decode_file(bytes),
            Some(kind @ (EventKind::Fork | EventKind::Exit | EventKind::TagLost)) => {
                let raw: ProcessEvent = read_record(bytes)?;
                let change = ProcessChange {
                    ktime_ns: raw.header.ktime_ns,
                    pid: raw.pid,
                    ppid: (kind == EventKind::Fork).then_some(raw.ppid),
                    exit_code: (kind == EventKind::Exit).then_some(raw.exit_code),
                    tag: raw.tag,
                };
                Ok(match kind {
                    EventKind::Fork => Self::Fork(change),
                    EventKind::Exit => Self::Exit(change),
                    _ => Self::TagLost(change),
                })
            }
            Some(EventKind::TagCap) => Self::decode_tag_cap(bytes),
            Some(EventKind::Net) => Self::decode_net(bytes),
            Some(EventKind::Tamper) => Self::decode_tamper(bytes),
            None => Err(DecodeError::UnknownKind(header.kind)),
        }
    }

    fn decode_file(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: FileEvent = read_record(bytes)?;
        let verdict = if raw.verdict == Verdict::Deny as u32 {
            VerdictName::Deny
        } else {
            VerdictName::Allow
        };
        Ok(Self::File(FileDecision {
            ktime_ns: raw.header.ktime_ns,
            pid: raw.pid,
            dev: raw.inode.dev,
            ino: raw.inode.ino,
            verdict,
            open_flags: raw.open_flags,
            rule_id: raw.rule_id,
            access: [
                (agentd_common::file_access::READ, "read"),
                (agentd_common::file_access::WRITE, "write"),
                (agentd_common::file_access::EXEC, "exec"),
            ]
            .into_iter()
            .filter(|(bit, _)| raw.access & bit != 0)
            .map(|(_, name)| name)
            .collect(),
            would_deny: raw.flags & FileEvent::FLAG_WOULD_DENY != 0,
            hook: file_hook_name(raw.hook),
            side: if raw.flags & FileEvent::FLAG_DESTINATION == 0 {
                "object"
            } else {
                "destination"
            },
            observed: raw.flags & FileEvent::FLAG_OBSERVED != 0,
            // What `bpf_d_path` gives for a disconnected dentry names no place in the
            // tree: the event says so instead of printing it.
            path: if raw.flags & FileEvent::FLAG_PATH_UNRESOLVED != 0 {
                "unresolved".to_owned()
            } else {
                String::from_utf8_lossy(&raw.path[..(raw.path_len as usize).min(raw.path.len())])
                    .into_owned()
            },
            path_source: if raw.flags & FileEvent::FLAG_PATH_UNRESOLVED != 0 {
                "unresolved"
            } else if raw.flags & FileEvent::FLAG_PATH_AS_PASSED != 0 {
                "as_passed"
            } else if raw.flags & FileEvent::FLAG_PATH_NAME_ONLY != 0 {
                "name"
            } else {
                "kernel"
            },
            path_truncated: raw.flags & FileEvent::FLAG_PATH_TRUNCATED != 0,
            decided_by: if raw.flags & FileEvent::FLAG_UNRESOLVED != 0 {
                "unresolved_location"
            } else if raw.flags & FileEvent::FLAG_CONDITIONAL_ACCESS != 0 {
                "conditional_access"
            } else if raw.flags & FileEvent::FLAG_SELF_PROTECTION != 0 {
                "self_protection"
            } else if raw.flags & FileEvent::FLAG_ANONYMOUS != 0 {
                "anonymous_exec"
            } else {
                "rule"
            },
            tag: AgentTag::new(raw.agent, TagSource::Launch, 0),
        }))
    }

    fn decode_net(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: NetEvent = read_record(bytes)?;
        let address = if raw.family == 6 {
            IpAddr::from(raw.addr)
        } else {
            IpAddr::from([raw.addr[0], raw.addr[1], raw.addr[2], raw.addr[3]])
        };
        let family = (raw.hook == NetEvent::HOOK_FAMILY).then_some(u32::from(raw.port));
        let decided_by = if raw.flags & NetEvent::FLAG_UNTRACKED != 0 {
            "socket_limit"
        } else if raw.hook == NetEvent::HOOK_SOCKET
            || family == Some(agentd_common::socket_family::PACKET)
        {
            "raw_sockets"
        } else if family.is_some() && raw.flags & NetEvent::FLAG_QUARANTINE != 0 {
            "quarantine"
        } else if family.is_some() {
            "socket_families"
        } else if raw.hook == NetEvent::HOOK_SETSOCKOPT {
            "source_route"
        } else if raw.flags & NetEvent::FLAG_DNS != 0 {
            "dns"
        } else if raw.flags & NetEvent::FLAG_CONDITIONAL_ACCESS != 0 {
            "conditional_access"
        } else if raw.flags & NetEvent::FLAG_LEARNED != 0 {
            "domain"
        } else if raw.flags & NetEvent::FLAG_BLOCKLIST != 0 {
            "blocklist"
        } else if raw.flags & NetEvent::FLAG_QUARANTINE != 0 {
            "quarantine"
        } else if raw.flags & NetEvent::FLAG_DEFAULT != 0 {
            "default"
        } else {
            "rule"
        };
        Ok(Self::Net(Connection {
            ktime_ns: raw.header.ktime_ns,
            pid: raw.pid,
            comm: kernel_str(&raw.comm),
            hook: match raw.hook {
                NetEvent::HOOK_SENDMSG => "sendmsg",
                NetEvent::HOOK_SOCKET | NetEvent::HOOK_FAMILY => "socket",
                NetEvent::HOOK_SETSOCKOPT => "setsockopt",
                NetEvent::HOOK_EGRESS => "egress",
                _ => "connect",
            },
            protocol: match raw.protocol {
                1 => "icmp".to_owned(),
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                58 => "icmpv6".to_owned(),
                136 => "udplite".to_owned(),
                255 => "raw".to_owned(),
                other => other.to_string(),
            },
            address,
            // A family decision carries the family in the port field.
            port: if family.is_some() { 0 } else { raw.port },
            socket_family: family.map(crate::netfamily::name_of),
            verdict: if raw.verdict == Verdict::Deny as u8 {
                VerdictName::Deny
            } else {
                VerdictName::Allow
            },
            would_deny: raw.flags & NetEvent::FLAG_WOULD_DENY != 0,
            decided_by,
            address_form: match raw.form {
                NetEvent::FORM_V4_MAPPED => Some("v4_mapped"),
                NetEvent::FORM_UNSPECIFIED => Some("unspecified"),
                _ => None,
            },
            domain: None,
            policy_version: raw.version,
            rule_number: raw.rule,
            // The kernel reports only the agent; the tag's source is not needed here.
            tag: AgentTag::new(raw.agent, TagSource::Launch, 0),
        }))
    }

    fn decode_tag_cap(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: ProcessEvent = read_record(bytes)?;
        Ok(Self::TagCap(TagCap {
            ktime_ns: raw.header.ktime_ns,
            pid: raw.pid,
            ppid: raw.ppid,
            refused: raw.exit_code != 0,
            tag: raw.tag,
        }))
    }

    fn decode_tamper(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: agentd_common::TamperEvent = read_record(bytes)?;
        let hook = match raw.hook {
            agentd_common::tamper_hook::KILL => "kill",
            agentd_common::tamper_hook::PTRACE => "ptrace",
            agentd_common::tamper_hook::BPF => "bpf",
            _ => "unknown",
        };
        Ok(Self::Tamper(Tamper {
            ktime_ns: raw.header.ktime_ns,
            pid: raw.pid,
            hook,
            target_pid: (raw.target != 0).then_some(raw.target),
            detail: raw.detail,
            verdict: VerdictName::Deny,
            tag: raw.tag,
        }))
    }

    /// One human-readable line, as `agentd run` prints it.
    #[must_use]
    pub fn to_text(&self) -> String {
        // Agent identity is added by the caller, which knows the registry.
        match self {
            Self::Exec(e) => {
                let ppid = e.ppid.map_or_else(|| "?".to_owned(), |p| p.to_string());
                let cut = if e.filename_truncated { "…" } else { "" };
                format!(
                    "exec pid={} ppid={ppid} uid={} gid={} cgroup={} comm={:?} filename={:?}{cut} args={:?}",
                    e.pid, e.uid, e.gid, e.cgroup_id, e.comm, e.filename, e.args
                )
            }
            Self::Fork(p) => format!("fork pid={} ppid={}", p.pid, p.ppid.unwrap_or(0)),
            Self::Exit(p) => format!("exit pid={} status={}", p.pid, p.exit_code.unwrap_or(0)),
            Self::TagLost(p) => format!("tag-lost pid={} (agent tag map full)", p.pid),
            Self::TagCap(c) => format!(
                "tag-cap pid={} ppid={} (agent at its process cap: {})",
                c.pid,
                c.ppid,
                if c.refused {
                    "fork refused with EAGAIN"
                } else {
                    "tagged"
                }
            ),
            Self::Net(c) => format!(
                "{} pid={} comm={:?} {} {}:{}{} verdict={:?}{} by={} policy={}",
                c.hook,
                c.pid,
                c.comm,
                c.protocol,
                c.address,
                c.port,
                c.domain
                    .as_ref()
                    .map_or_else(String::new, |d| format!(" ({d})")),
                c.verdict,
                if c.would_deny { " (would deny)" } else { "" },
                c.decided_by,
                c.policy_version
            ),
            Self::Tamper(t) => format!(
                "tamper pid={} hook={} target={} detail={} verdict=deny",
                t.pid,
                t.hook,
                t.target_pid
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                t.detail
            ),
            Self::File(f) => format!(
                "file pid={} dev={}:{} ino={} access={} verdict={:?}{} flags={:#o}",
                f.pid,
                f.dev >> 20,
                f.dev & 0xf_ffff,
                f.ino,
                f.access.join(","),
                f.verdict,
                if f.would_deny { " (would deny)" } else { "" },
                f.open_flags
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("starting the ring-buffer reader thread")]
    Thread(#[source] std::io::Error),
    #[error("the ring-buffer reader thread stopped: {0}")]
    Stopped(String),
}

/// Counters of what the reader has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub delivered: u64,
    pub undecodable: u64,
}

/// The kernel's and the reader's accounting, at one moment. Once the kernel is quiet and the
/// reader has caught up, `delivered + undecodable + dropped == produced`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Records read from the ring buffer and decoded.
    pub delivered: u64,
    /// Records read that did not decode (a kernel/userspace mismatch).
    pub undecodable: u64,
    /// Events the kernel had no ring-buffer room for, summed over CPUs.
    pub dropped: u64,
    /// Events the kernel programs tried to send, summed over CPUs.
    pub produced: u64,
    /// `dropped`, per CPU.
    pub dropped_per_cpu: Vec<u64>,
}

/// Records a reader thread hands over at most at once.
const BATCH: usize = 1024;
/// Batches that may wait for the daemon before the reader thread blocks (and the kernel
/// starts counting drops).
const QUEUED_BATCHES: usize = 64;

/// Drains the kernel's ring buffer on a dedicated thread, off the async executor: the thread
/// waits on the ring buffer's descriptor, decodes up to [`BATCH`] records at a time and hands
/// each batch to the daemon through a bounded queue. There is one reader per daemon.
pub struct EventReader {
    batches: tokio::sync::mpsc::Receiver<Vec<Event>>,
    stats: Arc<SharedStats>,
    counters: PerCpuArray<MapData, u64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SharedStats {
    delivered: AtomicU64,
    undecodable: AtomicU64,
    /// Why the thread stopped, if it did on its own.
    failure: std::sync::Mutex<Option<String>>,
}

impl EventReader {
    /// Takes the ring buffer and its counters out of the object and starts the reader thread.
    pub fn new(object: &mut LoadedObject) -> Result<Self, ReaderError> {
        let mut take = |name: &'static str| {
            object
                .ebpf
                .take_map(name)
                .ok_or(ReaderError::MissingMap(name))
        };
        let ring = RingBuf::try_from(take(EVENTS_MAP)?).map_err(|source| ReaderError::Map {
            map: EVENTS_MAP,
            source,
        })?;
        let counters =
            PerCpuArray::try_from(take(STATS_MAP)?).map_err(|source| ReaderError::Map {
                map: STATS_MAP,
                source,
            })?;
        let (tx, batches) = tokio::sync::mpsc::channel(QUEUED_BATCHES);
        let stats = Arc::new(SharedStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("agentd-events".to_owned())
            .spawn({
                let stats = Arc::clone(&stats);
                let stop = Arc::clone(&stop);
                move || drain(ring, &tx, &stats, &stop)
            })
            .map_err(ReaderError::Thread)?;
        Ok(Self {
            batches,
            stats,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for the next batch of events and appends it to `out`.
    pub async fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReaderError> {
        match self.batches.recv().await {
            Some(batch) => {
                let read = batch.len();
                out.extend(batch);
                Ok(read)
            }
            None => Err(ReaderError::Stopped(
                self.stats
                    .failure
                    .lock()
                    .ok()
                    .and_then(|failure| failure.clone())
                    .unwrap_or_else(|| "no reason given".to_owned()),
            )),
        }
    }

    #[must_use]
    pub fn stats(&self) -> ReaderStats {
        ReaderStats {
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            undecodable: self.stats.undecodable.load(Ordering::Relaxed),
        }
    }

    fn per_cpu(&self, slot: u32) -> Result<Vec<u64>, ReaderError> {
        let values = self
            .counters
            .get(&slot, 0)
            .map_err(|source| ReaderError::Map {
                map: STATS_MAP,
                source,
            })?;
        Ok(values.iter().copied().collect())
    }

    /// Events the kernel could not reserve room for, summed over CPUs.
    pub fn dropped(&self) -> Result<u64, ReaderError> {
        Ok(self.per_cpu(event_stats::DROPPED)?.iter().sum())
    }

    /// The whole accounting. The reader's counts are read last, so that a record produced
    /// between the reads is never counted as delivered without being counted as produced.
    pub fn counts(&self) -> Result<EventCounts, ReaderError> {
        let produced = self.per_cpu(event_stats::PRODUCED)?.iter().sum();
        let dropped_per_cpu = self.per_cpu(event_stats::DROPPED)?;
        let stats = self.stats();
        Ok(EventCounts {
            delivered: stats.delivered,
            undecodable: stats.undecodable,
            dropped: dropped_per_cpu.iter().sum(),
            produced,
            dropped_per_cpu,
        })
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a thread waiting for room in the queue.
        self.batches.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the reader thread waits on the ring buffer before it looks again. Routine records
/// do not wake it (the kernel side sends them with `BPF_RB_NO_WAKEUP`), so this bounds their
/// delivery delay; denials and rule hits wake it at once.
const POLL_MS: i32 = 2;

/// The reader thread: wait for records, decode a batch, hand it over, until told to stop or
/// the daemon goes away.
fn drain(
    mut ring: RingBuf<MapData>,
    tx: &tokio::sync::mpsc::Sender<Vec<Event>>,
    stats: &SharedStats,
    stop: &AtomicBool,
) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(record) = ring.next() else { break };
            match Event::decode(&record) {
                Ok(event) => batch.push(event),
                Err(err) => {
                    stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "skipping an undecodable kernel event");
                }
            }
        }
        if batch.is_empty() {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the ring buffer keeps `fd` open.
            let ready = unsafe { libc::poll(&raw mut poll, 1, POLL_MS) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    if let Ok(mut failure) = stats.failure.lock() {
                        *failure = Some(format!("polling the ring buffer: {err}"));
                    }
                    return;
                }
            }
            continue;
        }
        stats
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if tx.blocking_send(batch).is_err() {
            return;
        }
    }
}

/// The name a [`FileHook`] has in events.
fn file_hook_name(hook: u32) -> &'static str {
    match FileHook::from_u32(hook) {
        Some(FileHook::Open) => "open",
        Some(FileHook::Exec) => "exec",
        Some(FileHook::Unlink) => "unlink",
        Some(FileHook::Rename) => "rename",
        Some(FileHook::Link) => "link",
        Some(FileHook::Create) => "create",
        Some(FileHook::Truncate) => "truncate",
        Some(FileHook::ObservedOpen) => "observed_open",
        Some(FileHook::Mkdir) => "mkdir",
        Some(FileHook::Symlink) => "symlink",
        Some(FileHook::Mknod) => "mknod",
        Some(FileHook::Rmdir) => "rmdir",
        Some(FileHook::MapExec) => "mmap",
        Some(FileHook::ProtectExec) => "mprotect",
        Some(FileHook::SetAttr) => "setattr",
        Some(FileHook::SetXattr) => "setxattr",
        Some(FileHook::RemoveXattr) => "removexattr",
        Some(FileHook::Mount) => "mount",
        Some(FileHook::Held) => "held",
        Some(FileHook::Receive) => "receive",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use agentd_common::{COMM_LEN, FILENAME_LEN, InodeKey};

    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test records are plain-old-data.
        unsafe { std::slice::from_raw_parts(ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn exec_record(flags: u32) -> ExecEvent {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut filename = [0xAA; FILENAME_LEN];
        filename[..13].copy_from_slice(b"/usr/bin/curl");
        ExecEvent {
            header: EventHeader {
                kind: EventKind::Exec as u32,
                cpu: 1,
                ktime_ns: 42,
            },
            pid: 100,
            ppid: 7,
            uid: 1000,
            gid: 1001,
            cgroup_id: 9,
            flags,
            filename_len: 13,
            comm,
            filename,
            tag: AgentTag::new(2, TagSource::Launch, 0).inherited(),
            args_len: 13,
            exe: InodeKey::new(8, 1, 77),
            args: {
                let mut args = [0xAA; agentd_common::ARGS_LEN];
                args[..13].copy_from_slice(b"curl\0-s\0x.io\0");
                args
            },
        }
    }

    #[test]
    fn exec_record_decodes_with_filename_cut_at_its_length() {
        let event = Event::decode(&bytes_of(&exec_record(0))).unwrap();
        let Event::Exec(exec) = event else {
            panic!("expected an exec event, got {event:?}");
        };
        assert_eq!(exec.pid, 100);
        assert_eq!(exec.ppid, Some(7));
        assert_eq!(exec.comm, "curl");
        assert_eq!(exec.filename, "/usr/bin/curl");
        assert!(!exec.filename_truncated);
        assert_eq!(exec.args, ["curl", "-s", "x.io"]);
        assert_eq!((exec.exe_dev, exec.exe_ino), ((8 << 20) | 1, 77));
        assert_eq!(exec.tag.agent, 2);
        assert_eq!(exec.tag.flags, AgentTag::FLAG_INHERITED);
    }

    fn net_record(hook: u8, form: u8, protocol: u8, family: u8) -> NetEvent {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 3]);
        NetEvent {
            header: EventHeader {
                kind: EventKind::Net as u32,
                cpu: 0,
                ktime_ns: 5,
            },
            pid: 9,
            agent: 1,
            version: 2,
            verdict: Verdict::Deny as u8,
            flags: 0,
            family,
            protocol,
            port: 80,
            hook,
            form,
            rule: 3,
            addr,
            comm: [0; COMM_LEN],
        }
    }

    #[test]
    fn family_and_untracked_records_name_what_decided() {
        let decode = |raw: NetEvent| match Event::decode(&bytes_of(&raw)).unwrap() {
            Event::Net(connection) => connection,
            other => panic!("expected a net event, got {other:?}"),
        };
        let mut vsock = net_record(NetEvent::HOOK_FAMILY, 0, 0, 0);
        vsock.port = 40;
        vsock.addr = [0; 16];
        let vsock = decode(vsock);
        assert_eq!(vsock.hook, "socket");
        assert_eq!(vsock.socket_family.as_deref(), Some("vsock"));
        assert_eq!((vsock.port, vsock.decided_by), (0, "socket_families"));
        let mut packet = net_record(NetEvent::HOOK_FAMILY, 0, 0, 0);
        packet.port = 17;
        let packet = decode(packet);
        assert_eq!(packet.socket_family.as_deref(), Some("packet"));
        assert_eq!(packet.decided_by, "raw_sockets");
        let mut quarantined = net_record(NetEvent::HOOK_FAMILY, 0, 0, 0);
        quarantined.port = 40;
        quarantined.flags = NetEvent::FLAG_QUARANTINE;
        assert_eq!(decode(quarantined).decided_by, "quarantine");
        let mut full = net_record(NetEvent::HOOK_CONNECT, 0, 17, 4);
        full.flags = NetEvent::FLAG_UNTRACKED;
        let full = decode(full);
        assert_eq!((full.decided_by, full.port), ("socket_limit", 80));
        assert_eq!(full.socket_family, None);
    }

    #[test]
    fn net_records_name_the_new_hooks_protocols_and_address_forms() {
        let decode = |raw: NetEvent| match Event::decode(&bytes_of(&raw)).unwrap() {
            Event::Net(connection) => connection,
            other => panic!("expected a net event, got {other:?}"),
        };
        let mapped = decode(net_record(
            NetEvent::HOOK_CONNECT,
            NetEvent::FORM_V4_MAPPED,
            136,
            4,
        ));
        assert_eq!(mapped.address.to_string(), "127.0.0.3");
        assert_eq!(mapped.address_form, Some("v4_mapped"));
        assert_eq!(mapped.protocol, "udplite");
        assert_eq!(mapped.decided_by, "rule");
        let raw = decode(net_record(NetEvent::HOOK_SOCKET, 0, 255, 6));
        assert_eq!((raw.hook, raw.decided_by), ("socket", "raw_sockets"));
        assert_eq!(raw.protocol, "raw");
        assert_eq!(raw.address_form, None);
        let route = decode(net_record(NetEvent::HOOK_SETSOCKOPT, 0, 0, 4));
        assert_eq!(
            (route.hook, route.decided_by),
            ("setsockopt", "source_route")
        );
        let packet = decode(net_record(
            NetEvent::HOOK_EGRESS,
            NetEvent::FORM_AS_NAMED,
            58,
            6,
        ));
        assert_eq!(
            (packet.hook, packet.protocol.as_str()),
            ("egress", "icmpv6")
        );
        let json = serde_json::to_value(Event::Net(mapped)).unwrap();
        assert_eq!(json["address_form"], "v4_mapped");
        let json = serde_json::to_value(Event::Net(packet)).unwrap();
        assert!(json.get("address_form").is_none(), "{json}");
    }

    #[test]
    fn tag_cap_events_say_whether_the_fork_was_refused() {
        for (errno, refused) in [(11, true), (0, false)] {
            let raw = ProcessEvent {
                header: EventHeader {
                    kind: EventKind::TagCap as u32,
                    cpu: 0,
                    ktime_ns: 9,
                },
                pid: 42,
                ppid: 41,
                tag: AgentTag::new(3, TagSource::Launch, 0),
                exit_code: errno,
            };
            let event = Event::decode(&bytes_of(&raw)).unwrap();
            assert_eq!((event.pid(), event.tag().agent), (42, 3));
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["kind"], "tag_cap");
            assert_eq!(json["ppid"], 41);
            assert_eq!(json["refused"], refused);
        }
    }

    #[test]
    fn process_events_decode_by_kind() {
        let raw = ProcessEvent {
            header: EventHeader {
                kind: EventKind::Exit as u32,
                cpu: 0,
                ktime_ns: 9,
            },
            pid: 41,
            ppid: 0,
            tag: AgentTag::new(1, TagSource::Cgroup, 0),
            exit_code: 256,
        };
        let Event::Exit(change) = Event::decode(&bytes_of(&raw)).unwrap() else {
            panic!("expected an exit event");
        };
        assert_eq!(
            (change.pid, change.exit_code, change.ppid),
            (41, Some(256), None)
        );
        assert_eq!(change.tag.agent, 1);
    }

    #[test]
    fn unknown_parent_and_truncation_flags_are_reported() {
        let flags = ExecEvent::FLAG_PPID_UNKNOWN | ExecEvent::FLAG_FILENAME_TRUNCATED;
        let Event::Exec(exec) = Event::decode(&bytes_of(&exec_record(flags))).unwrap() else {
            panic!("expected an exec event");
        };
        assert_eq!(exec.ppid, None);
        assert!(exec.filename_truncated);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = bytes_of(&exec_record(0));
        assert_eq!(
            Event::decode(&bytes[..100]),
            Err(DecodeError::Short {
                len: 100,
                need: size_of::<ExecEvent>()
            })
        );
        let mut unknown = bytes;
        unknown[0] = 99;
        assert_eq!(Event::decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn file_event_json_has_stable_field_names() {
        let raw = FileEvent {
            header: EventHeader {
                kind: EventKind::File as u32,
                cpu: 0,
                ktime_ns: 5,
            },
            pid: 3,
            verdict: Verdict::Deny as u32,
            inode: InodeKey::new(8, 1, 1234),
            open_flags: 0,
            rule_id: 77,
            agent: 0,
            access: agentd_common::file_access::READ,
            flags: FileEvent::FLAG_PATH_NAME_ONLY | FileEvent::FLAG_DESTINATION,
            hook: FileHook::Rmdir as u32,
            path_len: 3,
            pad: 0,
            path: {
                let mut path = [0xff; agentd_common::FILE_PATH_LEN];
                path[..4].copy_from_slice(b"key\0");
                path
            },
        };
        let event = Event::decode(&bytes_of(&raw)).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "file");
        assert_eq!(json["hook"], "rmdir");
        assert_eq!(json["side"], "destination");
        assert_eq!(json["path"], "key");
        assert_eq!(json["path_source"], "name");
        assert_eq!(json["observed"], false);
        assert_eq!(json["verdict"], "deny");
        assert_eq!(json["rule_id"], 77);
        assert_eq!(json["dev"], (8 << 20) | 1);
        assert_eq!(json["ino"], 1234);
    }
}
