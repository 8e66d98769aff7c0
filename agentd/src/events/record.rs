//! What agentd makes of each kernel record: one closed [`Event`] enum, its accessors and its
//! text form. `decode` builds it from the ring buffer; `reader` drains the ring buffer.

use std::net::IpAddr;

use agentd_common::AgentTag;
use serde::Serialize;

/// The version of the JSON event schema (docs/events.md). Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

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
