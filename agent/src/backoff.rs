//! Jittered exponential backoff with a cap, for reconnects: a fleet that lost its controller
//! must not come back as one synchronized wave.

use std::time::Duration;

/// A number drawn uniformly from `low..=high` (the kernel's randomness: a jitter needs
/// no generator of its own, and the agent's binary budget has no room for one).
pub fn jitter(low: u64, high: u64) -> u64 {
    let span = high.saturating_sub(low).saturating_add(1);
    // Without randomness (it cannot fail on Linux once booted) the lowest delay is taken.
    let r = getrandom::u64().unwrap_or(0);
    match span {
        0 => low.saturating_add(r),
        span => low.saturating_add(r % span),
    }
}

/// Doubling delays from `base` up to `cap`, each drawn uniformly from [d/2, d].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(jitter(ms / 2, ms))
    }

    /// Back to the first delay after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let expected_max = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for max in expected_max {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(max), "{d:?} > {max}s");
            assert!(d >= Duration::from_millis(max * 500), "{d:?} < {max}/2 s");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
