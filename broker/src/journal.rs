//! The journal: where a change to durable state is recorded before its
//! effects reach a client — the local write-ahead log today; the seam a
//! replicated log plugs into. The broker's effect executor, queue
//! definitions and jobs write through it, never to the log directly.

use bytes::Bytes;

use crate::storage::{Durability, Log};

/// The journal of a broker: a write-ahead log, or nothing (`--in-memory`).
#[derive(Debug, Clone, Default)]
pub struct Journal {
    log: Option<Log>,
}

impl Journal {
    pub fn new(log: Option<Log>) -> Self {
        Journal { log }
    }

    /// Whether changes are kept at all, so that durable queues can exist.
    pub fn is_durable(&self) -> bool {
        self.log.is_some()
    }

    /// The local log beneath, for what only it has (compaction, its
    /// metrics, closing it).
    pub fn log(&self) -> Option<&Log> {
        self.log.as_ref()
    }

    /// Records a change nobody waits for (an ack, an expiry): it is
    /// written in order with the others and made durable with the next one
    /// waited for. A failure is only logged: at least once either way.
    pub fn note(&self, record: Bytes) {
        if let Some(log) = &self.log
            && let Err(e) = log.append_nowait(vec![record])
        {
            tracing::warn!(error = %e, "change not journaled");
        }
    }

    /// Records a change whose effect a client will be told of: resolves
    /// once it is durable. A record that grows what is kept is refused
    /// unless `keep_free` bytes stay free after it (see
    /// [`Log::append_keeping`]). None without a log.
    pub fn commit(&self, record: Bytes, keep_free: u64) -> Option<Durability> {
        let log = self.log.as_ref()?;
        let append = log.append_keeping(vec![record], keep_free);
        Some(Box::pin(async move { append.await.map(|_| ()) }))
    }
}
