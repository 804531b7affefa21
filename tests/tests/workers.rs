//! Remote workers: the Consume stream's credits, leases and fencing, and
//! the `sluice-worker` binary's pacing, sharing, crash, shutdown and
//! reconnection behaviour.

use std::collections::HashSet;
use std::time::Duration;

use sluice_client::proto::{AckItem, ConsumeRequest, SettleErrorCode};
use sluice_tests::{
    Broker, DEADLINE, Flag, RawConsumer, consumer_num, eventually, lease_of, num, pid_alive,
};

fn consumer<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["consumers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no consumer {name} in {stats}"))
}

#[test]
fn a_slow_worker_paces_a_waiting_producer() {
    // The seed's backpressure example, across processes: capacity 3, one
    // worker doing one task at a time in 0.5 s, a producer putting 10.
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "3"]);
    let _w = b.worker(
        "q",
        &["--concurrency", "1", "--name", "slow"],
        &["sh", "-c", "sleep 0.5; cat"],
    );
    b.wait_stat("q", "consumers", 1);
    for i in 0..10 {
        b.ok(&["enqueue", "q", &format!("task-{i}")]);
    }
    // When the last put returned, the queue held at most 3 waiting and the
    // worker 1: at least 6 were done. The producer was paced by the worker.
    let acked = num(&b.stats("q"), &["stats", "acked_total"]);
    assert!(acked >= 6, "last enqueue returned after only {acked} acks");

    b.wait_stat("q", "acked_total", 10);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 10, "no redelivery");
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);
}

#[test]
fn a_worker_never_holds_more_than_its_concurrency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let go = Flag(dir.path().join("go"));
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let script = format!("{}; cat", go.wait_script());
    let mut w = b.worker(
        "q",
        &["--concurrency", "3", "--name", "w"],
        &["sh", "-c", &script],
    );
    let lines: String = (0..20).map(|i| format!("t{i}\n")).collect();
    assert_eq!(b.cli_stdin(&["enqueue", "q"], &lines).code, 0);

    eventually(DEADLINE, "worker holds its 3", || {
        consumer_num(&b.stats("q"), "w", "in_flight") == Some(3)
    });
    // While the handlers block: exactly 3 leased, no credit left, the rest
    // waits in the broker where other workers could take it.
    let s = b.stats("q");
    let c = consumer(&s, "w");
    assert_eq!(num(c, &["credit"]), 0);
    assert_eq!(num(c, &["delivered"]), 3);
    assert_eq!(num(&s, &["stats", "leased"]), 3);
    assert_eq!(num(&s, &["stats", "ready"]), 17);

    go.raise();
    b.wait_stat("q", "acked_total", 20);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 20);
    let c = consumer(&s, "w");
    assert_eq!(num(c, &["in_flight"]), 0);
    assert_eq!(num(c, &["credit"]), 3, "one credit back per finished task");
    assert!(w.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_sends_no_more_than_the_credit_granted() {
    let b = Broker::start();
    let url = b.url();
    b.ok(&["queue", "create", "q"]);
    let mut c = RawConsumer::subscribe(&url, "q", "raw", 3).await;
    let lines: String = (0..10).map(|i| format!("t{i}\n")).collect();
    assert_eq!(b.cli_stdin(&["enqueue", "q"], &lines).code, 0);

    let got = c.deliveries(3).await;
    // Acks do not refill credit.
    let acks = got
        .iter()
        .map(|d| AckItem {
            lease: Some(lease_of(d)),
            result: Default::default(),
        })
        .collect();
    c.send(ConsumeRequest {
        acks,
        ..Default::default()
    })
    .await;
    b.wait_stat("q", "acked_total", 3);
    let s = b.stats("q");
    assert_eq!(num(consumer(&s, "raw"), &["delivered"]), 3);
    assert_eq!(num(consumer(&s, "raw"), &["credit"]), 0);
    assert_eq!(num(&s, &["stats", "ready"]), 7);

    // Two more credits: exactly two more tasks.
    c.send(ConsumeRequest {
        credit: 2,
        ..Default::default()
    })
    .await;
    let more = c.deliveries(2).await;
    assert!(more.iter().all(|d| d.attempt == 1));
    let s = b.stats("q");
    assert_eq!(num(consumer(&s, "raw"), &["delivered"]), 5);
    assert_eq!(num(&s, &["stats", "ready"]), 5);
}

#[test]
fn three_workers_share_the_work_and_each_task_is_acked_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("done.log");
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "1000"]);
    // O_APPEND writes of one short line are atomic: a shared log of ids.
    let script = format!("echo \"$SLUICE_TASK_ID\" >> {}", log.display());
    let _workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| {
            b.worker(
                "q",
                &["--concurrency", "4", "--name", n],
                &["sh", "-c", &script],
            )
        })
        .collect();
    b.wait_stat("q", "consumers", 3);
    let lines: String = (0..300).map(|i| format!("t{i}\n")).collect();
    let ids = b.cli_stdin(&["enqueue", "q"], &lines);
    assert_eq!(ids.code, 0, "{ids:?}");

    eventually(Duration::from_secs(120), "all 300 acked", || {
        num(&b.stats("q"), &["stats", "acked_total"]) == 300
    });
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 300, "no redelivery");
    for n in ["w1", "w2", "w3"] {
        assert!(num(consumer(&s, n), &["acked"]) > 0, "{n} did nothing: {s}");
    }
    let done = std::fs::read_to_string(&log).expect("log");
    let done: Vec<&str> = done.lines().collect();
    let unique: HashSet<&str> = done.iter().copied().collect();
    assert_eq!(done.len(), 300, "every task ran once");
    let enqueued: HashSet<&str> = ids.stdout.lines().collect();
    assert_eq!(unique, enqueued);
}

#[test]
fn a_killed_workers_tasks_go_to_another_worker_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let never = Flag(dir.path().join("never"));
    let attempts = dir.path().join("attempts.log");
    let b = Broker::start();
    // A long deadline: redelivery must come from the lost stream, not expiry.
    b.ok(&["queue", "create", "q", "--ack-deadline", "10m"]);
    let mut a = b.worker(
        "q",
        &["--concurrency", "2", "--name", "a"],
        &["sh", "-c", &never.wait_script()],
    );
    b.ok(&["enqueue", "q", "one", "two"]);
    eventually(DEADLINE, "worker a holds both", || {
        consumer_num(&b.stats("q"), "a", "in_flight") == Some(2)
    });
    let script = format!("echo \"$SLUICE_ATTEMPT\" >> {}", attempts.display());
    let _b2 = b.worker(
        "q",
        &["--concurrency", "2", "--name", "b"],
        &["sh", "-c", &script],
    );
    b.wait_stat("q", "consumers", 2);

    a.signal("KILL");
    a.wait_exit(DEADLINE);
    b.wait_stat("q", "acked_total", 2);
    let s = b.stats("q");
    assert_eq!(
        num(&s, &["stats", "expired_total"]),
        0,
        "no deadline involved"
    );
    assert_eq!(num(consumer(&s, "b"), &["acked"]), 2);
    let log = std::fs::read_to_string(&attempts).expect("attempts");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["2", "2"]);
}

#[test]
fn a_killed_workers_commands_die_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The background child polls this flag, so even a failing run leaves
    // nothing behind once the test ends.
    let never = Flag(dir.path().join("never"));
    let cmd_pid = dir.path().join("cmd.pid");
    let child_pid = dir.path().join("child.pid");
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--ack-deadline", "10m"]);
    // The command starts a child of its own: what a task starts must go too.
    let script = format!(
        "echo $$ > {}; ({}) & echo $! > {}; wait",
        cmd_pid.display(),
        never.wait_script(),
        child_pid.display()
    );
    let mut w = b.worker("q", &["--name", "w"], &["sh", "-c", &script]);
    b.ok(&["enqueue", "q", "x"]);
    let read_pid = |p: &std::path::Path| -> Option<u32> {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    let mut pids = Vec::new();
    eventually(
        DEADLINE,
        "the command and its child wrote their pids",
        || {
            pids = [&cmd_pid, &child_pid]
                .iter()
                .filter_map(|p| read_pid(p))
                .collect();
            pids.len() == 2
        },
    );
    assert!(pids.iter().all(|&p| pid_alive(p)), "{pids:?}");

    w.signal("KILL");
    w.wait_exit(DEADLINE);
    eventually(
        DEADLINE,
        "the command and its child died with the worker",
        || pids.iter().all(|&p| !pid_alive(p)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_after_the_lease_expired_is_refused() {
    let b = Broker::start();
    let url = b.url();
    b.ok(&["queue", "create", "q", "--ack-deadline", "300ms"]);
    let mut slow = RawConsumer::subscribe(&url, "q", "slow", 1).await;
    b.ok(&["enqueue", "q", "x"]);
    let first = slow.deliveries(1).await.remove(0);
    assert_eq!(first.attempt, 1);

    // slow neither acks nor extends; after the deadline the task goes to
    // the next worker with credit.
    let mut fresh = RawConsumer::subscribe(&url, "q", "fresh", 1).await;
    let second = fresh.deliveries(1).await.remove(0);
    assert_eq!(
        second.task.as_ref().map(|t| &t.id),
        first.task.as_ref().map(|t| &t.id)
    );
    assert_eq!(second.attempt, 2);

    // The late ack is refused and changes nothing...
    slow.send(ConsumeRequest {
        acks: vec![AckItem {
            lease: Some(lease_of(&first)),
            result: Default::default(),
        }],
        ..Default::default()
    })
    .await;
    let refused = slow.next().await;
    assert_eq!(refused.errors.len(), 1, "{refused:?}");
    assert_eq!(refused.errors[0].code, SettleErrorCode::StaleLease as i32);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "acked_total"]), 0);
    assert_eq!(num(&s, &["stats", "leased"]), 1);

    // ...while the new holder's ack succeeds.
    fresh
        .send(ConsumeRequest {
            acks: vec![AckItem {
                lease: Some(lease_of(&second)),
                result: Default::default(),
            }],
            ..Default::default()
        })
        .await;
    b.wait_stat("q", "acked_total", 1);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);
    assert_eq!(num(&s, &["stats", "expired_total"]), 1);
}

#[test]
fn a_long_task_keeps_its_lease_by_extending() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--ack-deadline", "300ms"]);
    // Runs for several deadlines; the worker extends automatically.
    let _w = b.worker("q", &["--name", "long"], &["sh", "-c", "sleep 1.5; cat"]);
    b.ok(&["enqueue", "q", "x"]);
    b.wait_stat("q", "acked_total", 1);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "expired_total"]), 0, "{s}");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 1);
}

#[test]
fn sigterm_lets_running_tasks_finish_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let go = Flag(dir.path().join("go"));
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let script = format!("{}; cat", go.wait_script());
    let mut w = b.worker(
        "q",
        &["--concurrency", "2", "--name", "w"],
        &["sh", "-c", &script],
    );
    b.ok(&["enqueue", "q", "a", "b"]);
    eventually(DEADLINE, "both running", || {
        consumer_num(&b.stats("q"), "w", "in_flight") == Some(2)
    });

    w.signal("TERM");
    // It stops taking tasks at once: a new one stays in the queue.
    b.ok(&["enqueue", "q", "c"]);
    go.raise();
    assert_eq!(w.wait_exit(DEADLINE), Some(0), "{}", w.stderr_log());
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "acked_total"]), 2, "{s}");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 2, "no redelivery");
    assert_eq!(num(&s, &["stats", "ready"]), 1);
    assert_eq!(num(&s, &["stats", "consumers"]), 0);
}

#[test]
fn a_failing_command_is_retried_and_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    // Fails on the first attempt, succeeds on the second.
    let script = "[ \"$SLUICE_ATTEMPT\" -ge 2 ] || { echo first try fails >&2; exit 1; }; cat";
    let _w = b.worker("q", &["--name", "w"], &["sh", "-c", script]);
    b.ok(&["enqueue", "q", "x"]);
    b.wait_stat("q", "acked_total", 1);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "nacked_total"]), 1);
    assert_eq!(num(&s, &["stats", "delivered_total"]), 2);
    drop(dir);
}

#[test]
fn a_worker_reconnects_after_the_broker_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("done.log");
    let b = Broker::start();
    let addr = b.addr.clone();
    b.ok(&["queue", "create", "q"]);
    let script = format!("cat >> {}; echo >> {}", log.display(), log.display());
    let mut w = b.worker("q", &["--name", "w"], &["sh", "-c", &script]);
    b.ok(&["enqueue", "q", "before"]);
    b.wait_stat("q", "acked_total", 1);

    // Restart on the same address. In-memory: the queue is gone until a
    // producer creates it again.
    drop(b);
    let b = Broker::start_on(&addr, &[]);
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "after-1", "after-2"]);
    b.wait_stat("q", "acked_total", 2);
    assert!(w.running(), "worker gave up: {}", w.stderr_log());
    let done = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        done.lines().collect::<Vec<_>>(),
        ["before", "after-1", "after-2"]
    );
}

#[test]
fn a_worker_for_an_unknown_queue_exits_with_a_clear_error() {
    let b = Broker::start();
    let mut w = b.worker("nope", &[], &["cat"]);
    assert_eq!(w.wait_exit(DEADLINE), Some(1));
    let log = w.stderr_log();
    assert!(log.contains("not found"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_flushes_what_was_sent_then_confirms() {
    let b = Broker::start();
    let url = b.url();
    b.ok(&["queue", "create", "q"]);
    let mut c = RawConsumer::subscribe(&url, "q", "stopper", 2).await;
    b.ok(&["enqueue", "q", "a", "b", "c"]);
    // Stop without having read anything: the two deliveries paid for must
    // still arrive, before the confirmation.
    c.send(ConsumeRequest {
        stop: true,
        ..Default::default()
    })
    .await;
    let mut got = 0;
    let stopped = loop {
        let f = c.next().await;
        got += f.deliveries.len();
        if let Some(s) = f.stopped {
            break s;
        }
    };
    assert_eq!(got, 2);
    assert_eq!(stopped.in_flight, 2);
    let s = b.stats("q");
    assert_eq!(num(consumer(&s, "stopper"), &["credit"]), 0);
    assert_eq!(num(&s, &["stats", "ready"]), 1, "the third stays queued");
}

#[test]
fn a_task_failing_max_attempts_goes_to_the_dead_letter_queue() {
    let b = Broker::start();
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&[
        "queue",
        "create",
        "q",
        "--max-attempts",
        "2",
        "--dead-letter",
        "dlq",
    ]);
    let _w = b.worker(
        "q",
        &["--name", "w"],
        &["sh", "-c", "echo boom >&2; exit 1"],
    );
    let id = b.ok(&["enqueue", "q", "--header", "trace=t1", "poison"]);
    b.wait_stat("dlq", "ready", 1);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "dead_total"]), 1);
    assert_eq!(num(&s, &["stats", "delivered_total"]), 2);
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);

    let dead: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "dlq"])).expect("json");
    assert_eq!(dead["payload"], "poison");
    assert_eq!(dead["attempt"], 1, "a fresh start in the dead letter queue");
    assert_ne!(
        dead["id"],
        id.trim(),
        "a fresh id, so old lease tokens cannot touch it"
    );
    let h = &dead["headers"];
    assert_eq!(h["trace"], "t1");
    assert_eq!(h["x-sluice-dead-from"], "q");
    assert_eq!(h["x-sluice-dead-id"], id.trim());
    assert_eq!(h["x-sluice-dead-attempts"], "2");
    assert_eq!(h["x-sluice-dead-reason"], "max-attempts");
    assert_eq!(h["x-sluice-dead-error"], "exit status 1: boom");
}
