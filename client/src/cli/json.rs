//! `--json` output: proto messages as `serde_json` values, built by hand
//! so the generated types need no serde derives. Field names are the
//! .proto's; enums are their short lower-case names ("fifo").

use serde_json::{Map, Value, json};
use sluice_client::proto::{
    BrokerLimits, ConsumerInfo, Delivery, FsyncPolicy, GetBrokerInfoResponse, QueueInfo,
    QueueOptions, QueueOrder, QueueStats,
};

/// A queue's short order name: "fifo", "lifo" or "priority".
pub fn order_name(order: i32) -> &'static str {
    match QueueOrder::try_from(order) {
        Ok(QueueOrder::Lifo) => "lifo",
        Ok(QueueOrder::Priority) => "priority",
        // Unspecified means FIFO; an unknown value from a newer broker is
        // shown as FIFO rather than failing the whole listing.
        Ok(QueueOrder::Fifo | QueueOrder::Unspecified) | Err(_) => "fifo",
    }
}

/// The fsync policy's short name ("always", "interval", "never"), or
/// None for a broker without a log (in memory).
pub fn fsync_name(fsync: i32) -> Option<&'static str> {
    match FsyncPolicy::try_from(fsync) {
        Ok(FsyncPolicy::Always) => Some("always"),
        Ok(FsyncPolicy::Interval) => Some("interval"),
        Ok(FsyncPolicy::Never) => Some("never"),
        // Unspecified: in memory. An unknown value from a newer broker is
        // shown as unknown rather than failing the command.
        Ok(FsyncPolicy::Unspecified) => None,
        Err(_) => Some("unknown"),
    }
}

/// `sluice info`: the broker's version, limits, set-up and features.
pub fn broker_info(i: &GetBrokerInfoResponse) -> Value {
    json!({
        "version": i.version,
        "build": i.build,
        "limits": i.limits.as_ref().map_or(Value::Null, limits),
        "in_memory": i.in_memory,
        "fsync": fsync_name(i.fsync),
        "fsync_interval_ms": i.fsync_interval_ms,
        "auth": i.auth,
        "tls": i.tls,
        "tls_client_certificates": i.tls_client_certificates,
        "features": i.features,
    })
}

fn limits(l: &BrokerLimits) -> Value {
    json!({
        "max_payload_bytes": l.max_payload_bytes,
        "max_memory_bytes": l.max_memory_bytes,
        "max_queues": l.max_queues,
        "max_consumers_per_queue": l.max_consumers_per_queue,
        "max_consumers": l.max_consumers,
        "max_credit": l.max_credit,
        "max_batch": l.max_batch,
        "max_request_bytes": l.max_request_bytes,
        "max_response_bytes": l.max_response_bytes,
        "consume_frame_payload_bytes": l.consume_frame_payload_bytes,
        "max_streams_per_connection": l.max_streams_per_connection,
        "max_disk_bytes": l.max_disk_bytes,
    })
}

/// Everything known about a queue.
pub fn queue(q: &QueueInfo) -> Value {
    let stats_value = q.stats.as_ref().map_or(Value::Null, stats);
    json!({
        "name": q.name,
        "created_at_unix_ms": q.created_at_unix_ms,
        "options": q.options.as_ref().map_or(Value::Null, options),
        "stats": stats_value,
        "consumers": q.consumers.iter().map(consumer).collect::<Vec<_>>(),
    })
}

/// A queue's options.
pub fn options(o: &QueueOptions) -> Value {
    json!({
        "capacity": o.capacity,
        "order": order_name(o.order),
        "durable": o.durable,
        "ack_deadline_ms": o.ack_deadline_ms,
        "max_attempts": o.max_attempts,
        "dead_letter": o.dead_letter,
        "retry_initial_ms": o.retry_initial_ms,
        "retry_max_ms": o.retry_max_ms,
        "retry_multiplier": o.retry_multiplier,
        "idempotency_window_ms": o.idempotency_window_ms,
    })
}

/// A queue's counters.
pub fn stats(s: &QueueStats) -> Value {
    json!({
        "ready": s.ready,
        "delayed": s.delayed,
        "leased": s.leased,
        "unfinished": s.unfinished,
        "capacity": s.capacity,
        "payload_bytes": s.payload_bytes,
        "retrying": s.retrying,
        "publishers": s.publishers,
        "reserved": s.reserved,
        "waiting_producers": s.waiting_producers,
        "waiting_tasks": s.waiting_tasks,
        "consumers": s.consumers,
        "credit": s.credit,
        "enqueued_total": s.enqueued_total,
        "delivered_total": s.delivered_total,
        "acked_total": s.acked_total,
        "nacked_total": s.nacked_total,
        "expired_total": s.expired_total,
        "dead_total": s.dead_total,
        "purged_total": s.purged_total,
    })
}

/// One consumer of a queue.
pub fn consumer(c: &ConsumerInfo) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "credit": c.credit,
        "in_flight": c.in_flight,
        "delivered": c.delivered,
        "acked": c.acked,
        "nacked": c.nacked,
        "mean_processing_ms": c.mean_processing_ms,
        "oldest_lease_age_ms": c.oldest_lease_age_ms,
        "connected_at_unix_ms": c.connected_at_unix_ms,
        "peer": c.peer,
    })
}

/// A delivered task. The payload is shown as UTF-8 (invalid bytes become
/// U+FFFD): JSON has no bytes type, and `get` without `--json` gives the
/// exact bytes.
pub fn delivery(d: &Delivery) -> Value {
    let task = d.task.clone().unwrap_or_default();
    let headers: Map<String, Value> = task
        .headers
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "id": task.id,
        "attempt": d.attempt,
        "payload": String::from_utf8_lossy(&task.payload),
        "headers": headers,
        "priority": task.priority,
        "queue": d.queue,
        "enqueued_at_unix_ms": task.enqueued_at_unix_ms,
        "lease_deadline_unix_ms": d.lease_deadline_unix_ms,
        // With --no-ack: what a later Ack/Nack/ExtendLease must quote.
        "lease_token": d.lease_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::proto::Task;

    #[test]
    fn order_names() {
        assert_eq!(order_name(QueueOrder::Unspecified as i32), "fifo");
        assert_eq!(order_name(QueueOrder::Lifo as i32), "lifo");
        assert_eq!(order_name(QueueOrder::Priority as i32), "priority");
        assert_eq!(order_name(99), "fifo");
    }

    #[test]
    fn delivery_shape() {
        let d = Delivery {
            task: Some(Task {
                id: "t1".into(),
                payload: bytes::Bytes::from_static(b"hi\xff"),
                headers: [("k".to_owned(), "v".to_owned())].into(),
                priority: -2,
                ..Task::default()
            }),
            attempt: 2,
            queue: "q".into(),
            lease_token: "0123456789abcdef".into(),
            ..Delivery::default()
        };
        let v = delivery(&d);
        assert_eq!(v["id"], "t1");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["lease_token"], "0123456789abcdef");
        assert_eq!(v["payload"], "hi\u{fffd}");
        assert_eq!(v["headers"]["k"], "v");
        assert_eq!(v["priority"], -2);
        assert_eq!(v["queue"], "q");
    }

    #[test]
    fn unset_max_attempts_is_null() {
        let v = options(&QueueOptions::default());
        assert_eq!(v["max_attempts"], Value::Null);
        let v = options(&QueueOptions {
            max_attempts: Some(0),
            ..QueueOptions::default()
        });
        assert_eq!(v["max_attempts"], 0);
    }
}
