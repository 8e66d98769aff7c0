//! Types shared by the kernel programs (`agentd-ebpf`) and userspace (`agentd`).
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and has its size pinned by a
//! compile-time assertion, so that a layout change on one side cannot go unnoticed on the other.

#![no_std]

mod conditional;
mod events;
mod files;
mod inode;
mod kernel;
mod net;
#[cfg(feature = "user")]
mod pod;
mod protect;
mod registry;
mod tag;

pub use self::{
    conditional::*, events::*, files::*, inode::*, kernel::*, net::*, protect::*, registry::*,
    tag::*,
};
