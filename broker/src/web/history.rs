//! Each queue's last hour, sampled every few seconds for the dashboard's
//! charts: a ring per queue, in the memory budget (a queue whose ring the
//! budget refuses has no history; its page says so by showing none).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::model::History;
use crate::broker::{Broker, MemoryReservation, now_ms};

/// Seconds between samples.
pub const INTERVAL_S: u64 = 5;
/// Samples kept: an hour.
pub const SAMPLES: usize = 720;

/// One sample of one queue.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    ready: u64,
    delayed: u64,
    leased: u64,
    enqueued: u64,
    delivered: u64,
    acked: u64,
}

/// What a ring costs, for the memory budget.
const RING_BYTES: u64 = (SAMPLES * std::mem::size_of::<Sample>()) as u64 + 256;

struct Ring {
    samples: VecDeque<Sample>,
    _held: MemoryReservation,
}

/// Every queue's ring.
#[derive(Clone, Default)]
pub struct Histories {
    rings: Arc<Mutex<HashMap<String, Ring>>>,
}

impl Histories {
    /// Samples every queue now: a ring for each new queue (if the budget
    /// allows), none kept for queues that are gone.
    pub fn sample(&self, broker: &Broker) {
        let at = now_ms();
        let queues = broker.queues();
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.retain(|name, _| queues.iter().any(|q| q.name() == name));
        for q in &queues {
            let (s, _) = q.snapshot();
            let sample = Sample {
                at,
                ready: s.ready,
                delayed: s.delayed,
                leased: s.leased,
                enqueued: s.enqueued_total,
                delivered: s.delivered_total,
                acked: s.acked_total,
            };
            if !rings.contains_key(q.name()) {
                let Ok(held) = broker.reserve_memory(RING_BYTES) else {
                    continue;
                };
                rings.insert(
                    q.name().to_owned(),
                    Ring {
                        samples: VecDeque::with_capacity(SAMPLES),
                        _held: held,
                    },
                );
            }
            if let Some(r) = rings.get_mut(q.name()) {
                if r.samples.len() == SAMPLES {
                    r.samples.pop_front();
                }
                r.samples.push_back(sample);
            }
        }
    }

    /// Samples every [`INTERVAL_S`] until `shutdown`.
    pub async fn run(self, broker: Broker, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(INTERVAL_S));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sample(&broker),
            }
        }
    }

    /// A queue's history; empty when it has none yet.
    pub fn of(&self, queue: &str) -> History {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let mut h = History {
            interval_s: INTERVAL_S,
            ..History::default()
        };
        let Some(r) = rings.get(queue) else {
            return h;
        };
        let mut prev: Option<&Sample> = None;
        for s in &r.samples {
            let rate = |now: u64, then: Option<u64>| match (prev, then) {
                (Some(p), Some(then)) if s.at > p.at => {
                    now.saturating_sub(then) as f64 * 1000.0 / (s.at - p.at) as f64
                }
                _ => 0.0,
            };
            h.t_unix_ms.push(s.at);
            h.ready.push(s.ready);
            h.delayed.push(s.delayed);
            h.leased.push(s.leased);
            h.enqueue_rate
                .push(rate(s.enqueued, prev.map(|p| p.enqueued)));
            h.deliver_rate
                .push(rate(s.delivered, prev.map(|p| p.delivered)));
            h.ack_rate.push(rate(s.acked, prev.map(|p| p.acked)));
            prev = Some(s);
        }
        h
    }

    /// Ready + delayed at the last `n` samples, oldest first, and the
    /// last enqueue and ack rates.
    pub fn recent(&self, queue: &str, n: usize) -> (Vec<u64>, f64, f64) {
        let h = self.of(queue);
        let from = h.ready.len().saturating_sub(n);
        let depth = h.ready[from..]
            .iter()
            .zip(&h.delayed[from..])
            .map(|(r, d)| r + d)
            .collect();
        (
            depth,
            h.enqueue_rate.last().copied().unwrap_or(0.0),
            h.ack_rate.last().copied().unwrap_or(0.0),
        )
    }
}
