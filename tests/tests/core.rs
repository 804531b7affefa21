//! The broker core as a user drives it with the `sluice` CLI: order,
//! capacity and waiting producers, join, errors, and Get leases.

use std::collections::HashSet;
use std::time::Duration;

use sluice_tests::{Broker, Collected, DEADLINE, eventually, num};

/// Takes one task with `sluice get` and returns its payload.
fn get(b: &Broker, q: &str) -> String {
    b.ok(&["get", "--raw", q])
}

#[test]
fn fifo_lifo_and_priority_order() {
    let b = Broker::start();
    b.ok(&["queue", "create", "f"]);
    b.ok(&["queue", "create", "l", "--order", "lifo"]);
    b.ok(&["queue", "create", "p", "--order", "priority"]);
    for q in ["f", "l"] {
        b.ok(&["enqueue", q, "one", "two", "three"]);
    }
    assert_eq!(
        [get(&b, "f"), get(&b, "f"), get(&b, "f")],
        ["one", "two", "three"]
    );
    assert_eq!(
        [get(&b, "l"), get(&b, "l"), get(&b, "l")],
        ["three", "two", "one"]
    );

    // The seed's example: priorities 3,1,2,1 come out 1,1,2,3, the two 1s
    // in arrival order.
    for (prio, payload) in [
        ("3", "p3"),
        ("1", "p1-first"),
        ("2", "p2"),
        ("1", "p1-second"),
    ] {
        b.ok(&["enqueue", "p", "--priority", prio, payload]);
    }
    let got: Vec<String> = (0..4).map(|_| get(&b, "p")).collect();
    assert_eq!(got, ["p1-first", "p1-second", "p2", "p3"]);
}

#[test]
fn full_queue_pauses_a_waiting_producer_until_get_frees_a_slot() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "2"]);
    let ids = b.ok(&["enqueue", "q", "a", "b"]);
    assert_eq!(ids.lines().count(), 2, "one id per task: {ids}");

    // --no-wait on a full queue: exit 75, "queue full".
    let out = b.cli(&["enqueue", "q", "--no-wait", "c"]);
    assert_eq!(out.code, 75, "{out:?}");
    assert!(out.stderr.starts_with("queue full"), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");

    // The default waits: it is in line at the broker and has not returned.
    let mut waiting = b.cli_spawn(&["enqueue", "q", "c"]);
    b.wait_stat("q", "waiting_producers", 1);
    assert!(
        waiting.running(),
        "enqueue returned while the queue was full"
    );
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2);

    // A get frees a slot: the waiting enqueue completes with its id.
    assert_eq!(get(&b, "q"), "a");
    assert_eq!(waiting.wait_exit(DEADLINE), Some(0));
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "ready"]), 2);
    assert_eq!(num(&s, &["stats", "waiting_producers"]), 0);
    assert_eq!([get(&b, "q"), get(&b, "q")], ["b", "c"]);
}

#[test]
fn a_bulk_enqueue_into_a_full_queue_says_it_waits_for_space() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "5"]);
    let lines: String = (0..20).map(|i| format!("t{i}\n")).collect();
    let mut enqueue = b.cli_spawn_stdin(&["enqueue", "q"], &lines);
    let stdout = Collected::from(enqueue.child.stdout.take().expect("piped"));

    // Blocked after 5: it says so on stderr, with the numbers and a hint...
    eventually(DEADLINE, "enqueue says it waits for space", || {
        enqueue.stderr_log().contains("waiting for space")
    });
    let said = enqueue.stderr_log();
    assert!(said.contains("(5/5 tasks)"), "{said}");
    assert!(said.contains("start a worker"), "{said}");
    assert_eq!(said.lines().count(), 1, "one line, not a stream: {said}");
    assert!(enqueue.running());
    // ...and the ids of what is stored are out already, while it waits.
    eventually(DEADLINE, "the 5 stored ids on stdout", || {
        stdout.text().lines().count() == 5
    });
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 5);

    // A worker makes room: the rest goes in, and stdout holds only ids.
    let _w = b.worker("q", &[], &["cat"]);
    assert_eq!(
        enqueue.wait_exit(DEADLINE),
        Some(0),
        "{}",
        enqueue.stderr_log()
    );
    eventually(DEADLINE, "all 20 ids on stdout", || {
        stdout.text().lines().count() == 20
    });
    let ids = stdout.text();
    let unique: HashSet<&str> = ids.lines().collect();
    assert_eq!(unique.len(), 20, "{ids}");
    assert!(
        ids.lines()
            .all(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())),
        "{ids}"
    );
    b.wait_stat("q", "acked_total", 20);
}

#[test]
fn a_single_enqueue_into_a_full_queue_says_it_waits_for_space() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "1"]);
    b.ok(&["enqueue", "q", "a"]);
    let mut waiting = b.cli_spawn(&["enqueue", "q", "b"]);
    eventually(DEADLINE, "enqueue says it waits for space", || {
        waiting.stderr_log().contains("waiting for space")
    });
    assert!(
        waiting.stderr_log().contains("(1/1 tasks)"),
        "{}",
        waiting.stderr_log()
    );
    assert_eq!(get(&b, "q"), "a");
    assert_eq!(waiting.wait_exit(DEADLINE), Some(0));
}

#[test]
fn waiting_enqueue_gives_up_at_its_timeout_without_storing() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "1"]);
    b.ok(&["enqueue", "q", "a"]);
    let out = b.cli(&["enqueue", "q", "--timeout", "300ms", "late"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "waiting_producers"]), 0, "left the line");
    assert_eq!(num(&s, &["stats", "enqueued_total"]), 1, "nothing stored");
}

#[test]
fn join_returns_only_after_the_last_task_is_acked() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--ack-deadline", "1s"]);
    b.ok(&["enqueue", "q", "a", "b"]);
    let mut join = b.cli_spawn(&["join", "q"]);

    assert_eq!(get(&b, "q"), "a");
    // Taken but not acked: still unfinished, join keeps waiting.
    b.ok(&["get", "q", "--no-ack"]);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "leased"]), 1);
    assert!(join.running(), "join returned with a task leased");

    // The lease expires, the task is back; acking it drains the queue.
    let again = b.ok(&["get", "q", "--wait", "10s"]);
    assert_eq!(again, "b\n");
    assert_eq!(join.wait_exit(DEADLINE), Some(0));
    assert_eq!(num(&b.stats("q"), &["stats", "unfinished"]), 0);
    // Join on a drained queue returns at once.
    b.ok(&["join", "q", "--timeout", "5s"]);
}

#[test]
fn join_times_out_while_tasks_remain() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "a"]);
    let out = b.cli(&["join", "q", "--timeout", "300ms"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
}

#[test]
fn abandoned_get_lease_is_redelivered_after_its_deadline() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--ack-deadline", "500ms"]);
    b.ok(&["enqueue", "q", "job"]);
    let first: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "q", "--no-ack"])).expect("json");
    assert_eq!(first["attempt"], 1);
    // Nothing ready while it is leased.
    let out = b.cli(&["get", "q"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr.trim(), "queue empty");

    let second: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "q", "--wait", "20s"])).expect("json");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["attempt"], 2);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "expired_total"]), 1);
    assert_eq!(num(&s, &["stats", "acked_total"]), 1);
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);
}

#[test]
fn get_waits_for_a_task_enqueued_later() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let mut getter = b.cli_spawn(&["get", "q", "--wait", "30s"]);
    b.wait_stat("q", "consumers", 1);
    b.ok(&["enqueue", "q", "hello"]);
    assert_eq!(getter.wait_exit(DEADLINE), Some(0));
    let mut out = String::new();
    use std::io::Read;
    getter
        .child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("read");
    assert_eq!(out, "hello\n");
    assert_eq!(num(&b.stats("q"), &["stats", "consumers"]), 0);
}

#[test]
fn get_ends_the_payload_with_a_line_break_unless_raw() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "one", "two", "three\n", "", "raw"]);
    // A shell loop of gets prints one line per task, not one glued line.
    assert_eq!(b.ok(&["get", "q"]), "one\n");
    assert_eq!(b.ok(&["get", "q"]), "two\n");
    // Always one added, so stripping one gives the payload back.
    assert_eq!(b.ok(&["get", "q"]), "three\n\n");
    assert_eq!(b.ok(&["get", "q"]), "\n");
    assert_eq!(b.ok(&["get", "q", "--raw"]), "raw");

    // --raw is about the payload's bytes; JSON has its own framing.
    b.ok(&["enqueue", "q", "x"]);
    let out = b.cli(&["--json", "get", "q", "--raw"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 1, "nothing taken");
}

#[test]
fn stdin_enqueue_sends_one_task_per_line() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "50"]);
    let lines: String = (0..120).map(|i| format!("line-{i}\n")).collect();
    let mut consumer = b.cli_spawn(&["join", "q"]);
    // 120 lines into a queue of 50: the CLI batches within capacity and
    // waits; a parallel drain lets it finish.
    let url = b.url();
    let drain = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 120 {
            let out = sluice_tests::cli(&url, &["get", "q", "--wait", "10s"], None);
            assert_eq!(out.code, 0, "{out:?}");
            got.push(out.stdout);
        }
        got
    });
    let out = b.cli_stdin(&["enqueue", "q"], &lines);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 120);
    let got = drain.join().expect("drain thread");
    let want: Vec<String> = (0..120).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(got, want, "FIFO across batches");
    assert_eq!(consumer.wait_exit(DEADLINE), Some(0));
}

#[test]
fn bad_input_gets_a_clear_error_and_the_broker_stays_up() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-payload-bytes", "1000"]);
    b.ok(&["queue", "create", "q", "--capacity", "5"]);
    b.ok(&["enqueue", "q", "kept"]);

    let cases: &[(&[&str], &str)] = &[
        (&["enqueue", "nope", "x"], "NOT_FOUND"),
        (&["get", "nope"], "NOT_FOUND"),
        (&["stats", "nope"], "NOT_FOUND"),
        (&["queue", "delete", "nope"], "NOT_FOUND"),
        (&["queue", "create", "bad name"], "INVALID_ARGUMENT"),
        (
            &["queue", "create", "x", "--capacity", "1000000000"],
            "INVALID_ARGUMENT",
        ),
        (
            &["queue", "create", "x", "--ack-deadline", "5ms"],
            "INVALID_ARGUMENT",
        ),
        (
            &["queue", "create", "q", "--capacity", "6"],
            "ALREADY_EXISTS",
        ),
        (
            &["queue", "create", "x", "--dead-letter", "x"],
            "INVALID_ARGUMENT",
        ),
        (&["enqueue", "q", &"x".repeat(1001)], "INVALID_ARGUMENT"),
    ];
    for (args, code) in cases {
        let out = b.cli(args);
        assert_eq!(out.code, 1, "sluice {args:?}: {out:?}");
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one-line error for {args:?}: {out:?}"
        );
        assert!(
            out.stderr.contains(code),
            "sluice {args:?} should fail with {code}: {out:?}"
        );
    }
    // A bad header is caught by the CLI before it reaches the broker.
    let out = b.cli(&["enqueue", "q", "--header", "novalue", "x"]);
    assert_ne!(out.code, 0);

    // Nothing was lost or added by the failures, and the broker still serves.
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "ready"]), 1);
    assert_eq!(get(&b, "q"), "kept");
    let list = b.ok(&["queue", "list"]);
    assert!(list.contains('q'), "{list}");
}

#[test]
fn create_is_idempotent_and_purge_and_delete_work() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "10"]);
    b.ok(&["queue", "create", "q", "--capacity", "10"]);
    b.ok(&["enqueue", "q", "a", "b", "c"]);
    let out = b.cli(&["queue", "delete", "q", "--if-empty"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("FAILED_PRECONDITION"), "{out:?}");
    let purged = b.ok(&["queue", "purge", "q"]);
    assert!(purged.contains('3'), "{purged}");
    assert_eq!(num(&b.stats("q"), &["stats", "purged_total"]), 3);
    b.ok(&["queue", "delete", "q", "--if-empty"]);
    assert_eq!(b.cli(&["stats", "q"]).code, 1);
}

#[test]
fn deleting_a_queue_releases_a_waiting_producer() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "1"]);
    b.ok(&["enqueue", "q", "a"]);
    let mut waiting = b.cli_spawn(&["enqueue", "q", "b"]);
    b.wait_stat("q", "waiting_producers", 1);
    b.ok(&["queue", "delete", "q"]);
    assert_eq!(waiting.wait_exit(DEADLINE), Some(1));
}

#[test]
fn sigterm_stops_the_broker_cleanly() {
    let mut b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn unreachable_broker_is_a_one_line_error() {
    let b = Broker::start();
    let url = b.url();
    drop(b);
    let out = sluice_tests::cli(&url, &["queue", "list"], None);
    assert_eq!(out.code, 69, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
}

#[test]
fn a_full_queue_says_when_to_retry_from_its_drain_rate() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "5"]);
    // About 10 tasks a second drain from the queue...
    let _w = b.worker(
        "q",
        &["--concurrency", "1"],
        &["sh", "-c", "sleep 0.1; cat"],
    );
    // ...while a producer keeps it full.
    let lines: String = (0..200).map(|i| format!("t{i}\n")).collect();
    let url = b.url();
    let _producer =
        std::thread::spawn(move || sluice_tests::cli(&url, &["enqueue", "q"], Some(&lines)));
    eventually(DEADLINE, "a drain to measure", || {
        num(&b.stats("q"), &["stats", "delivered_total"]) >= 10
    });
    let out = b.cli(&["enqueue", "q", "--no-wait", "x"]);
    assert_eq!(out.code, 75, "{out:?}");
    let secs: f64 = out
        .stderr
        .strip_prefix("queue full, retry in ~")
        .and_then(|r| r.trim().strip_suffix('s'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint in {out:?}"));
    // A few tasks ahead at ~10/s: well under a few seconds, above zero.
    assert!(secs > 0.0 && secs <= 3.0, "retry in {secs}s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_slows_a_producer_above_the_high_water_mark() {
    use sluice_client::proto::{EnqueueMode, NewTask};
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "20"]);
    let client = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect");
    let mut pacer = sluice_client::Pacer::new(
        0.5,
        0.2,
        Duration::from_millis(5),
        Duration::from_millis(50),
    );
    let mut pauses = Vec::new();
    for i in 0..15 {
        let task = NewTask {
            payload: format!("t{i}").into(),
            ..Default::default()
        };
        let answer = client
            .enqueue("q", vec![task], EnqueueMode::Wait, None)
            .await
            .expect("enqueue");
        pacer.pace(&answer).await;
        pauses.push((answer.depth, pacer.delay()));
    }
    // Below half full: full speed. Above: pauses that grow.
    assert!(
        pauses
            .iter()
            .filter(|(d, _)| *d < 10)
            .all(|(_, p)| p.is_zero()),
        "{pauses:?}"
    );
    let slowed: Vec<Duration> = pauses
        .iter()
        .filter(|(d, _)| *d >= 10)
        .map(|(_, p)| *p)
        .collect();
    assert!(slowed.first().is_some_and(|p| !p.is_zero()), "{pauses:?}");
    assert!(slowed.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
    assert_eq!(
        slowed.last().copied(),
        Some(Duration::from_millis(50)),
        "{pauses:?}"
    );
}
