//! The crash test of durable queues: producers and workers run while the
//! broker is killed with SIGKILL at random moments and restarted on the
//! same data directory. Every task whose enqueue was confirmed must be
//! processed at least once; nothing may appear that was never enqueued;
//! duplicates (tasks in flight at a crash) are counted and reported.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_client::Client;
use sluice_client::proto::{EnqueueMode, NewTask};
use sluice_tests::{Broker, eventually, num};

/// How many more confirmed enqueues a round runs for before the kill: a
/// cheap pseudo-random number from the clock, so the kill lands at a
/// different point of the producers' and workers' work each time.
fn load_per_round(round: u64) -> usize {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    20 + ((nanos ^ (round * 7919)) % 200) as usize
}

/// Lets the load run until `round`'s share of enqueues more is confirmed.
fn run_load(sent: &Mutex<Sent>, round: u64) {
    let confirmed = || sent.lock().expect("lock").confirmed.len();
    let until = confirmed() + load_per_round(round);
    eventually(Duration::from_secs(60), "the load to go on", || {
        confirmed() >= until
    });
}

#[derive(Default)]
struct Sent {
    /// Every payload an enqueue was attempted for.
    attempted: HashSet<String>,
    /// Those whose enqueue answered OK.
    confirmed: HashSet<String>,
}

/// Enqueues one task at a time (and sometimes a batch) until told to
/// stop, retrying through broker restarts as a real producer would.
async fn produce(url: String, producer: usize, sent: Arc<Mutex<Sent>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match &client {
            Some(c) => c.clone(),
            None => match Client::connect(&url).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(_) => {
                    // The broker is down: this is the producer's own retry
                    // pause, not the test waiting for something.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let batch = if n.is_multiple_of(5) { 10 } else { 1 };
        let payloads: Vec<String> = (0..batch).map(|i| format!("p{producer}-{n}-{i}")).collect();
        n += 1;
        sent.lock()
            .expect("lock")
            .attempted
            .extend(payloads.iter().cloned());
        let tasks = payloads
            .iter()
            .map(|p| NewTask {
                payload: p.clone().into(),
                ..Default::default()
            })
            .collect();
        match c
            .enqueue(
                "jobs",
                tasks,
                EnqueueMode::Wait,
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(_) => sent.lock().expect("lock").confirmed.extend(payloads),
            Err(e) if e.is_unreachable() => client = None,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[test]
fn sigkill_under_load_loses_no_confirmed_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let done = dir.path().join("done.log");
    let data_arg = data.display().to_string();
    let mut broker = Broker::start_on("127.0.0.1:0", &["--data-dir", &data_arg]);
    let addr = broker.addr.clone();
    broker.ok(&["queue", "create", "jobs", "--durable", "--capacity", "200"]);

    let script = format!("p=$(cat); echo \"$p\" >> {}", done.display());
    let _workers: Vec<_> = (0..2)
        .map(|i| {
            broker.worker(
                "jobs",
                &["--concurrency", "4", "--name", &format!("w{i}")],
                &["sh", "-c", &script],
            )
        })
        .collect();

    let sent = Arc::new(Mutex::new(Sent::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let producers: Vec<_> = (0..2)
        .map(|p| {
            rt.spawn(produce(
                broker.url(),
                p,
                Arc::clone(&sent),
                Arc::clone(&stop),
            ))
        })
        .collect();

    for round in 0..4 {
        run_load(&sent, round);
        drop(broker); // SIGKILL
        broker = Broker::start_on(&addr, &["--data-dir", &data_arg]);
    }
    run_load(&sent, 9);
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        rt.block_on(p).expect("producer");
    }

    eventually(
        Duration::from_secs(90),
        "every stored task processed",
        || num(&broker.stats("jobs"), &["stats", "unfinished"]) == 0,
    );
    let sent = sent.lock().expect("lock");
    let log = std::fs::read_to_string(&done).unwrap_or_default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for line in log.lines() {
        *seen.entry(line).or_insert(0) += 1;
    }
    let lost: Vec<&String> = sent
        .confirmed
        .iter()
        .filter(|p| !seen.contains_key(p.as_str()))
        .collect();
    let invented: Vec<&&str> = seen
        .keys()
        .filter(|p| !sent.attempted.contains(**p))
        .collect();
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "crash test: {} confirmed, {} attempted, {} processed, {} duplicates, {} lost",
        sent.confirmed.len(),
        sent.attempted.len(),
        seen.len(),
        duplicates,
        lost.len()
    );
    assert!(
        sent.confirmed.len() > 50,
        "too little load to mean anything"
    );
    assert!(lost.is_empty(), "confirmed but never processed: {lost:?}");
    assert!(
        invented.is_empty(),
        "processed but never enqueued: {invented:?}"
    );
}
