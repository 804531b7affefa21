//! What the broker sends: domain values as the wire shows them
//! (deliveries, queue and consumer descriptions).

use sluice_proto::v1 as pb;

use crate::broker::QueueHandle;
use crate::engine::{ConsumerStats, Delivery, Hold, QueueStats, TaskId};

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
            group: d.group.as_deref().unwrap_or_default().to_owned(),
        }),
        attempt: d.attempt,
        lease_deadline_unix_ms: d.deadline,
        queue: queue.to_owned(),
        lease_token: key.map(|k| k.token(d.id, d.attempt)).unwrap_or_default(),
    }
}

/// Most groups a GetQueue answer lists.
pub const MAX_GROUPS_SHOWN: usize = 100;

/// A queue as GetQueue, CreateQueue and UpdateQueue answer it (with up to
/// `groups` of its groups; ListQueues asks for none).
pub fn queue_info(q: &QueueHandle, groups: usize) -> pb::QueueInfo {
    let view = q.view(groups);
    let c = &view.config;
    let stats = &view.stats;
    pb::QueueInfo {
        name: q.name().to_owned(),
        options: Some(pb::QueueOptions {
            capacity: c.capacity,
            order: match c.order {
                crate::engine::Order::Fifo => pb::QueueOrder::Fifo,
                crate::engine::Order::Lifo => pb::QueueOrder::Lifo,
                crate::engine::Order::Priority => pb::QueueOrder::Priority,
            } as i32,
            durable: q.durable(),
            ack_deadline_ms: c.ack_deadline_ms,
            max_attempts: Some(c.max_attempts),
            dead_letter: c.dead_letter.clone().unwrap_or_default(),
            retry_initial_ms: Some(c.retry.initial_ms),
            retry_max_ms: c.retry.max_ms,
            retry_multiplier: f64::from(c.retry.multiplier_milli) / 1000.0,
            idempotency_window_ms: c.key_window_ms,
            max_in_flight: c.max_in_flight,
            rate_limit: c.rate.map(|r| pb::RateLimit {
                tasks: r.tasks,
                per_ms: r.per_ms,
                burst: r.burst,
            }),
            max_in_flight_per_group: c.group_max_in_flight,
            paused: c.paused,
        }),
        stats: Some(pb::QueueStats {
            holds: view.holds.iter().map(hold).collect(),
            ..queue_stats(stats, c.capacity)
        }),
        consumers: view.consumers.iter().map(consumer_info).collect(),
        created_at_unix_ms: q.created_at,
        groups: view
            .groups
            .iter()
            .map(|g| pb::GroupInfo {
                name: g.name.clone(),
                ready: g.ready,
                leased: g.leased,
                delayed: g.delayed,
                throttled_until_unix_ms: g.throttled_until,
                at_cap: g.at_cap,
            })
            .collect(),
    }
}

fn hold(h: &Hold) -> pb::Hold {
    let (reason, until) = match *h {
        Hold::Paused => (pb::HoldReason::Paused, 0),
        Hold::Throttled { until } => (pb::HoldReason::Throttled, until),
        Hold::InFlightCap => (pb::HoldReason::InFlightCap, 0),
        Hold::RateLimited { until } => (pb::HoldReason::RateLimited, until),
        Hold::GroupsHeld => (pb::HoldReason::GroupsHeld, 0),
        Hold::NoCredit => (pb::HoldReason::NoCredit, 0),
    };
    pb::Hold {
        reason: reason as i32,
        until_unix_ms: until,
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
        holds: Vec::new(),
        groups: s.groups,
        groups_held: s.groups_held,
        throttled_until_unix_ms: s.throttled_until,
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
