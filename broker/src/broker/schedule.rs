//! Schedules in the broker: defining, deleting, pausing and resuming them
//! (each a journaled change, stored before it is answered, as a queue's
//! definition is), and the runner that fires their ticks.
//!
//! The runner sleeps until the earliest tick of a running schedule (or a
//! change wakes it) and fires each due run as a task of its own: a tick is
//! an enqueue in WAIT mode, bounded by the next tick, with the key
//! `NAME@TICK`; then the run is journaled (`wal::ScheduleTick`). Only a
//! broker that serves fires: alone, always; in a cluster, the leader, whose
//! journaled runs the members apply.

use prost::Message;
use sluice_proto::v1 as pb;

use super::*;
use crate::engine::NewTask;
use crate::schedules::{self, Run};
use crate::wal::{ScheduleRecord, ScheduleState, schedule_record::Kind};

/// The runner looks again at least this often: a member that does not
/// serve finds out it leads, and a clock step is caught up with.
const MAX_NAP: Duration = Duration::from_secs(10);

impl Broker {
    /// The schedule registry.
    pub fn schedules(&self) -> &crate::schedules::Schedules {
        &self.inner.schedules
    }

    /// Creates a schedule, or answers the existing one when its definition
    /// is equal (false). `spec` was validated by the API; the queue must
    /// exist.
    pub async fn create_schedule(
        &self,
        spec: pb::ScheduleSpec,
        paused: bool,
    ) -> Result<(pb::ScheduleInfo, bool)> {
        self.check_open()?;
        schedules::when_of(&spec).map_err(Error::invalid)?;
        self.queue(&spec.queue)?;
        let _defs = self.inner.defs.lock().await;
        let name = spec.name.clone();
        if let Some((existing, _)) = self.inner.schedules.spec(&name) {
            return match existing == spec {
                true => Ok((self.schedule(&name)?, false)),
                false => Err(Error::ScheduleExists(name)),
            };
        }
        let max = self.limits().max_schedules;
        if self.inner.schedules.len() >= max {
            return Err(Error::LimitReached(format!(
                "the broker holds its limit of {max} schedules (--max-schedules)"
            )));
        }
        let now = wall_ms();
        let state = ScheduleState {
            info: Some(pb::ScheduleInfo {
                spec: Some(spec),
                paused,
                created_at_unix_ms: now,
                ..Default::default()
            }),
            since: now,
        };
        let reservation = self.reserve_memory(state.encoded_len() as u64)?;
        self.record_schedule(
            ScheduleRecord {
                kind: Some(Kind::Define(Box::new(state))),
            },
            now,
            true,
        )
        .await?;
        drop(reservation);
        tracing::info!(schedule = %name, paused, "schedule created");
        Ok((self.schedule(&name)?, true))
    }

    /// Brings a schedule the config file declares to its definition: made
    /// when missing, made again when defined otherwise, paused or resumed
    /// as the file says.
    pub async fn declare_schedule(
        &self,
        spec: pb::ScheduleSpec,
        paused: bool,
    ) -> Result<pb::ScheduleInfo> {
        if let Some((current, _)) = self.inner.schedules.spec(&spec.name)
            && current != spec
        {
            tracing::info!(schedule = %spec.name, "schedule redefined by the config file");
            self.delete_schedule(&spec.name).await?;
        }
        let name = spec.name.clone();
        self.create_schedule(spec, paused).await?;
        self.pause_schedule(&name, paused).await
    }

    /// A schedule with its next tick.
    pub fn schedule(&self, name: &str) -> Result<pb::ScheduleInfo> {
        self.inner
            .schedules
            .get(name)
            .ok_or_else(|| Error::ScheduleNotFound(name.to_owned()))
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _defs = self.inner.defs.lock().await;
        self.schedule(name)?;
        let record = ScheduleRecord {
            kind: Some(Kind::Delete(name.to_owned())),
        };
        self.record_schedule(record, wall_ms(), false).await?;
        tracing::info!(schedule = %name, "schedule deleted");
        Ok(())
    }

    /// Pauses or resumes a schedule; doing what is already so changes
    /// nothing.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<pb::ScheduleInfo> {
        self.check_open()?;
        let _defs = self.inner.defs.lock().await;
        let current = self.schedule(name)?;
        if current.paused != paused {
            let record = ScheduleRecord {
                kind: Some(Kind::Paused(wal::SchedulePaused {
                    name: name.to_owned(),
                    paused,
                    at: wall_ms(),
                })),
            };
            self.record_schedule(record, wall_ms(), false).await?;
            tracing::info!(schedule = %name, paused, "schedule paused or resumed");
        }
        self.schedule(name)
    }

    /// Journals a schedule's change and applies it. Alone: once the log
    /// stored it, so that a refused record changes nothing and a retry
    /// starts afresh. In a cluster the leader runs every change before it
    /// proposes it, in the proposals' order (as `create_queue` does).
    /// Callers hold `defs`, as compaction does: none crosses a snapshot.
    /// Only what `grows` what the log keeps (a definition) must leave the
    /// log room to compact: a pause or a delete is always taken, so that
    /// a schedule can be stopped on a full disk.
    async fn record_schedule(&self, r: ScheduleRecord, now: Millis, grows: bool) -> Result<()> {
        let journal = &self.inner.journal;
        if journal.is_replicated() {
            let committed = {
                let _one = self.one_at_a_time();
                let proposal = wal::replicated::schedule(r.clone(), now);
                self.inner.schedules.apply(r, |_| {});
                journal.commit(proposal, 0)
            };
            if let Some(c) = committed {
                c.await?;
            }
            return Ok(());
        }
        let keep_free = if grows { self.keep_free() } else { 0 };
        if let Some(stored) = journal.commit(wal::schedule(r.clone()), keep_free) {
            stored.await?;
        }
        self.inner.schedules.apply(r, |_| {});
        Ok(())
    }

    /// Journals a run's tick (not waited for, as an ack is not: a tick
    /// whose record a crash loses is known from its stored task's key).
    /// A failure like the last one is only counted here, not journaled: a
    /// schedule failing every second on a full queue must not fill the
    /// log (after a restart its ticks since the last record are missed).
    fn record_run(&self, t: wal::ScheduleTick) {
        let repeated = t.failed > 0
            && self
                .inner
                .schedules
                .get(&t.name)
                .is_some_and(|i| i.last_error == t.error);
        let r = ScheduleRecord {
            kind: Some(Kind::Tick(t)),
        };
        if repeated {
            self.inner.schedules.apply(r, |_| {});
            return;
        }
        let journal = &self.inner.journal;
        if journal.is_replicated() {
            let _one = self.one_at_a_time();
            let proposal = wal::replicated::schedule(r.clone(), wall_ms());
            self.inner.schedules.apply(r, |_| journal.note(proposal));
            return;
        }
        self.inner.schedules.apply(r, |r| {
            journal.note(wal::schedule(r.clone()));
        });
    }

    /// Starts firing schedules (once): after the config file's schedules
    /// are declared and the limits set, so that none fires by an old
    /// definition or under default limits.
    pub fn start_schedules(&self) {
        if !self.inner.schedules_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().run_schedules());
        }
    }

    /// Fires due ticks until shutdown.
    async fn run_schedules(self) {
        let schedules = &self.inner.schedules;
        loop {
            // Registered before looking, so a change made meanwhile wakes.
            let changed = schedules.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut nap = MAX_NAP;
            if self.serving() {
                let now = wall_ms();
                for run in schedules.due(now) {
                    tokio::spawn(self.clone().fire(run));
                }
                if let Some(next) = schedules.next_due() {
                    nap = nap.min(Duration::from_millis(next.saturating_sub(wall_ms())));
                }
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = &mut changed => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Fires a run's ticks, in order, journaling each as it is handled
    /// (so a crash or a failover repeats at most the tick under way), and
    /// then the missed ones.
    async fn fire(self, run: Run) {
        let record = |tick| wal::ScheduleTick {
            name: run.name.clone(),
            created_at: run.created_at,
            tick,
            ..Default::default()
        };
        let mut recorded = 0;
        for &tick in &run.ticks {
            let mut t = record(tick);
            match self.fire_tick(&run, tick).await {
                Ok(id) => {
                    t.fired = 1;
                    t.task_id = id;
                }
                Err(e) => {
                    tracing::warn!(schedule = %run.name, tick = %schedules::tick_text(tick), error = %e, "tick failed");
                    t.failed = 1;
                    t.error = e.to_string();
                }
            }
            // A broker that stopped serving meanwhile leaves the rest to
            // the next leader; a schedule paused or deleted meanwhile
            // fires no more (the tick under way, if stored, is known by
            // its key).
            if !self.serving() || self.inner.shutdown.is_cancelled() || run.cancel.is_cancelled() {
                self.inner.schedules.finished(&run.name, run.created_at);
                return;
            }
            let ran = &self.inner.schedules.ran;
            match t.fired {
                1 => ran.fired.fetch_add(1, Ordering::Relaxed),
                _ => ran.failed.fetch_add(1, Ordering::Relaxed),
            };
            t.run_at = wall_ms();
            self.record_run(t);
            recorded = tick;
        }
        if run.missed > 0 || recorded < run.last {
            if run.missed > 0 {
                tracing::info!(schedule = %run.name, missed = run.missed, "ticks missed");
                let ran = &self.inner.schedules.ran;
                ran.missed.fetch_add(run.missed, Ordering::Relaxed);
            }
            let mut t = record(run.last);
            t.missed = run.missed;
            t.run_at = wall_ms();
            // Missed alone: the last result stands.
            if let Some(info) = self.inner.schedules.get(&run.name) {
                t.error = info.last_error;
            }
            if self.serving() && !self.inner.shutdown.is_cancelled() && !run.cancel.is_cancelled() {
                self.record_run(t);
            }
        }
        self.inner.schedules.finished(&run.name, run.created_at);
    }

    /// Enqueues one tick's task; answers its id (or the id its key found).
    async fn fire_tick(&self, run: &Run, tick: Millis) -> Result<String> {
        let q = self.queue(&run.queue)?;
        let tick_text = schedules::tick_text(tick);
        let mut headers = run.task.headers.clone();
        headers.insert("x-sluice-schedule".into(), run.name.clone());
        headers.insert("x-sluice-tick".into(), tick_text.clone());
        let job = schedules::job_id(&run.task.job_id, &run.name, tick);
        let id = self.task_ids(1);
        let task = NewTask {
            id,
            payload: run.task.payload.clone(),
            headers,
            priority: run.task.priority,
            delay_ms: 0,
            key: Some(format!("{}@{tick_text}", run.name).into()),
            job: (!job.is_empty()).then(|| job.into()),
            group: (!run.task.group.is_empty()).then(|| run.task.group.clone().into()),
        };
        let deadline = run
            .next
            .map(|n| Instant::now() + Duration::from_millis(n.saturating_sub(wall_ms())));
        let enqueue = self.enqueue(&q, vec![task], true, deadline, None);
        // Paused or deleted while waiting for space: the batch leaves the
        // line (the enqueue's guard takes it out when dropped).
        let stored = tokio::select! {
            biased;
            _ = run.cancel.cancelled() => {
                return Err(Error::FailedPrecondition(format!(
                    "schedule {:?} was paused or deleted", run.name
                )));
            }
            r = enqueue => r,
        };
        let receipt = stored.map_err(|e| match e {
            Error::DeadlineExceeded { .. } => Error::LimitReached(format!(
                "queue {:?} full ({} tasks) until the next tick was due",
                run.queue,
                q.capacity()
            )),
            e => e,
        })?;
        let stored = receipt
            .duplicates
            .iter()
            .find(|(new, _)| *new == id)
            .map_or(id, |(_, holder)| *holder);
        Ok(crate::ids::task_id_str(stored))
    }
}
