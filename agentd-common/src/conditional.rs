//! Conditional Access in the kernel: per-agent flags and grant lists per prefix.

use core::mem::size_of;

/// How many Conditional Access grants the kernel scans for one destination prefix (the
/// prefix's own and those of every shorter prefix containing it, denials first).
pub const CA_GRANTS_PER_PREFIX: usize = 8;

/// An agent's Conditional Access decision, as the network hooks apply it after the local policy
/// allowed a connect: deny wins.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaAgent {
    /// `CaAgent::FLAG_*` bits.
    pub flags: u32,
    /// The rule number reported when the allow-list has no grant for a destination.
    pub rule: u32,
}
const _: () = assert!(size_of::<CaAgent>() == 8);

impl CaAgent {
    /// The agent may reach only its grants (default deny).
    pub const FLAG_RESTRICTED: u32 = 1 << 0;
    /// Report-only policies have network controls: after the decision allowed a connect, the
    /// entries flagged [`CaGrant::FLAG_REPORT_ONLY`] (with `FLAG_REPORT_ONLY_RESTRICTED` and
    /// `FLAG_REPORT_ONLY_BLOCK`) are judged as the decision the agent would have with them
    /// enabled; what that would deny is reported ("would deny") and allowed.
    pub const FLAG_REPORT_ONLY: u32 = 1 << 1;
    /// Blocked: every connect is denied.
    pub const FLAG_BLOCK: u32 = 1 << 2;
    /// With report-only policies enabled, the agent could reach only their grants.
    pub const FLAG_REPORT_ONLY_RESTRICTED: u32 = 1 << 3;
    /// With report-only policies enabled, the agent would be blocked.
    pub const FLAG_REPORT_ONLY_BLOCK: u32 = 1 << 4;
    /// The decision has file controls in `FILE_RULES` (the file hooks judge them).
    pub const FLAG_FILE_CONTROLS: u32 = 1 << 5;
}

/// One Conditional Access grant or denial: a port range, until an expiry the hook checks.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaGrant {
    pub port_lo: u16,
    pub port_hi: u16,
    /// A `net_action` value.
    pub action: u8,
    /// `CaGrant::FLAG_*` bits.
    pub flags: u8,
    pub pad: [u8; 2],
    /// The rule number reported (the policy or access package it comes from).
    pub rule: u32,
    pub pad2: u32,
    /// `CLOCK_BOOTTIME` nanoseconds from which the entry no longer applies; 0: never expires.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<CaGrant>() == 24);

impl CaGrant {
    /// The entry belongs to what report-only policies would decide ([`CaAgent::FLAG_REPORT_ONLY`]),
    /// not to the decision in force.
    pub const FLAG_REPORT_ONLY: u8 = 1 << 0;
}

/// The Conditional Access entries that apply under one destination prefix, in scan order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CaGrantList {
    pub count: u32,
    pub pad: u32,
    pub grants: [CaGrant; CA_GRANTS_PER_PREFIX],
}
const _: () = assert!(size_of::<CaGrantList>() == 8 + 24 * CA_GRANTS_PER_PREFIX);

/// Key of `CA_GRANTS_V4`: the agent and an IPv4 prefix (LPM, prefix length counts the agent's
/// 32 bits).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaKeyV4 {
    pub agent: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<CaKeyV4>() == 8);

/// Key of `CA_GRANTS_V6`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaKeyV6 {
    pub agent: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<CaKeyV6>() == 20);
