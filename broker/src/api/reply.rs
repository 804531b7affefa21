//! What the broker sends: domain values as the wire shows them
//! (deliveries, queue and consumer descriptions).

use sluice_proto::v1 as pb;

use crate::broker::QueueHandle;
use crate::engine::{ConsumerStats, Delivery, QueueStats, TaskId};

/// The ids a producer is answered for `n` tasks given ids from `first` on:
/// a task whose key was taken answers the holder's id instead (`duplicates`
/// holds (new id, holder) pairs).
pub fn answered_ids(first: TaskId, n: u64, duplicates: &[(TaskId, TaskId)]) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = TaskId(first.0 + i);
            let id = duplicates
                .iter()
                .find(|(new, _)| *new == id)
                .map_or(id, |(_, holder)| *holder);
            crate::ids::task_id_str(id)
        })
        .collect()
}

/// A delivery as the wire shows it; with a key, with its lease token (for
/// Get: settled by unary calls; a Consume stream's deliveries are settled
/// on the stream, which proves receipt without one).
pub fn delivery(queue: &str, d: &Delivery, key: Option<&crate::lease::LeaseKey>) -> pb::Delivery {
    pb::Delivery {
        task: Some(pb::Task {
            id: crate::ids::task_id_str(d.id),
            payload: d.body.payload.clone(),
            headers: d.body.headers.as_deref().cloned().unwrap_or_default(),
            priority: d.priority,
            enqueued_at_unix_ms: d.body.enqueued_at,
            key: d.key.as_deref().unwrap_or_default().to_owned(),
            job_id: d.job.as_deref().unwrap_or_default().to_owned(),
        }),
        attempt: d.attempt,
        lease_deadline_unix_ms: d.deadline,
        queue: queue.to_owned(),
        lease_token: key.map(|k| k.token(d.id, d.attempt)).unwrap_or_default(),
    }
}

pub fn queue_info(q: &QueueHandle) -> pb::QueueInfo {
    let (stats, consumers) = q.snapshot();
    let c = &q.spec.config;
    pb::QueueInfo {
        name: q.name().to_owned(),
        options: Some(pb::QueueOptions {
            capacity: c.capacity,
            order: match c.order {
                crate::engine::Order::Fifo => pb::QueueOrder::Fifo,
                crate::engine::Order::Lifo => pb::QueueOrder::Lifo,
                crate::engine::Order::Priority => pb::QueueOrder::Priority,
            } as i32,
            durable: q.spec.durable,
            ack_deadline_ms: c.ack_deadline_ms,
            max_attempts: Some(c.max_attempts),
            dead_letter: q.spec.dead_letter.clone().unwrap_or_default(),
            retry_initial_ms: Some(c.retry.initial_ms),
            retry_max_ms: c.retry.max_ms,
            retry_multiplier: f64::from(c.retry.multiplier_milli) / 1000.0,
            idempotency_window_ms: c.key_window_ms,
        }),
        stats: Some(queue_stats(&stats, c.capacity)),
        consumers: consumers.iter().map(consumer_info).collect(),
        created_at_unix_ms: q.created_at,
    }
}

fn queue_stats(s: &QueueStats, capacity: u64) -> pb::QueueStats {
    pb::QueueStats {
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        unfinished: s.unfinished(),
        waiting_producers: s.waiting_producers,
        waiting_tasks: s.waiting_tasks,
        consumers: s.consumers,
        credit: s.credit,
        enqueued_total: s.enqueued_total,
        delivered_total: s.delivered_total,
        acked_total: s.acked_total,
        nacked_total: s.nacked_total,
        expired_total: s.expired_total,
        dead_total: s.dead_total,
        purged_total: s.purged_total,
        capacity,
        payload_bytes: s.payload_bytes,
        retrying: s.retrying,
        publishers: s.publishers,
        reserved: s.reserved,
    }
}

fn consumer_info(c: &ConsumerStats) -> pb::ConsumerInfo {
    pb::ConsumerInfo {
        id: format!("c{}", c.id.0),
        name: c.name.clone(),
        credit: c.credit,
        in_flight: c.in_flight,
        delivered: c.delivered,
        acked: c.acked,
        nacked: c.nacked,
        mean_processing_ms: c.mean_processing_ms,
        oldest_lease_age_ms: c.oldest_lease_age_ms,
        connected_at_unix_ms: c.connected_at,
        peer: c.peer.clone(),
    }
}
