//! Settling leases: ack, nack, extend, taking back an unsent delivery,
//! and what a failure leads to (a retry, or a dead letter).
//!
//! A lease is settled only by what proves it holds it (see [`Claim`]):
//! anything else is refused as stale and changes nothing.

use super::{Lease, QueueState, owner_of};
use crate::ready::Entry;
use crate::{
    Change, Claim, Completion, DeadReason, DeadTask, Effects, Millis, NackAction, SettleError,
    TaskId,
};

impl QueueState {
    /// Removes a lease and its indexes (deadline, owner's in-flight set).
    pub(super) fn take_lease(&mut self, id: TaskId) -> Option<Lease> {
        let lease = self.leased.remove(&id)?;
        self.deadlines.remove(&(lease.deadline, id));
        self.ready.lease_ended(id);
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.in_flight.remove(&id);
        }
        Some(lease)
    }

    /// Checks a lease token and ends the lease. A token that matches no
    /// current lease — expired, redelivered, settled, never issued, or
    /// claimed by a stream that does not hold it — is refused and changes
    /// nothing.
    fn end_lease(&mut self, id: TaskId, attempt: u32, claim: Claim) -> Result<Lease, SettleError> {
        if !self.holds_lease(id, attempt, claim) {
            return Err(SettleError::StaleLease);
        }
        self.take_lease(id).ok_or(SettleError::StaleLease)
    }

    /// Whether `claim` may settle the lease `(id, attempt)` now.
    fn holds_lease(&self, id: TaskId, attempt: u32, claim: Claim) -> bool {
        match self.leased.get(&id) {
            Some(l) if l.entry.attempt == attempt => match claim {
                Claim::Token => true,
                Claim::Holder(c) => l.owner == c,
            },
            _ => false,
        }
    }

    /// The task is done: it leaves the queue.
    #[cfg(test)]
    pub(crate) fn ack(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        self.ack_with(now, id, attempt, Claim::Token, bytes::Bytes::new(), fx)
    }

    /// [`QueueState::ack`] with the task's result, reported to its job.
    pub(crate) fn ack_with(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        result: bytes::Bytes,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let lease = self.end_lease(id, attempt, claim)?;
        if let Some(job) = self.job_unlink(id) {
            fx.completed.push(Completion {
                job,
                id,
                payload: lease.entry.body.payload.clone(),
                succeeded: true,
                result,
                error: String::new(),
                attempts: lease.entry.attempt,
            });
        }
        self.record(fx, || Change::Removed { id });
        self.key_done(now, id, fx);
        self.ready.forget(id);
        if !self.errors.is_empty() {
            self.errors.remove(&id);
        }
        self.sub_bytes(&lease.entry.body);
        self.stats.acked_total += 1;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.acked += 1;
            c.processing_ms_total += now.saturating_sub(lease.since);
        }
        Ok(())
    }

    /// The task failed; see [`NackAction`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn nack(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        action: NackAction,
        error: &str,
        throttle: Option<crate::Throttle>,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let lease = self.end_lease(id, attempt, claim)?;
        if let Some(t) = throttle
            && t.ms > 0
        {
            // Before the task may leave: a group throttle needs its group.
            self.throttle(id, now.saturating_add(t.ms), t.group, fx);
        }
        self.stats.nacked_total += 1;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.nacked += 1;
        }
        if error.is_empty() {
            self.errors.remove(&id);
        } else {
            self.errors.insert(id, error.into());
        }
        match action {
            NackAction::Retry { delay_ms, priority } => self.retry_or_dead(
                now,
                lease.entry,
                delay_ms,
                priority,
                DeadReason::MaxAttempts,
                fx,
            ),
            NackAction::Drop => self.kill(now, lease.entry, DeadReason::Dropped, fx),
            NackAction::DeadLetter => self.kill(now, lease.entry, DeadReason::Rejected, fx),
        }
        self.dispatch(now, fx);
        Ok(())
    }

    /// Takes back a delivery its consumer never received (it was still in
    /// the broker's buffers when the consumer left): the lease ends and the
    /// delivery is undone — attempt and delivery counts included — so a
    /// task is not charged an attempt nobody made.
    pub(crate) fn unsend(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        fx: &mut Effects,
    ) -> Result<(), SettleError> {
        let mut lease = self.end_lease(id, attempt, Claim::Token)?;
        if let Some(c) = owner_of(lease.owner).and_then(|o| self.consumers.get_mut(&o)) {
            c.delivered = c.delivered.saturating_sub(1);
        }
        self.stats.delivered_total = self.stats.delivered_total.saturating_sub(1);
        lease.entry.attempt = lease.entry.attempt.saturating_sub(1);
        self.record(fx, || Change::Attempt {
            id,
            attempt: lease.entry.attempt,
        });
        self.ready.push_returned(lease.entry);
        self.dispatch(now, fx);
        Ok(())
    }

    /// Pushes a lease's deadline to `now + extend_ms`.
    pub(crate) fn extend(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        claim: Claim,
        extend_ms: u64,
        fx: &mut Effects,
    ) -> Result<Millis, SettleError> {
        if !self.holds_lease(id, attempt, claim) {
            return Err(SettleError::StaleLease);
        }
        let Some(lease) = self.leased.get_mut(&id) else {
            return Err(SettleError::StaleLease);
        };
        let old = lease.deadline;
        let new_deadline = now.saturating_add(extend_ms);
        lease.deadline = new_deadline;
        self.deadlines.remove(&(old, id));
        self.schedule_lease(new_deadline, id, fx);
        Ok(new_deadline)
    }

    /// A leased task failed (nack, expiry, lost consumer): back to ready
    /// after `delay_ms` (None: the queue's backoff) unless it used up its
    /// attempts.
    pub(super) fn retry_or_dead(
        &mut self,
        now: Millis,
        mut entry: Entry,
        delay_ms: Option<u64>,
        priority: Option<i32>,
        reason: DeadReason,
        fx: &mut Effects,
    ) {
        let max = self.config.max_attempts;
        if max > 0 && entry.attempt >= max {
            self.kill(now, entry, reason, fx);
            return;
        }
        if let Some(p) = priority {
            entry.priority = p;
        }
        let backoff = delay_ms.is_none();
        let delay_ms = delay_ms.unwrap_or_else(|| self.config.retry.delay(entry.id, entry.attempt));
        // A plain return needs no record: every recovered task is ready.
        // A new priority or a delay must survive a restart.
        let due = if delay_ms > 0 {
            now.saturating_add(delay_ms)
        } else {
            0
        };
        if priority.is_some() || due > 0 {
            self.record(fx, || Change::Requeued {
                id: entry.id,
                priority: entry.priority,
                due,
            });
        }
        if due > 0 {
            if backoff {
                self.retrying.insert(entry.id);
            }
            self.delay(due, entry, fx);
        } else {
            self.ready.push_returned(entry);
        }
    }

    /// Removes a (no longer leased) task as a failure.
    fn kill(&mut self, now: Millis, entry: Entry, reason: DeadReason, fx: &mut Effects) {
        self.key_done(now, entry.id, fx);
        let group = self.ready.group_of(entry.id).map(Box::from);
        self.ready.forget(entry.id);
        if let Some(job) = self.job_unlink(entry.id) {
            fx.completed.push(Completion {
                job,
                id: entry.id,
                payload: entry.body.payload.clone(),
                succeeded: false,
                result: bytes::Bytes::new(),
                error: self
                    .errors
                    .get(&entry.id)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| format!("{reason:?}")),
                attempts: entry.attempt,
            });
        }
        self.stats.dead_total += 1;
        self.sub_bytes(&entry.body);
        self.record(fx, || Change::Removed { id: entry.id });
        fx.dead.push(DeadTask {
            id: entry.id,
            body: entry.body,
            priority: entry.priority,
            attempts: entry.attempt,
            reason,
            error: self
                .errors
                .remove(&entry.id)
                .map(String::from)
                .unwrap_or_default(),
            group,
        });
    }
}
