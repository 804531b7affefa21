//! The broker as a cluster's state machine ([`crate::cluster::Machine`]).
//!
//! A follower applies every committed proposal: queues defined and
//! deleted, engine commands run at the leader's `now`, jobs sealed. What
//! an engine call tells it (deliveries, dead tasks) it acts on not at all
//! — it has no clients, and dead letters arrive as commands of their own —
//! except for jobs, which every member counts from the commands.
//!
//! A leader ran its own proposals before proposing them: Raft's apply
//! skips the entries of the leadership it is running ahead in
//! ([`ReplicaState::speculating`]).

use bytes::Bytes;
use prost::Message;

use super::*;
use crate::cluster::{Applied, Committed, Machine, Quiet};
use crate::engine::Command;
use crate::wal::replicated::{self, MachineImage, ProposalMsg};

/// An entry's (term, leader, index).
pub(super) type EntryId = (u64, u64, u64);

/// What a member knows of the replicated state beyond its queues.
#[derive(Default)]
pub(super) struct ReplicaState {
    /// The (term, node) of the leadership this member runs commands for
    /// ahead of the log, and the first log index it proposed at: entries
    /// of that leadership from there on are in its state already. (Not
    /// those before: a member restarted as leader of the same term finds
    /// entries of it that its earlier run wrote, and applies them.)
    pub(super) speculating: Option<(u64, u64, u64)>,
    /// Proposals made before this leadership began (the journal's count):
    /// the n-th proposal since is the n-th of its own entries applied.
    pub(super) made_base: u64,
    /// Own entries of this leadership applied (skipped) so far.
    pub(super) own_applied: u64,
    /// A snapshot's capture: the count of own entries its state includes,
    /// and the (term, leader, index) of the last of them once applied.
    pub(super) capture: Option<(u64, Option<EntryId>)>,
    /// The largest task id any applied command carried.
    pub(super) max_task_id: u64,
    /// The largest consumer, waiting batch or publisher id.
    pub(super) max_other_id: u64,
    /// The cluster's lease-token key, once its first leader chose it.
    pub(super) lease_key: Option<[u8; 16]>,
}

/// How long a snapshot may hold a leader's calls back while its
/// proposals are applied (see `Replica::quiesce`).
const QUIESCE: Duration = Duration::from_millis(50);

/// The broker, as Raft sees it.
pub struct Replica(pub Broker);

impl Machine for Replica {
    fn apply(&self, entry: Committed<'_>) -> Applied {
        let b = &self.0;
        {
            let mut st = b.replica_state();
            if let Some((term, leader, from)) = st.speculating
                && (term, leader) == (entry.term, entry.leader)
                && entry.index >= from
            {
                st.own_applied += 1;
                let n = st.own_applied;
                if let Some((want, at @ None)) = &mut st.capture
                    && *want == n
                {
                    *at = Some((entry.term, entry.leader, entry.index));
                }
                return Applied::none();
            }
        }
        match replicated::proposal(entry.command) {
            Ok(p) => b.apply_proposal(p),
            // A member that cannot read an entry its peers wrote is a
            // newer format or a bug; it must not guess.
            Err(e) => tracing::error!(index = entry.index, error = %e, "entry not applied"),
        }
        Applied::none()
    }

    fn quiesce(&self) -> Option<Box<dyn Quiet + '_>> {
        let b = &self.0;
        // On a blocking thread: a plain wait for the lock is fine here.
        let one = b.inner.replica.lock().unwrap_or_else(|p| p.into_inner());
        // What this leader ran is applied once its proposals are answered
        // (Raft answers after applying, or fails them when it stops): the
        // state then stands for the applied log, and no call runs ahead
        // while the lock is held. Normally a commit away (a millisecond or
        // so); the calls that arrive meanwhile wait, so this waits no
        // longer than QUIESCE before it lets them go and says so.
        let until = std::time::Instant::now() + QUIESCE;
        while b.inner.journal.in_flight() > 0 {
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Some(Box::new(one))
    }

    fn capture_ahead(&self) -> Option<(Bytes, u64)> {
        let b = &self.0;
        // On a blocking thread: a plain wait for the lock is fine here.
        // Held only while the image is taken: no call runs ahead meanwhile,
        // so the image holds exactly the proposals made so far.
        let _one = b.inner.replica.lock().unwrap_or_else(|p| p.into_inner());
        let made = {
            let mut st = b.replica_state();
            st.speculating?;
            let made = b
                .inner
                .journal
                .proposals_made()
                .saturating_sub(st.made_base);
            if made <= st.own_applied {
                // Nothing runs ahead of the log now: the state is the
                // applied one.
                return None;
            }
            st.capture = Some((made, None));
            made
        };
        Some((Bytes::from(b.machine_image().encode_to_vec()), made))
    }

    fn captured_at(&self, ticket: u64) -> Result<Option<(u64, u64, u64)>, String> {
        let st = self.0.replica_state();
        match (&st.speculating, &st.capture) {
            (Some(_), Some((want, at))) if *want == ticket => Ok(*at),
            _ => Err("the leadership ended before the snapshot's entries applied".into()),
        }
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(self.0.machine_image().encode_to_vec())
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let image = MachineImage::decode(snapshot).map_err(|e| e.to_string())?;
        self.0.restore_image(image)
    }
}

/// The largest task id and other id a command carries.
fn ids_in(c: &Command) -> (u64, u64) {
    let tasks = |ts: &[NewTask]| ts.iter().map(|t| t.id.0).max().unwrap_or(0);
    match c {
        Command::Enqueue {
            tasks: ts, mode, ..
        } => (
            tasks(ts),
            match mode {
                EnqueueMode::Wait(w) => w.0,
                EnqueueMode::FailFast => 0,
            },
        ),
        Command::Store { tasks: ts } => (tasks(ts), 0),
        Command::Publish { id, tasks: ts } => (tasks(ts), id.0),
        Command::AddConsumer { id, .. } => (0, id.0),
        Command::AddPublisher { id, .. } => (0, id.0),
        _ => (0, 0),
    }
}

impl Broker {
    pub(super) fn replica_state(&self) -> MutexGuard<'_, ReplicaState> {
        self.inner
            .replica_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one committed proposal this member did not run itself.
    fn apply_proposal(&self, p: ProposalMsg) {
        let now = p.now;
        if let Some(def) = p.define {
            match wal::queue_spec(&def) {
                Ok(spec) if self.queue(&spec.name).is_err() => {
                    self.insert_queue(spec, def.created_at);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "queue definition not applied"),
            }
        }
        if !p.delete.is_empty()
            && let Ok(q) = self.queue(&p.delete)
        {
            self.remove_queue(&q);
        }
        if let Some(s) = p.seal {
            self.inner.jobs.apply_seal(&s.job, s.total, now);
        }
        if let Some(r) = p.schedule {
            self.inner.schedules.apply(r, |_| {});
        }
        if let Ok(key) = <[u8; 16]>::try_from(p.lease_key.as_ref()) {
            self.set_lease_key(key);
        }
        for part in p.queues {
            let commands: Vec<Command> = match part
                .commands
                .into_iter()
                .map(replicated::command_of)
                .collect::<std::result::Result<_, _>>()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(queue = %part.queue, error = %e, "commands not applied");
                    continue;
                }
            };
            {
                let mut st = self.replica_state();
                for c in &commands {
                    let (t, o) = ids_in(c);
                    st.max_task_id = st.max_task_id.max(t);
                    st.max_other_id = st.max_other_id.max(o);
                }
            }
            match self.queue(&part.queue) {
                Ok(q) => self.apply_committed(&q, now, commands),
                Err(_) => {
                    tracing::error!(queue = %part.queue, "commands for a queue this member does not have")
                }
            }
        }
    }

    /// Runs committed commands on a queue: its state, its counts, its
    /// jobs, its timer; nothing routed, nothing journaled.
    fn apply_committed(&self, q: &QueueHandle, now: Millis, commands: Vec<Command>) {
        let mut fx = Effects::default();
        let mut core = q.lock();
        let held_before = core.state.held_bytes();
        let live_before = live_estimate(&core.state);
        for c in commands {
            core.state.execute(now, c, &mut fx);
        }
        if !core.released {
            apply::add_diff(&self.inner.held_bytes, held_before, core.state.held_bytes());
            apply::add_diff(
                &self.inner.durable_live,
                live_before,
                live_estimate(&core.state),
            );
        }
        if !fx.job_stored.is_empty() {
            self.inner.jobs.stored(q.name(), &fx.job_stored, now, true);
        }
        // A tick's task stored: the tick fired, whether or not the
        // leader's record of it follows (it may have failed over between).
        // Only here, from committed entries, and in a restart's replay:
        // where a call runs ahead of its log write (this broker alone, or
        // leading), the store may yet be refused and taken back, and the
        // runner records the tick once it is not.
        if self.inner.schedules.any() {
            for key in &fx.keys_stored {
                self.inner.schedules.stored_tick(key, q.name(), now);
            }
        }
        if !fx.completed.is_empty() {
            self.inner
                .jobs
                .completed(q.name(), std::mem::take(&mut fx.completed), now, true);
        }
        if fx.rearm {
            q.rearm.notify_one();
        }
        if core.state.unfinished() == 0 {
            q.idle.notify_waiters();
        }
    }

    /// The cluster's lease-token key, from now on.
    pub(super) fn set_lease_key(&self, key: [u8; 16]) {
        self.replica_state().lease_key = Some(key);
        *self
            .inner
            .lease_key
            .write()
            .unwrap_or_else(|p| p.into_inner()) = LeaseKey::from_bytes(&key);
    }

    /// Everything this member replicates, for a snapshot.
    fn machine_image(&self) -> MachineImage {
        let queues = self
            .queues()
            .into_iter()
            .filter(|q| q.durable())
            .map(|q| {
                let core = q.lock();
                let spec = QueueSpec {
                    name: q.name().to_owned(),
                    config: core.state.config().clone(),
                    durable: true,
                };
                replicated::image_msg(wal::queue_def(&spec, q.created_at), &core.state.image())
            })
            .collect();
        let st = self.replica_state();
        MachineImage {
            queues,
            jobs: self.inner.jobs.records(),
            schedules: self.inner.schedules.states(|| ()).0,
            max_task_id: st.max_task_id,
            max_other_id: st.max_other_id,
            lease_key: st
                .lease_key
                .map(|k| Bytes::copy_from_slice(&k))
                .unwrap_or_default(),
        }
    }

    /// Replaces every durable queue and job with a snapshot's.
    fn restore_image(&self, image: MachineImage) -> std::result::Result<(), String> {
        let mut rebuilt = Vec::new();
        for m in &image.queues {
            let def = m.def.as_ref().ok_or("queue image without a definition")?;
            let spec = wal::queue_spec(def)?;
            let state = QueueState::from_image(spec.config.clone(), replicated::image_of(m));
            rebuilt.push((spec, def.created_at, state));
        }
        for q in self.queues().into_iter().filter(|q| q.durable()) {
            self.remove_queue(&q);
        }
        {
            let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
            for (spec, created_at, state) in rebuilt {
                self.insert_locked(&mut queues, spec, created_at, Some(state));
            }
        }
        self.inner.jobs.replace_with(image.jobs);
        self.inner.schedules.replace_with(image.schedules);
        {
            let mut st = self.replica_state();
            st.max_task_id = image.max_task_id;
            st.max_other_id = image.max_other_id;
        }
        if let Ok(key) = <[u8; 16]>::try_from(image.lease_key.as_ref()) {
            self.set_lease_key(key);
        }
        Ok(())
    }

    /// A member that now leads takes over, before it serves: its ids go
    /// above every id the log holds, the cluster gets its lease-token key
    /// if it has none yet, and every durable queue loses the old leader's
    /// streams and waiting calls ([`Command::Takeover`]). From here on it
    /// runs calls ahead of the log, and skips its own entries of `term`.
    pub async fn begin_leading(&self, term: u64, node: u64, from: u64) -> Result<()> {
        let key = {
            let _one = self.one_at_a_time();
            let mut st = self.replica_state();
            st.speculating = Some((term, node, from));
            st.made_base = self.inner.journal.proposals_made();
            st.own_applied = 0;
            st.capture = None;
            let first = (now_ms() << 20).max(st.max_task_id + 1);
            self.inner.next_task.fetch_max(first, Ordering::SeqCst);
            let other = st.max_other_id + 1;
            self.inner.next_consumer.fetch_max(other, Ordering::SeqCst);
            self.inner.next_producer.fetch_max(other, Ordering::SeqCst);
            let missing = st.lease_key.is_none();
            drop(st);
            match missing {
                true => {
                    let key = LeaseKey::random_bytes();
                    self.set_lease_key(key);
                    let proposal = replicated::lease_key(key, now_ms());
                    self.inner.journal.commit(proposal, 0)
                }
                false => None,
            }
        };
        for q in self.queues() {
            if q.durable() {
                self.apply(&q, |core, now, fx| core.run(now, Command::Takeover, fx));
            }
            // Its timer runs again, on this member's clock.
            q.rearm.notify_one();
        }
        if let Some(k) = key {
            k.await?;
        }
        Ok(())
    }

    /// Takes every queue out (a member restarting its replicated state):
    /// their calls end, told to go to the leader.
    pub fn drop_every_queue(&self) {
        {
            let mut st = self.replica_state();
            st.speculating = None;
            st.capture = None;
        }
        for q in self.queues() {
            self.remove_queue(&q);
        }
        // Made again from the snapshot and the log, as the queues are.
        self.inner.schedules.replace_with([]);
    }
}
