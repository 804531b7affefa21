//! `--json` output: proto messages as `serde_json` values, built by hand
//! so the generated types need no serde derives. Field names are the
//! .proto's; enums are their short lower-case names ("fifo").

use serde_json::{Map, Value, json};
use sluice_client::proto::{
    BrokerLimits, ConsumerInfo, Delivery, FsyncPolicy, GetBrokerInfoResponse, GroupInfo, Hold,
    HoldReason, QueueInfo, QueueOptions, QueueOrder, QueueStats, RateLimit, ScheduleInfo,
    ScheduleSpec,
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

/// A hold reason's short name: "paused", "throttled", "in_flight_cap",
/// "rate_limited", "groups_held", "no_credit"; "unknown" for a reason
/// from a newer broker.
pub fn hold_reason_name(reason: i32) -> &'static str {
    match HoldReason::try_from(reason) {
        Ok(HoldReason::Paused) => "paused",
        Ok(HoldReason::Throttled) => "throttled",
        Ok(HoldReason::InFlightCap) => "in_flight_cap",
        Ok(HoldReason::RateLimited) => "rate_limited",
        Ok(HoldReason::GroupsHeld) => "groups_held",
        Ok(HoldReason::NoCredit) => "no_credit",
        Ok(HoldReason::Unspecified) | Err(_) => "unknown",
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
        "max_schedules": l.max_schedules,
    })
}

/// Everything known about a queue. `groups` lists its groups with ready
/// tasks in GetQueue's answer (`queue show`, `stats QUEUE`), and is empty
/// in ListQueues' (`stats.groups` counts them there).
pub fn queue(q: &QueueInfo) -> Value {
    let stats_value = q.stats.as_ref().map_or(Value::Null, stats);
    json!({
        "name": q.name,
        "created_at_unix_ms": q.created_at_unix_ms,
        "options": q.options.as_ref().map_or(Value::Null, options),
        "stats": stats_value,
        "consumers": q.consumers.iter().map(consumer).collect::<Vec<_>>(),
        "groups": q.groups.iter().map(group).collect::<Vec<_>>(),
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
        "max_in_flight": o.max_in_flight,
        // null: no limit.
        "rate_limit": o.rate_limit.as_ref().filter(|r| r.tasks > 0).map_or(Value::Null, rate_limit),
        "max_in_flight_per_group": o.max_in_flight_per_group,
        "paused": o.paused,
    })
}

fn rate_limit(r: &RateLimit) -> Value {
    json!({ "tasks": r.tasks, "per_ms": r.per_ms, "burst": r.burst })
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
        "holds": s.holds.iter().map(hold).collect::<Vec<_>>(),
        "groups": s.groups,
        "groups_held": s.groups_held,
        "throttled_until_unix_ms": s.throttled_until_unix_ms,
    })
}

/// Why a queue holds its ready tasks back.
fn hold(h: &Hold) -> Value {
    json!({ "reason": hold_reason_name(h.reason), "until_unix_ms": h.until_unix_ms })
}

/// One group of a queue's tasks; `name` "" is the default group.
fn group(g: &GroupInfo) -> Value {
    json!({
        "name": g.name,
        "ready": g.ready,
        "leased": g.leased,
        "delayed": g.delayed,
        "throttled_until_unix_ms": g.throttled_until_unix_ms,
        "at_cap": g.at_cap,
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

/// A schedule and how its ticks went (ScheduleInfo). The task's payload
/// is shown as UTF-8, as a delivery's is.
pub fn schedule(s: &ScheduleInfo) -> Value {
    json!({
        "spec": s.spec.as_ref().map_or(Value::Null, schedule_spec),
        "paused": s.paused,
        "created_at_unix_ms": s.created_at_unix_ms,
        "next_tick_unix_ms": s.next_tick_unix_ms,
        "last_tick_unix_ms": s.last_tick_unix_ms,
        "last_run_unix_ms": s.last_run_unix_ms,
        "last_task_id": s.last_task_id,
        "last_error": s.last_error,
        "fired": s.fired,
        "missed": s.missed,
        "failed": s.failed,
    })
}

fn schedule_spec(s: &ScheduleSpec) -> Value {
    let task = s.task.clone().unwrap_or_default();
    let headers: Map<String, Value> = task
        .headers
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "name": s.name,
        "queue": s.queue,
        "cron": s.cron,
        "every_ms": s.every_ms,
        "time_zone": s.time_zone,
        "catch_up": s.catch_up,
        "task": {
            "payload": String::from_utf8_lossy(&task.payload),
            "headers": headers,
            "priority": task.priority,
            "group": task.group,
            "job_id": task.job_id,
        },
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
        "key": task.key,
        "job_id": task.job_id,
        "group": task.group,
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
                group: "tenant-7".into(),
                ..Task::default()
            }),
            attempt: 2,
            queue: "q".into(),
            lease_token: "0123456789abcdef".into(),
            ..Delivery::default()
        };
        let v = delivery(&d);
        assert_eq!(v["id"], "t1");
        assert_eq!(v["group"], "tenant-7");
        assert_eq!(v["key"], "");
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

    #[test]
    fn flow_options_holds_and_groups() {
        let o = options(&QueueOptions {
            max_in_flight: 50,
            rate_limit: Some(RateLimit {
                tasks: 10,
                per_ms: 1000,
                burst: 20,
            }),
            max_in_flight_per_group: 5,
            paused: true,
            ..QueueOptions::default()
        });
        assert_eq!(o["max_in_flight"], 50);
        assert_eq!(
            o["rate_limit"],
            json!({"tasks": 10, "per_ms": 1000, "burst": 20})
        );
        assert_eq!(o["max_in_flight_per_group"], 5);
        assert_eq!(o["paused"], true);
        // No limit is null.
        assert_eq!(options(&QueueOptions::default())["rate_limit"], Value::Null);

        let q = queue(&QueueInfo {
            stats: Some(QueueStats {
                groups: 2,
                groups_held: 1,
                throttled_until_unix_ms: 7,
                holds: vec![
                    Hold {
                        reason: HoldReason::Throttled as i32,
                        until_unix_ms: 7,
                    },
                    Hold {
                        reason: HoldReason::InFlightCap as i32,
                        until_unix_ms: 0,
                    },
                ],
                ..QueueStats::default()
            }),
            groups: vec![GroupInfo {
                name: "acme".into(),
                ready: 3,
                at_cap: true,
                ..GroupInfo::default()
            }],
            ..QueueInfo::default()
        });
        assert_eq!(
            q["stats"]["holds"],
            json!([
                {"reason": "throttled", "until_unix_ms": 7},
                {"reason": "in_flight_cap", "until_unix_ms": 0},
            ])
        );
        assert_eq!(q["stats"]["groups"], 2);
        assert_eq!(q["stats"]["groups_held"], 1);
        assert_eq!(q["stats"]["throttled_until_unix_ms"], 7);
        assert_eq!(q["groups"][0]["name"], "acme");
        assert_eq!(q["groups"][0]["ready"], 3);
        assert_eq!(q["groups"][0]["at_cap"], true);
        assert_eq!(q["groups"][0]["throttled_until_unix_ms"], 0);
    }

    #[test]
    fn schedule_shape() {
        use sluice_client::proto::ScheduledTask;
        let v = schedule(&ScheduleInfo {
            spec: Some(ScheduleSpec {
                name: "nightly".into(),
                queue: "reports".into(),
                cron: "0 3 * * *".into(),
                time_zone: "Europe/Paris".into(),
                catch_up: 3,
                task: Some(ScheduledTask {
                    payload: bytes::Bytes::from_static(b"go"),
                    headers: [("k".to_owned(), "v".to_owned())].into(),
                    priority: -1,
                    group: "acme".into(),
                    job_id: "report-{tick}".into(),
                }),
                ..ScheduleSpec::default()
            }),
            paused: true,
            next_tick_unix_ms: 5,
            last_task_id: "t1".into(),
            fired: 2,
            ..ScheduleInfo::default()
        });
        assert_eq!(
            v["spec"],
            json!({
                "name": "nightly",
                "queue": "reports",
                "cron": "0 3 * * *",
                "every_ms": 0,
                "time_zone": "Europe/Paris",
                "catch_up": 3,
                "task": {
                    "payload": "go",
                    "headers": {"k": "v"},
                    "priority": -1,
                    "group": "acme",
                    "job_id": "report-{tick}",
                },
            })
        );
        assert_eq!(v["paused"], true);
        assert_eq!(v["next_tick_unix_ms"], 5);
        assert_eq!(v["last_task_id"], "t1");
        assert_eq!(v["last_error"], "");
        assert_eq!(v["fired"], 2);
        assert_eq!(v["missed"], 0);
    }

    #[test]
    fn hold_reason_names() {
        assert_eq!(hold_reason_name(HoldReason::Paused as i32), "paused");
        assert_eq!(
            hold_reason_name(HoldReason::RateLimited as i32),
            "rate_limited"
        );
        assert_eq!(
            hold_reason_name(HoldReason::GroupsHeld as i32),
            "groups_held"
        );
        assert_eq!(hold_reason_name(HoldReason::NoCredit as i32), "no_credit");
        assert_eq!(hold_reason_name(0), "unknown");
        assert_eq!(hold_reason_name(99), "unknown");
    }
}
