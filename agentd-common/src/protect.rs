//! agentd's self-protection: its own files by kernel object, and tamper events.

use core::mem::size_of;

use crate::{events::EventHeader, tag::AgentTag};

/// What an entry of `SELF_OBJECTS` is to agentd.
pub mod self_object {
    /// One of agentd's own files or directories (binary, configuration, policy, state, pins,
    /// event output): no agent may rename, replace, link, mount over or change it, nor
    /// anything inside it.
    pub const OWN: u32 = 1 << 0;
    /// A directory above one of them: renaming it or mounting over it would swap agentd's
    /// files by name, so both are denied; what is inside it is not otherwise protected.
    pub const ANCESTOR: u32 = 1 << 1;
}

/// An entry of `SELF_OBJECTS`: agentd's objects, by kernel object.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SelfObject {
    /// `self_object` bits.
    pub kind: u32,
    /// The rule number reported in events.
    pub rule: u32,
}
const _: () = assert!(size_of::<SelfObject>() == 8);

/// What a tagged process tried against agentd ([`TamperEvent::hook`]).
pub mod tamper_hook {
    /// A signal to agentd (`task_kill`); `detail` is the signal number.
    pub const KILL: u32 = 1;
    /// ptrace of agentd (`ptrace_access_check`); `detail` is the ptrace mode.
    pub const PTRACE: u32 = 2;
    /// The `bpf()` system call (`bpf`): maps, programs, links, pins; `detail` is the command.
    pub const BPF: u32 = 3;
}

/// A tagged process tried to stop or tamper with agentd; the kernel denied it.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct TamperEvent {
    pub header: EventHeader,
    /// The acting process (tgid).
    pub pid: u32,
    /// agentd's tgid for `KILL` and `PTRACE`; 0 for `BPF`.
    pub target: u32,
    /// A [`tamper_hook`] value.
    pub hook: u32,
    pub detail: u32,
    pub tag: AgentTag,
    pub pad: u32,
}
const _: () = assert!(size_of::<TamperEvent>() == 16 + 16 + 12 + 4);
