//! One queue: its definition ([`QueueSpec`]), the engine state behind its
//! lock with who to tell about its effects ([`QueueCore`]), and the handle
//! callers hold ([`QueueHandle`]).

use super::*;

/// Batches of deliveries for one consumer. Unbounded on purpose: what is in
/// it was paid for with the consumer's credit, so credit is the bound.
pub type DeliveryRx = mpsc::UnboundedReceiver<Vec<Delivery>>;

type DeliveryTx = mpsc::UnboundedSender<Vec<Delivery>>;

/// One queue's engine state, and where its effects go: consumers'
/// delivery channels, waiting producers' wake-ups, publishers' grants.
/// Always behind its handle's lock; every engine call and the routing of
/// its effects happen under that one lock, so effects leave in the order
/// the engine made them.
pub struct QueueCore {
    /// Changed only through [`QueueCore::run`] (the engine's mutating
    /// calls are not public): every change is a command that can be
    /// recorded.
    pub(super) state: QueueState,
    /// The commands run since recording began (see
    /// [`QueueCore::run`]); None while nothing records them.
    pub(super) recorded: Option<Vec<Command>>,
    /// Set, under this lock, when the queue is deleted: a call that looked
    /// the queue up just before must not store into it and answer OK.
    pub(super) deleted: bool,
    /// Set when a deletion took the queue's bytes out of the broker's
    /// counts: later engine calls on it (a consumer's last acks) must not
    /// take them out again.
    pub(super) released: bool,
    pub(super) senders: HashMap<ConsumerId, DeliveryTx>,
    /// Each waiting producer's wake-up.
    pub(super) waiting: HashMap<WaitingId, oneshot::Sender<Admission>>,
    /// Each Publish stream's credit grants.
    pub(super) publishers: HashMap<PublisherId, mpsc::UnboundedSender<u64>>,
}

impl QueueCore {
    /// The engine state, to read.
    pub fn state(&self) -> &QueueState {
        &self.state
    }

    /// Runs one engine command, recording it when a replicated journal
    /// will need it.
    pub fn run(&mut self, now: Millis, command: Command, fx: &mut Effects) -> Outcome {
        match &mut self.recorded {
            Some(log) => {
                log.push(command.clone());
                self.state.execute(now, command, fx)
            }
            None => self.state.execute(now, command, fx),
        }
    }

    /// [`Command::Enqueue`]: the result, the depth after it, and for a
    /// full queue a retry hint in ms.
    pub fn enqueue(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        producer: Option<ProducerSeq>,
        fx: &mut Effects,
    ) -> (std::result::Result<Enqueued, EnqueueError>, u64, u64) {
        let enqueue = Command::Enqueue {
            tasks,
            mode,
            producer,
        };
        match self.run(now, enqueue, fx) {
            Outcome::Enqueue {
                result,
                depth,
                retry_after_ms,
            } => (result, depth, retry_after_ms),
            _ => (Err(EnqueueError::Full), self.state.depth(), 0),
        }
    }

    /// [`Command::CancelWait`]: whether the batch was still waiting.
    pub fn cancel_wait(&mut self, now: Millis, id: WaitingId, fx: &mut Effects) -> bool {
        matches!(
            self.run(now, Command::CancelWait { id }, fx),
            Outcome::Cancelled(true)
        )
    }

    /// [`Command::Store`].
    pub fn store(&mut self, now: Millis, tasks: Vec<NewTask>, fx: &mut Effects) {
        self.run(now, Command::Store { tasks }, fx);
    }

    /// [`Command::Retract`] and [`Command::Purge`]: how many went.
    pub fn remove(&mut self, now: Millis, command: Command, fx: &mut Effects) -> u64 {
        match self.run(now, command, fx) {
            Outcome::Removed(n) => n,
            _ => 0,
        }
    }

    /// [`Command::AddConsumer`].
    pub fn add_consumer(
        &mut self,
        now: Millis,
        id: ConsumerId,
        name: String,
        peer: String,
        detached: bool,
        fx: &mut Effects,
    ) {
        let add = Command::AddConsumer {
            id,
            name,
            peer,
            detached,
        };
        self.run(now, add, fx);
    }

    /// [`Command::Grant`] and [`Command::Revoke`]: the consumer's unspent
    /// credit, or its leases; None for one not there.
    pub fn credit(&mut self, now: Millis, command: Command, fx: &mut Effects) -> Option<u64> {
        match self.run(now, command, fx) {
            Outcome::Consumer(n) => n,
            _ => None,
        }
    }

    /// [`Command::RemoveConsumer`].
    pub fn remove_consumer(&mut self, now: Millis, id: ConsumerId, fx: &mut Effects) {
        self.run(now, Command::RemoveConsumer { id }, fx);
    }

    /// [`Command::Settle`] of one op.
    pub fn settle(
        &mut self,
        now: Millis,
        op: SettleOp,
        fx: &mut Effects,
    ) -> std::result::Result<Option<Millis>, crate::engine::SettleError> {
        match self.run(now, Command::Settle { ops: vec![op] }, fx) {
            Outcome::Settled(mut r) if r.len() == 1 => r.remove(0),
            _ => Err(crate::engine::SettleError::StaleLease),
        }
    }

    /// [`Command::Unsend`]: deliveries that never left, undone.
    pub fn unsend(&mut self, now: Millis, leases: Vec<(TaskId, u32)>, fx: &mut Effects) {
        if !leases.is_empty() {
            self.run(now, Command::Unsend { leases }, fx);
        }
    }

    /// [`Command::Publish`].
    pub fn publish(
        &mut self,
        now: Millis,
        id: PublisherId,
        tasks: Vec<NewTask>,
        fx: &mut Effects,
    ) -> std::result::Result<(), crate::engine::PublishError> {
        match self.run(now, Command::Publish { id, tasks }, fx) {
            Outcome::Published(r) => r,
            _ => Err(crate::engine::PublishError::Unknown),
        }
    }

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

/// A queue as [`QueueHandle::view`] read it.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub config: crate::engine::QueueConfig,
    pub stats: QueueStats,
    pub consumers: Vec<ConsumerStats>,
    pub holds: Vec<crate::engine::Hold>,
    pub groups: Vec<crate::engine::GroupStats>,
}

/// One named queue. Its name and durability are fixed; its options live
/// in the engine state, behind the lock (UpdateQueue changes them).
pub struct QueueHandle {
    pub(super) name: String,
    pub(super) durable: bool,
    pub created_at: Millis,
    pub(super) core: Mutex<QueueCore>,
    /// Woken whenever the queue has no unfinished task (Join).
    pub(super) idle: Notify,
    /// Woken when the earliest deadline moved earlier (the timer task).
    pub(super) rearm: Notify,
    pub(super) deleted: CancellationToken,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle")
            .field("name", &self.name)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl QueueHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kept in the log: survives a restart.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Its definition now, options as they are at this moment.
    pub fn spec(&self) -> QueueSpec {
        QueueSpec {
            name: self.name.clone(),
            config: self.lock().state.config().clone(),
            durable: self.durable,
        }
    }

    /// Its options now.
    pub fn config(&self) -> crate::engine::QueueConfig {
        self.lock().state.config().clone()
    }

    /// Its capacity now (read on every Publish confirmation: no copy of
    /// the options).
    pub fn capacity(&self) -> u64 {
        self.lock().state.config().capacity
    }

    /// Its lease length now.
    pub fn ack_deadline_ms(&self) -> u64 {
        self.lock().state.config().ack_deadline_ms
    }

    /// A poisoned lock means an engine call panicked mid-change; the state
    /// may be inconsistent, but refusing every later call would lose every
    /// task in the queue, so keep serving.
    pub(super) fn lock(&self) -> MutexGuard<'_, QueueCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Depths, totals and consumers, read in one critical section.
    pub fn snapshot(&self) -> (QueueStats, Vec<ConsumerStats>) {
        let now = now_ms();
        let core = self.lock();
        (core.state.stats(), core.state.consumer_stats(now))
    }

    /// Everything a description of the queue shows, read in one critical
    /// section: options, counters, consumers, why nothing is delivered,
    /// and up to `groups` of its groups with ready tasks.
    pub fn view(&self, groups: usize) -> QueueView {
        let now = now_ms();
        let core = self.lock();
        let s = &core.state;
        QueueView {
            config: s.config().clone(),
            stats: s.stats(),
            consumers: s.consumer_stats(now),
            holds: s.holds(now),
            groups: match groups {
                0 => Vec::new(),
                n => s.group_stats(n),
            },
        }
    }

    /// Up to `limit` of its waiting tasks with ids above `after`, by id,
    /// and how many wait in all (see `QueueState::browse`).
    pub fn browse(
        &self,
        after: Option<TaskId>,
        limit: usize,
    ) -> (Vec<crate::engine::Browsed>, u64) {
        let core = self.lock();
        (core.state.browse(after, limit), core.state.depth())
    }

    pub fn deleted(&self) -> &CancellationToken {
        &self.deleted
    }
}
