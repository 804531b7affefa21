//! A queue's whole state as plain data, and back: what a replica's
//! snapshot carries, so that a member that installs it goes on exactly as
//! the members that applied every command (equal digests, equal effects).
//!
//! Unlike [`QueueState::snapshot`] (the unfinished tasks, for the local
//! log's compaction, where a restart ends every consumer), an image keeps
//! everything: leases with their owners and deadlines, consumers and their
//! credit, waiting batches, publishers' reservations, keys, counters.

use super::drain::DrainMeter;
use super::keys::KeyIndex;
use super::marks::{ImageMark, Marks};
use super::publishers::Publishers;
use super::{Consumer, Lease, Producer, QueueState, WaitingBatch, header_bytes};
use crate::flow::Bucket;
use crate::groups::{ImageGroup, Ready};
use crate::ready::Entry;
use crate::{
    ConsumerId, Millis, NewTask, PublisherId, QueueConfig, QueueStats, TaskBody, TaskId, WaitingId,
};

/// One task as an image holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTask {
    pub id: TaskId,
    pub body: TaskBody,
    /// Arrival order (see the ready set).
    pub seq: u64,
    pub priority: i32,
    pub attempt: u32,
}

/// A leased task.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLease {
    pub task: ImageTask,
    /// 0 when no stream holds it (a Get's lease).
    pub owner: ConsumerId,
    pub deadline: Millis,
    pub since: Millis,
}

/// A batch waiting for space.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageWaiting {
    pub id: WaitingId,
    pub tasks: Vec<NewTask>,
    pub at: Millis,
    /// Whether it had a keyed task when it arrived: its keys are checked
    /// again before it is stored.
    pub keyed: bool,
    /// Its tasks found to be duplicates so far: (new id, holder).
    pub dups: Vec<(TaskId, TaskId)>,
    /// Who sent it, as which batch.
    pub producer: Option<Producer>,
}

/// A consumer and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConsumer {
    pub id: ConsumerId,
    pub name: String,
    pub peer: String,
    pub connected_at: Millis,
    pub credit: u64,
    pub detached: bool,
    /// Leased task -> delivered at.
    pub in_flight: Vec<(TaskId, Millis)>,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub processing_ms_total: u64,
}

/// An idempotency key in use.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageKey {
    pub key: Box<str>,
    pub id: TaskId,
    /// When its task was done; None while unfinished.
    pub done: Option<Millis>,
}

/// A publisher's reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePublisher {
    pub id: PublisherId,
    pub window: u64,
    pub reserved: u64,
    pub pending: u64,
}

/// Everything a queue holds besides its (separately known) config. Lists
/// that are orders keep their order (`ring`, `waiting`, `publisher_ring`,
/// `key_expiry`, `drained`); the others are in key order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueImage {
    pub ready: Vec<ImageTask>,
    pub delayed: Vec<(Millis, ImageTask)>,
    pub leased: Vec<ImageLease>,
    pub waiting: Vec<ImageWaiting>,
    pub consumers: Vec<ImageConsumer>,
    /// Consumers with credit, in the order they are next served.
    pub ring: Vec<ConsumerId>,
    pub next_seq: u64,
    /// The counters (`*_total`); depths and gauges are recomputed.
    pub stats: QueueStats,
    pub journal: bool,
    /// Last nack errors of tasks that have one.
    pub errors: Vec<(TaskId, Box<str>)>,
    /// Delayed tasks waiting out a retry backoff.
    pub retrying: Vec<TaskId>,
    pub keys: Vec<ImageKey>,
    /// Keys of unfinished tasks.
    pub task_keys: Vec<(TaskId, Box<str>)>,
    /// Done keys in the order their windows end: (until, key, task).
    pub key_expiry: Vec<(Millis, Box<str>, TaskId)>,
    /// Deliveries per second: (second, count), oldest first.
    pub drained: Vec<(u64, u64)>,
    pub publishers: Vec<ImagePublisher>,
    /// Publishers in the order they are next served.
    pub publisher_ring: Vec<PublisherId>,
    /// The job of each unfinished task that has one.
    pub task_jobs: Vec<(TaskId, Box<str>)>,
    /// Producers' recent batches, by producer.
    pub marks: Vec<ImageMark>,
    /// Groups: the default one first, then by name.
    pub groups: Vec<ImageGroup>,
    /// The group of each unfinished task in a named group.
    pub task_groups: Vec<(TaskId, Box<str>)>,
    /// The turn the next group to get in line gets.
    pub next_turn: u64,
    /// A nack's throttle on the whole queue; 0: none.
    pub throttled_until: Millis,
    /// The rate limit's bucket (see `flow`).
    pub bucket_tat_us: u64,
    /// When the timer wakes for the rate limit or the throttle.
    pub flow_wake: Option<Millis>,
}

fn image_task(e: &Entry) -> ImageTask {
    ImageTask {
        id: e.id,
        body: e.body.clone(),
        seq: e.seq,
        priority: e.priority,
        attempt: e.attempt,
    }
}

fn entry(t: ImageTask) -> Entry {
    Entry {
        id: t.id,
        body: t.body,
        seq: t.seq,
        priority: t.priority,
        attempt: t.attempt,
    }
}

fn sorted<K: Ord + Copy, V: Clone>(m: &rustc_hash::FxHashMap<K, V>) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.iter().map(|(k, v)| (*k, v.clone())).collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

impl QueueState {
    /// The queue's whole state; see the module docs.
    pub fn image(&self) -> QueueImage {
        let mut leased: Vec<ImageLease> = self
            .leased
            .values()
            .map(|l| ImageLease {
                task: image_task(&l.entry),
                owner: l.owner,
                deadline: l.deadline,
                since: l.since,
            })
            .collect();
        leased.sort_by_key(|l| l.task.id);
        let mut consumers: Vec<ImageConsumer> = self
            .consumers
            .iter()
            .map(|(id, c)| {
                let mut in_flight: Vec<(TaskId, Millis)> =
                    c.in_flight.iter().map(|(t, at)| (*t, *at)).collect();
                in_flight.sort();
                ImageConsumer {
                    id: *id,
                    name: c.name.clone(),
                    peer: c.peer.clone(),
                    connected_at: c.connected_at,
                    credit: c.credit,
                    detached: c.detached,
                    in_flight,
                    delivered: c.delivered,
                    acked: c.acked,
                    nacked: c.nacked,
                    processing_ms_total: c.processing_ms_total,
                }
            })
            .collect();
        consumers.sort_by_key(|c| c.id);
        let mut retrying: Vec<TaskId> = self.retrying.iter().copied().collect();
        retrying.sort();
        let (keys, task_keys, key_expiry) = self.keys.image();
        let (publishers, publisher_ring) = self.publishers.image();
        let (groups, task_groups, next_turn) = self.ready.image();
        QueueImage {
            groups,
            task_groups,
            next_turn,
            throttled_until: self.throttled_until,
            bucket_tat_us: self.bucket.tat_us,
            flow_wake: self.flow_wake,
            ready: self
                .ready
                .in_serve_order()
                .into_iter()
                .map(image_task)
                .collect(),
            delayed: self
                .delayed
                .iter()
                .map(|((due, _), e)| (*due, image_task(e)))
                .collect(),
            leased,
            waiting: self
                .waiting
                .iter()
                .map(|w| ImageWaiting {
                    id: w.id,
                    tasks: w.tasks.clone(),
                    at: w.at,
                    keyed: w.keyed,
                    dups: w.dups.clone(),
                    producer: w.producer.clone(),
                })
                .collect(),
            consumers,
            ring: self.ring.iter().copied().collect(),
            next_seq: self.next_seq,
            stats: self.stats.clone(),
            journal: self.journal,
            errors: sorted(&self.errors),
            retrying,
            keys,
            task_keys,
            key_expiry,
            drained: self.drained.image(),
            publishers,
            publisher_ring,
            task_jobs: sorted(&self.task_jobs),
            marks: self.marks.image(),
        }
    }

    /// A queue in exactly the state `image` was taken in.
    pub fn from_image(config: QueueConfig, image: QueueImage) -> QueueState {
        let mut q = QueueState::new(config);
        let QueueImage {
            ready,
            delayed,
            leased,
            waiting,
            consumers,
            ring,
            next_seq,
            stats,
            journal,
            errors,
            retrying,
            keys,
            task_keys,
            key_expiry,
            drained,
            publishers,
            publisher_ring,
            task_jobs,
            marks,
            groups,
            task_groups,
            next_turn,
            throttled_until,
            bucket_tat_us,
            flow_wake,
        } = image;
        // The running counts are recounted from what is held.
        q.stats = QueueStats {
            payload_bytes: 0,
            ..stats
        };
        let held = |q: &mut QueueState, body: &TaskBody| {
            q.stats.payload_bytes += body.payload.len() as u64;
            q.extra_bytes += header_bytes(&body.headers);
        };
        // In arrival order, each is the newest so far: the ready set's
        // precondition for a new task, and the order it serves them in
        // whichever way they first arrived.
        let mut ready = ready;
        ready.sort_by_key(|t| t.seq);
        for t in &ready {
            held(&mut q, &t.body);
        }
        let leased_ids: Vec<TaskId> = leased.iter().map(|l| l.task.id).collect();
        let delayed_ids: Vec<TaskId> = delayed.iter().map(|(_, t)| t.id).collect();
        q.ready = Ready::from_image(
            q.config.order,
            q.config.group_max_in_flight,
            (groups, task_groups, next_turn),
            ready.into_iter().map(entry).collect(),
            &leased_ids,
            &delayed_ids,
        );
        q.throttled_until = throttled_until;
        q.bucket = Bucket {
            tat_us: bucket_tat_us,
        };
        q.flow_wake = flow_wake;
        for (due, t) in delayed {
            held(&mut q, &t.body);
            q.delayed.insert((due, t.id), entry(t));
        }
        for l in leased {
            held(&mut q, &l.task.body);
            q.deadlines.insert((l.deadline, l.task.id));
            q.leased.insert(
                l.task.id,
                Lease {
                    entry: entry(l.task),
                    owner: l.owner,
                    deadline: l.deadline,
                    since: l.since,
                },
            );
        }
        for w in waiting {
            q.waiting_tasks += w.tasks.len() as u64;
            q.waiting.push_back(WaitingBatch {
                id: w.id,
                tasks: w.tasks,
                at: w.at,
                keyed: w.keyed,
                dups: w.dups,
                producer: w.producer,
            });
        }
        for c in consumers {
            q.consumers.insert(
                c.id,
                Consumer {
                    name: c.name,
                    peer: c.peer,
                    connected_at: c.connected_at,
                    credit: c.credit,
                    detached: c.detached,
                    in_flight: c.in_flight.into_iter().collect(),
                    delivered: c.delivered,
                    acked: c.acked,
                    nacked: c.nacked,
                    processing_ms_total: c.processing_ms_total,
                    in_ring: false,
                },
            );
        }
        for id in ring {
            if let Some(c) = q.consumers.get_mut(&id) {
                c.in_ring = true;
                q.ring.push_back(id);
            }
        }
        q.next_seq = next_seq;
        q.journal = journal;
        q.errors = errors.into_iter().collect();
        q.retrying = retrying.into_iter().collect();
        q.keys = KeyIndex::from_image(q.config.key_window_ms, keys, task_keys, key_expiry);
        q.marks = Marks::from_image(q.config.key_window_ms, marks);
        q.drained = DrainMeter::from_image(drained);
        q.publishers = Publishers::from_image(publishers, publisher_ring);
        for (id, job) in task_jobs {
            q.job_link(id, job);
        }
        q
    }
}
