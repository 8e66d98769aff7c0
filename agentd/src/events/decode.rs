//! Decoding ring-buffer records into [`Event`]s: every length and field checked, strings
//! bounded, unknown kinds refused.

use std::{ffi::CStr, mem::size_of, net::IpAddr, ptr};

use agentd_common::{
    AgentTag, EventHeader, EventKind, ExecEvent, FileEvent, FileHook, NetEvent, ProcessEvent,
    TagSource, Verdict,
};

use super::record::{
    Connection, Event, Exec, FileDecision, ProcessChange, TagCap, Tamper, VerdictName,
};

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
