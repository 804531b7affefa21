//! The memory budget: bytes clients make the broker keep, reserved before
//! a batch is stored so concurrent producers cannot overshoot it together.

use super::*;

impl Broker {
    /// Reserves `bytes` more of payload against the memory budget, or
    /// refuses when it is used up. Hold the reservation until the batch
    /// has been applied to its queue (it is then counted twice for a
    /// moment, which errs on the side of refusing).
    pub fn reserve_memory(&self, bytes: u64) -> Result<MemoryReservation> {
        let inner = &self.inner;
        // SeqCst throughout: the check reads two counters that other
        // threads move in turn (payload up, then reservation down), and
        // must never see the batch in neither.
        let others = inner.reserved_bytes.fetch_add(bytes, Ordering::SeqCst);
        let reservation = MemoryReservation {
            inner: self.inner.clone(),
            bytes,
        };
        let used = inner
            .held_bytes
            .load(Ordering::SeqCst)
            .saturating_add(inner.jobs.bytes())
            .saturating_add(inner.schedules.bytes())
            .saturating_add(others);
        let max = self.limits().max_memory_bytes;
        if used.saturating_add(bytes) > max {
            return Err(Error::LimitReached(format!(
                "the broker's memory budget is used up ({used} of {max} bytes held for \
                 queued and waiting tasks, keys, jobs and schedules; --max-memory-bytes); \
                 retry when workers have drained some"
            )));
        }
        Ok(reservation)
    }

    /// Bytes counted against the memory budget: what the queues hold
    /// (payloads, headers, keys, job ids), the jobs' outcomes and the
    /// schedules.
    pub fn held_bytes(&self) -> u64 {
        self.inner.held_bytes.load(Ordering::Relaxed)
            + self.inner.jobs.bytes()
            + self.inner.schedules.bytes()
    }
}

/// Payload bytes counted against the memory budget until dropped; see
/// [`Broker::reserve_memory`].
#[must_use = "the reservation is released when dropped"]
pub struct MemoryReservation {
    pub(super) inner: Arc<Inner>,
    pub(super) bytes: u64,
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.inner
            .reserved_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}
