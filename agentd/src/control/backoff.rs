//! How long to wait before connecting again.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, so that the hosts of a fleet whose control plane restarts do not all come back in
/// the same instant; the step doubles from 500 ms to 10 s.
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    pub(super) fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    /// The delay before the next attempt, for `fraction` in [0, 1); doubles the step.
    pub(super) fn next_delay(&mut self, fraction: f64) -> Duration {
        let delay = self.step.mul_f64(0.5 + fraction.clamp(0.0, 1.0) / 2.0);
        self.step = (self.step * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: Self::FIRST }
    }
}

/// A fraction in [0, 1) that differs between calls and hosts (std's randomly keyed hasher).
pub(super) fn random_fraction() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        >> 11;
    #[expect(clippy::cast_precision_loss, reason = "53 bits fit an f64 exactly")]
    let fraction = bits as f64 / (1u64 << 53) as f64;
    fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(250));
        let second = backoff.next_delay(0.999_999);
        assert!(
            second > Duration::from_millis(999) && second < Duration::from_secs(1),
            "{second:?}"
        );
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(1.0)).collect();
        assert_eq!(delays.last(), Some(&Duration::from_secs(10)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_fractions_spread_over_the_unit_interval() {
        let fractions: Vec<f64> = (0..200).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(fractions.iter().any(|f| *f < 0.25) && fractions.iter().any(|f| *f > 0.75));
    }
}
