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
    pub state: QueueState,
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
    pub(super) fn lock(&self) -> MutexGuard<'_, QueueCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Depths, totals and consumers, read in one critical section.
    pub fn snapshot(&self) -> (QueueStats, Vec<ConsumerStats>) {
        let now = now_ms();
        let core = self.lock();
        (core.state.stats(), core.state.consumer_stats(now))
    }

    pub fn deleted(&self) -> &CancellationToken {
        &self.deleted
    }
}
