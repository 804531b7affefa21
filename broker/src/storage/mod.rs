//! The broker's embedded write-ahead log: an append-only, segmented,
//! checksummed log of opaque records with group commit, replayed on start.
//!
//! The broker encodes its own commands into the records; this module only
//! promises to keep their bytes and their order. It lives in these files:
//! [`format`](mod@format) (pure encode/decode of headers and frames), `segment` (file
//! names, creation, frame reading), `recovery` (checking and replaying on
//! open), `writer` (the thread that writes and syncs), `lock`, `options`,
//! `stats`, `error`.
//!
//! # On-disk format (version 1)
//!
//! A data directory holds:
//! - `LOCK` — held with `flock(LOCK_EX)` while a log is open; contains the
//!   holder's pid as decimal text, for error messages only.
//! - segment files `NNNNNNNNNNNNNNNNNNNN.seg`, where the twenty zero-padded
//!   digits are the sequence number of the segment's first record, e.g.
//!   `00000000000000000001.seg`. Sorting the names sorts the log.
//! - possibly `<segment>.seg.tmp` (a segment whose creation a crash cut
//!   short; deleted on open) and `<segment>.seg.corrupt-<unix secs>[-N]`
//!   (copies set aside by repair; never read again, for the operator).
//!
//! A segment file is a 32-byte header followed by frames, back to back,
//! to the end of the file. All integers are little-endian.
//!
//! ```text
//! header:  0..8   magic   "SLUICEWL"
//!          8..12  u32     format version = 1
//!          12..20 u64     first_seq: sequence number of the first record,
//!                         equal to the number in the file name, >= 1
//!          20..28 u64     prev_first_seq: first_seq of the segment this
//!                         one was rolled from, 0 if none
//!          28..32 u32     CRC32C of bytes 0..28
//! frame:   0..4   u32     len: payload length, <= 64 MiB (67108864)
//!          4..8   u32     CRC32C (Castagnoli) of the 4 len bytes followed
//!                         by the payload
//!          8..    len bytes of payload
//! ```
//!
//! Sequence numbers are implicit: the k-th frame (from 0) of a segment has
//! `first_seq + k`. The log starts at 1. A segment's successor starts at
//! the sequence number after its last record, except after a repair cut
//! records out of it: then there is a gap, and the successor's
//! `prev_first_seq` still names it. A segment whose `prev_first_seq` names
//! a segment other than the one before it in the directory means a segment
//! went missing. The first segment's `prev_first_seq` is not checked (the
//! segments before it were removed on purpose).
//!
//! # Guarantees
//!
//! - Records are replayed in the order their appends were *called* (the
//!   call, not the `.await`, takes the place in line), each with the
//!   sequence number its `append` returned.
//! - Under [`FsyncPolicy::Always`] an `append` resolves `Ok` only after
//!   `fdatasync` covered its records: they survive a crash or power loss.
//!   Under `Interval`/`Never` it resolves once the OS has them: they
//!   survive a broker crash, and a power loss may lose the unsynced tail.
//! - One `write` and at most one `fdatasync` per group: everything that
//!   queued while the previous group was on its way to disk.
//! - An append that fails to write (disk full, quota, I/O error) left
//!   nothing in the log: the file is truncated back to the last good
//!   frame, the sequence numbers are not used up, and the log takes
//!   appends again. (Only a second failure — the truncation itself
//!   failing, or a crash before it — could leave its records to be
//!   replayed.)
//! - A failed `fdatasync` stops the log for good (fail-stop): Linux may
//!   drop the dirty pages of a failed sync and report the next one as a
//!   success, so nothing is written or confirmed after it; every later
//!   request fails with [`StorageError::Stopped`] until the process
//!   restarts and replays what really is on disk.
//! - [`Log::append_keeping`] refuses an append that would leave less free
//!   space than asked, so the broker can keep room for the appends that
//!   shrink the log and for compaction, which copies before it deletes.
//! - [`Log::remove_segments_before`] syncs what the active segment holds
//!   before it deletes anything, whatever the fsync policy.
//! - An append of several records is not atomic across a crash: a torn
//!   tail can keep a prefix of an unconfirmed append.
//! - On open, damage that reaches the end of the last segment (a frame
//!   cut short, a last frame whose checksum fails — alone or followed by
//!   nothing but zeros — or zeros to the end) is a torn write and is cut
//!   off with a warning. Any other damage —
//!   anywhere in an earlier segment, or followed by more data in the last
//!   — refuses the open with [`StorageError::Corrupt`] naming file and
//!   offset, unless [`LogOptions::repair`] is set. Every segment but the
//!   last is synced before the next one is created, which is why damage
//!   there can only be corruption.
//! - A damaged length field within 64 MiB of the end of the last segment
//!   can pass for a torn write (the checksum covering it cannot be read);
//!   a crash that persisted pages out of order can look like corruption
//!   in the middle (then open with `repair`).

mod error;
pub mod format;
mod lock;
mod options;
mod recovery;
mod segment;
mod stats;
#[cfg(test)]
mod tests;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::info_span;

pub use error::StorageError;
pub use options::{FsyncPolicy, LogOptions};
pub use recovery::Replay;
#[cfg(any(test, feature = "testing"))]
pub use stats::Faults;
pub use stats::{LogStats, SegmentInfo};
pub use writer::Removed;

use error::Result;
use stats::LogState;
use writer::{Reply, Request, Writer};

/// A handle on an open log. Cheap to clone; every clone feeds the same
/// writer thread. The log closes when [`Log::close`] is called or the last
/// handle is dropped (then the writer finishes what was sent, syncs and
/// releases the directory lock in the background).
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Request>,
    state: Arc<LogState>,
    dir: PathBuf,
    max_record_bytes: usize,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`: takes the directory
    /// lock, checks every segment (see the module docs for what is cut,
    /// refused or repaired), starts the writer thread, and returns the
    /// records found, to be replayed before they are needed.
    ///
    /// Blocking: it reads the whole log. Call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Log, Replay)> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        segment::create_dir_synced(&dir)?;
        let lock = lock::lock_dir(&dir)?;
        let recovered = recovery::recover(&dir, &options)?;
        let replay = Replay::new(&recovered.segments);
        let state = Arc::new(LogState::default());
        let max_record_bytes = options.max_record_bytes;
        let writer = Writer::start(dir.clone(), options, recovered, lock, state.clone())?;

        let (tx, rx) = mpsc::channel();
        let span = info_span!("wal", dir = %dir.display());
        std::thread::Builder::new()
            .name("sluice-wal".into())
            .spawn(move || span.in_scope(|| writer.run(rx)))
            .map_err(|e| StorageError::io("start writer thread for", &dir, e))?;
        let inner = Inner {
            tx,
            state,
            dir,
            max_record_bytes,
        };
        Ok((
            Log {
                inner: Arc::new(inner),
            },
            replay,
        ))
    }

    /// Appends `records` and resolves, once they are durable per the fsync
    /// policy, to the sequence number of the last one (for an empty
    /// `records`: of the last record appended before, 0 if none).
    ///
    /// The records take their place in the log when this is *called*, not
    /// when the future is polled, so a caller can append under its own
    /// lock and await after releasing it, and the log order is the call
    /// order. Dropping the future does not withdraw the records.
    pub fn append(
        &self,
        records: Vec<Bytes>,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        self.append_keeping(records, 0)
    }

    /// [`Log::append`], refused with [`StorageError::DiskFull`] unless at
    /// least `keep_free` bytes (of the disk, and of the quota) stay free
    /// after it. The broker asks this of appends that grow what the log
    /// must keep (enqueues), leaving room for the appends that shrink it
    /// (acks) and for a compaction, which copies the live records forward
    /// before it can delete anything: a full disk never wedges the log.
    pub fn append_keeping(
        &self,
        records: Vec<Bytes>,
        keep_free: u64,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let sent = self.check(&records).and_then(|bytes| {
            self.request(|reply| Request::Append {
                records,
                bytes,
                keep_free,
                reply: Some(reply),
            })
        });
        answer(sent)
    }

    /// Appends `records` without waiting for them to be written. For
    /// records whose loss in a crash is tolerable: they are written in
    /// order with the others, but nothing waits for a sync on their
    /// account, and a write failure is only logged. Errors only if a
    /// record is too large or the log is closed.
    pub fn append_nowait(&self, records: Vec<Bytes>) -> Result<()> {
        let bytes = self.check(&records)?;
        self.send(Request::Append {
            records,
            bytes,
            keep_free: 0,
            reply: None,
        })
    }

    /// Takes the next place in the log now, for records that will be made
    /// later (and may be many): what is appended after this call comes
    /// after them. Lets a caller snapshot state under its lock, take the
    /// place there, and encode after releasing the lock. The writer waits
    /// for the slot's records (everything behind it waits too), so fill
    /// it promptly.
    pub fn reserve(&self) -> Result<Slot> {
        // One chunk in flight: the filler never runs far ahead of the disk.
        let (tx, chunks) = mpsc::sync_channel(1);
        let reply = self.request(|reply| Request::Slot { chunks, reply })?;
        Ok(Slot {
            tx: Some(tx),
            reply,
            max_record_bytes: self.inner.max_record_bytes,
        })
    }

    /// Makes everything appended before this call durable, whatever the
    /// fsync policy; resolves to the last sequence number written.
    pub fn flush(&self) -> impl Future<Output = Result<u64>> + Send + 'static {
        answer(self.request(Request::Flush))
    }

    /// Starts a new segment unless the active one is empty, and resolves
    /// to the new active segment's first sequence number. Every record
    /// before it is then in non-active segments, which
    /// [`Log::remove_segments_before`] can delete.
    ///
    /// Compaction, as the broker does it: `let cut = log.roll().await?`,
    /// append the live records again and await them, then
    /// `log.remove_segments_before(cut)`.
    pub fn roll(&self) -> impl Future<Output = Result<u64>> + Send + 'static {
        answer(self.request(Request::Roll))
    }

    /// Deletes, oldest first, each non-active segment all of whose records
    /// have sequence numbers below `seq`, then syncs the directory. The
    /// active segment is never deleted. Must not run while a [`Replay`]
    /// still has those segments to read.
    pub fn remove_segments_before(
        &self,
        seq: u64,
    ) -> impl Future<Output = Result<Removed>> + Send + 'static {
        answer(self.request(|reply| Request::RemoveBefore(seq, reply)))
    }

    /// The segments, oldest first; the last is the active one.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner.state.segments().clone()
    }

    /// Bytes of all segments on disk.
    pub fn total_bytes(&self) -> u64 {
        self.inner
            .state
            .total_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stats(&self) -> LogStats {
        self.inner.state.snapshot()
    }

    /// Free space the log may still use: the disk's (as the filesystem
    /// reports it to us) or what is left of the quota, whichever is less;
    /// measured after each write.
    pub fn free_bytes(&self) -> u64 {
        self.inner
            .state
            .free_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Faults to inject into this log's writer (tests only).
    #[cfg(any(test, feature = "testing"))]
    pub fn faults(&self) -> &Faults {
        &self.inner.state.faults
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes and syncs everything appended before, stops the writer and
    /// releases the directory lock; resolves once the directory can be
    /// opened again. Later calls on any clone fail with
    /// [`StorageError::Closed`]; closing twice is fine.
    pub fn close(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        let sent = self.request(Request::Close);
        async move {
            match sent {
                Ok(rx) => rx.await.unwrap_or(Ok(())),
                Err(StorageError::Closed) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }

    /// Checks record sizes; returns the payload bytes.
    fn check(&self, records: &[Bytes]) -> Result<usize> {
        let max = self.inner.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.len() > max) {
            return Err(StorageError::RecordTooLarge { len: r.len(), max });
        }
        Ok(records.iter().map(Bytes::len).sum())
    }

    fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        Ok(rx)
    }

    fn send(&self, req: Request) -> Result<()> {
        self.inner.tx.send(req).map_err(|_| StorageError::Closed)
    }
}

/// A place in the log taken by [`Log::reserve`]. Send its records with
/// [`Slot::send`] (blocking: call it off the async runtime), then
/// [`Slot::finish`]. Dropped unfinished, it is abandoned: what was sent
/// stays in the log, and `finish` is never answered Ok.
#[derive(Debug)]
pub struct Slot {
    tx: Option<mpsc::SyncSender<Option<Vec<Bytes>>>>,
    reply: oneshot::Receiver<Result<u64>>,
    max_record_bytes: usize,
}

impl Slot {
    /// Hands the writer the next records; blocks while it is behind.
    pub fn send(&self, records: Vec<Bytes>) -> Result<()> {
        if let Some(r) = records.iter().find(|r| r.len() > self.max_record_bytes) {
            return Err(StorageError::RecordTooLarge {
                len: r.len(),
                max: self.max_record_bytes,
            });
        }
        match &self.tx {
            Some(tx) => tx.send(Some(records)).map_err(|_| StorageError::Closed),
            None => Err(StorageError::Closed),
        }
    }

    /// No more records: resolves, once they are durable per the fsync
    /// policy, to the sequence number of the last record written.
    pub fn finish(mut self) -> impl Future<Output = Result<u64>> + Send + 'static {
        let sent = match self.tx.take() {
            Some(tx) => tx.send(None).map_err(|_| StorageError::Closed),
            None => Err(StorageError::Closed),
        };
        let reply = self.reply;
        async move {
            sent?;
            reply.await.unwrap_or(Err(StorageError::Closed))
        }
    }
}

/// Resolves once a log append is durable (per the fsync policy).
pub type Durability = std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Waits for the writer's answer; a writer gone before answering means
/// the log was closed.
async fn answer<T>(sent: Result<oneshot::Receiver<Result<T>>>) -> Result<T> {
    sent?.await.unwrap_or(Err(StorageError::Closed))
}
