//! The queue map: creating (a durable queue exists once its definition is
//! in the log), looking up and deleting queues.

use super::*;

impl Broker {
    /// Creates a queue, or returns the existing one when its definition is
    /// equal. The bool says whether it was created. A durable queue exists
    /// (for every caller) only once its definition is in the log: if the
    /// log refuses it, nothing was created and a retry starts afresh.
    pub async fn create_queue(&self, spec: QueueSpec) -> Result<(Arc<QueueHandle>, bool)> {
        self.check_open()?;
        if spec.durable && !self.inner.journal.is_durable() {
            return Err(Error::invalid(
                "durable queues need the broker's data directory; this broker runs --in-memory",
            ));
        }
        let _defs = self.inner.defs.lock().await;
        {
            let queues = self.inner.queues.read().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = queues.get(&spec.name) {
                let current = existing.spec();
                if current == spec {
                    return Ok((Arc::clone(existing), false));
                }
                return Err(Error::QueueExists {
                    name: spec.name.clone(),
                    diff: describe_diff(&current, &spec),
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
        if spec.durable && self.inner.journal.is_replicated() {
            // A cluster's leader runs every change before proposing it
            // (see `apply_with`), in the proposals' order.
            let (handle, committed) = {
                let _one = self.one_at_a_time();
                let def = wal::queue_def(&spec, created_at);
                let handle = self.insert_queue(spec, created_at);
                let proposal = wal::replicated::define(def, created_at);
                (handle, self.inner.journal.commit(proposal, 0))
            };
            if let Some(c) = committed {
                c.await?;
            }
            tracing::info!(queue = %handle.name(), durable = true, "queue created");
            return Ok((handle, true));
        }
        if spec.durable
            && let Some(stored) = self
                .inner
                .journal
                .commit(wal::define(&spec, created_at), self.keep_free())
        {
            stored.await?;
        }
        let handle = self.insert_queue(spec, created_at);
        tracing::info!(queue = %handle.name(), durable = handle.durable(), "queue created");
        Ok((handle, true))
    }

    pub(super) fn insert_queue(&self, spec: QueueSpec, created_at: Millis) -> Arc<QueueHandle> {
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        self.insert_locked(&mut queues, spec, created_at, None)
    }

    /// Adds a queue, empty or (a cluster member installing a snapshot) in
    /// the state it was in.
    pub(super) fn insert_locked(
        &self,
        queues: &mut BTreeMap<String, Arc<QueueHandle>>,
        spec: QueueSpec,
        created_at: Millis,
        state: Option<QueueState>,
    ) -> Arc<QueueHandle> {
        let state = state.unwrap_or_else(|| {
            let mut state = QueueState::new(spec.config.clone());
            // The local log records what changed; a cluster records the
            // commands instead, and needs no changes.
            if spec.durable && !self.inner.journal.is_replicated() {
                state.keep_journal();
            }
            state
        });
        self.inner
            .held_bytes
            .fetch_add(state.held_bytes(), Ordering::SeqCst);
        if spec.durable {
            self.inner
                .durable_live
                .fetch_add(DEFINE_BYTES + live_estimate(&state), Ordering::Relaxed);
        }
        let handle = Arc::new(QueueHandle {
            created_at,
            core: Mutex::new(QueueCore {
                state,
                recorded: None,
                deleted: false,
                released: false,
                senders: HashMap::new(),
                waiting: HashMap::new(),
                publishers: HashMap::new(),
            }),
            idle: Notify::new(),
            rearm: Notify::new(),
            deleted: CancellationToken::new(),
            name: spec.name,
            durable: spec.durable,
        });
        queues.insert(handle.name().to_owned(), Arc::clone(&handle));
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

    /// A queue the configuration file declares: created when missing; when
    /// it exists, the options a running queue may change (capacity,
    /// lease, retries, dead letter, flow control, pause) are set to the
    /// file's — the file says what the queue is, over changes made while
    /// it ran. Its order, durability and key window must be the file's
    /// (ALREADY_EXISTS otherwise).
    pub async fn declare_queue(&self, spec: QueueSpec) -> Result<()> {
        let current = match self.create_queue(spec.clone()).await {
            Ok(_) => return Ok(()),
            Err(Error::QueueExists { .. }) => self.queue(&spec.name)?.spec(),
            Err(e) => return Err(e),
        };
        let fixed = |s: &QueueSpec| (s.durable, s.config.order, s.config.key_window_ms);
        if fixed(&current) != fixed(&spec) {
            return Err(Error::QueueExists {
                name: spec.name.clone(),
                diff: describe_diff(&current, &spec),
            });
        }
        let name = spec.name.clone();
        self.update_queue(&name, false, |_| Ok(spec)).await?;
        Ok(())
    }

    /// Changes a queue's options to what `change` makes of its current
    /// definition (name, order and durability stay). In force once
    /// durable: a lone broker logs the new definition first (a restart
    /// reads it like a creation's); a cluster replicates the change as a
    /// command. `lift_throttles`: end every nack throttle (a resume).
    pub async fn update_queue(
        &self,
        name: &str,
        lift_throttles: bool,
        change: impl FnOnce(&QueueSpec) -> Result<QueueSpec>,
    ) -> Result<Arc<QueueHandle>> {
        self.check_open()?;
        let _defs = self.inner.defs.lock().await;
        let handle = self.queue(name)?;
        let spec = change(&handle.spec())?;
        {
            let queues = self.inner.queues.read().unwrap_or_else(|p| p.into_inner());
            check_dead_letters(&queues, &spec)?;
        }
        let config = spec.config.clone();
        let configure = move |core: &mut QueueCore, now: Millis, fx: &mut Effects| {
            if core.deleted {
                return false;
            }
            let configure = Command::Configure {
                config,
                lift_throttles,
            };
            core.run(now, configure, fx);
            true
        };
        let applied = if self.replicates(&handle) {
            let (applied, durability) = self.apply_logged(&handle, configure);
            if let Some(d) = durability {
                d.await?;
            }
            applied
        } else {
            if handle.durable()
                && let Some(stored) = self
                    .inner
                    .journal
                    .commit(wal::define(&spec, handle.created_at), 0)
            {
                stored.await?;
            }
            self.apply(&handle, configure)
        };
        if !applied {
            return Err(Error::QueueNotFound(name.to_owned()));
        }
        tracing::info!(queue = %name, options = ?spec.config, "queue options changed");
        Ok(handle)
    }

    /// Deletes a queue; returns how many unfinished tasks went with it.
    /// Everyone waiting on it is woken and fails with ABORTED. A durable
    /// queue is deleted only once its deletion is in the log: if the log
    /// refuses it, the queue stays as it was.
    pub async fn delete_queue(&self, name: &str, if_empty: bool) -> Result<u64> {
        let _defs = self.inner.defs.lock().await;
        let handle = self.queue(name)?;
        if self.replicates(&handle) {
            let (discarded, committed) = {
                let _one = self.one_at_a_time();
                let discarded = handle.lock().state.unfinished();
                if if_empty && discarded > 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "queue {name:?} holds {discarded} unfinished tasks"
                    )));
                }
                self.remove_queue(&handle);
                let proposal = wal::replicated::delete(name, now_ms());
                (discarded, self.inner.journal.commit(proposal, 0))
            };
            if let Some(c) = committed {
                c.await?;
            }
            tracing::info!(queue = %name, discarded, "queue deleted");
            return Ok(discarded);
        }
        let (discarded, durability) = {
            let mut core = handle.lock();
            let discarded = core.state.unfinished();
            if if_empty && discarded > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "queue {name:?} holds {discarded} unfinished tasks"
                )));
            }
            // From here no call stores into it; its log record follows
            // every change it logged.
            core.deleted = true;
            let durability = match handle.durable() {
                true => self.inner.journal.commit(wal::delete(name), 0),
                false => None,
            };
            (discarded, durability)
        };
        if let Some(d) = durability
            && let Err(e) = d.await
        {
            handle.lock().deleted = false;
            return Err(e.into());
        }
        self.remove_queue(&handle);
        tracing::info!(queue = %name, discarded, "queue deleted");
        Ok(discarded)
    }

    /// Takes a queue out of the broker: its calls end, its bytes go back
    /// to the budget, its routes are dropped.
    pub(super) fn remove_queue(&self, handle: &Arc<QueueHandle>) {
        {
            let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
            let mut core = handle.lock();
            core.deleted = true;
            core.senders.clear();
            core.waiting.clear();
            core.publishers.clear();
            if !core.released {
                core.released = true;
                self.inner
                    .held_bytes
                    .fetch_sub(core.state.held_bytes(), Ordering::SeqCst);
                if handle.durable() {
                    self.inner
                        .durable_live
                        .fetch_sub(live_estimate(&core.state) + DEFINE_BYTES, Ordering::Relaxed);
                }
            }
            if queues
                .get(handle.name())
                .is_some_and(|q| Arc::ptr_eq(q, handle))
            {
                queues.remove(handle.name());
            }
        }
        handle.deleted.cancel();
        handle.idle.notify_waiters();
    }
}

/// A durable queue's dead letters must survive what it survives: it may
/// not name a non-durable dead letter queue, nor may a non-durable queue
/// take the name a durable queue sends its dead letters to.
fn check_dead_letters(queues: &BTreeMap<String, Arc<QueueHandle>>, spec: &QueueSpec) -> Result<()> {
    if spec.durable
        && let Some(dlq) = spec.config.dead_letter.as_ref().and_then(|d| queues.get(d))
        && !dlq.durable()
    {
        return Err(Error::invalid(format!(
            "durable queue {:?} cannot send its dead letters to non-durable queue {:?}: \
             they would be lost on restart; make {:?} durable",
            spec.name,
            dlq.name(),
            dlq.name()
        )));
    }
    if !spec.durable
        && let Some(source) = queues
            .values()
            .find(|q| q.durable() && q.config().dead_letter.as_deref() == Some(spec.name.as_str()))
    {
        return Err(Error::invalid(format!(
            "queue {:?} is the dead letter queue of durable queue {:?}, so it must be durable too",
            spec.name,
            source.name()
        )));
    }
    Ok(())
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
    if x.dead_letter != y.dead_letter {
        diffs.push(format!(
            "dead_letter {:?} vs {:?}",
            x.dead_letter.as_deref().unwrap_or(""),
            y.dead_letter.as_deref().unwrap_or("")
        ));
    }
    if x.max_in_flight != y.max_in_flight {
        diffs.push(format!(
            "max_in_flight {} vs {}",
            x.max_in_flight, y.max_in_flight
        ));
    }
    if x.rate != y.rate {
        diffs.push(format!("rate_limit {:?} vs {:?}", x.rate, y.rate));
    }
    if x.group_max_in_flight != y.group_max_in_flight {
        diffs.push(format!(
            "max_in_flight_per_group {} vs {}",
            x.group_max_in_flight, y.group_max_in_flight
        ));
    }
    if x.paused != y.paused {
        diffs.push(format!("paused {} vs {}", x.paused, y.paused));
    }
    format!("existing vs requested: {}", diffs.join(", "))
}
