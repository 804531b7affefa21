//! A cluster of three real brokers on loopback: it forms by itself, only
//! its leader serves queue calls (the others name it), and a confirmed
//! task survives the leader's death (kill -9): the two others elect a
//! leader that has it, and the old leader comes back from its disk as a
//! follower.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::cluster::Cluster;
use sluice_tests::{DEADLINE, eventually, num};

#[test]
fn only_the_leader_serves_the_others_name_it_and_clients_follow() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    // A bare gRPC client on a follower is told where to go, and nothing
    // ran; a follower learns who leads from the leader's first heartbeat.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let want = format!("http://{}", c.addrs[leader]);
    eventually(DEADLINE, "the follower names the leader", || {
        let status = rt.block_on(async {
            let mut raw =
                sluice_client::proto::sluice_service_client::SluiceServiceClient::connect(format!(
                    "http://{}",
                    c.addrs[follower]
                ))
                .await
                .expect("connects");
            raw.list_queues(sluice_client::proto::ListQueuesRequest {})
                .await
                .expect_err("a follower serves no queue call")
        });
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        sluice_client::leader_hint(&status).as_deref() == Some(want.as_str())
    });
    // The CLI, given the follower alone, follows it to the leader.
    c.up(follower).ok(&["queue", "create", "q", "--durable"]);
    let out = c.up(leader).ok(&["queue", "list"]);
    assert!(out.contains('q'), "{out}");
    // GetBrokerInfo is answered everywhere, with the member's view.
    let info = c.up(follower).ok(&["--json", "cluster", "status"]);
    assert!(info.contains(&want), "{info}");
}

#[test]
fn confirmed_tasks_survive_the_leader_and_it_comes_back_a_follower() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let l = c.up(leader);
    l.ok(&["queue", "create", "jobs", "--durable"]);
    let sent: Vec<String> = (0..50).map(|i| format!("task-{i}")).collect();
    let args: Vec<&str> = ["enqueue", "jobs"]
        .into_iter()
        .chain(sent.iter().map(String::as_str))
        .collect();
    l.ok(&args);
    // Options changed on the leader are replicated with the tasks.
    l.ok(&[
        "queue",
        "update",
        "jobs",
        "--max-in-flight",
        "7",
        "--rate",
        "500/s",
    ]);

    // kill -9: nothing it confirmed may be lost.
    c.kill(leader);
    let second = c.leader();
    assert_ne!(second, leader);
    let s = c.up(second).stats("jobs");
    assert_eq!(num(&s, &["stats", "ready"]), 50, "{s}");
    assert_eq!(num(&s, &["options", "max_in_flight"]), 7, "{s}");
    assert_eq!(num(&s, &["options", "rate_limit", "tasks"]), 500, "{s}");
    // Taken from the new leader: every task, once.
    let got: BTreeSet<String> = (0..50)
        .map(|_| {
            let mut out = String::new();
            eventually(DEADLINE, "a get", || {
                let o = c.up(second).cli(&["get", "jobs"]);
                out = o.stdout;
                o.code == 0
            });
            out.trim_end().to_owned()
        })
        .collect();
    assert_eq!(got, sent.iter().cloned().collect::<BTreeSet<_>>());

    // The old leader comes back from its disk, as a follower that catches
    // up with what happened meanwhile.
    c.members[leader] = Some(c.member(leader));
    let now = c.leader();
    assert_ne!(now, leader);
    c.wait_caught_up(now, leader);
    // It applied the gets: kill the second leader, and whoever leads next
    // has an empty queue.
    c.kill(second);
    let third = c.leader();
    eventually(Duration::from_secs(30), "the acks are replicated", || {
        let out = c.up(third).cli(&["--json", "stats", "jobs"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        out.code == 0 && num(&v, &["stats", "unfinished"]) == 0
    });
}

/// The members' URLs, as a client is given them.
#[test]
fn producers_and_workers_given_the_members_follow_the_leader_through_a_failover() {
    let mut c = Cluster::start(3);
    let all = c.urls();
    let cli = |args: &[&str]| sluice_tests::cli(&all, args, None);
    let out = cli(&["queue", "create", "work", "--durable"]);
    assert_eq!(out.code, 0, "{out:?}");
    let done = tempfile::tempdir().expect("tempdir");
    // Each task leaves a file named after its payload: no two tasks write
    // the same file, however many run at once.
    let script = format!("p=$(cat); touch '{}'/\"$p\"", done.path().display());
    let mut worker = {
        let mut cmd = std::process::Command::new(sluice_tests::bin("sluice-worker"));
        cmd.args(["--broker", &all, "--queue", "work", "--concurrency", "4"])
            .args(["--", "sh", "-c", &script])
            .env("RUST_LOG", "sluice_worker=debug,info");
        sluice_tests::Proc::start("sluice-worker", &mut cmd)
    };
    let first: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let mut args = vec!["enqueue", "work"];
    args.extend(first.iter().map(String::as_str));
    let out = cli(&args);
    assert_eq!(out.code, 0, "{out:?}");

    let leader = c.leader();
    c.kill(leader);
    // The same command line finds the new leader.
    let second: Vec<String> = (40..80).map(|i| i.to_string()).collect();
    let mut args = vec!["enqueue", "work"];
    args.extend(second.iter().map(String::as_str));
    eventually(DEADLINE, "an enqueue after the failover", || {
        cli(&args).code == 0
    });
    // Every task is done at least once: those the old leader handed out
    // and never saw acked come back when their lease ends.
    eventually(Duration::from_secs(90), "every task done", || {
        (0..80).all(|i| done.path().join(i.to_string()).exists())
    });
    assert!(worker.running(), "the worker carried on");
}
