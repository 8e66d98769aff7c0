//! Tests of decoding and of the text and JSON forms.

use std::ptr;

use agentd_common::{
    AgentTag, COMM_LEN, EventHeader, EventKind, ExecEvent, FILENAME_LEN, FileEvent, FileHook,
    InodeKey, NetEvent, ProcessEvent, TagSource, Verdict,
};

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
