//! The effect executor: runs one engine call on a queue under its lock and
//! carries out what it returned — the log record of its changes (the
//! journal: one place where changes become records), deliveries routed to
//! consumers, producers woken, dead letters forwarded, job events, bytes
//! counted. Handlers never write the log themselves.

use super::*;

impl Broker {
    /// Runs one engine call on a queue and carries out its effects: routes
    /// deliveries, wakes admitted producers, joiners and the timer, logs
    /// a durable queue's changes, and forwards dead tasks (after the lock
    /// is released).
    pub fn apply<R>(
        &self,
        q: &QueueHandle,
        f: impl FnOnce(&mut QueueCore, Millis, &mut Effects) -> R,
    ) -> R {
        self.apply_with(q, LogAs::default(), f).0
    }

    /// [`Broker::apply`], also returning the log append of the call's
    /// changes (None when nothing was logged), for callers that must not
    /// answer before it is durable.
    pub fn apply_logged<R>(
        &self,
        q: &QueueHandle,
        f: impl FnOnce(&mut QueueCore, Millis, &mut Effects) -> R,
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
        f: impl FnOnce(&mut QueueCore, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        let how = LogAs {
            wait: true,
            grows: true,
            moved: None,
        };
        self.apply_with(q, how, f)
    }

    pub(super) fn apply_with<R>(
        &self,
        q: &QueueHandle,
        how: LogAs,
        f: impl FnOnce(&mut QueueCore, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        if self.replicates(q) {
            // One durable call at a time, dead-letter moves included, so
            // the commands are proposed in exactly the order they ran (and
            // a move's two halves in one entry): followers that apply the
            // log in order reach the state this leader is in.
            let _one = self.one_at_a_time();
            return self.apply_inner(q, how, f);
        }
        self.apply_inner(q, how, f)
    }

    fn apply_inner<R>(
        &self,
        q: &QueueHandle,
        how: LogAs,
        f: impl FnOnce(&mut QueueCore, Millis, &mut Effects) -> R,
    ) -> (R, Option<Durability>) {
        let mut fx = Effects::default();
        let now = now_ms();
        let mut deferred = Deferred::default();
        let keep_free = if how.grows && q.durable() {
            self.keep_free()
        } else {
            0
        };
        let replicated = self.replicates(q);
        let (r, durability) = {
            let mut core = q.lock();
            let held_before = core.state.held_bytes();
            let live_before = live_estimate(&core.state);
            if replicated {
                core.recorded = Some(Vec::new());
            }
            let r = f(&mut core, now, &mut fx);
            let commands = core.recorded.take().unwrap_or_default();
            if !fx.dead.is_empty() {
                deferred.dead_letter = core.state.config().dead_letter.clone();
            }
            if !core.released {
                add_diff(&self.inner.held_bytes, held_before, core.state.held_bytes());
                if q.durable() {
                    let live_after = live_estimate(&core.state);
                    add_diff(&self.inner.durable_live, live_before, live_after);
                }
            }
            let journal = &self.inner.journal;
            let durability = match journal.is_durable() {
                true if replicated => {
                    self.propose(q, now, commands, &how, &mut fx, &mut deferred, keep_free)
                }
                true if !fx.changes.is_empty() || how.moved.is_some() => {
                    // A task moving to a dead letter queue leaves this one
                    // in the log in the same record that stores it there
                    // (see `forward_dead`): one atomic record, so neither
                    // a crash nor a refused append can lose it between.
                    if deferred.dead_letter.is_some() && !fx.dead.is_empty() {
                        let moving: std::collections::HashSet<TaskId> = fx
                            .dead
                            .iter()
                            .filter(|d| d.reason != DeadReason::Dropped)
                            .map(|d| d.id)
                            .collect();
                        fx.changes.retain(|c| match c {
                            Change::Removed { id } if moving.contains(id) => {
                                deferred.changes.push(c.clone());
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
                        _ => self.record(wal::batch(&parts), &how, &fx, keep_free),
                    }
                }
                _ => None,
            };
            let (durability, ticket) = match durability {
                Some((d, t)) => (Some(d), t),
                None => (None, None),
            };
            route(&mut core, &mut fx, ticket);
            // Job events are logged under this queue's lock, right after
            // the queue's own changes (lock order: queue, then jobs).
            let durable = q.durable();
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
            if core.state.unfinished() == 0 {
                q.idle.notify_waiters();
            }
            (r, durability)
        };
        if !fx.dead.is_empty() {
            self.forward_dead(q, std::mem::take(&mut fx.dead), deferred);
        }
        (r, durability)
    }

    /// Writes one call's record to the journal: noted, or committed (for
    /// a caller that waits, and for producers this call admitted, who
    /// wait for this record too and share its outcome).
    fn record(
        &self,
        record: bytes::Bytes,
        how: &LogAs,
        fx: &Effects,
        keep_free: u64,
    ) -> Option<(Durability, Option<Ticket>)> {
        let journal = &self.inner.journal;
        if !how.wait && fx.admitted.is_empty() {
            journal.note(record);
            return None;
        }
        match journal.commit(record, keep_free) {
            None => None,
            Some(committed) if fx.admitted.is_empty() => Some((committed, None)),
            Some(committed) => {
                let (tx, rx) = watch::channel(None);
                tokio::spawn(async move {
                    let _ = tx.send(Some(committed.await));
                });
                Some((Box::pin(wait_ticket(rx.clone())) as Durability, Some(rx)))
            }
        }
    }

    /// In a cluster: proposes the commands a call ran on durable queue
    /// `q`. A call whose tasks died into a dead letter queue proposes
    /// nothing here: its commands go with the dead letters' arrival, in
    /// one entry (see `forward_dead`).
    #[allow(clippy::too_many_arguments)]
    fn propose(
        &self,
        q: &QueueHandle,
        now: Millis,
        commands: Vec<Command>,
        how: &LogAs,
        fx: &mut Effects,
        deferred: &mut Deferred,
        keep_free: u64,
    ) -> Option<(Durability, Option<Ticket>)> {
        let moving = deferred.dead_letter.is_some()
            && fx.dead.iter().any(|d| d.reason != DeadReason::Dropped);
        if moving {
            deferred.commands = commands;
            return None;
        }
        let mut parts: Vec<(&str, &[Command])> = Vec::new();
        if let Some(m) = &how.moved {
            parts.push((&m.from, &m.commands));
        }
        if !commands.is_empty() {
            parts.push((q.name(), &commands));
        }
        if parts.is_empty() {
            return None;
        }
        self.record(wal::replicated::commands(now, &parts), how, fx, keep_free)
    }

    /// Moves dead tasks to the queue's dead letter queue, if it has one that
    /// exists; otherwise they are dropped (already counted in `dead_total`).
    /// `removed` holds their removal from `from`'s log, logged here: in
    /// one record with their copies in the dead letter queue, or alone if
    /// they are dropped.
    pub(super) fn forward_dead(&self, from: &QueueHandle, dead: Vec<DeadTask>, removed: Deferred) {
        for d in &dead {
            tracing::warn!(
                queue = %from.name(), task = d.id.0, attempts = d.attempts,
                reason = ?d.reason, error = %d.error, "task dead"
            );
        }
        let Some(dlq_name) = &removed.dead_letter else {
            return;
        };
        let dead: Vec<DeadTask> = dead
            .into_iter()
            .filter(|d| d.reason != DeadReason::Dropped)
            .collect();
        if dead.is_empty() {
            return;
        }
        let moved = (!removed.changes.is_empty() || !removed.commands.is_empty()).then(|| Moved {
            from: from.name().to_owned(),
            changes: removed.changes,
            commands: removed.commands,
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
                // The caller holds the cluster's one-call-at-a-time lock
                // already, if there is one.
                self.apply_inner(&dlq, how, |core, now, fx| {
                    if core.deleted {
                        return false;
                    }
                    core.store(now, tasks, fx);
                    true
                })
                .0
            }
            Err(_) => {
                if let Some(m) = moved {
                    // Should it fail, the task comes back from the log
                    // after a restart (at least once).
                    let record = match self.inner.journal.is_replicated() {
                        true => wal::replicated::commands(now_ms(), &[(&m.from, &m.commands)]),
                        false => wal::changes(&m.from, &m.changes),
                    };
                    self.inner.journal.note(record);
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
}

/// Lets producers admitted by another call wait for that call's append.
pub(super) type Ticket = watch::Receiver<Option<Result<(), StorageError>>>;

/// A dead-lettered task's removal from its (durable) source queue, to be
/// logged in one record with its arrival in the dead letter queue: the
/// move is then atomic in the log.
pub(super) struct Moved {
    pub(super) from: String,
    /// To the local log: the source queue's `Removed` changes.
    pub(super) changes: Vec<Change>,
    /// To a cluster: the commands the source queue's call ran.
    pub(super) commands: Vec<Command>,
}

/// What a call leaves for the dead-letter move to record (see [`Moved`]).
#[derive(Default)]
pub(super) struct Deferred {
    pub(super) changes: Vec<Change>,
    pub(super) commands: Vec<Command>,
    /// The queue's dead letter queue when the call ran.
    pub(super) dead_letter: Option<String>,
}

/// How [`Broker::apply_with`] logs an engine call.
#[derive(Default)]
pub(super) struct LogAs {
    /// The caller waits for the append to be durable (it confirms
    /// something to a client). Otherwise the append is not waited on, and
    /// under `--fsync always` it costs no fsync of its own: it is synced
    /// with the next append that is waited on.
    pub(super) wait: bool,
    /// The call adds tasks: its append must leave the log room to shrink
    /// (acks) and to compact; see [`Broker::keep_free`].
    pub(super) grows: bool,
    pub(super) moved: Option<Moved>,
}

/// Log bytes per live task beyond its payload, headers, key and job id
/// (framing, ids, numbers), and per durable queue for its definition: the
/// estimate of what a compacted log holds.
const RECORD_OVERHEAD: u64 = 48;

pub(super) const DEFINE_BYTES: u64 = 256;

/// Waits for the outcome an append's watcher publishes.
pub(super) async fn wait_ticket(mut rx: Ticket) -> Result<(), StorageError> {
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
fn route(core: &mut QueueCore, fx: &mut Effects, ticket: Option<Ticket>) {
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
            if let Some(tx) = core.senders.get(&cid) {
                let _ = tx.send(batch);
            }
        }
    }
    for (id, n) in fx.granted.drain(..) {
        if let Some(tx) = core.publishers.get(&id) {
            let _ = tx.send(n);
        }
    }
    for a in fx.admitted.drain(..) {
        if let Some(tx) = core.waiting.remove(&a.id) {
            // A dropped receiver is a producer that gave up in the same
            // instant; its enqueue path sees the batch stored.
            let _ = tx.send(Admission {
                ticket: ticket.clone(),
                duplicates: a.duplicates,
            });
        }
    }
}

/// Moves `counter` by `after - before`.
pub(super) fn add_diff(counter: &AtomicU64, before: u64, after: u64) {
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
pub(super) fn live_estimate(state: &QueueState) -> u64 {
    state.held_bytes() + RECORD_OVERHEAD * state.unfinished()
}

fn dead_letter_task(from: &str, id: TaskId, d: DeadTask) -> NewTask {
    let mut headers = d.body.headers.map(|h| *h).unwrap_or_default();
    headers.insert("x-sluice-dead-from".into(), from.to_owned());
    headers.insert("x-sluice-dead-id".into(), crate::ids::task_id_str(d.id));
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
        group: d.group,
    }
}
