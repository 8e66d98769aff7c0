//! How many refused credential signings are audited: every refusal is answered, but a host
//! gets at most [`PER_MINUTE`] audit events of refusals a minute, so that a host that asks
//! again and again (or for made-up agents) cannot flood the audit log. The next event audited
//! for that host says how many were left out before it.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use crate::clock::UnixTime;

/// Refusals audited per host and minute.
pub(super) const PER_MINUTE: u32 = 10;

/// Each host's current minute.
#[derive(Debug, Default)]
pub(super) struct RefusalBudget {
    hosts: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    started: UnixTime,
    audited: u32,
    left_out: u64,
}

impl RefusalBudget {
    /// Whether to audit a refusal for `host` at `now`: `Some(n)` to audit it, with `n` refusals
    /// of that host left out since the last one audited; `None` to leave it out (and count it).
    pub(super) fn admit(&self, host: &str, now: UnixTime) -> Option<u64> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let window = hosts.entry(host.to_owned()).or_insert(Window {
            started: now,
            audited: 0,
            left_out: 0,
        });
        if now - window.started >= 60 {
            window.started = now;
            window.audited = 0;
        }
        if window.audited >= PER_MINUTE {
            window.left_out += 1;
            return None;
        }
        window.audited += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_gets_ten_refusals_audited_a_minute_and_the_next_says_how_many_were_left_out() {
        let budget = RefusalBudget::default();
        for _ in 0..PER_MINUTE {
            assert_eq!(budget.admit("h1", 1_000), Some(0));
        }
        assert_eq!(budget.admit("h1", 1_030), None);
        assert_eq!(budget.admit("h1", 1_059), None);
        assert_eq!(budget.admit("h2", 1_059), Some(0), "each host has its own");
        assert_eq!(budget.admit("h1", 1_060), Some(2), "a new minute");
        assert_eq!(budget.admit("h1", 1_061), Some(0));
    }
}
