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

use agentd_common::{COMM_LEN, EventKind, NetAgentKey, NetEvent, Verdict, net_action};
use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sockopt},
    programs::{SockContext, SockoptContext},
};

use crate::{
    events::{header, output, wakeup},
    net::{NET_AGENTS, NET_CONFIG, NET_QUARANTINE},
    net_packet::remember_new_socket,
    tagging::tag_of,
};

const ALLOW: i32 = 1;
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
fn report(tgid: u32, agent: u32, hook: u8, family: u8, protocol: u8, verdict: Verdict, flags: u8) {
    let event = NetEvent {
        header: header(EventKind::Net),
        pid: tgid,
        agent,
        version: 0,
        verdict: verdict as u8,
        flags,
        family,
        protocol,
        port: 0,
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
    if ping {
        // Decided by destination: at connect, and packet by packet by the egress check.
        remember_new_socket(cookie, tag.agent);
        return ALLOW;
    }
    // SAFETY: as above.
    let family = unsafe { read_volatile(&raw const (*sk).family) };
    let family = if family == AF_INET6 { 6 } else { 4 };
    let mut generation = 0u32;
    if let Some(value) = NET_CONFIG.get_ptr(0) {
        // SAFETY: a valid map value pointer.
        generation = unsafe { *value };
    }
    // No network settings: the setting's default, deny.
    let mut action = net_action::DENY;
    let mut audit = 0u8;
    let mut flags = NetEvent::FLAG_DEFAULT;
    if let Some(policy) = NET_AGENTS.get_ptr(NetAgentKey {
        generation,
        agent: tag.agent,
    }) {
        // SAFETY: a valid map value pointer.
        unsafe {
            action = (*policy).raw_sockets;
            audit = (*policy).audit;
        }
        flags = 0;
    }
    if NET_QUARANTINE.get_ptr(tag.agent).is_some() {
        action = net_action::DENY;
        audit = 0;
        flags = NetEvent::FLAG_QUARANTINE;
    }
    let deny = action == net_action::DENY;
    if deny && audit != 0 {
        flags |= NetEvent::FLAG_WOULD_DENY;
    }
    let enforced = deny && audit == 0;
    if !enforced {
        // An allowed raw socket's packets are still judged by destination.
        remember_new_socket(cookie, tag.agent);
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
        Verdict::Deny,
        0,
    );
    DENY
}
