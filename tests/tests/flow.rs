//! Flow control a queue owns, end to end with the real binaries: an
//! in-flight cap over several workers, a rate limit, fair groups, and all
//! of it after a restart of a durable queue.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sluice_tests::{Broker, DEADLINE, RawConsumer, eventually, num, numbers_in};

/// A command for `sluice-worker` that notes how many commands run at
/// once in `dir` when it starts (one file per running task), and when it
/// started, then works for `secs`.
fn counting_script(dir: &Path, secs: &str) -> String {
    let d = dir.display();
    format!(
        "touch {d}/run.$SLUICE_TASK_ID; ls {d} | grep -c '^run\\.' >> {d}/../counts; \
         date +%s%N >> {d}/../starts; sleep {secs}; rm {d}/run.$SLUICE_TASK_ID"
    )
}

#[test]
fn three_workers_with_room_for_24_run_no_more_than_max_in_flight() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = tmp.path().join("running");
    std::fs::create_dir(&running).expect("dir");
    let b = Broker::start();
    b.ok(&["queue", "create", "api", "--max-in-flight", "2"]);
    let script = counting_script(&running, "0.3");
    let _workers: Vec<_> = (0..3)
        .map(|i| {
            b.worker(
                "api",
                &["--concurrency", "8", "--name", &format!("w{i}")],
                &["sh", "-c", &script],
            )
        })
        .collect();
    b.wait_stat("api", "consumers", 3);
    let tasks: String = (0..12).map(|i| format!("t{i}\n")).collect();
    assert_eq!(b.cli_stdin(&["enqueue", "api"], &tasks).code, 0);
    // The cap is what holds them back: two leased, the rest ready while
    // the workers have credit for 22 more.
    eventually(DEADLINE, "two leased and the cap named as the hold", || {
        let s = b.stats("api");
        num(&s, &["stats", "leased"]) == 2 && s.to_string().contains("\"in_flight_cap\"")
    });
    b.wait_stat("api", "acked_total", 12);
    let counts = numbers_in(&tmp.path().join("counts"));
    assert_eq!(counts.len(), 12, "every task ran once");
    let most = counts.iter().max().copied().unwrap_or(0);
    assert!(
        most <= 2,
        "{most} commands ran at once under max_in_flight 2"
    );
}

#[test]
fn a_queue_limited_to_10_a_second_delivers_50_tasks_in_about_5_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = tmp.path().join("running");
    std::fs::create_dir(&running).expect("dir");
    let b = Broker::start();
    b.ok(&["queue", "create", "provider", "--rate", "10/s"]);
    let tasks: String = (0..50).map(|i| format!("t{i}\n")).collect();
    assert_eq!(b.cli_stdin(&["enqueue", "provider"], &tasks).code, 0);
    let _w = b.worker(
        "provider",
        &["--concurrency", "16"],
        &["sh", "-c", &counting_script(&running, "0")],
    );
    b.wait_stat("provider", "acked_total", 50);
    let starts = numbers_in(&tmp.path().join("starts"));
    assert_eq!(starts.len(), 50);
    let first = starts.iter().min().copied().unwrap_or(0);
    let last = starts.iter().max().copied().unwrap_or(0);
    let span = Duration::from_nanos((last - first) as u64);
    // 50 deliveries 100 ms apart (burst 1) span 4.9 s; commands start a
    // little after their delivery, so allow some spread, but never less
    // than the limit allows.
    assert!(
        span >= Duration::from_millis(4_500) && span <= Duration::from_secs(9),
        "50 tasks at 10/s took {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_one_task_is_served_among_the_first_deliveries_after_10000_of_another() {
    let b = Broker::start();
    b.ok(&["queue", "create", "mail", "--capacity", "20000"]);
    let big: String = (0..10_000).map(|i| format!("bulk-{i}\n")).collect();
    let out = b.cli_stdin(&["enqueue", "mail", "--group", "newsletter"], &big);
    assert_eq!(out.code, 0, "{}", out.stderr);
    b.ok(&["enqueue", "mail", "--group", "password-reset", "reset-link"]);
    let mut c = RawConsumer::subscribe(&b.url(), "mail", "w", 3).await;
    let first = c.deliveries(3).await;
    let groups: Vec<&str> = first
        .iter()
        .filter_map(|d| d.task.as_ref().map(|t| t.group.as_str()))
        .collect();
    assert!(
        groups.contains(&"password-reset"),
        "the single task waits behind the bulk: {groups:?}"
    );
    let s = b.stats("mail");
    assert_eq!(num(&s, &["stats", "groups"]), 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cap_and_groups_survive_a_restart_of_a_durable_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir.path());
    b.ok(&[
        "queue",
        "create",
        "jobs",
        "--durable",
        "--max-in-flight-per-group",
        "1",
        "--max-in-flight",
        "5",
        "--rate",
        "100/s",
        "--burst",
        "10",
    ]);
    for (group, n) in [("acme", 3), ("globex", 2)] {
        let lines: String = (0..n).map(|i| format!("{group}-{i}\n")).collect();
        let out = b.cli_stdin(&["enqueue", "jobs", "--group", group], &lines);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    b.ok(&["queue", "pause", "jobs"]);
    drop(b); // SIGKILL
    let b = Broker::start_durable(dir.path());
    let s = b.stats("jobs");
    let text = s.to_string();
    for want in [
        "\"max_in_flight\":5",
        "\"max_in_flight_per_group\":1",
        "\"paused\":true",
    ] {
        assert!(text.contains(want), "{want} lost in the restart: {s}");
    }
    assert_eq!(num(&s, &["stats", "ready"]), 5);
    // Paused across the restart: a consumer with credit gets nothing
    // until the queue is resumed, then one task per group (the cap).
    let mut c = RawConsumer::subscribe(&b.url(), "jobs", "w", 10).await;
    b.wait_stat("jobs", "consumers", 1);
    assert_eq!(num(&b.stats("jobs"), &["stats", "leased"]), 0);
    b.ok(&["queue", "resume", "jobs"]);
    let got = c.deliveries(2).await;
    let groups: HashSet<String> = got
        .iter()
        .filter_map(|d| d.task.as_ref().map(|t| t.group.clone()))
        .collect();
    assert_eq!(
        groups,
        HashSet::from(["acme".to_owned(), "globex".to_owned()]),
        "one task of each group, groups kept across the restart"
    );
    eventually(DEADLINE, "both groups held at their cap", || {
        let s = b.stats("jobs");
        num(&s, &["stats", "leased"]) == 2 && num(&s, &["stats", "groups_held"]) == 2
    });
}

#[test]
fn a_dead_letter_stays_in_its_group() {
    let b = Broker::start();
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&[
        "queue",
        "create",
        "calls",
        "--dead-letter",
        "dlq",
        "--max-attempts",
        "1",
        "--ack-deadline",
        "100ms",
    ]);
    b.ok(&["enqueue", "calls", "--group", "acme", "x"]);
    // Taken and never acked: its one attempt runs out and it dies.
    b.ok(&["get", "calls", "--no-ack"]);
    b.wait_stat("dlq", "ready", 1);
    let got: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "dlq"])).expect("json");
    assert_eq!(got["group"], "acme", "{got}");
}
