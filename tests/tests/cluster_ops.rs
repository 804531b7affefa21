//! Running a cluster of three real brokers: a worker's leases outlive the
//! leader that granted them, members are added and removed while it
//! serves, and its metrics say who leads and how far the others are.

use std::time::Duration;

use sluice_tests::cluster::Cluster;
use sluice_tests::{Broker, DEADLINE, Flag, eventually, num, scrape};

#[test]
fn a_worker_settles_its_tasks_on_the_new_leader_without_a_redelivery() {
    let mut c = Cluster::start(3);
    let all = c.urls();
    let cli = |args: &[&str]| sluice_tests::cli(&all, args, None);
    // Leases long enough that a redelivery could only come from their
    // loss, not from their end.
    let out = cli(&[
        "queue",
        "create",
        "work",
        "--durable",
        "--ack-deadline",
        "120s",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = Flag(dir.path().join("go"));
    let done = dir.path().join("done");
    // Each task waits for the flag, then notes its id and attempt.
    let script = format!(
        "{}; echo \"$SLUICE_TASK_ID $SLUICE_ATTEMPT\" >> '{}'",
        go.wait_script(),
        done.display()
    );
    let mut worker = {
        let mut cmd = std::process::Command::new(sluice_tests::bin("sluice-worker"));
        cmd.args(["--broker", &all, "--queue", "work", "--concurrency", "3"])
            .args(["--", "sh", "-c", &script])
            .env("RUST_LOG", "sluice_worker=debug,info");
        sluice_tests::Proc::start("sluice-worker", &mut cmd)
    };
    let out = cli(&["enqueue", "work", "a", "b", "c"]);
    assert_eq!(out.code, 0, "{out:?}");
    let leader = c.leader();
    eventually(DEADLINE, "the worker holds every task", || {
        num(&c.up(leader).stats("work"), &["stats", "leased"]) == 3
    });

    c.kill(leader);
    eventually(
        DEADLINE,
        "the worker carries its leases to the new leader",
        || worker.stderr_log().contains("carrying leases over"),
    );
    go.raise();
    eventually(DEADLINE, "every task settled", || {
        let out = cli(&["--json", "stats", "work"]);
        serde_json::from_str(&out.stdout)
            .is_ok_and(|v: serde_json::Value| num(&v, &["stats", "unfinished"]) == 0)
    });
    let lines = std::fs::read_to_string(&done).expect("done file");
    let mut runs: Vec<&str> = lines.lines().collect();
    runs.sort_unstable();
    assert_eq!(runs.len(), 3, "each task ran once: {lines}");
    assert!(
        runs.iter().all(|r| r.ends_with(" 1")),
        "none came back for a second attempt: {lines}"
    );
    assert!(worker.running(), "the worker carried on");
}

#[test]
fn a_member_joins_and_another_leaves_while_the_cluster_serves() {
    let mut c = Cluster::start(3);
    let all = c.urls();
    let cli = |args: &[&str]| sluice_tests::cli(&all, args, None);
    let out = cli(&["queue", "create", "work", "--durable"]);
    assert_eq!(out.code, 0, "{out:?}");
    let tasks: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let mut args = vec!["enqueue", "work"];
    args.extend(tasks.iter().map(String::as_str));
    let out = cli(&args);
    assert_eq!(out.code, 0, "{out:?}");

    // A fourth broker joins: started with --join, it waits to be added.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let addr = port.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = c
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .chain([format!("4={addr}")])
        .collect::<Vec<_>>()
        .join(",");
    let data = dir.path().display().to_string();
    let joined = Broker::start_on(
        &addr,
        &[
            "--node-id",
            "4",
            "--peers",
            &peers,
            "--data-dir",
            &data,
            "--join",
        ],
    );
    let out = cli(&["cluster", "add-node", "4", &addr]);
    assert_eq!(out.code, 0, "{out:?}");
    let view = |b: &Broker| -> serde_json::Value {
        serde_json::from_str(&b.ok(&["--json", "cluster", "status"])).expect("json")
    };
    let voters = |v: &serde_json::Value| -> Vec<u64> {
        v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["voter"].as_bool() == Some(true))
            .filter_map(|m| m["node_id"].as_u64())
            .collect()
    };
    // The leader answered once 4 votes; 4 learns it when it applies the
    // change, a moment later on a loaded machine.
    eventually(DEADLINE, "the new member sees four voters", || {
        voters(&view(&joined)) == [1, 2, 3, 4]
    });

    // A follower leaves, then the leader dies: the two left of {leader,
    // follower, 4} are a majority of three and elect one of them.
    let leader = c.leader();
    let gone = (0..3).find(|i| *i != leader).unwrap_or_default();
    let out = cli(&["cluster", "remove-node", &(gone + 1).to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!voters(&view(&joined)).contains(&(gone as u64 + 1)));
    c.kill(gone);
    c.kill(leader);
    let urls = format!("{all},http://{addr}");
    eventually(
        Duration::from_secs(60),
        "the joined member's cluster serves",
        || {
            let out = sluice_tests::cli(&urls, &["--json", "stats", "work"], None);
            serde_json::from_str(&out.stdout)
                .is_ok_and(|v: serde_json::Value| num(&v, &["stats", "ready"]) == 20)
        },
    );
    let out = sluice_tests::cli(&urls, &["enqueue", "work", "after"], None);
    assert_eq!(out.code, 0, "{out:?}");
}

/// A sample's value in a scrape: `name` is the whole series, labels
/// included.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_members_metrics_say_who_leads_and_how_far_the_others_are() {
    let c = Cluster::start_with_args(3, &["--metrics-listen", "127.0.0.1:0"]);
    let all = c.urls();
    let out = sluice_tests::cli(&all, &["queue", "create", "work", "--durable"], None);
    assert_eq!(out.code, 0, "{out:?}");
    let out = sluice_tests::cli(&all, &["enqueue", "work", "a", "b"], None);
    assert_eq!(out.code, 0, "{out:?}");
    let leader = c.leader();
    let metrics = |i: usize| scrape(&c.up(i).metrics_addr());
    let text = metrics(leader);
    assert_eq!(sample(&text, "sluice_cluster_leader"), Some(1.0), "{text}");
    assert!(sample(&text, "sluice_cluster_term").is_some_and(|t| t >= 1.0));
    assert!(
        sample(&text, "sluice_cluster_commit_seconds_count").is_some_and(|n| n >= 1.0),
        "the enqueues were committed: {text}"
    );
    assert!(
        sample(&text, "sluice_cluster_log_entries").is_some_and(|n| n >= 1.0)
            && sample(&text, "sluice_cluster_log_bytes").is_some_and(|n| n >= 1.0),
        "the log it holds in memory: {text}"
    );
    // The followers catch up: the leader sees their lag reach 0.
    eventually(DEADLINE, "followers caught up", || {
        let text = metrics(leader);
        (0..3).filter(|i| *i != leader).all(|i| {
            sample(
                &text,
                &format!("sluice_cluster_follower_lag_entries{{node=\"{}\"}}", i + 1),
            ) == Some(0.0)
        })
    });
    let follower = (0..3).find(|i| *i != leader).unwrap_or_default();
    let text = metrics(follower);
    assert_eq!(sample(&text, "sluice_cluster_leader"), Some(0.0), "{text}");
    assert!(
        sample(&text, "sluice_cluster_leader_changes_total").is_some_and(|n| n >= 1.0),
        "it saw the leader arrive: {text}"
    );
}

#[test]
fn a_member_that_lost_its_disk_catches_up_from_a_snapshot() {
    // A snapshot every 50 entries, so that the log a wiped member would
    // need is gone well before the test ends.
    let extra = ["--snapshot-every", "50", "--metrics-listen", "127.0.0.1:0"];
    let mut c = Cluster::start_with_args(3, &extra);
    let all = c.urls();
    let cli = |args: &[&str]| sluice_tests::cli(&all, args, None);
    let out = cli(&["queue", "create", "work", "--durable"]);
    assert_eq!(out.code, 0, "{out:?}");
    // One call, and so one entry, per task.
    let tasks: Vec<String> = (0..150).map(|i| format!("t{i}")).collect();
    let mut args = vec!["enqueue", "work", "--batch", "1"];
    args.extend(tasks.iter().map(String::as_str));
    let out = cli(&args);
    assert_eq!(out.code, 0, "{out:?}");

    let leader = c.leader();
    let lost = (0..3).find(|i| *i != leader).unwrap_or_default();
    c.kill(lost);
    c.wipe(lost);
    c.members[lost] = Some(c.member(lost));
    c.wait_caught_up(leader, lost);
    let text = scrape(&c.up(lost).metrics_addr());
    assert!(
        sample(&text, "sluice_cluster_snapshots_installed_total").is_some_and(|n| n >= 1.0),
        "it caught up from a snapshot: {text}"
    );
    // It holds every task: with the leader gone, it and the other member
    // elect a leader that has them all.
    c.kill(leader);
    eventually(
        Duration::from_secs(60),
        "the two left serve every task",
        || {
            let out = cli(&["--json", "stats", "work"]);
            serde_json::from_str(&out.stdout)
                .is_ok_and(|v: serde_json::Value| num(&v, &["stats", "ready"]) == 150)
        },
    );
}

#[test]
fn a_leader_restarted_at_once_keeps_every_confirmed_task() {
    const N: u64 = 2000;
    let mut c = Cluster::start(3);
    let all = c.urls();
    let cli = |args: &[&str]| sluice_tests::cli(&all, args, None);
    let out = cli(&["queue", "create", "work", "--durable"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Many entries of one term, one call each: what the leader wrote
    // before it died is a long log to apply when it comes back.
    let tasks: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    let mut args = vec!["enqueue", "work", "--batch", "1"];
    args.extend(tasks.iter().map(String::as_str));
    let out = cli(&args);
    assert_eq!(out.code, 0, "{out:?}");

    // Back before the others could elect anyone: it leads again, in the
    // same term, from its disk.
    let leader = c.leader();
    c.kill(leader);
    c.members[leader] = Some(c.member(leader));
    let now = c.leader();
    let s = c.up(now).stats("work");
    assert_eq!(num(&s, &["stats", "ready"]), N, "{s}");
    for i in (0..3).filter(|i| *i != now) {
        c.wait_caught_up(now, i);
    }
    // Every member agrees: whoever leads next has them all too.
    c.kill(now);
    eventually(
        Duration::from_secs(60),
        "the next leader has every task",
        || {
            let out = cli(&["--json", "stats", "work"]);
            serde_json::from_str(&out.stdout)
                .is_ok_and(|v: serde_json::Value| num(&v, &["stats", "ready"]) == N)
        },
    );
}
