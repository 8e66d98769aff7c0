//! `aya::Pod` for every type userspace reads out of maps and ring buffers (feature `user`).

// SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
// and has no implicit padding (each size is asserted beside its type), so any bit pattern is
// valid.
unsafe impl aya::Pod for crate::events::EventHeader {}
unsafe impl aya::Pod for crate::events::ExecEvent {}
unsafe impl aya::Pod for crate::files::FileEvent {}
unsafe impl aya::Pod for crate::inode::InodeKey {}
unsafe impl aya::Pod for crate::kernel::KernelOffsets {}
unsafe impl aya::Pod for crate::tag::AgentTag {}
unsafe impl aya::Pod for crate::events::ProcessEvent {}
unsafe impl aya::Pod for crate::tag::DiscoveryMatch {}
unsafe impl aya::Pod for crate::net::NetRule {}
unsafe impl aya::Pod for crate::net::NetRuleList {}
unsafe impl aya::Pod for crate::net::NetKeyV4 {}
unsafe impl aya::Pod for crate::net::NetKeyV6 {}
unsafe impl aya::Pod for crate::net::BlockKeyV4 {}
unsafe impl aya::Pod for crate::net::BlockKeyV6 {}
unsafe impl aya::Pod for crate::net::NetAgentKey {}
unsafe impl aya::Pod for crate::net::NetAgentPolicy {}
unsafe impl aya::Pod for crate::net::NetEvent {}
unsafe impl aya::Pod for crate::net::DnsRedirect {}
unsafe impl aya::Pod for crate::net::NetCacheConfig {}
unsafe impl aya::Pod for crate::net::NetVerdictKey {}
unsafe impl aya::Pod for crate::net::NetVerdict {}
unsafe impl aya::Pod for crate::net::OriginalDestination {}
unsafe impl aya::Pod for crate::net::LearnedKeyV4 {}
unsafe impl aya::Pod for crate::net::LearnedKeyV6 {}
unsafe impl aya::Pod for crate::net::LearnedRule {}
unsafe impl aya::Pod for crate::files::FileRuleKey {}
unsafe impl aya::Pod for crate::files::FileRule {}
unsafe impl aya::Pod for crate::files::CaFileControl {}
unsafe impl aya::Pod for crate::files::FileNameKey {}
unsafe impl aya::Pod for crate::files::FileEntryKey {}
unsafe impl aya::Pod for crate::conditional::CaAgent {}
unsafe impl aya::Pod for crate::conditional::CaGrantList {}
unsafe impl aya::Pod for crate::conditional::CaKeyV4 {}
unsafe impl aya::Pod for crate::conditional::CaKeyV6 {}
unsafe impl aya::Pod for crate::registry::RegistryEntry {}
unsafe impl aya::Pod for crate::protect::TamperEvent {}
unsafe impl aya::Pod for crate::protect::SelfObject {}
unsafe impl aya::Pod for crate::files::ExecAgent {}
