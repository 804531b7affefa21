//! Compaction rewrites the log to exactly the live tasks, and a restart
//! from the compacted log finds exactly those.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::api::validate;
use sluice_broker::broker::Broker;
use sluice_broker::engine::{Claim, NewTask, SettleKind, SettleOp, TaskId};
use sluice_broker::storage::{Log, LogOptions};
use sluice_broker::wal::Recovery;
use sluice_proto::v1::QueueOptions;
use tokio_util::sync::CancellationToken;

fn replay(dir: &std::path::Path, options: LogOptions) -> (Log, Recovery) {
    sluice_broker::wal::open::replay(dir, options).expect("the log replays")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_exactly_the_live_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        segment_bytes: 8 * 1024,
        ..LogOptions::default()
    };
    let (log, recovered) = replay(dir.path(), options.clone());
    let broker = Broker::with_log(
        CancellationToken::new(),
        Some(log.clone()),
        recovered,
        8 * 1024,
    );
    let opts = QueueOptions {
        durable: true,
        ..Default::default()
    };
    let q = broker
        .create_queue(validate::queue_spec("q", Some(&opts)).expect("spec"))
        .await
        .expect("create")
        .0;
    let mut ids = Vec::new();
    for batch in 0..20 {
        let first = broker.task_ids(10);
        let tasks = (0..10)
            .map(|i| NewTask {
                id: TaskId(first.0 + i),
                payload: Bytes::from(format!("task-{batch}-{i}-{}", "x".repeat(100))),
                headers: Default::default(),
                priority: 0,
                delay_ms: 0,
                key: None,
                job: None,
                group: None,
            })
            .collect();
        broker
            .enqueue(&q, tasks, true, None, None)
            .await
            .expect("enqueue");
        ids.extend((0..10).map(|i| TaskId(first.0 + i)));
    }
    // Take and ack 150 of the 200; hold 10 more under a lease.
    let taken = broker
        .get(&q, 150, Duration::ZERO, String::new())
        .await
        .expect("get");
    assert_eq!(taken.len(), 150);
    broker.apply(&q, |sh, now, fx| {
        for d in &taken {
            let ack = SettleOp {
                id: d.id,
                attempt: d.attempt,
                claim: Claim::Token,
                kind: SettleKind::Ack {
                    result: Default::default(),
                },
            };
            sh.settle(now, ack, fx).expect("ack");
        }
    });
    let leased = broker
        .get(&q, 10, Duration::ZERO, String::new())
        .await
        .expect("get");
    assert_eq!(leased.len(), 10);
    let live: BTreeSet<TaskId> = ids[150..].iter().copied().collect();

    let before = log.segments().len();
    assert!(before > 3, "the test needs several segments, got {before}");
    broker.compact().await.expect("compact");
    let after = log.segments();
    assert!(after.len() <= 2, "old segments removed: {after:?}");
    assert!(
        log.total_bytes() < 50 * 200,
        "{} bytes left",
        log.total_bytes()
    );

    // Keep working after compaction, then restart from the log.
    let more = broker.task_ids(1);
    let t = NewTask {
        id: more,
        payload: Bytes::from_static(b"after"),
        headers: Default::default(),
        priority: 0,
        delay_ms: 0,
        key: None,
        job: None,
        group: None,
    };
    broker
        .enqueue(&q, vec![t], true, None, None)
        .await
        .expect("enqueue");
    log.close().await.expect("close");

    let (_log, recovered) = replay(dir.path(), options);
    let rq = &recovered.queues["q"];
    let got: BTreeSet<TaskId> = rq.tasks.keys().copied().collect();
    let mut want = live.clone();
    want.insert(more);
    assert_eq!(got, want, "exactly the live tasks");
    for d in &leased {
        assert_eq!(rq.tasks[&d.id].attempt, 1, "attempts survive compaction");
    }
}
