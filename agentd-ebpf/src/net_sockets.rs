//! Sockets that no destination rule can judge, decided when they are made and configured, in
//! cgroup programs attached at the cgroup v2 root beside the `sock_addr` hooks (`net.rs`):
//! - `cgroup/sock_create`: a raw socket (`SOCK_RAW`, IPv4 or IPv6) of a tagged process is
//!   allowed only where its agent's `raw_sockets` setting allows it (default deny);
//! - `cgroup/setsockopt`: a source route is refused to tagged processes, since the packet would
//!   first go to a hop that no hook decided: any IPv4 `IP_OPTIONS` (a source route can follow
//!   NOPs and other options, and a walk of them cost the verifier a second at every start) and
//!   an IPv6 routing header.
//!
//! Both report a `NetEvent` (hook `HOOK_SOCKET` or `HOOK_SETSOCKOPT`) and return 0, which the
//! kernel turns into EPERM. An untagged process costs a context read or two here, and one map
//! lookup only for the rare calls that are raw or ping sockets or source routes.
//!
//! A tagged process's ping sockets (`SOCK_DGRAM` with ICMP or ICMPv6: `sendto` on them runs
//! no `sock_addr` hook) and allowed raw sockets are recorded for the egress check
//! (`net_packet.rs`), which decides their packets by destination.

use core::ptr::{read_volatile, write_volatile};

use agentd_common::{
    COMM_LEN, EventKind, NetAgentKey, NetEvent, Verdict, net_action, socket_family,
};
use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sockopt, lsm},
    programs::{LsmContext, SockContext, SockoptContext},
};

use crate::{
    events::{header, output, wakeup},
    net_packet::remember_new_socket,
    net_verdict::{NET_AGENTS, NET_CONFIG, NET_QUARANTINE},
    tagging::tag_of,
};

const ALLOW: i32 = 1;
const EPERM: i32 = 1;
const DENY: i32 = 0;

const AF_INET6: u32 = 10;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const ICMP: u32 = 1;
const ICMPV6: u32 = 58;

const IPPROTO_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const IPPROTO_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_RTHDR: i32 = 57;
/// Larger option values are not copied for the program: `optlen` must then be set to 0
/// ("use the caller's buffer") or the kernel fails the call.
const SOCKOPT_COPIED_MAX: i32 = 4096;

/// Reports a socket decision. `family` is 4 or 6.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one event's fields")]
fn report(
    tgid: u32,
    agent: u32,
    hook: u8,
    family: u8,
    protocol: u8,
    port: u16,
    verdict: Verdict,
    flags: u8,
) {
    let event = NetEvent {
        header: header(EventKind::Net),
        pid: tgid,
        agent,
        version: 0,
        verdict: verdict as u8,
        flags,
        family,
        protocol,
        port,
        hook,
        form: NetEvent::FORM_AS_NAMED,
        rule: 0,
        addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    output(
        &event,
        if verdict == Verdict::Deny {
            wakeup::URGENT
        } else {
            wakeup::QUIET
        },
    );
}

/// An agent's socket settings in force.
struct Settings {
    /// A `net_action` value for raw and packet sockets.
    raw_sockets: u8,
    /// `NetAgentPolicy::socket_families`.
    socket_families: u64,
    /// 1: audit mode.
    audit: u8,
    /// `FLAG_DEFAULT` (no network settings) or `FLAG_QUARANTINE`, for the event.
    flags: u8,
}

/// `agent`'s socket settings: its policy's, the defaults (deny) without one, nothing beyond
/// the families always allowed when it is quarantined (which audit mode does not soften).
#[inline(always)]
fn settings(agent: u32) -> Settings {
    let mut generation = 0u32;
    if let Some(value) = NET_CONFIG.get_ptr(0) {
        // SAFETY: a valid map value pointer.
        generation = unsafe { *value };
    }
    let mut settings = Settings {
        raw_sockets: net_action::DENY,
        socket_families: 0,
        audit: 0,
        flags: NetEvent::FLAG_DEFAULT,
    };
    if let Some(policy) = NET_AGENTS.get_ptr(NetAgentKey { generation, agent }) {
        // SAFETY: a valid map value pointer.
        unsafe {
            settings.raw_sockets = (*policy).raw_sockets;
            settings.socket_families = (*policy).socket_families;
            settings.audit = (*policy).audit;
        }
        settings.flags = 0;
    }
    if NET_QUARANTINE.get_ptr(agent).is_some() {
        settings = Settings {
            raw_sockets: net_action::DENY,
            socket_families: 0,
            audit: 0,
            flags: NetEvent::FLAG_QUARANTINE,
        };
    }
    settings
}

/// `cgroup/sock_create`: decides a tagged process's raw sockets by its agent's `raw_sockets`
/// (a quarantined agent never gets one). In audit mode a denial is reported as "would deny".
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: readable context fields of a sock_create program, one load each.
    let kind = unsafe { read_volatile(&raw const (*sk).type_) };
    if kind != SOCK_RAW && kind != SOCK_DGRAM {
        return ALLOW;
    }
    // SAFETY: as above.
    let protocol = unsafe { read_volatile(&raw const (*sk).protocol) };
    let ping = kind == SOCK_DGRAM && (protocol == ICMP || protocol == ICMPV6);
    if kind == SOCK_DGRAM && !ping {
        return ALLOW;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return ALLOW;
    };
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: as above.
    let family = unsafe { read_volatile(&raw const (*sk).family) };
    let family = if family == AF_INET6 { 6 } else { 4 };
    if ping {
        // Decided by destination: at connect, and packet by packet by the egress check, which
        // must know the socket (fail closed when it cannot).
        if remember_new_socket(cookie, tag.agent) {
            return ALLOW;
        }
        report(
            tgid,
            tag.agent,
            NetEvent::HOOK_SOCKET,
            family,
            protocol as u8,
            0,
            Verdict::Deny,
            NetEvent::FLAG_UNTRACKED,
        );
        return DENY;
    }
    let settings = settings(tag.agent);
    let deny = settings.raw_sockets == net_action::DENY;
    let audit = settings.audit;
    let mut flags = settings.flags;
    if deny && audit != 0 {
        flags |= NetEvent::FLAG_WOULD_DENY;
    }
    let mut enforced = deny && audit == 0;
    // An allowed raw socket's packets are still judged by destination: one the egress check
    // cannot know is refused.
    if !enforced && !remember_new_socket(cookie, tag.agent) {
        enforced = true;
        flags = NetEvent::FLAG_UNTRACKED;
    }
    let verdict = if enforced {
        Verdict::Deny
    } else {
        Verdict::Allow
    };
    report(
        tgid,
        tag.agent,
        NetEvent::HOOK_SOCKET,
        family,
        protocol as u8,
        0,
        verdict,
        flags,
    );
    // The verifier must see exactly 0 or 1 returned.
    let allowed = core::hint::black_box(u32::from(!enforced));
    if allowed == 1 { ALLOW } else { DENY }
}

/// `cgroup/setsockopt`: refuses source routes to tagged processes. Every other option goes to
/// the kernel unchanged.
#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    let so: *mut bpf_sockopt = ctx.sockopt;
    // SAFETY: readable context fields of a setsockopt program, one load each.
    let (level, name, len) = unsafe {
        (
            read_volatile(&raw const (*so).level),
            read_volatile(&raw const (*so).optname),
            read_volatile(&raw const (*so).optlen),
        )
    };
    if len > SOCKOPT_COPIED_MAX {
        // SAFETY: `optlen` is writable in setsockopt programs; 0 keeps the caller's value.
        unsafe { write_volatile(&raw mut (*so).optlen, 0) };
        return ALLOW;
    }
    // Any IPv4 options at all: a source route may sit behind NOPs and other options, and
    // walking them costs the verifier more than it is worth (real programs set none).
    let family = if level == IPPROTO_IP && name == IP_OPTIONS && len > 0 {
        4
    } else if level == IPPROTO_IPV6 && (name == IPV6_RTHDR || name == IPV6_2292RTHDR) && len > 0 {
        6
    } else {
        return ALLOW;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return ALLOW;
    };
    report(
        tgid,
        tag.agent,
        NetEvent::HOOK_SETSOCKOPT,
        family,
        0,
        0,
        Verdict::Deny,
        0,
    );
    DENY
}

/// BPF LSM `socket_create`: decides a tagged process's sockets of the families no address hook
/// sees. Unix, netlink, the crypto API and IPv4/IPv6 (decided by the other hooks) are always
/// allowed at a cost of a compare or two; `AF_PACKET` (including the obsolete
/// `socket(AF_INET, SOCK_PACKET)`, which the kernel turns into one before this hook) follows
/// `raw_sockets`; any other family (vsock, TIPC, RDS, SMC, XDP, Bluetooth, CAN, ...) needs its
/// agent's `socket_families`. Kernel sockets are the kernel's own. Returns 0 or -EPERM.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: i32 = ctx.arg(0);
    let family = family as u32;
    if family < socket_family::LIMIT && socket_family::ALWAYS & (1u64 << family) != 0 {
        return 0;
    }
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return 0;
    };
    let settings = settings(tag.agent);
    let allowed = if family == socket_family::PACKET {
        settings.raw_sockets != net_action::DENY
    } else {
        family < socket_family::LIMIT && settings.socket_families & (1u64 << family) != 0
    };
    let mut flags = settings.flags;
    if !allowed && settings.audit != 0 {
        flags |= NetEvent::FLAG_WOULD_DENY;
    }
    let enforced = !allowed && settings.audit == 0;
    let protocol: i32 = ctx.arg(2);
    report(
        tgid,
        tag.agent,
        NetEvent::HOOK_FAMILY,
        0,
        protocol as u8,
        family as u16,
        if enforced {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        flags,
    );
    if enforced { -EPERM } else { 0 }
}
