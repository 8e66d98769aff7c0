//! Time, injected: governance, expiry and token lifetimes read a [`Clock`], so that tests move
//! time forward instead of sleeping.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

/// `at` in RFC 3339 to the second (UTC), as messages and the CLI show times; a time before the
/// epoch as its number.
pub fn format_time(at: UnixTime) -> String {
    u64::try_from(at).map_or_else(
        |_| at.to_string(),
        |secs| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .to_string()
        },
    )
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            })
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: UnixTime) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

pub const DAY: i64 = 24 * 60 * 60;
