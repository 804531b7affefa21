//! Every frame the broker sends fits a client with gRPC's default 4 MiB
//! receive limit, and what a client sends is held to the broker's limits:
//! a late job watcher, a Get of big tasks, an ack's result, a Consume
//! frame.

use sluice_client::proto::sluice_service_client::SluiceServiceClient;
use sluice_client::proto::{
    AckItem, AckRequest, ConsumeRequest, EnqueueRequest, GetRequest, NewTask, SealJobRequest,
    Subscribe, WatchJobRequest,
};
use sluice_client::{Client, DeliveryExt};
use sluice_tests::{Broker, DEADLINE};

/// A client as generated from the .proto, with gRPC's defaults (4 MiB).
async fn default_client(b: &Broker) -> SluiceServiceClient<tonic::transport::Channel> {
    SluiceServiceClient::connect(b.url())
        .await
        .expect("connect")
}

fn big(i: usize) -> NewTask {
    NewTask {
        payload: vec![b'a' + i as u8; 900 << 10].into(),
        job_id: "big".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_tasks_reach_a_default_client_in_frames_it_can_read() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let mut c = default_client(&b).await;
    for i in 0..5 {
        c.enqueue(EnqueueRequest {
            queue: "q".into(),
            tasks: vec![big(i)],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    }
    // A Get of ten: one 900 KiB task per answer, the rest stay ready.
    let mut got = Vec::new();
    while got.len() < 5 {
        let answer = c
            .get(GetRequest {
                queue: "q".into(),
                max_tasks: 10,
                wait_ms: 0,
            })
            .await
            .expect("an answer a default client can read")
            .into_inner();
        assert_eq!(answer.deliveries.len(), 1);
        got.extend(answer.deliveries);
    }
    // Each acked with a 900 KiB result: the job's outcomes are big.
    for d in &got {
        let errors = c
            .ack(AckRequest {
                queue: "q".into(),
                acks: vec![AckItem {
                    lease: Some(d.lease()),
                    result: vec![b'r'; 900 << 10].into(),
                }],
            })
            .await
            .expect("ack")
            .into_inner()
            .errors;
        assert!(errors.is_empty(), "{errors:?}");
    }
    c.seal_job(SealJobRequest {
        job_id: "big".into(),
        total: 0,
    })
    .await
    .expect("seal");
    // A watcher after the end gets the five outcomes (1.8 MB each with
    // payload and result) and the summary, in frames it can read.
    let mut watch = c
        .watch_job(WatchJobRequest {
            job_id: "big".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut outcomes = 0;
    loop {
        let frame = tokio::time::timeout(DEADLINE, watch.message())
            .await
            .expect("in time")
            .expect("a frame a default client can read")
            .expect("the summary ends the stream");
        outcomes += frame.task_complete.len();
        if let Some(summary) = frame.job_complete {
            assert_eq!(summary.succeeded, 5);
            break;
        }
    }
    assert_eq!(outcomes, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_consume_frames_are_held_to_the_limits() {
    let b = Broker::start_on(
        "127.0.0.1:0",
        &["--max-payload-bytes", "1000", "--max-batch", "3"],
    );
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "a"]);
    let client = Client::connect(&b.url()).await.expect("connect");
    let mut c = default_client(&b).await;
    let d = c
        .get(GetRequest {
            queue: "q".into(),
            max_tasks: 1,
            wait_ms: 0,
        })
        .await
        .expect("get")
        .into_inner()
        .deliveries
        .remove(0);
    // A result over the payload limit is refused; the lease stands.
    let ack = |result: usize| AckRequest {
        queue: "q".into(),
        acks: vec![AckItem {
            lease: Some(d.lease()),
            result: vec![0u8; result].into(),
        }],
    };
    let errors = c
        .ack(ack(1001))
        .await
        .expect("answered")
        .into_inner()
        .errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("--max-payload-bytes"),
        "{errors:?}"
    );
    let errors = c
        .ack(ack(1000))
        .await
        .expect("answered")
        .into_inner()
        .errors;
    assert!(errors.is_empty(), "{errors:?}");

    // A Consume frame with more settlements than --max-batch ends the
    // stream with INVALID_ARGUMENT, as a unary call of that size is.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ConsumeRequest {
        subscribe: Some(Subscribe {
            queue: "q".into(),
            consumer_name: "w".into(),
        }),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .raw()
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("consume")
        .into_inner();
    tx.send(ConsumeRequest {
        acks: vec![AckItem::default(); 4],
        ..Default::default()
    })
    .await
    .expect("send");
    let status = loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("--max-batch"), "{status:?}");
}
