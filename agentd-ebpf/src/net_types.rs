//! The network vocabulary every network hook shares: a destination as the kernel will reach it,
//! the protocols the rules compare, and a decision.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};

/// A destination as the kernel will reach it (see [`destination_v6`] for the address forms
/// decided as another), with the address in both shapes the maps need.
pub(crate) struct Destination {
    pub(crate) family: u8,
    pub(crate) addr: [u8; 16],
    pub(crate) port: u16,
    /// The socket's protocol, as reported.
    pub(crate) protocol: u8,
    /// A `NetEvent::FORM_*` value: how the named address was read.
    pub(crate) form: u8,
}

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPPROTO_UDPLITE: u8 = 136;

impl Destination {
    /// The protocol that rules and learned entries compare: UDP-Lite is UDP, ICMPv6 is ICMP.
    #[inline(always)]
    pub(crate) fn rule_protocol(&self) -> u8 {
        match self.protocol {
            IPPROTO_UDPLITE => IPPROTO_UDP,
            IPPROTO_ICMPV6 => IPPROTO_ICMP,
            other => other,
        }
    }
}

pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// The verdict for a tagged process's call, and what to report.
pub(crate) struct Decision {
    pub(crate) allow: bool,
    pub(crate) flags: u8,
    pub(crate) rule: u32,
    pub(crate) version: u32,
}

/// A longest-prefix lookup as a raw pointer, null-free in its `Some`.
#[inline(always)]
pub(crate) fn lpm_ptr<K, V>(map: &LpmTrie<K, V>, key: &Key<K>) -> Option<*const V> {
    map.get(key).map(core::ptr::from_ref)
}
