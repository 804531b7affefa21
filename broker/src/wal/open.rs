//! Start-up: open the data directory's log and replay it into the state
//! the broker starts from.

use std::path::{Path, PathBuf};

use crate::storage::{Log, LogOptions};
use crate::wal::codec::Recovery;

/// Opens the log in `dir` and replays it: blocking work, for start-up
/// (through [`open`]) and for tests that reopen a log. Errors are one
/// readable line: the directory is locked by another broker, a record is
/// damaged (file and offset), or a record does not decode (skipped, with
/// a warning, under `--repair`).
pub fn replay(dir: &Path, options: LogOptions) -> Result<(Log, Recovery), String> {
    let repair = options.repair;
    // Log::open creates the directory (durably: its parent is synced).
    let (log, records) = Log::open(dir, options).map_err(|e| e.to_string())?;
    let mut recovery = Recovery::default();
    for item in records {
        let (seq, bytes) = item.map_err(|e| e.to_string())?;
        if let Err(e) = recovery.apply(&bytes) {
            let msg = format!("record {seq} in {} does not decode: {e}", dir.display());
            if repair {
                tracing::warn!("{msg}; skipped (--repair)");
            } else {
                return Err(format!(
                    "{msg}; refusing to start (--repair skips it, losing what it held)"
                ));
            }
        }
    }
    Ok((log, recovery))
}

/// [`replay`] off the runtime's threads, logging what was recovered.
pub async fn open(dir: PathBuf, options: LogOptions) -> Result<(Log, Recovery), String> {
    let fsync = options.fsync;
    let shown = dir.clone();
    let started = std::time::Instant::now();
    // Reading the whole log is blocking work; nothing else runs yet, but
    // keep the runtime's threads free anyway.
    let (log, recovery) = tokio::task::spawn_blocking(move || replay(&dir, options))
        .await
        .map_err(|e| format!("recovery failed: {e}"))??;
    let tasks: usize = recovery.queues.values().map(|q| q.tasks.len()).sum();
    tracing::info!(
        dir = %shown.display(),
        records = recovery.records,
        queues = recovery.queues.len(),
        tasks,
        elapsed = ?started.elapsed(),
        fsync = %fsync,
        "log recovered"
    );
    Ok((log, recovery))
}
