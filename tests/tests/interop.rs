//! Clients in other languages, generated from proto/ (Python) or loading
//! it at run time (Node), against the real broker and beside the Rust
//! worker.

use std::collections::HashSet;

use sluice_tests::{Broker, DEADLINE, Proc, consumer_num, eventually, node, num, python, root};

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn python_workers_and_a_rust_worker_share_a_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("done.log");
    let b = Broker::start();
    b.ok(&["queue", "create", "jobs", "--capacity", "1000"]);
    let worker_py = root().join("examples/python/worker.py");
    let mut py_workers: Vec<Proc> = ["py1", "py2"]
        .iter()
        .map(|name| {
            Proc::start(
                name,
                python()
                    .arg(&worker_py)
                    .args(["--broker", &b.addr, "--queue", "jobs", "--concurrency", "3"])
                    .args(["--name", name, "--sleep", "0.01", "--log"])
                    .arg(&log),
            )
        })
        .collect();
    let script = format!("p=$(cat); echo \"$p\" >> {}", log.display());
    let _rust = b.worker(
        "jobs",
        &["--concurrency", "3", "--name", "rust"],
        &["sh", "-c", &script],
    );
    b.wait_stat("jobs", "consumers", 3);

    let out = python()
        .arg(root().join("examples/python/producer.py"))
        .args(["--broker", &b.addr, "--queue", "jobs", "--count", "300"])
        .output()
        .expect("python producer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stored 300 tasks"
    );

    // While they work, a Python worker never holds more than its credit.
    eventually(DEADLINE, "all 300 acked", || {
        let s = b.stats("jobs");
        for name in ["py1", "py2"] {
            let held = consumer_num(&s, name, "in_flight").unwrap_or(0);
            assert!(held <= 3, "{name} holds {held} tasks with 3 credits");
        }
        num(&s, &["stats", "acked_total"]) == 300
    });
    let s = b.stats("jobs");
    assert_eq!(
        num(&s, &["stats", "delivered_total"]),
        300,
        "each task once"
    );
    for name in ["py1", "py2", "rust"] {
        assert!(
            consumer_num(&s, name, "acked").unwrap_or(0) > 0,
            "{name} did nothing: {s}"
        );
    }
    let done = lines(&log);
    let unique: HashSet<&String> = done.iter().collect();
    assert_eq!(done.len(), 300);
    assert_eq!(unique.len(), 300);

    // SIGTERM: they stop cleanly (and checked their own credit all along).
    for w in &mut py_workers {
        w.signal("TERM");
        assert_eq!(w.wait_exit(DEADLINE), Some(0), "{}", w.stderr_log());
        assert!(
            w.stderr_log().contains("stopped; max held"),
            "{}",
            w.stderr_log()
        );
    }
}

#[test]
fn a_node_producer_and_worker_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("done.log");
    let b = Broker::start();
    b.ok(&["queue", "create", "jobs"]);
    let mut w = Proc::start(
        "node worker",
        node()
            .arg(root().join("examples/node/worker.js"))
            .args([
                "--broker",
                &b.addr,
                "--queue",
                "jobs",
                "--concurrency",
                "2",
                "--name",
                "node",
            ])
            .arg("--log")
            .arg(&log),
    );
    b.wait_stat("jobs", "consumers", 1);
    let out = node()
        .arg(root().join("examples/node/producer.js"))
        .args(["--broker", &b.addr, "--queue", "jobs", "--count", "100"])
        .output()
        .expect("node producer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stored 100 tasks"
    );
    b.wait_stat("jobs", "acked_total", 100);
    assert_eq!(num(&b.stats("jobs"), &["stats", "delivered_total"]), 100);
    let done: HashSet<String> = lines(&log).into_iter().collect();
    assert_eq!(done.len(), 100);
    w.signal("TERM");
    assert_eq!(w.wait_exit(DEADLINE), Some(0), "{}", w.stderr_log());
}

#[test]
fn a_killed_python_workers_task_is_redelivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let attempts = dir.path().join("attempts.log");
    let b = Broker::start();
    b.ok(&["queue", "create", "jobs", "--ack-deadline", "10m"]);
    let mut py = Proc::start(
        "python worker",
        python()
            .arg(root().join("examples/python/worker.py"))
            .args([
                "--broker", &b.addr, "--queue", "jobs", "--name", "py", "--sleep", "120",
            ]),
    );
    b.ok(&["enqueue", "jobs", "slow"]);
    eventually(DEADLINE, "python worker holds the task", || {
        consumer_num(&b.stats("jobs"), "py", "in_flight") == Some(1)
    });
    py.signal("KILL");
    py.wait_exit(DEADLINE);
    let script = format!("echo \"$SLUICE_ATTEMPT\" >> {}", attempts.display());
    let _rust = b.worker("jobs", &["--name", "rust"], &["sh", "-c", &script]);
    b.wait_stat("jobs", "acked_total", 1);
    assert_eq!(
        lines(&attempts),
        ["2"],
        "the second attempt, well before the deadline"
    );
}
