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
use crate::storage::{Log, LogOptions};

/// What the log holds, as replayed and kept up to date.
#[derive(Debug, Default)]
struct Held {
    vote: Option<Vote<u64>>,
    /// Entries after `purged`, by index.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// The last entry dropped behind a snapshot.
    purged: Option<LogId<u64>>,
}

/// The Raft log of one member. Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct LogStore {
    log: Log,
    held: Arc<Mutex<Held>>,
}

fn record(kind: pb::log_record::Kind) -> Bytes {
    Bytes::from(pb::LogRecord { kind: Some(kind) }.encode_to_vec())
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
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
                    held.entries.insert(e.log_id.index, e);
                }
                Some(pb::log_record::Kind::Vote(v)) => held.vote = Some(vote_from_pb(&v)),
                Some(pb::log_record::Kind::TruncateFrom(i)) => {
                    held.entries.split_off(&i);
                }
                Some(pb::log_record::Kind::Purged(id)) => {
                    let id = log_id_from_pb(&id);
                    held.entries = held.entries.split_off(&(id.index + 1));
                    held.purged = Some(id);
                }
                None => return Err(format!("Raft log record {seq} is empty")),
            }
        }
        Ok(LogStore {
            log,
            held: Arc::new(Mutex::new(held)),
        })
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
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let held = self.held();
        let last = held.entries.values().next_back().map(|e| e.log_id);
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
                records.push(record(pb::log_record::Kind::Entry(entry_to_pb(&e))));
                held.entries.insert(e.log_id.index, e);
            }
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
            held.entries.split_off(&log_id.index);
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
            held.entries = held.entries.split_off(&(log_id.index + 1));
            held.purged = Some(log_id);
            self.log
                .append(vec![record(pb::log_record::Kind::Purged(log_id_to_pb(
                    &log_id,
                )))])
        };
        written.await.map_err(write_err)?;
        Ok(())
    }
}
