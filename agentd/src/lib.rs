//! agentd: kernel-enforced identity and Conditional Access for AI agents on Linux hosts.
//!
//! The crate is a library with thin binaries: `src/bin/agentd.rs` parses the command line and
//! calls into [`daemon`]. See ARCHITECTURE.md for the data flow.

pub mod api;
pub mod assess;
pub mod cgroups;
pub mod clock;
pub mod conditional;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod ebpf;
pub mod events;
pub mod file_links;
pub mod health;
pub mod identity;
pub mod inode;
pub mod kernel_btf;
pub mod lineage;
pub mod metrics;
pub mod netfamily;
pub mod pidfd;
pub mod pins;
pub mod policy;
pub mod pseudofs;
pub mod risk;
pub mod sensors;
pub mod sink;
pub mod spiffe;
