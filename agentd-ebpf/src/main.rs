//! agentd's kernel programs. One object holds every program; userspace loads and attaches the
//! ones each sensor needs. Each program is a thin, total entry point: the `try_*` function does
//! the work and the entry point decides the safe default in one place.

#![no_std]
#![no_main]
// Atomic adds on map values (`tagging::add_live`): the BPF target has no compare-and-swap, so
// `core::sync::atomic`'s `fetch_add` is not offered, but the instruction exists.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics, for the atomic add above"
)]

mod events;
mod exec;
mod exec_guard;
mod file_rules;
mod files;
mod files_held;
mod files_meta;
mod files_namespace;
mod kernel;
mod net;
mod net_access;
mod net_dns;
mod net_packet;
mod net_sockets;
mod net_types;
mod net_verdict;
mod protect;
mod protect_files;
mod tagging;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it is never executed.
    loop {}
}

/// LSM programs and most tracing helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
