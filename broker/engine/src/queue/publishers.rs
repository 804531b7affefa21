//! Publishers' reservations: the capacity a queue holds for producers on
//! Publish streams, shared out a slot at a time as space frees.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::PublisherId;

/// A producer on a Publish stream. It holds `reserved` slots of capacity
/// (its credit) and `pending` tasks sent but not yet confirmed; the broker
/// tops `reserved + pending` up to `window` as space frees, so a producer
/// never has more than `window` tasks unconfirmed.
#[derive(Debug)]
struct Publisher {
    window: u64,
    reserved: u64,
    pending: u64,
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// The producer sent more than the credit it holds.
    OverCredit { sent: u64, credit: u64 },
    /// No such publisher.
    Unknown,
}

/// Invariants: `reserved` is the sum of every publisher's `reserved`;
/// `ring` holds each publisher exactly once.
#[derive(Debug, Default)]
pub(super) struct Publishers {
    by_id: HashMap<PublisherId, Publisher>,
    /// Publishers in the order they are next served when space frees.
    ring: VecDeque<PublisherId>,
    /// Capacity reserved for all of them: counts as taken.
    reserved: u64,
}

impl Publishers {
    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn len(&self) -> u64 {
        self.by_id.len() as u64
    }

    /// Every publisher's id, in id order.
    pub(super) fn ids(&self) -> Vec<PublisherId> {
        let mut ids: Vec<PublisherId> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Capacity held for publishers, taken from the queue's room.
    pub(super) fn reserved(&self) -> u64 {
        self.reserved
    }

    /// A new publisher, wanting up to `window` tasks unconfirmed; it is
    /// last in line for space.
    pub(super) fn add(&mut self, id: PublisherId, window: u64) {
        // Ids are never reused; one seen again keeps what it holds.
        if self.by_id.contains_key(&id) {
            return;
        }
        let p = Publisher {
            window,
            reserved: 0,
            pending: 0,
        };
        self.by_id.insert(id, p);
        self.ring.push_back(id);
    }

    /// The publisher is gone, and the space it reserved is free. Returns
    /// whether it was known.
    pub(super) fn remove(&mut self, id: PublisherId) -> bool {
        let Some(p) = self.by_id.remove(&id) else {
            return false;
        };
        self.reserved -= p.reserved;
        self.ring.retain(|x| *x != id);
        true
    }

    /// Spends `n` of the publisher's credit on tasks it sent, which now
    /// wait for their confirmation.
    pub(super) fn spend(&mut self, id: PublisherId, n: u64) -> Result<(), PublishError> {
        let p = self.by_id.get_mut(&id).ok_or(PublishError::Unknown)?;
        if n > p.reserved {
            return Err(PublishError::OverCredit {
                sent: n,
                credit: p.reserved,
            });
        }
        p.reserved -= n;
        p.pending += n;
        self.reserved -= n;
        Ok(())
    }

    /// `n` of the publisher's tasks are confirmed: its window has room for
    /// that much more credit. Returns whether it was known.
    pub(super) fn confirmed(&mut self, id: PublisherId, n: u64) -> bool {
        let Some(p) = self.by_id.get_mut(&id) else {
            return false;
        };
        p.pending = p.pending.saturating_sub(n);
        true
    }

    /// The credit a publisher holds unused while others wait: producers in
    /// line (`others_waiting`), or, with no `room` left, publishers that
    /// get no credit for want of it. None when it holds none or nobody
    /// waits.
    pub(super) fn blocking(&self, id: PublisherId, room: u64, others_waiting: bool) -> Option<u64> {
        let p = self.by_id.get(&id)?;
        if p.reserved == 0 {
            return None;
        }
        let starved = room == 0
            && self
                .by_id
                .iter()
                .any(|(o, q)| *o != id && q.reserved == 0 && q.pending < q.window);
        (others_waiting || starved).then_some(p.reserved)
    }

    /// The reservations as plain data (see `queue::image`), in id order,
    /// and the serving order.
    pub(super) fn image(&self) -> (Vec<super::image::ImagePublisher>, Vec<PublisherId>) {
        let mut all: Vec<super::image::ImagePublisher> = self
            .by_id
            .iter()
            .map(|(id, p)| super::image::ImagePublisher {
                id: *id,
                window: p.window,
                reserved: p.reserved,
                pending: p.pending,
            })
            .collect();
        all.sort_by_key(|p| p.id);
        (all, self.ring.iter().copied().collect())
    }

    /// The reservations [`Publishers::image`] was taken of.
    pub(super) fn from_image(
        all: Vec<super::image::ImagePublisher>,
        ring: Vec<PublisherId>,
    ) -> Self {
        let mut p = Publishers::default();
        for i in all {
            p.reserved += i.reserved;
            p.by_id.insert(
                i.id,
                Publisher {
                    window: i.window,
                    reserved: i.reserved,
                    pending: i.pending,
                },
            );
        }
        p.ring = ring
            .into_iter()
            .filter(|id| p.by_id.contains_key(id))
            .collect();
        p
    }

    /// A digest of the reservations (see `QueueState::digest`).
    pub(super) fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        let mut all: Vec<_> = self.by_id.iter().collect();
        all.sort_by_key(|(id, _)| **id);
        for (id, p) in all {
            for v in [id.0, p.window, p.reserved, p.pending] {
                h.write_u64(v);
            }
        }
        for id in &self.ring {
            h.write_u64(id.0);
        }
        h.write_u64(self.reserved);
        h.finish()
    }

    /// Shares `room` among publishers below their window, a slot at a
    /// time in turn, so producers on a full queue each get a share as it
    /// drains. Returns the grants, one entry per publisher.
    pub(super) fn grant(&mut self, mut room: u64) -> Vec<(PublisherId, u64)> {
        let mut grants: Vec<(PublisherId, u64)> = Vec::new();
        let mut idle_rounds = 0;
        while room > 0 && idle_rounds < self.ring.len() {
            let Some(id) = self.ring.pop_front() else {
                break;
            };
            self.ring.push_back(id);
            let Some(p) = self.by_id.get_mut(&id) else {
                idle_rounds += 1;
                continue;
            };
            if p.reserved + p.pending >= p.window {
                idle_rounds += 1;
                continue;
            }
            idle_rounds = 0;
            p.reserved += 1;
            self.reserved += 1;
            room -= 1;
            match grants.iter_mut().find(|(g, _)| *g == id) {
                Some((_, n)) => *n += 1,
                None => grants.push((id, 1)),
            }
        }
        grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_shared_in_turn_up_to_each_window() {
        let mut p = Publishers::default();
        p.add(PublisherId(1), 2);
        p.add(PublisherId(2), 10);
        let grants = p.grant(5);
        assert_eq!(grants, [(PublisherId(1), 2), (PublisherId(2), 3)]);
        assert_eq!(p.reserved(), 5);
        assert_eq!(
            p.spend(PublisherId(1), 3),
            Err(PublishError::OverCredit { sent: 3, credit: 2 })
        );
        assert_eq!(p.spend(PublisherId(1), 2), Ok(()));
        // Sent but unconfirmed still fills its window.
        assert_eq!(p.grant(5), [(PublisherId(2), 5)]);
        assert!(p.confirmed(PublisherId(1), 2));
        assert!(p.remove(PublisherId(2)));
        assert_eq!(p.reserved(), 0);
        assert_eq!(p.grant(5), [(PublisherId(1), 2)]);
    }
}
