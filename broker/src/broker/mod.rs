//! The broker: the async runtime around the engine. [`Broker`] holds the
//! queues and what they share (the log, the jobs, the limits, the id
//! counters); its work is split by concern:
//! - `queues`: the queue map — create, look up, delete;
//! - `queue`: one queue's handle and its state behind a lock;
//! - `apply`: the effect executor, where an engine call's changes become
//!   log records and then effects (the seam replication will use);
//! - `waiting`: enqueue, get, join and subscribe, which wait;
//! - `budget`: the memory budget;
//! - `compaction`: rewriting the log to what is live;
//! - `timers`: the clock and the per-queue timers;
//! - `schedule`: schedules — defined like queues, fired by a runner.
//!
//! Locking: each queue's state sits behind a std `Mutex` held only for one
//! engine call plus routing its effects (channel sends and one-shot
//! resolutions, which never block), never across `.await`. At most one
//! queue lock is held at a time: dead letters are forwarded to their queue
//! after the source queue's lock is released. Lock order: the async
//! `defs` lock (held by queue creation, deletion and compaction, across
//! their log writes) before the queue map's `RwLock` before a queue's
//! `Mutex` before the jobs' `Mutex`; never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{
    Change, Command, ConsumerId, ConsumerStats, DeadReason, DeadTask, Delivery, Effects,
    EnqueueError, EnqueueMode, Enqueued, Millis, NewTask, Outcome, ProducerSeq, PublisherId,
    QueueState, QueueStats, SettleOp, TaskId, WaitingId,
};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::lease::LeaseKey;
use crate::storage::{Log, StorageError};
use crate::wal::{self, Recovery};

/// The broker's state: every queue, id counters, and the shutdown signal.
/// Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    queues: RwLock<BTreeMap<String, Arc<QueueHandle>>>,
    /// Serialises what changes the set of durable queues in the log —
    /// creation, deletion, compaction — across their log writes: a queue
    /// exists for callers only once its definition is stored, and a
    /// compaction never misses one that is being defined.
    defs: tokio::sync::Mutex<()>,
    /// Replaced once in a cluster, by the key every member shares.
    lease_key: RwLock<LeaseKey>,
    /// Where durable changes are recorded; no log with --in-memory.
    journal: Journal,
    /// In a cluster, held through each call on a durable queue: the order
    /// the calls run in is the order their commands are proposed in.
    replica: Mutex<()>,
    /// In a cluster: what this member knows of the replicated state.
    replica_state: Mutex<replica::ReplicaState>,
    /// Whether this broker serves queue calls: always alone; in a
    /// cluster, only as the leader once it caught up.
    serving: std::sync::atomic::AtomicBool,
    /// In a cluster: the leader's address (`http://HOST:PORT`), if known.
    leader: RwLock<Option<String>>,
    segment_bytes: u64,
    /// How long consumers get to settle what they hold when the broker
    /// stops, in ms.
    shutdown_grace_ms: AtomicU64,
    next_task: AtomicU64,
    next_consumer: AtomicU64,
    /// Ids of waiting Enqueue calls and of Publish streams, from one
    /// counter: neither is ever taken for the other in logs.
    next_producer: AtomicU64,
    shutdown: CancellationToken,
    jobs: crate::jobs::Jobs,
    schedules: crate::schedules::Schedules,
    /// Whether the schedules' runner was started (`start_schedules`).
    schedules_started: std::sync::atomic::AtomicBool,
    limits: RwLock<crate::limits::Limits>,
    /// Bytes clients made the queues keep (payloads, headers, keys, job
    /// ids; see `QueueState::held_bytes`): the memory budget's measure,
    /// with the jobs' bytes and the reservations.
    held_bytes: AtomicU64,
    /// Estimated bytes a compacted log holds: durable queues' live tasks
    /// and definitions.
    durable_live: AtomicU64,
    /// The log's size right after the last compaction: the next one is
    /// due only once the log has grown past it, so an estimate of the
    /// live data that is too low cannot make compactions run back to back.
    last_compacted: AtomicU64,
    /// Bytes of batches past the budget check and not yet in
    /// `held_bytes` (stored, or waiting in line for space): concurrent
    /// enqueues each see the others' batches, so together they cannot
    /// overshoot the budget.
    reserved_bytes: AtomicU64,
    /// Consume streams in the broker.
    streams: AtomicU64,
    /// How long Enqueue calls waited for space before their tasks were
    /// stored.
    enqueue_wait: crate::latency::Histogram,
}

impl Broker {
    /// A broker with no log: every queue in memory.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self::with_log(shutdown, None, Recovery::default(), 0)
    }

    /// A broker keeping durable queues in `log`, starting from what the log
    /// held (`recovered`). Must run inside a tokio runtime (it starts the
    /// queues' timers).
    /// `segment_bytes` is the log's segment size, which paces compaction.
    pub fn with_log(
        shutdown: CancellationToken,
        log: Option<Log>,
        recovered: Recovery,
        segment_bytes: u64,
    ) -> Self {
        Self::with_journal(shutdown, Journal::new(log), recovered, segment_bytes)
    }

    /// A cluster member's broker: durable queues are replicated through
    /// `journal` (see [`Journal::replicated`]); it serves nothing until it
    /// leads ([`Broker::set_serving`]).
    pub fn clustered(shutdown: CancellationToken, journal: Journal) -> Self {
        Self::with_journal(shutdown, journal, Recovery::default(), 0)
    }

    fn with_journal(
        shutdown: CancellationToken,
        journal: Journal,
        recovered: Recovery,
        segment_bytes: u64,
    ) -> Self {
        let replicated = journal.is_replicated();
        // Task ids start at the boot time in ms shifted left by 20 bits: a
        // restarted broker's ids never meet the previous run's unless that
        // run handed out over a million ids per millisecond of uptime; and
        // always above every id the log still holds.
        let first = (now_ms() << 20).max(recovered.max_task_id + 1);
        let broker = Broker {
            inner: Arc::new(Inner {
                jobs: crate::jobs::Jobs::new(Duration::from_secs(3600), journal.clone()),
                schedules: Default::default(),
                schedules_started: Default::default(),
                limits: RwLock::new(crate::limits::Limits::default()),
                defs: tokio::sync::Mutex::new(()),
                lease_key: RwLock::new(LeaseKey::random()),
                held_bytes: AtomicU64::new(0),
                durable_live: AtomicU64::new(0),
                last_compacted: AtomicU64::new(0),
                reserved_bytes: AtomicU64::new(0),
                streams: AtomicU64::new(0),
                enqueue_wait: crate::latency::Histogram::default(),
                journal,
                replica: Mutex::new(()),
                replica_state: Mutex::new(Default::default()),
                serving: std::sync::atomic::AtomicBool::new(!replicated),
                leader: RwLock::new(None),
                segment_bytes,
                shutdown_grace_ms: AtomicU64::new(30_000),
                queues: RwLock::new(BTreeMap::new()),
                next_task: AtomicU64::new(first),
                next_consumer: AtomicU64::new(1),
                next_producer: AtomicU64::new(1),
                shutdown,
            }),
        };
        let recovered_jobs = recovered.jobs;
        for (_, rq) in recovered.queues {
            let n = rq.tasks.len();
            let handle = broker.insert_queue(rq.spec, rq.created_at);
            broker.apply(&handle, |core, now, fx| {
                core.state
                    .restore(now, rq.tasks.into_values().collect(), fx);
                core.state.restore_throttles(now, rq.throttles);
            });
            tracing::info!(queue = %handle.name(), tasks = n, "queue recovered");
        }
        broker.inner.jobs.restore(recovered_jobs);
        broker
            .inner
            .schedules
            .replace_with(recovered.schedules.into_values());
        for ((name, queue), tick) in recovered.schedule_ticks {
            let key = wal::tick_key(&name, tick);
            broker.inner.schedules.stored_tick(&key, &queue, wall_ms());
        }
        if broker.inner.journal.log().is_some() {
            tokio::spawn(broker.clone().compact_when_due());
        }
        tokio::spawn(broker.clone().sweep_jobs());
        broker
    }

    /// The job registry.
    pub fn jobs(&self) -> &crate::jobs::Jobs {
        &self.inner.jobs
    }

    /// Sets the broker-wide limits.
    pub fn set_limits(&self, limits: crate::limits::Limits) {
        // Jobs may keep outcomes for late watchers in a quarter of the
        // budget: enough for any watcher that keeps up, and never the
        // whole of it, which would starve enqueues for a --job-ttl.
        self.inner.jobs.set_max_kept(limits.max_memory_bytes / 4);
        *self.inner.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub fn limits(&self) -> crate::limits::Limits {
        self.inner
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long consumers get to settle what they hold at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.inner.shutdown_grace_ms.load(Ordering::Relaxed))
    }

    pub fn set_shutdown_grace(&self, grace: Duration) {
        self.inner
            .shutdown_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// The log, when the broker has one.
    pub fn log(&self) -> Option<&Log> {
        self.inner.journal.log()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Reserves `n` consecutive task ids.
    pub fn task_ids(&self, n: u64) -> TaskId {
        TaskId(self.inner.next_task.fetch_add(n, Ordering::Relaxed))
    }

    pub fn publisher_id(&self) -> PublisherId {
        PublisherId(self.inner.next_producer.fetch_add(1, Ordering::Relaxed))
    }

    pub fn consumer_id(&self) -> ConsumerId {
        ConsumerId(self.inner.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// The cluster's one-call-at-a-time lock (`Inner::replica`).
    ///
    /// A snapshot holds it while it waits for this leader's proposals to
    /// be applied (`Replica::quiesce`), and applying them needs tasks of
    /// this runtime (Raft's, the proposer's). Calls that found it taken
    /// wait off the runtime's worker threads, so that on a runtime of two
    /// workers two waiting calls cannot starve those tasks: they would
    /// never drain, and the member would stop answering its peers.
    pub(super) fn one_at_a_time(&self) -> std::sync::MutexGuard<'_, ()> {
        let lock = &self.inner.replica;
        match lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let wait = || lock.lock().unwrap_or_else(|p| p.into_inner());
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(wait)
                    }
                    _ => wait(),
                }
            }
        }
    }

    /// Whether `q` is a cluster's replicated queue (durable, in a
    /// cluster): its state, leases included, outlives this member's
    /// leadership.
    pub fn replicates(&self, q: &QueueHandle) -> bool {
        q.durable() && self.inner.journal.is_replicated()
    }

    /// The key that signs lease tokens.
    pub fn lease_key(&self) -> LeaseKey {
        self.inner
            .lease_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this broker serves queue calls (see `Inner::serving`).
    pub fn serving(&self) -> bool {
        self.inner.serving.load(Ordering::Acquire)
    }

    /// In a cluster: starts or stops serving queue calls.
    pub fn set_serving(&self, serving: bool) {
        self.inner.serving.store(serving, Ordering::Release);
        // Only who serves fires schedules.
        self.inner.schedules.changed.notify_one();
    }

    /// In a cluster: the leader's address, for the clients told to go
    /// there.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner
            .leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_leader_hint(&self, leader: Option<String>) {
        *self.inner.leader.write().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// The error for a call whose queue went away under it: deleted, or,
    /// in a cluster, this member stopped leading (then: go to the leader).
    pub fn queue_gone(&self, name: &str) -> Error {
        match self.serving() {
            true => Error::QueueDeleted(name.to_owned()),
            false => self.not_leader(),
        }
    }

    /// The error for a queue call on a member that does not lead.
    pub fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: self.leader_hint(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }
}

mod apply;
mod budget;
mod compaction;
mod queue;
mod queues;
mod replica;
mod schedule;
#[cfg(test)]
mod tests;
mod timers;
mod waiting;

pub use crate::engine::QueueSpec;
pub use crate::storage::Durability;
use apply::{DEFINE_BYTES, Ticket, live_estimate, wait_ticket};
pub use budget::MemoryReservation;
pub use queue::{DeliveryRx, QueueCore, QueueHandle, QueueView};
pub use replica::Replica;
use timers::run_timer;
pub use timers::{now_ms, wall_ms};
use waiting::Admission;
pub use waiting::{EnqueueReceipt, FRAME_BYTES};
