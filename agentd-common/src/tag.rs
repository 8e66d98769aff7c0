//! Agent tags: how a process was tagged, the per-agent caps, and discovery matches.

use core::mem::size_of;

/// How a process came to carry its agent's identity.
#[repr(u16)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TagSource {
    /// Started by `agentd launch` in the agent's agentd-managed cgroup.
    Launch = 1,
    /// Runs in a cgroup named in the agent's registration (e.g. a systemd unit's).
    Cgroup = 2,
    /// Its exec matched a discovery rule.
    Discovery = 3,
}

impl TagSource {
    #[must_use]
    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Launch),
            2 => Some(Self::Cgroup),
            3 => Some(Self::Discovery),
            _ => None,
        }
    }
}

/// The identity a process carries in the kernel: the agent's compact index (userspace maps it
/// to the agent's UUID and name) and how the tag was obtained.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AgentTag {
    /// 1-based agent index; 0 means "not an agent".
    pub agent: u32,
    /// A [`TagSource`] as `u16`.
    pub source: u16,
    /// `AgentTag::FLAG_*` bits.
    pub flags: u16,
    /// The discovery rule that matched (for [`TagSource::Discovery`]), else 0.
    pub rule: u32,
}
const _: () = assert!(size_of::<AgentTag>() == 12);

impl AgentTag {
    /// No agent.
    pub const NONE: Self = Self {
        agent: 0,
        source: 0,
        flags: 0,
        rule: 0,
    };
    /// The process got its tag from its parent at fork.
    pub const FLAG_INHERITED: u16 = 1 << 0;

    #[must_use]
    pub const fn new(agent: u32, source: TagSource, rule: u32) -> Self {
        Self {
            agent,
            source: source as u16,
            flags: 0,
            rule,
        }
    }

    /// The same tag, marked as inherited.
    #[must_use]
    pub const fn inherited(self) -> Self {
        Self {
            flags: self.flags | Self::FLAG_INHERITED,
            ..self
        }
    }
}

/// Slots of the per-CPU `TAG_STATS` counters.
pub mod tag_stats {
    /// A process should have been tagged but the `TASK_AGENT` insert failed (map full, or no
    /// memory for a new entry).
    pub const INSERT_FAILED: u32 = 0;
    /// A process was created and tagged while its agent was at its cap (no BPF LSM to refuse).
    pub const OVER_CAP: u32 = 1;
    /// A new process of an agent at its cap was refused with `EAGAIN` (BPF LSM `task_alloc`).
    pub const REFUSED: u32 = 2;
    /// A process tagged while it ran could not be marked in `LATE_TAGGED` (map full): its
    /// descriptors from before the tag are judged only once agentd has listed them.
    pub const LATE_LOST: u32 = 3;
    /// Number of slots.
    pub const LEN: u32 = 4;
}

/// Slots of the `LATE_TAGS` array, which says whether a process tagged while it ran is still
/// waiting for agentd to list the descriptors it held (`LATE_TAGGED`).
pub mod late_tags {
    /// Marks the kernel has made (it only adds).
    pub const MARKED: u32 = 0;
    /// The mark count agentd has settled up to; agentd writes [`PENDING`] here when it marks
    /// a process itself.
    pub const SETTLED: u32 = 1;
    /// Never a mark count: "agentd marked a process and has not settled it yet".
    pub const PENDING: u64 = u64::MAX;
    /// Number of slots.
    pub const LEN: u32 = 2;
}

/// How many agents the per-agent counters (`AGENT_PROCS`, `AGENT_PROCS_USER`) have slots for,
/// the same bound as the network quarantine map. An agent index beyond it counts as being at
/// its cap: it can never mean "unlimited".
pub const MAX_AGENTS: u32 = 4_096;

/// The symbol name of the per-agent cap on live tagged processes (a `u32` global written at
/// load; 0 would mean no cap, which agentd never writes).
pub const TAG_CAP_SYMBOL: &str = "MAX_PROCESSES_PER_AGENT";

/// The global holding `network.max_sockets_per_agent`, written by agentd at load.
pub const SOCKET_CAP_SYMBOL: &str = "MAX_SOCKETS_PER_AGENT";

/// What the kernel does with an exec that matches a discovery rule by file (`DISCOVERY_INODES`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryMatch {
    pub agent: u32,
    pub rule: u32,
}
const _: () = assert!(size_of::<DiscoveryMatch>() == 8);
