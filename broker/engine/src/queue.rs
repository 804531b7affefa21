//! `QueueState`: the ready set, delayed set, leases, waiting producers and
//! consumers of one queue, and every transition between them.
//!
//! Task states: `delayed -> ready -> leased -> done | ready (retry) | dead`.
//! Capacity counts ready + delayed (what has not been taken, as asyncio's
//! `maxsize`); a task coming back from a lease is always taken back, even
//! above capacity, since it already had its place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Ids are the broker's own counters, never chosen by clients, so a fast
// non-keyed hash is safe here (SipHash was ~9% of the broker's work).
use rustc_hash::FxHashMap as HashMap;

use super::ready::{Entry, ReadySet};
use super::{
    Change, Claim, Completion, ConsumerId, ConsumerStats, DeadReason, DeadTask, Delivery, Effects,
    EnqueueError, EnqueueMode, Enqueued, Millis, NackAction, NewTask, PublisherId, PutterId,
    QueueConfig, QueueStats, Restored, SettleError, TaskBody, TaskId,
};

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
struct Putter {
    id: PutterId,
    tasks: Vec<NewTask>,
    at: Millis,
    /// Some task has a key: checked again before the batch is stored.
    keyed: bool,
    /// Its tasks found to be duplicates so far: (new id, holder).
    dups: Vec<(TaskId, TaskId)>,
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
    ready: ReadySet,
    delayed: BTreeMap<(Millis, TaskId), Entry>,
    leased: HashMap<TaskId, Lease>,
    /// Lease deadlines, for expiry in order.
    deadlines: BTreeSet<(Millis, TaskId)>,
    putters: VecDeque<Putter>,
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
    /// Idempotency keys in use: by unfinished tasks (`done` None), or by
    /// tasks done less than the key window ago.
    keys: HashMap<Box<str>, KeyUse>,
    /// The key of each unfinished keyed task (beside the tasks: most have
    /// none).
    task_keys: HashMap<TaskId, Box<str>>,
    /// Keys of done tasks, in the order their windows end.
    key_expiry: VecDeque<(Millis, Box<str>, TaskId)>,
    /// Deliveries per second over the last seconds: (second, count).
    drained: VecDeque<(Millis, u64)>,
    publishers: HashMap<PublisherId, Publisher>,
    /// The job of each unfinished task that has one (beside the tasks).
    task_jobs: HashMap<TaskId, Box<str>>,
    /// Publishers in the order they are next served when space frees.
    pub_ring: VecDeque<PublisherId>,
    /// Capacity reserved for publishers: counts as taken.
    reserved: u64,
    /// Bytes held beside the payloads (counted in `stats.payload_bytes`):
    /// headers of unfinished tasks, their job ids, and idempotency keys
    /// (of unfinished tasks and of done ones still in their window), each
    /// key with [`KEY_OVERHEAD`]. With the payloads: what a client made
    /// this queue keep, for the broker's memory budget.
    extra_bytes: u64,
}

/// What remembering one idempotency key costs beyond its own bytes (its
/// map entries), counted against the memory budget.
pub const KEY_OVERHEAD: u64 = 64;

/// Header names and values of a task: bytes a client made the broker keep.
fn header_bytes(h: &super::Headers) -> u64 {
    h.as_ref().map_or(0, |m| {
        m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    })
}

/// A producer on a Publish stream. It holds `reserved` slots of capacity
/// (its credit) and `pending` tasks sent but not yet confirmed; the broker
/// tops `reserved + pending` up to `window` as space frees, so a producer
/// never has more than `window` tasks unconfirmed.
#[derive(Debug)]
struct Publisher {
    window: u64,
    reserved: u64,
    pending: u64,
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// The producer sent more than the credit it holds.
    OverCredit { sent: u64, credit: u64 },
    /// No such publisher.
    Unknown,
}

/// Seconds of deliveries the drain rate is measured over.
const DRAIN_WINDOW_S: u64 = 10;

#[derive(Debug, Clone, Copy)]
struct KeyUse {
    id: TaskId,
    /// When its task was done; None while unfinished.
    done: Option<Millis>,
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
                self.key_insert(
                    key.clone(),
                    KeyUse {
                        id: t.id,
                        done: None,
                    },
                );
                self.task_keys.insert(t.id, key);
            }
            if let Some(job) = t.job {
                self.job_link(t.id, job);
            }
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

    fn key_insert(&mut self, key: Box<str>, usage: KeyUse) {
        let bytes = key.len() as u64 + KEY_OVERHEAD;
        if self.keys.insert(key, usage).is_none() {
            self.extra_bytes += bytes;
        }
    }

    fn key_remove(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.extra_bytes = self
                .extra_bytes
                .saturating_sub(key.len() as u64 + KEY_OVERHEAD);
        }
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
        self.stats.payload_bytes + self.extra_bytes
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
        let keys: u64 = self
            .keys
            .keys()
            .map(|k| k.len() as u64 + KEY_OVERHEAD)
            .sum();
        tasks + jobs + keys
    }

    pub fn new(config: QueueConfig) -> Self {
        QueueState {
            ready: ReadySet::new(config.order),
            config,
            delayed: BTreeMap::new(),
            leased: HashMap::default(),
            deadlines: BTreeSet::new(),
            putters: VecDeque::new(),
            waiting_tasks: 0,
            consumers: HashMap::default(),
            ring: VecDeque::new(),
            next_seq: 0,
            stats: QueueStats::default(),
            journal: false,
            errors: HashMap::default(),
            retrying: Default::default(),
            keys: HashMap::default(),
            task_keys: HashMap::default(),
            key_expiry: VecDeque::new(),
            drained: VecDeque::new(),
            publishers: HashMap::default(),
            task_jobs: HashMap::default(),
            pub_ring: VecDeque::new(),
            reserved: 0,
            extra_bytes: 0,
        }
    }

    /// Free capacity: neither waiting in the queue nor reserved.
    fn room(&self) -> u64 {
        self.config
            .capacity
            .saturating_sub(self.depth() + self.reserved)
    }

    /// A producer opens a Publish stream wanting to hold up to `window`
    /// tasks (capped at the capacity); it is granted what is free.
    pub fn add_publisher(&mut self, now: Millis, id: PublisherId, window: u64, fx: &mut Effects) {
        let window = window.clamp(1, self.config.capacity);
        self.publishers.insert(
            id,
            Publisher {
                window,
                reserved: 0,
                pending: 0,
            },
        );
        self.pub_ring.push_back(id);
        self.dispatch(now, fx);
    }

    /// The stream ended: its reserved space is free again.
    pub fn remove_publisher(&mut self, now: Millis, id: PublisherId, fx: &mut Effects) {
        if let Some(p) = self.publishers.remove(&id) {
            self.reserved -= p.reserved;
            self.pub_ring.retain(|x| *x != id);
            self.dispatch(now, fx);
        }
    }

    /// Stores tasks a publisher sends against its credit: never refused
    /// for space, since the space was reserved.
    pub fn publish(
        &mut self,
        now: Millis,
        id: PublisherId,
        tasks: Vec<NewTask>,
        fx: &mut Effects,
    ) -> Result<(), PublishError> {
        let n = tasks.len() as u64;
        let p = self.publishers.get_mut(&id).ok_or(PublishError::Unknown)?;
        if n > p.reserved {
            return Err(PublishError::OverCredit {
                sent: n,
                credit: p.reserved,
            });
        }
        p.reserved -= n;
        p.pending += n;
        self.reserved -= n;
        let tasks = self.take_keys(now, tasks, &mut fx.duplicates);
        self.store(now, tasks, fx);
        self.dispatch(now, fx);
        Ok(())
    }

    /// The credit a publisher holds unused while others wait for space
    /// (waiting Enqueue calls, or publishers that get no credit for want
    /// of room); None when it holds none or nobody waits.
    pub fn publisher_blocking(&self, id: PublisherId) -> Option<u64> {
        let p = self.publishers.get(&id)?;
        if p.reserved == 0 {
            return None;
        }
        let starved = self.room() == 0
            && self
                .publishers
                .iter()
                .any(|(o, q)| *o != id && q.reserved == 0 && q.pending < q.window);
        (!self.putters.is_empty() || starved).then_some(p.reserved)
    }

    /// The publisher's tasks up to `n` are confirmed to it: its window
    /// has room for more credit.
    pub fn publish_confirmed(&mut self, now: Millis, id: PublisherId, n: u64, fx: &mut Effects) {
        if let Some(p) = self.publishers.get_mut(&id) {
            p.pending = p.pending.saturating_sub(n);
            self.dispatch(now, fx);
        }
    }

    /// Shares free space among publishers below their window, a slot at a
    /// time in turn, so producers on a full queue each get a share as it
    /// drains. Waiting Enqueue calls were served first (they queued before).
    fn grant_publishers(&mut self, fx: &mut Effects) {
        let mut room = self.room();
        if room == 0 || self.publishers.is_empty() {
            return;
        }
        let mut grants: Vec<(PublisherId, u64)> = Vec::new();
        let mut idle_rounds = 0;
        while room > 0 && idle_rounds < self.pub_ring.len() {
            let Some(id) = self.pub_ring.pop_front() else {
                break;
            };
            self.pub_ring.push_back(id);
            let Some(p) = self.publishers.get_mut(&id) else {
                idle_rounds += 1;
                continue;
            };
            if p.reserved + p.pending >= p.window {
                idle_rounds += 1;
                continue;
            }
            idle_rounds = 0;
            p.reserved += 1;
            self.reserved += 1;
            room -= 1;
            match grants.iter_mut().find(|(g, _)| *g == id) {
                Some((_, n)) => *n += 1,
                None => grants.push((id, 1)),
            }
        }
        fx.granted.extend(grants);
    }

    fn note_drained(&mut self, now: Millis) {
        let second = now / 1000;
        match self.drained.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => {
                self.drained.push_back((second, 1));
                while self
                    .drained
                    .front()
                    .is_some_and(|(s, _)| *s + DRAIN_WINDOW_S < second)
                {
                    self.drained.pop_front();
                }
            }
        }
    }

    /// Tasks taken per second, over the last few seconds.
    pub fn drain_rate(&self, now: Millis) -> f64 {
        let second = now / 1000;
        let mut recent = 0;
        let mut oldest = second;
        for (s, n) in &self.drained {
            if *s + DRAIN_WINDOW_S >= second {
                recent += n;
                oldest = oldest.min(*s);
            }
        }
        // Over the seconds actually seen, so a queue that started draining
        // a moment ago is not taken for a slow one.
        let span = (second - oldest + 1).clamp(1, DRAIN_WINDOW_S);
        recent as f64 / span as f64
    }

    /// How long until a batch of `n` would likely fit, at the observed
    /// drain rate (a second when nothing drains: a guess, said as one).
    pub fn retry_after_ms(&self, now: Millis, n: u64) -> u64 {
        let needed = (self.depth() + self.reserved + self.waiting_tasks + n)
            .saturating_sub(self.config.capacity);
        let rate = self.drain_rate(now);
        if rate <= 0.0 {
            return 1000;
        }
        ((needed.max(1) as f64 / rate) * 1000.0)
            .ceil()
            .clamp(1.0, 3_600_000.0) as u64
    }

    /// The task holding `key` now, if any (a done task's key counts until
    /// its window ends).
    fn key_holder(&self, now: Millis, key: &str) -> Option<TaskId> {
        let k = self.keys.get(key)?;
        match k.done {
            Some(done) if done.saturating_add(self.config.key_window_ms) <= now => None,
            _ => Some(k.id),
        }
    }

    /// Drops tasks whose key is taken (noting `(new id, holder)` in
    /// `dups`) and takes the keys of the others for them: within the
    /// batch, a second task with one key is a duplicate of the first.
    fn take_keys(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        dups: &mut Vec<(TaskId, TaskId)>,
    ) -> Vec<NewTask> {
        if tasks.iter().all(|t| t.key.is_none()) {
            return tasks;
        }
        let mut kept = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Some(key) = &t.key {
                if let Some(holder) = self.key_holder(now, key) {
                    dups.push((t.id, holder));
                    continue;
                }
                self.key_insert(
                    key.clone(),
                    KeyUse {
                        id: t.id,
                        done: None,
                    },
                );
                self.task_keys.insert(t.id, key.clone());
            }
            kept.push(t);
        }
        kept
    }

    /// Drops tasks whose key a stored task holds (noting them in `dups`),
    /// taking no key: for a batch about to wait in line, which must not
    /// hold keys, or a producer behind it would be answered an id that
    /// never exists if the waiting batch gives up.
    fn drop_held_keys(
        &self,
        now: Millis,
        tasks: Vec<NewTask>,
        dups: &mut Vec<(TaskId, TaskId)>,
    ) -> Vec<NewTask> {
        if tasks.iter().all(|t| t.key.is_none()) {
            return tasks;
        }
        tasks
            .into_iter()
            .filter(
                |t| match t.key.as_deref().and_then(|k| self.key_holder(now, k)) {
                    Some(holder) => {
                        dups.push((t.id, holder));
                        false
                    }
                    None => true,
                },
            )
            .collect()
    }

    /// A task is done: its key (if any) stays taken for the key window.
    fn key_done(&mut self, now: Millis, id: TaskId, fx: &mut Effects) {
        if self.task_keys.is_empty() {
            return;
        }
        if let Some(key) = self.task_keys.remove(&id)
            && let Some(k) = self.keys.get_mut(&key)
            && k.id == id
        {
            k.done = Some(now);
            let until = now.saturating_add(self.config.key_window_ms);
            // The timer must wake to forget it, even on an idle queue.
            if self.next_deadline().is_none_or(|d| until < d) {
                fx.rearm = true;
            }
            self.key_expiry.push_back((until, key, id));
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
        let k = self.key_expiry.front().map(|(t, _, _)| *t);
        [d, l, k].into_iter().flatten().min()
    }

    // ------------------------------------------------------------ producing

    /// Adds a batch, all or none. Waiting producers are served in arrival
    /// order: a new batch queues behind them even if it would fit now.
    pub fn enqueue(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        fx: &mut Effects,
    ) -> Result<Enqueued, EnqueueError> {
        let batch = tasks.len() as u64;
        if batch > self.config.capacity {
            return Err(EnqueueError::BatchTooLarge {
                batch,
                capacity: self.config.capacity,
            });
        }
        let mut dups = Vec::new();
        let tasks = self.drop_held_keys(now, tasks, &mut dups);
        let batch = tasks.len() as u64;
        if batch == 0 {
            fx.duplicates.extend(dups);
            return Ok(Enqueued::Stored);
        }
        if self.putters.is_empty() && batch <= self.room() {
            let tasks = self.take_keys(now, tasks, &mut dups);
            fx.duplicates.extend(dups);
            self.store(now, tasks, fx);
            self.dispatch(now, fx);
            return Ok(Enqueued::Stored);
        }
        match mode {
            EnqueueMode::FailFast => Err(EnqueueError::Full),
            EnqueueMode::Wait(id) => {
                // Its keys are checked again, and taken, when it is stored.
                fx.duplicates.extend(dups);
                self.waiting_tasks += batch;
                let keyed = tasks.iter().any(|t| t.key.is_some());
                self.putters.push_back(Putter {
                    id,
                    tasks,
                    at: now,
                    keyed,
                    dups: Vec::new(),
                });
                Ok(Enqueued::Waiting(id))
            }
        }
    }

    /// A waiting producer gave up (deadline, cancel). Returns false when it
    /// was not waiting (already admitted, or unknown).
    pub fn cancel_put(&mut self, now: Millis, id: PutterId, fx: &mut Effects) -> bool {
        let Some(pos) = self.putters.iter().position(|p| p.id == id) else {
            return false;
        };
        if let Some(p) = self.putters.remove(pos) {
            self.waiting_tasks -= p.tasks.len() as u64;
        }
        // A large batch at the head may have been holding smaller ones back.
        self.dispatch(now, fx);
        true
    }

    /// Stores tasks regardless of capacity and of waiting producers: for
    /// dead letters, which were already accepted once and must not be lost
    /// because their new queue is full.
    pub fn enqueue_forced(&mut self, now: Millis, tasks: Vec<NewTask>, fx: &mut Effects) {
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
            key: self.task_keys.get(&e.id).cloned(),
            job: self.task_jobs.get(&e.id).cloned(),
        };
        let mut out: Vec<Change> = Vec::with_capacity(self.unfinished() as usize);
        // (stats.payload_bytes is kept up to date by every path in and out.)
        out.extend(self.ready.iter().map(|e| stored(e, 0)));
        out.extend(self.delayed.iter().map(|((due, _), e)| stored(e, *due)));
        out.extend(self.leased.values().map(|l| stored(&l.entry, 0)));
        out
    }

    /// Takes back tasks whose enqueue could not be made durable (the log
    /// failed): those still waiting are removed as if never stored. One a
    /// consumer already took stays with it. Returns how many were removed.
    /// Slow (a scan of the queue), and only for that failure.
    pub fn retract(
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
            if let Some(key) = self.task_keys.remove(id)
                && self.keys.get(&key).is_some_and(|k| k.id == *id)
            {
                self.key_remove(&key);
            }
        }
        let n = before - self.depth();
        self.stats.enqueued_total -= n;
        // The space is free again for waiting producers.
        self.dispatch(now, fx);
        n
    }

    /// When the oldest waiting producer started waiting.
    pub fn oldest_putter_since(&self) -> Option<Millis> {
        self.putters.front().map(|p| p.at)
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
            });
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
    fn admit_putters(&mut self, now: Millis, fx: &mut Effects) -> bool {
        let mut admitted_any = false;
        while let Some(mut p) = self.putters.pop_front() {
            if p.keyed {
                // Tasks whose key a stored task took meanwhile need no
                // room: they are answered that task's id.
                let before = p.tasks.len();
                p.tasks = self.drop_held_keys(now, std::mem::take(&mut p.tasks), &mut p.dups);
                self.waiting_tasks -= (before - p.tasks.len()) as u64;
            }
            let n = p.tasks.len() as u64;
            if n > self.room() {
                self.putters.push_front(p);
                break;
            }
            self.waiting_tasks -= n;
            let mut duplicates = p.dups;
            let tasks = self.take_keys(now, p.tasks, &mut duplicates);
            self.store(now, tasks, fx);
            fx.admitted.push(super::Admitted {
                id: p.id,
                duplicates,
            });
            admitted_any = true;
        }
        admitted_any
    }

    /// Removes every ready and delayed task. Leased tasks stay with their
    /// consumers.
    pub fn purge(&mut self, now: Millis, fx: &mut Effects) -> u64 {
        if self.journal {
            let ids = self
                .ready
                .ids()
                .chain(self.delayed.keys().map(|(_, id)| *id));
            fx.changes.extend(ids.map(|id| Change::Removed { id }));
        }
        let bodies: Vec<TaskBody> = self
            .ready
            .iter()
            .chain(self.delayed.values())
            .map(|e| e.body.clone())
            .collect();
        for body in &bodies {
            self.sub_bytes(body);
        }
        if !self.task_jobs.is_empty() {
            let purged: Vec<(TaskId, bytes::Bytes, u32)> = self
                .ready
                .iter()
                .chain(self.delayed.values())
                .filter(|e| self.task_jobs.contains_key(&e.id))
                .map(|e| (e.id, e.body.payload.clone(), e.attempt))
                .collect();
            for (id, payload, attempts) in purged {
                if let Some(job) = self.job_unlink(id) {
                    fx.completed.push(Completion {
                        job,
                        id,
                        payload,
                        succeeded: false,
                        result: bytes::Bytes::new(),
                        error: "purged".into(),
                        attempts,
                    });
                }
            }
        }
        if !self.task_keys.is_empty() {
            let keyed: Vec<TaskId> = self
                .ready
                .ids()
                .chain(self.delayed.keys().map(|(_, id)| *id))
                .filter(|id| self.task_keys.contains_key(id))
                .collect();
            for id in keyed {
                self.key_done(now, id, fx);
            }
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

    /// Registers a consumer with no credit. `detached`: its leases survive
    /// it (Get calls); otherwise they return to ready when it leaves.
    pub fn add_consumer(
        &mut self,
        id: ConsumerId,
        name: String,
        peer: String,
        detached: bool,
        now: Millis,
    ) {
        self.consumers.insert(
            id,
            Consumer {
                name,
                peer,
                connected_at: now,
                credit: 0,
                detached,
                in_flight: HashMap::default(),
                delivered: 0,
                acked: 0,
                nacked: 0,
                processing_ms_total: 0,
                in_ring: false,
            },
        );
    }

    /// Adds credit and delivers what it allows. Returns the consumer's
    /// unspent credit afterwards, or None for an unknown consumer.
    pub fn grant(
        &mut self,
        now: Millis,
        id: ConsumerId,
        credit: u64,
        fx: &mut Effects,
    ) -> Option<u64> {
        let c = self.consumers.get_mut(&id)?;
        c.credit = c.credit.saturating_add(credit);
        if c.credit > 0 && !c.in_ring {
            c.in_ring = true;
            self.ring.push_back(id);
        }
        self.dispatch(now, fx);
        self.consumers.get(&id).map(|c| c.credit)
    }

    /// Drops a consumer's unspent credit: nothing more is delivered to it
    /// until it grants again. Returns the leases it still holds.
    pub fn revoke(&mut self, id: ConsumerId) -> Option<u64> {
        let c = self.consumers.get_mut(&id)?;
        // Its ring entry, if any, is skipped and dropped by `deliver`.
        c.credit = 0;
        Some(c.in_flight.len() as u64)
    }

    /// Leases a consumer holds.
    pub fn in_flight(&self, id: ConsumerId) -> u64 {
        self.consumers
            .get(&id)
            .map_or(0, |c| c.in_flight.len() as u64)
    }

    /// Unspent credit of a consumer.
    pub fn credit(&self, id: ConsumerId) -> Option<u64> {
        self.consumers.get(&id).map(|c| c.credit)
    }

    /// The consumer left. Tasks it held return to ready at once (unless it
    /// was detached); its unspent credit disappears with it.
    pub fn remove_consumer(&mut self, now: Millis, id: ConsumerId, fx: &mut Effects) {
        let Some(c) = self.consumers.remove(&id) else {
            return;
        };
        if c.in_ring {
            self.ring.retain(|x| *x != id);
        }
        let mut held: Vec<TaskId> = c.in_flight.into_keys().collect();
        // Keep the outcome independent of hash order.
        held.sort_unstable();
        for task in held {
            if self.leased.get(&task).is_some_and(|l| l.owner == id)
                && let Some(lease) = self.take_lease(task)
            {
                // A lost consumer is not the task's failure to wait out:
                // ready again at once, no backoff.
                self.retry_or_dead(now, lease.entry, Some(0), None, DeadReason::MaxAttempts, fx);
            }
        }
        self.dispatch(now, fx);
    }

    /// Brings the queue to rest after a change: delivers what credit allows,
    /// which frees capacity, which admits waiting producers, whose tasks may
    /// be delivered in turn. A loop, not recursion, so a long line of small
    /// producers cannot grow the stack.
    fn dispatch(&mut self, now: Millis, fx: &mut Effects) {
        loop {
            self.deliver(now, fx);
            if self.putters.is_empty() || !self.admit_putters(now, fx) {
                break;
            }
        }
        // Waiting Enqueue calls queued before: publishers get room only
        // when none is waiting, or a one-slot-at-a-time grant would keep a
        // waiting batch out for ever.
        if !self.publishers.is_empty() && self.putters.is_empty() {
            self.grant_publishers(fx);
        }
    }

    /// Hands ready tasks to consumers with credit, one at a time in
    /// round-robin order, until either runs out.
    fn deliver(&mut self, now: Millis, fx: &mut Effects) {
        while !self.ready.is_empty() {
            let Some(cid) = self.ring.pop_front() else {
                break;
            };
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if c.credit == 0 {
                c.in_ring = false;
                continue;
            }
            let Some(mut entry) = self.ready.pop() else {
                self.ring.push_front(cid);
                break;
            };
            let deadline = now.saturating_add(self.config.ack_deadline_ms);
            // Saturating: with unlimited attempts a wrap would reissue an
            // old lease token.
            entry.attempt = entry.attempt.saturating_add(1);
            c.credit -= 1;
            c.delivered += 1;
            if !c.detached {
                c.in_flight.insert(entry.id, now);
            }
            if c.credit > 0 {
                self.ring.push_back(cid);
            } else {
                c.in_ring = false;
            }
            let owner = if c.detached { NO_OWNER } else { cid };
            fx.deliveries.push((
                cid,
                Delivery {
                    id: entry.id,
                    body: entry.body.clone(),
                    attempt: entry.attempt,
                    deadline,
                    priority: entry.priority,
                    key: if self.task_keys.is_empty() {
                        None
                    } else {
                        self.task_keys.get(&entry.id).cloned()
                    },
                    job: if self.task_jobs.is_empty() {
                        None
                    } else {
                        self.task_jobs.get(&entry.id).cloned()
                    },
                },
            ));
            self.stats.delivered_total += 1;
            self.note_drained(now);
            let id = entry.id;
            if self.journal {
                fx.changes.push(Change::Attempt {
                    id,
                    attempt: entry.attempt,
                });
            }
            self.leased.insert(
                id,
                Lease {
                    entry,
                    owner,
                    deadline,
                    since: now,
                },
            );
            self.schedule_lease(deadline, id, fx);
        }
    }

    // ------------------------------------------------------------ settling

    /// Removes a lease and its indexes (deadline, owner's in-flight set).
    fn take_lease(&mut self, id: TaskId) -> Option<Lease> {
        let lease = self.leased.remove(&id)?;
        self.deadlines.remove(&(lease.deadline, id));
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.in_flight.remove(&id);
        }
        Some(lease)
    }

    /// Checks a lease token and ends the lease. A token that matches no
    /// current lease — expired, redelivered, settled, never issued, or
    /// claimed by a stream that does not hold it — is refused and changes
    /// nothing.
    fn end_lease(&mut self, id: TaskId, attempt: u32, claim: Claim) -> Result<Lease, SettleError> {
        if !self.holds(id, attempt, claim) {
            return Err(SettleError::StaleLease);
        }
        self.take_lease(id).ok_or(SettleError::StaleLease)
    }

    /// Whether `claim` may settle the lease `(id, attempt)` now.
    fn holds(&self, id: TaskId, attempt: u32, claim: Claim) -> bool {
        match self.leased.get(&id) {
            Some(l) if l.entry.attempt == attempt => match claim {
                Claim::Token => true,
                Claim::Holder(c) => l.owner == c,
            },
            _ => false,
        }
    }

    /// The task is done: it leaves the queue.
    pub fn ack(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        self.ack_with(now, id, attempt, Claim::Token, bytes::Bytes::new(), fx)
    }

    /// [`QueueState::ack`] with the task's result, reported to its job.
    pub fn ack_with(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        result: bytes::Bytes,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let lease = self.end_lease(id, attempt, claim)?;
        if let Some(job) = self.job_unlink(id) {
            fx.completed.push(Completion {
                job,
                id,
                payload: lease.entry.body.payload.clone(),
                succeeded: true,
                result,
                error: String::new(),
                attempts: lease.entry.attempt,
            });
        }
        self.record(fx, || Change::Removed { id });
        self.key_done(now, id, fx);
        if !self.errors.is_empty() {
            self.errors.remove(&id);
        }
        self.sub_bytes(&lease.entry.body);
        self.stats.acked_total += 1;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.acked += 1;
            c.processing_ms_total += now.saturating_sub(lease.since);
        }
        Ok(())
    }

    /// The task failed; see [`NackAction`].
    #[allow(clippy::too_many_arguments)]
    pub fn nack(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        action: NackAction,
        error: &str,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let lease = self.end_lease(id, attempt, claim)?;
        self.stats.nacked_total += 1;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.nacked += 1;
        }
        if error.is_empty() {
            self.errors.remove(&id);
        } else {
            self.errors.insert(id, error.into());
        }
        match action {
            NackAction::Retry { delay_ms, priority } => self.retry_or_dead(
                now,
                lease.entry,
                delay_ms,
                priority,
                DeadReason::MaxAttempts,
                fx,
            ),
            NackAction::Drop => self.kill(now, lease.entry, DeadReason::Dropped, fx),
            NackAction::DeadLetter => self.kill(now, lease.entry, DeadReason::Rejected, fx),
        }
        self.dispatch(now, fx);
        Ok(())
    }

    /// Takes back a delivery its consumer never received (it was still in
    /// the broker's buffers when the consumer left): the lease ends and the
    /// delivery is undone — attempt and delivery counts included — so a
    /// task is not charged an attempt nobody made.
    pub fn unsend(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let mut lease = self.end_lease(id, attempt, Claim::Token)?;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.delivered = c.delivered.saturating_sub(1);
        }
        self.stats.delivered_total = self.stats.delivered_total.saturating_sub(1);
        lease.entry.attempt = lease.entry.attempt.saturating_sub(1);
        self.record(fx, || Change::Attempt {
            id,
            attempt: lease.entry.attempt,
        });
        self.ready.push_returned(lease.entry);
        self.dispatch(now, fx);
        Ok(())
    }

    /// Pushes a lease's deadline to `now + extend_ms`.
    pub fn extend(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        extend_ms: u64,
        fx: &mut Effects,
    ) -> Result<Millis, SettleError> {
        if !self.holds(id, attempt, claim) {
            return Err(SettleError::StaleLease);
        }
        let Some(lease) = self.leased.get_mut(&id) else {
            return Err(SettleError::StaleLease);
        };
        let old = lease.deadline;
        let new_deadline = now.saturating_add(extend_ms);
        lease.deadline = new_deadline;
        self.deadlines.remove(&(old, id));
        self.schedule_lease(new_deadline, id, fx);
        Ok(new_deadline)
    }

    /// A leased task failed (nack, expiry, lost consumer): back to ready
    /// after `delay_ms` (None: the queue's backoff) unless it used up its
    /// attempts.
    fn retry_or_dead(
        &mut self,
        now: Millis,
        mut entry: Entry,
        delay_ms: Option<u64>,
        priority: Option<i32>,
        reason: DeadReason,
        fx: &mut Effects,
    ) {
        let max = self.config.max_attempts;
        if max > 0 && entry.attempt >= max {
            self.kill(now, entry, reason, fx);
            return;
        }
        if let Some(p) = priority {
            entry.priority = p;
        }
        let backoff = delay_ms.is_none();
        let delay_ms = delay_ms.unwrap_or_else(|| self.config.retry.delay(entry.id, entry.attempt));
        // A plain return needs no record: every recovered task is ready.
        // A new priority or a delay must survive a restart.
        let due = if delay_ms > 0 {
            now.saturating_add(delay_ms)
        } else {
            0
        };
        if priority.is_some() || due > 0 {
            self.record(fx, || Change::Requeued {
                id: entry.id,
                priority: entry.priority,
                due,
            });
        }
        if due > 0 {
            if backoff {
                self.retrying.insert(entry.id);
            }
            self.delay(due, entry, fx);
        } else {
            self.ready.push_returned(entry);
        }
    }

    /// Removes a (no longer leased) task as a failure.
    fn kill(&mut self, now: Millis, entry: Entry, reason: DeadReason, fx: &mut Effects) {
        self.key_done(now, entry.id, fx);
        if let Some(job) = self.job_unlink(entry.id) {
            fx.completed.push(Completion {
                job,
                id: entry.id,
                payload: entry.body.payload.clone(),
                succeeded: false,
                result: bytes::Bytes::new(),
                error: self
                    .errors
                    .get(&entry.id)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| format!("{reason:?}")),
                attempts: entry.attempt,
            });
        }
        self.stats.dead_total += 1;
        self.sub_bytes(&entry.body);
        self.record(fx, || Change::Removed { id: entry.id });
        fx.dead.push(DeadTask {
            id: entry.id,
            body: entry.body,
            priority: entry.priority,
            attempts: entry.attempt,
            reason,
            error: self
                .errors
                .remove(&entry.id)
                .map(String::from)
                .unwrap_or_default(),
        });
    }

    // ------------------------------------------------------------ time

    /// Releases delayed tasks that are due and expires leases past their
    /// deadline, then dispatches.
    pub fn tick(&mut self, now: Millis, fx: &mut Effects) {
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
        while let Some((until, _, _)) = self.key_expiry.front() {
            if *until > now {
                break;
            }
            if let Some((_, key, id)) = self.key_expiry.pop_front()
                && self
                    .keys
                    .get(&key)
                    .is_some_and(|k| k.id == id && k.done.is_some())
            {
                self.key_remove(&key);
            }
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
        QueueStats {
            ready: self.ready.len() as u64,
            delayed: self.delayed.len() as u64,
            leased: self.leased.len() as u64,
            waiting_producers: self.putters.len() as u64,
            waiting_tasks: self.waiting_tasks,
            consumers: self.consumers.len() as u64,
            credit: self.consumers.values().map(|c| c.credit).sum(),
            retrying: self.retrying.len() as u64,
            publishers: self.publishers.len() as u64,
            reserved: self.reserved,
            ..self.stats.clone()
        }
    }

    /// Every consumer's numbers, oldest first.
    pub fn consumer_stats(&self, now: Millis) -> Vec<ConsumerStats> {
        let mut out: Vec<ConsumerStats> = self
            .consumers
            .iter()
            .map(|(id, c)| ConsumerStats {
                id: *id,
                name: c.name.clone(),
                peer: c.peer.clone(),
                connected_at: c.connected_at,
                credit: c.credit,
                in_flight: c.in_flight.len() as u64,
                delivered: c.delivered,
                acked: c.acked,
                nacked: c.nacked,
                mean_processing_ms: c.processing_ms_total.checked_div(c.acked).unwrap_or(0),
                oldest_lease_age_ms: c
                    .in_flight
                    .values()
                    .min()
                    .map_or(0, |since| now.saturating_sub(*since)),
            })
            .collect();
        out.sort_by_key(|c| (c.connected_at, c.id));
        out
    }
}
