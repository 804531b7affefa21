//! Clients in other languages, generated from proto/ (Python) or loading
//! it at run time (Node), against the real broker and beside the Rust
//! worker, and against a cluster, whose leader they find.

use std::collections::HashSet;
use std::time::Duration;

use sluice_tests::cluster::Cluster;
use sluice_tests::{
    Broker, DEADLINE, Proc, cli, consumer_num, eventually, node, num, python, root,
};

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

/// The leader member `addr` names when asked itself (GetBrokerInfo, which
/// every member answers); empty while it knows of none.
fn leader_named_by(rt: &tokio::runtime::Runtime, addr: &str) -> String {
    use sluice_client::proto::{GetBrokerInfoRequest, sluice_service_client::SluiceServiceClient};
    rt.block_on(async {
        let Ok(mut raw) = SluiceServiceClient::connect(format!("http://{addr}")).await else {
            return String::new();
        };
        raw.get_broker_info(GetBrokerInfoRequest {})
            .await
            .ok()
            .and_then(|r| r.into_inner().cluster)
            .map(|c| c.leader_url)
            .unwrap_or_default()
    })
}

#[test]
fn python_and_node_examples_given_a_follower_first_follow_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("done.log");
    let c = Cluster::start(3);
    let url = |i: usize| format!("http://{}", c.addrs[i]);
    // A follower learns who leads from the leader's heartbeats; from then
    // on it names the leader in `sluice-leader`. Each member is asked
    // itself: who leads may change while a new cluster settles.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut found = None;
    eventually(DEADLINE, "a follower names the leader", || {
        found = (0..3).find_map(|f| {
            let named = leader_named_by(&rt, &c.addrs[f]);
            (0..3).find(|&l| l != f && named == url(l)).map(|l| (f, l))
        });
        found.is_some()
    });
    let (follower, leader) = found.expect("found");
    // Each language gets a client given every member, a follower first
    // and the leader last, and one given the follower alone: the hint is
    // its only way to the leader.
    let other = 3 - follower - leader;
    let members = [follower, other, leader].map(url).join(",");
    let only_follower = url(follower);
    let out = cli(&members, &["queue", "create", "jobs", "--durable"], None);
    assert_eq!(out.code, 0, "{out:?}");

    let stats = || {
        let out = cli(&members, &["--json", "stats", "jobs"], None);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str::<sluice_tests::Value>(&out.stdout).expect("stats --json")
    };
    let mut workers = [
        Proc::start(
            "python worker",
            python()
                .arg(root().join("examples/python/worker.py"))
                .args(["--broker", &only_follower, "--queue", "jobs"])
                .args(["--name", "py", "--concurrency", "3", "--log"])
                .arg(&log),
        ),
        Proc::start(
            "node worker",
            node()
                .arg(root().join("examples/node/worker.js"))
                .args(["--broker", &members, "--queue", "jobs"])
                .args(["--name", "node", "--concurrency", "3", "--log"])
                .arg(&log),
        ),
    ];
    // Both subscribed on the leader, the Python one through the hint.
    eventually(DEADLINE, "both workers subscribed", || {
        let s = stats();
        ["py", "node"]
            .iter()
            .all(|name| consumer_num(&s, name, "in_flight").is_some())
    });

    let producers = [
        (
            "python producer",
            python()
                .arg(root().join("examples/python/producer.py"))
                .args(["--broker", &members, "--queue", "jobs"])
                .args(["--count", "200", "--prefix", "py"])
                .output(),
        ),
        (
            "node producer",
            node()
                .arg(root().join("examples/node/producer.js"))
                .args(["--broker", &only_follower, "--queue", "jobs"])
                .args(["--count", "100", "--prefix", "node"])
                .output(),
        ),
    ];
    for ((name, out), count) in producers.into_iter().zip([200, 100]) {
        let out = out.expect(name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("stored {count} tasks"),
            "{name}: {stderr}"
        );
    }
    // Every task sent is done (at least once: a change of leader hands
    // out again what the old one had leased).
    let sent: HashSet<String> = (0..200)
        .map(|i| format!("py-{i}"))
        .chain((0..100).map(|i| format!("node-{i}")))
        .collect();
    eventually(Duration::from_secs(90), "every task done", || {
        lines(&log).into_iter().collect::<HashSet<_>>() == sent
            && num(&stats(), &["stats", "unfinished"]) == 0
    });
    for w in &mut workers {
        w.signal("TERM");
        assert_eq!(w.wait_exit(DEADLINE), Some(0), "{}", w.stderr_log());
    }
}
