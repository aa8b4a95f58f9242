//! Reconnect delays: capped exponential backoff with "equal jitter" (half
//! the delay fixed, half random), so a fleet of guests does not reconnect in
//! lockstep after a broker restart. Pure: the caller supplies the randomness.

use std::time::Duration;

/// First delay after a failure.
pub const BASE: Duration = Duration::from_millis(100);
/// Largest delay.
pub const CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// After a session was established: start again from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Delay before the next attempt; `random` is any random number.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        let full = exp.min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = full / 2;
        let span = half.as_millis() as u64 + 1;
        half + Duration::from_millis(random % span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut low = Backoff::default();
        let lows: Vec<u128> = (0..9).map(|_| low.next_delay(0).as_millis()).collect();
        insta::assert_snapshot!(format!("{lows:?}"), @"[50, 100, 200, 400, 800, 1600, 2500, 2500, 2500]");
        for random in [1, 12_345, u64::MAX, 999_999_999] {
            let mut b = Backoff::default();
            for n in 0..12u32 {
                let full = (100u128 << n).min(5_000);
                let d = b
                    .next_delay(random.wrapping_mul(u64::from(n) + 1))
                    .as_millis();
                assert!(
                    full / 2 <= d && d <= full,
                    "attempt {n}: {d} outside [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(7);
        }
        b.reset();
        assert!(b.next_delay(7) <= BASE);
    }
}
