//! What a member counts about its replication, for the metrics endpoint:
//! how long proposals take to commit, how often leadership changed, and
//! the snapshots it built and installed. The rest (term, log indexes,
//! followers' progress) is Raft's own metrics, read at the scrape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::latency::Histogram;

#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Proposal handed to Raft -> committed and applied here (the
    /// leader's view: what a durable enqueue waits for).
    pub commit: Histogram,
    /// Times the leader this member knows of changed (to another member,
    /// or to none during an election).
    pub leader_changes: AtomicU64,
    /// Snapshots this member built.
    pub snapshots_built: AtomicU64,
    /// Snapshots it installed from a leader.
    pub snapshots_installed: AtomicU64,
    /// Bytes of the last snapshot built or installed.
    pub last_snapshot_bytes: AtomicU64,
    /// How long building (and syncing) the last snapshot took, in µs.
    pub last_snapshot_build_micros: AtomicU64,
    /// Raft log entries held in memory (those after the last purge).
    pub log_entries: AtomicU64,
    /// Their records' bytes.
    pub log_bytes: AtomicU64,
    /// The leader last seen: its id + 1, 0 for none.
    last_leader: AtomicU64,
}

impl ClusterStats {
    pub fn built(&self, bytes: usize, took: Duration) {
        self.snapshots_built.fetch_add(1, Relaxed);
        self.last_snapshot_bytes.store(bytes as u64, Relaxed);
        self.last_snapshot_build_micros
            .store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Notes the leader this member knows of now.
    pub fn saw_leader(&self, leader: Option<u64>) {
        let now = leader.map_or(0, |id| id.saturating_add(1));
        if self.last_leader.swap(now, Relaxed) != now {
            self.leader_changes.fetch_add(1, Relaxed);
        }
    }

    pub fn installed(&self, bytes: usize) {
        self.snapshots_installed.fetch_add(1, Relaxed);
        self.last_snapshot_bytes.store(bytes as u64, Relaxed);
    }
}
