//! A digest of a queue's whole state, independent of how its maps happen
//! to be laid out: two engines that applied the same commands at the same
//! times have equal digests (the replication tests' check).

use std::hash::{DefaultHasher, Hasher};

use super::QueueState;
use crate::ready::Entry;
use crate::{Headers, TaskBody};

/// Feeds values into a hasher with their lengths, so that concatenations
/// cannot collide.
struct Digest(DefaultHasher);

impl Digest {
    fn u64(&mut self, v: u64) {
        self.0.write_u64(v);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.write(b);
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u64(0),
            Some(s) => {
                self.u64(1);
                self.bytes(s.as_bytes());
            }
        }
    }

    fn headers(&mut self, h: &Headers) {
        let mut pairs: Vec<(&String, &String)> = h.iter().flat_map(|m| m.iter()).collect();
        pairs.sort();
        self.u64(pairs.len() as u64);
        for (k, v) in pairs {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
    }

    fn body(&mut self, b: &TaskBody) {
        self.bytes(&b.payload);
        self.headers(&b.headers);
        self.u64(b.enqueued_at);
    }

    fn entry(&mut self, e: &Entry) {
        self.u64(e.id.0);
        self.u64(e.seq);
        self.u64(e.priority as u64);
        self.u64(u64::from(e.attempt));
        self.body(&e.body);
    }
}

impl QueueState {
    /// A 64-bit digest of everything this queue holds and will do: its
    /// tasks in every state, leases, waiting producers, consumers and
    /// their credit, publishers, keys, jobs, counters. Maps are read in
    /// key order, so equal states give equal digests whatever the order
    /// of their insertions.
    pub fn digest(&self) -> u64 {
        let mut d = Digest(DefaultHasher::new());
        let ready = self.ready.in_serve_order();
        d.u64(ready.len() as u64);
        for e in ready {
            d.entry(e);
        }
        d.u64(self.delayed.len() as u64);
        for ((due, _), e) in &self.delayed {
            d.u64(*due);
            d.entry(e);
        }
        let mut leased: Vec<_> = self.leased.iter().collect();
        leased.sort_by_key(|(id, _)| **id);
        d.u64(leased.len() as u64);
        for (_, l) in leased {
            d.entry(&l.entry);
            d.u64(l.owner.0);
            d.u64(l.deadline);
            d.u64(l.since);
        }
        d.u64(self.deadlines.len() as u64);
        for (t, id) in &self.deadlines {
            d.u64(*t);
            d.u64(id.0);
        }
        d.u64(self.waiting.len() as u64);
        for w in &self.waiting {
            d.u64(w.id.0);
            d.u64(w.at);
            d.u64(u64::from(w.keyed));
            d.u64(w.tasks.len() as u64);
            for t in &w.tasks {
                d.u64(t.id.0);
                d.bytes(&t.payload);
            }
            for (a, b) in &w.dups {
                d.u64(a.0);
                d.u64(b.0);
            }
            match &w.producer {
                None => d.u64(0),
                Some(p) => {
                    d.u64(1);
                    d.bytes(p.seq.producer.as_bytes());
                    d.u64(p.seq.seq);
                    d.u64(p.first.0);
                    d.u64(u64::from(p.n));
                }
            }
        }
        d.u64(self.waiting_tasks);
        let mut consumers: Vec<_> = self.consumers.iter().collect();
        consumers.sort_by_key(|(id, _)| **id);
        d.u64(consumers.len() as u64);
        for (id, c) in consumers {
            d.u64(id.0);
            d.bytes(c.name.as_bytes());
            d.bytes(c.peer.as_bytes());
            for v in [
                c.connected_at,
                c.credit,
                u64::from(c.detached),
                c.delivered,
                c.acked,
                c.nacked,
                c.processing_ms_total,
                u64::from(c.in_ring),
            ] {
                d.u64(v);
            }
            let mut held: Vec<_> = c.in_flight.iter().collect();
            held.sort();
            d.u64(held.len() as u64);
            for (t, at) in held {
                d.u64(t.0);
                d.u64(*at);
            }
        }
        d.u64(self.ring.len() as u64);
        for c in &self.ring {
            d.u64(c.0);
        }
        d.u64(self.next_seq);
        let s = self.stats();
        for v in [
            s.ready,
            s.delayed,
            s.leased,
            s.waiting_producers,
            s.waiting_tasks,
            s.consumers,
            s.credit,
            s.enqueued_total,
            s.delivered_total,
            s.acked_total,
            s.nacked_total,
            s.expired_total,
            s.dead_total,
            s.purged_total,
            s.publishers,
            s.reserved,
            s.payload_bytes,
            s.retrying,
            s.groups,
            s.groups_held,
        ] {
            d.u64(v);
        }
        d.u64(u64::from(self.journal));
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort();
        for (id, e) in errors {
            d.u64(id.0);
            d.bytes(e.as_bytes());
        }
        let mut retrying: Vec<_> = self.retrying.iter().collect();
        retrying.sort();
        for id in retrying {
            d.u64(id.0);
        }
        let mut jobs: Vec<_> = self.task_jobs.iter().collect();
        jobs.sort();
        for (id, j) in jobs {
            d.u64(id.0);
            d.opt_str(Some(j));
        }
        d.u64(self.extra_bytes);
        d.u64(self.keys.digest());
        d.u64(self.marks.digest());
        d.u64(self.publishers.digest());
        d.u64(self.drained.digest());
        d.u64(self.ready.digest());
        d.u64(self.throttled_until);
        d.u64(self.bucket.tat_us);
        d.u64(self.flow_wake.map_or(u64::MAX, |w| w));
        d.0.finish()
    }
}
