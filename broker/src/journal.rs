//! The journal: where a change to durable state is recorded before its
//! effects reach a client — the local write-ahead log of a single broker,
//! or a cluster's Raft log. The broker's effect executor, queue
//! definitions and jobs write through it, never to a log directly.
//!
//! What they write differs: to the local log, `wal` records of what
//! changed; to a cluster, `wal::replicated` proposals of the commands that
//! ran (see [`Journal::is_replicated`]).

use bytes::Bytes;

use crate::cluster::proposer::Proposer;
use crate::storage::{Durability, Log, StorageError};

/// The journal of a broker: a write-ahead log, a cluster, or nothing
/// (`--in-memory`).
#[derive(Clone, Default)]
pub struct Journal {
    backend: Backend,
}

#[derive(Clone, Default)]
enum Backend {
    #[default]
    Memory,
    Log(Log),
    Raft(Proposer),
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory => "Journal(memory)",
            Backend::Log(_) => "Journal(log)",
            Backend::Raft(_) => "Journal(raft)",
        })
    }
}

impl Journal {
    pub fn new(log: Option<Log>) -> Self {
        Journal {
            backend: log.map_or(Backend::Memory, Backend::Log),
        }
    }

    /// A cluster member's journal: what it records is proposed to Raft.
    pub fn replicated(proposer: Proposer) -> Self {
        Journal {
            backend: Backend::Raft(proposer),
        }
    }

    /// Whether changes are kept at all, so that durable queues can exist.
    pub fn is_durable(&self) -> bool {
        !matches!(self.backend, Backend::Memory)
    }

    /// Whether records are cluster proposals (of commands), not local log
    /// records (of changes).
    pub fn is_replicated(&self) -> bool {
        matches!(self.backend, Backend::Raft(_))
    }

    /// Proposals made, ever (0 but in a cluster).
    pub fn proposals_made(&self) -> u64 {
        match &self.backend {
            Backend::Raft(p) => p.made(),
            _ => 0,
        }
    }

    /// Proposals made and not yet answered (0 but in a cluster).
    pub fn in_flight(&self) -> u64 {
        match &self.backend {
            Backend::Raft(p) => p.in_flight(),
            _ => 0,
        }
    }

    /// The cluster's proposer, for a member's leadership tasks.
    pub fn proposer(&self) -> Option<&Proposer> {
        match &self.backend {
            Backend::Raft(p) => Some(p),
            _ => None,
        }
    }

    /// The local log beneath, for what only it has (compaction, its
    /// metrics, closing it).
    pub fn log(&self) -> Option<&Log> {
        match &self.backend {
            Backend::Log(log) => Some(log),
            _ => None,
        }
    }

    /// Records a change nobody waits for (an ack, an expiry): it is
    /// written in order with the others and made durable with the next one
    /// waited for. A failure is only logged: at least once either way.
    pub fn note(&self, record: Bytes) {
        match &self.backend {
            Backend::Memory => {}
            Backend::Log(log) => {
                if let Err(e) = log.append_nowait(vec![record]) {
                    tracing::warn!(error = %e, "change not journaled");
                }
            }
            Backend::Raft(p) => {
                p.propose(record, false);
            }
        }
    }

    /// Records a change whose effect a client will be told of: resolves
    /// once it is durable. A record that grows what is kept is refused
    /// unless `keep_free` bytes stay free after it (see
    /// [`Log::append_keeping`]). None without a log.
    pub fn commit(&self, record: Bytes, keep_free: u64) -> Option<Durability> {
        match &self.backend {
            Backend::Memory => None,
            Backend::Log(log) => {
                let append = log.append_keeping(vec![record], keep_free);
                Some(Box::pin(async move { append.await.map(|_| ()) }))
            }
            Backend::Raft(p) => {
                let commit = p.propose(record, true)?;
                Some(Box::pin(async move {
                    commit
                        .await
                        .map_err(|reason| StorageError::NotCommitted { reason })
                }))
            }
        }
    }
}
