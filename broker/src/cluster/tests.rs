//! Three members in one process, over real gRPC on loopback, each with
//! its log in its own directory: they form a cluster, replicate, elect a
//! new leader when the old one stops, catch a member up from a snapshot,
//! and come back from their disks after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::log_store::LogStore;
use super::machine::StateMachine;
use super::network::Network;
use super::service::RaftServer;
use super::{Applied, Machine, Proposal, TypeConfig};
use crate::storage::LogOptions;

/// A machine that remembers every command, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Bytes>>);

impl Recorder {
    fn commands(&self) -> Vec<Bytes> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Machine for Recorder {
    fn apply(&self, entry: super::Committed<'_>) -> Applied {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.push(Bytes::copy_from_slice(entry.command));
        Applied(Box::new(v.len()))
    }

    fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        for c in self.commands() {
            b.put_u32_le(c.len() as u32);
            b.put_slice(&c);
        }
        b.freeze()
    }

    fn restore(&self, mut snapshot: &[u8]) -> Result<(), String> {
        let mut v = Vec::new();
        while snapshot.remaining() >= 4 {
            let n = snapshot.get_u32_le() as usize;
            if snapshot.remaining() < n {
                return Err("cut short".into());
            }
            v.push(Bytes::copy_from_slice(&snapshot[..n]));
            snapshot.advance(n);
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }
}

struct Member {
    raft: Raft<TypeConfig>,
    store: LogStore,
    machine: Arc<Recorder>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

fn config() -> Arc<Config> {
    let c = Config {
        // Generous for a loaded 2-core CI machine: elections still settle
        // in well under a second here.
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(50),
        max_in_snapshot_log_to_keep: 5,
        ..Default::default()
    };
    Arc::new(c.validate().expect("valid raft config"))
}

async fn start(id: u64, dir: &Path, listener: TcpListener) -> Member {
    let store = LogStore::open(&dir.join("raft"), LogOptions::default()).expect("log opens");
    let machine = Arc::new(Recorder::default());
    let sm = StateMachine::open(machine.clone(), dir).expect("state machine opens");
    let raft = Raft::new(id, config(), Network::default(), store.clone(), sm)
        .await
        .expect("raft starts");
    let current = super::proposer::Current::default();
    current.set(Some(raft.clone()));
    let stop = CancellationToken::new();
    let served = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(RaftServer::service(current, None))
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
        })
    };
    Member {
        raft,
        store,
        machine,
        stop,
        served,
    }
}

impl Member {
    async fn shut(self) {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        let _ = self.served.await;
    }
}

/// Three members on `dirs`, started and initialized: every member with
/// the same membership (safe, and no member has to be the one that starts
/// the cluster). Their addresses, for members started again.
async fn three(dirs: &[PathBuf]) -> (Vec<Option<Member>>, BTreeMap<u64, BasicNode>) {
    let (ls, nodes) = listeners(3).await;
    let mut members = Vec::new();
    for ((id, l), dir) in (1..).zip(ls).zip(dirs) {
        members.push(Some(start(id, dir, l).await));
    }
    for m in members.iter().flatten() {
        let _ = m.raft.initialize(nodes.clone()).await;
    }
    (members, nodes)
}

async fn listeners(n: usize) -> (Vec<TcpListener>, BTreeMap<u64, BasicNode>) {
    let mut ls = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=n as u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        nodes.insert(id, BasicNode { addr });
        ls.push(l);
    }
    (ls, nodes)
}

async fn leader_of(members: &[&Member]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for m in members {
            let metrics = m.raft.metrics().borrow().clone();
            if metrics.current_leader == Some(metrics.id)
                && metrics.state == openraft::ServerState::Leader
            {
                return metrics.id;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn applied(m: &Member, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while m.machine.commands().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member has {} of {n} commands",
            m.machine.commands().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through whichever member leads, as a client would: a member
/// that is no longer leader says so, and the write goes to the new one.
/// A write whose leader changed under it may have been committed anyway,
/// so a retry can apply a command twice: the checks allow for that.
async fn write(members: &[Option<Member>], c: Proposal) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let up: Vec<&Member> = members.iter().flatten().collect();
        let leader = leader_of(&up).await;
        let raft = up
            .iter()
            .find(|m| m.raft.metrics().borrow().id == leader)
            .map(|m| m.raft.clone())
            .expect("the leader is up");
        match raft.client_write(c.clone()).await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no leader took the write: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Every member holds the same commands, and they are `0..n` in order
/// once retried duplicates are left out.
fn check_same(members: &[Option<Member>], n: usize) {
    let lists: Vec<Vec<Bytes>> = members
        .iter()
        .flatten()
        .map(|m| m.machine.commands())
        .collect();
    for l in &lists[1..] {
        assert_eq!(l, &lists[0], "every member applied the same commands");
    }
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<Bytes> = lists[0]
        .iter()
        .filter(|c| seen.insert((*c).clone()))
        .cloned()
        .collect();
    let expect: Vec<Bytes> = (0..n).map(|i| cmd(i).0).collect();
    assert_eq!(firsts, expect, "every command, in order");
}

fn cmd(i: usize) -> Proposal {
    Proposal(Bytes::from(format!("command {i}")))
}

fn dirs(base: &Path) -> Vec<PathBuf> {
    (1..=3).map(|i| base.join(format!("m{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_elect_again_and_catch_up_from_a_snapshot() {
    let base = tempfile::tempdir().expect("tempdir");
    let dirs = dirs(base.path());
    let (mut members, nodes) = three(&dirs).await;
    for i in 0..120 {
        write(&members, cmd(i)).await;
    }
    for m in members.iter().flatten() {
        applied(m, 120).await;
    }

    // The leader stops: the two others elect one of themselves and go on.
    let all: Vec<&Member> = members.iter().flatten().collect();
    let leader = leader_of(&all).await;
    if let Some(m) = members[(leader - 1) as usize].take() {
        m.shut().await;
    }
    let rest: Vec<&Member> = members.iter().flatten().collect();
    assert_ne!(leader_of(&rest).await, leader);
    for i in 120..200 {
        write(&members, cmd(i)).await;
    }

    // The old leader comes back from its disk. Its log was purged behind
    // snapshots; the others' too, so it catches up from theirs.
    let l = TcpListener::bind(nodes[&leader].addr.as_str())
        .await
        .expect("the old address is free again");
    members[(leader - 1) as usize] = Some(start(leader, &dirs[(leader - 1) as usize], l).await);
    let last = members
        .iter()
        .flatten()
        .map(|m| m.machine.commands().len())
        .max()
        .unwrap_or(200);
    for m in members.iter().flatten() {
        applied(m, last).await;
    }
    check_same(&members, 200);
    for m in members.into_iter().flatten() {
        m.shut().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_wiped_clean_rejoins_from_a_snapshot() {
    let base = tempfile::tempdir().expect("tempdir");
    let dirs = dirs(base.path());
    let (mut members, nodes) = three(&dirs).await;
    for i in 0..150 {
        write(&members, cmd(i)).await;
    }
    let all: Vec<&Member> = members.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let raft = all
        .iter()
        .find(|m| m.raft.metrics().borrow().id == leader)
        .map(|m| m.raft.clone())
        .expect("leader");
    let follower = if leader == 3 { 2 } else { 3 };
    if let Some(m) = members[(follower - 1) as usize].take() {
        m.shut().await;
    }
    std::fs::remove_dir_all(&dirs[(follower - 1) as usize]).expect("wiped");
    let l = TcpListener::bind(nodes[&follower].addr.as_str())
        .await
        .expect("address free");
    let m = start(follower, &dirs[(follower - 1) as usize], l).await;
    // A wiped member starts as a new one would: it may initialize too.
    let _ = m.raft.initialize(nodes.clone()).await;
    let n = members
        .iter()
        .flatten()
        .map(|m| m.machine.commands().len())
        .max()
        .unwrap_or(150);
    applied(&m, n).await;
    members[(follower - 1) as usize] = Some(m);
    check_same(&members, 150);
    // It could only have come from a snapshot: the leader's log no longer
    // starts at the beginning.
    assert!(
        raft.metrics().borrow().purged.is_some(),
        "the leader purged its log"
    );
    let back = members[(follower - 1) as usize].as_ref().expect("back");
    assert!(
        back.raft.metrics().borrow().snapshot.is_some(),
        "it installed a snapshot"
    );
    for m in members.into_iter().flatten() {
        m.shut().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fails_stops_and_the_others_go_on() {
    for fault in ["write", "fsync"] {
        let base = tempfile::tempdir().expect("tempdir");
        let dirs = dirs(base.path());
        let (mut members, _) = three(&dirs).await;
        for i in 0..20 {
            write(&members, cmd(i)).await;
        }
        let all: Vec<&Member> = members.iter().flatten().collect();
        let leader = leader_of(&all).await;
        let broken = if leader == 1 { 2 } else { 1 };
        let faults = members[(broken - 1) as usize]
            .as_ref()
            .map(|m| m.store.log().faults())
            .expect("up");
        match fault {
            "write" => faults
                .fail_writes
                .store(1, std::sync::atomic::Ordering::Relaxed),
            _ => faults
                .fail_syncs
                .store(1, std::sync::atomic::Ordering::Relaxed),
        }
        // The failed append stops that member's Raft (it cannot know what
        // its disk kept); the two others are a majority and go on.
        for i in 20..40 {
            write(&members, cmd(i)).await;
        }
        let b = members[(broken - 1) as usize].take().expect("up");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while b.raft.metrics().borrow().running_state.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a failed {fault} left the member running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            b.machine.commands().len() < 40,
            "it applied nothing after the failure"
        );
        for m in members.iter().flatten() {
            applied(m, 40).await;
        }
        check_same(&members, 40);
        b.shut().await;
        for m in members.into_iter().flatten() {
            m.shut().await;
        }
    }
}
