//! The drain meter: how fast a queue's tasks are taken, for the retry
//! hint a full queue gives its producers.

use std::collections::VecDeque;

use crate::Millis;

/// Seconds of deliveries the drain rate is measured over.
const WINDOW_S: u64 = 10;

/// Deliveries per second over the last [`WINDOW_S`] seconds. Holds at
/// most `WINDOW_S + 1` entries, whatever the rate: one per second seen.
#[derive(Debug, Default)]
pub(super) struct DrainMeter {
    /// (second, deliveries in it), oldest first.
    seconds: VecDeque<(u64, u64)>,
}

impl DrainMeter {
    /// A task was taken at `now`.
    pub(super) fn note(&mut self, now: Millis) {
        let second = now / 1000;
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => {
                self.seconds.push_back((second, 1));
                while self
                    .seconds
                    .front()
                    .is_some_and(|(s, _)| *s + WINDOW_S < second)
                {
                    self.seconds.pop_front();
                }
            }
        }
    }

    /// The seconds kept, oldest first (see `queue::image`).
    pub(super) fn image(&self) -> Vec<(u64, u64)> {
        self.seconds.iter().copied().collect()
    }

    /// The meter [`DrainMeter::image`] was taken of.
    pub(super) fn from_image(seconds: Vec<(u64, u64)>) -> Self {
        DrainMeter {
            seconds: seconds.into_iter().collect(),
        }
    }

    /// A digest of the seconds kept (see `QueueState::digest`).
    pub(super) fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        for (s, n) in &self.seconds {
            h.write_u64(*s);
            h.write_u64(*n);
        }
        h.finish()
    }

    /// Tasks taken per second, over the last few seconds.
    pub(super) fn rate(&self, now: Millis) -> f64 {
        let second = now / 1000;
        let mut recent = 0;
        let mut oldest = second;
        for (s, n) in &self.seconds {
            if *s + WINDOW_S >= second {
                recent += n;
                oldest = oldest.min(*s);
            }
        }
        // Over the seconds actually seen, so a queue that started draining
        // a moment ago is not taken for a slow one.
        let span = (second - oldest + 1).clamp(1, WINDOW_S);
        recent as f64 / span as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_seconds_seen_and_forgets_old_ones() {
        let mut m = DrainMeter::default();
        assert_eq!(m.rate(0), 0.0);
        for _ in 0..10 {
            m.note(5_000);
        }
        // Draining for one second so far: 10/s, not 1/s.
        assert_eq!(m.rate(5_500), 10.0);
        for _ in 0..10 {
            m.note(6_000);
        }
        assert_eq!(m.rate(6_100), 10.0);
        // Long after, one delivery: the old seconds no longer count.
        m.note(60_000);
        assert_eq!(m.rate(60_000), 1.0);
        assert!(m.seconds.len() <= WINDOW_S as usize + 1);
    }
}
