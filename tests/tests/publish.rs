//! The producer's credit stream: a producer is paused by its workers and
//! never holds more unconfirmed tasks than its window; producers on one
//! full queue share the space that frees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_client::Client;
use sluice_client::proto::NewTask;
use sluice_tests::{Broker, DEADLINE, eventually, num};

fn task(i: u64) -> NewTask {
    NewTask {
        payload: format!("t{i}").into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_stalls_while_workers_are_paused_then_resumes() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "100"]);
    let client = Client::connect(&b.url()).await.expect("connect");
    let mut p = client.publisher("q", 50).await.expect("publisher");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let producer = tokio::spawn(async move {
        for i in 0..300 {
            p.send(task(i)).await.expect("send");
            counter.fetch_add(1, Ordering::SeqCst);
            assert!(p.unconfirmed() <= 50, "{} unconfirmed", p.unconfirmed());
        }
        p.finish().await.expect("finish")
    });

    // No worker: the queue fills to capacity and the producer waits there,
    // without error, holding no credit the queue cannot honour.
    let b2 = &b;
    tokio::task::block_in_place(|| {
        eventually(DEADLINE, "queue full", || {
            num(&b2.stats("q"), &["stats", "ready"]) == 100
        })
    });
    let s = tokio::task::block_in_place(|| b.stats("q"));
    assert_eq!(num(&s, &["stats", "reserved"]), 0, "{s}");
    assert_eq!(num(&s, &["stats", "publishers"]), 1, "{s}");
    assert_eq!(sent.load(Ordering::SeqCst), 100, "paused at capacity");
    assert!(!producer.is_finished());

    // Workers come back: the producer resumes and finishes.
    let _w = b.worker("q", &["--concurrency", "8"], &["true"]);
    let ids = tokio::time::timeout(DEADLINE, producer)
        .await
        .expect("finished in time")
        .expect("producer task");
    assert_eq!(ids.len(), 300);
    tokio::task::block_in_place(|| {
        eventually(DEADLINE, "all acked", || {
            num(&b.stats("q"), &["stats", "acked_total"]) == 300
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_on_a_full_queue_share_the_freed_space() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "20"]);
    let client = Client::connect(&b.url()).await.expect("connect");
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let mut producers = Vec::new();
    for c in &counts {
        let mut p = client.publisher("q", 20).await.expect("publisher");
        let c = Arc::clone(c);
        let others = counts.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..100 {
                p.send(task(i)).await.expect("send");
                c.fetch_add(1, Ordering::SeqCst);
            }
            p.finish().await.expect("finish");
            // When one is done, the other must have come a long way too.
            others
                .iter()
                .map(|o| o.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0)
        }));
    }
    tokio::task::block_in_place(|| {
        eventually(DEADLINE, "queue full", || {
            num(&b.stats("q"), &["stats", "ready"]) == 20
        })
    });
    // A slow drain frees space a slot at a time.
    let _w = b.worker("q", &["--concurrency", "1"], &["sh", "-c", "sleep 0.01"]);
    for p in producers {
        let least = tokio::time::timeout(DEADLINE, p)
            .await
            .expect("in time")
            .expect("task");
        assert!(
            least >= 50,
            "one producer got {least} of 100 while the other finished"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_sitting_on_credit_while_others_wait_loses_it() {
    use sluice_client::proto::PublishRequest;
    let b = Broker::start_on("127.0.0.1:0", &["--publish-idle-timeout", "1s"]);
    b.ok(&["queue", "create", "q", "--capacity", "10"]);
    let client = Client::connect(&b.url()).await.expect("connect");
    // A producer opens a stream, takes the whole queue as credit, and
    // sends nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(PublishRequest {
        queue: "q".into(),
        window: 10,
        ..Default::default()
    })
    .await
    .expect("send");
    let mut hog = client
        .raw()
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("publish")
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, hog.message())
        .await
        .expect("in time")
        .expect("healthy")
        .expect("a credit frame");
    assert_eq!(first.credit, 10);
    // Alone, it may keep it: nobody waits.
    let s = tokio::task::block_in_place(|| b.stats("q"));
    assert_eq!(num(&s, &["stats", "reserved"]), 10, "{s}");
    // A plain producer waits for space; the idle publisher loses its
    // stream and the waiting producer gets in.
    let url = b.url();
    let waiting = std::thread::spawn(move || sluice_tests::cli(&url, &["enqueue", "q", "x"], None));
    let ended = tokio::time::timeout(DEADLINE, hog.message())
        .await
        .expect("the stream ends in time")
        .expect_err("ended with a status");
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    assert!(
        ended.message().contains("--publish-idle-timeout"),
        "{ended:?}"
    );
    let out = tokio::task::spawn_blocking(move || waiting.join().expect("joined"))
        .await
        .expect("joined");
    assert_eq!(out.code, 0, "{out:?}");
    drop(tx);
}
