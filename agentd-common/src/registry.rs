//! The pinned registry of agent and rule numbers, and the pinned maps' schema version.

use core::mem::size_of;

/// The version of what the kernel maps mean. Bump it when a map keeps its key and value sizes
/// but changes what the bytes mean: agentd then creates new pinned maps instead of adopting the
/// old ones (docs/operations.md, "Enforcement that survives the daemon").
pub const MAP_SCHEMA: u32 = 4;

/// Longest name a [`RegistryEntry`] keeps.
pub const REGISTRY_NAME_LEN: usize = 120;

/// One entry of agentd's registry of kernel numbers, kept in a pinned map beside the other maps
/// so that a restarted agentd gives agents and rules the numbers the kernel's tags already use.
/// Userspace only: no program reads it. The key is `kind << 32 | number`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The agent's UUID; zero for a rule.
    pub id: [u8; 16],
    /// Bytes of `name` in use.
    pub name_len: u32,
    pub pad: u32,
    pub name: [u8; REGISTRY_NAME_LEN],
}
const _: () = assert!(size_of::<RegistryEntry>() == 144);

impl RegistryEntry {
    /// [`RegistryEntry`] key kinds.
    pub const AGENT: u64 = 1;
    pub const RULE: u64 = 2;
}
