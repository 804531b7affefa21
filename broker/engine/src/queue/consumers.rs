//! Consumers of a queue: their credit, the round-robin ring that shares
//! ready tasks among them, and delivery, which turns a ready task into a
//! lease.
//!
//! A consumer is in `ring` (once) while it has credit; `deliver` drops
//! those whose credit ran out. A stream consumer's `in_flight` lists
//! exactly the leases it owns.

use rustc_hash::FxHashMap as HashMap;

use super::{Consumer, Lease, NO_OWNER, QueueState};
use crate::{Change, ConsumerId, ConsumerStats, DeadReason, Delivery, Effects, Millis, TaskId};

impl QueueState {
    /// Registers a consumer with no credit. `detached`: its leases survive
    /// it (Get calls); otherwise they return to ready when it leaves.
    pub(crate) fn add_consumer(
        &mut self,
        id: ConsumerId,
        name: String,
        peer: String,
        detached: bool,
        now: Millis,
    ) {
        // Ids are never reused; one seen again changes nothing (replacing
        // it would orphan its leases and its place in the ring).
        if self.consumers.contains_key(&id) {
            return;
        }
        self.consumers.insert(
            id,
            Consumer {
                name,
                peer,
                connected_at: now,
                credit: 0,
                detached,
                in_flight: HashMap::default(),
                delivered: 0,
                acked: 0,
                nacked: 0,
                processing_ms_total: 0,
                in_ring: false,
            },
        );
    }

    /// Adds credit and delivers what it allows. Returns the consumer's
    /// unspent credit afterwards, or None for an unknown consumer.
    pub(crate) fn grant(
        &mut self,
        now: Millis,
        id: ConsumerId,
        credit: u64,
        fx: &mut Effects,
    ) -> Option<u64> {
        let c = self.consumers.get_mut(&id)?;
        c.credit = c.credit.saturating_add(credit);
        if c.credit > 0 && !c.in_ring {
            c.in_ring = true;
            self.ring.push_back(id);
        }
        self.dispatch(now, fx);
        self.consumers.get(&id).map(|c| c.credit)
    }

    /// Drops a consumer's unspent credit: nothing more is delivered to it
    /// until it grants again. Returns the leases it still holds.
    pub(crate) fn revoke(&mut self, id: ConsumerId) -> Option<u64> {
        let c = self.consumers.get_mut(&id)?;
        // Its ring entry, if any, is skipped and dropped by `deliver`.
        c.credit = 0;
        Some(c.in_flight.len() as u64)
    }

    /// Leases a consumer holds.
    pub fn in_flight(&self, id: ConsumerId) -> u64 {
        self.consumers
            .get(&id)
            .map_or(0, |c| c.in_flight.len() as u64)
    }

    /// Unspent credit of a consumer.
    pub fn credit(&self, id: ConsumerId) -> Option<u64> {
        self.consumers.get(&id).map(|c| c.credit)
    }

    /// Every participant of a leader that is gone leaves (see
    /// [`crate::Command::Takeover`]), in id order.
    pub(crate) fn takeover(&mut self, now: Millis, fx: &mut Effects) {
        let mut consumers: Vec<ConsumerId> = self.consumers.keys().copied().collect();
        consumers.sort_unstable();
        for id in consumers {
            // Its leases stay, held by nobody, as a Get's are.
            if let Some(c) = self.consumers.get_mut(&id) {
                for (task, _) in c.in_flight.drain() {
                    if let Some(l) = self.leased.get_mut(&task) {
                        l.owner = NO_OWNER;
                    }
                }
            }
            self.remove_consumer(now, id, fx);
        }
        for id in self.waiting_ids() {
            self.cancel_put(now, id, fx);
        }
        for id in self.publisher_ids() {
            self.remove_publisher(now, id, fx);
        }
    }

    /// The consumer left. Tasks it held return to ready at once (unless it
    /// was detached); its unspent credit disappears with it.
    pub(crate) fn remove_consumer(&mut self, now: Millis, id: ConsumerId, fx: &mut Effects) {
        let Some(c) = self.consumers.remove(&id) else {
            return;
        };
        if c.in_ring {
            self.ring.retain(|x| *x != id);
        }
        let mut held: Vec<TaskId> = c.in_flight.into_keys().collect();
        // Keep the outcome independent of hash order.
        held.sort_unstable();
        for task in held {
            if self.leased.get(&task).is_some_and(|l| l.owner == id)
                && let Some(lease) = self.take_lease(task)
            {
                // A lost consumer is not the task's failure to wait out:
                // ready again at once, no backoff.
                self.retry_or_dead(now, lease.entry, Some(0), None, DeadReason::MaxAttempts, fx);
            }
        }
        self.dispatch(now, fx);
    }

    /// Hands ready tasks to consumers with credit, one at a time in
    /// round-robin order, until either runs out or the queue's flow
    /// control says stop (see [`QueueState::gate`]).
    pub(super) fn deliver(&mut self, now: Millis, fx: &mut Effects) {
        let gated = self.config.paused
            || self.config.max_in_flight > 0
            || self.config.rate.is_some()
            || self.throttled_until > 0;
        while self.ready.deliverable() {
            if gated && !self.gate(now, fx) {
                break;
            }
            let Some(cid) = self.ring.pop_front() else {
                break;
            };
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if c.credit == 0 {
                c.in_ring = false;
                continue;
            }
            let Some(mut entry) = self.ready.pop() else {
                self.ring.push_front(cid);
                break;
            };
            if let Some(r) = &self.config.rate {
                self.bucket.take(r, now);
            }
            let deadline = now.saturating_add(self.config.ack_deadline_ms);
            // Saturating: with unlimited attempts a wrap would reissue an
            // old lease token.
            entry.attempt = entry.attempt.saturating_add(1);
            c.credit -= 1;
            c.delivered += 1;
            if !c.detached {
                c.in_flight.insert(entry.id, now);
            }
            if c.credit > 0 {
                self.ring.push_back(cid);
            } else {
                c.in_ring = false;
            }
            let owner = if c.detached { NO_OWNER } else { cid };
            fx.deliveries.push((
                cid,
                Delivery {
                    id: entry.id,
                    body: entry.body.clone(),
                    attempt: entry.attempt,
                    deadline,
                    priority: entry.priority,
                    key: self.keys.of(entry.id).map(Box::from),
                    job: if self.task_jobs.is_empty() {
                        None
                    } else {
                        self.task_jobs.get(&entry.id).cloned()
                    },
                    group: self.ready.group_of(entry.id).map(Box::from),
                },
            ));
            self.stats.delivered_total += 1;
            self.drained.note(now);
            let id = entry.id;
            if self.journal {
                fx.changes.push(Change::Attempt {
                    id,
                    attempt: entry.attempt,
                });
            }
            self.leased.insert(
                id,
                Lease {
                    entry,
                    owner,
                    deadline,
                    since: now,
                },
            );
            self.schedule_lease(deadline, id, fx);
        }
    }

    /// Whether the queue's own flow control lets one more delivery out at
    /// `now`: not paused, not throttled, under `max_in_flight`, a token in
    /// the bucket. When time will lift the hold (a throttle, the next
    /// token), the timer is set to wake then — but only while a consumer
    /// is waiting, so an idle queue is not ticked for nothing.
    fn gate(&mut self, now: Millis, fx: &mut Effects) -> bool {
        if self.config.paused || self.at_in_flight_cap() {
            return false;
        }
        let wake = if self.throttled_until > now {
            Some(self.throttled_until)
        } else {
            match &self.config.rate {
                Some(r) if !self.bucket.conforms(r, now) => Some(self.bucket.next_at(r)),
                _ => None,
            }
        };
        let Some(wake) = wake else {
            return true;
        };
        let asking = self
            .ring
            .iter()
            .any(|c| self.consumers.get(c).is_some_and(|c| c.credit > 0));
        if asking && self.flow_wake != Some(wake) {
            if self.next_deadline().is_none_or(|d| wake < d) {
                fx.rearm = true;
            }
            self.flow_wake = Some(wake);
        }
        false
    }

    /// Every consumer's numbers, oldest first.
    pub fn consumer_stats(&self, now: Millis) -> Vec<ConsumerStats> {
        let mut out: Vec<ConsumerStats> = self
            .consumers
            .iter()
            .map(|(id, c)| ConsumerStats {
                id: *id,
                name: c.name.clone(),
                peer: c.peer.clone(),
                connected_at: c.connected_at,
                credit: c.credit,
                in_flight: c.in_flight.len() as u64,
                delivered: c.delivered,
                acked: c.acked,
                nacked: c.nacked,
                mean_processing_ms: c.processing_ms_total.checked_div(c.acked).unwrap_or(0),
                oldest_lease_age_ms: c
                    .in_flight
                    .values()
                    .min()
                    .map_or(0, |since| now.saturating_sub(*since)),
            })
            .collect();
        out.sort_by_key(|c| (c.connected_at, c.id));
        out
    }
}
