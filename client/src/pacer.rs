//! [`Pacer`]: opt-in proactive backpressure for producers.
//!
//! Every enqueue answer carries the queue's depth and capacity. A producer
//! that feeds them to a pacer slows itself down while the queue is above a
//! high-water mark and speeds back up below a low one — before the queue is
//! full and enqueues start to wait (the seed's "if queue size > 10 slow
//! down, < 3 speed up").

use std::time::Duration;

use crate::proto::EnqueueResponse;

/// A pause that doubles while the queue stays above `high` (a fraction of
/// capacity), halves while it is below `low`, and holds in between.
#[derive(Debug, Clone)]
pub struct Pacer {
    high: f64,
    low: f64,
    step: Duration,
    max: Duration,
    delay: Duration,
}

impl Default for Pacer {
    /// Slow down above 80% full, speed up below 30%; pauses from 10 ms up
    /// to 1 s.
    fn default() -> Self {
        Pacer::new(0.8, 0.3, Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl Pacer {
    /// `high` and `low` are fractions of capacity (`low < high`); the pause
    /// starts at `step` and never exceeds `max`.
    pub fn new(high: f64, low: f64, step: Duration, max: Duration) -> Self {
        Pacer {
            high,
            low: low.min(high),
            step,
            max: max.max(step),
            delay: Duration::ZERO,
        }
    }

    /// The pause to take before the next enqueue, given the depth and
    /// capacity the last answer reported.
    pub fn observe(&mut self, depth: u64, capacity: u64) -> Duration {
        let fill = if capacity == 0 {
            1.0
        } else {
            depth as f64 / capacity as f64
        };
        if fill >= self.high {
            self.delay = (self.delay * 2).clamp(self.step, self.max);
        } else if fill <= self.low {
            self.delay /= 2;
            if self.delay < self.step {
                self.delay = Duration::ZERO;
            }
        }
        self.delay
    }

    /// Observes an enqueue answer and sleeps for the pause it calls for.
    pub async fn pace(&mut self, answer: &EnqueueResponse) {
        let pause = self.observe(answer.depth, answer.capacity);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }

    /// The current pause.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_above_high_speeds_up_below_low_holds_between() {
        let mut p = Pacer::new(
            0.8,
            0.3,
            Duration::from_millis(10),
            Duration::from_millis(100),
        );
        assert_eq!(p.observe(10, 100), Duration::ZERO);
        assert_eq!(p.observe(85, 100), Duration::from_millis(10));
        assert_eq!(p.observe(90, 100), Duration::from_millis(20));
        for _ in 0..10 {
            p.observe(100, 100);
        }
        assert_eq!(p.delay(), Duration::from_millis(100), "capped");
        assert_eq!(
            p.observe(50, 100),
            Duration::from_millis(100),
            "holds between the marks"
        );
        assert_eq!(p.observe(20, 100), Duration::from_millis(50));
        p.observe(20, 100);
        p.observe(20, 100);
        assert_eq!(p.observe(20, 100), Duration::ZERO, "back to full speed");
    }
}
