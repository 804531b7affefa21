//! Unit tests for the seed scenarios, and a property test that drives the
//! engine with random commands against a deliberately naive model.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn cfg(capacity: u64, order: Order) -> QueueConfig {
    QueueConfig {
        capacity,
        order,
        ack_deadline_ms: 1000,
        max_attempts: 3,
        retry: Backoff::NONE,
        key_window_ms: 1000,
        dead_letter: None,
        max_in_flight: 0,
        rate: None,
        group_max_in_flight: 0,
        paused: false,
    }
}

fn task(id: u64, priority: i32) -> NewTask {
    // Some with headers and a job, whose bytes the memory budget counts.
    let headers = if id.is_multiple_of(2) {
        HashMap::from([("h".to_owned(), id.to_string())])
    } else {
        HashMap::new()
    };
    NewTask {
        id: TaskId(id),
        payload: Bytes::from(id.to_string()),
        headers,
        priority,
        delay_ms: 0,
        key: None,
        job: id.is_multiple_of(3).then(|| "job".into()),
        group: None,
    }
}

fn put(q: &mut QueueState, ids: &[(u64, i32)]) {
    let mut fx = Effects::default();
    let tasks = ids.iter().map(|&(i, p)| task(i, p)).collect();
    assert_eq!(
        q.enqueue(0, tasks, EnqueueMode::FailFast, &mut fx),
        Ok(Enqueued::Stored)
    );
}

/// Takes everything ready through one consumer with plenty of credit.
fn drain_order(q: &mut QueueState) -> Vec<u64> {
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(99), "t".into(), String::new(), true, 0);
    q.grant(0, ConsumerId(99), 1000, &mut fx);
    q.remove_consumer(0, ConsumerId(99), &mut fx);
    fx.deliveries.iter().map(|(_, d)| d.id.0).collect()
}

#[test]
fn priority_ties_keep_arrival_order() {
    // The seed example: priorities 3,1,2,1 come out 1,1,2,3.
    let mut q = QueueState::new(cfg(10, Order::Priority));
    put(&mut q, &[(1, 3), (2, 1), (3, 2), (4, 1)]);
    assert_eq!(drain_order(&mut q), vec![2, 4, 3, 1]);
}

#[test]
fn fifo_and_lifo() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    put(&mut q, &[(1, 5), (2, 0), (3, 9)]);
    assert_eq!(drain_order(&mut q), vec![1, 2, 3]);
    let mut q = QueueState::new(cfg(10, Order::Lifo));
    put(&mut q, &[(1, 5), (2, 0), (3, 9)]);
    assert_eq!(drain_order(&mut q), vec![3, 2, 1]);
}

#[test]
fn waiting_producers_are_served_in_arrival_order() {
    let mut q = QueueState::new(cfg(2, Order::Fifo));
    put(&mut q, &[(1, 0), (2, 0)]);
    let mut fx = Effects::default();
    let r = q.enqueue(
        0,
        vec![task(3, 0)],
        EnqueueMode::Wait(WaitingId(1)),
        &mut fx,
    );
    assert_eq!(r, Ok(Enqueued::Waiting(WaitingId(1))));
    let r = q.enqueue(
        0,
        vec![task(4, 0)],
        EnqueueMode::Wait(WaitingId(2)),
        &mut fx,
    );
    assert_eq!(r, Ok(Enqueued::Waiting(WaitingId(2))));
    // FAIL_FAST never jumps the line, even though nothing would fit anyway.
    assert_eq!(
        q.enqueue(0, vec![task(5, 0)], EnqueueMode::FailFast, &mut fx),
        Err(EnqueueError::Full)
    );
    q.add_consumer(ConsumerId(1), "c".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    assert_eq!(admitted_ids(&fx), vec![WaitingId(1)]);
    assert_eq!(q.stats().waiting_producers, 1);
}

#[test]
fn batch_larger_than_capacity_is_refused() {
    let mut q = QueueState::new(cfg(2, Order::Fifo));
    let mut fx = Effects::default();
    let r = q.enqueue(
        0,
        vec![task(1, 0), task(2, 0), task(3, 0)],
        EnqueueMode::Wait(WaitingId(1)),
        &mut fx,
    );
    assert_eq!(
        r,
        Err(EnqueueError::BatchTooLarge {
            batch: 3,
            capacity: 2
        })
    );
}

#[test]
fn stale_token_cannot_settle_after_redelivery() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 0);
    q.add_consumer(ConsumerId(2), "b".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    assert_eq!(fx.deliveries[0].1.attempt, 1);
    // Lease expires; the task goes to consumer 2 as attempt 2.
    q.grant(0, ConsumerId(2), 1, &mut fx);
    q.tick(1000, &mut fx);
    assert_eq!(fx.deliveries.len(), 2);
    assert_eq!(fx.deliveries[1].0, ConsumerId(2));
    assert_eq!(fx.deliveries[1].1.attempt, 2);
    assert_eq!(
        q.ack(1001, TaskId(1), 1, &mut Effects::default()),
        Err(SettleError::StaleLease)
    );
    assert_eq!(
        q.extend(1001, TaskId(1), 1, Claim::Token, 5000, &mut fx),
        Err(SettleError::StaleLease)
    );
    assert_eq!(q.ack(1001, TaskId(1), 2, &mut Effects::default()), Ok(()));
    assert_eq!(
        q.ack(1002, TaskId(1), 2, &mut Effects::default()),
        Err(SettleError::StaleLease)
    );
    assert_eq!(q.unfinished(), 0);
}

#[test]
fn lost_consumer_returns_tasks_at_once_and_attempts_run_out() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    let mut fx = Effects::default();
    for c in 1..=3 {
        q.add_consumer(ConsumerId(c), "w".into(), String::new(), false, 0);
        q.grant(0, ConsumerId(c), 1, &mut fx);
        q.remove_consumer(0, ConsumerId(c), &mut fx);
    }
    let attempts: Vec<u32> = fx.deliveries.iter().map(|(_, d)| d.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    // max_attempts = 3: the third loss makes it dead.
    assert_eq!(fx.dead.len(), 1);
    assert_eq!(fx.dead[0].attempts, 3);
    assert_eq!(q.unfinished(), 0);
    assert_eq!(q.stats().dead_total, 1);
}

#[test]
fn extend_has_no_cap_and_delays_expiry() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    let mut now = 0;
    for _ in 0..100 {
        now += 900;
        assert_eq!(
            q.extend(now, TaskId(1), 1, Claim::Token, 1000, &mut fx),
            Ok(now + 1000)
        );
        q.tick(now, &mut fx);
    }
    assert_eq!(q.stats().expired_total, 0);
    q.tick(now + 1000, &mut fx);
    assert_eq!(q.stats().expired_total, 1);
}

#[test]
fn delayed_tasks_count_but_wait_for_their_time() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    let mut fx = Effects::default();
    let mut t = task(1, 0);
    t.delay_ms = 500;
    q.enqueue(100, vec![t], EnqueueMode::FailFast, &mut fx)
        .expect("fits");
    assert!(fx.rearm);
    assert_eq!(q.next_deadline(), Some(600));
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 100);
    q.grant(100, ConsumerId(1), 1, &mut fx);
    assert!(fx.deliveries.is_empty());
    assert_eq!(q.unfinished(), 1);
    q.tick(599, &mut fx);
    assert!(fx.deliveries.is_empty());
    q.tick(600, &mut fx);
    assert_eq!(fx.deliveries.len(), 1);
}

#[test]
fn nack_with_priority_comes_back_ahead() {
    let mut q = QueueState::new(cfg(10, Order::Priority));
    put(&mut q, &[(1, 5), (2, 5)]);
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    let retry = NackAction::Retry {
        delay_ms: Some(0),
        priority: Some(0),
    };
    q.nack(0, TaskId(1), 1, Claim::Token, retry, "boom", None, &mut fx)
        .expect("held");
    assert_eq!(drain_order(&mut q), vec![1, 2]);
}

#[test]
fn round_robin_between_consumers_with_credit() {
    let mut q = QueueState::new(cfg(100, Order::Fifo));
    let mut fx = Effects::default();
    for c in 1..=3 {
        q.add_consumer(ConsumerId(c), "w".into(), String::new(), false, 0);
        q.grant(0, ConsumerId(c), 10, &mut fx);
    }
    put(&mut q, &(1..=9).map(|i| (i, 0)).collect::<Vec<_>>());
    let mut fx = Effects::default();
    q.tick(0, &mut fx);
    let stats = q.consumer_stats(0);
    assert!(stats.iter().all(|c| c.in_flight == 3), "{stats:?}");
}

// ------------------------------------------------------------ property test

#[derive(Debug, Clone)]
enum Op {
    Enqueue { prios: Vec<i32>, wait: bool },
    Subscribe,
    Grant { consumer: usize, n: u64 },
    Ack { pick: usize },
    Nack { pick: usize, priority: Option<i32> },
    Leave { consumer: usize },
    Advance { ms: u64 },
    Purge,
    CancelPut { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(0i32..4, 1..4), any::<bool>())
            .prop_map(|(prios, wait)| Op::Enqueue { prios, wait }),
        1 => Just(Op::Subscribe),
        3 => (0usize..4, 0u64..4).prop_map(|(consumer, n)| Op::Grant { consumer, n }),
        3 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => (any::<usize>(), proptest::option::of(0i32..4))
            .prop_map(|(pick, priority)| Op::Nack { pick, priority }),
        1 => (0usize..4).prop_map(|consumer| Op::Leave { consumer }),
        1 => (0u64..1500).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Purge),
        1 => any::<usize>().prop_map(|pick| Op::CancelPut { pick }),
    ]
}

/// The naive model: a list of ready tasks searched linearly for the
/// smallest key, leases in a map, producers in a line.
#[derive(Default)]
struct Model {
    /// id -> (seq, priority) of ready tasks.
    ready: BTreeMap<u64, (u64, i32)>,
    /// id -> (seq, priority, attempt, consumer, deadline)
    leased: BTreeMap<u64, (u64, i32, u32, u64, u64)>,
    waiting: VecDeque<(u64, Vec<(u64, i32)>)>,
    attempts: HashMap<u64, u32>,
    seq: u64,
    credit: HashMap<u64, u64>,
    granted: HashMap<u64, u64>,
    received: HashMap<u64, u64>,
    consumers: Vec<u64>,
    enqueued: u64,
    gone: u64,
}

impl Model {
    fn smallest(&self, order: Order) -> Option<u64> {
        let key = |(id, (seq, p)): (&u64, &(u64, i32))| match order {
            Order::Fifo => (0i64, *seq, *id),
            Order::Lifo => (0, u64::MAX - *seq, *id),
            Order::Priority => (i64::from(*p), *seq, *id),
        };
        self.ready.iter().min_by_key(|e| key(*e)).map(|(id, _)| *id)
    }

    fn store(&mut self, tasks: &[(u64, i32)]) {
        for &(id, p) in tasks {
            self.ready.insert(id, (self.seq, p));
            self.seq += 1;
            self.enqueued += 1;
        }
    }

    /// Checks the engine's deliveries one by one, mirroring its admissions
    /// of waiting producers: a waiting batch is stored as soon as it fits,
    /// oldest first.
    fn observe(&mut self, order: Order, capacity: u64, fx: &Effects, now: u64, deadline_ms: u64) {
        let mut admitted = Vec::new();
        for (cid, d) in &fx.deliveries {
            if self.ready.is_empty() {
                self.admit_fitting(capacity, &mut admitted);
            }
            let want = self
                .smallest(order)
                .expect("a delivery from an empty queue");
            assert_eq!(d.id.0, want, "delivery order");
            let (seq, p) = self.ready.remove(&want).expect("ready");
            let a = self.attempts.entry(want).or_insert(0);
            *a += 1;
            assert_eq!(d.attempt, *a, "attempt");
            let c = self.credit.get_mut(&cid.0).expect("known consumer");
            assert!(*c > 0, "delivery without credit");
            *c -= 1;
            *self.received.entry(cid.0).or_insert(0) += 1;
            self.leased
                .insert(want, (seq, p, *a, cid.0, now + deadline_ms));
        }
        self.admit_fitting(capacity, &mut admitted);
        assert_eq!(
            admitted_ids(fx),
            admitted,
            "producers admitted in arrival order"
        );
        self.gone += fx.dead.len() as u64;
    }

    fn admit_fitting(&mut self, capacity: u64, admitted: &mut Vec<WaitingId>) {
        while let Some((_, front)) = self.waiting.front() {
            if (self.ready.len() + front.len()) as u64 > capacity {
                break;
            }
            let (id, tasks) = self.waiting.pop_front().expect("front exists");
            self.store(&tasks);
            admitted.push(WaitingId(id));
        }
    }

    /// A leased task failed: back to ready or dead (max_attempts = 3).
    fn fail(&mut self, id: u64, priority: Option<i32>) {
        let (seq, p, attempt, _, _) = self.leased.remove(&id).expect("leased");
        if attempt < 3 {
            self.ready.insert(id, (seq, priority.unwrap_or(p)));
        }
    }
}

fn run(order: Order, capacity: u64, ops: Vec<Op>) {
    let mut q = QueueState::new(QueueConfig {
        capacity,
        order,
        ack_deadline_ms: 1000,
        max_attempts: 3,
        retry: Backoff::NONE,
        key_window_ms: 1000,
        dead_letter: None,
        max_in_flight: 0,
        rate: None,
        group_max_in_flight: 0,
        paused: false,
    });
    let mut m = Model::default();
    let mut now = 0u64;
    let mut next_id = 1u64;
    for op in ops {
        let mut fx = Effects::default();
        match op {
            Op::Enqueue { prios, wait } => {
                let tasks: Vec<(u64, i32)> = prios
                    .iter()
                    .map(|&p| {
                        next_id += 1;
                        (next_id, p)
                    })
                    .collect();
                let new = tasks.iter().map(|&(i, p)| task(i, p)).collect();
                let wait_id = next_id;
                let mode = if wait {
                    EnqueueMode::Wait(WaitingId(wait_id))
                } else {
                    EnqueueMode::FailFast
                };
                let fits = m.waiting.is_empty() && (m.ready.len() + tasks.len()) as u64 <= capacity;
                match q.enqueue(now, new, mode, &mut fx) {
                    Ok(Enqueued::Stored) => {
                        assert!(fits);
                        m.store(&tasks);
                    }
                    Ok(Enqueued::Waiting(_)) => {
                        assert!(wait && !fits && tasks.len() as u64 <= capacity);
                        m.waiting.push_back((wait_id, tasks));
                    }
                    Err(EnqueueError::Full) => assert!(!wait && !fits),
                    Err(EnqueueError::BatchTooLarge { .. }) => {
                        assert!(tasks.len() as u64 > capacity)
                    }
                    Err(e) => panic!("no producer sent this batch, yet: {e}"),
                }
            }
            Op::Subscribe => {
                let id = m.consumers.len() as u64 + 1;
                q.add_consumer(ConsumerId(id), "p".into(), String::new(), false, now);
                m.consumers.push(id);
                m.credit.insert(id, 0);
            }
            Op::Grant { consumer, n } => {
                if let Some(&id) = m.consumers.get(consumer)
                    && m.credit.contains_key(&id)
                {
                    *m.credit.get_mut(&id).expect("present") += n;
                    *m.granted.entry(id).or_insert(0) += n;
                    q.grant(now, ConsumerId(id), n, &mut fx);
                }
            }
            Op::Ack { pick } => {
                if !m.leased.is_empty() {
                    let id = *m
                        .leased
                        .keys()
                        .nth(pick % m.leased.len())
                        .expect("in range");
                    let attempt = m.leased[&id].2;
                    // A stale token first: it must change nothing.
                    assert_eq!(
                        q.ack(now, TaskId(id), attempt + 1, &mut Effects::default()),
                        Err(SettleError::StaleLease)
                    );
                    assert_eq!(
                        q.ack(now, TaskId(id), attempt, &mut Effects::default()),
                        Ok(())
                    );
                    m.leased.remove(&id);
                    m.gone += 1;
                }
            }
            Op::Nack { pick, priority } => {
                if !m.leased.is_empty() {
                    let id = *m
                        .leased
                        .keys()
                        .nth(pick % m.leased.len())
                        .expect("in range");
                    let attempt = m.leased[&id].2;
                    let action = NackAction::Retry {
                        delay_ms: Some(0),
                        priority,
                    };
                    assert_eq!(
                        q.nack(
                            now,
                            TaskId(id),
                            attempt,
                            Claim::Token,
                            action,
                            "e",
                            None,
                            &mut fx
                        ),
                        Ok(())
                    );
                    m.fail(id, priority);
                }
            }
            Op::Leave { consumer } => {
                if let Some(&id) = m.consumers.get(consumer)
                    && m.credit.remove(&id).is_some()
                {
                    q.remove_consumer(now, ConsumerId(id), &mut fx);
                    let held: Vec<u64> = m
                        .leased
                        .iter()
                        .filter(|(_, l)| l.3 == id)
                        .map(|(t, _)| *t)
                        .collect();
                    for t in held {
                        m.fail(t, None);
                    }
                }
            }
            Op::Advance { ms } => {
                now += ms;
                q.tick(now, &mut fx);
                let due: Vec<u64> = m
                    .leased
                    .iter()
                    .filter(|(_, l)| l.4 <= now)
                    .map(|(t, _)| *t)
                    .collect();
                for t in due {
                    m.fail(t, None);
                }
            }
            Op::Purge => {
                let n = q.purge(now, &mut fx);
                assert_eq!(n, m.ready.len() as u64);
                m.gone += n;
                m.ready.clear();
            }
            Op::CancelPut { pick } => {
                if !m.waiting.is_empty() {
                    let i = pick % m.waiting.len();
                    let (id, _) = m.waiting.remove(i).expect("in range");
                    assert!(q.cancel_put(now, WaitingId(id), &mut fx));
                }
            }
        }
        m.observe(order, capacity, &fx, now, 1000);

        let s = q.stats();
        assert_eq!(s.ready, m.ready.len() as u64, "ready");
        assert_eq!(s.leased, m.leased.len() as u64, "leased");
        assert_eq!(s.unfinished(), q.unfinished(), "unfinished");
        assert_eq!(s.waiting_producers, m.waiting.len() as u64);
        assert_eq!(s.enqueued_total, m.enqueued, "enqueued");
        assert_eq!(
            s.enqueued_total,
            s.acked_total + s.dead_total + s.purged_total + s.unfinished(),
            "no task lost or invented"
        );
        assert_eq!(m.gone, s.acked_total + s.dead_total + s.purged_total);
        if s.unfinished() == 0 {
            assert_eq!(s.payload_bytes, 0, "payload bytes follow the tasks");
        } else {
            assert!(s.payload_bytes > 0);
        }
        assert_eq!(
            q.held_bytes(),
            q.recount_held(),
            "held bytes follow the tasks"
        );
        for c in q.consumer_stats(now) {
            assert_eq!(Some(&c.credit), m.credit.get(&c.id.0), "credit");
            assert!(c.delivered <= m.granted.get(&c.id.0).copied().unwrap_or(0));
        }
        // A producer waits only while its batch does not fit.
        if let Some((_, front)) = m.waiting.front() {
            assert!(s.ready + s.delayed + front.len() as u64 > capacity);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_model_fifo(cap in 1u64..8, ops in proptest::collection::vec(op(), 1..120)) {
        run(Order::Fifo, cap, ops);
    }

    #[test]
    fn engine_matches_model_lifo(cap in 1u64..8, ops in proptest::collection::vec(op(), 1..120)) {
        run(Order::Lifo, cap, ops);
    }

    #[test]
    fn engine_matches_model_priority(cap in 1u64..8, ops in proptest::collection::vec(op(), 1..120)) {
        run(Order::Priority, cap, ops);
    }
}

#[test]
fn unsend_undoes_a_delivery_nobody_saw() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    let d = fx.deliveries.remove(0).1;
    q.remove_consumer(0, ConsumerId(1), &mut Effects::default());
    // remove_consumer already returned it (charged); a fresh delivery then
    // unsent must leave attempt and counters as they were.
    q.add_consumer(ConsumerId(2), "b".into(), String::new(), false, 0);
    let mut fx = Effects::default();
    q.grant(0, ConsumerId(2), 1, &mut fx);
    let d2 = fx.deliveries.remove(0).1;
    assert_eq!(d2.attempt, d.attempt + 1);
    let before = q.stats().delivered_total;
    assert_eq!(
        q.unsend(0, d2.id, d2.attempt, &mut Effects::default()),
        Ok(())
    );
    assert_eq!(q.stats().delivered_total, before - 1);
    assert_eq!(q.stats().ready, 1);
    // It was still owned by consumer 2 with credit 0: nothing re-delivered,
    // and the next delivery reuses the undone attempt number.
    let mut fx = Effects::default();
    q.grant(0, ConsumerId(2), 1, &mut fx);
    assert_eq!(fx.deliveries[0].1.attempt, d2.attempt);
    assert_eq!(
        q.ack(0, d2.id, d2.attempt + 1, &mut Effects::default()),
        Err(SettleError::StaleLease)
    );
}

#[test]
fn backoff_grows_is_capped_and_jittered_within_bounds() {
    let b = Backoff {
        initial_ms: 100,
        max_ms: 1000,
        multiplier_milli: 2000,
    };
    for id in 0..200 {
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let d = b.delay(TaskId(id), attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d} not in [{}, {full}]",
                full / 2
            );
            assert_eq!(d, b.delay(TaskId(id), attempt), "deterministic");
        }
    }
    // Jitter actually spreads.
    let spread: std::collections::HashSet<u64> = (0..50).map(|id| b.delay(TaskId(id), 3)).collect();
    assert!(spread.len() > 10);
    assert_eq!(Backoff::NONE.delay(TaskId(1), 5), 0);
    // Small delays grow too (1 ms, times 1.5 per attempt: 3 ms by the
    // fourth), and a multiplier of 1 keeps the delay flat.
    let slow = Backoff {
        initial_ms: 1,
        max_ms: 100,
        multiplier_milli: 1500,
    };
    assert!((1..=3).contains(&slow.delay(TaskId(7), 4)));
    assert!(
        slow.delay(TaskId(7), 12) >= 43,
        "1.5^11 = 86 ms, half of it at least"
    );
    let flat = Backoff {
        initial_ms: 40,
        max_ms: 100,
        multiplier_milli: 1000,
    };
    assert!((20..=40).contains(&flat.delay(TaskId(7), 500)));
}

#[test]
fn failures_wait_out_the_backoff_but_a_lost_consumer_does_not() {
    let mut c = cfg(10, Order::Fifo);
    c.retry = Backoff {
        initial_ms: 1000,
        max_ms: 10_000,
        multiplier_milli: 2000,
    };
    let mut q = QueueState::new(c);
    put(&mut q, &[(1, 0)]);
    let mut fx = Effects::default();
    q.add_consumer(ConsumerId(1), "a".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx);
    let retry = NackAction::Retry {
        delay_ms: None,
        priority: None,
    };
    q.nack(0, TaskId(1), 1, Claim::Token, retry, "x", None, &mut fx)
        .expect("held");
    assert_eq!(q.stats().delayed, 1);
    assert_eq!(q.stats().retrying, 1);
    let due = q.next_deadline().expect("a due time");
    assert!((500..=1000).contains(&due), "{due}");
    q.tick(due - 1, &mut fx);
    assert_eq!(q.stats().ready, 0);
    q.grant(due, ConsumerId(1), 1, &mut fx);
    q.tick(due, &mut fx);
    assert_eq!(q.stats().retrying, 0);
    assert_eq!(q.stats().leased, 1, "delivered once due");

    // The consumer goes away: the task is ready at once.
    q.remove_consumer(due, ConsumerId(1), &mut fx);
    assert_eq!(q.stats().ready, 1);
    assert_eq!(q.stats().retrying, 0);
}

fn keyed(id: u64, key: &str) -> NewTask {
    NewTask {
        key: Some(key.into()),
        ..task(id, 0)
    }
}

#[test]
fn a_key_makes_one_task_while_unfinished_and_for_its_window() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    let mut fx = Effects::default();
    let mode = EnqueueMode::FailFast;
    q.enqueue(0, vec![keyed(1, "k"), keyed(2, "k")], mode, &mut fx)
        .expect("fits");
    assert_eq!(
        fx.duplicates,
        vec![(TaskId(2), TaskId(1))],
        "same key in one batch"
    );
    assert_eq!(q.stats().ready, 1);
    let mut fx = Effects::default();
    q.enqueue(5, vec![keyed(3, "k"), keyed(4, "other")], mode, &mut fx)
        .expect("fits");
    assert_eq!(fx.duplicates, vec![(TaskId(3), TaskId(1))]);
    assert_eq!(q.stats().ready, 2);

    // Done at t=10; the window is 1000 ms.
    q.add_consumer(ConsumerId(1), "c".into(), String::new(), false, 10);
    let mut fx = Effects::default();
    q.grant(10, ConsumerId(1), 1, &mut fx);
    assert_eq!(fx.deliveries[0].1.key.as_deref(), Some("k"));
    q.ack(10, TaskId(1), 1, &mut fx).expect("ack");
    let mut fx = Effects::default();
    q.enqueue(1009, vec![keyed(5, "k")], mode, &mut fx)
        .expect("fits");
    assert_eq!(
        fx.duplicates,
        vec![(TaskId(5), TaskId(1))],
        "inside the window"
    );
    q.tick(1010, &mut Effects::default());
    let mut fx = Effects::default();
    q.enqueue(1010, vec![keyed(6, "k")], mode, &mut fx)
        .expect("fits");
    assert!(fx.duplicates.is_empty(), "window over: a new task");
    assert_eq!(q.stats().ready, 2);
    assert_eq!(
        q.held_bytes(),
        q.recount_held(),
        "keys counted as they come and go"
    );
}

fn admitted_ids(fx: &Effects) -> Vec<WaitingId> {
    fx.admitted.iter().map(|a| a.id).collect()
}

/// Frees one slot of a full queue holding task `id` (a consumer takes
/// it); returns the effects of that, which admit waiting producers.
fn take_and_ack(q: &mut QueueState, consumer: u64, id: u64) -> Effects {
    q.add_consumer(ConsumerId(consumer), "c".into(), String::new(), false, 0);
    let mut fx = Effects::default();
    q.grant(0, ConsumerId(consumer), 1, &mut fx);
    assert_eq!(fx.deliveries[0].1.id, TaskId(id));
    q.ack(0, TaskId(id), 1, &mut Effects::default())
        .expect("ack");
    fx
}

#[test]
fn a_waiting_batch_holds_no_key_so_no_answer_names_a_task_that_never_exists() {
    let mut q = QueueState::new(cfg(1, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    // A waits with key k.
    let mut fx = Effects::default();
    let r = q.enqueue(
        0,
        vec![keyed(3, "k")],
        EnqueueMode::Wait(WaitingId(1)),
        &mut fx,
    );
    assert_eq!(r, Ok(Enqueued::Waiting(WaitingId(1))));
    // B with k is not told A's id, which may never be stored.
    let mut fx = Effects::default();
    let r = q.enqueue(0, vec![keyed(4, "k")], EnqueueMode::FailFast, &mut fx);
    assert_eq!(
        r,
        Err(EnqueueError::Full),
        "fail-fast B: full, not a duplicate"
    );
    assert!(fx.duplicates.is_empty());
    let mut fx = Effects::default();
    let r = q.enqueue(
        0,
        vec![keyed(5, "k")],
        EnqueueMode::Wait(WaitingId(2)),
        &mut fx,
    );
    assert_eq!(r, Ok(Enqueued::Waiting(WaitingId(2))), "waiting B: in line");
    assert!(fx.duplicates.is_empty());
    // A gives up; B is stored under its own id when space frees.
    assert!(q.cancel_put(0, WaitingId(1), &mut Effects::default()));
    let fx = take_and_ack(&mut q, 1, 1);
    assert_eq!(
        fx.admitted,
        vec![Admitted {
            id: WaitingId(2),
            duplicates: vec![]
        }]
    );
    assert_eq!(q.stats().ready, 1);
    // And now k names a stored task: a third producer is told so at once,
    // though the queue is full.
    let mut fx = Effects::default();
    let r = q.enqueue(0, vec![keyed(6, "k")], EnqueueMode::FailFast, &mut fx);
    assert_eq!(r, Ok(Enqueued::Stored));
    assert_eq!(fx.duplicates, vec![(TaskId(6), TaskId(5))]);
}

#[test]
fn of_two_waiting_batches_with_one_key_the_second_is_answered_the_first_once_stored() {
    let mut q = QueueState::new(cfg(1, Order::Fifo));
    put(&mut q, &[(1, 0)]);
    for (wait_id, id) in [(1, 3), (2, 4)] {
        let r = q.enqueue(
            0,
            vec![keyed(id, "k")],
            EnqueueMode::Wait(WaitingId(wait_id)),
            &mut Effects::default(),
        );
        assert_eq!(r, Ok(Enqueued::Waiting(WaitingId(wait_id))));
    }
    let fx = take_and_ack(&mut q, 1, 1);
    // A is stored; B then fits (its task is a duplicate, taking no room)
    // and is answered A's id: a task that exists.
    assert_eq!(
        fx.admitted,
        vec![
            Admitted {
                id: WaitingId(1),
                duplicates: vec![]
            },
            Admitted {
                id: WaitingId(2),
                duplicates: vec![(TaskId(4), TaskId(3))]
            }
        ]
    );
    assert_eq!(q.stats().ready, 1);
    assert_eq!(q.stats().waiting_producers, 0);
}

#[test]
fn publishers_get_reserved_credit_and_share_freed_space() {
    let mut q = QueueState::new(cfg(10, Order::Fifo));
    let mut fx = Effects::default();
    let (a, b) = (PublisherId(1), PublisherId(2));
    q.add_publisher(0, a, 8, &mut fx);
    assert_eq!(fx.granted, vec![(a, 8)]);
    let mut fx = Effects::default();
    q.add_publisher(0, b, 8, &mut fx);
    assert_eq!(fx.granted, vec![(b, 2)], "only what is left");
    // A plain enqueue finds no room: the space is reserved.
    assert_eq!(
        q.enqueue(0, vec![task(100, 0)], EnqueueMode::FailFast, &mut fx),
        Err(EnqueueError::Full)
    );
    // Sending more than the credit is refused.
    let too_many: Vec<NewTask> = (1..=3).map(|i| task(200 + i, 0)).collect();
    assert_eq!(
        q.publish(0, b, too_many, &mut fx),
        Err(PublishError::OverCredit { sent: 3, credit: 2 })
    );
    let batch: Vec<NewTask> = (1..=8).map(|i| task(i, 0)).collect();
    q.publish(0, a, batch, &mut Effects::default())
        .expect("within credit");
    q.publish(
        0,
        b,
        vec![task(20, 0), task(21, 0)],
        &mut Effects::default(),
    )
    .expect("within credit");
    assert_eq!(q.stats().ready, 10);
    // Confirmed, but the queue is full: no new credit yet.
    let mut fx = Effects::default();
    q.publish_confirmed(0, a, 8, &mut fx);
    q.publish_confirmed(0, b, 2, &mut fx);
    assert!(fx.granted.is_empty());
    // Four tasks drain: the freed space is shared.
    q.add_consumer(ConsumerId(1), "c".into(), String::new(), false, 0);
    let mut fx = Effects::default();
    q.grant(0, ConsumerId(1), 4, &mut fx);
    let mut granted = fx.granted.clone();
    granted.sort();
    assert_eq!(granted, vec![(a, 2), (b, 2)], "a fair share each");
    assert_eq!(q.stats().reserved, 4);
    // A publisher that leaves gives its reservation back.
    let mut fx = Effects::default();
    q.remove_publisher(0, a, &mut fx);
    assert_eq!(fx.granted, vec![(b, 2)]);
}

#[test]
fn waiting_enqueues_come_before_publishers() {
    let mut q = QueueState::new(cfg(5, Order::Fifo));
    put(&mut q, &[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
    let mut fx = Effects::default();
    q.add_publisher(0, PublisherId(1), 5, &mut fx);
    assert!(fx.granted.is_empty(), "the queue is full");
    let batch: Vec<NewTask> = (10..13).map(|i| task(i, 0)).collect();
    assert_eq!(
        q.enqueue(0, batch, EnqueueMode::Wait(WaitingId(1)), &mut fx),
        Ok(Enqueued::Waiting(WaitingId(1)))
    );
    // Space frees one slot at a time: the waiting batch of 3 gets it.
    q.add_consumer(ConsumerId(1), "c".into(), String::new(), false, 0);
    let mut fx = Effects::default();
    for _ in 0..3 {
        q.grant(0, ConsumerId(1), 1, &mut fx);
    }
    assert_eq!(admitted_ids(&fx), vec![WaitingId(1)]);
    assert!(fx.granted.is_empty(), "no credit while an Enqueue waited");
    let mut fx = Effects::default();
    q.grant(0, ConsumerId(1), 1, &mut fx);
    assert_eq!(fx.granted, vec![(PublisherId(1), 1)], "then the publisher");
}

#[test]
fn retract_frees_room_for_waiting_producers_and_keeps_held_keys() {
    let mut q = QueueState::new(cfg(2, Order::Fifo));
    let mut fx = Effects::default();
    q.enqueue(
        0,
        vec![keyed(1, "a"), keyed(2, "b")],
        EnqueueMode::FailFast,
        &mut fx,
    )
    .expect("fits");
    q.add_consumer(ConsumerId(1), "c".into(), String::new(), false, 0);
    q.grant(0, ConsumerId(1), 1, &mut fx); // task 1 is now held
    q.enqueue(
        0,
        vec![task(3, 0), task(4, 0)],
        EnqueueMode::Wait(WaitingId(9)),
        &mut fx,
    )
    .expect("waits");
    let mut fx = Effects::default();
    let ids = [TaskId(1), TaskId(2)].into_iter().collect();
    assert_eq!(q.retract(0, &ids, &mut fx), 1, "only the one still queued");
    assert_eq!(
        admitted_ids(&fx),
        vec![WaitingId(9)],
        "its room went to the waiting producer"
    );
    // Key "a" still belongs to the held task; "b" is free again.
    let mut fx = Effects::default();
    let _ = q.enqueue(0, vec![keyed(5, "a")], EnqueueMode::FailFast, &mut fx);
    assert_eq!(fx.duplicates, vec![(TaskId(5), TaskId(1))]);
}

// ------------------------------------------------------------ flow control

fn grouped(id: u64, group: &str) -> NewTask {
    let mut t = task(id, 0);
    t.group = (!group.is_empty()).then(|| group.into());
    t
}

/// Runs one command at `now`, returning its effects.
fn exec(q: &mut QueueState, now: Millis, c: Command) -> Effects {
    let mut fx = Effects::default();
    q.execute(now, c, &mut fx);
    fx
}

fn reconfigure(q: &mut QueueState, now: Millis, f: impl FnOnce(&mut QueueConfig)) -> Effects {
    let mut config = q.config().clone();
    f(&mut config);
    let lift_throttles = !config.paused && q.config().paused;
    exec(
        q,
        now,
        Command::Configure {
            config,
            lift_throttles,
        },
    )
}

fn store(q: &mut QueueState, now: Millis, tasks: Vec<NewTask>) {
    exec(q, now, Command::Store { tasks });
}

fn consumer(q: &mut QueueState, now: Millis, id: u64, credit: u64) -> Effects {
    exec(
        q,
        now,
        Command::AddConsumer {
            id: ConsumerId(id),
            name: format!("c{id}"),
            peer: String::new(),
            detached: false,
        },
    );
    exec(
        q,
        now,
        Command::Grant {
            id: ConsumerId(id),
            credit,
        },
    )
}

fn settle(id: TaskId, attempt: u32, kind: SettleKind) -> Command {
    Command::Settle {
        ops: vec![SettleOp {
            id,
            attempt,
            claim: Claim::Token,
            kind,
        }],
    }
}

fn ack(id: TaskId, attempt: u32) -> Command {
    settle(
        id,
        attempt,
        SettleKind::Ack {
            result: Bytes::new(),
        },
    )
}

fn nack_throttled(id: TaskId, attempt: u32, ms: u64, group: bool) -> Command {
    settle(
        id,
        attempt,
        SettleKind::Nack {
            action: NackAction::Retry {
                delay_ms: Some(0),
                priority: None,
            },
            error: "429".into(),
            throttle: Some(Throttle { ms, group }),
        },
    )
}

fn ids(fx: &Effects) -> Vec<u64> {
    fx.deliveries.iter().map(|(_, d)| d.id.0).collect()
}

#[test]
fn options_changed_mid_stream_take_effect_at_once() {
    let mut q = QueueState::new(cfg(100, Order::Fifo));
    store(&mut q, 0, (1..=20).map(|i| task(i, 0)).collect());
    reconfigure(&mut q, 0, |c| c.max_in_flight = 2);
    assert_eq!(ids(&consumer(&mut q, 0, 1, 10)), [1, 2]);
    assert_eq!(q.holds(0), [Hold::InFlightCap]);
    // A raised cap delivers at once; a pause stops the next delivery.
    assert_eq!(
        ids(&reconfigure(&mut q, 0, |c| c.max_in_flight = 4)),
        [3, 4]
    );
    reconfigure(&mut q, 0, |c| c.paused = true);
    assert!(ids(&exec(&mut q, 0, ack(TaskId(1), 1))).is_empty());
    assert_eq!(q.holds(0), [Hold::Paused]);
    assert_eq!(ids(&reconfigure(&mut q, 0, |c| c.paused = false)), [5]);
    // A slow rate holds; a fast one lets the next delivery out at once.
    // (Credit left: 5.) A slow rate lets one out, then holds; a fast one
    // lets the next out at once.
    let fx = reconfigure(&mut q, 10, |c| {
        c.max_in_flight = 0;
        c.rate = Some(RateLimit {
            tasks: 1,
            per_ms: 3_600_000,
            burst: 1,
        });
    });
    assert_eq!(ids(&fx), [6]);
    assert!(matches!(
        q.holds(10)[..],
        [Hold::RateLimited { until: 3_600_010 }]
    ));
    let fx = reconfigure(&mut q, 20, |c| {
        c.rate = Some(RateLimit {
            tasks: 1000,
            per_ms: 1000,
            burst: 1,
        });
    });
    assert_eq!(ids(&fx), [7]);
    assert_eq!(q.next_deadline(), Some(21));
}

#[test]
fn a_rate_limited_queue_wakes_its_timer_for_the_next_token() {
    // 10/s, 50 tasks: the broker's timer fires at next_deadline and ticks.
    let mut c = cfg(100, Order::Fifo);
    c.ack_deadline_ms = 3_600_000;
    c.rate = Some(RateLimit {
        tasks: 10,
        per_ms: 1000,
        burst: 1,
    });
    let mut q = QueueState::new(c);
    store(&mut q, 0, (1..=50).map(|i| task(i, 0)).collect());
    let mut at = vec![0; ids(&consumer(&mut q, 0, 1, 100)).len()];
    let mut now = 0;
    while at.len() < 50 {
        let Some(next) = q.next_deadline() else {
            panic!("rate limited with nothing to wake the timer at {now}")
        };
        assert!(next > now, "the timer would spin at {now}");
        now = next;
        at.extend(std::iter::repeat_n(
            now,
            exec(&mut q, now, Command::Tick).deliveries.len(),
        ));
    }
    assert_eq!(at[0], 0);
    assert_eq!(at[49], 4900, "{at:?}");
}

#[test]
fn a_throttle_holds_the_queue_or_only_the_group() {
    let mut c = cfg(100, Order::Fifo);
    c.ack_deadline_ms = 3_600_000;
    let mut q = QueueState::new(c);
    store(
        &mut q,
        0,
        vec![
            grouped(1, "a"),
            grouped(2, "a"),
            grouped(3, "b"),
            grouped(4, "b"),
        ],
    );
    assert_eq!(ids(&consumer(&mut q, 0, 1, 1)), [1]);
    // Group throttle: a's task comes back and a waits 500 ms; b goes on.
    let fx = exec(&mut q, 100, nack_throttled(TaskId(1), 1, 500, true));
    assert!(fx.rearm);
    assert_eq!(q.next_deadline(), Some(600));
    let fx = exec(
        &mut q,
        100,
        Command::Grant {
            id: ConsumerId(1),
            credit: 10,
        },
    );
    assert_eq!(ids(&fx), [3, 4]);
    assert_eq!(q.stats().groups_held, 1);
    assert_eq!(q.holds(100), [Hold::GroupsHeld]);
    assert_eq!(ids(&exec(&mut q, 600, Command::Tick)), [1, 2]);
    // Queue throttle: nothing at all until it ends, then everything.
    let fx = exec(&mut q, 700, nack_throttled(TaskId(4), 1, 1000, false));
    assert!(ids(&fx).is_empty());
    store(&mut q, 700, vec![grouped(5, "c"), grouped(6, "")]);
    assert_eq!(q.holds(700), [Hold::Throttled { until: 1700 }]);
    assert_eq!(q.next_deadline(), Some(1700));
    assert_eq!(ids(&exec(&mut q, 1700, Command::Tick)).len(), 3);
}

#[test]
fn a_resume_ends_throttles() {
    let mut q = QueueState::new(cfg(100, Order::Fifo));
    store(&mut q, 0, vec![grouped(1, "a"), grouped(2, "b")]);
    consumer(&mut q, 0, 1, 1);
    exec(&mut q, 0, nack_throttled(TaskId(1), 1, 60_000, false));
    let fx = exec(
        &mut q,
        0,
        Command::Grant {
            id: ConsumerId(1),
            credit: 1,
        },
    );
    assert!(ids(&fx).is_empty());
    reconfigure(&mut q, 0, |c| c.paused = true);
    let fx = reconfigure(&mut q, 0, |c| c.paused = false);
    assert_eq!(ids(&fx), [2]);
}

#[derive(Debug, Clone)]
enum FlowOp {
    Put {
        group: u8,
        n: u64,
    },
    Grant {
        consumer: u64,
        credit: u64,
    },
    Ack(usize),
    Nack {
        pick: usize,
        throttle_ms: u64,
        group: bool,
    },
    Wait(u64),
    Caps {
        cap: u64,
        group_cap: u64,
    },
}

fn flow_op() -> impl Strategy<Value = FlowOp> {
    prop_oneof![
        3 => (0u8..5, 1u64..6).prop_map(|(group, n)| FlowOp::Put { group, n }),
        3 => (1u64..4, 1u64..6).prop_map(|(consumer, credit)| FlowOp::Grant { consumer, credit }),
        4 => (0usize..8).prop_map(FlowOp::Ack),
        1 => (0usize..8, 0u64..300, any::<bool>())
            .prop_map(|(pick, throttle_ms, group)| FlowOp::Nack { pick, throttle_ms, group }),
        2 => (0u64..400).prop_map(FlowOp::Wait),
        1 => (1u64..5, 0u64..3).prop_map(|(cap, group_cap)| FlowOp::Caps { cap, group_cap }),
    ]
}

proptest! {
    /// Whatever the traffic, a delivery never takes the leased tasks above
    /// max_in_flight, nor a group's above max_in_flight_per_group (caps
    /// change on the way; leases already out when one is lowered may stay
    /// above it, but nothing more is delivered).
    #[test]
    fn deliveries_never_pass_the_in_flight_caps(
        cap in 1u64..5,
        group_cap in 0u64..3,
        ops in proptest::collection::vec(flow_op(), 1..150),
    ) {
        let mut c = cfg(1000, Order::Fifo);
        c.ack_deadline_ms = 3_600_000;
        c.max_attempts = 0;
        c.max_in_flight = cap;
        c.group_max_in_flight = group_cap;
        let mut q = QueueState::new(c);
        for id in 1..=3 {
            consumer(&mut q, 0, id, 0);
        }
        let mut now = 0;
        let mut next = 1;
        // Leases out: (task, attempt, group).
        let mut held: Vec<(TaskId, u32, Option<Box<str>>)> = Vec::new();
        for op in ops {
            let fx = match op {
                FlowOp::Put { group, n } => {
                    let tasks = (0..n).map(|i| grouped(next + i, ["", "a", "b", "c", "d"][group as usize])).collect();
                    next += n;
                    exec(&mut q, now, Command::Store { tasks })
                }
                FlowOp::Grant { consumer, credit } => {
                    exec(&mut q, now, Command::Grant { id: ConsumerId(consumer), credit })
                }
                FlowOp::Ack(pick) if !held.is_empty() => {
                    let (id, attempt, _) = held.remove(pick % held.len());
                    exec(&mut q, now, ack(id, attempt))
                }
                FlowOp::Nack { pick, throttle_ms, group } if !held.is_empty() => {
                    let (id, attempt, _) = held.remove(pick % held.len());
                    exec(&mut q, now, nack_throttled(id, attempt, throttle_ms, group))
                }
                FlowOp::Wait(ms) => {
                    now += ms;
                    exec(&mut q, now, Command::Tick)
                }
                FlowOp::Caps { cap, group_cap } => reconfigure(&mut q, now, |c| {
                    c.max_in_flight = cap;
                    c.group_max_in_flight = group_cap;
                }),
                _ => Effects::default(),
            };
            held.extend(fx.deliveries.iter().map(|(_, d)| (d.id, d.attempt, d.group.clone())));
            if fx.deliveries.is_empty() {
                continue;
            }
            let config = q.config();
            prop_assert!(held.len() as u64 <= config.max_in_flight);
            prop_assert_eq!(q.stats().leased, held.len() as u64);
            if config.group_max_in_flight > 0 {
                for (_, d) in &fx.deliveries {
                    let same = held.iter().filter(|(_, _, g)| *g == d.group).count() as u64;
                    prop_assert!(same <= config.group_max_in_flight, "group {:?}: {}", d.group, same);
                }
            }
        }
    }

    /// A greedy consumer behind a rate limit, its tasks acked at once:
    /// in every window between two deliveries, no more than the rate
    /// allows over the window plus the burst.
    #[test]
    fn deliveries_in_any_window_stay_within_rate_and_burst(
        tasks in 1u64..20,
        per_ms in 50u64..2000,
        burst in 1u64..5,
        steps in proptest::collection::vec(0u64..300, 1..100),
    ) {
        let rate = RateLimit { tasks, per_ms, burst };
        let mut c = cfg(10_000, Order::Fifo);
        c.ack_deadline_ms = 3_600_000;
        c.rate = Some(rate);
        let mut q = QueueState::new(c);
        store(&mut q, 0, (1..=2000).map(|i| task(i, 0)).collect());
        let mut now = 1_000;
        let mut at: Vec<Millis> = Vec::new();
        let mut fx = consumer(&mut q, now, 1, 10_000);
        for step in steps {
            at.extend(std::iter::repeat_n(now, fx.deliveries.len()));
            let mut acks = Effects::default();
            for (_, d) in &fx.deliveries {
                q.execute(now, ack(d.id, d.attempt), &mut acks);
            }
            at.extend(std::iter::repeat_n(now, acks.deliveries.len()));
            now += step;
            fx = exec(&mut q, now, Command::Tick);
        }
        at.extend(std::iter::repeat_n(now, fx.deliveries.len()));
        for i in 0..at.len() {
            for j in i..at.len() {
                let count = (j - i + 1) as u64;
                let window = at[j] - at[i];
                prop_assert!(
                    count * per_ms <= burst * per_ms + window * tasks,
                    "{} deliveries in {} ms at {}/{}ms burst {}", count, window, tasks, per_ms, burst
                );
            }
        }
    }

    /// Groups with ready tasks take turns: after i rounds, every group
    /// that had at least i tasks got i deliveries, however many tasks the
    /// others have and in whatever order they arrived.
    #[test]
    fn every_group_with_ready_tasks_is_served_within_a_round(
        arrivals in proptest::collection::vec(0u8..12, 1..300),
    ) {
        let mut q = QueueState::new(cfg(10_000, Order::Fifo));
        let tasks: Vec<NewTask> = arrivals
            .iter()
            .enumerate()
            .map(|(i, g)| grouped(i as u64 + 1, &format!("tenant-{g}")))
            .collect();
        let mut count: BTreeMap<Option<Box<str>>, u64> = BTreeMap::new();
        for t in &tasks {
            *count.entry(t.group.clone()).or_default() += 1;
        }
        store(&mut q, 0, tasks);
        let fx = consumer(&mut q, 0, 1, 10_000);
        let order: Vec<Option<Box<str>>> = fx.deliveries.iter().map(|(_, d)| d.group.clone()).collect();
        prop_assert_eq!(order.len(), arrivals.len());
        let mut seen: BTreeMap<Option<Box<str>>, u64> = BTreeMap::new();
        for (pos, g) in order.iter().enumerate() {
            let round = { let n = seen.entry(g.clone()).or_default(); *n += 1; *n };
            // Deliveries before the end of round `round`.
            let within: u64 = count.values().map(|n| (*n).min(round)).sum();
            prop_assert!((pos as u64) < within, "{:?}'s delivery {} at {}", g, round, pos);
        }
    }
}

#[test]
fn browsing_pages_by_id_changes_nothing_and_remove_takes_only_waiting_tasks() {
    let mut q = QueueState::new(cfg(100, Order::Priority));
    let mut delayed = task(3, 0);
    delayed.delay_ms = 1000;
    let mut keyed = task(5, 0);
    keyed.key = Some("k".into());
    store(
        &mut q,
        0,
        vec![task(4, 9), keyed, delayed, task(1, 0), task(2, 5)],
    );
    let digest = q.digest();
    let ids = |b: &[Browsed]| b.iter().map(|t| t.id.0).collect::<Vec<_>>();
    let first = q.browse(None, 2);
    assert_eq!(ids(&first), [1, 2]);
    let next = q.browse(Some(TaskId(2)), 10);
    assert_eq!(ids(&next), [3, 4, 5]);
    assert_eq!(next[0].due, Some(1000), "the delayed one says when");
    assert_eq!(q.digest(), digest, "browsing changes nothing");
    // One leased (5: priority 0, first to arrive): remove takes the
    // waiting ones named, not it.
    let fx = consumer(&mut q, 0, 1, 1);
    assert_eq!(ids_of(&fx), [5]);
    let fx = exec(
        &mut q,
        0,
        Command::Remove {
            ids: vec![TaskId(1), TaskId(3), TaskId(5)],
        },
    );
    assert!(fx.deliveries.is_empty());
    let left: Vec<u64> = ids(&q.browse(None, 10));
    assert_eq!(left, [2, 4]);
    let s = q.stats();
    assert_eq!((s.leased, s.purged_total), (1, 2));
    assert_eq!(q.held_bytes(), q.recount_held());
}

fn ids_of(fx: &Effects) -> Vec<u64> {
    fx.deliveries.iter().map(|(_, d)| d.id.0).collect()
}
