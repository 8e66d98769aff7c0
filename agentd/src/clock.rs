//! The clocks agentd reads: `CLOCK_BOOTTIME`, which the kernel stamps events with and
//! `/proc/PID/stat` counts start times in, and the wall clock for what the control plane and
//! the kept decisions record.

/// `CLOCK_BOOTTIME` now.
fn boottime() -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    now
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock the kernel stamps events with.
pub fn boottime_ns() -> u64 {
    let now = boottime();
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// `CLOCK_BOOTTIME` in clock ticks, the unit of `/proc/PID/stat`'s start time.
pub fn boottime_ticks() -> u64 {
    let now = boottime();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs * hz + nanos * hz / 1_000_000_000
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_in_ticks_and_nanoseconds_agree() {
        let ticks = boottime_ticks();
        let ns = boottime_ns();
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let ticks_after = ns * hz / 1_000_000_000;
        assert!(
            ticks <= ticks_after && ticks_after <= ticks + hz,
            "{ticks} vs {ticks_after}"
        );
        assert!(unix_ms() > 1_700_000_000_000);
    }
}
