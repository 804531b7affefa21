//! What durable queues write to the log, and how a restart reads it back.
//!
//! Records are protobuf messages (declared here with prost's derive, not
//! in `proto/`: they are the broker's private format, not the API), one
//! per log frame:
//! - `Define`: a durable queue and its options (written at creation, and
//!   again when old segments are compacted away);
//! - `Delete`: the queue is gone, with its tasks;
//! - `Changes`: what one engine call changed in one queue's tasks, in order
//!   (see [`Change`]);
//! - `Batch`: changes to several queues that must be replayed together or
//!   not at all (a dead-lettered task leaving its queue and arriving in
//!   the dead letter queue);
//! - `Job`: what happened to a job;
//! - `Schedule`: a schedule defined, deleted, paused or resumed, or a tick
//!   of it handled.
//!
//! Replaying them in log order rebuilds every durable queue: its options
//! and its unfinished tasks with their attempt counts, priorities and
//! delays. Leases are not remembered: a restart ends every stream, so a
//! task that was leased comes back ready, its attempts kept.
//!
//! Fields are only ever added, never renumbered: an old log must stay
//! readable by a newer broker.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use prost::Message;

use crate::engine::{
    Backoff, Change, Millis, Order, QueueConfig, QueueSpec, RateLimit, Restored, TaskBody, TaskId,
};

/// One log record.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    #[prost(oneof = "record::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<record::Kind>,
}

pub mod record {
    /// What a record says.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Define(super::QueueDef),
        #[prost(string, tag = "2")]
        Delete(String),
        #[prost(message, tag = "3")]
        Changes(super::QueueChanges),
        #[prost(message, tag = "4")]
        Job(super::JobRecord),
        #[prost(message, tag = "5")]
        Batch(super::Batch),
        #[prost(message, boxed, tag = "6")]
        Schedule(Box<super::ScheduleRecord>),
    }
}

/// What happened to a schedule. The same message is a cluster's proposal
/// of it (`replicated::ProposalMsg::schedule`).
#[derive(Clone, PartialEq, Message)]
pub struct ScheduleRecord {
    #[prost(oneof = "schedule_record::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<schedule_record::Kind>,
}

pub mod schedule_record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Created, or (compaction, a snapshot) its whole state.
        #[prost(message, boxed, tag = "1")]
        Define(Box<super::ScheduleState>),
        /// Deleted (its name).
        #[prost(string, tag = "2")]
        Delete(String),
        #[prost(message, tag = "3")]
        Paused(super::SchedulePaused),
        #[prost(message, tag = "4")]
        Tick(super::ScheduleTick),
    }
}

/// A schedule's whole state: the API's view of it (its definition, paused,
/// last tick, counts) and where its ticks start.
#[derive(Clone, PartialEq, Message)]
pub struct ScheduleState {
    #[prost(message, optional, tag = "1")]
    pub info: Option<sluice_proto::v1::ScheduleInfo>,
    /// Ticks at or before this are not its business: its creation, or its
    /// last resume (ticks while paused are neither fired nor missed).
    #[prost(uint64, tag = "2")]
    pub since: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SchedulePaused {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bool, tag = "2")]
    pub paused: bool,
    /// When (the leader's clock): a resume starts its ticks after it.
    #[prost(uint64, tag = "3")]
    pub at: u64,
}

/// One run of a schedule: the ticks up to `tick` handled — fired, failed
/// or missed — with the counts to add.
#[derive(Clone, PartialEq, Message)]
pub struct ScheduleTick {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The schedule's creation time: a run of a schedule deleted and made
    /// again under its name meanwhile is not the new one's.
    #[prost(uint64, tag = "2")]
    pub created_at: u64,
    /// The latest tick handled.
    #[prost(uint64, tag = "3")]
    pub tick: u64,
    #[prost(uint64, tag = "4")]
    pub run_at: u64,
    /// The task id of the last tick fired; empty: none fired.
    #[prost(string, tag = "5")]
    pub task_id: String,
    /// Why the last tick failed; empty: it did not.
    #[prost(string, tag = "6")]
    pub error: String,
    #[prost(uint64, tag = "7")]
    pub fired: u64,
    #[prost(uint64, tag = "8")]
    pub missed: u64,
    #[prost(uint64, tag = "9")]
    pub failed: u64,
}

/// A schedule record.
pub fn schedule(r: ScheduleRecord) -> Bytes {
    encode(record::Kind::Schedule(Box::new(r)))
}

/// Applies a schedule record to schedules' states by name: what a restart
/// replays, and what the registry itself runs.
pub fn apply_schedule(
    states: &mut BTreeMap<String, ScheduleState>,
    r: ScheduleRecord,
) -> Result<(), String> {
    use schedule_record::Kind;
    match r.kind {
        Some(Kind::Define(st)) => {
            let name = st
                .info
                .as_ref()
                .and_then(|i| i.spec.as_ref())
                .map(|s| s.name.clone());
            let name = name.ok_or("schedule definition without a name")?;
            states.insert(name, *st);
        }
        Some(Kind::Delete(name)) => {
            states.remove(&name);
        }
        Some(Kind::Paused(p)) => {
            if let Some(st) = states.get_mut(&p.name)
                && let Some(info) = &mut st.info
            {
                if info.paused && !p.paused {
                    st.since = st.since.max(p.at);
                }
                info.paused = p.paused;
            }
        }
        Some(Kind::Tick(t)) => {
            if let Some(st) = states.get_mut(&t.name)
                && let Some(info) = &mut st.info
                && info.created_at_unix_ms == t.created_at
            {
                // A fired tick not after the last one known was learnt
                // from its stored task (`Schedules::stored_tick`), and
                // counted then.
                if t.tick > info.last_tick_unix_ms {
                    info.fired += t.fired;
                }
                info.last_tick_unix_ms = info.last_tick_unix_ms.max(t.tick);
                info.last_run_unix_ms = t.run_at;
                if !t.task_id.is_empty() {
                    info.last_task_id = t.task_id;
                }
                info.last_error = t.error;
                info.missed += t.missed;
                info.failed += t.failed;
            }
        }
        None => return Err("empty schedule record".into()),
    }
    Ok(())
}

/// Changes to several queues, in order, in one record (so in one frame:
/// all replayed, or none).
#[derive(Clone, PartialEq, Message)]
pub struct Batch {
    #[prost(message, repeated, tag = "1")]
    pub queues: Vec<QueueChanges>,
}

/// What happened to a job: tasks stored under it, its seal, outcomes; or,
/// written by compaction, its whole state (`snapshot`).
#[derive(Clone, PartialEq, Message)]
pub struct JobRecord {
    #[prost(string, tag = "1")]
    pub job: String,
    /// Tasks stored under the job by this event.
    #[prost(uint64, tag = "2")]
    pub stored: u64,
    /// The sealed total, when `sealed`.
    #[prost(uint64, tag = "3")]
    pub total: u64,
    #[prost(bool, tag = "4")]
    pub sealed: bool,
    #[prost(message, repeated, tag = "5")]
    pub outcomes: Vec<sluice_proto::v1::TaskOutcome>,
    /// Snapshot only: the job's whole state replaces what came before.
    #[prost(bool, tag = "6")]
    pub snapshot: bool,
    #[prost(uint64, tag = "7")]
    pub started_at: u64,
    #[prost(uint64, tag = "8")]
    pub succeeded: u64,
    #[prost(uint64, tag = "9")]
    pub failed: u64,
    #[prost(uint64, tag = "10")]
    pub last: u64,
    /// Queues its tasks were stored in (by this event, or, in a snapshot,
    /// ever): who may watch or seal it depends on them.
    #[prost(string, repeated, tag = "11")]
    pub queues: Vec<String>,
}

/// A job record.
pub fn job(r: JobRecord) -> Bytes {
    encode(record::Kind::Job(r))
}

/// A durable queue's definition.
#[derive(Clone, PartialEq, Message)]
pub struct QueueDef {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub capacity: u64,
    /// 0 FIFO, 1 LIFO, 2 PRIORITY.
    #[prost(uint32, tag = "3")]
    pub order: u32,
    #[prost(uint64, tag = "4")]
    pub ack_deadline_ms: u64,
    #[prost(uint32, tag = "5")]
    pub max_attempts: u32,
    /// Empty: none.
    #[prost(string, tag = "6")]
    pub dead_letter: String,
    #[prost(uint64, tag = "7")]
    pub created_at: u64,
    #[prost(uint64, tag = "8")]
    pub retry_initial_ms: u64,
    #[prost(uint64, tag = "9")]
    pub retry_max_ms: u64,
    #[prost(uint32, tag = "10")]
    pub retry_multiplier_milli: u32,
    #[prost(uint64, tag = "11")]
    pub key_window_ms: u64,
    /// Flow control (QueueOptions 11 to 14); 0 / false: none. Written
    /// again, with the other options, when they change (UpdateQueue): the
    /// last definition of a queue in the log is the one in force.
    #[prost(uint64, tag = "12")]
    pub max_in_flight: u64,
    /// 0: no rate limit.
    #[prost(uint64, tag = "13")]
    pub rate_tasks: u64,
    #[prost(uint64, tag = "14")]
    pub rate_per_ms: u64,
    #[prost(uint64, tag = "15")]
    pub rate_burst: u64,
    #[prost(uint64, tag = "16")]
    pub group_max_in_flight: u64,
    #[prost(bool, tag = "17")]
    pub paused: bool,
}

/// Changes to one queue's tasks, in the order they happened.
#[derive(Clone, PartialEq, Message)]
pub struct QueueChanges {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(message, repeated, tag = "2")]
    pub changes: Vec<ChangeMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChangeMsg {
    #[prost(oneof = "change_msg::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<change_msg::Kind>,
}

pub mod change_msg {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Stored(super::StoredTask),
        #[prost(message, tag = "2")]
        Attempt(super::AttemptMsg),
        #[prost(message, tag = "3")]
        Requeued(super::RequeuedMsg),
        /// Task id.
        #[prost(uint64, tag = "4")]
        Removed(u64),
        #[prost(message, tag = "5")]
        Throttled(super::ThrottleMsg),
    }
}

/// A nack's throttle on a queue (no group) or on one of its groups ("":
/// the default group), until `until` (ms since the epoch).
#[derive(Clone, PartialEq, Message)]
pub struct ThrottleMsg {
    #[prost(string, optional, tag = "1")]
    pub group: Option<String>,
    #[prost(uint64, tag = "2")]
    pub until: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StoredTask {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(int32, tag = "4")]
    pub priority: i32,
    /// Not deliverable before (ms since the epoch); 0 = at once.
    #[prost(uint64, tag = "5")]
    pub due: u64,
    #[prost(uint64, tag = "6")]
    pub enqueued_at: u64,
    /// Deliveries so far (a compaction rewrites live tasks with theirs).
    #[prost(uint32, tag = "7")]
    pub attempt: u32,
    /// Idempotency key; empty: none.
    #[prost(string, tag = "8")]
    pub key: String,
    /// Job id; empty: none.
    #[prost(string, tag = "9")]
    pub job: String,
    /// Fairness group; empty: the default group.
    #[prost(string, tag = "10")]
    pub group: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttemptMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RequeuedMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int32, tag = "2")]
    pub priority: i32,
    #[prost(uint64, tag = "3")]
    pub due: u64,
}

fn order_code(o: Order) -> u32 {
    match o {
        Order::Fifo => 0,
        Order::Lifo => 1,
        Order::Priority => 2,
    }
}

/// A durable queue's definition as the log keeps it.
pub fn queue_def(spec: &QueueSpec, created_at: Millis) -> QueueDef {
    let c = &spec.config;
    QueueDef {
        name: spec.name.clone(),
        capacity: c.capacity,
        order: order_code(c.order),
        ack_deadline_ms: c.ack_deadline_ms,
        max_attempts: c.max_attempts,
        dead_letter: c.dead_letter.clone().unwrap_or_default(),
        created_at,
        retry_initial_ms: c.retry.initial_ms,
        retry_max_ms: c.retry.max_ms,
        retry_multiplier_milli: c.retry.multiplier_milli,
        key_window_ms: c.key_window_ms,
        max_in_flight: c.max_in_flight,
        rate_tasks: c.rate.map_or(0, |r| r.tasks),
        rate_per_ms: c.rate.map_or(0, |r| r.per_ms),
        rate_burst: c.rate.map_or(0, |r| r.burst),
        group_max_in_flight: c.group_max_in_flight,
        paused: c.paused,
    }
}

/// The queue a definition describes.
pub fn queue_spec(d: &QueueDef) -> Result<QueueSpec, String> {
    let order = match d.order {
        0 => Order::Fifo,
        1 => Order::Lifo,
        2 => Order::Priority,
        o => return Err(format!("queue {:?}: unknown order {o}", d.name)),
    };
    Ok(QueueSpec {
        name: d.name.clone(),
        config: QueueConfig {
            capacity: d.capacity,
            order,
            ack_deadline_ms: d.ack_deadline_ms,
            max_attempts: d.max_attempts,
            retry: Backoff {
                initial_ms: d.retry_initial_ms,
                max_ms: d.retry_max_ms,
                multiplier_milli: d.retry_multiplier_milli.max(1000),
            },
            key_window_ms: d.key_window_ms,
            dead_letter: (!d.dead_letter.is_empty()).then(|| d.dead_letter.clone()),
            max_in_flight: d.max_in_flight,
            rate: (d.rate_tasks > 0).then_some(RateLimit {
                tasks: d.rate_tasks,
                per_ms: d.rate_per_ms.max(1),
                burst: d.rate_burst.max(1),
            }),
            group_max_in_flight: d.group_max_in_flight,
            paused: d.paused,
        },
        durable: true,
    })
}

/// The record defining a queue.
pub fn define(spec: &QueueSpec, created_at: Millis) -> Bytes {
    encode(record::Kind::Define(queue_def(spec, created_at)))
}

/// The record deleting a queue.
pub fn delete(name: &str) -> Bytes {
    encode(record::Kind::Delete(name.to_owned()))
}

/// The record of one engine call's changes to a queue.
pub fn changes(queue: &str, changes: &[Change]) -> Bytes {
    super::encode::changes_record(&[(queue, changes)])
}

/// One record of changes to one or more queues; several are a `Batch`,
/// replayed all or none.
pub fn batch(parts: &[(&str, &[Change])]) -> Bytes {
    super::encode::changes_record(parts)
}

/// [`batch`] through prost's derived messages: what the hand-written
/// encoder must agree with.
#[cfg(test)]
pub(super) fn prost_batch(parts: &[(&str, &[Change])]) -> Bytes {
    match parts {
        [(queue, c)] => encode(record::Kind::Changes(queue_changes(queue, c))),
        _ => encode(record::Kind::Batch(Batch {
            queues: parts.iter().map(|(q, c)| queue_changes(q, c)).collect(),
        })),
    }
}

#[cfg(test)]
fn queue_changes(queue: &str, changes: &[Change]) -> QueueChanges {
    QueueChanges {
        queue: queue.to_owned(),
        changes: changes.iter().map(change_msg).collect(),
    }
}

/// Largest snapshot record: well under the log's record limit.
const SNAPSHOT_RECORD_BYTES: usize = 8 << 20;

/// Writes a durable queue's definition and live tasks into a reserved
/// place in the log, in records of at most [`SNAPSHOT_RECORD_BYTES`], one
/// at a time so that the encoded copy never holds more than one record.
/// Returns the bytes written.
pub fn write_snapshot(
    slot: &crate::storage::Slot,
    define: Bytes,
    queue: &str,
    tasks: Vec<Change>,
) -> Result<u64, crate::storage::StorageError> {
    let mut bytes = define.len() as u64;
    slot.send(vec![define])?;
    let mut start = 0;
    let mut chunk_bytes = 0;
    for (i, c) in tasks.iter().enumerate() {
        if let Change::Stored { body, .. } = c {
            chunk_bytes += body.payload.len() + 64;
        }
        if chunk_bytes >= SNAPSHOT_RECORD_BYTES || i + 1 == tasks.len() {
            let record = changes(queue, &tasks[start..=i]);
            bytes += record.len() as u64;
            slot.send(vec![record])?;
            start = i + 1;
            chunk_bytes = 0;
        }
    }
    Ok(bytes)
}

/// Writes every schedule's whole state into a reserved place in the log, a
/// record per schedule. Returns the bytes written.
pub fn write_schedules(
    slot: &crate::storage::Slot,
    schedules: Vec<ScheduleState>,
) -> Result<u64, crate::storage::StorageError> {
    let mut bytes = 0;
    for st in schedules {
        let record = schedule(ScheduleRecord {
            kind: Some(schedule_record::Kind::Define(Box::new(st))),
        });
        bytes += record.len() as u64;
        slot.send(vec![record])?;
    }
    Ok(bytes)
}

/// Writes every job's whole state into a reserved place in the log, a
/// record per job. Returns the bytes written.
pub fn write_jobs(
    slot: &crate::storage::Slot,
    jobs: Vec<JobRecord>,
) -> Result<u64, crate::storage::StorageError> {
    let mut bytes = 0;
    for r in jobs {
        let record = job(r);
        bytes += record.len() as u64;
        slot.send(vec![record])?;
    }
    Ok(bytes)
}

#[cfg(test)]
fn change_msg(c: &Change) -> ChangeMsg {
    use change_msg::Kind;
    let kind = match c {
        Change::Stored {
            id,
            body,
            priority,
            due,
            attempt,
            key,
            job,
            group,
        } => Kind::Stored(StoredTask {
            id: id.0,
            payload: body.payload.clone(),
            headers: body.headers.as_deref().cloned().unwrap_or_default(),
            priority: *priority,
            due: *due,
            enqueued_at: body.enqueued_at,
            attempt: *attempt,
            key: key.as_deref().unwrap_or_default().to_owned(),
            job: job.as_deref().unwrap_or_default().to_owned(),
            group: group.as_deref().unwrap_or_default().to_owned(),
        }),
        Change::Attempt { id, attempt } => Kind::Attempt(AttemptMsg {
            id: id.0,
            attempt: *attempt,
        }),
        Change::Requeued { id, priority, due } => Kind::Requeued(RequeuedMsg {
            id: id.0,
            priority: *priority,
            due: *due,
        }),
        Change::Removed { id } => Kind::Removed(id.0),
        Change::Throttled { group, until } => Kind::Throttled(ThrottleMsg {
            group: group.as_deref().map(str::to_owned),
            until: *until,
        }),
    };
    ChangeMsg { kind: Some(kind) }
}

fn encode(kind: record::Kind) -> Bytes {
    Bytes::from(Record { kind: Some(kind) }.encode_to_vec())
}

/// What the log holds of one job: its last whole state (written by a
/// compaction), and the events after it.
#[derive(Debug, Default, Clone)]
pub struct JobHistory {
    pub snapshot: Option<JobRecord>,
    pub events: Vec<JobRecord>,
}

/// A durable queue as the log describes it.
#[derive(Debug)]
pub struct RecoveredQueue {
    pub spec: QueueSpec,
    pub created_at: Millis,
    pub tasks: BTreeMap<TaskId, Restored>,
    /// Nack throttles: (group, until), the queue's when the group is None.
    pub throttles: Vec<(Option<Box<str>>, Millis)>,
}

/// The state the log describes, built record by record.
#[derive(Debug, Default)]
pub struct Recovery {
    pub queues: BTreeMap<String, RecoveredQueue>,
    /// Each job's records since its last snapshot, in log order.
    pub jobs: BTreeMap<String, JobHistory>,
    /// The highest task id seen: new ids start above it.
    pub max_task_id: u64,
    pub records: u64,
    /// Every schedule, by name.
    pub schedules: BTreeMap<String, ScheduleState>,
    /// The latest tick a task was stored for, by the task's key
    /// `NAME@TICK`, per (schedule, queue). A run's own record may be
    /// missing (a crash right after the task was stored); the task says
    /// the tick fired all the same (`Schedules::stored_tick` decides
    /// whether it is the schedule's).
    pub schedule_ticks: BTreeMap<(String, String), Millis>,
}

/// The wall clock, ms since the Unix epoch, for replay's one judgement of
/// time (keys of ticks in the future).
fn replay_clock_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// A tick's time as its task's key and headers say it: RFC 3339 in UTC,
/// with the milliseconds only when there are some.
pub fn tick_text(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A tick's task's idempotency key.
pub fn tick_key(name: &str, tick: Millis) -> String {
    format!("{name}@{}", tick_text(tick))
}

/// The schedule and tick a key names, if it is exactly a tick's key
/// `NAME@TICK` as the broker writes it (a task stored with that key by
/// anyone would have taken the tick's place all the same).
pub fn scheduled_tick(key: &str) -> Option<(&str, Millis)> {
    let (name, text) = key.rsplit_once('@')?;
    let tick = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let tick = u64::try_from(tick.timestamp_millis()).ok()?;
    (tick_text(tick) == text).then_some((name, tick))
}

impl Recovery {
    /// Applies one record. An error means a record that passed its checksum
    /// but does not decode: written by something else, or a bug.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<(), String> {
        let record = Record::decode(bytes).map_err(|e| e.to_string())?;
        self.records += 1;
        match record.kind {
            Some(record::Kind::Define(d)) => {
                let spec = queue_spec(&d)?;
                // A definition written again (compaction) keeps the tasks.
                let q = self.queues.entry(d.name).or_insert_with(|| RecoveredQueue {
                    spec: spec.clone(),
                    created_at: d.created_at,
                    tasks: BTreeMap::new(),
                    throttles: Vec::new(),
                });
                q.spec = spec;
            }
            Some(record::Kind::Delete(name)) => {
                self.queues.remove(&name);
            }
            Some(record::Kind::Job(r)) => {
                // Grouped per job, not counted: what the records mean is
                // the job registry's business (`Jobs::restore`).
                let history = self.jobs.entry(r.job.clone()).or_default();
                if r.snapshot {
                    history.snapshot = Some(r);
                    history.events.clear();
                } else {
                    history.events.push(r);
                }
            }
            Some(record::Kind::Schedule(r)) => apply_schedule(&mut self.schedules, *r)?,
            Some(record::Kind::Changes(c)) => self.apply_changes(c),
            Some(record::Kind::Batch(b)) => {
                for c in b.queues {
                    self.apply_changes(c);
                }
            }
            None => return Err("empty record".into()),
        }
        Ok(())
    }
}

impl Recovery {
    fn apply_changes(&mut self, c: QueueChanges) {
        // Changes of a queue deleted later in the log were already dropped
        // with it; changes of one deleted earlier cannot exist (a deleted
        // queue takes no calls).
        let Some(q) = self.queues.get_mut(&c.queue) else {
            return;
        };
        for m in c.changes {
            // A key ahead of the clock is no tick that fired (see
            // `Schedules::stored_tick`), and must not hide one that did.
            if let Some(change_msg::Kind::Stored(t)) = &m.kind
                && let Some((name, tick)) = scheduled_tick(&t.key)
                && tick <= replay_clock_ms().saturating_add(60_000)
            {
                let seen = self
                    .schedule_ticks
                    .entry((name.to_owned(), c.queue.clone()))
                    .or_insert(tick);
                *seen = (*seen).max(tick);
            }
            apply_change(q, m, &mut self.max_task_id);
        }
    }
}

fn apply_change(q: &mut RecoveredQueue, m: ChangeMsg, max_id: &mut u64) {
    use change_msg::Kind;
    match m.kind {
        Some(Kind::Stored(t)) => {
            *max_id = (*max_id).max(t.id);
            q.tasks.insert(
                TaskId(t.id),
                Restored {
                    id: TaskId(t.id),
                    body: TaskBody {
                        payload: t.payload,
                        headers: (!t.headers.is_empty()).then(|| Box::new(t.headers)),
                        enqueued_at: t.enqueued_at,
                    },
                    priority: t.priority,
                    attempt: t.attempt,
                    due: t.due,
                    key: (!t.key.is_empty()).then(|| t.key.into()),
                    job: (!t.job.is_empty()).then(|| t.job.into()),
                    group: (!t.group.is_empty()).then(|| t.group.into()),
                },
            );
        }
        Some(Kind::Attempt(a)) => {
            if let Some(t) = q.tasks.get_mut(&TaskId(a.id)) {
                t.attempt = a.attempt;
            }
        }
        Some(Kind::Requeued(r)) => {
            if let Some(t) = q.tasks.get_mut(&TaskId(r.id)) {
                t.priority = r.priority;
                t.due = r.due;
            }
        }
        Some(Kind::Removed(id)) => {
            q.tasks.remove(&TaskId(id));
        }
        Some(Kind::Throttled(t)) => {
            // Only the latest per queue or group matters: they only grow.
            let group = t.group.map(Box::from);
            q.throttles.retain(|(g, _)| *g != group);
            q.throttles.push((group, t.until));
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            config: QueueConfig {
                capacity: 10,
                order: Order::Priority,
                ack_deadline_ms: 1000,
                max_attempts: 3,
                retry: Backoff {
                    initial_ms: 100,
                    max_ms: 1000,
                    multiplier_milli: 2500,
                },
                key_window_ms: 1000,
                dead_letter: Some("dlq".into()),
                max_in_flight: 7,
                rate: Some(crate::engine::RateLimit {
                    tasks: 20,
                    per_ms: 1000,
                    burst: 5,
                }),
                group_max_in_flight: 2,
                paused: true,
            },
            durable: true,
        }
    }

    fn body(p: &str) -> TaskBody {
        TaskBody {
            payload: Bytes::from(p.to_owned()),
            headers: Some(Box::new([("k".to_owned(), "v".to_owned())].into())),
            enqueued_at: 5,
        }
    }

    #[test]
    fn replay_rebuilds_tasks_with_attempts_priorities_and_delays() {
        let mut r = Recovery::default();
        r.apply(&define(&spec("q"), 42)).expect("define");
        let stored = |id, p| Change::Stored {
            id: TaskId(id),
            body: body(p),
            priority: 1,
            due: 0,
            attempt: 0,
            key: None,
            job: None,
            group: None,
        };
        r.apply(&changes(
            "q",
            &[stored(1, "a"), stored(2, "b"), stored(3, "c")],
        ))
        .expect("store");
        r.apply(&changes(
            "q",
            &[
                Change::Attempt {
                    id: TaskId(1),
                    attempt: 2,
                },
                Change::Requeued {
                    id: TaskId(2),
                    priority: 0,
                    due: 99,
                },
                Change::Removed { id: TaskId(3) },
            ],
        ))
        .expect("changes");
        let q = &r.queues["q"];
        assert_eq!(q.spec, spec("q"));
        assert_eq!(q.created_at, 42);
        assert_eq!(q.tasks.len(), 2);
        assert_eq!(q.tasks[&TaskId(1)].attempt, 2);
        assert_eq!(q.tasks[&TaskId(1)].body, body("a"));
        assert_eq!(q.tasks[&TaskId(2)].priority, 0);
        assert_eq!(q.tasks[&TaskId(2)].due, 99);
        assert_eq!(r.max_task_id, 3);

        r.apply(&delete("q")).expect("delete");
        assert!(r.queues.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut r = Recovery::default();
        assert!(r.apply(&[0xff, 0xff, 0xff]).is_err());
        assert!(r.apply(&[]).is_err(), "an empty record says nothing");
    }
}
