//! A task's life in the broker: retries with backoff, dead letters and
//! redrive, priority on retry, delays, idempotency keys, and what a
//! restart keeps of all that.

use std::time::{Duration, Instant};

use sluice_client::proto::{ConsumeRequest, NackAction, NackItem};
use sluice_tests::{Broker, DEADLINE, RawConsumer, lease_of, num};

/// Reads `path` as one number per line (nanoseconds from `date +%s%N`).
fn times(path: &std::path::Path) -> Vec<u128> {
    sluice_tests::numbers_in(path)
}

#[test]
fn a_failing_task_is_retried_with_growing_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("times");
    let b = Broker::start();
    b.ok(&[
        "queue",
        "create",
        "q",
        "--retry-initial",
        "300ms",
        "--retry-multiplier",
        "3",
        "--retry-max",
        "10s",
    ]);
    // Fails on attempts 1 and 2, succeeds on 3.
    let script = format!(
        "date +%s%N >> {}; [ \"$SLUICE_ATTEMPT\" -ge 3 ] || exit 1; cat",
        log.display()
    );
    let _w = b.worker("q", &["--concurrency", "2"], &["sh", "-c", &script]);
    b.ok(&["enqueue", "q", "flaky"]);
    b.wait_stat("q", "acked_total", 1);
    assert_eq!(num(&b.stats("q"), &["stats", "delivered_total"]), 3);
    let t = times(&log);
    assert_eq!(t.len(), 3, "{t:?}");
    let gap = |i: usize| Duration::from_nanos((t[i + 1] - t[i]) as u64);
    // Backoff with equal jitter: 300ms -> [150, 300] ms, then 900ms ->
    // [450, 900] ms; generous room above for a slow machine.
    assert!(
        gap(0) >= Duration::from_millis(140),
        "first gap {:?}",
        gap(0)
    );
    assert!(
        gap(1) >= Duration::from_millis(440),
        "second gap {:?}",
        gap(1)
    );
    assert!(gap(1) > gap(0), "gaps grow: {:?} then {:?}", gap(0), gap(1));
    assert!(gap(1) < Duration::from_secs(5), "{:?}", gap(1));
}

#[test]
fn a_poison_task_is_dead_lettered_after_max_attempts_and_redriven() {
    let b = Broker::start();
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&[
        "queue",
        "create",
        "q",
        "--max-attempts",
        "3",
        "--dead-letter",
        "dlq",
        "--retry-initial",
        "20ms",
    ]);
    let mut w = b.worker(
        "q",
        &["--name", "w"],
        &["sh", "-c", "echo 'bad input' >&2; exit 2"],
    );
    b.ok(&["enqueue", "q", "poison"]);
    b.wait_stat("dlq", "ready", 1);
    let s = b.stats("q");
    assert_eq!(
        num(&s, &["stats", "delivered_total"]),
        3,
        "exactly max_attempts"
    );
    assert_eq!(num(&s, &["stats", "dead_total"]), 1);
    w.signal("KILL");
    w.wait_exit(DEADLINE);

    // Redrive moves it back, attempts reset; the dead letter queue empties.
    let out = b.ok(&["dlq", "redrive", "dlq"]);
    assert!(out.contains('1'), "{out}");
    assert_eq!(num(&b.stats("dlq"), &["stats", "unfinished"]), 0);
    let back: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "q"])).expect("json");
    assert_eq!(back["payload"], "poison");
    assert_eq!(back["attempt"], 1, "attempts start again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_a_higher_priority_comes_back_before_older_work() {
    let b = Broker::start();
    b.ok(&["queue", "create", "p", "--order", "priority"]);
    for t in ["old-1", "old-2", "old-3"] {
        b.ok(&["enqueue", "p", "--priority", "5", t]);
    }
    let mut c = RawConsumer::subscribe(&b.url(), "p", "c", 1).await;
    let first = c.deliveries(1).await.remove(0);
    assert_eq!(
        first.task.as_ref().map(|t| &t.payload[..]),
        Some(&b"old-1"[..])
    );
    // The failed call comes back ahead of new work, at once.
    c.send(ConsumeRequest {
        nacks: vec![NackItem {
            lease: Some(lease_of(&first)),
            action: NackAction::Retry as i32,
            delay_ms: Some(0),
            priority: Some(0),
            error: "upstream 503".into(),
            ..Default::default()
        }],
        credit: 1,
        ..Default::default()
    })
    .await;
    let again = c.deliveries(1).await.remove(0);
    assert_eq!(
        again.task.as_ref().map(|t| &t.payload[..]),
        Some(&b"old-1"[..])
    );
    assert_eq!(again.attempt, 2);
    assert_eq!(again.task.as_ref().map(|t| t.priority), Some(0));
}

#[test]
fn a_delayed_task_waits_for_its_time_and_join_waits_for_it() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let sent = Instant::now();
    b.ok(&["enqueue", "q", "--delay", "1500ms", "later"]);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delayed"]), 1);
    assert_eq!(num(&s, &["stats", "unfinished"]), 1);
    // Not deliverable yet, and join is not done.
    assert_eq!(b.cli(&["get", "q"]).code, 3);
    assert_ne!(b.cli(&["join", "q", "--timeout", "200ms"]).code, 0);

    let got = b.ok(&["get", "q", "--wait", "20s"]);
    assert_eq!(got, "later\n");
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );
    b.ok(&["join", "q", "--timeout", "5s"]);

    // --at: an absolute time.
    let at =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(60));
    b.ok(&["enqueue", "q", "--at", &at.to_string(), "next-minute"]);
    assert_eq!(num(&b.stats("q"), &["stats", "delayed"]), 1);
}

#[test]
fn the_same_key_twice_makes_one_task() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let a = b.ok(&["enqueue", "q", "--key", "order-42", "charge"]);
    let again = b.ok(&["enqueue", "q", "--key", "order-42", "charge"]);
    assert_eq!(a, again, "the existing id comes back");
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 1);
    b.ok(&["get", "q"]);
    // Done, but still inside the key's window: still one task.
    let third = b.ok(&["enqueue", "q", "--key", "order-42", "charge"]);
    assert_eq!(third, a);
    assert_eq!(num(&b.stats("q"), &["stats", "unfinished"]), 0);
    // Another key is another task.
    b.ok(&["enqueue", "q", "--key", "order-43", "charge"]);
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_by_its_producer_is_stored_once() {
    use sluice_client::proto::{EnqueueRequest, NewTask};
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "2"]);
    let mut raw = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect")
        .raw();
    let batch = |seq: u64, n: usize| EnqueueRequest {
        queue: "q".into(),
        tasks: (0..n)
            .map(|i| NewTask {
                payload: format!("t{i}").into_bytes().into(),
                ..Default::default()
            })
            .collect(),
        mode: sluice_client::proto::EnqueueMode::FailFast as i32,
        producer_id: "producer-a".into(),
        sequence: seq,
    };
    let first = raw.enqueue(batch(1, 2)).await.expect("stored").into_inner();
    // The answer was "lost": the producer sends the batch again, to a full
    // queue, and is told the same ids.
    let again = raw
        .enqueue(batch(1, 2))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(again.ids, first.ids);
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2, "stored once");

    let reused = raw.enqueue(batch(1, 1)).await.expect_err("not that batch");
    assert_eq!(reused.code(), tonic::Code::InvalidArgument, "{reused:?}");
    // A new number is a new batch (here, to a full queue).
    let full = raw.enqueue(batch(2, 1)).await.expect_err("full");
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
    // Another producer's batch 1 is its own.
    b.ok(&["queue", "purge", "q"]);
    let other = EnqueueRequest {
        producer_id: "producer-b".into(),
        ..batch(1, 2)
    };
    let theirs = raw.enqueue(other).await.expect("stored").into_inner();
    assert_ne!(theirs.ids, first.ids);
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2);
}

#[test]
fn a_durable_queue_keeps_delayed_and_retrying_tasks_with_their_due_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir.path());
    b.ok(&[
        "queue",
        "create",
        "q",
        "--durable",
        "--retry-initial",
        "3s",
        "--retry-max",
        "3s",
    ]);
    b.ok(&["enqueue", "q", "--delay", "3s", "delayed"]);
    b.ok(&["enqueue", "q", "retried"]);
    let started = Instant::now();
    // Fail "retried" once through a worker that exits non-zero.
    let mut w = b.worker("q", &[], &["sh", "-c", "exit 1"]);
    b.wait_stat("q", "retrying", 1);
    w.signal("KILL");
    w.wait_exit(DEADLINE);
    drop(b); // SIGKILL the broker
    let b = Broker::start_durable(dir.path());
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delayed"]), 2, "{s}");
    assert_eq!(num(&s, &["stats", "ready"]), 0, "{s}");
    // Both come due in their time (about 3 s after they were set), not at
    // once and not never.
    let first = b.ok(&["get", "q", "--raw", "--wait", "20s"]);
    let second = b.ok(&["get", "q", "--raw", "--wait", "20s"]);
    let mut got = [first, second];
    got.sort();
    assert_eq!(got, ["delayed", "retried"]);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
}
