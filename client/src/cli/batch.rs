//! Cutting a stream of payloads into Enqueue batches.
//!
//! Pure and synchronous so it can be tested without a broker; the caller
//! feeds payloads in, takes sealed batches out, and decides when a partial
//! batch should go anyway (end of input, input idle).

use std::collections::VecDeque;

use bytes::Bytes;

/// Most tasks per Enqueue call. The broker takes up to 10000; a smaller
/// batch keeps each call's latency and memory modest and lets the progress
/// bar move.
pub const MAX_BATCH_TASKS: usize = 1000;

/// Most payload bytes per Enqueue call, well below the 4 MiB a gRPC server
/// accepts per message by default. A single larger payload still goes, in a
/// batch of its own (the broker judges it against its payload limit).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Bounds of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tasks per batch, at least 1 (also at most the queue's capacity, or a
    /// WAIT enqueue could never fit).
    pub max_tasks: usize,
    /// Encoded bytes per batch, counting each task's payload plus
    /// `overhead`.
    pub max_bytes: usize,
    /// Bytes each task adds beside its payload (headers, framing).
    pub overhead: usize,
}

impl Limits {
    /// The CLI's limits for a queue of `capacity` tasks.
    pub fn for_capacity(capacity: u64, overhead: usize) -> Limits {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Limits {
            max_tasks: MAX_BATCH_TASKS.min(capacity).max(1),
            max_bytes: MAX_BATCH_BYTES,
            overhead,
        }
    }
}

/// Accumulates payloads and seals them into batches within [`Limits`].
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    open: Vec<Bytes>,
    open_bytes: usize,
    sealed: VecDeque<Vec<Bytes>>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(limits: Limits) -> Batcher {
        Batcher {
            limits: Limits {
                max_tasks: limits.max_tasks.max(1),
                ..limits
            },
            open: Vec::new(),
            open_bytes: 0,
            sealed: VecDeque::new(),
        }
    }

    /// Adds one payload. A batch is sealed as soon as it is full, rather than
    /// when the next payload arrives, so a slow input does not hold back a
    /// full batch.
    pub fn push(&mut self, payload: Bytes) {
        let size = payload.len().saturating_add(self.limits.overhead);
        if !self.open.is_empty() && self.open_bytes.saturating_add(size) > self.limits.max_bytes {
            self.seal();
        }
        self.open_bytes = self.open_bytes.saturating_add(size);
        self.open.push(payload);
        if self.open.len() >= self.limits.max_tasks || self.open_bytes >= self.limits.max_bytes {
            self.seal();
        }
    }

    /// Seals the open batch, if it holds anything, even though it is not
    /// full (end of input, or the input went quiet).
    pub fn seal(&mut self) {
        if !self.open.is_empty() {
            self.sealed.push_back(std::mem::take(&mut self.open));
            self.open_bytes = 0;
        }
    }

    /// The next sealed batch, oldest first.
    pub fn next_batch(&mut self) -> Option<Vec<Bytes>> {
        self.sealed.pop_front()
    }

    /// Whether payloads wait in a batch that is not sealed yet.
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limits: Limits, sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut b = Batcher::new(limits);
        let mut out = Vec::new();
        for &n in sizes {
            b.push(Bytes::from(vec![b'x'; n]));
            while let Some(batch) = b.next_batch() {
                out.push(batch.iter().map(Bytes::len).collect());
            }
        }
        b.seal();
        while let Some(batch) = b.next_batch() {
            out.push(batch.iter().map(Bytes::len).collect());
        }
        out
    }

    fn limits(max_tasks: usize, max_bytes: usize) -> Limits {
        Limits {
            max_tasks,
            max_bytes,
            overhead: 0,
        }
    }

    #[test]
    fn cuts_by_task_count() {
        let got = run(limits(2, 100), &[1, 1, 1, 1, 1]);
        assert_eq!(got, vec![vec![1, 1], vec![1, 1], vec![1]]);
    }

    #[test]
    fn cuts_by_bytes_before_overflowing() {
        let got = run(limits(100, 10), &[4, 4, 4, 6, 1]);
        assert_eq!(got, vec![vec![4, 4], vec![4, 6], vec![1]]);
    }

    #[test]
    fn oversized_payload_goes_alone() {
        let got = run(limits(100, 10), &[3, 25, 3]);
        assert_eq!(got, vec![vec![3], vec![25], vec![3]]);
    }

    #[test]
    fn overhead_counts_per_task() {
        let l = Limits {
            max_tasks: 100,
            max_bytes: 10,
            overhead: 4,
        };
        // 1+4 + 1+4 = 10: full at two tasks.
        assert_eq!(run(l, &[1, 1, 1]), vec![vec![1, 1], vec![1]]);
    }

    #[test]
    fn full_batch_is_sealed_at_once() {
        let mut b = Batcher::new(limits(2, 100));
        b.push(Bytes::from_static(b"a"));
        assert!(b.next_batch().is_none());
        assert!(b.has_open());
        b.push(Bytes::from_static(b"b"));
        assert_eq!(b.next_batch().map(|v| v.len()), Some(2));
        assert!(!b.has_open());
    }

    #[test]
    fn empty_input_makes_no_batch() {
        assert!(run(limits(10, 10), &[]).is_empty());
        // Empty payloads are tasks too.
        assert_eq!(run(limits(10, 10), &[0, 0]), vec![vec![0, 0]]);
    }

    #[test]
    fn capacity_bounds_batch_size() {
        assert_eq!(Limits::for_capacity(10, 0).max_tasks, 10);
        assert_eq!(
            Limits::for_capacity(1_000_000, 0).max_tasks,
            MAX_BATCH_TASKS
        );
        assert_eq!(Limits::for_capacity(0, 0).max_tasks, 1);
    }

    #[test]
    fn every_payload_once_in_order() {
        let sizes: Vec<usize> = (0..500).map(|i| (i * 37) % 23).collect();
        for (t, by) in [(1, 1), (3, 20), (7, 50), (1000, 1 << 20)] {
            let got = run(limits(t, by), &sizes);
            let flat: Vec<usize> = got.iter().flatten().copied().collect();
            assert_eq!(flat, sizes);
            for batch in &got {
                assert!(!batch.is_empty() && batch.len() <= t);
                let bytes: usize = batch.iter().sum();
                assert!(bytes <= by || batch.len() == 1, "{batch:?} over {by}");
            }
        }
    }
}
