//! A network partition: three real brokers on loopback, every member's
//! calls to every other through a proxy the test controls, and the leader
//! cut off from the two others while its clients still reach it.
//!
//! - The isolated leader confirms nothing (no split brain): an enqueue
//!   sent to it is never answered with ids; and once an election's time
//!   has passed without a majority it stops serving, so that its clients
//!   go on to the other members.
//! - The two others elect a leader, which confirms enqueues.
//! - Healed, the old leader rejoins as a follower and tells its clients
//!   where the leader is; the leader holds every task confirmed anywhere,
//!   once, and nothing the isolated leader was asked to store.

use std::sync::mpsc;
use std::time::Duration;

use sluice_client::proto::sluice_service_client::SluiceServiceClient;
use sluice_client::proto::{EnqueueRequest, EnqueueResponse, ListQueuesRequest, NewTask};
use sluice_tests::cluster::{Cluster, own_view};
use sluice_tests::{DEADLINE, eventually, num};

/// Room for an election on a loaded machine (two cores shared by three
/// brokers and the test): a follower waits 0.8–1.6 s without heartbeats
/// before it stands, and a vote may be refused while the old leader's
/// lease lasts.
const ELECTION: Duration = Duration::from_secs(60);

/// The idempotency key of what the isolated leader is asked to store.
const KEY: &str = "isolated";

/// An Enqueue of one task (with an idempotency key, unless empty), on a
/// bare gRPC client (it follows no leader and retries nothing), answered
/// within `within`.
async fn enqueue_raw(
    url: String,
    payload: String,
    key: &str,
    within: Duration,
) -> Result<EnqueueResponse, tonic::Status> {
    let mut raw = SluiceServiceClient::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    let mut request = tonic::Request::new(EnqueueRequest {
        queue: "jobs".into(),
        tasks: vec![NewTask {
            payload: payload.into_bytes().into(),
            key: key.to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    });
    request.set_timeout(within);
    match tokio::time::timeout(within, raw.enqueue(request)).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
    }
}

/// A ListQueues on a bare gRPC client: what a member that does not lead
/// refuses.
async fn list_queues_raw(url: &str) -> Result<(), tonic::Status> {
    let mut raw = SluiceServiceClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    raw.list_queues(ListQueuesRequest {}).await.map(drop)
}

/// [`enqueue_raw`] on a thread of its own: its answer arrives on the
/// channel whenever it comes.
fn enqueue_in_background(
    url: String,
    payload: &str,
    key: &str,
    within: Duration,
) -> mpsc::Receiver<Result<EnqueueResponse, tonic::Status>> {
    let (tx, rx) = mpsc::channel();
    let payload = payload.to_owned();
    let key = key.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = tx.send(rt.block_on(enqueue_raw(url, payload, &key, within)));
    });
    rx
}

/// `sluice enqueue jobs PAYLOADS...` on `url`, which must confirm them.
fn enqueue_cli(url: &str, payloads: &[String]) {
    let mut args = vec!["enqueue", "jobs"];
    args.extend(payloads.iter().map(String::as_str));
    let out = sluice_tests::cli(url, &args, None);
    assert_eq!(out.code, 0, "enqueue on {url}: {out:?}");
    assert_eq!(out.stdout.lines().count(), payloads.len(), "{out:?}");
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn an_isolated_leader_confirms_nothing_and_rejoins_as_a_follower() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = Cluster::start_proxied(3);
    let old = c.leader();
    let old_url = format!("http://{}", c.addrs[old]);
    c.up(old).ok(&["queue", "create", "jobs", "--durable"]);
    let before = payloads("before", 10);
    enqueue_cli(&old_url, &before);

    // Cut off: no call between it and the others any more, either way.
    c.isolate(old);
    // An enqueue the isolated leader is asked for at once, before the
    // others noticed anything; left to wait as long as the whole
    // partition may last.
    let pending = enqueue_in_background(old_url.clone(), "isolated-0", KEY, 4 * ELECTION);

    // The two others elect a leader of their own, which confirms.
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = c.leader_among(&others, ELECTION);
    let new_url = format!("http://{}", c.addrs[new]);
    let during = payloads("during", 10);
    enqueue_cli(&new_url, &during);

    // Meanwhile the isolated leader confirmed nothing: neither the first
    // enqueue, nor one sent once the others had a leader of their own,
    // with the first one's key (which the isolated leader's queue holds,
    // uncommitted: answering its id would confirm it).
    let late = rt.block_on(enqueue_raw(
        old_url.clone(),
        "isolated-1".into(),
        KEY,
        Duration::from_secs(5),
    ));
    assert!(
        late.is_err(),
        "split brain: the isolated leader confirmed {late:?}"
    );
    let mut first = match pending.try_recv() {
        Ok(answer) => Some(answer),
        Err(mpsc::TryRecvError::Empty) => None,
        Err(mpsc::TryRecvError::Disconnected) => panic!("the enqueue thread died"),
    };
    if let Some(answer) = &first {
        assert!(
            answer.is_err(),
            "split brain: the isolated leader confirmed {answer:?}"
        );
    }

    // It stops serving once no majority has answered it for longer than
    // an election takes: a bare client is refused (no leader known
    // there), and a client given every member, the old leader first,
    // goes on to the others and finds the new leader.
    eventually(ELECTION, "the isolated leader stops serving", || {
        rt.block_on(list_queues_raw(&old_url))
            .is_err_and(|s| s.code() == tonic::Code::Unavailable)
    });
    let everyone = std::iter::once(old)
        .chain(others.iter().copied())
        .map(|i| format!("http://{}", c.addrs[i]))
        .collect::<Vec<_>>()
        .join(",");
    let around = payloads("around", 3);
    enqueue_cli(&everyone, &around);

    c.heal();
    // The old leader steps down, and names the leader to its clients: a
    // bare client, which follows nobody, is told where to go (the address
    // the old leader reaches it by).
    let mut now = new;
    eventually(ELECTION, "the old leader names the leader", || {
        let status = rt.block_on(list_queues_raw(&old_url));
        let hint = status.err().and_then(|s| sluice_client::leader_hint(&s));
        let named = others
            .iter()
            .copied()
            .find(|o| hint.as_deref() == Some(&format!("http://{}", c.reach(old, *o))));
        named.is_some_and(|o| {
            now = o;
            rt.block_on(own_view(&format!("http://{}", c.addrs[o])))
                .is_some_and(|v| v.leader)
        })
    });
    let via_old = format!("http://{}", c.reach(old, now));
    eventually(DEADLINE, "the old leader's view names the leader", || {
        rt.block_on(own_view(&old_url))
            .is_some_and(|v| !v.leader && v.leader_url == via_old)
    });
    // The enqueue it held through the partition is answered by now, and
    // not with ids.
    let first = first.take().unwrap_or_else(|| {
        pending
            .recv_timeout(DEADLINE)
            .expect("the enqueue held by the isolated leader is answered once it rejoins")
    });
    let status = first.expect_err("split brain: the isolated leader confirmed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // An enqueue now is refused, naming the leader; the CLI, given the
    // old leader alone, follows it there.
    let status = rt
        .block_on(enqueue_raw(old_url.clone(), "refused".into(), "", DEADLINE))
        .expect_err("a follower stores nothing");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        sluice_client::leader_hint(&status).as_deref(),
        Some(via_old.as_str()),
        "{status:?}"
    );
    let after = payloads("after", 5);
    enqueue_cli(&old_url, &after);

    // It caught up with the log of the term it missed.
    c.wait_caught_up(now, old);

    // Every confirmed task once, and nothing else: not what the isolated
    // leader ran and could not commit.
    let mut want: Vec<String> = before
        .into_iter()
        .chain(during)
        .chain(around)
        .chain(after)
        .collect();
    want.sort();
    let leader = c.up(now);
    let s = leader.stats("jobs");
    assert_eq!(num(&s, &["stats", "ready"]), want.len() as u64, "{s}");
    let mut got: Vec<String> = (0..want.len())
        .map(|_| leader.ok(&["get", "jobs"]).trim_end().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, want);
    let s = leader.stats("jobs");
    assert_eq!(num(&s, &["stats", "ready"]), 0, "{s}");
}
