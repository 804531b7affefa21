//! The broker against a real log in a temporary directory, with the
//! log's faults injected where a disk fails: what is confirmed survives
//! a restart, what is refused is not half-done, and nothing a client can
//! make the broker keep escapes the memory budget.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use sluice_proto::v1 as pb;

use super::*;
use crate::engine::NackAction;
use crate::limits::Limits;
use crate::storage::{Log, LogOptions};
use crate::wal::Recovery;

/// A broker on a log in `dir`, started from what the log holds.
fn durable_broker(dir: &std::path::Path, options: LogOptions) -> Broker {
    let (log, recovered) = reopen(dir, options);
    Broker::with_log(CancellationToken::new(), Some(log), recovered, 64 << 20)
}

/// Opens the log in `dir` and replays it.
fn reopen(dir: &std::path::Path, options: LogOptions) -> (Log, Recovery) {
    crate::wal::open::replay(dir, options).expect("the log replays")
}

/// What a restart would find: closes the broker's log and replays it.
async fn restart_view(broker: Broker, dir: &std::path::Path) -> Recovery {
    let log = broker.log().cloned().expect("a log");
    broker.shutdown().cancel();
    let _ = log.close().await;
    drop(broker);
    // The writer releases the directory once every handle is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Log::open(dir, LogOptions::default()) {
            Ok((log, replay)) => {
                let mut r = Recovery::default();
                for item in replay {
                    r.apply(&item.expect("record").1).expect("decodes");
                }
                let _ = log.close().await;
                return r;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "log still held: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn spec(name: &str, o: pb::QueueOptions) -> QueueSpec {
    crate::api::validate::queue_spec(name, Some(&o)).expect("valid spec")
}

fn capacity(capacity: u64) -> pb::QueueOptions {
    pb::QueueOptions {
        capacity,
        ..Default::default()
    }
}

fn durable(capacity: u64) -> pb::QueueOptions {
    pb::QueueOptions {
        durable: true,
        capacity,
        ..Default::default()
    }
}

fn tasks(broker: &Broker, payloads: &[&str]) -> Vec<NewTask> {
    let first = broker.task_ids(payloads.len() as u64);
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| NewTask {
            id: TaskId(first.0 + i as u64),
            payload: Bytes::from(p.to_string()),
            headers: Default::default(),
            priority: 0,
            delay_ms: 0,
            key: None,
            job: None,
            group: None,
        })
        .collect()
}

fn keyed(broker: &Broker, key: &str) -> Vec<NewTask> {
    let mut t = tasks(broker, &[key]);
    t[0].key = Some(key.into());
    t
}

fn payloads(r: &Recovery, queue: &str) -> Vec<String> {
    r.queues.get(queue).map_or_else(Vec::new, |q| {
        q.tasks
            .values()
            .map(|t| String::from_utf8_lossy(&t.body.payload).into_owned())
            .collect()
    })
}

async fn queue(broker: &Broker, name: &str, o: pb::QueueOptions) -> Arc<QueueHandle> {
    broker
        .create_queue(spec(name, o))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .0
}

/// Enqueues one task per payload, expecting each to be stored.
async fn put(broker: &Broker, q: &Arc<QueueHandle>, items: &[&str]) {
    for p in items {
        broker
            .enqueue(q, tasks(broker, &[p]), false, None, None)
            .await
            .unwrap_or_else(|e| panic!("enqueue {p}: {e}"));
    }
}

async fn take(broker: &Broker, q: &Arc<QueueHandle>, n: u64) -> Vec<Delivery> {
    broker
        .get(q, n, Duration::ZERO, String::new())
        .await
        .expect("get")
}

/// An ack of `d` that quotes its token.
fn ack(d: &Delivery) -> crate::engine::SettleOp {
    crate::engine::SettleOp {
        id: d.id,
        attempt: d.attempt,
        claim: crate::engine::Claim::Token,
        kind: crate::engine::SettleKind::Ack {
            result: bytes::Bytes::new(),
        },
    }
}

fn ack_all(broker: &Broker, q: &QueueHandle, got: &[Delivery]) {
    broker.apply(q, |core, now, fx| {
        for d in got {
            core.settle(now, ack(d), fx).expect("held");
        }
    });
}

/// A durable queue "q" whose dead letters go to durable "dlq", holding one
/// task "doomed" taken by a consumer; returns (dlq, q, its delivery).
async fn doomed(broker: &Broker) -> (Arc<QueueHandle>, Arc<QueueHandle>, Delivery) {
    let dlq = queue(broker, "dlq", durable(10)).await;
    let source = pb::QueueOptions {
        dead_letter: "dlq".into(),
        max_attempts: Some(1),
        ..durable(10)
    };
    let q = queue(broker, "q", source).await;
    put(broker, &q, &["doomed"]).await;
    let got = take(broker, &q, 1).await.remove(0);
    (dlq, q, got)
}

fn dead_letter(broker: &Broker, q: &QueueHandle, d: &Delivery) {
    broker.apply(q, |core, now, fx| {
        let nack = crate::engine::SettleOp {
            id: d.id,
            attempt: d.attempt,
            claim: crate::engine::Claim::Token,
            kind: crate::engine::SettleKind::Nack {
                action: NackAction::DeadLetter,
                error: "bad".into(),
                throttle: None,
            },
        };
        core.settle(now, nack, fx).expect("held")
    });
}

#[tokio::test]
async fn batches_in_flight_count_against_the_memory_budget() {
    let broker = Broker::new(CancellationToken::new());
    broker.set_limits(Limits {
        max_memory_bytes: 100,
        ..Limits::default()
    });
    let first = broker.reserve_memory(60).expect("fits");
    // Not yet in any queue, but a second batch must see the first one:
    // both would pass a check of the queued bytes alone.
    assert!(broker.reserve_memory(60).is_err());
    let second = broker.reserve_memory(40).expect("fits beside the first");
    drop(first);
    drop(second);
    let _whole = broker.reserve_memory(100).expect("all released");
}

#[tokio::test]
async fn a_queue_whose_definition_the_log_refused_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let log = broker.log().cloned().expect("log");
    log.faults().fail_writes.store(1, Relaxed);
    let err = broker
        .create_queue(spec("q", durable(10)))
        .await
        .expect_err("the disk is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        matches!(broker.queue("q"), Err(Error::QueueNotFound(_))),
        "no orphan queue in memory"
    );
    // A retry creates it for real, and what it confirms survives.
    let (q, created) = broker
        .create_queue(spec("q", durable(10)))
        .await
        .expect("created");
    assert!(created);
    put(&broker, &q, &["a"]).await;
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(payloads(&r, "q"), ["a"]);
}

#[tokio::test]
async fn an_update_the_log_refused_changes_nothing_and_one_it_took_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(10)).await;
    let update = |paused: bool| pb::UpdateQueueRequest {
        name: "q".into(),
        max_in_flight: Some(3),
        paused: Some(paused),
        ..Default::default()
    };
    let log = broker.log().cloned().expect("log");
    log.faults().fail_writes.store(1, Relaxed);
    let err = broker
        .update_queue("q", false, |s| {
            crate::api::validate::updated_spec(s, &update(true))
        })
        .await
        .expect_err("the disk is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert_eq!(q.config(), spec("q", durable(10)).config, "nothing changed");
    broker
        .update_queue("q", false, |s| {
            crate::api::validate::updated_spec(s, &update(true))
        })
        .await
        .expect("updated");
    assert!(q.config().paused);
    let r = restart_view(broker, dir.path()).await;
    let c = &r.queues["q"].spec.config;
    assert_eq!((c.max_in_flight, c.paused), (3, true));
}

#[tokio::test]
async fn a_nack_throttle_outlives_a_restart_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(10)).await;
    put(&broker, &q, &["a"]).await;
    let got = take(&broker, &q, 1).await;
    let until = broker.apply(&q, |core, now, fx| {
        let op = crate::engine::SettleOp {
            kind: crate::engine::SettleKind::Nack {
                action: NackAction::Retry {
                    delay_ms: Some(0),
                    priority: None,
                },
                error: "429".into(),
                throttle: Some(crate::engine::Throttle {
                    ms: 3_600_000,
                    group: false,
                }),
            },
            ..ack(&got[0])
        };
        core.settle(now, op, fx).expect("nacked");
        now + 3_600_000
    });
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(r.queues["q"].throttles, [(None, until)]);
    // Compaction writes it again with the live tasks.
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = broker.queue("q").expect("recovered");
    assert_eq!(q.lock().state.stats().throttled_until, until);
    broker.compact().await.expect("compacted");
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(r.queues["q"].throttles, [(None, until)]);
    assert_eq!(payloads(&r, "q"), ["a"]);
}

#[tokio::test]
async fn a_failed_fsync_fails_the_enqueue_and_stops_every_later_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(10)).await;
    put(&broker, &q, &["before"]).await;
    broker
        .log()
        .expect("log")
        .faults()
        .fail_syncs
        .store(1, Relaxed);
    let err = broker
        .enqueue(&q, tasks(&broker, &["lost"]), false, None, None)
        .await
        .expect_err("the fsync failed");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(q.snapshot().0.ready, 1, "the refused task was taken back");
    // The next fsync would succeed; the log must not take the chance.
    let err = broker
        .enqueue(&q, tasks(&broker, &["after"]), false, None, None)
        .await
        .expect_err("the log stopped");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.to_string().contains("restart the broker"), "{err}");
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(payloads(&r, "q"), ["before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_group_commit_confirms_none_of_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(1000)).await;
    let log = broker.log().cloned().expect("log");
    // Slow syncs make the enqueues below pile up into groups; the first
    // group written after the fault is armed fails half-written.
    log.faults().slow_sync_ms.store(20, Relaxed);
    put(&broker, &q, &["warm-up"]).await;
    log.faults().fail_writes.store(1, Relaxed);
    let mut calls = Vec::new();
    for i in 0..40 {
        let (b, q) = (broker.clone(), q.clone());
        calls.push(tokio::spawn(async move {
            let name = format!("t{i}");
            let r = b.enqueue(&q, tasks(&b, &[&name]), false, None, None).await;
            (name, r.map(|_| ()))
        }));
    }
    let mut confirmed = vec!["warm-up".to_owned()];
    let mut refused = 0;
    for c in calls {
        let (name, r) = c.await.expect("joined");
        match r {
            Ok(()) => confirmed.push(name),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the fault hit a group");
    assert_eq!(
        q.snapshot().0.ready,
        confirmed.len() as u64,
        "refused tasks were taken back"
    );
    let r = restart_view(broker, dir.path()).await;
    let mut found = payloads(&r, "q");
    found.sort();
    confirmed.sort();
    assert_eq!(found, confirmed, "exactly the confirmed tasks survive");
}

#[tokio::test]
async fn a_dead_letter_move_the_log_refuses_keeps_the_task_in_its_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let (dlq, q, got) = doomed(&broker).await;
    let log = broker.log().cloned().expect("log");
    // What came before (the delivery's attempt, noted without a wait) is
    // written first, so that the fault hits the move and nothing else.
    log.flush().await.expect("flushed");
    // The move is one record: refusing it refuses both halves.
    log.faults().fail_writes.store(1, Relaxed);
    dead_letter(&broker, &q, &got);
    log.flush().await.expect("the writer is past the move");
    assert_eq!(dlq.snapshot().0.ready, 1, "in memory it moved");
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(payloads(&r, "q"), ["doomed"], "not lost: back in its queue");
    assert!(payloads(&r, "dlq").is_empty());
}

#[tokio::test]
async fn a_dead_letter_move_is_one_record_that_replays_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let (_, q, got) = doomed(&broker).await;
    dead_letter(&broker, &q, &got);
    broker.log().expect("log").flush().await.expect("flushed");
    let r = restart_view(broker, dir.path()).await;
    assert!(payloads(&r, "q").is_empty());
    assert_eq!(payloads(&r, "dlq"), ["doomed"]);
    let moved = r.queues["dlq"].tasks.values().next().expect("a task");
    let headers = moved.body.headers.as_deref().expect("dead-letter headers");
    assert_eq!(headers["x-sluice-dead-reason"], "rejected");
}

#[tokio::test]
async fn durable_dead_letters_go_only_to_durable_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    broker
        .create_queue(spec("mem", pb::QueueOptions::default()))
        .await
        .expect("in memory");
    let to_mem = pb::QueueOptions {
        dead_letter: "mem".into(),
        ..durable(10)
    };
    let err = broker
        .create_queue(spec("q", to_mem))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // The other way round: a durable queue names a dead letter queue that
    // does not exist yet; it may then only be created durable.
    let to_later = pb::QueueOptions {
        dead_letter: "later".into(),
        ..durable(10)
    };
    broker
        .create_queue(spec("q", to_later))
        .await
        .expect("created");
    let err = broker
        .create_queue(spec("later", pb::QueueOptions::default()))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("must be durable"), "{err}");
    broker
        .create_queue(spec("later", durable(10)))
        .await
        .expect("durable is fine");
}

#[tokio::test]
async fn compaction_syncs_before_it_deletes_under_every_fsync_policy() {
    for fsync in ["never", "interval:1h"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions {
            fsync: fsync.parse().expect("policy"),
            ..LogOptions::default()
        };
        let broker = durable_broker(dir.path(), options.clone());
        let q = queue(&broker, "q", durable(100)).await;
        for i in 0..10 {
            put(&broker, &q, &[&format!("t{i}")]).await;
        }
        let log = broker.log().cloned().expect("log");
        // Synced now, so the roll needs no sync: the next one is the sync
        // of the rewrite.
        log.flush().await.expect("flush");
        let first = log.segments()[0].first_seq;
        // The rewrite is written but its sync fails: the old segments,
        // the only synced copy, must stay.
        log.faults().fail_syncs.store(1, Relaxed);
        assert!(broker.compact().await.is_err(), "{fsync}");
        assert_eq!(
            log.segments()[0].first_seq,
            first,
            "{fsync}: nothing deleted"
        );
        assert!(log.segments().len() > 1, "{fsync}: the rewrite was written");
        let r = restart_view(broker, dir.path()).await;
        assert_eq!(payloads(&r, "q").len(), 10, "{fsync}");
    }
}

#[tokio::test]
async fn deleting_a_queue_gives_its_bytes_back_to_the_budget() {
    let broker = Broker::new(CancellationToken::new());
    broker.set_limits(Limits {
        max_memory_bytes: 1_000_000,
        ..Limits::default()
    });
    let big = "x".repeat(600_000);
    for name in ["a", "b", "c"] {
        let q = queue(&broker, name, pb::QueueOptions::default()).await;
        broker
            .enqueue(&q, tasks(&broker, &[&big]), false, None, None)
            .await
            .unwrap_or_else(|e| panic!("queue {name}: {e}"));
        broker.delete_queue(name, false).await.expect("deleted");
        assert_eq!(broker.held_bytes(), 0, "after deleting {name}");
    }
}

#[tokio::test]
async fn a_waiting_batch_and_remembered_keys_count_in_the_budget() {
    let broker = Broker::new(CancellationToken::new());
    broker.set_limits(Limits {
        max_memory_bytes: 2_000,
        ..Limits::default()
    });
    let q = queue(&broker, "q", capacity(1)).await;
    put(&broker, &q, &["first"]).await;
    // A producer waits for space with 1500 bytes: they are held.
    let waiting = {
        let (b, q) = (broker.clone(), q.clone());
        let payload = "w".repeat(1500);
        tokio::spawn(async move {
            let t = tasks(&b, &[&payload]);
            b.enqueue(&q, t, true, None, None).await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while q.snapshot().0.waiting_producers == 0 {
        assert!(std::time::Instant::now() < deadline, "never waited");
        tokio::task::yield_now().await;
    }
    let err = broker
        .enqueue(&q, tasks(&broker, &[&"x".repeat(600)]), false, None, None)
        .await
        .expect_err("over the budget with the waiting batch");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.to_string().contains("--max-memory-bytes"), "{err}");
    waiting.abort();
    let _ = waiting.await;
    // A key outlives its task for the window, and costs while it does.
    let before = broker.held_bytes();
    let k = queue(&broker, "k", pb::QueueOptions::default()).await;
    broker
        .enqueue(&k, keyed(&broker, "some-key"), false, None, None)
        .await
        .expect("stored");
    let got = take(&broker, &k, 1).await;
    ack_all(&broker, &k, &got);
    assert!(
        broker.held_bytes() >= before + "some-key".len() as u64,
        "the remembered key is counted"
    );
}

#[tokio::test]
async fn a_get_answer_fits_a_default_client() {
    let broker = Broker::new(CancellationToken::new());
    let q = queue(&broker, "q", pb::QueueOptions::default()).await;
    let big = "x".repeat(900 << 10);
    for _ in 0..10 {
        put(&broker, &q, &[&big]).await;
    }
    let got = take(&broker, &q, 10).await;
    assert_eq!(got.len(), 1, "one 900 KiB task per answer");
    let s = q.snapshot().0;
    assert_eq!((s.ready, s.leased), (9, 1), "the rest went back, unleased");
    assert_eq!(s.delivered_total, 1, "and uncharged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_cannot_pass_the_consumer_limit_together() {
    let broker = Broker::new(CancellationToken::new());
    broker.set_limits(Limits {
        max_consumers: 10,
        ..Limits::default()
    });
    let q = queue(&broker, "q", pb::QueueOptions::default()).await;
    let mut joins = Vec::new();
    for i in 0..64 {
        let (b, q) = (broker.clone(), q.clone());
        joins.push(tokio::spawn(async move {
            b.add_consumer(&q, format!("c{i}"), String::new())
                .map(|(_, rx)| rx)
        }));
    }
    let mut held = Vec::new();
    for j in joins {
        if let Ok(rx) = j.await.expect("joined") {
            held.push(rx);
        }
    }
    assert_eq!(held.len(), 10);
    assert_eq!(q.snapshot().0.consumers, 10);
}

#[tokio::test]
async fn a_key_waiting_in_line_is_never_answered_before_it_is_stored() {
    let broker = Broker::new(CancellationToken::new());
    let q = queue(&broker, "q", capacity(1)).await;
    put(&broker, &q, &["full"]).await;
    // A waits with key k, and gives up after a moment.
    let a = {
        let (b, q) = (broker.clone(), q.clone());
        let deadline = Instant::now() + Duration::from_millis(300);
        tokio::spawn(async move {
            b.enqueue(&q, keyed(&b, "k"), true, Some(deadline), None)
                .await
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while q.snapshot().0.waiting_producers == 0 {
        assert!(std::time::Instant::now() < until, "A never waited");
        tokio::task::yield_now().await;
    }
    // B with k fail-fast: the queue is full; B is not told A's id.
    let err = broker
        .enqueue(&q, keyed(&broker, "k"), false, None, None)
        .await
        .expect_err("full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let a = a.await.expect("joined").expect_err("A gave up");
    assert_eq!(a.code(), tonic::Code::DeadlineExceeded);
    // C and D with k wait; space frees; C is stored, D is told C's id,
    // and C's id is a task the queue really holds.
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let (b, qc) = (broker.clone(), q.clone());
        waiters.push(tokio::spawn(async move {
            b.enqueue(&qc, keyed(&b, "k"), true, None, None).await
        }));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let n = waiters.len() as u64;
        while q.snapshot().0.waiting_producers < n {
            assert!(std::time::Instant::now() < until, "never waited");
            tokio::task::yield_now().await;
        }
    }
    let got = take(&broker, &q, 1).await;
    ack_all(&broker, &q, &got);
    let mut answers = Vec::new();
    for w in waiters {
        let s = w.await.expect("joined").expect("stored");
        let id = s
            .duplicates
            .first()
            .map_or(s.first_id, |(_, holder)| *holder);
        answers.push(id);
    }
    assert_eq!(answers[0], answers[1], "one task for one key");
    let held = broker
        .get(&q, 1, Duration::ZERO, String::new())
        .await
        .expect("get");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, answers[0], "the answered id is a stored task");
}

#[tokio::test]
async fn compaction_counts_headers_and_does_not_run_again_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        segment_bytes: 64 << 10,
        ..LogOptions::default()
    };
    let (log, recovered) = reopen(dir.path(), options);
    let broker = Broker::with_log(CancellationToken::new(), Some(log), recovered, 64 << 10);
    let q = queue(&broker, "q", durable(10_000)).await;
    // Tiny payloads, big headers: what the old trigger did not count, so
    // it found the log always too big and rewrote it every second.
    for i in 0..200 {
        let mut t = tasks(&broker, &["p"]);
        t[0].headers
            .insert("h".into(), format!("{i}-{}", "v".repeat(2000)));
        broker
            .enqueue(&q, t, false, None, None)
            .await
            .expect("stored");
    }
    assert!(!broker.compaction_due(), "all of it is live");
    let written = broker.compact().await.expect("compacted");
    assert!(written > 200 * 2000, "headers are in the snapshot");
    assert!(!broker.compaction_due(), "nothing to gain right after one");
    let r = restart_view(broker, dir.path()).await;
    assert_eq!(payloads(&r, "q").len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_the_queue_serves_keeps_exactly_what_is_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(100_000)).await;
    for i in 0..2000 {
        put(&broker, &q, &[&format!("old{i}")]).await;
    }
    // Producers and consumers keep going while the log is rewritten: the
    // snapshot is written after the queue's lock is released, and what
    // they log must still land after it.
    let stop = CancellationToken::new();
    let worker = {
        let (b, q, stop) = (broker.clone(), q.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                put(&b, &q, &[&format!("new{n}")]).await;
                let got = take(&b, &q, 2).await;
                ack_all(&b, &q, &got);
                n += 1;
            }
        })
    };
    for _ in 0..3 {
        broker.compact().await.expect("compacted");
    }
    stop.cancel();
    worker.await.expect("worker");
    let mut live: Vec<String> = Vec::new();
    let got = take(&broker, &q, 1000).await;
    let mut rest = got.len();
    live.extend(
        got.iter()
            .map(|d| String::from_utf8_lossy(&d.body.payload).into_owned()),
    );
    while rest > 0 {
        let got = take(&broker, &q, 1000).await;
        rest = got.len();
        live.extend(
            got.iter()
                .map(|d| String::from_utf8_lossy(&d.body.payload).into_owned()),
        );
    }
    let r = restart_view(broker, dir.path()).await;
    let mut found = payloads(&r, "q");
    found.sort();
    live.sort();
    assert_eq!(found, live);
}

fn every(name: &str, queue: &str, ms: u64) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        name: name.into(),
        queue: queue.into(),
        every_ms: ms,
        task: Some(pb::ScheduledTask {
            payload: Bytes::from_static(b"tick"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_schedule_the_log_refused_does_not_exist_and_one_it_took_survives_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    queue(&broker, "q", durable(10)).await;
    let hourly = every("hourly", "q", 3_600_000);
    let log = broker.log().cloned().expect("log");
    log.faults().fail_writes.store(1, Relaxed);
    let err = broker
        .create_schedule(hourly.clone(), false)
        .await
        .expect_err("the disk is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(broker.schedules().is_empty(), "no orphan schedule");
    assert_eq!(broker.schedules().bytes(), 0);
    let (info, created) = broker
        .create_schedule(hourly.clone(), false)
        .await
        .expect("created");
    assert!(created);
    assert!(info.next_tick_unix_ms > 0);
    // The same definition again: nothing new; another: refused.
    let (_, again) = broker
        .create_schedule(hourly.clone(), false)
        .await
        .expect("same");
    assert!(!again);
    let err = broker
        .create_schedule(every("hourly", "q", 60_000), false)
        .await
        .expect_err("other definition");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // A pause the log refused changes nothing either.
    log.faults().fail_writes.store(1, Relaxed);
    broker
        .pause_schedule("hourly", true)
        .await
        .expect_err("the disk is full");
    assert!(!broker.schedule("hourly").expect("there").paused);
    broker.pause_schedule("hourly", true).await.expect("paused");
    broker.compact().await.expect("compacted");
    let r = restart_view(broker, dir.path()).await;
    let st = &r.schedules["hourly"];
    let info = st.info.as_ref().expect("info");
    assert_eq!(info.spec.as_ref(), Some(&hourly));
    assert!(info.paused);
}

#[tokio::test]
async fn a_deleted_schedule_stays_deleted_and_a_refused_delete_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    queue(&broker, "q", durable(10)).await;
    broker
        .create_schedule(every("s", "q", 3_600_000), false)
        .await
        .expect("created");
    let log = broker.log().cloned().expect("log");
    log.faults().fail_writes.store(1, Relaxed);
    broker.delete_schedule("s").await.expect_err("disk full");
    assert!(broker.schedule("s").is_ok(), "still there");
    broker.delete_schedule("s").await.expect("deleted");
    let err = broker.delete_schedule("s").await.expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let r = restart_view(broker, dir.path()).await;
    assert!(r.schedules.is_empty());
}

#[tokio::test]
async fn a_tick_whose_run_record_was_lost_is_known_by_its_stored_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(10)).await;
    let (info, _) = broker
        .create_schedule(every("s", "q", 1000), false)
        .await
        .expect("created");
    // What a tick stores, without its run's record (a crash in between);
    // and keys that are not a tick that fired: far ahead (a producer
    // silencing the schedule), written another way, off the grid.
    let tick = info.next_tick_unix_ms;
    let keyed = |key: String| {
        let mut task = tasks(&broker, &["tick"]).remove(0);
        task.key = Some(key.into());
        task
    };
    let batch = vec![
        keyed(crate::schedules::tick_key("s", tick + 3_600_000)),
        keyed(format!(
            "s@{}",
            crate::schedules::tick_text(tick).replace('Z', "+00:00")
        )),
        keyed(crate::schedules::tick_key("s", tick - 500)),
        keyed(crate::schedules::tick_key("s", tick)),
    ];
    broker
        .enqueue(&q, batch, false, None, None)
        .await
        .expect("stored");
    let got = take(&broker, &q, 4).await;
    ack_all(&broker, &q, &got);
    let r = restart_view(broker, dir.path()).await;
    // The key far ahead does not hide the tick that fired.
    assert_eq!(r.schedule_ticks[&("s".to_owned(), "q".to_owned())], tick);
    let broker = durable_broker(dir.path(), LogOptions::default());
    let info = broker.schedule("s").expect("recovered");
    assert_eq!(info.last_tick_unix_ms, tick, "the tick is not due again");
    assert_eq!(
        info.next_tick_unix_ms,
        tick + 1000,
        "nor is the schedule silenced"
    );
    assert_eq!(info.fired, 1);
}

#[tokio::test]
async fn a_schedule_can_be_paused_and_deleted_on_a_log_too_full_to_define_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        max_bytes: Some(256 << 10),
        ..LogOptions::default()
    };
    let broker = durable_broker(dir.path(), options);
    let q = queue(&broker, "q", durable(10_000)).await;
    broker
        .create_schedule(every("s", "q", 3_600_000), false)
        .await
        .expect("created");
    // Fill the log until an append that grows it is refused: what is left
    // is the room kept for compaction.
    let big = "x".repeat(8 << 10);
    loop {
        let task = tasks(&broker, &[big.as_str()]);
        if broker.enqueue(&q, task, false, None, None).await.is_err() {
            break;
        }
    }
    let err = broker
        .create_schedule(every("t", "q", 3_600_000), false)
        .await
        .expect_err("no room for a definition");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // Stopping one is always possible.
    broker.pause_schedule("s", true).await.expect("paused");
    broker.delete_schedule("s").await.expect("deleted");
    let r = restart_view(broker, dir.path()).await;
    assert!(r.schedules.is_empty());
}

/// Polls `cond` every 10 ms until it holds or 20 s pass.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tick_the_log_refuses_fails_counts_nothing_fired_and_the_next_fires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = durable_broker(dir.path(), LogOptions::default());
    let q = queue(&broker, "q", durable(100)).await;
    broker
        .create_schedule(every("s", "q", 1000), false)
        .await
        .expect("created");
    // The next write is the first tick's task: the disk refuses it.
    let log = broker.log().cloned().expect("log");
    log.faults().fail_writes.store(1, Relaxed);
    broker.start_schedules();
    until("the first tick failed", || {
        broker.schedule("s").is_ok_and(|i| i.failed == 1)
    })
    .await;
    let info = broker.schedule("s").expect("there");
    assert_eq!(info.fired, 0, "a refused store is no fired tick: {info:?}");
    assert!(info.last_error.contains("not stored"), "{info:?}");
    assert_eq!(q.lock().state.depth(), 0, "the refused task was taken back");
    until("a later tick fired", || {
        broker.schedule("s").is_ok_and(|i| i.fired >= 1)
    })
    .await;
    let info = broker.schedule("s").expect("there");
    assert_eq!(info.last_error, "");
    let fired = info.fired;
    // What the log holds agrees: one task per fired tick.
    let r = restart_view(broker, dir.path()).await;
    let kept = payloads(&r, "q").len() as u64;
    assert!(kept >= fired, "{kept} tasks for {fired} fired ticks");
    let state = r.schedules["s"].info.clone().expect("info");
    assert_eq!(state.failed, 1);
}
