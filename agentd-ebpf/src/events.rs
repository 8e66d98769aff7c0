//! The one ring buffer that every program reports through, and its loss counter.

use agentd_common::{EventHeader, EventKind};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// 1 MiB: about 3,000 exec events of burst before the reader must catch up. A power-of-two
/// multiple of the page size, as the kernel requires.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Slot 0 counts, per CPU, the events that could not be reserved in `EVENTS`, so that userspace
/// can report delivered + dropped = produced.
#[map]
pub static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts one event lost to a full ring buffer.
#[inline(always)]
pub fn count_drop() {
    if let Some(slot) = EVENT_DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        unsafe { *slot += 1 };
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
