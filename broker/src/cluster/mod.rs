//! Replication: the members of a cluster keep one Raft log (openraft 0.9)
//! and apply its committed commands to the same state machine.
//!
//! - [`log_store`]: the Raft log on the member's own write-ahead log
//!   (`storage/`), so there is one group-committed, checksummed log per
//!   member, not a second one beside it;
//! - [`machine`]: openraft's state machine over a [`Machine`] — what the
//!   broker implements with its queues;
//! - [`network`] and [`service`]: Raft's RPCs over gRPC
//!   (`proto/sluice/cluster/v1/cluster.proto`), on the member's API port;
//! - [`convert`]: openraft's types to and from those messages;
//! - [`proposer`]: proposals to Raft in the order they are made;
//! - [`stats`]: what a member counts, for the metrics.
//!
//! Commands are opaque bytes here: what they mean is the [`Machine`]'s
//! business. Every member applies the same committed commands in the same
//! order; a machine that is deterministic (the engine is) ends in the same
//! state on every member.

pub mod convert;
pub mod log_store;
pub mod machine;
pub mod network;
pub mod proposer;
pub mod service;
pub mod stats;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::fmt;

use bytes::Bytes;

/// The metadata a member's Raft calls carry the cluster secret in.
pub const SECRET_METADATA: &str = "sluice-cluster-secret";

openraft::declare_raft_types!(
    /// The types sluice's Raft is built from: commands are encoded bytes,
    /// nodes are gRPC addresses.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A command a member proposes: encoded by the broker, opaque to Raft.
#[derive(Clone, PartialEq, Eq)]
pub struct Proposal(pub Bytes);

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.0.len())
    }
}

/// What applying a command answered, for the member that proposed it
/// (only ever read on that member: it never crosses the network).
pub struct Applied(pub Box<dyn Any + Send + Sync>);

impl fmt::Debug for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Applied")
    }
}

impl Applied {
    /// An answer that says nothing.
    pub fn none() -> Self {
        Applied(Box::new(()))
    }
}

/// A committed entry's command, with where it is in the log.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub index: u64,
    /// The term and node of the leader that proposed it.
    pub term: u64,
    pub leader: u64,
    pub command: &'a [u8],
}

/// What [`Machine::quiesce`] holds until the snapshot is taken.
pub trait Quiet {}
impl<T> Quiet for T {}

/// The state a cluster replicates. Every member applies the same commands
/// in the same order, so an implementation must give the same state for
/// the same commands: no clock, no randomness, no iteration order that
/// depends on more than its inputs.
pub trait Machine: Send + Sync + 'static {
    /// Applies one committed command.
    fn apply(&self, entry: Committed<'_>) -> Applied;
    /// Holds the state still for a snapshot: what it returns stands for
    /// the applied log until the guard is dropped. A machine that runs
    /// commands before they are committed (a leader) waits, briefly, until
    /// all it ran is applied, and runs no more until the guard is dropped;
    /// None when that did not happen within the wait (the caller tries
    /// again later: holding calls back longer would stall them all). Runs
    /// on a blocking thread.
    fn quiesce(&self) -> Option<Box<dyn Quiet + '_>> {
        Some(Box::new(()))
    }
    /// For a machine that runs ahead of the log (a leader): its whole
    /// state now, encoded, and a ticket for [`Machine::captured_at`],
    /// which says which entry that state stands for once the entries it
    /// ran ahead with are applied. Taken at once, so that a snapshot
    /// holds nothing back under load. None: the machine does not run
    /// ahead (or has not yet); take its state as applied instead.
    fn capture_ahead(&self) -> Option<(Bytes, u64)> {
        None
    }
    /// For a [`Machine::capture_ahead`] ticket: the log id (term, leader,
    /// index) of the entry the captured state stands for, once it is
    /// applied; `Ok(None)` until then; an error if it never will be (the
    /// leadership ended).
    fn captured_at(&self, _ticket: u64) -> Result<Option<(u64, u64, u64)>, String> {
        Err("this machine does not run ahead".into())
    }
    /// The whole state, encoded, for a snapshot.
    fn snapshot(&self) -> Bytes;
    /// Replaces the whole state with a snapshot's.
    fn restore(&self, snapshot: &[u8]) -> Result<(), String>;
}
