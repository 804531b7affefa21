//! The limits the operator sets on the command line, that the broker
//! enforces (the API's own fixed limits live with its validation).

/// Tasks per enqueue or publish frame (items per settle call), by default.
pub const MAX_BATCH: usize = 10_000;
/// Unspent credit per consumer, by default.
pub const MAX_UNSPENT_CREDIT: u64 = 100_000;

/// Limits set by the operator on the command line.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Payload plus header names and values, per task.
    pub max_payload_bytes: usize,
    /// Payload bytes of all queued tasks together: beyond, enqueues are
    /// refused (RESOURCE_EXHAUSTED) instead of the broker running out of
    /// memory.
    pub max_memory_bytes: u64,
    /// Queues in the broker.
    pub max_queues: usize,
    /// Schedules in the broker.
    pub max_schedules: usize,
    /// Consume streams per queue.
    pub max_consumers_per_queue: u64,
    /// Consume streams in the broker.
    pub max_consumers: u64,
    /// Unspent credit per consumer.
    pub max_credit: u64,
    /// Tasks per enqueue or publish frame, items per ack/nack/extend call.
    pub max_batch: usize,
    /// How long a publisher may sit on unused credit while others wait.
    pub publish_idle: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_memory_bytes: 2 << 30,
            max_queues: 100_000,
            max_schedules: 1_000,
            max_consumers_per_queue: 10_000,
            max_consumers: 100_000,
            max_credit: MAX_UNSPENT_CREDIT,
            max_batch: MAX_BATCH,
            publish_idle: std::time::Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Largest gRPC message the service decodes or encodes, in bytes: an
    /// enqueue batch may carry several tasks of the largest size.
    pub fn max_message_bytes(&self) -> usize {
        (self.max_payload_bytes.saturating_mul(2) + (1 << 20)).max(16 << 20)
    }
}
