//! Network rules, keys and events: rule lists per prefix (double-buffered by generation), the
//! blocklist, agents' network policies, the verdict cache, DNS steering, and the addresses DNS
//! answers taught.

use core::mem::size_of;

use crate::events::{COMM_LEN, EventHeader};

/// How many rules the kernel scans for one destination prefix (the prefix's own rules and
/// those of every shorter prefix that contains it, most specific first). Userspace refuses a
/// policy that would need more.
pub const NET_RULES_PER_PREFIX: usize = 16;

/// Verdict actions in network rules and defaults.
pub mod net_action {
    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
}

/// One network rule as the kernel scans it: it matches a destination port range and protocol
/// (0 = any) inside the prefix it is stored under.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetRule {
    pub port_lo: u16,
    pub port_hi: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 for any.
    pub protocol: u8,
    /// A `net_action` value.
    pub action: u8,
    pub pad: u16,
    /// The rule's number; userspace maps it back to the rule's name.
    pub rule: u32,
}
const _: () = assert!(size_of::<NetRule>() == 12);

/// The rules that apply under one destination prefix, in the order they are tried.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetRuleList {
    pub count: u32,
    pub rules: [NetRule; NET_RULES_PER_PREFIX],
}
const _: () = assert!(size_of::<NetRuleList>() == 4 + 12 * NET_RULES_PER_PREFIX);

/// LPM trie key data for IPv4 rules: the policy generation and agent are matched in full (the
/// first 64 bits of every prefix), then the address prefix.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetKeyV4 {
    pub generation: u32,
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<NetKeyV4>() == 12);

/// LPM trie key data for IPv6 rules; see [`NetKeyV4`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetKeyV6 {
    pub generation: u32,
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetKeyV6>() == 24);

/// LPM trie key data of the global blocklist, IPv4 (generation, then address prefix).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockKeyV4 {
    pub generation: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<BlockKeyV4>() == 8);

/// LPM trie key data of the global blocklist, IPv6.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockKeyV6 {
    pub generation: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<BlockKeyV6>() == 20);

/// Key of an agent's network settings for one generation.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetAgentKey {
    pub generation: u32,
    pub agent: u32,
}
const _: () = assert!(size_of::<NetAgentKey>() == 8);

/// An agent's network settings.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetAgentPolicy {
    /// The policy version this generation holds, reported in every event.
    pub version: u32,
    /// A `net_action` value for destinations no rule matches.
    pub default_action: u8,
    /// 1: audit mode (report "would deny", allow).
    pub audit: u8,
    /// A `net_action` value for the raw sockets (`SOCK_RAW`) and packet sockets (`AF_PACKET`)
    /// its processes create.
    pub raw_sockets: u8,
    pub pad: u8,
    /// Bit `n` set: its processes may create sockets of address family `n` (`AF_*`), besides
    /// those always allowed ([`socket_family::ALWAYS`]) and `AF_PACKET` (`raw_sockets`).
    pub socket_families: u64,
}
const _: () = assert!(size_of::<NetAgentPolicy>() == 16);

/// Socket address families, as the BPF LSM `socket_create` hook sees them.
pub mod socket_family {
    pub const UNIX: u32 = 1;
    pub const INET: u32 = 2;
    pub const INET6: u32 = 10;
    pub const NETLINK: u32 = 16;
    pub const PACKET: u32 = 17;
    pub const ALG: u32 = 38;
    /// One past the largest family a `socket_families` bit can name (Linux's `AF_MAX` is 46).
    pub const LIMIT: u32 = 64;
    /// Families every agent's processes may create: local (unix, netlink, the kernel's crypto
    /// API) or decided by the address hooks (inet, inet6).
    pub const ALWAYS: u64 = 1 << UNIX | 1 << INET | 1 << INET6 | 1 << NETLINK | 1 << ALG;
}

/// A tagged process's connect or datagram, and what the kernel decided.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct NetEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub agent: u32,
    /// The policy version that decided.
    pub version: u32,
    /// A [`Verdict`] as `u8`: what happened to the call.
    pub verdict: u8,
    /// `NetEvent::FLAG_*` bits.
    pub flags: u8,
    /// 4 or 6.
    pub family: u8,
    pub protocol: u8,
    /// Destination port, host byte order.
    pub port: u16,
    /// `NetEvent::HOOK_*`.
    pub hook: u8,
    /// `NetEvent::FORM_*`: how the destination was read from what the process named.
    pub form: u8,
    /// The rule that decided; 0 for the default action, quarantine and blocklist hits name
    /// their list entry's rule number.
    pub rule: u32,
    /// Destination address; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<NetEvent>() == 16 + 12 + 8 + 4 + 16 + COMM_LEN);

impl NetEvent {
    pub const HOOK_CONNECT: u8 = 1;
    pub const HOOK_SENDMSG: u8 = 2;
    /// `cgroup/sock_create`: a raw socket was created (`port` and `addr` are 0).
    pub const HOOK_SOCKET: u8 = 3;
    /// `cgroup/setsockopt`: a source route was set on a socket (`addr` is 0).
    pub const HOOK_SETSOCKOPT: u8 = 4;
    /// `cgroup_skb/egress`: a packet of an agent's socket, to a destination no allowed call
    /// named (reported at most once per report interval and destination).
    pub const HOOK_EGRESS: u8 = 5;
    /// BPF LSM `socket_create`: a socket of a family no address hook sees (`AF_PACKET`,
    /// `AF_VSOCK`, ...). `port` holds the family (`AF_*`), `protocol` the socket protocol's low
    /// byte, `addr` is 0.
    pub const HOOK_FAMILY: u8 = 6;
    /// The address is the one the process named.
    pub const FORM_AS_NAMED: u8 = 0;
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), decided and reported as IPv4.
    pub const FORM_V4_MAPPED: u8 = 1;
    /// `0.0.0.0` or `::`, which the kernel connects to the local host: decided and reported as
    /// `127.0.0.1` or `::1`.
    pub const FORM_UNSPECIFIED: u8 = 2;
    /// Audit mode turned a deny into an allow.
    pub const FLAG_WOULD_DENY: u8 = 1 << 0;
    /// The global blocklist matched.
    pub const FLAG_BLOCKLIST: u8 = 1 << 1;
    /// The agent is quarantined.
    pub const FLAG_QUARANTINE: u8 = 1 << 2;
    /// No rule matched: the agent's default action decided.
    pub const FLAG_DEFAULT: u8 = 1 << 3;
    /// A DNS query, steered to agentd's resolver.
    pub const FLAG_DNS: u8 = 1 << 4;
    /// A destination learned from a DNS answer matched a domain rule.
    pub const FLAG_LEARNED: u8 = 1 << 5;
    /// The agent's Conditional Access decision decided (deny, or would deny in report-only).
    pub const FLAG_CONDITIONAL_ACCESS: u8 = 1 << 6;
    /// The call was allowed, but its socket could not be recorded for the egress check (its
    /// agent at `network.max_sockets_per_agent`, or `SOCK_AGENT` full): denied, fail closed.
    pub const FLAG_UNTRACKED: u8 = 1 << 7;
}

/// What the kernel remembers of an agent's socket (`SOCK_AGENT`, by socket cookie): its agent
/// and the destination the last allowed connect or sendmsg named, so that the egress check
/// lets a packet to that destination through at once and decides any other.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SocketAgent {
    pub agent: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// 4 or 6; 0: no destination yet (a ping or raw socket recorded at creation).
    pub family: u8,
    pub pad: u8,
    /// IPv4 in the first 4 bytes, the rest zero; or IPv6.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SocketAgent>() == 24);

/// What the network hooks' verdict cache depends on (`NET_CACHE[0]`).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCacheConfig {
    /// Bumped by agentd after every change to a map a network verdict reads (policy generation,
    /// blocklist, quarantine, learned destinations, Conditional Access): verdicts cached under
    /// an older epoch are never read again.
    pub epoch: u32,
    /// Allowed calls to a destination already reported are reported again only after this
    /// many milliseconds; 0 reports every one. Denials and would-denials are always reported.
    pub allowed_report_interval_ms: u32,
}
const _: () = assert!(size_of::<NetCacheConfig>() == 8);

/// A key of the network verdict cache: one agent's calls to one destination through one hook,
/// under one [`NetCacheConfig::epoch`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetVerdictKey {
    pub epoch: u32,
    pub agent: u32,
    /// IPv4 in the first 4 bytes, the rest zero; or IPv6.
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    /// `NetEvent::HOOK_*`.
    pub hook: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<NetVerdictKey>() == 32);

/// A cached network verdict, as the hook decided it, and when it was last reported.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetVerdict {
    /// `CLOCK_BOOTTIME` nanoseconds at which the verdict must be decided again (the soonest
    /// expiry of a Conditional Access entry it rests on); 0: not before the epoch changes.
    pub valid_until_ns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the last event reported for this key.
    pub reported_ns: u64,
    pub rule: u32,
    pub version: u32,
    /// 1: allowed.
    pub allow: u8,
    /// `NetEvent::FLAG_*` bits.
    pub flags: u8,
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<NetVerdict>() == 32);

/// Where the kernel steers tagged processes' DNS queries: agentd's resolver.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DnsRedirect {
    /// 0: off.
    pub enabled: u32,
    /// The resolver's IPv4 address, network byte order as `bpf_sock_addr.user_ip4`.
    pub ip4: u32,
    /// The resolver's port, network byte order in the low 16 bits as `bpf_sock_addr.user_port`.
    pub port: u32,
}
const _: () = assert!(size_of::<DnsRedirect>() == 12);

/// A DNS query's original destination, kept per socket so replies can be shown as from it, and
/// the agent whose process steered it (agentd's resolver judges the query by that agent).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OriginalDestination {
    pub ip4: u32,
    pub port: u32,
    pub agent: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<OriginalDestination>() == 16);

/// Key of a destination learned from a DNS answer, for one agent.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKeyV4 {
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<LearnedKeyV4>() == 8);

/// What a DNS answer made apply to a learned destination (`NET_LEARNED_V4`, `NET_LEARNED_V6`):
/// the domain rule's ports, protocol and action, and whether its allow also holds against a
/// prefix deny of the agent ([`LearnedRule::FLAG_OVERRIDES_PREFIX_DENY`]).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LearnedRule {
    pub port_lo: u16,
    pub port_hi: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 for any.
    pub protocol: u8,
    /// A `net_action` value.
    pub action: u8,
    pub flags: u16,
    /// The domain rule's number.
    pub rule: u32,
}
const _: () = assert!(size_of::<LearnedRule>() == 12);

impl LearnedRule {
    /// The rule says `override_cidr_deny = true`: its allow beats a prefix deny. Without it a
    /// prefix deny of the agent wins over the learned allow (DNS rebinding).
    pub const FLAG_OVERRIDES_PREFIX_DENY: u16 = 1 << 0;
}

/// Key of an IPv6 destination learned from a DNS answer (AAAA), for one agent.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKeyV6 {
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LearnedKeyV6>() == 20);
