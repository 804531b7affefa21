//! The idempotency key index of one queue: which task holds each key, and
//! how long a done task's key stays taken.
//!
//! A key is held by an unfinished task, or by a done one until the key
//! window after it finished; only then may a new task take it. A batch
//! waiting for space holds no key (see [`KeyIndex::drop_held`]).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::{Millis, NewTask, TaskId};

/// What remembering one idempotency key costs beyond its own bytes (its
/// map entries), counted against the memory budget.
pub const KEY_OVERHEAD: u64 = 64;

#[derive(Debug, Clone, Copy)]
struct KeyUse {
    id: TaskId,
    /// When its task was done; None while unfinished.
    done: Option<Millis>,
}

/// Invariants: every key of `by_task` is in `keys`, held by that task and
/// not done; every done key in `keys` has an entry in `expiry`; `bytes`
/// is the sum over `keys` of key length + [`KEY_OVERHEAD`].
#[derive(Debug)]
pub(super) struct KeyIndex {
    window_ms: u64,
    /// Keys in use: by unfinished tasks, or by tasks done less than the
    /// window ago.
    keys: HashMap<Box<str>, KeyUse>,
    /// The key of each unfinished keyed task (beside the tasks: most have
    /// none).
    by_task: HashMap<TaskId, Box<str>>,
    /// Keys of done tasks, in the order their windows end (the window is
    /// the queue's, so that is the order they were done in).
    expiry: VecDeque<(Millis, Box<str>, TaskId)>,
    bytes: u64,
}

impl KeyIndex {
    pub(super) fn new(window_ms: u64) -> Self {
        KeyIndex {
            window_ms,
            keys: HashMap::default(),
            by_task: HashMap::default(),
            expiry: VecDeque::new(),
            bytes: 0,
        }
    }

    /// What the remembered keys cost, for the memory budget.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// No unfinished task has a key: the common case, checked first on
    /// every hot path.
    pub(super) fn no_task_keyed(&self) -> bool {
        self.by_task.is_empty()
    }

    /// The key of an unfinished task.
    pub(super) fn of(&self, id: TaskId) -> Option<&str> {
        if self.by_task.is_empty() {
            return None;
        }
        self.by_task.get(&id).map(|k| &**k)
    }

    /// When the next done key is forgotten.
    pub(super) fn next_expiry(&self) -> Option<Millis> {
        self.expiry.front().map(|(t, _, _)| *t)
    }

    fn insert(&mut self, key: Box<str>, id: TaskId) {
        let bytes = key.len() as u64 + KEY_OVERHEAD;
        self.by_task.insert(id, key.clone());
        if self.keys.insert(key, KeyUse { id, done: None }).is_none() {
            self.bytes += bytes;
        }
    }

    fn remove(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.bytes = self.bytes.saturating_sub(key.len() as u64 + KEY_OVERHEAD);
        }
    }

    /// A recovered unfinished task holds its key again.
    pub(super) fn restore(&mut self, id: TaskId, key: Box<str>) {
        self.insert(key, id);
    }

    /// The task holding `key` now, if any (a done task's key counts until
    /// its window ends).
    fn holder(&self, now: Millis, key: &str) -> Option<TaskId> {
        let k = self.keys.get(key)?;
        match k.done {
            Some(done) if done.saturating_add(self.window_ms) <= now => None,
            _ => Some(k.id),
        }
    }

    /// Drops tasks whose key is taken (noting `(new id, holder)` in
    /// `dups`) and takes the keys of the others for them: within the
    /// batch, a second task with one key is a duplicate of the first.
    pub(super) fn take(
        &mut self,
        now: Millis,
        tasks: Vec<NewTask>,
        dups: &mut Vec<(TaskId, TaskId)>,
    ) -> Vec<NewTask> {
        if tasks.iter().all(|t| t.key.is_none()) {
            return tasks;
        }
        let mut kept = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Some(key) = &t.key {
                if let Some(holder) = self.holder(now, key) {
                    dups.push((t.id, holder));
                    continue;
                }
                self.insert(key.clone(), t.id);
            }
            kept.push(t);
        }
        kept
    }

    /// Drops tasks whose key a stored task holds (noting them in `dups`),
    /// taking no key: for a batch about to wait in line, which must not
    /// hold keys, or a producer behind it would be answered an id that
    /// never exists if the waiting batch gives up.
    pub(super) fn drop_held(
        &self,
        now: Millis,
        tasks: Vec<NewTask>,
        dups: &mut Vec<(TaskId, TaskId)>,
    ) -> Vec<NewTask> {
        if tasks.iter().all(|t| t.key.is_none()) {
            return tasks;
        }
        tasks
            .into_iter()
            .filter(
                |t| match t.key.as_deref().and_then(|k| self.holder(now, k)) {
                    Some(holder) => {
                        dups.push((t.id, holder));
                        false
                    }
                    None => true,
                },
            )
            .collect()
    }

    /// A task is done: its key (if any) stays taken for the window.
    /// Returns when it will be forgotten, for the caller's timer.
    pub(super) fn done(&mut self, now: Millis, id: TaskId) -> Option<Millis> {
        if self.by_task.is_empty() {
            return None;
        }
        let key = self.by_task.remove(&id)?;
        let k = self.keys.get_mut(&key).filter(|k| k.id == id)?;
        k.done = Some(now);
        let until = now.saturating_add(self.window_ms);
        self.expiry.push_back((until, key, id));
        Some(until)
    }

    /// A task is taken back as if never stored: its key is free at once.
    pub(super) fn retract(&mut self, id: TaskId) {
        if let Some(key) = self.by_task.remove(&id)
            && self.keys.get(&key).is_some_and(|k| k.id == id)
        {
            self.remove(&key);
        }
    }

    /// Forgets the keys whose window ended by `now`.
    pub(super) fn expire(&mut self, now: Millis) {
        while let Some((until, _, _)) = self.expiry.front() {
            if *until > now {
                break;
            }
            if let Some((_, key, id)) = self.expiry.pop_front()
                && self
                    .keys
                    .get(&key)
                    .is_some_and(|k| k.id == id && k.done.is_some())
            {
                self.remove(&key);
            }
        }
    }

    /// The index as plain data (see `queue::image`): keys in key order,
    /// task keys in task order, expiries in their order.
    #[allow(clippy::type_complexity)]
    pub(super) fn image(
        &self,
    ) -> (
        Vec<super::image::ImageKey>,
        Vec<(TaskId, Box<str>)>,
        Vec<(Millis, Box<str>, TaskId)>,
    ) {
        let mut keys: Vec<super::image::ImageKey> = self
            .keys
            .iter()
            .map(|(k, u)| super::image::ImageKey {
                key: k.clone(),
                id: u.id,
                done: u.done,
            })
            .collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let mut by_task: Vec<(TaskId, Box<str>)> =
            self.by_task.iter().map(|(t, k)| (*t, k.clone())).collect();
        by_task.sort();
        (keys, by_task, self.expiry.iter().cloned().collect())
    }

    /// The index [`KeyIndex::image`] was taken of.
    pub(super) fn from_image(
        window_ms: u64,
        keys: Vec<super::image::ImageKey>,
        by_task: Vec<(TaskId, Box<str>)>,
        expiry: Vec<(Millis, Box<str>, TaskId)>,
    ) -> Self {
        let mut index = KeyIndex::new(window_ms);
        for k in keys {
            index.bytes += k.key.len() as u64 + KEY_OVERHEAD;
            index.keys.insert(
                k.key,
                KeyUse {
                    id: k.id,
                    done: k.done,
                },
            );
        }
        index.by_task = by_task.into_iter().collect();
        index.expiry = expiry.into_iter().collect();
        index
    }

    /// A digest of the index in key order (see `QueueState::digest`).
    pub(super) fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, u) in keys {
            h.write_usize(k.len());
            h.write(k.as_bytes());
            h.write_u64(u.id.0);
            h.write_u64(u.done.map_or(0, |d| d.saturating_add(1)));
        }
        let mut tasks: Vec<_> = self.by_task.iter().collect();
        tasks.sort();
        for (id, k) in tasks {
            h.write_u64(id.0);
            h.write_usize(k.len());
            h.write(k.as_bytes());
        }
        for (until, k, id) in &self.expiry {
            h.write_u64(*until);
            h.write_usize(k.len());
            h.write(k.as_bytes());
            h.write_u64(id.0);
        }
        h.write_u64(self.bytes);
        h.finish()
    }

    /// [`KeyIndex::bytes`] counted from scratch, for tests.
    #[cfg(test)]
    pub(super) fn recount(&self) -> u64 {
        self.keys
            .keys()
            .map(|k| k.len() as u64 + KEY_OVERHEAD)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(id: u64, key: &str) -> NewTask {
        NewTask {
            id: TaskId(id),
            payload: Default::default(),
            headers: Default::default(),
            priority: 0,
            delay_ms: 0,
            key: Some(key.into()),
            job: None,
            group: None,
        }
    }

    #[test]
    fn a_done_key_is_held_for_the_window_then_free() {
        let mut k = KeyIndex::new(100);
        let mut dups = Vec::new();
        assert_eq!(
            k.take(0, vec![keyed(1, "a"), keyed(2, "a")], &mut dups)
                .len(),
            1
        );
        assert_eq!(dups, [(TaskId(2), TaskId(1))]);
        assert_eq!(k.done(10, TaskId(1)), Some(110));
        dups.clear();
        assert!(k.take(109, vec![keyed(3, "a")], &mut dups).is_empty());
        assert_eq!(dups, [(TaskId(3), TaskId(1))]);
        k.expire(110);
        assert_eq!(k.bytes(), 0);
        assert_eq!(k.take(110, vec![keyed(4, "a")], &mut Vec::new()).len(), 1);
        assert_eq!(k.bytes(), k.recount());
    }

    #[test]
    fn a_waiting_batch_takes_no_key_and_a_retracted_task_frees_its_own() {
        let mut k = KeyIndex::new(100);
        let waiting = k.drop_held(0, vec![keyed(1, "a")], &mut Vec::new());
        assert_eq!(waiting.len(), 1);
        assert_eq!(k.bytes(), 0);
        assert_eq!(k.take(0, waiting, &mut Vec::new()).len(), 1);
        k.retract(TaskId(1));
        assert_eq!((k.bytes(), k.of(TaskId(1))), (0, None));
    }
}
