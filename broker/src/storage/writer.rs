//! The writer thread: owns the segment files, gathers whatever appends
//! arrived while it was busy into one group, writes the group with one
//! call and makes it durable with one `fdatasync` — group commit.
//!
//! A plain thread, not a tokio task: every step here blocks on the disk,
//! and a thread fed by a channel keeps that off the runtime without a
//! `spawn_blocking` per batch. Callers wait on tokio one-shots, which can
//! be completed from any thread.
//!
//! Requests are handled strictly in the order they were sent, which is
//! the order of the records in the log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::error::{Result, StorageError};
use super::format::{self, HEADER_LEN, SegmentHeader};
use super::lock::DirLock;
use super::options::{FsyncPolicy, LogOptions};
use super::recovery::Recovered;
use super::segment::{self, SegmentMeta};
#[cfg(any(test, feature = "testing"))]
use super::stats::Faults;
use super::stats::LogState;

/// A group is cut once it holds this much (or the segment size, if
/// smaller), so one slow write does not grow without bound.
const MAX_GROUP_BYTES: usize = 8 << 20;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Request {
    Append {
        records: Vec<Bytes>,
        /// Payload bytes, for cutting groups.
        bytes: usize,
        /// Free space (disk or quota) that must remain after these records,
        /// or they are refused as if the disk were full; see
        /// [`Log::append_keeping`](super::Log::append_keeping).
        keep_free: u64,
        /// `None` for `append_nowait`.
        reply: Option<Reply<u64>>,
    },
    /// A place in line whose records arrive later, in chunks, on
    /// `chunks` (`None`: no more); see [`Slot`](super::Slot).
    Slot {
        chunks: std::sync::mpsc::Receiver<Option<Vec<Bytes>>>,
        reply: Reply<u64>,
    },
    Flush(Reply<u64>),
    Roll(Reply<u64>),
    RemoveBefore(u64, Reply<Removed>),
    Close(Reply<()>),
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Append { bytes, .. } => *bytes,
            _ => 0,
        }
    }
}

/// What [`Log::remove_segments_before`](super::Log::remove_segments_before)
/// deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub segments: usize,
    pub bytes: u64,
}

struct Pending {
    records: Vec<Bytes>,
    keep_free: u64,
    reply: Option<Reply<u64>>,
}

impl Pending {
    /// Bytes its frames take in a segment.
    fn frame_bytes(&self) -> u64 {
        self.records
            .iter()
            .map(|r| (r.len() + format::FRAME_HEADER_LEN) as u64)
            .sum()
    }
}

pub(crate) struct Writer {
    dir: PathBuf,
    opts: LogOptions,
    /// Never empty; the last one is the active segment.
    segments: Vec<SegmentMeta>,
    active: File,
    state: Arc<LogState>,
    /// Released when the writer is dropped, i.e. after the last write.
    _lock: DirLock,
    /// Bytes written to the active segment since its last `fdatasync`.
    unsynced: bool,
    last_sync: Instant,
    /// A failed write may have left bytes past the active segment's `len`
    /// that could not be truncated yet; cut them before anything else.
    tail_dirty: bool,
    /// The group being encoded, reused between groups.
    buf: Vec<u8>,
    /// Set when an `fdatasync` failed: from then on every request is
    /// refused with this error (fail-stop; see [`StorageError::Stopped`]).
    failed: Option<StorageError>,
}

impl Writer {
    /// Takes over the recovered segments, appending to the last one, or
    /// creates the first segment.
    pub fn start(
        dir: PathBuf,
        opts: LogOptions,
        recovered: Recovered,
        lock: DirLock,
        state: Arc<LogState>,
    ) -> Result<Writer> {
        let mut segments = recovered.segments;
        let active = match segments.last() {
            Some(last) => OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(|e| StorageError::io("open", &last.path, e))?,
            None => {
                let first_seq = recovered.fresh_first_seq;
                let header = SegmentHeader {
                    first_seq,
                    prev_first_seq: 0,
                };
                let (file, path) = segment::create(&dir, header)?;
                segments.push(SegmentMeta {
                    first_seq,
                    next_seq: first_seq,
                    len: HEADER_LEN as u64,
                    path,
                });
                file
            }
        };
        state.publish(&segments);
        let writer = Writer {
            dir,
            opts,
            segments,
            active,
            state,
            _lock: lock,
            unsynced: false,
            last_sync: Instant::now(),
            tail_dirty: false,
            buf: Vec::new(),
            failed: None,
        };
        writer.measure_free();
        Ok(writer)
    }

    /// Publishes the free space for [`Log::free_bytes`](super::Log::free_bytes).
    fn measure_free(&self) -> u64 {
        let free = self.free_bytes();
        self.state.free_bytes.store(free, Relaxed);
        free
    }

    /// Serves requests until `close` or until every handle is gone, then
    /// syncs and releases the directory lock.
    pub fn run(mut self, rx: Receiver<Request>) {
        let group_cap = usize::try_from(self.opts.segment_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_GROUP_BYTES);
        let mut batch = Vec::new();
        let close_reply = loop {
            let first = match self.sync_deadline() {
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break None,
                },
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.background_sync();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break None,
                },
            };
            // Everything that queued up while the last group was being
            // written and synced goes into this one.
            let mut bytes = first.bytes();
            batch.push(first);
            while bytes < group_cap {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.bytes();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            if let Some(reply) = self.process(&mut batch) {
                break Some(reply);
            }
        };
        let result = self.close();
        match close_reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(e) = result {
                    error!(error = %e, "closing the log failed");
                }
            }
        }
    }

    /// Handles a batch in order: consecutive appends form one group.
    /// Returns the reply of a `Close`, dropping whatever came after it.
    fn process(&mut self, batch: &mut Vec<Request>) -> Option<Reply<()>> {
        let mut group = Vec::new();
        for req in batch.drain(..) {
            let other = match req {
                Request::Append {
                    records,
                    keep_free,
                    reply,
                    ..
                } => {
                    group.push(Pending {
                        records,
                        keep_free,
                        reply,
                    });
                    continue;
                }
                other => other,
            };
            self.commit(&mut group);
            match other {
                Request::Append { .. } => {}
                Request::Slot { chunks, reply } => self.fill_slot(chunks, reply),
                Request::Flush(reply) => {
                    let _ = reply.send(self.unless_failed(Self::flush));
                }
                Request::Roll(reply) => {
                    let _ = reply.send(self.unless_failed(Self::roll_if_used));
                }
                Request::RemoveBefore(seq, reply) => {
                    let _ = reply.send(self.unless_failed(|w| w.remove_before(seq)));
                }
                Request::Close(reply) => return Some(reply),
            }
        }
        self.commit(&mut group);
        None
    }

    /// Writes a group of appends and answers each with the sequence number
    /// of its last record, or all of them with the same error.
    fn commit(&mut self, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        if let Some(e) = &self.failed {
            for p in group.drain(..) {
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            return;
        }
        self.refuse_over_reserve(group);
        if group.is_empty() {
            return;
        }
        self.buf.clear();
        let mut records = 0u64;
        for p in group.iter() {
            for r in &p.records {
                format::encode_frame(&mut self.buf, r);
            }
            records += p.records.len() as u64;
        }
        let waiting = group.iter().any(|p| p.reply.is_some());
        let written = self.write_group(records, waiting);
        self.measure_free();
        match written {
            Ok(first) => {
                let mut seq = first;
                for p in group.drain(..) {
                    seq += p.records.len() as u64;
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Ok(seq - 1));
                    }
                }
                self.sync_if_due();
            }
            Err(e) => {
                self.state.write_errors.fetch_add(1, Relaxed);
                let unconfirmed: usize = group
                    .iter()
                    .filter(|p| p.reply.is_none())
                    .map(|p| p.records.len())
                    .sum();
                warn!(error = %e, records, dropped_nowait = unconfirmed, "append failed");
                for p in group.drain(..) {
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Writes `self.buf` (`records` frames) at the end of the active
    /// segment and, under `Always`, syncs it. Returns the first record's
    /// sequence number. On failure nothing of the group stays in the file.
    fn write_group(&mut self, records: u64, waiting: bool) -> Result<u64> {
        let needed = self.buf.len() as u64;
        if needed > 0 {
            self.make_room(needed)?;
            self.clean_tail()?;
        }
        let (offset, first) = {
            let a = self.active_meta();
            (a.len, a.next_seq)
        };
        if needed > 0 {
            let started = Instant::now();
            let written = self.pwrite(offset);
            self.state.write_latency.observe(started.elapsed());
            if let Err(e) = written {
                self.truncate_back(offset);
                let path = &self.active_meta().path;
                return Err(StorageError::io_needing("write", path, e, needed));
            }
            let a = self.active_meta_mut();
            a.len += needed;
            a.next_seq += records;
            self.unsynced = true;
            self.state.records_written.fetch_add(records, Relaxed);
            self.state.bytes_written.fetch_add(needed, Relaxed);
            self.state.batches.fetch_add(1, Relaxed);
            self.state.publish_active(self.active_meta());
        }
        // Under `Always`, nobody waits on `append_nowait` records: leave
        // them to the next sync rather than pay one for them. The other
        // policies sync after answering (`sync_if_due`).
        let sync_now = self.opts.fsync == FsyncPolicy::Always && waiting;
        let synced = if sync_now && self.unsynced {
            self.sync()
        } else {
            Ok(())
        };
        if let Err(e) = synced {
            // Not durable, so not confirmed: take the group back out
            // rather than let a later sync make it durable after all.
            self.truncate_back(offset);
            let a = self.active_meta_mut();
            a.len = offset;
            a.next_seq = first;
            self.state.publish_active(self.active_meta());
            return Err(e);
        }
        Ok(first)
    }

    /// Writes a slot's records as they arrive, each chunk with one write;
    /// everything queued behind the slot waits. Answers once the last
    /// chunk is durable per the policy.
    fn fill_slot(
        &mut self,
        chunks: std::sync::mpsc::Receiver<Option<Vec<Bytes>>>,
        reply: Reply<u64>,
    ) {
        if let Some(e) = &self.failed {
            let _ = reply.send(Err(e.clone()));
            return;
        }
        let mut last = self.active_meta().next_seq.saturating_sub(1);
        loop {
            let records = match chunks.recv() {
                Ok(Some(records)) => records,
                Ok(None) => break,
                Err(_) => {
                    let _ = reply.send(Err(StorageError::Abandoned));
                    return;
                }
            };
            if records.is_empty() {
                continue;
            }
            self.buf.clear();
            for r in &records {
                format::encode_frame(&mut self.buf, r);
            }
            let n = records.len() as u64;
            match self.write_group(n, false) {
                Ok(first) => last = first + n - 1,
                Err(e) => {
                    self.state.write_errors.fetch_add(1, Relaxed);
                    warn!(error = %e, "writing a reserved place in the log failed");
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let synced = if self.opts.fsync == FsyncPolicy::Always && self.unsynced {
            self.sync()
        } else {
            Ok(())
        };
        let _ = reply.send(synced.map(|()| last));
        self.sync_if_due();
    }

    /// Answers DiskFull to the appends that would leave less free space
    /// than they asked to keep (in group order: each sees the space the
    /// ones before it take), and drops them from the group.
    fn refuse_over_reserve(&mut self, group: &mut Vec<Pending>) {
        if group.iter().all(|p| p.keep_free == 0) {
            return;
        }
        // A roll costs a header; count it always, to err on the safe side.
        let mut free = self.measure_free().saturating_sub(HEADER_LEN as u64);
        let path = self.active_meta().path.clone();
        group.retain_mut(|p| {
            let needed = p.frame_bytes();
            if needed.saturating_add(p.keep_free) <= free {
                free -= needed;
                return true;
            }
            if let Some(reply) = p.reply.take() {
                let _ = reply.send(Err(StorageError::DiskFull {
                    path: path.clone(),
                    needed,
                    cause: format!(
                        "{free} bytes free, and the log keeps {} free so that it can always compact",
                        p.keep_free
                    ),
                }));
            }
            false
        });
    }

    /// Space the log may still use: what the filesystem has free for us,
    /// and what is left of the quota, whichever is less.
    fn free_bytes(&self) -> u64 {
        // The field types differ between platforms (u64 on Linux).
        #[allow(clippy::unnecessary_cast)]
        let disk = match nix::sys::statvfs::fstatvfs(&self.active) {
            Ok(s) => (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64),
            // Cannot tell: let the write itself find out.
            Err(_) => u64::MAX,
        };
        let quota = self.opts.max_bytes.map_or(u64::MAX, |max| {
            max.saturating_sub(self.segments.iter().map(|s| s.len).sum())
        });
        disk.min(quota)
    }

    /// Rolls the active segment if the group would take it past
    /// `segment_bytes`, after checking the quota.
    fn make_room(&mut self, needed: u64) -> Result<()> {
        let active = self.active_meta();
        let roll = !active.is_empty() && active.len + needed > self.opts.segment_bytes;
        if let Some(max) = self.opts.max_bytes {
            let used: u64 = self.segments.iter().map(|s| s.len).sum();
            let extra = if roll { HEADER_LEN as u64 } else { 0 };
            if used + needed + extra > max {
                return Err(StorageError::DiskFull {
                    path: active.path.clone(),
                    needed,
                    cause: format!(
                        "the log's quota (max_bytes = {max}) is reached: {used} bytes in use"
                    ),
                });
            }
        }
        if roll {
            self.roll()?;
        }
        Ok(())
    }

    /// Starts a new segment at the next sequence number. The old one is
    /// synced first whatever the policy: only the last segment may hold a
    /// torn write, so everything before it must be whole on disk.
    fn roll(&mut self) -> Result<()> {
        self.clean_tail()?;
        if self.unsynced {
            self.sync()?;
        }
        let (first_seq, prev_first_seq) = {
            let a = self.active_meta();
            (a.next_seq, a.first_seq)
        };
        let header = SegmentHeader {
            first_seq,
            prev_first_seq,
        };
        let (file, path) = segment::create(&self.dir, header)?;
        self.active = file;
        self.segments.push(SegmentMeta {
            first_seq,
            next_seq: first_seq,
            len: HEADER_LEN as u64,
            path,
        });
        self.state.publish(&self.segments);
        Ok(())
    }

    fn roll_if_used(&mut self) -> Result<u64> {
        if !self.active_meta().is_empty() {
            self.roll()?;
        }
        Ok(self.active_meta().first_seq)
    }

    fn flush(&mut self) -> Result<u64> {
        if self.unsynced {
            self.sync()?;
        }
        Ok(self.active_meta().next_seq - 1)
    }

    /// Deletes, oldest first, every non-active segment whose records all
    /// come before `seq`. Only a prefix is ever removed, so the remaining
    /// log has no holes.
    fn remove_before(&mut self, seq: u64) -> Result<Removed> {
        // What replaces the old segments (a compaction's rewrite) must be
        // on disk before they go, whatever the fsync policy: otherwise a
        // power loss in between loses both copies.
        if self.unsynced && self.segments.len() > 1 && self.segments[0].next_seq <= seq {
            self.sync()?;
        }
        let mut removed = Removed::default();
        let mut result = Ok(());
        while self.segments.len() > 1 && self.segments[0].next_seq <= seq {
            let oldest = &self.segments[0];
            if let Err(e) = fs::remove_file(&oldest.path) {
                result = Err(StorageError::io("remove", &oldest.path, e));
                break;
            }
            removed.segments += 1;
            removed.bytes += oldest.len;
            self.segments.remove(0);
        }
        if removed.segments > 0 {
            self.state.publish(&self.segments);
            self.measure_free();
            let synced = segment::sync_dir(&self.dir);
            result = result.and(synced);
        }
        result.map(|()| removed)
    }

    fn sync_deadline(&self) -> Option<Instant> {
        match self.opts.fsync {
            FsyncPolicy::Interval(every) if self.unsynced && self.failed.is_none() => {
                Some(self.last_sync + every)
            }
            _ => None,
        }
    }

    /// The interval policy, right after a group was answered.
    fn sync_if_due(&mut self) {
        let due = matches!(self.opts.fsync, FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every);
        if due {
            self.background_sync();
        }
    }

    /// The interval policy's timer. Its records were confirmed already, so
    /// a failure can only be reported (and stops the log: see `sync`).
    fn background_sync(&mut self) {
        if !self.unsynced || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.sync() {
            error!(error = %e, "background fdatasync failed: records confirmed since the last one may not be on disk");
        }
    }

    /// Runs `op` unless the log has stopped.
    fn unless_failed<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => op(self),
        }
    }

    fn sync(&mut self) -> Result<()> {
        let started = Instant::now();
        match self.fdatasync() {
            Ok(()) => {
                let took = started.elapsed();
                self.state.fsync_latency.observe(took);
                self.state.fsyncs.fetch_add(1, Relaxed);
                self.state
                    .last_fsync_nanos
                    .store(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
                self.unsynced = false;
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(e) => {
                self.state.fsync_errors.fetch_add(1, Relaxed);
                let err = StorageError::io("fdatasync", &self.active_meta().path, e);
                error!(error = %err, "fdatasync failed: the log stops taking writes until a restart");
                self.failed = Some(StorageError::Stopped {
                    cause: err.to_string(),
                });
                self.state.stopped.store(true, Relaxed);
                Err(err)
            }
        }
    }

    fn fdatasync(&self) -> io::Result<()> {
        #[cfg(any(test, feature = "testing"))]
        {
            let ms = self.state.faults.slow_sync_ms.load(Relaxed);
            if ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            if Faults::take(&self.state.faults.fail_syncs) {
                return Err(io::Error::other("injected fdatasync failure"));
            }
        }
        self.active.sync_data()
    }

    /// One positioned write of the whole group.
    fn pwrite(&self, offset: u64) -> io::Result<()> {
        #[cfg(any(test, feature = "testing"))]
        if Faults::take(&self.state.faults.fail_writes) {
            // A disk that fills up part-way through the group.
            let half = &self.buf[..self.buf.len() / 2];
            let _ = self.active.write_all_at(half, offset);
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        self.active.write_all_at(&self.buf, offset)
    }

    /// Cuts whatever a failed write left past `offset`, so no half frame
    /// sits in the middle of the log once later groups are written. If
    /// even that fails, the next write retries it first.
    fn truncate_back(&mut self, offset: u64) {
        if let Err(e) = self.active.set_len(offset) {
            self.tail_dirty = true;
            error!(file = %self.active_meta().path.display(), offset, error = %e, "could not truncate after a failed write; will retry before the next one");
        }
    }

    fn clean_tail(&mut self) -> Result<()> {
        if !self.tail_dirty {
            return Ok(());
        }
        let a = self.active_meta();
        self.active
            .set_len(a.len)
            .and_then(|()| self.active.sync_data())
            .map_err(|e| StorageError::io("truncate", &a.path, e))?;
        self.tail_dirty = false;
        Ok(())
    }

    /// Syncs what is pending; the lock is released when `self` drops.
    fn close(mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            // Syncing again could "succeed" over lost pages: say it failed.
            return Err(e);
        }
        self.clean_tail()?;
        if self.unsynced {
            self.sync()?;
        }
        Ok(())
    }

    fn active_meta(&self) -> &SegmentMeta {
        // `segments` is never empty: `start` ensures one and only
        // non-active segments are removed.
        &self.segments[self.segments.len() - 1]
    }

    fn active_meta_mut(&mut self) -> &mut SegmentMeta {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}
