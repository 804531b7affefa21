//! Turning wire requests into engine inputs: every limit and default of the
//! API lives here, so handlers only call these and the broker.

use bytes::Bytes;
use sluice_proto::v1 as pb;

use crate::engine::{
    Backoff, NackAction, NewTask, Order, QueueConfig, QueueSpec, RateLimit, TaskId, Throttle,
};
use crate::error::{Error, Result};
use crate::limits::Limits;

pub const DEFAULT_CAPACITY: u64 = 10_000;
pub const MAX_CAPACITY: u64 = 100_000_000;
pub const DEFAULT_ACK_DEADLINE_MS: u64 = 30_000;
pub const MIN_LEASE_MS: u64 = 100;
pub const MAX_LEASE_MS: u64 = 86_400_000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const MAX_DELAY_MS: u64 = 30 * 86_400_000;
pub const MAX_GET_WAIT_MS: u64 = 20 * 60_000;
pub const MAX_GET_TASKS: u32 = 1000;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_ERROR_TEXT: usize = 4096;

/// Whether `name` is a valid queue name: `[A-Za-z0-9._-]{1,128}`.
pub fn is_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Queue names: `[A-Za-z0-9._-]{1,128}`.
pub fn queue_name(name: &str) -> Result<()> {
    named("queue", name)
}

/// A name of `what` (a queue, a schedule): `[A-Za-z0-9._-]{1,128}`.
fn named(what: &str, name: &str) -> Result<()> {
    if is_queue_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name {name:?}: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Schedule names: as queue names.
pub fn schedule_name(name: &str) -> Result<()> {
    named("schedule", name)
}

/// A schedule's definition: its name, queue and timing, and its task as
/// an enqueue of it would be checked — with the key and headers each tick
/// adds, and the job id at its longest once a tick fills it.
pub fn schedule_spec(s: Option<pb::ScheduleSpec>, limits: &Limits) -> Result<pb::ScheduleSpec> {
    let mut s = s.ok_or_else(|| Error::invalid("a schedule is required"))?;
    // Written one way, so that creating it again as it was written another
    // (spacing, "UTC" for none) is the same definition.
    s.cron = s.cron.split_whitespace().collect::<Vec<_>>().join(" ");
    if matches!(s.time_zone.as_str(), "UTC" | "Etc/UTC") {
        s.time_zone.clear();
    }
    schedule_name(&s.name)?;
    queue_name(&s.queue)?;
    if s.cron.len() > MAX_NAME_LEN * 2 || s.time_zone.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "schedule {:?}: a cron expression is at most {} bytes, a time zone {MAX_NAME_LEN}",
            s.name,
            MAX_NAME_LEN * 2
        )));
    }
    crate::schedules::when_of(&s)
        .map_err(|e| Error::invalid(format!("schedule {:?}: {e}", s.name)))?;
    if s.catch_up > crate::schedules::MAX_CATCH_UP {
        return Err(Error::invalid(format!(
            "schedule {:?}: catch_up {} is over the limit of {}",
            s.name,
            s.catch_up,
            crate::schedules::MAX_CATCH_UP
        )));
    }
    let task = s.task.clone().unwrap_or_default();
    // The longest tick text: 2026-12-01T03:00:00.500Z.
    let tick = "0000-00-00T00:00:00.000Z";
    let mut headers = task.headers.clone();
    headers.insert("x-sluice-schedule".into(), s.name.clone());
    headers.insert("x-sluice-tick".into(), tick.into());
    let sample = pb::NewTask {
        payload: task.payload.clone(),
        headers,
        priority: task.priority,
        delay_ms: 0,
        key: format!("{}@{tick}", s.name),
        job_id: task
            .job_id
            .replace("{tick}", tick)
            .replace("{schedule}", &s.name),
        group: task.group.clone(),
    };
    new_task(0, sample, TaskId(0), limits).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::invalid(format!(
            "schedule {:?}: its {}",
            s.name,
            m.trim_start_matches("task 0: ")
        )),
        e => e,
    })?;
    Ok(s)
}

/// EnqueueRequest.producer_id and sequence: a producer that names itself
/// (at most [`MAX_NAME_LEN`] bytes) has its batches told apart by their
/// sequence numbers; none, no deduplication.
pub fn producer(id: String, seq: u64) -> Result<Option<crate::engine::ProducerSeq>> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "producer_id is over {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(Some(crate::engine::ProducerSeq {
        producer: id.into(),
        seq,
    }))
}

/// A CreateQueue request with defaults filled in and limits checked.
pub fn queue_spec(name: &str, o: Option<&pb::QueueOptions>) -> Result<QueueSpec> {
    queue_name(name)?;
    let default = pb::QueueOptions::default();
    let o = o.unwrap_or(&default);
    let capacity = match o.capacity {
        0 => DEFAULT_CAPACITY,
        c if c > MAX_CAPACITY => {
            return Err(Error::invalid(format!(
                "capacity {c} is over the limit of {MAX_CAPACITY}"
            )));
        }
        c => c,
    };
    let order = match pb::QueueOrder::try_from(o.order) {
        Ok(pb::QueueOrder::Unspecified | pb::QueueOrder::Fifo) => Order::Fifo,
        Ok(pb::QueueOrder::Lifo) => Order::Lifo,
        Ok(pb::QueueOrder::Priority) => Order::Priority,
        Err(_) => return Err(Error::invalid(format!("unknown queue order {}", o.order))),
    };
    let ack_deadline_ms = match o.ack_deadline_ms {
        0 => DEFAULT_ACK_DEADLINE_MS,
        d => lease_ms(d, "ack_deadline_ms")?,
    };
    let retry = backoff(o.retry_initial_ms, o.retry_max_ms, o.retry_multiplier)?;
    let dead_letter = dead_letter(name, &o.dead_letter)?;
    Ok(QueueSpec {
        name: name.to_owned(),
        config: QueueConfig {
            capacity,
            order,
            ack_deadline_ms,
            max_attempts: o.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry,
            key_window_ms: match o.idempotency_window_ms {
                0 => DEFAULT_KEY_WINDOW_MS,
                w if w > MAX_DELAY_MS => {
                    return Err(Error::invalid(format!(
                        "idempotency_window_ms {w} is over the limit of {MAX_DELAY_MS}"
                    )));
                }
                w => w,
            },
            dead_letter,
            max_in_flight: in_flight_cap(o.max_in_flight, "max_in_flight")?,
            rate: match &o.rate_limit {
                None => None,
                Some(r) => rate_limit(r)?,
            },
            group_max_in_flight: in_flight_cap(
                o.max_in_flight_per_group,
                "max_in_flight_per_group",
            )?,
            paused: o.paused,
        },
        durable: o.durable,
    })
}

/// Largest in-flight cap: far above any credit a consumer may hold.
pub const MAX_IN_FLIGHT: u64 = 10_000_000;
/// Largest `RateLimit.tasks` and `burst`.
pub const MAX_RATE_TASKS: u64 = 1_000_000;
/// Longest `RateLimit.per_ms`: a day.
pub const MAX_RATE_PERIOD_MS: u64 = 86_400_000;
/// Longest nack throttle: a day.
pub const MAX_THROTTLE_MS: u64 = 86_400_000;
/// Longest group name.
pub const MAX_GROUP_LEN: usize = 128;

fn in_flight_cap(n: u64, field: &str) -> Result<u64> {
    if n > MAX_IN_FLIGHT {
        return Err(Error::invalid(format!(
            "{field} {n} is over the limit of {MAX_IN_FLIGHT}"
        )));
    }
    Ok(n)
}

/// A RateLimit with defaults filled in; `tasks` 0 = no limit.
fn rate_limit(r: &pb::RateLimit) -> Result<Option<RateLimit>> {
    if r.tasks == 0 {
        return Ok(None);
    }
    let per_ms = if r.per_ms == 0 { 1000 } else { r.per_ms };
    let burst = r.burst.max(1);
    if r.tasks > MAX_RATE_TASKS || burst > MAX_RATE_TASKS || per_ms > MAX_RATE_PERIOD_MS {
        return Err(Error::invalid(format!(
            "rate_limit {}/{per_ms}ms burst {burst} is out of range (tasks and burst 1 to \
             {MAX_RATE_TASKS}, per_ms 1 to {MAX_RATE_PERIOD_MS})",
            r.tasks
        )));
    }
    Ok(Some(RateLimit {
        tasks: r.tasks,
        per_ms,
        burst,
    }))
}

/// A dead letter queue name for queue `name`; "" = none.
fn dead_letter(name: &str, dl: &str) -> Result<Option<String>> {
    match dl {
        "" => Ok(None),
        dl => {
            queue_name(dl)?;
            if dl == name {
                return Err(Error::invalid(format!(
                    "queue {name:?} cannot be its own dead letter queue"
                )));
            }
            Ok(Some(dl.to_owned()))
        }
    }
}

/// An UpdateQueue request applied to a queue's options: the fields set
/// change, each checked as at creation.
pub fn updated_spec(current: &QueueSpec, u: &pb::UpdateQueueRequest) -> Result<QueueSpec> {
    let mut spec = current.clone();
    let c = &mut spec.config;
    if let Some(capacity) = u.capacity {
        c.capacity = match capacity {
            0 => DEFAULT_CAPACITY,
            n if n > MAX_CAPACITY => {
                return Err(Error::invalid(format!(
                    "capacity {n} is over the limit of {MAX_CAPACITY}"
                )));
            }
            n => n,
        };
    }
    if let Some(ms) = u.ack_deadline_ms {
        c.ack_deadline_ms = match ms {
            0 => DEFAULT_ACK_DEADLINE_MS,
            ms => lease_ms(ms, "ack_deadline_ms")?,
        };
    }
    if let Some(n) = u.max_attempts {
        c.max_attempts = n;
    }
    if let Some(dl) = &u.dead_letter {
        c.dead_letter = dead_letter(&current.name, dl)?;
    }
    if u.retry_initial_ms.is_some() || u.retry_max_ms.is_some() || u.retry_multiplier.is_some() {
        // Unset parts keep their value; a retry_max_ms below a new
        // retry_initial_ms is refused as at creation.
        let was = c.retry;
        let initial = u.retry_initial_ms.unwrap_or(was.initial_ms);
        let max = match (u.retry_max_ms, was == Backoff::NONE) {
            (Some(m), _) => m,
            (None, true) => 0,
            (None, false) => was.max_ms,
        };
        let multiplier = u.retry_multiplier.unwrap_or(match was == Backoff::NONE {
            true => 0.0,
            false => f64::from(was.multiplier_milli) / 1000.0,
        });
        c.retry = backoff(Some(initial), max, multiplier)?;
    }
    if let Some(n) = u.max_in_flight {
        c.max_in_flight = in_flight_cap(n, "max_in_flight")?;
    }
    if let Some(r) = &u.rate_limit {
        c.rate = rate_limit(r)?;
    }
    if let Some(n) = u.max_in_flight_per_group {
        c.group_max_in_flight = in_flight_cap(n, "max_in_flight_per_group")?;
    }
    if let Some(p) = u.paused {
        c.paused = p;
    }
    Ok(spec)
}

pub const DEFAULT_RETRY_INITIAL_MS: u64 = 1000;
pub const DEFAULT_KEY_WINDOW_MS: u64 = 300_000;
pub const MAX_KEY_LEN: usize = 256;
pub const DEFAULT_RETRY_MAX_MS: u64 = 300_000;

/// A retry backoff from its options, defaults filled in.
fn backoff(initial_ms: Option<u64>, max_ms: u64, multiplier: f64) -> Result<Backoff> {
    let initial_ms = initial_ms.unwrap_or(DEFAULT_RETRY_INITIAL_MS);
    if initial_ms > MAX_LEASE_MS {
        return Err(Error::invalid(format!(
            "retry_initial_ms {initial_ms} is over the limit of {MAX_LEASE_MS}"
        )));
    }
    let max_ms = match max_ms {
        0 => DEFAULT_RETRY_MAX_MS.max(initial_ms),
        m if m < initial_ms || m > MAX_DELAY_MS => {
            return Err(Error::invalid(format!(
                "retry_max_ms {m} must be between retry_initial_ms ({initial_ms}) and {MAX_DELAY_MS}"
            )));
        }
        m => m,
    };
    let multiplier = if multiplier == 0.0 { 2.0 } else { multiplier };
    if !(1.0..=100.0).contains(&multiplier) {
        return Err(Error::invalid(format!(
            "retry_multiplier {multiplier} must be between 1.0 and 100.0"
        )));
    }
    if initial_ms == 0 {
        return Ok(Backoff::NONE);
    }
    Ok(Backoff {
        initial_ms,
        max_ms,
        multiplier_milli: (multiplier * 1000.0).round() as u32,
    })
}

/// A lease length given by a client.
pub fn lease_ms(ms: u64, field: &str) -> Result<u64> {
    if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Error::invalid(format!(
            "{field} {ms} is out of range ({MIN_LEASE_MS} to {MAX_LEASE_MS} ms)"
        )))
    }
}

/// The tasks of an Enqueue, checked, with ids from `first` on.
pub fn new_tasks(tasks: Vec<pb::NewTask>, first: TaskId, limits: &Limits) -> Result<Vec<NewTask>> {
    tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| new_task(i, t, TaskId(first.0 + i as u64), limits))
        .collect()
}

/// Checks the batch's size before ids are reserved for it.
pub fn batch_len(n: usize, limits: &Limits) -> Result<u64> {
    if n == 0 {
        return Err(Error::invalid("an enqueue needs at least one task"));
    }
    if n > limits.max_batch {
        return Err(Error::invalid(format!(
            "batch of {n} items is over the limit of {} (--max-batch)",
            limits.max_batch
        )));
    }
    Ok(n as u64)
}

fn new_task(i: usize, t: pb::NewTask, id: TaskId, limits: &Limits) -> Result<NewTask> {
    if t.key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "task {i}: key is {} bytes, over the limit of {MAX_KEY_LEN}",
            t.key.len()
        )));
    }
    if t.group.len() > MAX_GROUP_LEN {
        return Err(Error::invalid(format!(
            "task {i}: group is {} bytes, over the limit of {MAX_GROUP_LEN}",
            t.group.len()
        )));
    }
    if t.job_id.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "task {i}: job_id is {} bytes, over the limit of {MAX_KEY_LEN}",
            t.job_id.len()
        )));
    }
    let mut size = t.payload.len();
    for (k, v) in &t.headers {
        if k.is_empty() || k.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "task {i}: header name {k:?} must be 1 to {MAX_NAME_LEN} bytes"
            )));
        }
        size += k.len() + v.len();
    }
    if size > limits.max_payload_bytes {
        return Err(Error::invalid(format!(
            "task {i}: payload and headers are {size} bytes, over the limit of {} bytes",
            limits.max_payload_bytes
        )));
    }
    if t.delay_ms > MAX_DELAY_MS {
        return Err(Error::invalid(format!(
            "task {i}: delay_ms {} is over the limit of {MAX_DELAY_MS}",
            t.delay_ms
        )));
    }
    Ok(NewTask {
        id,
        // A copy of exactly the payload: prost's zero-copy slice would keep
        // the whole request buffer (often twice the message) alive for as
        // long as any one task of the batch is queued.
        payload: Bytes::copy_from_slice(&t.payload),
        headers: t.headers,
        priority: t.priority,
        delay_ms: t.delay_ms,
        key: (!t.key.is_empty()).then(|| t.key.into()),
        job: (!t.job_id.is_empty()).then(|| t.job_id.into()),
        group: (!t.group.is_empty()).then(|| t.group.into()),
    })
}

/// A NackItem's throttle, if it asks for one.
pub fn throttle(n: &pb::NackItem) -> std::result::Result<Option<Throttle>, String> {
    if n.throttle_ms == 0 {
        return Ok(None);
    }
    if n.throttle_ms > MAX_THROTTLE_MS {
        return Err(format!(
            "throttle_ms {} is over the limit of {MAX_THROTTLE_MS}",
            n.throttle_ms
        ));
    }
    let group = match pb::ThrottleScope::try_from(n.throttle_scope) {
        Ok(pb::ThrottleScope::Unspecified | pb::ThrottleScope::Queue) => false,
        Ok(pb::ThrottleScope::Group) => true,
        Err(_) => return Err(format!("unknown throttle scope {}", n.throttle_scope)),
    };
    Ok(Some(Throttle {
        ms: n.throttle_ms,
        group,
    }))
}

/// What a NackItem asks for.
pub fn nack_action(n: &pb::NackItem) -> std::result::Result<NackAction, String> {
    match pb::NackAction::try_from(n.action) {
        Ok(pb::NackAction::Unspecified | pb::NackAction::Retry) => {
            if let Some(d) = n.delay_ms
                && d > MAX_DELAY_MS
            {
                return Err(format!("delay_ms {d} is over the limit of {MAX_DELAY_MS}"));
            }
            Ok(NackAction::Retry {
                delay_ms: n.delay_ms,
                priority: n.priority,
            })
        }
        Ok(pb::NackAction::Drop) => Ok(NackAction::Drop),
        Ok(pb::NackAction::DeadLetter) => Ok(NackAction::DeadLetter),
        Err(_) => Err(format!("unknown nack action {}", n.action)),
    }
}

/// Error text kept from a nack, cut at a character boundary.
pub fn error_text(s: &str) -> &str {
    if s.len() <= MAX_ERROR_TEXT {
        return s;
    }
    let mut end = MAX_ERROR_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(queue_name("orders.v1-high_prio").is_ok());
        assert!(queue_name("").is_err());
        assert!(queue_name("has space").is_err());
        assert!(queue_name("é").is_err());
        assert!(queue_name(&"a".repeat(129)).is_err());
        assert!(queue_name(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn defaults_and_limits() {
        let s = queue_spec("q", None).expect("valid");
        assert_eq!(s.config.capacity, DEFAULT_CAPACITY);
        assert_eq!(s.config.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(s.config.ack_deadline_ms, DEFAULT_ACK_DEADLINE_MS);
        let o = pb::QueueOptions {
            ack_deadline_ms: 5,
            ..Default::default()
        };
        assert!(queue_spec("q", Some(&o)).is_err());
        let o = pb::QueueOptions {
            dead_letter: "q".into(),
            ..Default::default()
        };
        assert!(queue_spec("q", Some(&o)).is_err());
    }

    #[test]
    fn error_text_cuts_on_char_boundary() {
        let s = "é".repeat(3000);
        let cut = error_text(&s);
        assert!(cut.len() <= MAX_ERROR_TEXT);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
