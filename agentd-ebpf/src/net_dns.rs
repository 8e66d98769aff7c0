//! DNS steering in the call hooks: a tagged process's DNS goes to agentd's resolver
//! (`NET_DNS`), which `recvmsg4` shows as the server the process addressed (`DNS_ORIGINAL`).

use core::ptr::{read_volatile, write_volatile};

use agentd_common::{DnsRedirect, OriginalDestination};
use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::{Array, LruHashMap},
    programs::SockAddrContext,
};

use crate::net_types::{Destination, IPPROTO_TCP, IPPROTO_UDP};

/// Slot 0: where tagged processes' DNS queries (UDP port 53) go: agentd's resolver.
#[map]
pub static NET_DNS: Array<DnsRedirect> = Array::with_max_entries(1, 0);

/// Socket cookie → the DNS server a tagged process addressed, so that `recvmsg4` can show the
/// resolver's replies as coming from it. LRU: 16,384 recent resolver sockets.
#[map]
pub static DNS_ORIGINAL: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(16_384, 0);
/// What DNS steering does with a call: nothing (decided by the rules), steered, or refused.
pub(crate) const DNS_NONE: u32 = 0;
pub(crate) const DNS_STEERED: u32 = 1;
pub(crate) const DNS_REFUSED: u32 = 2;

/// Sends a tagged process's IPv4 DNS query, a UDP datagram or a TCP connect (to port 53, or to
/// agentd's resolver itself), to agentd's resolver, remembering where it was going and for
/// which agent. DNS that cannot be steered (IPv6, another protocol to port 53) is refused while
/// steering is on, so that every lookup of an agent goes through the resolver. `family` is the
/// hook's (the socket's): only an AF_INET socket's `user_ip4` can be rewritten, so DNS to a
/// v4-mapped address on an AF_INET6 socket is refused, not steered.
#[inline(always)]
pub(crate) fn steer_dns(ctx: &SockAddrContext, family: u8, dst: &Destination, agent: u32) -> u32 {
    let Some(redirect) = NET_DNS.get_ptr(0) else {
        return DNS_NONE;
    };
    // SAFETY: a valid map value pointer.
    let (enabled, ip4, port) = unsafe { ((*redirect).enabled, (*redirect).ip4, (*redirect).port) };
    if enabled == 0 {
        return DNS_NONE;
    }
    let sa = ctx.sock_addr;
    // SAFETY: context fields with constant offsets.
    let (user_ip4, user_port) = if family == 4 {
        unsafe {
            (
                read_volatile(&raw const (*sa).user_ip4),
                read_volatile(&raw const (*sa).user_port),
            )
        }
    } else {
        (0, 0)
    };
    let to_resolver = family == 4 && user_ip4 == ip4 && user_port == port;
    if dst.port != 53 && !to_resolver {
        return DNS_NONE;
    }
    // UDP datagrams and TCP connects; the resolver listens for both on the same address.
    if family != 4 || (dst.protocol != IPPROTO_UDP && dst.protocol != IPPROTO_TCP) {
        return DNS_REFUSED;
    }
    let original = OriginalDestination {
        ip4: user_ip4,
        port: user_port,
        agent,
        pad: 0,
    };
    // SAFETY: a helper call on the program's own context; `user_ip4` and `user_port` are
    // writable in connect4 and sendmsg4.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr.cast());
        // Without this entry the resolver does not know the agent and refuses the query.
        let _ = DNS_ORIGINAL.insert(cookie, original, 0);
        write_volatile(&raw mut (*sa).user_ip4, ip4);
        write_volatile(&raw mut (*sa).user_port, port);
    }
    DNS_STEERED
}

/// `recvmsg4`: a reply from agentd's resolver on a socket whose query was steered is shown as
/// coming from the server the process addressed. Never refuses anything.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let Some(redirect) = NET_DNS.get_ptr(0) else {
        return 1;
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid map value pointer; context fields with constant offsets.
    unsafe {
        let (ip4, port) = ((*redirect).ip4, (*redirect).port);
        if read_volatile(&raw const (*sa).user_ip4) != ip4
            || read_volatile(&raw const (*sa).user_port) != port
        {
            return 1;
        }
        let cookie = bpf_get_socket_cookie(ctx.sock_addr.cast());
        if let Some(original) = DNS_ORIGINAL.get_ptr(cookie) {
            let (orig_ip, orig_port) = ((*original).ip4, (*original).port);
            write_volatile(&raw mut (*sa).user_ip4, orig_ip);
            write_volatile(&raw mut (*sa).user_port, orig_port);
        }
    }
    1
}
