//! The throttle on failed authentication: after `max_failures` failed bearer-token or join-token
//! checks from one source within `window`, every call from that source is refused with
//! `RESOURCE_EXHAUSTED` for `block`, before any token is looked up. A source is an IPv4 address
//! or an IPv6 /64. The table holds at most `max_sources` sources; when it is full, sources
//! whose window has passed go first, then the one seen longest ago.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug)]
pub struct ThrottleOptions {
    /// Failed authentications from one source within `window` before it is blocked; 0: never.
    pub max_failures: u32,
    pub window: Duration,
    /// How long a blocked source is refused.
    pub block: Duration,
    /// Sources remembered at most (memory bound).
    pub max_sources: usize,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        Self {
            max_failures: 30,
            window: Duration::from_mins(1),
            block: Duration::from_mins(1),
            max_sources: 10_000,
        }
    }
}

/// A source, as the throttle counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    /// The first 64 bits: one host usually owns a whole /64.
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.to_bits()),
                None => Self::V6(u64::try_from(v6.to_bits() >> 64).unwrap_or(u64::MAX)),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct AuthThrottle {
    options: ThrottleOptions,
    sources: Mutex<HashMap<Source, Failures>>,
}

impl AuthThrottle {
    pub fn new(options: ThrottleOptions) -> Self {
        Self {
            options,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(remaining)` while `source` is blocked.
    pub fn check(&self, source: Source, now: Instant) -> Result<(), Duration> {
        let sources = self.sources.lock().expect("throttle lock");
        match sources.get(&source).and_then(|f| f.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `source`; `true` when this one blocks it.
    pub fn record_failure(&self, source: Source, now: Instant) -> bool {
        let options = self.options;
        if options.max_failures == 0 {
            return false;
        }
        let mut sources = self.sources.lock().expect("throttle lock");
        if !sources.contains_key(&source) && sources.len() >= options.max_sources.max(1) {
            make_room(&mut sources, &options, now);
        }
        let failures = sources.entry(source).or_insert(Failures {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if failures.blocked_until.is_some_and(|until| until <= now)
            || now.duration_since(failures.window_start) >= options.window
        {
            *failures = Failures {
                window_start: now,
                count: 0,
                blocked_until: None,
            };
        }
        failures.count = failures.count.saturating_add(1);
        if failures.count >= options.max_failures && failures.blocked_until.is_none() {
            failures.blocked_until = Some(now + options.block);
            return true;
        }
        false
    }

    pub fn sources(&self) -> usize {
        self.sources.lock().expect("throttle lock").len()
    }
}

/// Forgets sources that are neither blocked nor within their window; if none is, the one whose
/// window started first.
fn make_room(sources: &mut HashMap<Source, Failures>, options: &ThrottleOptions, now: Instant) {
    sources.retain(|_, f| {
        f.blocked_until.is_some_and(|until| until > now)
            || now.duration_since(f.window_start) < options.window
    });
    if sources.len() >= options.max_sources.max(1)
        && let Some(oldest) = sources
            .iter()
            .min_by_key(|(_, f)| f.window_start)
            .map(|(source, _)| *source)
    {
        sources.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn options(max_failures: u32, max_sources: usize) -> ThrottleOptions {
        ThrottleOptions {
            max_failures,
            window: Duration::from_mins(1),
            block: Duration::from_secs(30),
            max_sources,
        }
    }

    fn v4(last: u8) -> Source {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)).into()
    }

    #[test]
    fn a_source_is_blocked_after_max_failures_for_the_block_time() {
        let throttle = AuthThrottle::new(options(3, 100));
        let t0 = Instant::now();
        assert!(!throttle.record_failure(v4(1), t0));
        assert!(!throttle.record_failure(v4(1), t0));
        assert_eq!(throttle.check(v4(1), t0), Ok(()));
        assert!(throttle.record_failure(v4(1), t0));
        assert_eq!(throttle.check(v4(1), t0), Err(Duration::from_secs(30)));
        assert_eq!(
            throttle.check(v4(2), t0),
            Ok(()),
            "other sources are not blocked"
        );
        assert_eq!(throttle.check(v4(1), t0 + Duration::from_secs(30)), Ok(()));
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_block() {
        let throttle = AuthThrottle::new(options(3, 100));
        let t0 = Instant::now();
        for minute in 0..10 {
            let at = t0 + Duration::from_secs(61 * minute);
            assert!(!throttle.record_failure(v4(1), at));
            assert!(!throttle.record_failure(v4(1), at));
        }
    }

    #[test]
    fn the_table_never_holds_more_than_max_sources_and_keeps_blocked_ones() {
        let throttle = AuthThrottle::new(options(2, 10));
        let t0 = Instant::now();
        throttle.record_failure(v4(0), t0);
        throttle.record_failure(v4(0), t0);
        for last in 1..=250 {
            throttle.record_failure(v4(last), t0 + Duration::from_secs(1));
        }
        assert!(throttle.sources() <= 10, "{}", throttle.sources());
        // Every one is within its window; the oldest went first, but the blocked one stayed
        // until it was the oldest; what matters is the bound.
        let later = t0 + Duration::from_mins(2);
        throttle.record_failure(v4(251), later);
        assert!(throttle.sources() <= 10);
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let a: Source = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1)).into();
        let b: Source = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9)).into();
        assert_eq!(a, b);
        let mapped: Source = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()).into();
        assert_eq!(mapped, v4(1));
    }

    #[test]
    fn zero_max_failures_never_blocks() {
        let throttle = AuthThrottle::new(options(0, 10));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!throttle.record_failure(v4(1), t0));
        }
        assert_eq!(throttle.check(v4(1), t0), Ok(()));
        assert_eq!(throttle.sources(), 0);
    }
}
