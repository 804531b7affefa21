//! The async runtime around the engine: the registry of queues, one handle
//! per queue, the per-queue timer, and the waiting operations (enqueue that
//! waits for space, get that waits for a task, join).
//!
//! Locking: each queue's state sits behind a std `Mutex` held only for one
//! engine call plus routing its effects (channel sends and one-shot
//! resolutions, which never block), never across `.await`. At most one
//! queue lock is held at a time: dead letters are forwarded to their queue
//! after the source queue's lock is released. Lock order: the async
//! `defs` lock (held by queue creation, deletion and compaction, across
//! their log writes) before the registry's `RwLock` before a queue's
//! `Mutex` before the jobs' `Mutex`; never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable::{self, Recovery};
use crate::engine::{
    Change, ConsumerId, ConsumerStats, DeadReason, DeadTask, Delivery, Effects, EnqueueError,
    EnqueueMode, Enqueued, Millis, NewTask, PublisherId, PutterId, QueueConfig, QueueState,
    QueueStats, TaskId,
};
use crate::error::{Error, Result};
use crate::lease::LeaseKey;
use crate::storage::{Log, StorageError};

/// Resolves once a log append is durable (per the fsync policy).
pub type Durability = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// Lets producers admitted by another call wait for that call's append.
type Ticket = watch::Receiver<Option<Result<(), StorageError>>>;

/// What a waiting producer is told when its batch is stored.
pub struct Admission {
    /// The append that stored it, for a durable queue.
    ticket: Option<Ticket>,
    /// Its tasks whose key was taken by the time it was stored.
    duplicates: Vec<(TaskId, TaskId)>,
}

/// A dead-lettered task's removal from its (durable) source queue, to be
/// logged in one record with its arrival in the dead letter queue: the
/// move is then atomic in the log.
struct Moved {
    from: String,
    changes: Vec<Change>,
}

/// How [`Broker::apply_with`] logs an engine call.
#[derive(Default)]
struct LogAs {
    /// The caller waits for the append to be durable (it confirms
    /// something to a client). Otherwise the append is not waited on, and
    /// under `--fsync always` it costs no fsync of its own: it is synced
    /// with the next append that is waited on.
    wait: bool,
    /// The call adds tasks: its append must leave the log room to shrink
    /// (acks) and to compact; see [`Broker::keep_free`].
    grows: bool,
    moved: Option<Moved>,
}

/// Log bytes per live task beyond its payload, headers, key and job id
/// (framing, ids, numbers), and per durable queue for its definition: the
/// estimate of what a compacted log holds.
const RECORD_OVERHEAD: u64 = 48;
const DEFINE_BYTES: u64 = 256;

/// Most free space the log keeps beyond the live data, for the
/// settlements that come before a compaction (acks, attempts) and a
/// segment header.
const LOG_MARGIN: u64 = 64 << 10;

/// Milliseconds since the Unix epoch: the engine's `now`. The wall clock
/// is read once, at the first call; after that time advances with the
/// monotonic clock, so a clock step (NTP, an operator) neither expires
/// every lease at once nor freezes them.
pub fn now_ms() -> Millis {
    static BOOT: std::sync::OnceLock<(std::time::Instant, Millis)> = std::sync::OnceLock::new();
    let (at, wall) = BOOT.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis);
        (std::time::Instant::now(), wall)
    });
    wall + at.elapsed().as_millis() as Millis
}

/// A validated queue definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub config: QueueConfig,
    pub dead_letter: Option<String>,
    /// Kept in the write-ahead log: survives a restart.
    pub durable: bool,
}

/// Batches of deliveries for one consumer. Unbounded on purpose: what is in
/// it was paid for with the consumer's credit, so credit is the bound.
pub type DeliveryRx = mpsc::UnboundedReceiver<Vec<Delivery>>;
type DeliveryTx = mpsc::UnboundedSender<Vec<Delivery>>;

/// The state of a queue plus who to tell about its effects.
pub struct Shared {
    pub state: QueueState,
    /// Set, under this lock, when the queue is deleted: a call that looked
    /// the queue up just before must not store into it and answer OK.
    deleted: bool,
    /// Set when a deletion took the queue's bytes out of the broker's
    /// counts: later engine calls on it (a consumer's last acks) must not
    /// take them out again.
    released: bool,
    senders: HashMap<ConsumerId, DeliveryTx>,
    /// Each waiting producer's wake-up.
    putters: HashMap<PutterId, oneshot::Sender<Admission>>,
    /// Each Publish stream's credit grants.
    publishers: HashMap<PublisherId, mpsc::UnboundedSender<u64>>,
}

impl Shared {
    /// Stops routing deliveries to a consumer that is leaving.
    pub fn remove_sender(&mut self, cid: ConsumerId) {
        self.senders.remove(&cid);
    }

    /// Registers a Publish stream; its grants arrive on the receiver.
    pub fn add_publisher(&mut self, id: PublisherId) -> mpsc::UnboundedReceiver<u64> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.publishers.insert(id, tx);
        rx
    }

    pub fn remove_publisher_sender(&mut self, id: PublisherId) {
        self.publishers.remove(&id);
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
}

/// One named queue.
pub struct QueueHandle {
    pub spec: QueueSpec,
    pub created_at: Millis,
    shared: Mutex<Shared>,
    /// Woken whenever the queue has no unfinished task (Join).
    idle: Notify,
    /// Woken when the earliest deadline moved earlier (the timer task).
    rearm: Notify,
    deleted: CancellationToken,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle")
            .field("name", &self.spec.name)
            .field("durable", &self.spec.durable)
            .finish_non_exhaustive()
    }
}

impl QueueHandle {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A poisoned lock means an engine call panicked mid-change; the state
    /// may be inconsistent, but refusing every later call would lose every
    /// task in the queue, so keep serving.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Depths, totals and consumers, read in one critical section.
    pub fn snapshot(&self) -> (QueueStats, Vec<ConsumerStats>) {
        let now = now_ms();
        let sh = self.lock();
        (sh.state.stats(), sh.state.consumer_stats(now))
    }

    pub fn deleted(&self) -> &CancellationToken {
        &self.deleted
    }
}

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
    lease_key: LeaseKey,
    /// The write-ahead log; None with --in-memory.
    log: Option<Log>,
    segment_bytes: u64,
    /// How long consumers get to settle what they hold when the broker
    /// stops, in ms.
    shutdown_grace_ms: AtomicU64,
    next_task: AtomicU64,
    next_consumer: AtomicU64,
    next_putter: AtomicU64,
    shutdown: CancellationToken,
    jobs: crate::jobs::Jobs,
    limits: RwLock<crate::validate::Limits>,
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

/// Payload bytes counted against the memory budget until dropped; see
/// [`Broker::reserve_memory`].
#[must_use = "the reservation is released when dropped"]
pub struct MemoryReservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.inner
            .reserved_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// What a stored enqueue reports back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub first_id: TaskId,
    /// Tasks not stored because their key was taken: (new id, holder).
    pub duplicates: Vec<(TaskId, TaskId)>,
    pub depth: u64,
    pub capacity: u64,
    pub waited_ms: u64,
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
        // Task ids start at the boot time in ms shifted left by 20 bits: a
        // restarted broker's ids never meet the previous run's unless that
        // run handed out over a million ids per millisecond of uptime; and
        // always above every id the log still holds.
        let first = (now_ms() << 20).max(recovered.max_task_id + 1);
        let broker = Broker {
            inner: Arc::new(Inner {
                jobs: crate::jobs::Jobs::new(Duration::from_secs(3600), log.clone()),
                limits: RwLock::new(crate::validate::Limits::default()),
                defs: tokio::sync::Mutex::new(()),
                lease_key: LeaseKey::random(),
                held_bytes: AtomicU64::new(0),
                durable_live: AtomicU64::new(0),
                last_compacted: AtomicU64::new(0),
                reserved_bytes: AtomicU64::new(0),
                streams: AtomicU64::new(0),
                enqueue_wait: crate::latency::Histogram::default(),
                log,
                segment_bytes,
                shutdown_grace_ms: AtomicU64::new(30_000),
                queues: RwLock::new(BTreeMap::new()),
                next_task: AtomicU64::new(first),
                next_consumer: AtomicU64::new(1),
                next_putter: AtomicU64::new(1),
                shutdown,
            }),
        };
        let recovered_jobs = recovered.jobs;
        for (_, rq) in recovered.queues {
            let n = rq.tasks.len();
            let handle = broker.insert_queue(rq.spec, rq.created_at);
            broker.apply(&handle, |sh, now, fx| {
                sh.state.restore(now, rq.tasks.into_values().collect(), fx);
            });
            tracing::info!(queue = %handle.name(), tasks = n, "queue recovered");
        }
        broker.inner.jobs.restore(recovered_jobs);
        if broker.inner.log.is_some() {
            tokio::spawn(broker.clone().compact_when_due());
        }
        tokio::spawn(broker.clone().sweep_jobs());
        broker
    }

    /// The job registry.
    pub fn jobs(&self) -> &crate::jobs::Jobs {
        &self.inner.jobs
    }

    /// Forgets jobs past their time, every 10 seconds, until shutdown.
    async fn sweep_jobs(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => self.inner.jobs.sweep(now_ms()),
            }
        }
    }

    /// Checks every second whether the log has outgrown its live data, and
    /// compacts it then; stops at shutdown.
    async fn compact_when_due(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.compaction_due() {
                continue;
            }
            if let Err(e) = self.compact().await {
                tracing::warn!(error = %e, "log compaction failed; will retry");
            }
        }
    }

    /// Whether the log holds more garbage than live data, by measured
    /// bytes, plus some slack so that a nearly empty log is not rewritten
    /// every second; and has grown by that slack since the last
    /// compaction. The slack is a segment, or an eighth of the space the
    /// log may use, whichever is less: on a small disk the log must
    /// compact long before a segment fills.
    pub fn compaction_due(&self) -> bool {
        let Some(log) = &self.inner.log else {
            return false;
        };
        let total = log.total_bytes();
        let floor = self
            .live_bytes()
            .saturating_mul(2)
            .max(self.inner.last_compacted.load(Ordering::Relaxed));
        let room = total.saturating_add(log.free_bytes());
        let slack = self.inner.segment_bytes.min(room / 8).max(4096);
        total > floor.saturating_add(slack)
    }

    /// What a compacted log would hold, estimated from what is live:
    /// durable queues' tasks and definitions, and jobs.
    pub fn live_bytes(&self) -> u64 {
        self.inner.durable_live.load(Ordering::Relaxed) + self.inner.jobs.bytes()
    }

    /// Free space an append that grows the log must leave behind: room
    /// for a compaction to copy everything live forward (it copies before
    /// it deletes), plus a margin for the settlements that free it (a
    /// sixteenth of the space the log may use, at most [`LOG_MARGIN`]).
    pub fn keep_free(&self) -> u64 {
        let margin = self.inner.log.as_ref().map_or(LOG_MARGIN, |log| {
            let room = log.total_bytes().saturating_add(log.free_bytes());
            LOG_MARGIN.min(room / 16)
        });
        self.live_bytes() + margin
    }

    /// Rewrites the log to hold only what is live: rolls to a new segment,
    /// writes every durable queue's definition and unfinished tasks and
    /// every job's state, waits for that to be durable, then deletes every
    /// older segment. Each queue's snapshot is taken under its lock along
    /// with its place in the log (so its later changes follow it there),
    /// but encoded and written after the lock is released: the queue goes
    /// on serving meanwhile. Returns the bytes written.
    pub async fn compact(&self) -> Result<u64> {
        let Some(log) = &self.inner.log else {
            return Ok(0);
        };
        // No queue is defined or deleted while its snapshot is in flight.
        let _defs = self.inner.defs.lock().await;
        let before = log.total_bytes();
        let cut = log.roll().await?;
        let mut writers = Vec::new();
        for q in self.queues() {
            if !q.spec.durable {
                continue;
            }
            let taken = {
                let sh = q.lock();
                if sh.deleted {
                    continue;
                }
                // Cheap under the lock: payloads are shared, not copied.
                (sh.state.snapshot(), log.reserve()?)
            };
            let (snapshot, slot) = taken;
            let define = durable::define(&q.spec, q.created_at);
            let name = q.name().to_owned();
            writers.push(tokio::task::spawn_blocking(move || {
                durable::write_snapshot(&slot, define, &name, snapshot).map(|bytes| (slot, bytes))
            }));
        }
        // Jobs after the queues: their state now includes every event
        // appended before this point.
        if let Some((jobs, slot)) = self.inner.jobs.snapshot(log)? {
            writers.push(tokio::task::spawn_blocking(move || {
                durable::write_jobs(&slot, jobs).map(|bytes| (slot, bytes))
            }));
        }
        let mut bytes = 0;
        let mut first_error = None;
        for w in writers {
            let written = match w.await {
                Ok(Ok((slot, n))) => slot.finish().await.map(|_| n),
                Ok(Err(e)) => Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "writing a compaction snapshot panicked");
                    Err(StorageError::Abandoned)
                }
            };
            match written {
                Ok(n) => bytes += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        let removed = log.remove_segments_before(cut).await?;
        self.inner
            .last_compacted
            .store(log.total_bytes(), Ordering::Relaxed);
        tracing::info!(
            before,
            after = log.total_bytes(),
            removed_segments = removed.segments,
            "log compacted"
        );
        Ok(bytes)
    }

    /// Sets the broker-wide limits.
    pub fn set_limits(&self, limits: crate::validate::Limits) {
        // Jobs may keep outcomes for late watchers in a quarter of the
        // budget: enough for any watcher that keeps up, and never the
        // whole of it, which would starve enqueues for a --job-ttl.
        self.inner.jobs.set_max_kept(limits.max_memory_bytes / 4);
        *self.inner.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub fn limits(&self) -> crate::validate::Limits {
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
        self.inner.log.as_ref()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Reserves `n` consecutive task ids.
    pub fn task_ids(&self, n: u64) -> TaskId {
        TaskId(self.inner.next_task.fetch_add(n, Ordering::Relaxed))
    }

    pub fn publisher_id(&self) -> PublisherId {
        PublisherId(self.inner.next_putter.fetch_add(1, Ordering::Relaxed))
    }

    pub fn consumer_id(&self) -> ConsumerId {
        ConsumerId(self.inner.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Reserves `bytes` more of payload against the memory budget, or
    /// refuses when it is used up. Hold the reservation until the batch
    /// has been applied to its queue (it is then counted twice for a
    /// moment, which errs on the side of refusing).
    pub fn reserve_memory(&self, bytes: u64) -> Result<MemoryReservation> {
        let inner = &self.inner;
        // SeqCst throughout: the check reads two counters that other
        // threads move in turn (payload up, then reservation down), and
        // must never see the batch in neither.
        let others = inner.reserved_bytes.fetch_add(bytes, Ordering::SeqCst);
        let reservation = MemoryReservation {
            inner: self.inner.clone(),
            bytes,
        };
        let used = inner
            .held_bytes
            .load(Ordering::SeqCst)
            .saturating_add(inner.jobs.bytes())
            .saturating_add(others);
        let max = self.limits().max_memory_bytes;
        if used.saturating_add(bytes) > max {
            return Err(Error::LimitReached(format!(
                "the broker's memory budget is used up ({used} of {max} bytes held for \
                 queued and waiting tasks, keys and jobs; --max-memory-bytes); \
                 retry when workers have drained some"
            )));
        }
        Ok(reservation)
    }

    /// How long enqueues waited for space.
    pub fn enqueue_wait(&self) -> crate::latency::Snapshot {
        self.inner.enqueue_wait.snapshot()
    }

    /// A Consume stream ended.
    pub fn stream_closed(&self) {
        self.inner.streams.fetch_sub(1, Ordering::SeqCst);
    }

    /// Bytes counted against the memory budget: what the queues hold
    /// (payloads, headers, keys, job ids) and the jobs' outcomes.
    pub fn held_bytes(&self) -> u64 {
        self.inner.held_bytes.load(Ordering::Relaxed) + self.inner.jobs.bytes()
    }

    /// The key that signs lease tokens.
    pub fn lease_key(&self) -> &LeaseKey {
        &self.inner.lease_key
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    // ------------------------------------------------------------ registry

    /// Creates a queue, or returns the existing one when its definition is
    /// equal. The bool says whether it was created. A durable queue exists
    /// (for every caller) only once its definition is in the log: if the
    /// log refuses it, nothing was created and a retry starts afresh.
    pub async fn create_queue(&self, spec: QueueSpec) -> Result<(Arc<QueueHandle>, bool)> {
        self.check_open()?;
        if spec.durable && self.inner.log.is_none() {
            return Err(Error::invalid(
                "durable queues need the broker's data directory; this broker runs --in-memory",
            ));
        }
        let _defs = self.inner.defs.lock().await;
        {
            let queues = self.inner.queues.read().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = queues.get(&spec.name) {
                if existing.spec == spec {
                    return Ok((Arc::clone(existing), false));
                }
                return Err(Error::QueueExists {
                    name: spec.name.clone(),
                    diff: describe_diff(&existing.spec, &spec),
                });
            }
            let max = self.limits().max_queues;
            if queues.len() >= max {
                return Err(Error::LimitReached(format!(
                    "the broker holds its limit of {max} queues (--max-queues)"
                )));
            }
            check_dead_letters(&queues, &spec)?;
        }
        let created_at = now_ms();
        if let (Some(log), true) = (&self.inner.log, spec.durable) {
            log.append_keeping(vec![durable::define(&spec, created_at)], self.keep_free())
                .await?;
        }
        let handle = self.insert_queue(spec, created_at);
        tracing::info!(queue = %handle.name(), durable = handle.spec.durable, "queue created");
        Ok((handle, true))
    }

    fn insert_queue(&self, spec: QueueSpec, created_at: Millis) -> Arc<QueueHandle> {
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        self.insert_locked(&mut queues, spec, created_at)
    }

    fn insert_locked(
        &self,
        queues: &mut BTreeMap<String, Arc<QueueHandle>>,
        spec: QueueSpec,
        created_at: Millis,
    ) -> Arc<QueueHandle> {
        let mut state = QueueState::new(spec.config.clone());
        if spec.durable {
            state.keep_journal();
        }
        if spec.durable {
            self.inner
                .durable_live
                .fetch_add(DEFINE_BYTES, Ordering::Relaxed);
        }
        let handle = Arc::new(QueueHandle {
            created_at,
            shared: Mutex::new(Shared {
                state,
                deleted: false,
                released: false,
                senders: HashMap::new(),
                putters: HashMap::new(),
                publishers: HashMap::new(),
            }),
            idle: Notify::new(),
            rearm: Notify::new(),
            deleted: CancellationToken::new(),
            spec,
        });
        queues.insert(handle.spec.name.clone(), Arc::clone(&handle));
        tokio::spawn(run_timer(self.clone(), Arc::clone(&handle)));
        handle
    }

    pub fn queue(&self, name: &str) -> Result<Arc<QueueHandle>> {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::QueueNotFound(name.to_owned()))
    }

    /// Every queue, by name.
    pub fn queues(&self) -> Vec<Arc<QueueHandle>> {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Deletes a queue; returns how many unfinished tasks went with it.
    /// Everyone waiting on it is woken and fails with ABORTED. A durable
    /// queue is deleted only once its deletion is in the log: if the log
    /// refuses it, the queue stays as it was.
    pub async fn delete_queue(&self, name: &str, if_empty: bool) -> Result<u64> {
        let _defs = self.inner.defs.lock().await;
        let handle = self.queue(name)?;
        let (discarded, durability) = {
            let mut sh = handle.lock();
            let discarded = sh.state.unfinished();
            if if_empty && discarded > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "queue {name:?} holds {discarded} unfinished tasks"
                )));
            }
            // From here no call stores into it; its log record follows
            // every change it logged.
            sh.deleted = true;
            let durability = match (&self.inner.log, handle.spec.durable) {
                (Some(log), true) => Some(log.append(vec![durable::delete(name)])),
                _ => None,
            };
            (discarded, durability)
        };
        if let Some(d) = durability
            && let Err(e) = d.await
        {
            handle.lock().deleted = false;
            return Err(e.into());
        }
        {
            let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
            let mut sh = handle.lock();
            sh.senders.clear();
            sh.putters.clear();
            sh.publishers.clear();
            sh.released = true;
            self.inner
                .held_bytes
                .fetch_sub(sh.state.held_bytes(), Ordering::SeqCst);
            if handle.spec.durable {
                self.inner
                    .durable_live
                    .fetch_sub(live_estimate(&sh.state) + DEFINE_BYTES, Ordering::Relaxed);
            }
            queues.remove(name);
        }
        handle.deleted.cancel();
        handle.idle.notify_waiters();
        tracing::info!(queue = %name, discarded, "queue deleted");
        Ok(discarded)
    }

    // ------------------------------------------------------------ engine calls

    /// Runs one engine call on a queue and carries out its effects: routes
    /// deliveries, wakes admitted producers, joiners and the timer, logs
    /// a durable queue's changes, and forwards dead tasks (after the lock
    /// is released).
    pub fn apply<R>(
        &self,
        q: &QueueHandle,
        f: impl FnOnce(&mut Shared, Millis, &mut Effects) -> R,
    ) -> R {
        self.apply_with(q, LogAs::default(), f).0
    }

    /// [`Broker::apply`], also returning the log append of the call's
    /// changes (None when nothing was logged), for callers that must not
    /// answer before it is durable.
    pub fn apply_logged<R>(
        &self,
        q: &QueueHandle,
        f: impl FnOnce(&mut Shared, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        let how = LogAs {
            wait: true,
            ..LogAs::default()
        };
        self.apply_with(q, how, f)
    }

    /// [`Broker::apply_logged`] for a call that adds tasks: its append is
    /// refused (as on a full disk) unless the log keeps room to compact.
    pub fn apply_growing<R>(
        &self,
        q: &QueueHandle,
        f: impl FnOnce(&mut Shared, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        let how = LogAs {
            wait: true,
            grows: true,
            moved: None,
        };
        self.apply_with(q, how, f)
    }

    fn apply_with<R>(
        &self,
        q: &QueueHandle,
        how: LogAs,
        f: impl FnOnce(&mut Shared, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        let mut fx = Effects::default();
        let now = now_ms();
        let mut deferred = Vec::new();
        let keep_free = if how.grows && q.spec.durable {
            self.keep_free()
        } else {
            0
        };
        let (r, durability) = {
            let mut sh = q.lock();
            let held_before = sh.state.held_bytes();
            let live_before = live_estimate(&sh.state);
            let r = f(&mut sh, now, &mut fx);
            if !sh.released {
                add_diff(&self.inner.held_bytes, held_before, sh.state.held_bytes());
                if q.spec.durable {
                    let live_after = live_estimate(&sh.state);
                    add_diff(&self.inner.durable_live, live_before, live_after);
                }
            }
            let durability = match &self.inner.log {
                Some(log) if !fx.changes.is_empty() || how.moved.is_some() => {
                    // A task moving to a dead letter queue leaves this one
                    // in the log in the same record that stores it there
                    // (see `forward_dead`): one atomic record, so neither
                    // a crash nor a refused append can lose it between.
                    if q.spec.dead_letter.is_some() && !fx.dead.is_empty() {
                        let moving: std::collections::HashSet<TaskId> = fx
                            .dead
                            .iter()
                            .filter(|d| d.reason != DeadReason::Dropped)
                            .map(|d| d.id)
                            .collect();
                        fx.changes.retain(|c| match c {
                            Change::Removed { id } if moving.contains(id) => {
                                deferred.push(c.clone());
                                false
                            }
                            _ => true,
                        });
                    }
                    let mut parts: Vec<(&str, &[Change])> = Vec::new();
                    if !fx.changes.is_empty() {
                        parts.push((q.name(), &fx.changes));
                    }
                    if let Some(m) = &how.moved {
                        parts.push((&m.from, &m.changes));
                    }
                    match parts.as_slice() {
                        [] => None,
                        _ if !how.wait && fx.admitted.is_empty() => {
                            let record = durable::batch(&parts);
                            if let Err(e) = log.append_nowait(vec![record]) {
                                tracing::warn!(queue = %q.name(), error = %e, "change not logged");
                            }
                            None
                        }
                        _ => {
                            let record = durable::batch(&parts);
                            let append = log.append_keeping(vec![record], keep_free);
                            if fx.admitted.is_empty() {
                                Some((
                                    Box::pin(async move { append.await.map(|_| ()) }) as Durability,
                                    None,
                                ))
                            } else {
                                // Producers admitted by this call wait for
                                // this call's append too: share its outcome.
                                let (tx, rx) = watch::channel(None);
                                tokio::spawn(async move {
                                    let _ = tx.send(Some(append.await.map(|_| ())));
                                });
                                Some((Box::pin(wait_ticket(rx.clone())) as Durability, Some(rx)))
                            }
                        }
                    }
                }
                _ => None,
            };
            let (durability, ticket) = match durability {
                Some((d, t)) => (Some(d), t),
                None => (None, None),
            };
            route(&mut sh, &mut fx, ticket);
            // Job events are logged under this queue's lock, right after
            // the queue's own changes (lock order: queue, then jobs).
            let durable = q.spec.durable;
            if !fx.job_stored.is_empty() {
                self.inner
                    .jobs
                    .stored(q.name(), &fx.job_stored, now, durable);
            }
            if !fx.completed.is_empty() {
                self.inner.jobs.completed(
                    q.name(),
                    std::mem::take(&mut fx.completed),
                    now,
                    durable,
                );
            }
            if fx.rearm {
                q.rearm.notify_one();
            }
            if sh.state.unfinished() == 0 {
                q.idle.notify_waiters();
            }
            (r, durability)
        };
        if !fx.dead.is_empty() {
            self.forward_dead(q, std::mem::take(&mut fx.dead), deferred);
        }
        (r, durability)
    }

    /// Moves dead tasks to the queue's dead letter queue, if it has one that
    /// exists; otherwise they are dropped (already counted in `dead_total`).
    /// `removed` holds their removal from `from`'s log, logged here: in
    /// one record with their copies in the dead letter queue, or alone if
    /// they are dropped.
    fn forward_dead(&self, from: &QueueHandle, dead: Vec<DeadTask>, removed: Vec<Change>) {
        for d in &dead {
            tracing::warn!(
                queue = %from.name(), task = d.id.0, attempts = d.attempts,
                reason = ?d.reason, error = %d.error, "task dead"
            );
        }
        let Some(dlq_name) = &from.spec.dead_letter else {
            return;
        };
        let dead: Vec<DeadTask> = dead
            .into_iter()
            .filter(|d| d.reason != DeadReason::Dropped)
            .collect();
        if dead.is_empty() {
            return;
        }
        let moved = (!removed.is_empty()).then(|| Moved {
            from: from.name().to_owned(),
            changes: removed,
        });
        // A fresh id: the copy starts again at attempt 1, and reusing the
        // id would let an old lease token of the original settle it.
        let first = self.task_ids(dead.len() as u64);
        let tasks: Vec<NewTask> = dead
            .into_iter()
            .enumerate()
            .map(|(i, d)| dead_letter_task(from.name(), TaskId(first.0 + i as u64), d))
            .collect();
        let n = tasks.len();
        let stored = match self.queue(dlq_name) {
            Ok(dlq) => {
                let how = LogAs {
                    moved,
                    ..LogAs::default()
                };
                self.apply_with(&dlq, how, |sh, now, fx| {
                    if sh.deleted {
                        return false;
                    }
                    sh.state.enqueue_forced(now, tasks, fx);
                    true
                })
                .0
            }
            Err(_) => {
                if let (Some(log), Some(m)) = (&self.inner.log, moved) {
                    // Failure is logged by the writer; the task then comes
                    // back from the log after a restart (at least once).
                    drop(log.append(vec![durable::changes(&m.from, &m.changes)]));
                }
                false
            }
        };
        if !stored {
            tracing::warn!(
                queue = %from.name(), dead_letter = %dlq_name, dropped = n,
                "dead letter queue does not exist; dead tasks dropped"
            );
        }
    }

    // ------------------------------------------------------------ waiting operations

    /// Stores a batch. With `wait`, waits in line for space until
    /// `deadline`; without, a full queue is an error at once. A batch in
    /// line counts against the memory budget, and holds no idempotency
    /// key: its keys are checked again (and taken) when it is stored.
    pub async fn enqueue(
        &self,
        q: &Arc<QueueHandle>,
        tasks: Vec<NewTask>,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Stored> {
        self.check_open()?;
        let reservation = self.reserve_memory(tasks.iter().map(NewTask::held_bytes).sum())?;
        let first_id = tasks.first().map_or(TaskId(0), |t| t.id);
        let n = tasks.len() as u64;
        let putter = PutterId(self.inner.next_putter.fetch_add(1, Ordering::Relaxed));
        let (tx, mut rx) = oneshot::channel();
        let mode = if wait {
            EnqueueMode::Wait(putter)
        } else {
            EnqueueMode::FailFast
        };
        let started = Instant::now();
        let ((res, depth, mut duplicates, retry_after_ms), durability) =
            self.apply_growing(q, |sh, now, fx| {
                if sh.deleted {
                    return (Err(None), 0, Vec::new(), 0);
                }
                let r = sh.state.enqueue(now, tasks, mode, fx);
                if let Ok(Enqueued::Waiting(p)) = r {
                    sh.putters.insert(p, tx);
                }
                let retry = match r {
                    Err(EnqueueError::Full) => sh.state.retry_after_ms(now, n),
                    _ => 0,
                };
                (
                    r.map_err(Some),
                    sh.state.depth(),
                    std::mem::take(&mut fx.duplicates),
                    retry,
                )
            });
        let capacity = q.spec.config.capacity;
        let stored = |depth, duplicates| {
            self.inner.enqueue_wait.observe(started.elapsed());
            Stored {
                first_id,
                duplicates,
                depth,
                capacity,
                waited_ms: started.elapsed().as_millis() as u64,
            }
        };
        match res {
            Ok(Enqueued::Stored) => {
                drop(reservation);
                // Confirmed only once on disk (durable queues).
                if let Some(d) = durability
                    && let Err(e) = d.await
                {
                    self.retract(q, first_id, n);
                    return Err(e.into());
                }
                return Ok(stored(depth, duplicates));
            }
            Ok(Enqueued::Waiting(_)) => {}
            Err(None) => return Err(Error::QueueDeleted(q.name().to_owned())),
            Err(Some(EnqueueError::Full)) => {
                return Err(Error::QueueFull {
                    queue: q.name().to_owned(),
                    depth,
                    capacity,
                    retry_after_ms,
                });
            }
            Err(Some(e @ EnqueueError::BatchTooLarge { .. })) => {
                return Err(Error::invalid(e.to_string()));
            }
        }

        // Leave the line if this future is dropped (client gone).
        let mut guard = PutterGuard {
            broker: self,
            q,
            putter,
            armed: true,
        };
        let outcome = tokio::select! {
            biased;
            r = &mut rx => match r {
                Ok(admission) => Ok(admission),
                Err(_) => Err(Error::QueueDeleted(q.name().to_owned())),
            },
            _ = q.deleted.cancelled() => Err(Error::QueueDeleted(q.name().to_owned())),
            _ = self.inner.shutdown.cancelled() => Err(Error::ShuttingDown),
            _ = sleep_until_opt(deadline) => Err(Error::DeadlineExceeded {
                waited_ms: started.elapsed().as_millis() as u64,
                what: format!("waiting for space in queue {:?}", q.name()),
            }),
        };
        guard.armed = false;
        let admission = match outcome {
            Ok(admission) => admission,
            Err(e) => {
                // The batch may have been admitted in the instant between
                // the wake-up and here: then it is stored and we say so.
                let left = self.apply(q, |sh, now, fx| {
                    sh.putters.remove(&putter);
                    sh.state.cancel_put(now, putter, fx)
                });
                if left || q.deleted.is_cancelled() {
                    return Err(e);
                }
                match rx.try_recv() {
                    Ok(admission) => admission,
                    Err(_) => return Err(e),
                }
            }
        };
        // Stored now: its bytes are in the queue's count.
        drop(reservation);
        duplicates.extend(admission.duplicates);
        if let Some(t) = admission.ticket
            && let Err(e) = wait_ticket(t).await
        {
            self.retract(q, first_id, n);
            return Err(e.into());
        }
        Ok(stored(
            self.apply(q, |sh, _, _| sh.state.depth()),
            duplicates,
        ))
    }

    /// Undoes an enqueue the log refused: its tasks (ids `first..first+n`)
    /// leave the queue unless a consumer already has them.
    pub(crate) fn retract(&self, q: &QueueHandle, first: TaskId, n: u64) {
        let ids: std::collections::HashSet<TaskId> = (0..n).map(|i| TaskId(first.0 + i)).collect();
        let removed = self.apply(q, |sh, now, fx| sh.state.retract(now, &ids, fx));
        if removed < n {
            tracing::warn!(
                queue = %q.name(), refused = n, delivered = n - removed,
                "enqueue refused by the log, but some of its tasks were already delivered"
            );
        }
    }

    /// Takes up to `max` ready tasks under detached leases, waiting up to
    /// `wait` for the first.
    pub async fn get(
        &self,
        q: &Arc<QueueHandle>,
        max: u64,
        wait: Duration,
        peer: String,
    ) -> Result<Vec<Delivery>> {
        self.check_open()?;
        let cid = self.consumer_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let open = self.apply(q, |sh, now, fx| {
            if sh.deleted {
                return false;
            }
            sh.state.add_consumer(cid, "get".into(), peer, true, now);
            sh.senders.insert(cid, tx);
            sh.state.grant(now, cid, max, fx);
            true
        });
        if !open {
            return Err(Error::QueueDeleted(q.name().to_owned()));
        }
        let mut guard = GetGuard {
            broker: self,
            q,
            cid,
            rx,
            armed: true,
        };
        let mut out = Vec::new();
        while let Ok(batch) = guard.rx.try_recv() {
            out.extend(batch);
        }
        if out.is_empty() && !wait.is_zero() {
            tokio::select! {
                Some(batch) = guard.rx.recv() => out.extend(batch),
                _ = tokio::time::sleep(wait) => {}
                _ = q.deleted.cancelled() => {}
                _ = self.inner.shutdown.cancelled() => {}
            }
        }
        // Leave first, then take whatever arrived meanwhile: nothing
        // delivered to this call is dropped.
        guard.armed = false;
        self.apply(q, |sh, now, fx| {
            sh.senders.remove(&cid);
            sh.state.remove_consumer(now, cid, fx);
        });
        while let Ok(batch) = guard.rx.try_recv() {
            out.extend(batch);
        }
        if out.is_empty() && q.deleted.is_cancelled() {
            return Err(Error::QueueDeleted(q.name().to_owned()));
        }
        // One answer fits a default client: what would take it past
        // FRAME_BYTES goes back, undelivered (at least one task goes).
        let mut bytes = 0usize;
        let keep = out
            .iter()
            .position(|d| {
                bytes += d.body.payload.len();
                bytes > FRAME_BYTES
            })
            .map_or(out.len(), |i| i.max(1));
        if keep < out.len() {
            let back = out.split_off(keep);
            self.apply(q, |sh, now, fx| {
                for d in back {
                    let _ = sh.state.unsend(now, d.id, d.attempt, fx);
                }
            });
        }
        Ok(out)
    }

    /// Returns once the queue has no unfinished task.
    pub async fn join(&self, q: &Arc<QueueHandle>, deadline: Option<Instant>) -> Result<u64> {
        let started = Instant::now();
        loop {
            let notified = q.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake-up in between is not lost.
            notified.as_mut().enable();
            let (unfinished, acked) = {
                let sh = q.lock();
                (sh.state.unfinished(), sh.state.stats().acked_total)
            };
            if unfinished == 0 && !q.deleted.is_cancelled() {
                return Ok(acked);
            }
            tokio::select! {
                // Woken only when the queue reached zero unfinished tasks:
                // that moment is what join waits for, even if new tasks
                // arrived since (as asyncio's join()).
                _ = notified => {
                    if !q.deleted.is_cancelled() {
                        let acked = q.lock().state.stats().acked_total;
                        return Ok(acked);
                    }
                }
                _ = q.deleted.cancelled() => return Err(Error::QueueDeleted(q.name().to_owned())),
                _ = self.inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
                _ = sleep_until_opt(deadline) => return Err(Error::DeadlineExceeded {
                    waited_ms: started.elapsed().as_millis() as u64,
                    what: format!("waiting for queue {:?} to drain ({unfinished} tasks unfinished)", q.name()),
                }),
            }
        }
    }

    /// Registers a streaming consumer; its deliveries arrive on the
    /// returned receiver. The caller removes it when it leaves (see
    /// `consume::Session`).
    pub fn add_consumer(
        &self,
        q: &QueueHandle,
        name: String,
        peer: String,
    ) -> Result<(ConsumerId, DeliveryRx)> {
        self.check_open()?;
        let limits = self.limits();
        // Taken atomically, so concurrent subscribes cannot all pass a
        // check of the same count; given back below if the queue refuses.
        if self
            .inner
            .streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limits.max_consumers).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Error::LimitReached(format!(
                "the broker serves its limit of {} consumers (--max-consumers)",
                limits.max_consumers
            )));
        }
        let cid = self.consumer_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let open = self.apply(q, |sh, now, _| {
            if sh.deleted {
                return Some(false);
            }
            if sh.state.consumer_count() >= limits.max_consumers_per_queue {
                return None;
            }
            sh.state.add_consumer(cid, name, peer, false, now);
            sh.senders.insert(cid, tx);
            Some(true)
        });
        match open {
            Some(true) => Ok((cid, rx)),
            Some(false) => {
                self.stream_closed();
                Err(Error::QueueDeleted(q.name().to_owned()))
            }
            None => {
                self.stream_closed();
                Err(Error::LimitReached(format!(
                    "queue {:?} has its limit of {} consumers (--max-consumers-per-queue)",
                    q.name(),
                    limits.max_consumers_per_queue
                )))
            }
        }
    }
}

/// Waits for the outcome an append's watcher publishes.
async fn wait_ticket(mut rx: Ticket) -> Result<(), StorageError> {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return Err(StorageError::Closed);
        }
    }
}

/// Sends each consumer its deliveries as one batch, and wakes admitted
/// producers (handing them the append of their batch, if logged). Runs
/// under the queue lock; nothing here blocks.
fn route(sh: &mut Shared, fx: &mut Effects, ticket: Option<Ticket>) {
    if !fx.deliveries.is_empty() {
        // Few consumers per call: a linear scan beats a map here.
        let mut batches: Vec<(ConsumerId, Vec<Delivery>)> = Vec::new();
        for (cid, d) in fx.deliveries.drain(..) {
            match batches.iter_mut().find(|(c, _)| *c == cid) {
                Some((_, b)) => b.push(d),
                None => batches.push((cid, vec![d])),
            }
        }
        for (cid, batch) in batches {
            // A closed receiver means the consumer is on its way out; its
            // removal returns these tasks to ready.
            if let Some(tx) = sh.senders.get(&cid) {
                let _ = tx.send(batch);
            }
        }
    }
    for (id, n) in fx.granted.drain(..) {
        if let Some(tx) = sh.publishers.get(&id) {
            let _ = tx.send(n);
        }
    }
    for a in fx.admitted.drain(..) {
        if let Some(tx) = sh.putters.remove(&a.id) {
            // A dropped receiver is a producer that gave up in the same
            // instant; its enqueue path sees the batch stored.
            let _ = tx.send(Admission {
                ticket: ticket.clone(),
                duplicates: a.duplicates,
            });
        }
    }
}

/// Wakes the engine when its earliest deadline (lease expiry, delayed task)
/// comes, for as long as the queue exists.
async fn run_timer(broker: Broker, q: Arc<QueueHandle>) {
    loop {
        let next = q.lock().state.next_deadline();
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = at.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = q.deleted.cancelled() => return,
            _ = q.rearm.notified() => {}
            _ = sleep => broker.apply(&q, |sh, now, fx| sh.state.tick(now, fx)),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Moves `counter` by `after - before`.
fn add_diff(counter: &AtomicU64, before: u64, after: u64) {
    if after == before {
        return;
    }
    if after > before {
        counter.fetch_add(after - before, Ordering::SeqCst);
    } else {
        counter.fetch_sub(before - after, Ordering::SeqCst);
    }
}

/// What a durable queue's live tasks take in a compacted log, roughly.
fn live_estimate(state: &QueueState) -> u64 {
    state.held_bytes() + RECORD_OVERHEAD * state.unfinished()
}

/// Payload bytes per answer frame, as a Consume frame: well under gRPC's
/// common 4 MiB default receive limit.
pub const FRAME_BYTES: usize = 1024 * 1024;

/// A durable queue's dead letters must survive what it survives: it may
/// not name a non-durable dead letter queue, nor may a non-durable queue
/// take the name a durable queue sends its dead letters to.
fn check_dead_letters(queues: &BTreeMap<String, Arc<QueueHandle>>, spec: &QueueSpec) -> Result<()> {
    if spec.durable
        && let Some(dlq) = spec.dead_letter.as_ref().and_then(|d| queues.get(d))
        && !dlq.spec.durable
    {
        return Err(Error::invalid(format!(
            "durable queue {:?} cannot send its dead letters to non-durable queue {:?}: \
             they would be lost on restart; make {:?} durable",
            spec.name, dlq.spec.name, dlq.spec.name
        )));
    }
    if !spec.durable
        && let Some(source) = queues
            .values()
            .find(|q| q.spec.durable && q.spec.dead_letter.as_deref() == Some(spec.name.as_str()))
    {
        return Err(Error::invalid(format!(
            "queue {:?} is the dead letter queue of durable queue {:?}, so it must be durable too",
            spec.name, source.spec.name
        )));
    }
    Ok(())
}

fn dead_letter_task(from: &str, id: TaskId, d: DeadTask) -> NewTask {
    let mut headers = d.body.headers.map(|h| *h).unwrap_or_default();
    headers.insert("x-sluice-dead-from".into(), from.to_owned());
    headers.insert(
        "x-sluice-dead-id".into(),
        crate::validate::task_id_str(d.id),
    );
    headers.insert("x-sluice-dead-attempts".into(), d.attempts.to_string());
    let reason = match d.reason {
        DeadReason::MaxAttempts => "max-attempts",
        DeadReason::Rejected => "rejected",
        DeadReason::Dropped => "dropped",
    };
    headers.insert("x-sluice-dead-reason".into(), reason.into());
    if !d.error.is_empty() {
        headers.insert("x-sluice-dead-error".into(), d.error);
    }
    NewTask {
        id,
        payload: d.body.payload,
        headers,
        priority: d.priority,
        delay_ms: 0,
        key: None,
        job: None,
    }
}

fn describe_diff(a: &QueueSpec, b: &QueueSpec) -> String {
    let mut diffs = Vec::new();
    let (x, y) = (&a.config, &b.config);
    if x.capacity != y.capacity {
        diffs.push(format!("capacity {} vs {}", x.capacity, y.capacity));
    }
    if x.order != y.order {
        diffs.push(format!("order {:?} vs {:?}", x.order, y.order));
    }
    if x.ack_deadline_ms != y.ack_deadline_ms {
        diffs.push(format!(
            "ack_deadline_ms {} vs {}",
            x.ack_deadline_ms, y.ack_deadline_ms
        ));
    }
    if x.max_attempts != y.max_attempts {
        diffs.push(format!(
            "max_attempts {} vs {}",
            x.max_attempts, y.max_attempts
        ));
    }
    if x.retry != y.retry {
        diffs.push(format!("retry backoff {:?} vs {:?}", x.retry, y.retry));
    }
    if a.durable != b.durable {
        diffs.push(format!("durable {} vs {}", a.durable, b.durable));
    }
    if a.dead_letter != b.dead_letter {
        diffs.push(format!(
            "dead_letter {:?} vs {:?}",
            a.dead_letter.as_deref().unwrap_or(""),
            b.dead_letter.as_deref().unwrap_or("")
        ));
    }
    format!("existing vs requested: {}", diffs.join(", "))
}

/// Takes a waiting producer out of line when its call is dropped.
struct PutterGuard<'a> {
    broker: &'a Broker,
    q: &'a QueueHandle,
    putter: PutterId,
    armed: bool,
}

impl Drop for PutterGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let p = self.putter;
            self.broker.apply(self.q, |sh, now, fx| {
                sh.putters.remove(&p);
                sh.state.cancel_put(now, p, fx);
            });
        }
    }
}

/// When a waiting Get is dropped (client gone), leaves the queue and gives
/// back whatever was delivered to it but never sent.
struct GetGuard<'a> {
    broker: &'a Broker,
    q: &'a QueueHandle,
    cid: ConsumerId,
    rx: DeliveryRx,
    armed: bool,
}

impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let cid = self.cid;
        let rx = &mut self.rx;
        self.broker.apply(self.q, |sh, now, fx| {
            sh.senders.remove(&cid);
            sh.state.remove_consumer(now, cid, fx);
            while let Ok(batch) = rx.try_recv() {
                for d in batch {
                    let _ = sh.state.unsend(now, d.id, d.attempt, fx);
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
