//! `QueueState`: the ready set, delayed set, leases, waiting producers and
//! consumers of one queue, and every transition between them.
//!
//! Task states: `delayed -> ready -> leased -> done | ready (retry) | dead`.
//! Capacity counts ready + delayed (what has not been taken, as asyncio's
//! `maxsize`); a task coming back from a lease is always taken back, even
//! above capacity, since it already had its place.
//!
//! The parts with invariants of their own live beside it: the key index
//! (`keys`), publishers' reservations (`publishers`), the drain meter
//! (`drain`); and the transitions by who makes them: consumers and
//! delivery (`consumers`), settling leases (`settle`).

mod consumers;
mod digest;
mod drain;
mod image;
mod keys;
mod marks;
mod publishers;
mod settle;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Ids are the broker's own counters, never chosen by clients, so a fast
// non-keyed hash is safe here (SipHash was ~9% of the broker's work).
use rustc_hash::FxHashMap as HashMap;

use crate::flow::Bucket;
use crate::groups::Ready;
use crate::ready::Entry;
use crate::{
    Change, Completion, ConsumerId, DeadReason, Effects, EnqueueError, EnqueueMode, Enqueued, Hold,
    Millis, NewTask, ProducerSeq, PublisherId, QueueConfig, QueueStats, Restored, TaskBody, TaskId,
    WaitingId,
};
use drain::DrainMeter;
pub use image::{
    ImageConsumer, ImageKey, ImageLease, ImagePublisher, ImageTask, ImageWaiting, QueueImage,
};
pub use keys::KEY_OVERHEAD;
use keys::KeyIndex;
pub use marks::{ImageMark, MarkedBatch};
use marks::{Marks, Seen};
pub use publishers::PublishError;
use publishers::Publishers;

/// A task out with a consumer.
#[derive(Debug)]
struct Lease {
    entry: Entry,
    /// `NO_OWNER` for leases taken by `Get`: they outlive the call.
    owner: ConsumerId,
    deadline: Millis,
    since: Millis,
}

/// Consumer ids start at 1; 0 marks a lease nobody's stream holds.
const NO_OWNER: ConsumerId = ConsumerId(0);

fn owner_of(owner: ConsumerId) -> Option<ConsumerId> {
    (owner != NO_OWNER).then_some(owner)
}

#[derive(Debug)]
struct WaitingBatch {
    id: WaitingId,
    tasks: Vec<NewTask>,
    at: Millis,
    /// Some task has a key: checked again before the batch is stored.
    keyed: bool,
    /// Its tasks found to be duplicates so far: (new id, holder).
    dups: Vec<(TaskId, TaskId)>,
    /// Who sent it, as which of its batches (see `marks`).
    producer: Option<Producer>,
}

/// A producer's batch as its mark will record it: the batch's first id and
/// size as sent, before any of its tasks turned out duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Producer {
    pub seq: ProducerSeq,
    pub first: TaskId,
    pub n: u32,
}

#[derive(Debug)]
struct Consumer {
    name: String,
    peer: String,
    connected_at: Millis,
    credit: u64,
    /// Whether its leases stay when it leaves (Get calls) or go back to
    /// ready at once (streams).
    detached: bool,
    /// Leased task -> delivered at.
    in_flight: HashMap<TaskId, Millis>,
    delivered: u64,
    acked: u64,
    nacked: u64,
    processing_ms_total: u64,
    in_ring: bool,
}

/// The state of one queue. See the module docs for the model.
///
/// Each task is in exactly one of `ready`, `delayed` or `leased`, which own
/// it; there is no index beside them (a deep queue would pay for it per
/// task). Only leased tasks are looked up by id, for settlement.
#[derive(Debug)]
pub struct QueueState {
    config: QueueConfig,
    /// Ready tasks, by group.
    ready: Ready,
    delayed: BTreeMap<(Millis, TaskId), Entry>,
    leased: HashMap<TaskId, Lease>,
    /// Lease deadlines, for expiry in order.
    deadlines: BTreeSet<(Millis, TaskId)>,
    waiting: VecDeque<WaitingBatch>,
    waiting_tasks: u64,
    consumers: HashMap<ConsumerId, Consumer>,
    /// Consumers with credit, in round-robin order; each at most once.
    ring: VecDeque<ConsumerId>,
    next_seq: u64,
    stats: QueueStats,
    /// Record [`Change`]s in the effects (durable queues only: the others
    /// pay nothing for it).
    journal: bool,
    /// Last nack's error text of tasks that have one, for their dead
    /// letter. Beside the tasks rather than in them: few tasks fail, and a
    /// field in every task would cost every task.
    errors: HashMap<TaskId, Box<str>>,
    /// Delayed tasks that wait out a retry (for stats).
    retrying: rustc_hash::FxHashSet<TaskId>,
    /// Idempotency keys in use, by unfinished tasks and by done ones still
    /// in their window.
    keys: KeyIndex,
    /// Producers' recent batches, by sequence number.
    marks: Marks,
    drained: DrainMeter,
    publishers: Publishers,
    /// The job of each unfinished task that has one (beside the tasks).
    task_jobs: HashMap<TaskId, Box<str>>,
    /// Bytes held beside the payloads (counted in `stats.payload_bytes`)
    /// and the keys (counted by `keys`): headers of unfinished tasks and
    /// their job ids. With those: what a client made this queue keep, for
    /// the broker's memory budget.
    extra_bytes: u64,
    /// A nack's throttle holds every delivery until then; 0: none.
    throttled_until: Millis,
    /// The rate limit's bucket.
    bucket: Bucket,
    /// When delivery held by the rate limit or the throttle may go on:
    /// the timer wakes then.
    flow_wake: Option<Millis>,
}

/// The earlier of two optional times.
fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Header names and values of a task: bytes a client made the broker keep.
fn header_bytes(h: &super::Headers) -> u64 {
    h.as_ref().map_or(0, |m| {
        m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    })
}

impl QueueState {
    /// Makes every later call record its [`Change`]s in the effects.
    pub fn keep_journal(&mut self) {
        self.journal = true;
    }

    /// Puts recovered tasks back, in id order (their arrival order):
    /// ready, or delayed while `due` is ahead of `now`. Capacity is not
    /// checked — they were all accepted once.
    pub fn restore(&mut self, now: Millis, mut tasks: Vec<Restored>, fx: &mut Effects) {
        tasks.sort_by_key(|t| t.id);
        for t in tasks {
            let entry = Entry {
                id: t.id,
                body: t.body,
                seq: self.next_seq,
                priority: t.priority,
                attempt: t.attempt,
            };
            self.next_seq += 1;
            self.add_bytes(&entry.body);
            if let Some(key) = t.key {
                self.keys.restore(t.id, key);
            }
            if let Some(job) = t.job {
                self.job_link(t.id, job);
            }
            self.ready.assign(t.id, t.group.as_deref());
            if t.due > now {
                self.delay(t.due, entry, fx);
            } else {
                self.ready.push_new(entry);
            }
        }
    }

    fn record(&self, fx: &mut Effects, change: impl FnOnce() -> Change) {
        if self.journal {
            fx.changes.push(change());
        }
    }

    /// A task's payload and headers are now held.
    fn add_bytes(&mut self, body: &TaskBody) {
        self.stats.payload_bytes += body.payload.len() as u64;
        self.extra_bytes += header_bytes(&body.headers);
    }

    /// A task's payload and headers are no longer held.
    fn sub_bytes(&mut self, body: &TaskBody) {
        self.stats.payload_bytes = self
            .stats
            .payload_bytes
            .saturating_sub(body.payload.len() as u64);
        self.extra_bytes = self.extra_bytes.saturating_sub(header_bytes(&body.headers));
    }

    fn job_link(&mut self, id: TaskId, job: Box<str>) {
        self.extra_bytes += job.len() as u64;
        self.task_jobs.insert(id, job);
    }

    fn job_unlink(&mut self, id: TaskId) -> Option<Box<str>> {
        let job = self.task_jobs.remove(&id)?;
        self.extra_bytes = self.extra_bytes.saturating_sub(job.len() as u64);
        Some(job)
    }

    /// Every byte a client made this queue keep: payloads, headers, keys
    /// and job ids; see `extra_bytes`.
    pub fn held_bytes(&self) -> u64 {
        self.stats.payload_bytes
            + self.extra_bytes
            + self.keys.bytes()
            + self.marks.bytes()
            + self.ready.bytes()
    }

    /// [`QueueState::held_bytes`] counted from scratch, for tests that
    /// check the running count.
    #[cfg(test)]
    pub fn recount_held(&self) -> u64 {
        let tasks: u64 = self
            .ready
            .iter()
            .chain(self.delayed.values())
            .chain(self.leased.values().map(|l| &l.entry))
            .map(|e| e.body.payload.len() as u64 + header_bytes(&e.body.headers))
            .sum();
        let jobs: u64 = self.task_jobs.values().map(|j| j.len() as u64).sum();
        tasks + jobs + self.keys.recount() + self.marks.bytes() + self.ready.bytes()
    }

    pub fn new(config: QueueConfig) -> Self {
        QueueState {
            ready: Ready::new(config.order, config.group_max_in_flight),
            keys: KeyIndex::new(config.key_window_ms),
            marks: Marks::new(config.key_window_ms),
            config,
            delayed: BTreeMap::new(),
            leased: HashMap::default(),
            deadlines: BTreeSet::new(),
            waiting: VecDeque::new(),
            waiting_tasks: 0,
            consumers: HashMap::default(),
            ring: VecDeque::new(),
            next_seq: 0,
            stats: QueueStats::default(),
            journal: false,
            errors: HashMap::default(),
            retrying: Default::default(),
            drained: DrainMeter::default(),
            publishers: Publishers::default(),
            task_jobs: HashMap::default(),
            extra_bytes: 0,
            throttled_until: 0,
            bucket: Bucket::default(),
            flow_wake: None,
        }
    }

    /// Free capacity: neither waiting in the queue nor reserved.
    fn room(&self) -> u64 {
        self.config
            .capacity
            .saturating_sub(self.depth() + self.publishers.reserved())
    }

    // ----------------------------------------------------------- publishers

    /// A producer opens a Publish stream wanting to hold up to `window`
    /// tasks (capped at the capacity); it is granted what is free.
    pub(crate) fn add_publisher(
        &mut self,
        now: Millis,
        id: PublisherId,
        window: u64,
        fx: &mut Effects,
    ) {
        self.publishers
            .add(id, window.clamp(1, self.config.capacity));
        self.dispatch(now, fx);
    }

    /// The stream ended: its reserved space is free again.
    pub(crate) fn remove_publisher(&mut self, now: Millis, id: PublisherId, fx: &mut Effects) {
        if self.publishers.remove(id) {
            self.dispatch(now, fx);
        }
    }

    /// Stores tasks a publisher sends against its credit: never refused
    /// for space, since the space was reserved.
    pub(crate) fn publish(
        &mut self,
        now: Millis,
        id: PublisherId,
        tasks: Vec<NewTask>,
        fx: &mut Effects,
    ) -> Result<(), PublishError> {
        self.publishers.spend(id, tasks.len() as u64)?;
        let tasks = self.keys.take(now, tasks, &mut fx.duplicates);
        self.store(now, tasks, fx);
        self.dispatch(now, fx);
        Ok(())
    }

    /// The credit a publisher holds unused while others wait for space
    /// (waiting Enqueue calls, or publishers that get no credit for want
    /// of room); None when it holds none or nobody waits.
    pub fn publisher_blocking(&self, id: PublisherId) -> Option<u64> {
        self.publishers
            .blocking(id, self.room(), !self.waiting.is_empty())
    }

    /// The publisher's tasks up to `n` are confirmed to it: its window
    /// has room for more credit.
    pub(crate) fn publish_confirmed(
        &mut self,
        now: Millis,
        id: PublisherId,
        n: u64,
        fx: &mut Effects,
    ) {
        if self.publishers.confirmed(id, n) {
            self.dispatch(now, fx);
        }
    }

    /// Tasks taken per second, over the last few seconds.
    pub fn drain_rate(&self, now: Millis) -> f64 {
        self.drained.rate(now)
    }

    /// How long until a batch of `n` would likely fit, at the observed
    /// drain rate (a second when nothing drains: a guess, said as one).
    pub fn retry_after_ms(&self, now: Millis, n: u64) -> u64 {
        let needed = (self.depth() + self.publishers.reserved() + self.waiting_tasks + n)
            .saturating_sub(self.config.capacity);
        let rate = self.drain_rate(now);
        if rate <= 0.0 {
            return 1000;
        }
        ((needed.max(1) as f64 / rate) * 1000.0)
            .ceil()
            .clamp(1.0, 3_600_000.0) as u64
    }

    /// A task is done: its key (if any) stays taken for the key window,
    /// and the timer must wake to forget it, even on an idle queue.
    fn key_done(&mut self, now: Millis, id: TaskId, fx: &mut Effects) {
        if self.keys.no_task_keyed() {
            return;
        }
        let next = self.next_deadline();
        if let Some(until) = self.keys.done(now, id)
            && next.is_none_or(|d| until < d)
        {
            fx.rearm = true;
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Ready + delayed: what counts against capacity.
    pub fn depth(&self) -> u64 {
        (self.ready.len() + self.delayed.len()) as u64
    }

    /// Payload bytes of the unfinished tasks.
    pub fn payload_bytes(&self) -> u64 {
        self.stats.payload_bytes
    }

    /// Consumers (streams and waiting Get calls).
    pub fn consumer_count(&self) -> u64 {
        self.consumers.len() as u64
    }

    /// Ready + delayed + leased: what Join waits on.
    pub fn unfinished(&self) -> u64 {
        self.depth() + self.leased.len() as u64
    }

    /// The earliest moment `tick` has work: a delayed task due or a lease
    /// deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        let d = self.delayed.keys().next().map(|(t, _)| *t);
        let l = self.deadlines.first().map(|(t, _)| *t);
        let k = self.keys.next_expiry();
        let g = self.ready.next_release();
        // By hand, not an iterator over the five: this runs on every
        // delivery (a lease's deadline may be the earliest).
        earliest(earliest(earliest(d, l), earliest(k, g)), self.flow_wake)
    }

    // ------------------------------------------------------------ producing

    /// Adds a batch, all or none. Waiting producers are served in arrival
    /// order: a new batch queues behind them even if it would fit now.
    #[cfg(test)]
    pub(crate) fn enqueue(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        fx: &mut Effects,
    ) -> Result<Enqueued, EnqueueError> {
        self.enqueue_as(now, tasks, mode, None, fx)
    }

    /// [`QueueState::enqueue`] of a producer's numbered batch: one it sent
    /// before is answered as then (see `marks`).
    pub(crate) fn enqueue_as(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        producer: Option<ProducerSeq>,
        fx: &mut Effects,
    ) -> Result<Enqueued, EnqueueError> {
        let batch = tasks.len() as u64;
        if batch > self.config.capacity {
            return Err(EnqueueError::BatchTooLarge {
                batch,
                capacity: self.config.capacity,
            });
        }
        let producer = match producer {
            None => None,
            Some(seq) => match self.marks.seen(&seq, tasks.len()) {
                Seen::New => Some(Producer {
                    first: tasks.first().map_or(TaskId(0), |t| t.id),
                    n: tasks.len() as u32,
                    seq,
                }),
                Seen::Stored(ids) => {
                    // Sent again: answered as the first time, even on a full
                    // queue, and nothing stored.
                    fx.duplicates.extend(tasks.iter().map(|t| t.id).zip(ids));
                    return Ok(Enqueued::Stored);
                }
                Seen::Reused { tasks: was } => {
                    return Err(EnqueueError::SequenceReused {
                        seq: seq.seq,
                        was,
                        now: batch,
                    });
                }
            },
        };
        let mut dups = Vec::new();
        let tasks = self.keys.drop_held(now, tasks, &mut dups);
        let batch = tasks.len() as u64;
        if batch == 0 {
            self.mark(now, producer, &dups);
            fx.duplicates.extend(dups);
            return Ok(Enqueued::Stored);
        }
        if self.waiting.is_empty() && batch <= self.room() {
            let tasks = self.keys.take(now, tasks, &mut dups);
            self.mark(now, producer, &dups);
            fx.duplicates.extend(dups);
            self.store(now, tasks, fx);
            self.dispatch(now, fx);
            return Ok(Enqueued::Stored);
        }
        match mode {
            EnqueueMode::FailFast => Err(EnqueueError::Full),
            EnqueueMode::Wait(id) => {
                // Its keys are checked again, and taken, when it is stored;
                // so is its producer's mark.
                fx.duplicates.extend(dups);
                self.waiting_tasks += batch;
                let keyed = tasks.iter().any(|t| t.key.is_some());
                self.waiting.push_back(WaitingBatch {
                    id,
                    tasks,
                    at: now,
                    keyed,
                    dups: Vec::new(),
                    producer,
                });
                Ok(Enqueued::Waiting(id))
            }
        }
    }

    /// Records that a producer's batch is stored, `dups` of its tasks as
    /// other tasks' ids.
    fn mark(&mut self, now: Millis, producer: Option<Producer>, dups: &[(TaskId, TaskId)]) {
        if let Some(p) = producer {
            self.marks.record(now, &p.seq, p.first, p.n, dups.to_vec());
        }
    }

    /// A waiting producer gave up (deadline, cancel). Returns false when it
    /// was not waiting (already admitted, or unknown).
    pub(crate) fn cancel_put(&mut self, now: Millis, id: WaitingId, fx: &mut Effects) -> bool {
        let Some(pos) = self.waiting.iter().position(|p| p.id == id) else {
            return false;
        };
        if let Some(p) = self.waiting.remove(pos) {
            self.waiting_tasks -= p.tasks.len() as u64;
        }
        // A large batch at the head may have been holding smaller ones back.
        self.dispatch(now, fx);
        true
    }

    /// Stores tasks regardless of capacity and of waiting producers: for
    /// dead letters, which were already accepted once and must not be lost
    /// because their new queue is full.
    pub(crate) fn enqueue_forced(&mut self, now: Millis, tasks: Vec<NewTask>, fx: &mut Effects) {
        self.store(now, tasks, fx);
        self.dispatch(now, fx);
    }

    /// Every unfinished task as a [`Change::Stored`] carrying its current
    /// attempt, priority and due time: what a compacted log must hold for
    /// this queue. Leased tasks are included (a restart makes them ready).
    pub fn snapshot(&self) -> Vec<Change> {
        let stored = |e: &Entry, due: Millis| Change::Stored {
            id: e.id,
            body: e.body.clone(),
            priority: e.priority,
            due,
            attempt: e.attempt,
            key: self.keys.of(e.id).map(Box::from),
            job: self.task_jobs.get(&e.id).cloned(),
            group: self.ready.group_of(e.id).map(Box::from),
        };
        let mut out: Vec<Change> = Vec::with_capacity(self.unfinished() as usize);
        // (stats.payload_bytes is kept up to date by every path in and out.)
        out.extend(self.ready.iter().map(|e| stored(e, 0)));
        out.extend(self.delayed.iter().map(|((due, _), e)| stored(e, *due)));
        out.extend(self.leased.values().map(|l| stored(&l.entry, 0)));
        // Throttles after the tasks: a group's throttle finds its group.
        if self.throttled_until > 0 {
            out.push(Change::Throttled {
                group: None,
                until: self.throttled_until,
            });
        }
        out.extend(
            self.ready
                .throttled()
                .into_iter()
                .map(|(name, until)| Change::Throttled {
                    group: Some(name),
                    until,
                }),
        );
        out
    }

    /// Takes back tasks whose enqueue could not be made durable (the log
    /// failed): those still waiting are removed as if never stored. One a
    /// consumer already took stays with it. Returns how many were removed.
    /// Slow (a scan of the queue), and only for that failure.
    pub(crate) fn retract(
        &mut self,
        now: Millis,
        ids: &std::collections::HashSet<TaskId>,
        fx: &mut Effects,
    ) -> u64 {
        let before = self.depth();
        let mut bodies = Vec::new();
        let mut removed = Vec::new();
        self.ready.retain(|e| {
            let keep = !ids.contains(&e.id);
            if !keep {
                bodies.push(e.body.clone());
                removed.push(e.id);
            }
            keep
        });
        self.delayed.retain(|(_, id), e| {
            let keep = !ids.contains(id);
            if !keep {
                bodies.push(e.body.clone());
                removed.push(*id);
            }
            keep
        });
        for body in &bodies {
            self.sub_bytes(body);
        }
        // Keys and job links of the removed tasks only: one a consumer
        // already holds keeps them.
        for id in &removed {
            self.job_unlink(*id);
            self.keys.retract(*id);
            self.ready.forget(*id);
        }
        self.marks.retract(ids);
        let n = before - self.depth();
        self.stats.enqueued_total -= n;
        // The space is free again for waiting producers.
        self.dispatch(now, fx);
        n
    }

    /// The waiting batches' ids, in line order.
    fn waiting_ids(&self) -> Vec<WaitingId> {
        self.waiting.iter().map(|w| w.id).collect()
    }

    /// The publishers' ids, in id order.
    fn publisher_ids(&self) -> Vec<PublisherId> {
        self.publishers.ids()
    }

    /// When the oldest waiting producer started waiting.
    pub fn oldest_waiting_since(&self) -> Option<Millis> {
        self.waiting.front().map(|p| p.at)
    }

    fn store(&mut self, now: Millis, tasks: Vec<NewTask>, fx: &mut Effects) {
        for t in tasks {
            let entry = Entry {
                id: t.id,
                body: TaskBody {
                    payload: t.payload,
                    headers: (!t.headers.is_empty()).then(|| Box::new(t.headers)),
                    enqueued_at: now,
                },
                seq: self.next_seq,
                priority: t.priority,
                attempt: 0,
            };
            self.next_seq += 1;
            self.stats.enqueued_total += 1;
            self.add_bytes(&entry.body);
            let due = if t.delay_ms > 0 {
                now.saturating_add(t.delay_ms)
            } else {
                0
            };
            self.record(fx, || Change::Stored {
                id: entry.id,
                body: entry.body.clone(),
                priority: entry.priority,
                due,
                attempt: 0,
                key: t.key.clone(),
                job: t.job.clone(),
                group: t.group.clone(),
            });
            self.ready.assign(entry.id, t.group.as_deref());
            if let Some(key) = &t.key {
                fx.keys_stored.push(key.clone());
            }
            if let Some(job) = t.job {
                fx.job_stored.push(job.clone());
                self.job_link(entry.id, job);
            }
            if due > 0 {
                self.delay(due, entry, fx);
            } else {
                self.ready.push_new(entry);
            }
        }
    }

    fn delay(&mut self, due: Millis, entry: Entry, fx: &mut Effects) {
        if self.next_deadline().is_none_or(|d| due < d) {
            fx.rearm = true;
        }
        self.delayed.insert((due, entry.id), entry);
    }

    fn schedule_lease(&mut self, deadline: Millis, id: TaskId, fx: &mut Effects) {
        if self.next_deadline().is_none_or(|d| deadline < d) {
            fx.rearm = true;
        }
        self.deadlines.insert((deadline, id));
    }

    /// Stores waiting batches, oldest first, while the oldest fits. Returns
    /// whether any was stored.
    fn admit_waiting(&mut self, now: Millis, fx: &mut Effects) -> bool {
        let mut admitted_any = false;
        while let Some(mut p) = self.waiting.pop_front() {
            if let Some(producer) = &p.producer
                && let Seen::Stored(ids) = self.marks.seen(&producer.seq, producer.n as usize)
            {
                // The same batch, sent again meanwhile, was stored first:
                // this one is answered its ids and stores nothing.
                self.waiting_tasks -= p.tasks.len() as u64;
                let first = producer.first.0;
                let duplicates = (first..first + u64::from(producer.n))
                    .map(TaskId)
                    .zip(ids)
                    .collect();
                fx.admitted.push(super::Admitted {
                    id: p.id,
                    duplicates,
                });
                admitted_any = true;
                continue;
            }
            if p.keyed {
                // Tasks whose key a stored task took meanwhile need no
                // room: they are answered that task's id.
                let before = p.tasks.len();
                p.tasks = self
                    .keys
                    .drop_held(now, std::mem::take(&mut p.tasks), &mut p.dups);
                self.waiting_tasks -= (before - p.tasks.len()) as u64;
            }
            let n = p.tasks.len() as u64;
            if n > self.room() {
                self.waiting.push_front(p);
                break;
            }
            self.waiting_tasks -= n;
            let mut duplicates = p.dups;
            let tasks = self.keys.take(now, p.tasks, &mut duplicates);
            self.mark(now, p.producer, &duplicates);
            self.store(now, tasks, fx);
            fx.admitted.push(super::Admitted {
                id: p.id,
                duplicates,
            });
            admitted_any = true;
        }
        admitted_any
    }

    /// Up to `limit` waiting tasks (ready or delayed) with ids above
    /// `after`, by id: a page of the queue for people to look at. Changes
    /// nothing; scans the queue (a deep queue pays for it).
    pub fn browse(&self, after: Option<TaskId>, limit: usize) -> Vec<crate::Browsed> {
        let mut page: std::collections::BinaryHeap<(TaskId, Option<Millis>)> =
            std::collections::BinaryHeap::new();
        let waiting = self
            .ready
            .iter()
            .map(|e| (e.id, None))
            .chain(self.delayed.keys().map(|(due, id)| (*id, Some(*due))));
        for (id, due) in waiting {
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            page.push((id, due));
            if page.len() > limit {
                page.pop();
            }
        }
        let mut page = page.into_sorted_vec();
        page.truncate(limit);
        let ready: HashMap<TaskId, &Entry> = match page.iter().any(|(_, d)| d.is_none()) {
            true => self.ready.iter().map(|e| (e.id, e)).collect(),
            false => HashMap::default(),
        };
        page.into_iter()
            .filter_map(|(id, due)| {
                let e = match due {
                    None => *ready.get(&id)?,
                    Some(d) => self.delayed.get(&(d, id))?,
                };
                Some(crate::Browsed {
                    id,
                    body: e.body.clone(),
                    priority: e.priority,
                    attempt: e.attempt,
                    due,
                    key: self.keys.of(id).map(Box::from),
                    job: self.task_jobs.get(&id).cloned(),
                    group: self.ready.group_of(id).map(Box::from),
                    error: self.errors.get(&id).cloned(),
                })
            })
            .collect()
    }

    /// Removes the waiting tasks among `ids` as [`QueueState::purge`]
    /// removes all of them; returns how many went.
    pub(crate) fn remove(&mut self, now: Millis, ids: &[TaskId], fx: &mut Effects) -> u64 {
        let wanted: rustc_hash::FxHashSet<TaskId> = ids.iter().copied().collect();
        let mut gone: Vec<(TaskId, TaskBody, u32)> = Vec::new();
        self.ready.retain(|e| {
            let keep = !wanted.contains(&e.id);
            if !keep {
                gone.push((e.id, e.body.clone(), e.attempt));
            }
            keep
        });
        self.delayed.retain(|(_, id), e| {
            let keep = !wanted.contains(id);
            if !keep {
                gone.push((*id, e.body.clone(), e.attempt));
            }
            keep
        });
        gone.sort_unstable_by_key(|(id, _, _)| *id);
        for (id, body, attempts) in &gone {
            self.record(fx, || Change::Removed { id: *id });
            self.errors.remove(id);
            self.retrying.remove(id);
            self.let_go(now, *id, body, *attempts, "removed", fx);
        }
        let n = gone.len() as u64;
        self.stats.purged_total += n;
        self.dispatch(now, fx);
        n
    }

    /// A waiting task taken out of the queue (purged, removed): its bytes,
    /// its job's outcome (a failure, `why`), its key and its group let go.
    fn let_go(
        &mut self,
        now: Millis,
        id: TaskId,
        body: &TaskBody,
        attempts: u32,
        why: &str,
        fx: &mut Effects,
    ) {
        self.sub_bytes(body);
        if !self.task_jobs.is_empty()
            && let Some(job) = self.job_unlink(id)
        {
            fx.completed.push(Completion {
                job,
                id,
                payload: body.payload.clone(),
                succeeded: false,
                result: bytes::Bytes::new(),
                error: why.into(),
                attempts,
            });
        }
        self.key_done(now, id, fx);
        self.ready.forget(id);
    }

    /// Removes every ready and delayed task. Leased tasks stay with their
    /// consumers.
    pub(crate) fn purge(&mut self, now: Millis, fx: &mut Effects) -> u64 {
        // In id order, not in the ready set's layout: what it reports
        // (changes, job outcomes) and the order keys expire in must be the
        // same on every replica, and a replica that installed a snapshot
        // lays its ready set out differently.
        let mut purged: Vec<(TaskId, TaskBody, u32)> = self
            .ready
            .iter()
            .chain(self.delayed.values())
            .map(|e| (e.id, e.body.clone(), e.attempt))
            .collect();
        purged.sort_unstable_by_key(|(id, _, _)| *id);
        if self.journal {
            fx.changes
                .extend(purged.iter().map(|(id, _, _)| Change::Removed { id: *id }));
        }
        for (id, body, attempts) in &purged {
            self.let_go(now, *id, body, *attempts, "purged", fx);
        }
        let n = self.ready.clear() + self.delayed.len() as u64;
        self.delayed.clear();
        let leased = &self.leased;
        self.errors.retain(|id, _| leased.contains_key(id));
        self.retrying.clear();
        self.stats.purged_total += n;
        self.dispatch(now, fx);
        n
    }

    // ------------------------------------------------------------ consuming
    /// Brings the queue to rest after a change: delivers what credit allows,
    /// which frees capacity, which admits waiting producers, whose tasks may
    /// be delivered in turn. A loop, not recursion, so a long line of small
    /// producers cannot grow the stack.
    fn dispatch(&mut self, now: Millis, fx: &mut Effects) {
        loop {
            self.deliver(now, fx);
            if self.waiting.is_empty() || !self.admit_waiting(now, fx) {
                break;
            }
        }
        // Waiting Enqueue calls queued before: publishers get room only
        // when none is waiting, or a one-slot-at-a-time grant would keep a
        // waiting batch out for ever.
        if !self.publishers.is_empty() && self.waiting.is_empty() {
            let room = self.room();
            if room > 0 {
                fx.granted.extend(self.publishers.grant(room));
            }
        }
    }

    // ------------------------------------------------------------ time

    /// Releases delayed tasks that are due and expires leases past their
    /// deadline, then dispatches.
    pub(crate) fn tick(&mut self, now: Millis, fx: &mut Effects) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let e = entry.remove();
            if !self.retrying.is_empty() {
                self.retrying.remove(&e.id);
            }
            self.ready.push_returned(e);
        }
        self.keys.expire(now);
        self.marks.expire(now);
        self.ready.release(now);
        if self.flow_wake.is_some_and(|w| w <= now) {
            self.flow_wake = None;
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(lease) = self.take_lease(id) else {
                self.deadlines.remove(&(deadline, id));
                continue;
            };
            self.stats.expired_total += 1;
            self.retry_or_dead(now, lease.entry, None, None, DeadReason::MaxAttempts, fx);
        }
        self.dispatch(now, fx);
    }

    // ------------------------------------------------------------ stats

    pub fn stats(&self) -> QueueStats {
        let (groups, groups_held) = self.ready.counts();
        QueueStats {
            groups,
            groups_held,
            throttled_until: self.throttled_until,
            ready: self.ready.len() as u64,
            delayed: self.delayed.len() as u64,
            leased: self.leased.len() as u64,
            waiting_producers: self.waiting.len() as u64,
            waiting_tasks: self.waiting_tasks,
            consumers: self.consumers.len() as u64,
            credit: self.consumers.values().map(|c| c.credit).sum(),
            retrying: self.retrying.len() as u64,
            publishers: self.publishers.len(),
            reserved: self.publishers.reserved(),
            ..self.stats.clone()
        }
    }

    /// Why ready tasks are not being delivered at `now`: every reason
    /// that applies (none when nothing is ready).
    pub fn holds(&self, now: Millis) -> Vec<Hold> {
        let mut out = Vec::new();
        if self.ready.is_empty() {
            return out;
        }
        if self.config.paused {
            out.push(Hold::Paused);
        }
        if self.throttled_until > now {
            out.push(Hold::Throttled {
                until: self.throttled_until,
            });
        }
        if self.at_in_flight_cap() {
            out.push(Hold::InFlightCap);
        }
        if let Some(r) = &self.config.rate
            && !self.bucket.conforms(r, now)
        {
            out.push(Hold::RateLimited {
                until: self.bucket.next_at(r),
            });
        }
        if !self.ready.deliverable() {
            out.push(Hold::GroupsHeld);
        }
        if !self.consumers.values().any(|c| c.credit > 0) {
            out.push(Hold::NoCredit);
        }
        out
    }

    /// `max_in_flight` tasks are leased.
    fn at_in_flight_cap(&self) -> bool {
        self.config.max_in_flight > 0 && self.leased.len() as u64 >= self.config.max_in_flight
    }

    /// The groups with ready tasks, most ready first, at most `limit`.
    pub fn group_stats(&self, limit: usize) -> Vec<crate::GroupStats> {
        self.ready.group_stats(limit)
    }

    /// New options, in force at once: a raised capacity admits waiting
    /// producers, raised caps and a resume deliver. The order and the key
    /// window stay as created. `lift_throttles`: end every nack throttle
    /// (a resume).
    pub(crate) fn configure(
        &mut self,
        now: Millis,
        mut config: QueueConfig,
        lift_throttles: bool,
        fx: &mut Effects,
    ) {
        config.order = self.config.order;
        config.key_window_ms = self.config.key_window_ms;
        if config.rate != self.config.rate {
            self.bucket.retune(now);
        }
        if lift_throttles {
            self.throttled_until = 0;
            self.ready.lift_throttles();
        }
        self.ready.set_cap(config.group_max_in_flight);
        self.config = config;
        self.dispatch(now, fx);
    }

    /// Holds deliveries (the whole queue, or task `id`'s group) until
    /// `until`, for a nack's throttle. Never shortens a hold.
    fn throttle(&mut self, id: TaskId, until: Millis, group: bool, fx: &mut Effects) {
        let earlier = self.next_deadline().is_none_or(|d| until < d);
        let changed = match group {
            true => self.ready.throttle(id, until),
            false if until > self.throttled_until => {
                self.throttled_until = until;
                true
            }
            false => false,
        };
        if changed {
            let group = group.then(|| Box::from(self.ready.group_of(id).unwrap_or("")));
            self.record(fx, || Change::Throttled { group, until });
        }
        if changed && earlier {
            fx.rearm = true;
        }
    }

    /// Puts back throttles recovered from the log (see
    /// [`Change::Throttled`]); those over by `now` are dropped.
    pub fn restore_throttles(&mut self, now: Millis, throttles: Vec<(Option<Box<str>>, Millis)>) {
        for (group, until) in throttles {
            if until <= now {
                continue;
            }
            match group {
                None => self.throttled_until = self.throttled_until.max(until),
                Some(name) => self.ready.throttle_named(&name, until),
            }
        }
    }
}
