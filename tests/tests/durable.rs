//! Durable queues: what a restart (clean or SIGKILL) keeps, the data
//! directory's lock, and a full disk.

use sluice_tests::{Broker, DEADLINE, num};

fn get_all(b: &Broker, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let r = b.cli(&["get", "--raw", q]);
        if r.code == 3 {
            return out;
        }
        assert_eq!(r.code, 0, "{r:?}");
        out.push(r.stdout);
    }
}

fn fill(b: &Broker) {
    b.ok(&["queue", "create", "f", "--durable"]);
    b.ok(&["queue", "create", "l", "--durable", "--order", "lifo"]);
    b.ok(&["queue", "create", "p", "--durable", "--order", "priority"]);
    b.ok(&["queue", "create", "mem"]);
    for q in ["f", "l"] {
        b.ok(&["enqueue", q, "one", "two", "three", "four"]);
    }
    for (prio, payload) in [
        ("3", "p3"),
        ("1", "p1-first"),
        ("2", "p2"),
        ("1", "p1-second"),
    ] {
        b.ok(&["enqueue", "p", "--priority", prio, payload]);
    }
    b.ok(&["enqueue", "mem", "volatile"]);
    // One task of each queue acked, one taken and left leased.
    for q in ["f", "l", "p"] {
        b.ok(&["get", q]);
        b.ok(&["get", q, "--no-ack"]);
    }
}

fn check_after_restart(b: &Broker) {
    for q in ["f", "l", "p"] {
        let s = b.stats(q);
        assert_eq!(num(&s, &["stats", "ready"]), 3, "{q}: {s}");
        assert_eq!(num(&s, &["stats", "leased"]), 0, "{q}: {s}");
        assert_eq!(s["options"]["durable"], true);
    }
    assert_eq!(b.stats("p")["options"]["order"], "priority");
    // The leased task is back, in its place, its attempt counted.
    assert_eq!(get_all(b, "f"), ["two", "three", "four"]);
    assert_eq!(get_all(b, "l"), ["three", "two", "one"]);
    assert_eq!(get_all(b, "p"), ["p1-second", "p2", "p3"]);
    // In-memory queues do not survive.
    assert_eq!(b.cli(&["stats", "mem"]).code, 1);
}

#[test]
fn a_clean_stop_keeps_queues_tasks_and_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start_durable(dir.path());
    fill(&b);
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit(DEADLINE), Some(0));
    drop(b);
    let b = Broker::start_durable(dir.path());
    check_after_restart(&b);
}

#[test]
fn sigkill_keeps_every_confirmed_task_and_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir.path());
    fill(&b);
    drop(b); // SIGKILL
    let b = Broker::start_durable(dir.path());
    check_after_restart(&b);

    // The task that was leased at the crash comes back as attempt 2.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir2.path());
    b.ok(&["queue", "create", "q", "--durable"]);
    b.ok(&["enqueue", "q", "x"]);
    let first: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "q", "--no-ack"])).expect("json");
    drop(b);
    let b = Broker::start_durable(dir2.path());
    let again: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "q"])).expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["attempt"], 2);
    // New ids never collide with recovered ones.
    let id = b.ok(&["enqueue", "q", "y"]);
    assert_ne!(id.trim(), first["id"].as_str().expect("id"));
}

#[test]
fn a_second_broker_on_the_same_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _b = Broker::start_durable(dir.path());
    let out = std::process::Command::new(sluice_tests::bin("sluice-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another broker"), "{err}");
    assert!(out.stdout.is_empty(), "it must not say it listens");
}

#[test]
fn durable_queues_are_refused_on_an_in_memory_broker() {
    let b = Broker::start();
    let out = b.cli(&["queue", "create", "d", "--durable"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("in-memory"), "{out:?}");
}

#[test]
fn a_full_disk_refuses_enqueues_but_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_on(
        "127.0.0.1:0",
        &[
            "--data-dir",
            &dir.path().display().to_string(),
            "--max-disk-bytes",
            "20000",
        ],
    );
    b.ok(&["queue", "create", "q", "--durable"]);
    b.ok(&["enqueue", "q", "first"]);
    let big = "x".repeat(30_000);
    let out = b.cli(&["enqueue", "q", &big]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("RESOURCE_EXHAUSTED"), "{out:?}");
    assert!(out.stderr.contains("disk"), "{out:?}");
    // The refused task is not in the queue; consumers are still served.
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "ready"]), 1, "{s}");
    assert_eq!(b.ok(&["get", "q"]), "first\n");
    assert_eq!(b.cli(&["get", "q"]).code, 3);
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn disk_use_follows_live_data_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let b = Broker::start_on(
        "127.0.0.1:0",
        &["--data-dir", &data, "--segment-bytes", "16384"],
    );
    b.ok(&["queue", "create", "q", "--durable", "--capacity", "5000"]);
    let lines: String = (0..3000)
        .map(|i| format!("task-{i}-{}\n", "x".repeat(60)))
        .collect();
    assert_eq!(b.cli_stdin(&["enqueue", "q"], &lines).code, 0);
    let full = dir_bytes(dir.path());
    assert!(full > 200_000, "{full} bytes for 3000 tasks");

    let _w = b.worker("q", &["--concurrency", "8"], &["true"]);
    b.wait_stat("q", "acked_total", 3000);
    // Compaction runs by itself once the log outgrows the live data.
    sluice_tests::eventually(DEADLINE, "old segments deleted", || {
        dir_bytes(dir.path()) < 64 * 1024
    });
    // And what is left still says: queue q, empty.
    drop(_w);
    drop(b);
    let b = Broker::start_durable(dir.path());
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "unfinished"]), 0, "{s}");
}

#[test]
fn sigterm_to_the_broker_lets_workers_finish_what_they_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let go = sluice_tests::Flag(dir.path().join("go"));
    let done = dir.path().join("done.log");
    let data = dir.path().join("data");
    let mut b = Broker::start_durable(&data);
    let addr = b.addr.clone();
    b.ok(&["queue", "create", "q", "--durable"]);
    let script = format!(
        "{}; p=$(cat); echo \"$p\" >> {}",
        go.wait_script(),
        done.display()
    );
    let w = b.worker(
        "q",
        &["--concurrency", "2", "--name", "w"],
        &["sh", "-c", &script],
    );
    b.ok(&["enqueue", "q", "a", "b"]);
    b.wait_stat("q", "leased", 2);

    // The broker drains: new work is refused, held work may finish.
    b.proc.signal("TERM");
    sluice_tests::eventually(DEADLINE, "broker draining", || {
        b.proc.stderr_log().contains("shutting down")
    });
    // Refused: UNAVAILABLE on a connection that was open, or no new
    // connection at all (the listener closes first).
    let out = b.cli(&["enqueue", "q", "late"]);
    assert!(out.code == 1 || out.code == 69, "{out:?}");
    go.raise();
    assert_eq!(
        b.proc.wait_exit(DEADLINE),
        Some(0),
        "{}",
        b.proc.stderr_log()
    );
    drop(b);

    let log = std::fs::read_to_string(&done).expect("done log");
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a", "b"], "both finished once");
    // Their acks reached the log before the broker stopped: nothing comes
    // back after a restart, and the worker finds no work to redo.
    let b = Broker::start_on(&addr, &["--data-dir", &data.display().to_string()]);
    assert_eq!(num(&b.stats("q"), &["stats", "unfinished"]), 0);
    drop(w);
}
