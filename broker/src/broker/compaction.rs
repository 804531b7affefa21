//! Compaction: when the log has outgrown its live data, rewrite the live
//! data forward (each queue snapshotted under its lock with its place in
//! the log, encoded outside it) and delete the old segments; and the free
//! space appends that grow the log must leave so that this always fits.

use super::*;

impl Broker {
    /// Checks every second whether the log has outgrown its live data, and
    /// compacts it then; stops at shutdown.
    pub(super) async fn compact_when_due(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.compaction_due() {
                continue;
            }
            if let Err(e) = self.compact().await {
                tracing::warn!(error = %e, "log compaction failed; will retry");
            }
        }
    }

    /// Whether the log holds more garbage than live data, by measured
    /// bytes, plus some slack so that a nearly empty log is not rewritten
    /// every second; and has grown by that slack since the last
    /// compaction. The slack is a segment, or an eighth of the space the
    /// log may use, whichever is less: on a small disk the log must
    /// compact long before a segment fills.
    pub fn compaction_due(&self) -> bool {
        let Some(log) = self.inner.journal.log() else {
            return false;
        };
        let total = log.total_bytes();
        let floor = self
            .live_bytes()
            .saturating_mul(2)
            .max(self.inner.last_compacted.load(Ordering::Relaxed));
        let room = total.saturating_add(log.free_bytes());
        let slack = self.inner.segment_bytes.min(room / 8).max(4096);
        total > floor.saturating_add(slack)
    }

    /// What a compacted log would hold, estimated from what is live:
    /// durable queues' tasks and definitions, and jobs.
    pub fn live_bytes(&self) -> u64 {
        self.inner.durable_live.load(Ordering::Relaxed)
            + self.inner.jobs.bytes()
            + self.inner.schedules.bytes()
    }

    /// Free space an append that grows the log must leave behind: room
    /// for a compaction to copy everything live forward (it copies before
    /// it deletes), plus a margin for the settlements that free it (a
    /// sixteenth of the space the log may use, at most [`LOG_MARGIN`]).
    pub fn keep_free(&self) -> u64 {
        let margin = self.inner.journal.log().map_or(LOG_MARGIN, |log| {
            let room = log.total_bytes().saturating_add(log.free_bytes());
            LOG_MARGIN.min(room / 16)
        });
        self.live_bytes() + margin
    }

    /// Rewrites the log to hold only what is live: rolls to a new segment,
    /// writes every durable queue's definition and unfinished tasks and
    /// every job's state, waits for that to be durable, then deletes every
    /// older segment. Each queue's snapshot is taken under its lock along
    /// with its place in the log (so its later changes follow it there),
    /// but encoded and written after the lock is released: the queue goes
    /// on serving meanwhile. Returns the bytes written.
    pub async fn compact(&self) -> Result<u64> {
        let Some(log) = self.inner.journal.log() else {
            return Ok(0);
        };
        // No queue is defined or deleted while its snapshot is in flight.
        let _defs = self.inner.defs.lock().await;
        let before = log.total_bytes();
        let cut = log.roll().await?;
        let mut writers = Vec::new();
        for q in self.queues() {
            if !q.durable() {
                continue;
            }
            let taken = {
                let core = q.lock();
                if core.deleted {
                    continue;
                }
                // Cheap under the lock: payloads are shared, not copied.
                // The options with the tasks, as one moment.
                let spec = QueueSpec {
                    name: q.name().to_owned(),
                    config: core.state.config().clone(),
                    durable: true,
                };
                (core.state.snapshot(), log.reserve()?, spec)
            };
            let (snapshot, slot, spec) = taken;
            let define = wal::define(&spec, q.created_at);
            let name = q.name().to_owned();
            writers.push(tokio::task::spawn_blocking(move || {
                wal::write_snapshot(&slot, define, &name, snapshot).map(|bytes| (slot, bytes))
            }));
        }
        // Jobs after the queues: their state now includes every event
        // appended before this point.
        if let Some((jobs, slot)) = self.inner.jobs.snapshot(log)? {
            writers.push(tokio::task::spawn_blocking(move || {
                wal::write_jobs(&slot, jobs).map(|bytes| (slot, bytes))
            }));
        }
        // Schedules under their registry's lock with their place, as jobs:
        // a run journaled meanwhile lands after it.
        let (schedules, slot) = self.inner.schedules.states(|| log.reserve());
        let slot = slot?;
        writers.push(tokio::task::spawn_blocking(move || {
            wal::write_schedules(&slot, schedules).map(|bytes| (slot, bytes))
        }));
        let mut bytes = 0;
        let mut first_error = None;
        for w in writers {
            let written = match w.await {
                Ok(Ok((slot, n))) => slot.finish().await.map(|_| n),
                Ok(Err(e)) => Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "writing a compaction snapshot panicked");
                    Err(StorageError::Abandoned)
                }
            };
            match written {
                Ok(n) => bytes += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        let removed = log.remove_segments_before(cut).await?;
        self.inner
            .last_compacted
            .store(log.total_bytes(), Ordering::Relaxed);
        tracing::info!(
            before,
            after = log.total_bytes(),
            removed_segments = removed.segments,
            "log compacted"
        );
        Ok(bytes)
    }
}

/// Most free space the log keeps beyond the live data, for the
/// settlements that come before a compaction (acks, attempts) and a
/// segment header.
const LOG_MARGIN: u64 = 64 << 10;
