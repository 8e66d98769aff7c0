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

use agentd_common::{NetEvent, SocketAgent};
use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_skb, map},
    maps::{LruHashMap, PerCpuHashMap},
    programs::SkBuffContext,
};

use crate::net::{Destination, IPPROTO_UDP, IPPROTO_UDPLITE, NET_DNS, judge, report};

const IPPROTO_TCP: u8 = 6;
/// IPv6 fragment header: the transport header of a fragment is not where it would be.
const IPPROTO_FRAGMENT: u8 = 44;

/// Socket cookie → the agent whose process uses it, and the destination its last allowed call
/// named. LRU: closed sockets age out; 65,536 open agent sockets at once before the oldest is
/// forgotten (its later packets are then neither counted nor checked). The insert is the
/// costliest step of a tagged connect (about 360 ns of its 660 in benchmark row 4 here; socket
/// storage measured dearer, a plain hash map 220 ns but nothing would remove closed sockets),
/// so a socket already recorded with the same agent and destination (datagrams sent again and
/// again) is not written again.
#[map]
pub static SOCK_AGENT: LruHashMap<u64, SocketAgent> = LruHashMap::with_max_entries(65_536, 0);

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

/// Remembers that `agent`'s process uses the socket `cookie` and that `dst` was allowed on it.
/// A connect is nearly always a socket's first call, so only a datagram (`hook`) looks for
/// the socket first.
#[inline(always)]
pub fn remember_socket(cookie: u64, agent: u32, dst: &Destination, hook: u8) {
    if hook == NetEvent::HOOK_SENDMSG
        && let Some(known) = SOCK_AGENT.get_ptr(cookie)
    {
        // SAFETY: a valid map value pointer; the fields are copied out at once.
        let (known_agent, family, port, addr) = unsafe {
            (
                (*known).agent,
                (*known).family,
                (*known).port,
                (*known).addr,
            )
        };
        if known_agent == agent
            && family == dst.family
            && port == dst.port
            && same_addr(&addr, &dst.addr)
        {
            return;
        }
    }
    let value = SocketAgent {
        agent,
        port: dst.port,
        family: dst.family,
        pad: 0,
        addr: dst.addr,
    };
    // A full LRU map evicts; it never fails for lack of room.
    let _ = SOCK_AGENT.insert(cookie, value, 0);
}

/// Records a socket of `agent` that no call has named a destination for yet.
#[inline(always)]
pub fn remember_new_socket(cookie: u64, agent: u32) {
    let value = SocketAgent {
        agent,
        port: 0,
        family: 0,
        pad: 0,
        addr: [0; 16],
    };
    let _ = SOCK_AGENT.insert(cookie, value, 0);
}

/// The packet's destination from its IPv4 or IPv6 header (and the transport header's port
/// for TCP, UDP and UDP-Lite; 0 otherwise). `None` for what it cannot judge: a non-IP packet,
/// a later fragment (the first carried the ports and was judged), a header it cannot read.
#[inline(always)]
fn packet_destination(ctx: &SkBuffContext) -> Option<Destination> {
    let first: u8 = ctx.load(0).ok()?;
    let mut addr = [0u8; 16];
    let (family, protocol, transport) = match first >> 4 {
        4 => {
            let fragment: u16 = ctx.load(6).ok()?;
            if u16::from_be(fragment) & 0x1fff != 0 {
                return None;
            }
            let daddr: [u8; 4] = ctx.load(16).ok()?;
            addr[..4].copy_from_slice(&daddr);
            (4u8, ctx.load::<u8>(9).ok()?, usize::from(first & 0x0f) * 4)
        }
        6 => {
            addr = ctx.load(24).ok()?;
            let next: u8 = ctx.load(6).ok()?;
            if next == IPPROTO_FRAGMENT {
                return None;
            }
            (6u8, next, 40usize)
        }
        _ => return None,
    };
    let mut port = 0u16;
    if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE {
        // The destination port is the transport header's second 16 bits. `transport` is at
        // most 60.
        port = u16::from_be(ctx.load::<u16>((transport & 0x3f) + 2).ok()?);
    }
    Some(Destination {
        family,
        addr,
        port,
        protocol,
        form: NetEvent::FORM_AS_NAMED,
    })
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
    let Some(known) = SOCK_AGENT.get_ptr(cookie) else {
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
    if let Some(dst) = packet_destination(&ctx)
        && !(dst.family == family && dst.port == port && same_addr(&dst.addr, &addr))
        && !is_resolver(&dst)
    {
        let (decision, reported) = judge(agent, &dst, NetEvent::HOOK_EGRESS);
        if let Some(first) = reported {
            // No task: a packet is not always sent from its process's context.
            report(None, agent, &dst, NetEvent::HOOK_EGRESS, &decision, first);
        }
        if !decision.allow {
            return 0;
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
