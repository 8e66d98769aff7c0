//! The packet-level egress check: `cgroup_skb/egress` at the cgroup root sees every packet a
//! socket sends, after routing, so it sees where a packet really goes whatever happened after
//! the call was decided (a source route carried in ancillary data, an address the hook never
//! saw, a ping socket's datagrams, which no `sock_addr` hook sees).
//!
//! The sockets of agents are known by cookie (`SOCK_AGENT`): an allowed connect or sendmsg
//! records the agent and the destination it named; `sock_create` records a tagged process's
//! ping and raw sockets with no destination. A packet of an unknown socket costs one lookup
//! and passes, as before this check existed. A packet to the destination its socket's last
//! allowed call named passes at once; any other is judged as a call to its real destination
//! would be (`net::judge`, with the hook `HOOK_EGRESS`) and dropped if denied, which fails the
//! sending call with EPERM. Denials are reported at most once per report interval and
//! destination. The check also counts each agent's bytes (`AGENT_EGRESS`).
//!
//! A TCP socket's sends outlive its `close()`: what is still in its send buffer goes out after
//! `sock_release` ran. A released agent TCP socket's entry therefore moves to
//! `RELEASED_SOCKETS`, where the packets of a closing socket (FIN-WAIT-1, CLOSING, LAST-ACK)
//! are found, judged and counted as before; without it, writing a large buffer and closing at
//! once would send it uncounted.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agentd_common::{MAX_AGENTS, NetEvent, SocketAgent};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    macros::{cgroup_skb, cgroup_sock, map},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::{SkBuffContext, SockContext},
};

use crate::{
    net_dns::NET_DNS,
    net_types::{Destination, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE},
    net_verdict::{judge, report},
};

/// IPv6 fragment header: the transport header of a fragment is not where it would be.
const IPPROTO_FRAGMENT: u8 = 44;

/// Socket cookie → the agent whose process uses it, and the destination its last allowed call
/// named. A plain hash map, preallocated (the cheapest insert: an LRU map's cost about 360 ns
/// of a tagged connect's 660, socket storage more): `sock_release` removes a socket's entry
/// when it closes, so nothing is ever evicted behind the check's back. 65,536 open agent
/// sockets at once; each agent may hold at most `network.max_sockets_per_agent` of them, so
/// that one agent cannot fill the table for the others. A socket that cannot be recorded is
/// refused at its call (fail closed, `FLAG_UNTRACKED`): its packets would go unchecked.
#[map]
pub static SOCK_AGENT: HashMap<u64, SocketAgent> = HashMap::with_max_entries(65_536, 0);

/// Socket cookie → the entry a closed agent TCP socket had in `SOCK_AGENT`, for the packets
/// its send buffer still holds. LRU: released sockets are not counted against an agent's cap,
/// and an entry evicted by 16,384 later closes loses only the count of what that socket still
/// sends (its destination was fixed when it connected).
#[map]
pub static RELEASED_SOCKETS: LruHashMap<u64, SocketAgent> = LruHashMap::with_max_entries(16_384, 0);

/// TCP states of a socket closed with data to send (`include/net/tcp_states.h`).
const TCP_FIN_WAIT1: u32 = 4;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// Agent index → its sockets in `SOCK_AGENT`, updated atomically (recorded +1, released -1).
#[map]
pub static AGENT_SOCKETS: Array<u64> = Array::with_max_entries(MAX_AGENTS, 0);

/// Written by agentd at load (`network.max_sockets_per_agent`). 0, the compiled-in value,
/// refuses every socket: agentd never loads it.
#[unsafe(no_mangle)]
static MAX_SOCKETS_PER_AGENT: u32 = 0;

/// Agent → bytes its sockets sent, per CPU. 4,096 agents: as many as a policy can name.
#[map]
pub static AGENT_EGRESS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Whether two addresses are equal, compared as two words (no `memcmp` in BPF).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: both are 16 readable bytes; unaligned reads.
    unsafe {
        let (a, b) = (a.as_ptr().cast::<u64>(), b.as_ptr().cast::<u64>());
        a.read_unaligned() == b.read_unaligned()
            && a.add(1).read_unaligned() == b.add(1).read_unaligned()
    }
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to `agent`'s socket count.
#[inline(always)]
fn add_sockets(agent: u32, delta: u64) {
    if let Some(slot) = AGENT_SOCKETS.get_ptr_mut(agent) {
        // SAFETY: a live, aligned u64 in the map's memory; the result is unused, so this is a
        // plain atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// Records a socket not yet in `SOCK_AGENT`, counted for its agent; false when it cannot be
/// (the agent at its cap, an agent index without a counter, or the table full).
#[inline(always)]
fn record(cookie: u64, value: &SocketAgent) -> bool {
    // SAFETY: reading a plain static that the loader rewrote.
    let cap = unsafe { core::ptr::read_volatile(&raw const MAX_SOCKETS_PER_AGENT) };
    let Some(held) = AGENT_SOCKETS.get(value.agent) else {
        return false;
    };
    if *held >= u64::from(cap) {
        return false;
    }
    // BPF_NOEXIST: a racing call on the same socket that recorded it first is counted once.
    if SOCK_AGENT
        .insert(cookie, value, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return SOCK_AGENT.get_ptr(cookie).is_some();
    }
    add_sockets(value.agent, 1);
    true
}

/// Remembers that `agent`'s process uses the socket `cookie` and that `dst` was allowed on it.
/// False when the socket cannot be recorded: the caller refuses the call.
#[inline(always)]
pub fn remember_socket(cookie: u64, agent: u32, dst: &Destination) -> bool {
    if let Some(known) = SOCK_AGENT.get_ptr_mut(cookie) {
        // SAFETY: a valid map value pointer; the fields are read and written in place. A
        // packet check reading it meanwhile may see a mix of old and new destination, which
        // only makes it judge that packet.
        unsafe {
            if (*known).agent == agent
                && (*known).family == dst.family
                && (*known).port == dst.port
                && same_addr(&(*known).addr, &dst.addr)
            {
                return true;
            }
            let holder = (*known).agent;
            if holder != agent {
                // A descriptor passed from one agent to another: the count moves with it, so
                // that the release uncounts the agent holding it then.
                add_sockets(holder, u64::MAX);
                add_sockets(agent, 1);
                (*known).agent = agent;
            }
            (*known).port = dst.port;
            (*known).family = dst.family;
            (*known).addr = dst.addr;
        }
        return true;
    }
    record(
        cookie,
        &SocketAgent {
            agent,
            port: dst.port,
            family: dst.family,
            pad: 0,
            addr: dst.addr,
        },
    )
}

/// Records a socket of `agent` that no call has named a destination for yet (a ping or raw
/// socket); false when it cannot be.
#[inline(always)]
pub fn remember_new_socket(cookie: u64, agent: u32) -> bool {
    record(
        cookie,
        &SocketAgent {
            agent,
            port: 0,
            family: 0,
            pad: 0,
            addr: [0; 16],
        },
    )
}

/// Forgets a closed socket and uncounts it; a TCP socket's entry moves to
/// `RELEASED_SOCKETS` for what it sends after the close.
#[inline(always)]
pub fn forget_socket(cookie: u64, tcp: bool) {
    let Some(known) = SOCK_AGENT.get_ptr(cookie) else {
        return;
    };
    // SAFETY: a valid map value pointer; the entry is copied out before it is removed.
    let entry = unsafe { *known };
    if tcp {
        // A failed insert loses only the count of the bytes sent after the close.
        let _ = RELEASED_SOCKETS.insert(cookie, entry, 0);
    }
    // Only the remover uncounts: a release runs once per socket, but be exact anyway.
    if SOCK_AGENT.remove(cookie).is_ok() {
        add_sockets(entry.agent, u64::MAX);
    }
}

/// The entry of a closed agent TCP socket whose packet this is, if its socket is closing.
/// Costs a packet of an unknown socket one state check; only a closing socket's packets look
/// in `RELEASED_SOCKETS`.
#[inline(always)]
fn released(ctx: &SkBuffContext, cookie: u64) -> Option<*const SocketAgent> {
    // SAFETY: reading the context's socket pointer, which the verifier checks for NULL below.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a plain helper call on a socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: a full socket pointer the helper returned, not NULL.
    let state = unsafe { (*full).state };
    if state != TCP_FIN_WAIT1 && state != TCP_LAST_ACK && state != TCP_CLOSING {
        return None;
    }
    RELEASED_SOCKETS.get_ptr(cookie)
}

/// The packet's destination from its IPv4 or IPv6 header (and the transport header's port
/// for TCP, UDP and UDP-Lite; 0 otherwise), and whether it is a later fragment of a datagram
/// (no transport header: port 0). `None` for a non-IP packet or a header it cannot read.
#[inline(always)]
fn packet_destination(ctx: &SkBuffContext) -> Option<(Destination, bool)> {
    let first: u8 = ctx.load(0).ok()?;
    let mut addr = [0u8; 16];
    let (family, protocol, transport, later) = match first >> 4 {
        4 => {
            let fragment: u16 = ctx.load(6).ok()?;
            let daddr: [u8; 4] = ctx.load(16).ok()?;
            addr[..4].copy_from_slice(&daddr);
            (
                4u8,
                ctx.load::<u8>(9).ok()?,
                usize::from(first & 0x0f) * 4,
                u16::from_be(fragment) & 0x1fff != 0,
            )
        }
        6 => {
            addr = ctx.load(24).ok()?;
            let next: u8 = ctx.load(6).ok()?;
            if next == IPPROTO_FRAGMENT {
                // The fragment header: next header, reserved, offset (13 bits) and flags.
                let inner: u8 = ctx.load(40).ok()?;
                let offset: u16 = ctx.load(42).ok()?;
                (6u8, inner, 48usize, u16::from_be(offset) >> 3 != 0)
            } else {
                (6u8, next, 40usize, false)
            }
        }
        _ => return None,
    };
    let mut port = 0u16;
    if !later && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE)
    {
        // The destination port is the transport header's second 16 bits. `transport` is at
        // most 60.
        port = u16::from_be(ctx.load::<u16>((transport & 0x3f) + 2).ok()?);
    }
    Some((
        Destination {
            family,
            addr,
            port,
            protocol,
            form: NetEvent::FORM_AS_NAMED,
        },
        later,
    ))
}

/// Whether `dst` is agentd's resolver, where steered DNS queries go.
#[inline(always)]
fn is_resolver(dst: &Destination) -> bool {
    let Some(redirect) = NET_DNS.get_ptr(0) else {
        return false;
    };
    // SAFETY: a valid map value pointer.
    let (enabled, ip4, port) = unsafe { ((*redirect).enabled, (*redirect).ip4, (*redirect).port) };
    enabled != 0
        && dst.family == 4
        && dst.port == u16::from_be(port as u16)
        && u32::from_ne_bytes([dst.addr[0], dst.addr[1], dst.addr[2], dst.addr[3]]) == ip4
}

/// `cgroup_skb/egress` at the cgroup root: counts the bytes of each agent's sockets and
/// drops (0) an agent's packet to a destination its policy denies.
#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(known) = SOCK_AGENT
        .get_ptr(cookie)
        .or_else(|| released(&ctx, cookie))
    else {
        return 1;
    };
    // SAFETY: a valid map value pointer; the fields are copied out at once.
    let (agent, family, port, addr) = unsafe {
        (
            (*known).agent,
            (*known).family,
            (*known).port,
            (*known).addr,
        )
    };
    if let Some((dst, later)) = packet_destination(&ctx) {
        let named = dst.family == family && same_addr(&dst.addr, &addr);
        // A later fragment carries no port: it passes to the address its socket's call named
        // (where the first fragment, with the ports, went); anywhere else it is judged by
        // address, since a listener there would read its bytes without any reassembly.
        let expected = named && (later || dst.port == port);
        if !expected && !is_resolver(&dst) {
            let (decision, reported) = judge(agent, &dst, NetEvent::HOOK_EGRESS);
            if let Some(first) = reported {
                // No task: a packet is not always sent from its process's context.
                report(None, agent, &dst, NetEvent::HOOK_EGRESS, &decision, first);
            }
            if !decision.allow {
                return 0;
            }
        }
    }
    let len = u64::from(ctx.len());
    match AGENT_EGRESS.get_ptr_mut(agent) {
        // SAFETY: a per-CPU value: nothing else on this CPU writes it meanwhile.
        Some(bytes) => unsafe { *bytes += len },
        None => {
            let _ = AGENT_EGRESS.insert(agent, len, 0);
        }
    }
    1
}

/// `cgroup/sock_release` at the cgroup root: a closing socket leaves `SOCK_AGENT` (a TCP one
/// for `RELEASED_SOCKETS`). An untagged process's socket costs one lookup.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: the context's socket, readable in this hook.
    let tcp = unsafe { (*ctx.sock).protocol } == u32::from(IPPROTO_TCP);
    forget_socket(cookie, tcp);
    1
}
