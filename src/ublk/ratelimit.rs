//! Rate limiting for log lines that a guest can provoke at will (a failing request read in
//! a loop), so that the daemon's log, on tmpfs under /run, stays small.

use std::time::{Duration, Instant};

/// Lets at most `burst` events through per `interval` and counts the rest, so that the
/// caller can log them as one summary line once the interval is over.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    burst: u32,
    interval: Duration,
    /// When the current interval began (`None` before the first event).
    start: Option<Instant>,
    /// Events let through in the current interval.
    passed: u32,
    /// Events held back since the last summary.
    suppressed: u64,
}

/// What [`RateLimiter::check`] says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log the event. `suppressed` events were held back before it, in earlier
    /// intervals: log that count too (when not zero).
    Log {
        /// Events held back since the last summary.
        suppressed: u64,
    },
    /// Do not log the event; it is counted for the next summary.
    Suppress,
}

impl RateLimiter {
    /// A limiter letting `burst` events through per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        RateLimiter {
            burst,
            interval,
            start: None,
            passed: 0,
            suppressed: 0,
        }
    }

    /// Decides about one event happening at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let expired = match self.start {
            Some(start) => now.saturating_duration_since(start) >= self.interval,
            None => true,
        };
        if expired {
            self.start = Some(now);
            self.passed = 0;
        }
        if self.passed < self.burst {
            self.passed += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Events held back and not yet reported, which are reported as this returns them
    /// (for a last summary when the events' source goes away).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn lets_a_burst_through_per_interval_and_counts_the_rest() {
        let mut limiter = RateLimiter::new(3, 10 * SECOND);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                limiter.check(t0 + i * SECOND),
                Verdict::Log { suppressed: 0 }
            );
        }
        for i in 3..10 {
            assert_eq!(limiter.check(t0 + i * SECOND), Verdict::Suppress);
        }
        // A new interval: the first event carries the count held back before it.
        assert_eq!(
            limiter.check(t0 + 10 * SECOND),
            Verdict::Log { suppressed: 7 }
        );
        assert_eq!(
            limiter.check(t0 + 11 * SECOND),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.take_suppressed(), 0);
    }

    #[test]
    fn a_flood_is_logged_a_bounded_number_of_times() {
        let mut limiter = RateLimiter::new(10, 60 * SECOND);
        let t0 = Instant::now();
        // 100,000 events over 5 minutes: 10 per minute get through, the rest are counted.
        let mut logged = 0;
        let mut reported = 0;
        for i in 0..100_000u32 {
            if let Verdict::Log { suppressed } =
                limiter.check(t0 + i * 3 * Duration::from_millis(1))
            {
                logged += 1;
                reported += suppressed;
            }
        }
        assert_eq!(logged, 50);
        reported += limiter.take_suppressed();
        assert_eq!(logged + reported, 100_000);
    }

    #[test]
    fn the_remainder_is_taken_once() {
        let mut limiter = RateLimiter::new(1, 60 * SECOND);
        let t0 = Instant::now();
        assert_eq!(limiter.check(t0), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check(t0), Verdict::Suppress);
        assert_eq!(limiter.check(t0), Verdict::Suppress);
        assert_eq!(limiter.take_suppressed(), 2);
        assert_eq!(limiter.take_suppressed(), 0);
    }
}
