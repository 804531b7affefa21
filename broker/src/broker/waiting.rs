//! The operations that wait: an enqueue that waits for space, a get that
//! waits for a task, join, and subscribing a consumer — with the guards
//! that take a caller out of line when its call is dropped.

use super::*;

impl Broker {
    /// Stores a batch. With `wait`, waits in line for space until
    /// `deadline`; without, a full queue is an error at once. A batch in
    /// line counts against the memory budget, and holds no idempotency
    /// key: its keys are checked again (and taken) when it is stored.
    /// A `producer`'s batch sent before is answered as the first time.
    pub async fn enqueue(
        &self,
        q: &Arc<QueueHandle>,
        tasks: Vec<NewTask>,
        wait: bool,
        deadline: Option<Instant>,
        producer: Option<ProducerSeq>,
    ) -> Result<EnqueueReceipt> {
        self.check_open()?;
        let reservation = self.reserve_memory(tasks.iter().map(NewTask::held_bytes).sum())?;
        let first_id = tasks.first().map_or(TaskId(0), |t| t.id);
        let n = tasks.len() as u64;
        let wait_id = WaitingId(self.inner.next_producer.fetch_add(1, Ordering::Relaxed));
        let (tx, mut rx) = oneshot::channel();
        let mode = if wait {
            EnqueueMode::Wait(wait_id)
        } else {
            EnqueueMode::FailFast
        };
        let started = Instant::now();
        let ((res, depth, mut duplicates, retry_after_ms), durability) =
            self.apply_growing(q, |core, now, fx| {
                if core.deleted {
                    return (Err(None), 0, Vec::new(), 0);
                }
                let (r, depth, retry) = core.enqueue(now, tasks, mode, producer, fx);
                if let Ok(Enqueued::Waiting(p)) = r {
                    core.waiting.insert(p, tx);
                }
                (
                    r.map_err(Some),
                    depth,
                    std::mem::take(&mut fx.duplicates),
                    retry,
                )
            });
        let capacity = q.capacity();
        let stored = |depth, duplicates| {
            self.inner.enqueue_wait.observe(started.elapsed());
            EnqueueReceipt {
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
            Err(None) => return Err(self.queue_gone(q.name())),
            Err(Some(EnqueueError::Full)) => {
                return Err(Error::QueueFull {
                    queue: q.name().to_owned(),
                    depth,
                    capacity,
                    retry_after_ms,
                });
            }
            Err(Some(
                e @ (EnqueueError::BatchTooLarge { .. } | EnqueueError::SequenceReused { .. }),
            )) => {
                return Err(Error::invalid(e.to_string()));
            }
        }

        // Leave the line if this future is dropped (client gone).
        let mut guard = WaitingGuard {
            broker: self,
            q,
            wait_id,
            armed: true,
        };
        let outcome = tokio::select! {
            biased;
            r = &mut rx => match r {
                Ok(admission) => Ok(admission),
                Err(_) => Err(self.queue_gone(q.name())),
            },
            _ = q.deleted.cancelled() => Err(self.queue_gone(q.name())),
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
                let left = self.apply(q, |core, now, fx| {
                    core.waiting.remove(&wait_id);
                    core.cancel_wait(now, wait_id, fx)
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
            self.apply(q, |core, _, _| core.state.depth()),
            duplicates,
        ))
    }

    /// Undoes an enqueue the log refused: its tasks (ids `first..first+n`)
    /// leave the queue unless a consumer already has them.
    pub(crate) fn retract(&self, q: &QueueHandle, first: TaskId, n: u64) {
        let ids: Vec<TaskId> = (0..n).map(|i| TaskId(first.0 + i)).collect();
        let removed = self.apply(q, |core, now, fx| {
            core.remove(now, Command::Retract { ids }, fx)
        });
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
        let open = self.apply(q, |core, now, fx| {
            if core.deleted {
                return false;
            }
            core.add_consumer(now, cid, "get".into(), peer, true, fx);
            core.senders.insert(cid, tx);
            core.credit(
                now,
                Command::Grant {
                    id: cid,
                    credit: max,
                },
                fx,
            );
            true
        });
        if !open {
            return Err(self.queue_gone(q.name()));
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
        self.apply(q, |core, now, fx| {
            core.senders.remove(&cid);
            core.remove_consumer(now, cid, fx);
        });
        while let Ok(batch) = guard.rx.try_recv() {
            out.extend(batch);
        }
        if out.is_empty() && q.deleted.is_cancelled() {
            return Err(self.queue_gone(q.name()));
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
            self.apply(q, |core, now, fx| {
                core.unsend(now, back.iter().map(|d| (d.id, d.attempt)).collect(), fx)
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
                let core = q.lock();
                (core.state.unfinished(), core.state.stats().acked_total)
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
                _ = q.deleted.cancelled() => return Err(self.queue_gone(q.name())),
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
        let open = self.apply(q, |core, now, fx| {
            if core.deleted {
                return Some(false);
            }
            if core.state.consumer_count() >= limits.max_consumers_per_queue {
                return None;
            }
            core.add_consumer(now, cid, name, peer, false, fx);
            core.senders.insert(cid, tx);
            Some(true)
        });
        match open {
            Some(true) => Ok((cid, rx)),
            Some(false) => {
                self.stream_closed();
                Err(self.queue_gone(q.name()))
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

    /// A Consume stream ended.
    pub fn stream_closed(&self) {
        self.inner.streams.fetch_sub(1, Ordering::SeqCst);
    }

    /// How long enqueues waited for space.
    pub fn enqueue_wait(&self) -> crate::latency::Snapshot {
        self.inner.enqueue_wait.snapshot()
    }
}

/// What a waiting producer is told when its batch is stored.
pub struct Admission {
    /// The append that stored it, for a durable queue.
    pub(super) ticket: Option<Ticket>,
    /// Its tasks whose key was taken by the time it was stored.
    pub(super) duplicates: Vec<(TaskId, TaskId)>,
}

/// What a stored enqueue reports back.
#[derive(Debug, Clone)]
pub struct EnqueueReceipt {
    pub first_id: TaskId,
    /// Tasks not stored because their key was taken: (new id, holder).
    pub duplicates: Vec<(TaskId, TaskId)>,
    pub depth: u64,
    pub capacity: u64,
    pub waited_ms: u64,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Payload bytes per answer frame, as a Consume frame: well under gRPC's
/// common 4 MiB default receive limit.
pub const FRAME_BYTES: usize = 1024 * 1024;

/// Takes a waiting producer out of line when its call is dropped.
struct WaitingGuard<'a> {
    pub(super) broker: &'a Broker,
    pub(super) q: &'a QueueHandle,
    pub(super) wait_id: WaitingId,
    pub(super) armed: bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let p = self.wait_id;
            self.broker.apply(self.q, |core, now, fx| {
                core.waiting.remove(&p);
                core.cancel_wait(now, p, fx);
            });
        }
    }
}

/// When a waiting Get is dropped (client gone), leaves the queue and gives
/// back whatever was delivered to it but never sent.
struct GetGuard<'a> {
    pub(super) broker: &'a Broker,
    pub(super) q: &'a QueueHandle,
    pub(super) cid: ConsumerId,
    pub(super) rx: DeliveryRx,
    pub(super) armed: bool,
}

impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let cid = self.cid;
        let rx = &mut self.rx;
        self.broker.apply(self.q, |core, now, fx| {
            core.senders.remove(&cid);
            core.remove_consumer(now, cid, fx);
            let mut unsent = Vec::new();
            while let Ok(batch) = rx.try_recv() {
                unsent.extend(batch.iter().map(|d| (d.id, d.attempt)));
            }
            core.unsend(now, unsent, fx);
        });
    }
}
