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

/// One sample of one queue: depths (a capacity fits in 32 bits) and what
/// happened since the sample before, kept small (32 bytes): every queue
/// has an hour of them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    ready: u32,
    delayed: u32,
    leased: u32,
    enqueued: u32,
    delivered: u32,
    acked: u32,
}

/// A queue's totals at the last sample, to count the next one's deltas.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    enqueued: u64,
    delivered: u64,
    acked: u64,
}

fn small(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// What a ring costs, for the memory budget.
const RING_BYTES: u64 = (SAMPLES * std::mem::size_of::<Sample>()) as u64 + 256;

struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
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
        self.sample_at(broker, now_ms());
    }

    fn sample_at(&self, broker: &Broker, at: u64) {
        let queues = broker.queues();
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.retain(|name, _| queues.iter().any(|q| q.name() == name));
        for q in &queues {
            let (s, _) = q.snapshot();
            let totals = Totals {
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
                        last: None,
                        _held: held,
                    },
                );
            }
            if let Some(r) = rings.get_mut(q.name()) {
                // The first sample has nothing before it: no rate yet.
                let was = r.last.unwrap_or(totals);
                r.last = Some(totals);
                if r.samples.len() == SAMPLES {
                    r.samples.pop_front();
                }
                r.samples.push_back(Sample {
                    at,
                    ready: small(s.ready),
                    delayed: small(s.delayed),
                    leased: small(s.leased),
                    enqueued: small(totals.enqueued.saturating_sub(was.enqueued)),
                    delivered: small(totals.delivered.saturating_sub(was.delivered)),
                    acked: small(totals.acked.saturating_sub(was.acked)),
                });
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
        let mut prev: Option<u64> = None;
        for s in &r.samples {
            let per_s = |n: u32| match prev {
                Some(p) if s.at > p => f64::from(n) * 1000.0 / (s.at - p) as f64,
                _ => 0.0,
            };
            h.t_unix_ms.push(s.at);
            h.ready.push(u64::from(s.ready));
            h.delayed.push(u64::from(s.delayed));
            h.leased.push(u64::from(s.leased));
            h.enqueue_rate.push(per_s(s.enqueued));
            h.deliver_rate.push(per_s(s.delivered));
            h.ack_rate.push(per_s(s.acked));
            prev = Some(s.at);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Command, NewTask, TaskId};

    #[tokio::test]
    async fn samples_keep_depths_and_rates_and_forget_deleted_queues() {
        let broker = Broker::new(CancellationToken::new());
        let spec = crate::api::validate::queue_spec("q", None).expect("spec");
        let (q, _) = broker.create_queue(spec).await.expect("created");
        let h = Histories::default();
        h.sample_at(&broker, 1_000_000);
        let tasks = (0..10)
            .map(|i| NewTask {
                id: TaskId(100 + i),
                payload: bytes::Bytes::from_static(b"x"),
                headers: Default::default(),
                priority: 0,
                delay_ms: 0,
                key: None,
                job: None,
                group: None,
            })
            .collect();
        broker.apply(&q, |core, now, fx| {
            core.run(now, Command::Store { tasks }, fx)
        });
        h.sample_at(&broker, 1_005_000);
        let hist = h.of("q");
        assert_eq!(hist.ready, [0, 10]);
        assert_eq!(hist.enqueue_rate[0], 0.0, "no rate before two samples");
        assert_eq!(hist.enqueue_rate[1], 2.0, "10 tasks in 5 s");
        assert_eq!(h.recent("q", 1).0, [10]);
        let held = broker.held_bytes();
        broker.delete_queue("q", false).await.expect("deleted");
        h.sample_at(&broker, 1_010_000);
        assert!(h.of("q").t_unix_ms.is_empty());
        assert!(broker.held_bytes() < held, "the ring's bytes went back");
    }
}
