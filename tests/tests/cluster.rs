//! A cluster of three real brokers on loopback: it forms by itself, only
//! its leader serves queue calls (the others name it), and a confirmed
//! task survives the leader's death (kill -9): the two others elect a
//! leader that has it, and the old leader comes back from its disk as a
//! follower.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_tests::{Broker, DEADLINE, eventually, num};

/// Ports for a cluster's members: the members must be told each other's
/// addresses before they start, so these are found free (bound to port 0,
/// then released) rather than picked by each broker.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

struct Cluster {
    members: Vec<Option<Broker>>,
    addrs: Vec<String>,
    peers: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = free_ports(n)
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members: Vec::new(),
            addrs,
            peers,
            dir,
        };
        for i in 0..n {
            let m = c.member(i);
            c.members.push(Some(m));
        }
        c
    }

    /// Starts member `i` (0-based) on its address and data directory.
    fn member(&self, i: usize) -> Broker {
        let data = self.dir.path().join(format!("m{}", i + 1));
        Broker::start_on(
            &self.addrs[i],
            &[
                "--node-id",
                &(i + 1).to_string(),
                "--peers",
                &self.peers,
                "--data-dir",
                &data.display().to_string(),
            ],
        )
    }

    /// The member that serves queue calls, once one does.
    fn leader(&self) -> usize {
        let mut found = None;
        eventually(DEADLINE, "a leader serves", || {
            found = self.members.iter().enumerate().find_map(|(i, m)| {
                let m = m.as_ref()?;
                (m.cli(&["queue", "list"]).code == 0).then_some(i)
            });
            found.is_some()
        });
        found.unwrap_or_default()
    }

    fn up(&self, i: usize) -> &Broker {
        self.members[i].as_ref().expect("member is up")
    }
}

#[test]
fn only_the_leader_serves_and_the_others_name_it() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    // A follower learns who leads from the leader's first heartbeat.
    let hint = format!("the leader is http://{}", c.addrs[leader]);
    eventually(DEADLINE, "the follower names the leader", || {
        let out = c.up(follower).cli(&["queue", "create", "q", "--durable"]);
        assert_ne!(out.code, 0, "a follower took a queue call: {out:?}");
        out.stderr.contains(&hint)
    });
    // GetBrokerInfo is answered everywhere.
    assert_eq!(c.up(follower).cli(&["info"]).code, 0);
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

    // kill -9: nothing it confirmed may be lost.
    if let Some(mut m) = c.members[leader].take() {
        m.proc.signal("KILL");
        m.proc.wait_exit(DEADLINE);
    }
    let second = c.leader();
    assert_ne!(second, leader);
    let s = c.up(second).stats("jobs");
    assert_eq!(num(&s, &["stats", "ready"]), 50, "{s}");
    // Taken from the new leader: every task, once.
    let got: BTreeSet<String> = (0..50)
        .map(|_| c.up(second).ok(&["get", "jobs"]).trim_end().to_owned())
        .collect();
    assert_eq!(got, sent.iter().cloned().collect::<BTreeSet<_>>());

    // The old leader comes back from its disk, as a follower that knows
    // what happened meanwhile.
    let back = c.member(leader);
    let out = back.cli(&["stats", "jobs"]);
    assert_ne!(out.code, 0, "{out:?}");
    c.members[leader] = Some(back);
    // It applied the gets: kill the second leader, and whoever leads next
    // has an empty queue.
    if let Some(mut m) = c.members[second].take() {
        m.proc.signal("KILL");
        m.proc.wait_exit(DEADLINE);
    }
    let third = c.leader();
    eventually(Duration::from_secs(30), "the acks are replicated", || {
        num(&c.up(third).stats("jobs"), &["stats", "unfinished"]) == 0
    });
}
