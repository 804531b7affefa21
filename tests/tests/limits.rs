//! Operator limits: each refuses with RESOURCE_EXHAUSTED and a message that
//! names the flag, and the broker keeps serving what it already has.

use sluice_tests::{Broker, DEADLINE, RawConsumer, eventually, num};

#[test]
fn the_memory_budget_refuses_enqueues_but_serves_consumers() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-memory-bytes", "2000"]);
    b.ok(&["queue", "create", "q"]);
    let kb = "x".repeat(900);
    b.ok(&["enqueue", "q", &kb]);
    b.ok(&["enqueue", "q", &kb]);
    let out = b.cli(&["enqueue", "q", &kb]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("RESOURCE_EXHAUSTED"), "{out:?}");
    assert!(out.stderr.contains("--max-memory-bytes"), "{out:?}");
    // Draining frees the budget again.
    b.ok(&["get", "q"]);
    b.ok(&["enqueue", "q", &kb]);
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2);
}

#[test]
fn queue_count_is_limited() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-queues", "2"]);
    b.ok(&["queue", "create", "a"]);
    b.ok(&["queue", "create", "b"]);
    let out = b.cli(&["queue", "create", "c"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--max-queues"), "{out:?}");
    // Re-creating an existing one is still fine.
    b.ok(&["queue", "create", "a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_per_queue_are_limited() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-consumers-per-queue", "1"]);
    b.ok(&["queue", "create", "q"]);
    let _first = RawConsumer::subscribe(&b.url(), "q", "first", 1).await;
    let Err(refused) = RawConsumer::try_subscribe(&b.url(), "q", "second", 1).await else {
        panic!("a second consumer is refused");
    };
    assert_eq!(refused.code(), sluice_client::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-consumers-per-queue"),
        "{refused:?}"
    );
    tokio::task::block_in_place(|| {
        eventually(DEADLINE, "still one consumer", || {
            num(&b.stats("q"), &["stats", "consumers"]) == 1
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_in_total_are_limited_and_a_closed_stream_frees_its_slot() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-consumers", "2"]);
    tokio::task::block_in_place(|| {
        for q in ["a", "b", "c"] {
            b.ok(&["queue", "create", q]);
        }
    });
    let first = RawConsumer::subscribe(&b.url(), "a", "first", 1).await;
    let _second = RawConsumer::subscribe(&b.url(), "b", "second", 1).await;
    let Err(refused) = RawConsumer::try_subscribe(&b.url(), "c", "third", 1).await else {
        panic!("a third consumer, on any queue, is refused");
    };
    assert_eq!(refused.code(), sluice_client::Code::ResourceExhausted);
    assert!(refused.message().contains("--max-consumers"), "{refused:?}");
    // The broker notices the closed stream on its own time; until then the
    // slot may still be taken, so retry until the deadline.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match RawConsumer::try_subscribe(&b.url(), "c", "third", 1).await {
            Ok(_) => break,
            Err(s) if s.code() == sluice_client::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed stream's slot was never freed: {s:?}"
                );
                tokio::task::yield_now().await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_per_connection_limit_is_advertised_to_clients() {
    // HTTP/2 clients queue calls beyond the server's advertised
    // MAX_CONCURRENT_STREAMS rather than fail them, so what a user can
    // check is the setting the broker sends.
    let b = Broker::start_on("127.0.0.1:0", &["--max-streams-per-connection", "2"]);
    let addr = b.url().trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut body) = client.send_request(req, false).expect("send");
    // An empty HealthCheckRequest: flag 0, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    // The server's SETTINGS come before any response frame on the wire.
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(client.current_max_send_streams(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_producers_meets_the_memory_budget_and_memory_stays_bounded() {
    use sluice_client::proto::{EnqueueMode, NewTask};
    let b = Broker::start_on("127.0.0.1:0", &["--max-memory-bytes", "8000000"]);
    tokio::task::block_in_place(|| b.ok(&["queue", "create", "q", "--capacity", "100000"]));
    let client = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect");
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let mut producers = Vec::new();
    for _ in 0..16 {
        let (client, payload) = (client.clone(), payload.clone());
        producers.push(tokio::spawn(async move {
            let (mut stored, mut refused) = (0u64, 0u64);
            while refused < 20 {
                let task = NewTask {
                    payload: payload.clone(),
                    ..Default::default()
                };
                match client
                    .enqueue("q", vec![task], EnqueueMode::Wait, None)
                    .await
                {
                    Ok(_) => stored += 1,
                    Err(e) => {
                        assert_eq!(e.code(), sluice_client::Code::ResourceExhausted, "{e}");
                        refused += 1;
                    }
                }
            }
            stored
        }));
    }
    let mut stored = 0;
    for p in producers {
        stored += p.await.expect("producer");
    }
    // What was stored fits the budget; the broker's memory stayed bounded.
    assert!(stored * 64 * 1024 <= 8_000_000, "{stored} tasks stored");
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.proc.pid())).expect("status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kb < 200_000, "broker peaked at {peak_kb} kB");
    tokio::task::block_in_place(|| {
        assert_eq!(num(&b.stats("q"), &["stats", "ready"]), stored);
    });
}

#[test]
fn batches_are_limited() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-batch", "3"]);
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "a", "b", "c"]);
    let out = b.cli(&["enqueue", "q", "a", "b", "c", "d"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("INVALID_ARGUMENT") && out.stderr.contains("--max-batch"),
        "{out:?}"
    );
    assert_eq!(
        num(&b.stats("q"), &["stats", "ready"]),
        3,
        "nothing of the refused batch stored"
    );
    // A CLI told the broker's limit fits its batches (and Publish frames)
    // to it: 20 lines from stdin all land.
    let lines: String = (0..20).map(|i| format!("t{i}\n")).collect();
    let out = b.cli_stdin(&["enqueue", "q", "--batch", "3"], &lines);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 20, "{out:?}");
    let out = b.cli(&["enqueue", "q", "--batch", "3", "a", "b", "c", "d", "e"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 3 + 20 + 5);
    let out = b.cli(&["enqueue", "q", "--batch", "0", "a"]);
    assert_eq!(out.code, 2, "--batch 0 is a usage error: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_limited() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-credit", "5"]);
    tokio::task::block_in_place(|| b.ok(&["queue", "create", "q"]));
    let mut c = RawConsumer::subscribe(&b.url(), "q", "greedy", 6).await;
    let status =
        c.rx.message()
            .await
            .expect_err("too much credit ends the stream");
    assert_eq!(status.code(), sluice_client::Code::InvalidArgument);
    assert!(status.message().contains("--max-credit"), "{status:?}");
    // Within the limit is fine.
    let _ok = RawConsumer::subscribe(&b.url(), "q", "modest", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_frames_fit_a_broker_with_a_low_max_batch() {
    let b = Broker::start_on("127.0.0.1:0", &["--max-batch", "3"]);
    b.ok(&["queue", "create", "q"]);
    // A producer sending task by task: what queues up is merged, but
    // never past the broker's --max-batch.
    let client = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect");
    let mut p = client.publisher("q", 100).await.expect("publisher");
    for i in 0..60 {
        p.send(sluice_client::proto::NewTask {
            payload: format!("t{i}").into(),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let ids = p.finish().await.expect("all confirmed");
    assert_eq!(ids.len(), 60);
    // A worker acking as tasks finish: its merged settlements fit too.
    let _w = tokio::task::block_in_place(|| b.worker("q", &["--concurrency", "10"], &["true"]));
    tokio::task::block_in_place(|| b.wait_stat("q", "acked_total", 60));
    let log = b.proc.stderr_log();
    assert!(!log.contains("refused a frame"), "{log}");
}
