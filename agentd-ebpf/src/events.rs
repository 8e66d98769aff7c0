//! The one ring buffer that every program reports through, and its accounting: every event a
//! program tries to send is counted as produced, and every one the ring buffer had no room for
//! as dropped, per CPU, so that userspace can check delivered + dropped = produced.

use agentd_common::{EventHeader, EventKind, event_stats};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};

/// 4 MiB by default (`events.ring_buffer_bytes` sets it at load): about 7,000 exec events of
/// burst before the reader must catch up. A power-of-two
/// multiple of the page size, as the kernel requires.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per CPU: slot `event_stats::DROPPED` counts the events that could not be reserved in
/// `EVENTS`, slot `event_stats::PRODUCED` every event a program tried to send.
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event_stats::LEN, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(slot) = EVENT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Reserves room for one `T` in `EVENTS`, counting it as produced, and as dropped when the ring
/// buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    count(event_stats::PRODUCED);
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(event_stats::DROPPED);
    }
    entry
}

/// `bpf_ringbuf_*` flags: whether to wake the reader now.
///
/// Waking the reader for every record is the single largest cost on a hot hook (a wake-up is
/// an inter-processor interrupt, a VM exit on a guest): routine records (`QUIET`) let the
/// reader find them at its next poll, within milliseconds; records that something acts on at
/// once (denials, rule hits: `URGENT`) wake it.
pub mod wakeup {
    /// `BPF_RB_NO_WAKEUP`
    pub const QUIET: u64 = 1;
    /// `BPF_RB_FORCE_WAKEUP`
    pub const URGENT: u64 = 2;
}

/// Copies `event` into `EVENTS`, with the same accounting as [`reserve`]; `flags` is a
/// [`wakeup`] value.
#[inline(always)]
pub fn output<T: 'static>(event: &T, flags: u64) {
    count(event_stats::PRODUCED);
    if EVENTS.output::<T>(event, flags).is_err() {
        count(event_stats::DROPPED);
    }
}

#[inline(always)]
pub fn header(kind: EventKind) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        // SAFETY: plain helper calls with no arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}
