//! The log's one error type.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything the log can fail with. Each variant names the file or
/// directory at fault so an operator can act on the message alone.
///
/// `Clone` because one failed write fails every append in its batch, and
/// each waiting caller gets its own copy (hence the `Arc` around
/// `io::Error`, which is not `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{op} {}: {cause}", path.display())]
    Io {
        /// What was being done: "open", "write", "fdatasync", ...
        op: &'static str,
        path: PathBuf,
        cause: Arc<io::Error>,
    },
    /// The disk (or the log's `max_bytes` quota) has no room for a batch.
    /// Nothing of the batch stays in the log; a later append may succeed
    /// once space is freed.
    #[error("disk full: cannot write {needed} bytes to {}: {cause}", path.display())]
    DiskFull {
        path: PathBuf,
        needed: u64,
        cause: String,
    },
    /// Damage that is not a torn write at the tail of the log.
    #[error(
        "corrupt log segment {} at byte {offset}: {reason} \
         (open with repair to copy the segment aside and drop the damaged records)",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment written by a newer format; never "repaired" away.
    #[error(
        "log segment {} has format version {version}, this broker reads version {supported}",
        file.display()
    )]
    UnsupportedVersion {
        file: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("another broker{} is using {} (its LOCK file is held)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("record of {len} bytes is larger than the log's limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    #[error("invalid log option {key}: {reason}")]
    InvalidOption { key: &'static str, reason: String },
    #[error("the log is closed")]
    Closed,
    /// A [`Slot`](super::Slot) was dropped before it was finished.
    #[error("a place reserved in the log was given up before it was filled")]
    Abandoned,
    /// An `fdatasync` failed, so the log stopped taking writes: on Linux a
    /// failed sync may have dropped the dirty pages, and a later sync
    /// would report success for data that never reached the disk
    /// (PostgreSQL's "fsyncgate"). What was confirmed before is safe;
    /// nothing is confirmed after. Only a restart (which replays what is
    /// really on disk) clears it.
    #[error(
        "the write-ahead log stopped after a failed fdatasync ({cause}); \
         nothing is written or confirmed since: restart the broker once the disk is healthy"
    )]
    Stopped { cause: String },
    /// In a cluster: the record was not committed by a majority (this
    /// member lost its leadership, or its Raft stopped). It may still be
    /// committed by a new leader, or may not: retry with the leader.
    #[error("not committed by the cluster ({reason}); retry with the leader")]
    NotCommitted { reason: String },
}

impl StorageError {
    /// An I/O error during `op` on `path`. A full disk or quota becomes
    /// [`StorageError::DiskFull`] so callers can tell it from damage.
    pub(crate) fn io(op: &'static str, path: &Path, e: io::Error) -> Self {
        Self::io_needing(op, path, e, 0)
    }

    /// As [`StorageError::io`], for a write of `needed` bytes.
    pub(crate) fn io_needing(op: &'static str, path: &Path, e: io::Error, needed: u64) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StorageError::DiskFull {
                path: path.to_path_buf(),
                needed,
                cause: e.to_string(),
            },
            _ => StorageError::Io {
                op,
                path: path.to_path_buf(),
                cause: Arc::new(e),
            },
        }
    }

    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl ToString) -> Self {
        StorageError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
