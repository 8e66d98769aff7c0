//! Network decisions at connect and sendmsg time, in cgroup `sock_addr` hooks attached at the
//! cgroup v2 root, so that they see every process. An untagged process costs one map lookup.
//!
//! Order of decision for a tagged process (docs/network.md):
//! 1. the global blocklist denies, always, and is reported as an alert;
//! 2. a quarantined agent may reach only the quarantine allow-list;
//! 3. the agent's rules: the longest matching destination prefix, then the first rule in its
//!    list that matches port and protocol (userspace orders each list: own prefix before shorter
//!    ones, deny before allow at equal length);
//! 4. otherwise the agent's default action;
//! 5. in audit mode a deny from 3 or 4 is reported as "would deny" and allowed.
//!
//! Rules live in double-buffered maps keyed by a generation; `NET_CONFIG[0]` names the one in
//! force and is read once per call, so each call sees one whole policy.
//!
//! The verdict for an (agent, destination, port, protocol, hook) is cached in `NET_VERDICTS`
//! under the epoch in `NET_CACHE[0]`, which agentd bumps after every change to a map the
//! decision reads; a verdict resting on a Conditional Access entry that expires is decided
//! again from its expiry on. A repeated call then costs one hash lookup instead of the walk
//! above, and an allowed one is reported once per `allowed_report_interval_ms`.
use core::ptr::read_volatile;

use agentd_common::NetEvent;
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{
    net_dns::{DNS_NONE, DNS_STEERED, steer_dns},
    net_packet::remember_socket,
    net_types::{Decision, Destination},
    net_verdict::{judge, report},
    tagging::tag_of,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
// Context fields are read with volatile loads, one field per load: the verifier accepts a
// context access only as `ctx + constant` in the load itself, and the compiler must not hoist
// or merge the address computation.

#[inline(always)]
fn port_and_protocol(sa: *const bpf_sock_addr) -> (u16, u8) {
    // SAFETY: readable context fields of every sock_addr program.
    unsafe {
        let port = read_volatile(&raw const (*sa).user_port);
        let protocol = read_volatile(&raw const (*sa).protocol);
        (u16::from_be(port as u16), protocol as u8)
    }
}

#[inline(always)]
fn destination_v4(ctx: &SockAddrContext) -> Destination {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as above.
    let ip = unsafe { read_volatile(&raw const (*sa).user_ip4) };
    let (port, protocol) = port_and_protocol(sa);
    v4_destination(ip, port, protocol, NetEvent::FORM_AS_NAMED)
}

/// An IPv4 destination; `0.0.0.0`, which the kernel connects to the local host, is decided as
/// `127.0.0.1`.
#[inline(always)]
fn v4_destination(ip: u32, port: u16, protocol: u8, form: u8) -> Destination {
    let mut addr = [0u8; 16];
    let mut form = form;
    if ip == 0 {
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        form = NetEvent::FORM_UNSPECIFIED;
    } else {
        addr[..4].copy_from_slice(&ip.to_ne_bytes());
    }
    Destination {
        family: 4,
        addr,
        port,
        protocol,
        form,
    }
}

/// An IPv6 destination. An IPv4-mapped one (`::ffff:a.b.c.d`, which an AF_INET6 socket sends
/// as IPv4) is decided as the IPv4 address, and `::` (the local host) as `::1`.
#[inline(always)]
fn destination_v6(ctx: &SockAddrContext) -> Destination {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as above; each word is its own load.
    let words = unsafe {
        [
            read_volatile(&raw const (*sa).user_ip6[0]),
            read_volatile(&raw const (*sa).user_ip6[1]),
            read_volatile(&raw const (*sa).user_ip6[2]),
            read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    };
    let (port, protocol) = port_and_protocol(sa);
    if words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return v4_destination(words[3], port, protocol, NetEvent::FORM_V4_MAPPED);
    }
    let mut addr = [0u8; 16];
    let mut form = NetEvent::FORM_AS_NAMED;
    if words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == 0 {
        addr[15] = 1;
        form = NetEvent::FORM_UNSPECIFIED;
    } else {
        addr[..4].copy_from_slice(&words[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&words[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&words[2].to_ne_bytes());
        addr[12..].copy_from_slice(&words[3].to_ne_bytes());
    }
    Destination {
        family: 6,
        addr,
        port,
        protocol,
        form,
    }
}
#[inline(always)]
fn check(ctx: &SockAddrContext, family: u8, hook: u8) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(tag) = tag_of(tgid) else {
        return ALLOW;
    };
    let dst = if family == 4 {
        destination_v4(ctx)
    } else {
        destination_v6(ctx)
    };
    let steering = steer_dns(ctx, family, &dst, tag.agent);
    if steering != DNS_NONE {
        let decision = Decision {
            allow: steering == DNS_STEERED,
            flags: NetEvent::FLAG_DNS,
            rule: 0,
            version: 0,
        };
        report(Some(tgid), tag.agent, &dst, hook, &decision, false);
        return if steering == DNS_STEERED { ALLOW } else { DENY };
    }
    let (mut decision, mut reported) = judge(tag.agent, &dst, hook);
    if decision.allow {
        // SAFETY: a plain helper call on the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if !remember_socket(cookie, tag.agent, &dst) {
            // Its packets could not be checked: fail closed, and say why.
            decision.allow = false;
            decision.flags |= NetEvent::FLAG_UNTRACKED;
            reported = Some(false);
        }
    }
    if let Some(first) = reported {
        report(Some(tgid), tag.agent, &dst, hook, &decision, first);
    }
    // The verifier must see a return value of exactly 0 or 1. A bool reloaded from the stack
    // is only known to be a byte, so compare an opaque copy and return constants.
    let allowed = core::hint::black_box(u32::from(decision.allow));
    if allowed == 1 { ALLOW } else { DENY }
}
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    check(&ctx, 4, NetEvent::HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    check(&ctx, 6, NetEvent::HOOK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    check(&ctx, 4, NetEvent::HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    check(&ctx, 6, NetEvent::HOOK_SENDMSG)
}
