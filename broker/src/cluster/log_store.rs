//! The Raft log, kept in the member's write-ahead log (`storage/`): every
//! entry, vote, truncation and purge is one [`pb::LogRecord`] frame,
//! group-committed and checksummed like everything else the member writes.
//!
//! Entries not yet purged are also kept in memory, so replicating to a
//! follower never reads the disk: they are purged once a snapshot holds
//! them, which bounds them. On open, the records are replayed in order:
//! entries, less those a later truncation cut or a purge dropped, and the
//! last vote.
//!
//! An append is acknowledged to Raft only when the log says its frames are
//! durable (under `--fsync always`: synced), and votes are saved before
//! `save_vote` returns, as Raft requires. Truncations are waited for too:
//! a truncated entry must never come back after a crash. Purges need not
//! be: replaying a purged entry again only keeps it a little longer.
//!
//! Purged entries stay in the log's old segments until a compaction
//! rewrites what is left (the vote, the purge point, the entries) into a
//! new segment and deletes the old ones: after a purge, once the log is
//! more than twice what it must keep (and more than [`COMPACT_FLOOR`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use prost::Message;
use sluice_proto::cluster as pb;

use super::TypeConfig;
use super::convert::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use super::stats::ClusterStats;
use crate::storage::{Log, LogOptions};

/// A log smaller than this is never compacted: not worth the rewrite.
pub const COMPACT_FLOOR: u64 = 4 * 1024 * 1024;

/// What the log holds, as replayed and kept up to date.
#[derive(Debug, Default)]
struct Held {
    vote: Option<Vote<u64>>,
    /// Entries after `purged`, by index, each with its record's size.
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    /// The last entry dropped behind a snapshot.
    purged: Option<LogId<u64>>,
    /// The records' bytes of `entries`.
    bytes: u64,
}

impl Held {
    fn insert(&mut self, e: Entry<TypeConfig>, size: u64) {
        self.bytes += size;
        if let Some((_, old)) = self.entries.insert(e.log_id.index, (e, size)) {
            self.bytes -= old;
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        let cut = self.entries.split_off(&index);
        self.bytes -= cut.values().map(|(_, n)| n).sum::<u64>();
    }

    /// Drops the entries up to `id` and remembers it as the purge point.
    fn purge(&mut self, id: LogId<u64>) {
        let kept = self.entries.split_off(&(id.index + 1));
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.bytes -= dropped.values().map(|(_, n)| n).sum::<u64>();
        self.purged = Some(id);
    }

    /// Records that say all of this, for a compaction.
    fn records(&self) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        if let Some(v) = &self.vote {
            out.push(record(pb::log_record::Kind::Vote(vote_to_pb(v))));
        }
        if let Some(p) = &self.purged {
            out.push(record(pb::log_record::Kind::Purged(log_id_to_pb(p))));
        }
        out.extend(
            self.entries
                .values()
                .map(|(e, _)| record(pb::log_record::Kind::Entry(entry_to_pb(e)))),
        );
        out
    }
}

/// The Raft log of one member. Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct LogStore {
    log: Log,
    held: Arc<Mutex<Held>>,
    compacting: Arc<std::sync::atomic::AtomicBool>,
    /// Where it says how much of the log it holds in memory.
    stats: Arc<ClusterStats>,
}

fn record(kind: pb::log_record::Kind) -> Bytes {
    Bytes::from(pb::LogRecord { kind: Some(kind) }.encode_to_vec())
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Counts what it holds in memory into `stats` (the member's).
    pub fn with_stats(mut self, stats: Arc<ClusterStats>) -> Self {
        self.stats = stats;
        self.held_now(&self.held());
        self
    }

    fn held_now(&self, held: &Held) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats
            .log_entries
            .store(held.entries.len() as u64, Relaxed);
        self.stats.log_bytes.store(held.bytes, Relaxed);
    }

    /// Opens (or creates) the Raft log in `dir` and replays it.
    pub fn open(dir: &Path, options: LogOptions) -> Result<LogStore, String> {
        let (log, records) = Log::open(dir, options).map_err(|e| e.to_string())?;
        let mut held = Held::default();
        for item in records {
            let (seq, bytes) = item.map_err(|e| e.to_string())?;
            let rec = pb::LogRecord::decode(bytes.as_ref())
                .map_err(|e| format!("Raft log record {seq} does not decode: {e}"))?;
            match rec.kind {
                Some(pb::log_record::Kind::Entry(e)) => {
                    let e = entry_from_pb(e).map_err(|e| format!("record {seq}: {e}"))?;
                    held.insert(e, bytes.len() as u64);
                }
                Some(pb::log_record::Kind::Vote(v)) => held.vote = Some(vote_from_pb(&v)),
                Some(pb::log_record::Kind::TruncateFrom(i)) => held.truncate(i),
                Some(pb::log_record::Kind::Purged(id)) => held.purge(log_id_from_pb(&id)),
                None => return Err(format!("Raft log record {seq} is empty")),
            }
        }
        Ok(LogStore {
            log,
            held: Arc::new(Mutex::new(held)),
            compacting: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// Whether purged entries make up enough of the log to rewrite it.
    fn compaction_due(&self) -> bool {
        let total = self.log.total_bytes();
        total > COMPACT_FLOOR && total > 2 * self.held().bytes
    }

    /// Rewrites what the log must keep into a new segment, then deletes
    /// the segments before it. Appends go on meanwhile: they land after
    /// the rewrite, in the log and in replay.
    pub async fn compact(&self) -> Result<(), crate::storage::StorageError> {
        let cut = self.log.roll().await?;
        let (records, slot) = {
            let held = self.held();
            // Taken under the lock that orders appends: what the slot says
            // is the state just before whatever comes after it.
            (held.records(), self.log.reserve()?)
        };
        let slot = tokio::task::spawn_blocking(move || slot.send(records).map(|()| slot))
            .await
            .map_err(|_| crate::storage::StorageError::Abandoned)??;
        slot.finish().await?;
        self.log.remove_segments_before(cut).await?;
        Ok(())
    }

    /// Compacts in the background when due, one compaction at a time.
    fn compact_if_due(&self) {
        use std::sync::atomic::Ordering;
        if !self.compaction_due() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.compact().await {
                tracing::warn!(error = %e, "Raft log compaction failed; will retry after the next purge");
            }
            store.compacting.store(false, Ordering::Release);
        });
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The write-ahead log beneath, for its metrics and closing it.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Entries kept in memory.
    pub fn entries_held(&self) -> usize {
        self.held().entries.len()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .held()
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let held = self.held();
        let last = held.entries.values().next_back().map(|(e, _)| e.log_id);
        Ok(LogState {
            last_purged_log_id: held.purged,
            last_log_id: last.or(held.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let rec = record(pb::log_record::Kind::Vote(vote_to_pb(vote)));
        self.log
            .append(vec![rec])
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.held().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.held().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let written = {
            // Under the lock, so that the log's order (the order of the
            // append calls) is the order of the entries in memory.
            let mut held = self.held();
            let mut records = Vec::new();
            for e in entries {
                let r = record(pb::log_record::Kind::Entry(entry_to_pb(&e)));
                held.insert(e, r.len() as u64);
                records.push(r);
            }
            self.held_now(&held);
            self.log.append(records)
        };
        tokio::spawn(async move {
            let res = written
                .await
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(res);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let written = {
            let mut held = self.held();
            held.truncate(log_id.index);
            self.held_now(&held);
            self.log
                .append(vec![record(pb::log_record::Kind::TruncateFrom(
                    log_id.index,
                ))])
        };
        written.await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let written = {
            let mut held = self.held();
            held.purge(log_id);
            self.held_now(&held);
            self.log
                .append(vec![record(pb::log_record::Kind::Purged(log_id_to_pb(
                    &log_id,
                )))])
        };
        written.await.map_err(write_err)?;
        self.compact_if_due();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::cluster::Proposal;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Normal(Proposal(Bytes::from(vec![index as u8; 100]))),
        }
    }

    fn options() -> LogOptions {
        LogOptions {
            segment_bytes: 16 * 1024,
            ..LogOptions::default()
        }
    }

    async fn state(store: &mut LogStore) -> (LogState<TypeConfig>, Option<Vote<u64>>, Vec<u64>) {
        let st = store.get_log_state().await.expect("state");
        let vote = store.read_vote().await.expect("vote");
        let ids = store
            .try_get_log_entries(..)
            .await
            .expect("entries")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        (st, vote, ids)
    }

    #[tokio::test]
    async fn what_a_compaction_keeps_replays_as_before_and_the_rest_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path(), options()).expect("opens");
        for chunk in (1..=1000u64).collect::<Vec<_>>().chunks(50) {
            store
                .blocking_append(chunk.iter().map(|i| entry(*i)))
                .await
                .expect("appended");
        }
        store
            .save_vote(&Vote::new_committed(2, 1))
            .await
            .expect("vote saved");
        store
            .truncate(LogId::new(CommittedLeaderId::new(2, 1), 990))
            .await
            .expect("truncated");
        store
            .purge(LogId::new(CommittedLeaderId::new(2, 1), 900))
            .await
            .expect("purged");
        let before = state(&mut store).await;
        assert_eq!(before.2, (901..990).collect::<Vec<_>>());
        let size = store.log().total_bytes();
        store.compact().await.expect("compacted");
        assert!(
            store.log().total_bytes() * 5 < size,
            "{} bytes left of {size}",
            store.log().total_bytes()
        );
        // Appends after a compaction come after what it rewrote.
        store.blocking_append([entry(990)]).await.expect("appended");
        store.log().close().await.expect("closed");
        drop(store);

        let mut again = LogStore::open(dir.path(), options()).expect("reopens");
        let after = state(&mut again).await;
        assert_eq!(after.0.last_purged_log_id, before.0.last_purged_log_id);
        assert_eq!(after.1, before.1);
        assert_eq!(after.2, (901..=990).collect::<Vec<_>>());
        let e = again.try_get_log_entries(950..951).await.expect("read");
        assert_eq!(format!("{:?}", e[0]), format!("{:?}", entry(950)));
    }
}
