//! What the writer shares with the handles: counters for metrics and a
//! snapshot of the segment list.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::segment::SegmentMeta;

/// One segment, as [`Log::segments`](super::Log::segments) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first record (and the number in its name).
    pub first_seq: u64,
    /// One past its last record's sequence number; equal to `first_seq`
    /// when it holds none.
    pub next_seq: u64,
    /// Bytes on disk, header included.
    pub bytes: u64,
    /// The segment being appended to; never removed.
    pub active: bool,
}

impl SegmentInfo {
    /// Its last record's sequence number, if it has records.
    pub fn last_seq(&self) -> Option<u64> {
        (self.next_seq > self.first_seq).then(|| self.next_seq - 1)
    }

    pub(crate) fn of(meta: &SegmentMeta, active: bool) -> Self {
        SegmentInfo {
            first_seq: meta.first_seq,
            next_seq: meta.next_seq,
            bytes: meta.len,
            active,
        }
    }
}

/// A snapshot of the log's counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogStats {
    /// Records written since open (confirmed or not yet synced).
    pub records_written: u64,
    /// Frame bytes written since open.
    pub bytes_written: u64,
    /// Write calls: one per group of appends gathered together.
    pub batches: u64,
    /// `fdatasync` calls on segments. Far below the number of appends
    /// under load: that is group commit at work.
    pub fsyncs: u64,
    /// How long the last `fdatasync` took.
    pub last_fsync: Duration,
    /// Batches that failed to write (disk full, I/O error).
    pub write_errors: u64,
    /// `fdatasync` calls that failed.
    pub fsync_errors: u64,
    /// The log stopped taking writes after a failed `fdatasync`.
    pub stopped: bool,
    pub segments: usize,
    /// Bytes of all segments on disk.
    pub total_bytes: u64,
    /// How long group-commit writes took.
    pub write_latency: crate::latency::Snapshot,
    /// How long `fdatasync` calls took.
    pub fsync_latency: crate::latency::Snapshot,
}

/// State the writer thread updates and the handles read. The mutex is
/// held only to copy or replace the segment list, never during I/O.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub last_fsync_nanos: AtomicU64,
    pub write_errors: AtomicU64,
    pub fsync_errors: AtomicU64,
    pub stopped: AtomicBool,
    /// Free space (disk or quota) the log may use, as last measured.
    pub free_bytes: AtomicU64,
    /// Bytes of all segments, kept beside the list so the broker's hot
    /// path reads it without the lock.
    pub total_bytes: AtomicU64,
    pub write_latency: crate::latency::Histogram,
    pub fsync_latency: crate::latency::Histogram,
    segments: Mutex<Vec<SegmentInfo>>,
    #[cfg(any(test, feature = "testing"))]
    pub faults: Faults,
}

impl LogState {
    pub fn segments(&self) -> MutexGuard<'_, Vec<SegmentInfo>> {
        // A panic elsewhere while holding this lock cannot leave the list
        // half-updated in a way worse than stale numbers.
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn publish(&self, segments: &[SegmentMeta]) {
        let last = segments.len().saturating_sub(1);
        let mut list = self.segments();
        *list = segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo::of(s, i == last))
            .collect();
        self.total_bytes
            .store(list.iter().map(|s| s.bytes).sum(), Relaxed);
    }

    /// Cheaper than [`LogState::publish`] when only the active segment grew.
    pub fn publish_active(&self, active: &SegmentMeta) {
        let mut list = self.segments();
        if let Some(last) = list.last_mut() {
            *last = SegmentInfo::of(active, true);
        }
        self.total_bytes
            .store(list.iter().map(|s| s.bytes).sum(), Relaxed);
    }

    pub fn snapshot(&self) -> LogStats {
        let (segments, total_bytes) = {
            let s = self.segments();
            (s.len(), s.iter().map(|s| s.bytes).sum())
        };
        LogStats {
            records_written: self.records_written.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            batches: self.batches.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            last_fsync: Duration::from_nanos(self.last_fsync_nanos.load(Relaxed)),
            write_errors: self.write_errors.load(Relaxed),
            fsync_errors: self.fsync_errors.load(Relaxed),
            stopped: self.stopped.load(Relaxed),
            segments,
            total_bytes,
            write_latency: self.write_latency.snapshot(),
            fsync_latency: self.fsync_latency.snapshot(),
        }
    }
}

/// Failures tests inject into the writer (the broker's own tests, and with
/// the `testing` feature, other crates' tests).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail this many writes with "no space left", after writing half.
    pub fail_writes: std::sync::atomic::AtomicU32,
    /// Fail this many `fdatasync` calls.
    pub fail_syncs: std::sync::atomic::AtomicU32,
    /// Make each `fdatasync` take this long (ms), so appenders pile up.
    pub slow_sync_ms: AtomicU64,
}

#[cfg(any(test, feature = "testing"))]
impl Faults {
    pub fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        counter
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}
