//! The queue engine: one deterministic state machine per queue.
//!
//! Sans-I/O by construction: a crate of its own that depends on no runtime,
//! whose clippy.toml refuses clock reads and threads; no random numbers, no
//! disk. Callers pass `now` and pre-assigned ids in, and get back
//! what must happen next in an [`Effects`] (deliveries to route, waiting
//! producers to wake, dead tasks to forward). That keeps it testable against
//! a model without a runtime, and makes its inputs a log that replays to the
//! same state (durability now, replication later).

mod command;
mod flow;
mod groups;
mod queue;
mod ready;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use std::collections::HashMap;

pub use command::{Command, Outcome, SettleKind, SettleOp};
pub use groups::{GroupStats, ImageGroup};
pub use queue::{
    ImageConsumer, ImageKey, ImageLease, ImageMark, ImagePublisher, ImageTask, ImageWaiting,
    KEY_OVERHEAD, MarkedBatch, Producer, PublishError, QueueImage, QueueState,
};

/// Milliseconds since the Unix epoch. The engine never reads a clock.
pub type Millis = u64;

/// A task's identity inside one broker; rendered as an opaque string on the
/// wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// One consumer: a Consume stream or a waiting Get call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u64);

/// One Publish stream: a producer holding credit (reserved capacity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublisherId(pub u64);

/// One Enqueue call waiting for space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitingId(pub u64);

/// Delivery order of ready tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Fifo,
    Lifo,
    /// Lowest priority number first, ties first-in first-out.
    Priority,
}

/// A queue's options (already validated). All but `order` and
/// `key_window_ms` may change while it runs ([`Command::Configure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Ready + delayed tasks the queue holds at most.
    pub capacity: u64,
    pub order: Order,
    /// Lease length.
    pub ack_deadline_ms: u64,
    /// Deliveries after which a failed task is dead; 0 = unlimited.
    pub max_attempts: u32,
    /// How long a failed task waits before it is ready again.
    pub retry: Backoff,
    /// How long after a keyed task is done its key still dedupes.
    pub key_window_ms: u64,
    /// The queue its dead tasks move to, if any. Carried, not used: the
    /// broker forwards dead tasks; here it changes with the other options.
    pub dead_letter: Option<String>,
    /// Leased tasks at most, over every consumer; 0 = no cap.
    pub max_in_flight: u64,
    /// Deliveries per time, if limited.
    pub rate: Option<RateLimit>,
    /// Leased tasks at most per group; 0 = no cap.
    pub group_max_in_flight: u64,
    /// Nothing is delivered while set.
    pub paused: bool,
}

impl QueueConfig {
    /// A queue with these basics and no flow control, no dead letters.
    pub fn basic(capacity: u64, order: Order, ack_deadline_ms: u64) -> Self {
        QueueConfig {
            capacity,
            order,
            ack_deadline_ms,
            max_attempts: 0,
            retry: Backoff::NONE,
            key_window_ms: 0,
            dead_letter: None,
            max_in_flight: 0,
            rate: None,
            group_max_in_flight: 0,
            paused: false,
        }
    }
}

/// A token bucket over deliveries: `tasks` per `per_ms`, up to `burst` at
/// once. Every field at least 1 (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub tasks: u64,
    pub per_ms: u64,
    pub burst: u64,
}

/// A queue's whole definition: its name, the engine's options, and what
/// the broker does around the engine (where dead tasks go, whether the
/// queue is logged). Validated before it gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub config: QueueConfig,
    /// Kept in the write-ahead log: survives a restart.
    pub durable: bool,
}

/// Retry backoff: `initial * multiplier^(attempt-1)`, capped at `max`, with
/// "equal jitter" (half the delay fixed, half spread), so tasks that failed
/// together do not all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// 0 = no backoff: a failed task is ready again at once.
    pub initial_ms: u64,
    pub max_ms: u64,
    /// The multiplier times 1000 (kept integral so configs compare exactly).
    pub multiplier_milli: u32,
}

impl Backoff {
    pub const NONE: Backoff = Backoff {
        initial_ms: 0,
        max_ms: 0,
        multiplier_milli: 1000,
    };

    /// The delay before delivery `attempt + 1` of task `id`, after delivery
    /// `attempt` failed. The jitter comes from the id and attempt, not from
    /// a random source: the engine stays deterministic, and a replay
    /// computes the same delay.
    pub fn delay(&self, id: TaskId, attempt: u32) -> u64 {
        if self.initial_ms == 0 {
            return 0;
        }
        // In integers, not floats: every member of a cluster must compute
        // the same delay, whatever its CPU or compiler did with a `powi`.
        // Microseconds, so that a small delay still grows by a multiplier
        // like 1.5.
        let cap = u128::from(self.max_ms) * 1000;
        let mut full = u128::from(self.initial_ms) * 1000;
        if self.multiplier_milli != 1000 {
            for _ in 1..attempt.min(1000) {
                if full >= cap || full == 0 {
                    break;
                }
                full = full * u128::from(self.multiplier_milli) / 1000;
            }
        }
        let full = (full.min(cap) / 1000) as u64;
        let spread = mix(id.0 ^ (u64::from(attempt) << 48)) % 1001;
        full / 2 + (full / 2) * spread / 1000
    }
}

/// splitmix64's finaliser: a well-spread hash of a number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What a producer submits; the id is assigned by the caller so the engine
/// stays deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub payload: Bytes,
    pub headers: HashMap<String, String>,
    pub priority: i32,
    pub delay_ms: u64,
    /// Idempotency key: while a task with this key is unfinished (and for
    /// the queue's key window after), the same key adds nothing.
    pub key: Option<Box<str>>,
    /// The job the task belongs to: its outcome is reported to the job.
    pub job: Option<Box<str>>,
    /// Its fairness group; None: the default group.
    pub group: Option<Box<str>>,
}

impl NewTask {
    /// What storing it makes the broker keep, for the memory budget: its
    /// payload, headers, key (with the key's index) and job id.
    pub fn held_bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let key = self
            .key
            .as_ref()
            .map_or(0, |k| k.len() as u64 + queue::KEY_OVERHEAD);
        let group = self
            .group
            .as_ref()
            .map_or(0, |g| g.len() as u64 + groups::GROUP_OVERHEAD);
        (self.payload.len() + headers + self.job.as_ref().map_or(0, |j| j.len())) as u64
            + key
            + group
    }
}

/// How a task of a job ended, for the job's watchers.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job: Box<str>,
    pub id: TaskId,
    pub payload: Bytes,
    pub succeeded: bool,
    /// The ack's result.
    pub result: Bytes,
    /// The last nack's error text (or why it was removed).
    pub error: String,
    pub attempts: u32,
}

/// Task headers. Boxed and optional: most tasks have none, and a queue
/// holding millions of tasks should not pay an empty map for each.
pub type Headers = Option<Box<HashMap<String, String>>>;

/// The immutable part of a task. Cloning it is cheap (the payload is
/// reference-counted; headers, when present, are copied).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBody {
    pub payload: Bytes,
    pub headers: Headers,
    pub enqueued_at: Millis,
}

/// One task handed to one consumer under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: TaskId,
    pub body: TaskBody,
    /// Which delivery of the task this is (1 = first): with `id`, the lease
    /// token.
    pub attempt: u32,
    pub deadline: Millis,
    /// Priority the task is served with now (a nack may have changed it).
    pub priority: i32,
    /// Its idempotency key, if it has one.
    pub key: Option<Box<str>>,
    /// Its job, if it has one.
    pub job: Option<Box<str>>,
    /// Its group, if it has one.
    pub group: Option<Box<str>>,
}

/// Why a task left the queue without being acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Failed `max_attempts` times.
    MaxAttempts,
    /// Nacked with "do not retry".
    Rejected,
    /// Nacked with "drop": never forwarded to a dead letter queue.
    Dropped,
}

/// A task that left the queue as a failure; the caller forwards it to the
/// dead letter queue, if any.
#[derive(Debug, Clone)]
pub struct DeadTask {
    pub id: TaskId,
    pub body: TaskBody,
    /// Priority it was served with last.
    pub priority: i32,
    pub attempts: u32,
    pub reason: DeadReason,
    pub error: String,
    /// Its group: a dead letter stays in its tenant's group.
    pub group: Option<Box<str>>,
}

/// A change to what a durable queue must remember across a restart,
/// recorded (when the queue keeps a journal) for the write-ahead log.
/// Replaying a queue's changes in order rebuilds its tasks: leases are not
/// remembered (a restart ends every stream), only the attempts they cost.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A task entered the queue (new, or a dead letter copy).
    Stored {
        id: TaskId,
        body: TaskBody,
        priority: i32,
        /// Not deliverable before this time; 0 = at once.
        due: Millis,
        /// Deliveries so far: 0 for a new task, more when a live task is
        /// written again (compaction).
        attempt: u32,
        key: Option<Box<str>>,
        job: Option<Box<str>>,
        group: Option<Box<str>>,
    },
    /// The task's delivery count is now `attempt` (a delivery, or one
    /// undone).
    Attempt { id: TaskId, attempt: u32 },
    /// The task waits again, with this priority, until `due` (0 = at once).
    Requeued {
        id: TaskId,
        priority: i32,
        due: Millis,
    },
    /// The task left the queue: acked, dead, dropped or purged.
    Removed { id: TaskId },
    /// A nack's throttle holds deliveries until `until`: the whole
    /// queue's (`group` None) or one group's (`Some("")`: the default
    /// group's).
    Throttled {
        group: Option<Box<str>>,
        until: Millis,
    },
}

/// A task as recovered from the log, to put back into a queue.
#[derive(Debug, Clone)]
pub struct Restored {
    pub id: TaskId,
    pub body: TaskBody,
    pub priority: i32,
    pub attempt: u32,
    pub due: Millis,
    pub key: Option<Box<str>>,
    pub job: Option<Box<str>>,
    pub group: Option<Box<str>>,
}

/// A waiting task as a browser of the queue sees it (see
/// [`QueueState::browse`]).
#[derive(Debug, Clone)]
pub struct Browsed {
    pub id: TaskId,
    pub body: TaskBody,
    pub priority: i32,
    /// Deliveries so far.
    pub attempt: u32,
    /// Delayed until then; None when ready.
    pub due: Option<Millis>,
    pub key: Option<Box<str>>,
    pub job: Option<Box<str>>,
    pub group: Option<Box<str>>,
    /// The last nack's error text, if it had one.
    pub error: Option<Box<str>>,
}

/// A waiting producer whose batch is now stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub id: WaitingId,
    /// Its tasks that were not stored because, by the time the batch was,
    /// their key was taken: (the id given to the new task, the holder's).
    pub duplicates: Vec<(TaskId, TaskId)>,
}

/// How an ack, nack or extend proves it may end a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller checked the lease's secret token, which only the
    /// delivery's receiver got: it may settle whoever holds the lease.
    Token,
    /// Sent on this consumer's own stream: it may settle only the leases
    /// it holds (the stream itself proves it received them).
    Holder(ConsumerId),
}

/// What the caller must do after an engine call.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tasks to send, each to its consumer, in dispatch order.
    pub deliveries: Vec<(ConsumerId, Delivery)>,
    /// Waiting producers whose batch is now stored.
    pub admitted: Vec<Admitted>,
    /// Tasks that failed for good.
    pub dead: Vec<DeadTask>,
    /// The earliest timer deadline moved earlier: re-arm the queue's timer.
    pub rearm: bool,
    /// For a queue that keeps a journal: what to write to the log, in order.
    pub changes: Vec<Change>,
    /// Enqueued tasks that were not stored because their idempotency key
    /// was taken: (the id given to the new task, the id of the task that
    /// holds the key).
    pub duplicates: Vec<(TaskId, TaskId)>,
    /// Credit granted to publishers: space now reserved for them.
    pub granted: Vec<(PublisherId, u64)>,
    /// Tasks of jobs that ended (acked, dead, dropped or purged).
    pub completed: Vec<Completion>,
    /// The job of each task of a job stored by this call.
    pub job_stored: Vec<Box<str>>,
    /// The idempotency key of each keyed task stored by this call (a
    /// cluster member learns from them which schedule ticks fired).
    pub keys_stored: Vec<Box<str>>,
}

/// How a nack wants the task handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Ready again after `delay_ms` (None: the queue's backoff; counts an
    /// attempt), or dead after `max_attempts`.
    Retry {
        delay_ms: Option<u64>,
        priority: Option<i32>,
    },
    /// Gone for good, never dead-lettered.
    Drop,
    /// Straight to the dead letter queue.
    DeadLetter,
}

/// A nack's hold on delivery (downstream backpressure: a Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// For this long from the nack.
    pub ms: u64,
    /// Only the nacked task's group, not the whole queue.
    pub group: bool,
}

/// Why a queue with ready tasks is not delivering them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Paused,
    /// A nack's throttle holds the queue until then.
    Throttled {
        until: Millis,
    },
    /// `max_in_flight` tasks are leased.
    InFlightCap,
    /// The next token of the rate limit comes then.
    RateLimited {
        until: Millis,
    },
    /// Every group with ready tasks is at its cap or throttled.
    GroupsHeld,
    /// No consumer has credit.
    NoCredit,
}

/// Why an ack, nack or extend was refused. It changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// No current lease under this token: it expired, the task was
    /// delivered again, was already settled, or is gone.
    #[error(
        "no current lease under this token (expired, redelivered, settled, or the task is gone)"
    )]
    StaleLease,
}

/// Why an enqueue was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("queue full")]
    Full,
    #[error("batch of {batch} tasks can never fit a queue of capacity {capacity}")]
    BatchTooLarge { batch: u64, capacity: u64 },
    #[error(
        "this producer's batch {seq} was stored with {was} tasks; this one has {now}: \
         a sequence number names one batch"
    )]
    SequenceReused { seq: u64, was: u32, now: u64 },
}

/// A producer's name and its count of one batch (EnqueueRequest's
/// producer_id and sequence): a batch sent again under the same pair is
/// answered as the first time, not stored twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSeq {
    pub producer: Box<str>,
    pub seq: u64,
}

/// Whether an enqueue may wait for space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueMode {
    /// Join the line of waiting producers under this id.
    Wait(WaitingId),
    FailFast,
}

/// Outcome of an accepted enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored now.
    Stored,
    /// In line; an [`Effects::admitted`] with this id says when it is stored.
    Waiting(WaitingId),
}

/// Depths and totals of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub waiting_producers: u64,
    pub waiting_tasks: u64,
    pub consumers: u64,
    pub credit: u64,
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub nacked_total: u64,
    pub expired_total: u64,
    pub dead_total: u64,
    pub purged_total: u64,
    /// Publish streams.
    pub publishers: u64,
    /// Capacity reserved for publishers (credit they hold).
    pub reserved: u64,
    /// Payload bytes of the unfinished tasks.
    pub payload_bytes: u64,
    /// Delayed tasks that are waiting out a retry backoff.
    pub retrying: u64,
    /// Groups with unfinished tasks.
    pub groups: u64,
    /// Groups with ready tasks that may not be served now.
    pub groups_held: u64,
    /// A nack's throttle holds the queue until then; 0: not held.
    pub throttled_until: Millis,
}

impl QueueStats {
    /// What Join waits on.
    pub fn unfinished(&self) -> u64 {
        self.ready + self.delayed + self.leased
    }
}

/// One consumer's numbers, enough to explain why it gets what it gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub id: ConsumerId,
    pub name: String,
    pub peer: String,
    pub connected_at: Millis,
    pub credit: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub mean_processing_ms: u64,
    pub oldest_lease_age_ms: u64,
}
