//! The ready set: tasks that can be delivered now, in the queue's order.
//!
//! It holds the tasks themselves, not keys into a map: a deep queue is
//! almost all ready tasks, and keeping them in one flat structure costs
//! about the task's own size, where a map beside it would double that.
//!
//! FIFO and LIFO keep fresh tasks in arrival order in a deque/stack (O(1)),
//! and tasks coming back (a retry, a delayed task now due) in a small heap
//! by arrival sequence, so a returned task is served at its original
//! place. PRIORITY is one heap ordered by (priority, sequence): lower
//! priority first, ties in arrival order.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use super::{Order, TaskBody, TaskId};

/// One unfinished task. Kept small: a queue may hold millions.
#[derive(Debug)]
pub struct Entry {
    pub id: TaskId,
    pub body: TaskBody,
    /// Arrival order, kept across retries so a returned task goes back to
    /// its place in FIFO and priority order.
    pub seq: u64,
    /// Priority it is served with now.
    pub priority: i32,
    /// Deliveries so far.
    pub attempt: u32,
}

/// Serve-first order of an entry under a queue order: smaller first.
pub fn key(order: Order, e: &Entry) -> (i64, u64, TaskId) {
    match order {
        Order::Fifo => (0, e.seq, e.id),
        Order::Lifo => (0, u64::MAX - e.seq, e.id),
        Order::Priority => (i64::from(e.priority), e.seq, e.id),
    }
}

/// An entry ordered for a heap of one queue order.
macro_rules! ordered {
    ($name:ident, $order:expr) => {
        #[derive(Debug)]
        pub struct $name(Entry);

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.cmp(other) == Ordering::Equal
            }
        }
        impl Eq for $name {}
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                key($order, &self.0).cmp(&key($order, &other.0))
            }
        }
    };
}

ordered!(Fifo, Order::Fifo);
ordered!(Lifo, Order::Lifo);
ordered!(Prio, Order::Priority);

#[derive(Debug)]
pub enum ReadySet {
    Fifo {
        fresh: VecDeque<Entry>,
        back: BinaryHeap<Reverse<Fifo>>,
    },
    Lifo {
        fresh: Vec<Entry>,
        back: BinaryHeap<Reverse<Lifo>>,
    },
    Priority {
        heap: BinaryHeap<Reverse<Prio>>,
    },
}

impl ReadySet {
    pub fn new(order: Order) -> Self {
        match order {
            Order::Fifo => ReadySet::Fifo {
                fresh: VecDeque::new(),
                back: BinaryHeap::new(),
            },
            Order::Lifo => ReadySet::Lifo {
                fresh: Vec::new(),
                back: BinaryHeap::new(),
            },
            Order::Priority => ReadySet::Priority {
                heap: BinaryHeap::new(),
            },
        }
    }

    /// A task that has just arrived: its sequence is the highest so far.
    pub fn push_new(&mut self, e: Entry) {
        match self {
            ReadySet::Fifo { fresh, .. } => fresh.push_back(e),
            ReadySet::Lifo { fresh, .. } => fresh.push(e),
            ReadySet::Priority { heap } => heap.push(Reverse(Prio(e))),
        }
    }

    /// A task coming back (retry, lost lease, delay over): it takes its
    /// original place by sequence.
    pub fn push_returned(&mut self, e: Entry) {
        match self {
            ReadySet::Fifo { back, .. } => back.push(Reverse(Fifo(e))),
            ReadySet::Lifo { back, .. } => back.push(Reverse(Lifo(e))),
            ReadySet::Priority { heap } => heap.push(Reverse(Prio(e))),
        }
    }

    /// The next task to serve.
    pub fn pop(&mut self) -> Option<Entry> {
        match self {
            ReadySet::Fifo { fresh, back } => {
                let from_back = match (fresh.front(), back.peek()) {
                    (Some(f), Some(Reverse(b))) => key(Order::Fifo, &b.0) < key(Order::Fifo, f),
                    (None, Some(_)) => true,
                    _ => false,
                };
                if from_back {
                    back.pop().map(|Reverse(b)| b.0)
                } else {
                    fresh.pop_front()
                }
            }
            ReadySet::Lifo { fresh, back } => {
                let from_back = match (fresh.last(), back.peek()) {
                    (Some(f), Some(Reverse(b))) => key(Order::Lifo, &b.0) < key(Order::Lifo, f),
                    (None, Some(_)) => true,
                    _ => false,
                };
                if from_back {
                    back.pop().map(|Reverse(b)| b.0)
                } else {
                    fresh.pop()
                }
            }
            ReadySet::Priority { heap } => heap.pop().map(|Reverse(p)| p.0),
        }
    }

    /// The next task to serve, left in place.
    pub fn peek(&self) -> Option<&Entry> {
        match self {
            ReadySet::Fifo { fresh, back } => match (fresh.front(), back.peek()) {
                (Some(f), Some(Reverse(b))) if key(Order::Fifo, &b.0) < key(Order::Fifo, f) => {
                    Some(&b.0)
                }
                (Some(f), _) => Some(f),
                (None, b) => b.map(|Reverse(b)| &b.0),
            },
            ReadySet::Lifo { fresh, back } => match (fresh.last(), back.peek()) {
                (Some(f), Some(Reverse(b))) if key(Order::Lifo, &b.0) < key(Order::Lifo, f) => {
                    Some(&b.0)
                }
                (Some(f), _) => Some(f),
                (None, b) => b.map(|Reverse(b)| &b.0),
            },
            ReadySet::Priority { heap } => heap.peek().map(|Reverse(p)| &p.0),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ReadySet::Fifo { fresh, back } => fresh.len() + back.len(),
            ReadySet::Lifo { fresh, back } => fresh.len() + back.len(),
            ReadySet::Priority { heap } => heap.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every task in the set, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Entry> + '_> {
        match self {
            ReadySet::Fifo { fresh, back } => {
                Box::new(fresh.iter().chain(back.iter().map(|b| &b.0.0)))
            }
            ReadySet::Lifo { fresh, back } => {
                Box::new(fresh.iter().chain(back.iter().map(|b| &b.0.0)))
            }
            ReadySet::Priority { heap } => Box::new(heap.iter().map(|b| &b.0.0)),
        }
    }

    /// Keeps only the tasks `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        match self {
            ReadySet::Fifo { fresh, back } => {
                fresh.retain(|e| keep(e));
                back.retain(|b| keep(&b.0.0));
            }
            ReadySet::Lifo { fresh, back } => {
                fresh.retain(|e| keep(e));
                back.retain(|b| keep(&b.0.0));
            }
            ReadySet::Priority { heap } => heap.retain(|b| keep(&b.0.0)),
        }
    }

    /// Removes everything; returns how many.
    pub fn clear(&mut self) -> u64 {
        let n = self.len() as u64;
        match self {
            ReadySet::Fifo { fresh, back } => {
                *fresh = VecDeque::new();
                *back = BinaryHeap::new();
            }
            ReadySet::Lifo { fresh, back } => {
                *fresh = Vec::new();
                *back = BinaryHeap::new();
            }
            ReadySet::Priority { heap } => *heap = BinaryHeap::new(),
        }
        n
    }
}

/// An empty task with this id, arrival and priority, for tests.
#[cfg(test)]
pub fn test_entry(id: u64, seq: u64, priority: i32) -> Entry {
    Entry {
        id: TaskId(id),
        body: TaskBody {
            payload: bytes::Bytes::new(),
            headers: None,
            enqueued_at: 0,
        },
        seq,
        priority,
        attempt: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, seq: u64, priority: i32) -> Entry {
        test_entry(id, seq, priority)
    }

    fn drain(r: &mut ReadySet) -> Vec<u64> {
        std::iter::from_fn(|| r.pop()).map(|e| e.id.0).collect()
    }

    #[test]
    fn returned_tasks_take_their_original_place() {
        let mut r = ReadySet::new(Order::Fifo);
        r.push_new(e(3, 3, 0));
        r.push_new(e(4, 4, 0));
        r.push_returned(e(1, 1, 0));
        r.push_returned(e(2, 2, 0));
        assert_eq!(drain(&mut r), [1, 2, 3, 4]);

        let mut r = ReadySet::new(Order::Lifo);
        r.push_new(e(1, 1, 0));
        r.push_new(e(2, 2, 0));
        r.push_returned(e(3, 3, 0));
        assert_eq!(drain(&mut r), [3, 2, 1]);
    }

    #[test]
    fn priority_then_arrival() {
        let mut r = ReadySet::new(Order::Priority);
        for (id, p) in [(1, 3), (2, 1), (3, 2), (4, 1)] {
            r.push_new(e(id, id, p));
        }
        assert_eq!(r.len(), 4);
        assert_eq!(drain(&mut r), [2, 4, 3, 1]);
        assert!(r.is_empty());
    }
}
