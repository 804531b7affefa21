//! The rate limit's token bucket, kept as GCRA does: one number, the
//! theoretical arrival time of the next delivery, in microseconds (so that
//! 3 per second spaces deliveries 333,334 µs apart, not 333 ms).
//!
//! A delivery at `now` conforms when `tat <= now + tolerance`, where the
//! tolerance lets `burst` deliveries through at once; each delivery pushes
//! `tat` one interval on. The interval is rounded up, so the queue never
//! goes faster than asked: in any window of W ms at most
//! `burst + W * tasks / per_ms` deliveries.

use crate::{Millis, RateLimit};

/// Microseconds between two deliveries at the limit's pace.
fn interval_us(r: &RateLimit) -> u64 {
    r.per_ms
        .saturating_mul(1000)
        .div_ceil(r.tasks.max(1))
        .max(1)
}

/// How far ahead of `now` the bucket may run: `burst - 1` intervals.
fn tolerance_us(r: &RateLimit) -> u64 {
    interval_us(r).saturating_mul(r.burst.max(1) - 1)
}

/// The bucket of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time of the next delivery, µs since the epoch;
    /// 0 = full.
    pub tat_us: u64,
}

impl Bucket {
    /// Whether a delivery at `now` is within the limit.
    pub fn conforms(&self, r: &RateLimit, now: Millis) -> bool {
        self.tat_us <= now.saturating_mul(1000).saturating_add(tolerance_us(r))
    }

    /// A delivery at `now` took a token.
    pub fn take(&mut self, r: &RateLimit, now: Millis) {
        self.tat_us = self.tat_us.max(now.saturating_mul(1000)) + interval_us(r);
    }

    /// When the next delivery will conform (ms, rounded up).
    pub fn next_at(&self, r: &RateLimit) -> Millis {
        self.tat_us.saturating_sub(tolerance_us(r)).div_ceil(1000)
    }

    /// The limit changed at `now`: a bucket that ran ahead under the old
    /// limit lets the next delivery out at once under the new one, but
    /// gets no burst it did not have.
    pub fn retune(&mut self, now: Millis) {
        self.tat_us = self.tat_us.min(now.saturating_mul(1000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(tasks: u64, per_ms: u64, burst: u64) -> RateLimit {
        RateLimit {
            tasks,
            per_ms,
            burst,
        }
    }

    /// Deliveries a greedy consumer gets from 0 to `end` ms, polling each ms.
    fn greedy(r: &RateLimit, end: Millis) -> Vec<Millis> {
        let mut b = Bucket::default();
        let mut at = Vec::new();
        for now in 1_000_000..=1_000_000 + end {
            while b.conforms(r, now) {
                b.take(r, now);
                at.push(now - 1_000_000);
            }
        }
        at
    }

    #[test]
    fn a_burst_then_the_pace() {
        let r = limit(10, 1000, 5);
        let at = greedy(&r, 1000);
        // 5 at once, then one every 100 ms.
        assert_eq!(&at[..5], &[0, 0, 0, 0, 0]);
        assert_eq!(&at[5..8], &[100, 200, 300]);
        assert!(at.len() <= 5 + 10);
    }

    #[test]
    fn a_third_of_a_second_is_not_rounded_into_a_faster_pace() {
        let r = limit(3, 1000, 1);
        let at = greedy(&r, 10_000);
        // 3/s for 10 s: 31 at most (the first at 0 and 3 per second after).
        assert!(at.len() <= 31, "{}", at.len());
        assert!(at.len() >= 30, "{}", at.len());
    }

    #[test]
    fn the_next_token_time_is_when_it_conforms() {
        let r = limit(2, 1000, 1);
        let mut b = Bucket::default();
        b.take(&r, 5000);
        assert!(!b.conforms(&r, 5499));
        assert_eq!(b.next_at(&r), 5500);
        assert!(b.conforms(&r, 5500));
    }

    #[test]
    fn a_faster_limit_takes_effect_at_once() {
        let slow = limit(1, 3_600_000, 1);
        let mut b = Bucket::default();
        b.take(&slow, 0);
        assert!(!b.conforms(&slow, 1000));
        let fast = limit(10, 1000, 1);
        b.retune(1000);
        assert!(b.conforms(&fast, 1000));
    }
}
