//! Producer marks: the batches each producer stored lately, by its
//! sequence numbers, so that a batch sent again (a retry after an answer
//! was lost: a dropped connection, a leader that failed) is answered the
//! ids it got the first time instead of being stored twice.
//!
//! A producer names itself (EnqueueRequest.producer_id) and counts its
//! batches (EnqueueRequest.sequence). The last [`KEPT`] batches of each
//! are remembered, for the queue's idempotency window after the producer's
//! last enqueue, and at most [`MAX_PRODUCERS`] producers per queue (the
//! least recently seen is forgotten first). A mark is part of the queue's
//! state: replicated, in snapshots, in the digest.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap as HashMap;

use crate::{Millis, ProducerSeq, TaskId};

/// Batches remembered per producer: room for this many calls in flight
/// at once from one producer, arriving in any order. A batch older than
/// those is taken for a new one: a producer retries what it sent last,
/// and refusing a late arrival of a busy producer would fail it for
/// nothing.
pub const KEPT: usize = 64;

/// Producers remembered per queue.
pub const MAX_PRODUCERS: usize = 4096;

/// What remembering one batch costs beyond its duplicates (its map and
/// set entries), counted against the memory budget.
const MARK_OVERHEAD: u64 = 48;

/// One stored batch: its tasks got ids `first..first + n` except those
/// answered another task's id (`dups`: new id, holder).
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedBatch {
    pub seq: u64,
    pub first: TaskId,
    pub n: u32,
    pub dups: Vec<(TaskId, TaskId)>,
}

impl MarkedBatch {
    /// The ids its enqueue was answered, in order.
    fn answers(&self) -> impl Iterator<Item = TaskId> + '_ {
        (0..u64::from(self.n)).map(|i| {
            let id = TaskId(self.first.0 + i);
            self.dups
                .iter()
                .find(|(new, _)| *new == id)
                .map_or(id, |(_, holder)| *holder)
        })
    }

    fn bytes(&self) -> u64 {
        MARK_OVERHEAD + 16 * self.dups.len() as u64
    }
}

/// A producer's mark, as an image holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMark {
    pub producer: Box<str>,
    /// Its last enqueue.
    pub used: Millis,
    /// Ascending sequence numbers.
    pub batches: Vec<MarkedBatch>,
}

/// What a producer's batch is.
#[derive(Debug, PartialEq)]
pub(super) enum Seen {
    /// Not stored before: store it.
    New,
    /// Stored before: answer these ids, store nothing.
    Stored(Vec<TaskId>),
    /// Its sequence number was stored with another number of tasks: not a
    /// retry of that batch.
    Reused { tasks: u32 },
}

#[derive(Debug)]
struct Mark {
    used: Millis,
    batches: VecDeque<MarkedBatch>,
}

/// Invariants: `lru` holds exactly `(mark.used, producer)` for every mark;
/// `bytes` is the sum of the producers' names and their batches' bytes.
#[derive(Debug)]
pub(super) struct Marks {
    window_ms: u64,
    marks: HashMap<Box<str>, Mark>,
    lru: BTreeSet<(Millis, Box<str>)>,
    bytes: u64,
}

impl Marks {
    pub(super) fn new(window_ms: u64) -> Self {
        Marks {
            window_ms,
            marks: HashMap::default(),
            lru: BTreeSet::new(),
            bytes: 0,
        }
    }

    /// What the marks cost, for the memory budget.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `p`'s batch of `tasks` tasks was stored before.
    pub(super) fn seen(&self, p: &ProducerSeq, tasks: usize) -> Seen {
        let Some(mark) = self.marks.get(&p.producer) else {
            return Seen::New;
        };
        if let Some(b) = mark.batches.iter().find(|b| b.seq == p.seq) {
            if b.n as usize != tasks {
                return Seen::Reused { tasks: b.n };
            }
            return Seen::Stored(b.answers().collect());
        }
        Seen::New
    }

    /// Remembers a batch `p` stored: ids `first..first + n`, `dups`
    /// answered another task's id.
    pub(super) fn record(
        &mut self,
        now: Millis,
        p: &ProducerSeq,
        first: TaskId,
        n: u32,
        dups: Vec<(TaskId, TaskId)>,
    ) {
        self.expire(now);
        let batch = MarkedBatch {
            seq: p.seq,
            first,
            n,
            dups,
        };
        self.bytes += batch.bytes();
        let mark = match self.marks.get_mut(&p.producer) {
            Some(m) => {
                self.lru.remove(&(m.used, p.producer.clone()));
                m
            }
            None => {
                self.bytes += p.producer.len() as u64;
                self.marks.entry(p.producer.clone()).or_insert(Mark {
                    used: now,
                    batches: VecDeque::new(),
                })
            }
        };
        mark.used = now;
        // In sequence order, so the front is the oldest remembered.
        let at = mark.batches.partition_point(|b| b.seq < batch.seq);
        mark.batches.insert(at, batch);
        if mark.batches.len() > KEPT
            && let Some(old) = mark.batches.pop_front()
        {
            self.bytes -= old.bytes();
        }
        self.lru.insert((now, p.producer.clone()));
        while self.marks.len() > MAX_PRODUCERS {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.forget(&oldest);
        }
    }

    /// Forgets the batches stored from these ids: the log refused them, so
    /// a retry must store them. One pass over the marks: retracts are rare.
    pub(super) fn retract(&mut self, ids: &std::collections::HashSet<TaskId>) {
        for mark in self.marks.values_mut() {
            mark.batches.retain(|b| {
                let keep = !ids.contains(&b.first);
                if !keep {
                    self.bytes -= b.bytes();
                }
                keep
            });
        }
    }

    /// Forgets producers silent for longer than the window.
    pub(super) fn expire(&mut self, now: Millis) {
        while let Some((used, _)) = self.lru.first() {
            if now.saturating_sub(*used) < self.window_ms {
                break;
            }
            if let Some((_, producer)) = self.lru.pop_first() {
                self.forget(&producer);
            }
        }
    }

    fn forget(&mut self, producer: &str) {
        if let Some(m) = self.marks.remove(producer) {
            self.bytes -=
                producer.len() as u64 + m.batches.iter().map(MarkedBatch::bytes).sum::<u64>();
        }
    }

    pub(super) fn image(&self) -> Vec<ImageMark> {
        let mut out: Vec<ImageMark> = self
            .marks
            .iter()
            .map(|(p, m)| ImageMark {
                producer: p.clone(),
                used: m.used,
                batches: m.batches.iter().cloned().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.producer.cmp(&b.producer));
        out
    }

    pub(super) fn from_image(window_ms: u64, image: Vec<ImageMark>) -> Self {
        let mut marks = Marks::new(window_ms);
        for m in image {
            marks.bytes +=
                m.producer.len() as u64 + m.batches.iter().map(MarkedBatch::bytes).sum::<u64>();
            marks.lru.insert((m.used, m.producer.clone()));
            marks.marks.insert(
                m.producer,
                Mark {
                    used: m.used,
                    batches: m.batches.into(),
                },
            );
        }
        marks
    }

    pub(super) fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        for m in self.image() {
            h.write_usize(m.producer.len());
            h.write(m.producer.as_bytes());
            h.write_u64(m.used);
            for b in &m.batches {
                h.write_u64(b.seq);
                h.write_u64(b.first.0);
                h.write_u32(b.n);
                for (new, holder) in &b.dups {
                    h.write_u64(new.0);
                    h.write_u64(holder.0);
                }
            }
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, seq: u64) -> ProducerSeq {
        ProducerSeq {
            producer: name.into(),
            seq,
        }
    }

    #[test]
    fn a_batch_sent_again_is_answered_its_first_ids() {
        let mut m = Marks::new(1_000);
        assert_eq!(m.seen(&p("a", 1), 3), Seen::New);
        m.record(0, &p("a", 1), TaskId(10), 3, vec![(TaskId(11), TaskId(4))]);
        assert_eq!(
            m.seen(&p("a", 1), 3),
            Seen::Stored(vec![TaskId(10), TaskId(4), TaskId(12)])
        );
        assert_eq!(m.seen(&p("a", 1), 2), Seen::Reused { tasks: 3 });
        assert_eq!(m.seen(&p("a", 2), 3), Seen::New);
        assert_eq!(m.seen(&p("b", 1), 3), Seen::New, "another producer's");
    }

    #[test]
    fn marks_are_bounded_by_count_and_window_and_their_bytes_counted() {
        let mut m = Marks::new(1_000);
        for seq in 1..=(KEPT as u64 + 2) {
            m.record(0, &p("a", seq), TaskId(seq * 10), 1, Vec::new());
        }
        assert_eq!(
            m.seen(&p("a", 2), 1),
            Seen::New,
            "forgotten: older than KEPT"
        );
        assert!(matches!(m.seen(&p("a", 3), 1), Seen::Stored(_)));
        assert_eq!(m.bytes(), 1 + KEPT as u64 * MARK_OVERHEAD);

        // Out of order within the kept ones still works.
        m.record(500, &p("b", 7), TaskId(700), 1, Vec::new());
        m.record(600, &p("b", 5), TaskId(500), 1, Vec::new());
        assert_eq!(m.seen(&p("b", 5), 1), Seen::Stored(vec![TaskId(500)]));

        // "a" was last seen at 0: gone once its window passed.
        m.expire(1_000);
        assert_eq!(m.seen(&p("a", 3), 1), Seen::New);
        assert!(matches!(m.seen(&p("b", 7), 1), Seen::Stored(_)));
        assert_eq!(m.bytes(), 1 + 2 * MARK_OVERHEAD);

        m.retract(&[TaskId(700)].into_iter().collect());
        assert_eq!(
            m.seen(&p("b", 7), 1),
            Seen::New,
            "a refused batch is not a stored one"
        );
        assert_eq!(m.bytes(), 1 + MARK_OVERHEAD);

        let again = Marks::from_image(1_000, m.image());
        assert_eq!(again.digest(), m.digest());
        assert_eq!(again.bytes(), m.bytes());
    }

    #[test]
    fn the_least_recently_seen_producer_goes_first() {
        let mut m = Marks::new(u64::MAX);
        for i in 0..=MAX_PRODUCERS as u64 {
            m.record(i, &p(&format!("p{i}"), 1), TaskId(i + 1), 1, Vec::new());
        }
        assert_eq!(m.seen(&p("p0", 1), 1), Seen::New);
        assert!(matches!(m.seen(&p("p1", 1), 1), Seen::Stored(_)));
    }
}
