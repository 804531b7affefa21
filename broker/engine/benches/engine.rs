//! The engine's hot path, without gRPC: what one task costs to enqueue,
//! deliver and ack, in a shallow and in a deep queue.
//!
//! `cargo bench -p sluice-engine --bench engine`

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::{
    Claim, Command, ConsumerId, Effects, EnqueueMode, NewTask, Order, Outcome, QueueConfig,
    QueueState, SettleKind, SettleOp, TaskId,
};

const BATCH: u64 = 100;

fn queue(order: Order) -> QueueState {
    QueueState::new(QueueConfig {
        capacity: 10_000_000,
        order,
        ack_deadline_ms: 30_000,
        max_attempts: 5,
        retry: sluice_engine::Backoff::NONE,
        key_window_ms: 1000,
        dead_letter: None,
        max_in_flight: 0,
        rate: None,
        group_max_in_flight: 0,
        paused: false,
    })
}

fn tasks(first: u64, n: u64, payload: &Bytes) -> Vec<NewTask> {
    (first..first + n)
        .map(|i| NewTask {
            id: TaskId(i),
            payload: payload.clone(),
            headers: HashMap::new(),
            priority: (i % 7) as i32,
            delay_ms: 0,
            key: None,
            job: None,
            group: None,
        })
        .collect()
}

fn put(q: &mut QueueState, tasks: Vec<NewTask>, fx: &mut Effects) {
    let put = Command::Enqueue {
        tasks,
        mode: EnqueueMode::FailFast,
        producer: None,
    };
    let stored = q.execute(0, put, fx);
    assert!(
        matches!(stored, Outcome::Enqueue { result: Ok(_), .. }),
        "fits"
    );
}

/// Enqueue a batch, deliver it to a consumer with credit, ack each task
/// (one command per ack, as a stream's frames of one ack would be).
fn round_trip(q: &mut QueueState, next: &mut u64, payload: &Bytes) {
    let mut fx = Effects::default();
    put(q, tasks(*next, BATCH, payload), &mut fx);
    *next += BATCH;
    let grant = Command::Grant {
        id: ConsumerId(1),
        credit: BATCH,
    };
    q.execute(0, grant, &mut fx);
    let mut fx2 = Effects::default();
    for (_, d) in fx.deliveries.drain(..) {
        let ack = SettleOp {
            id: d.id,
            attempt: d.attempt,
            claim: Claim::Holder(ConsumerId(1)),
            kind: SettleKind::Ack {
                result: Bytes::new(),
            },
        };
        let acked = q.execute(1, Command::Settle { ops: vec![ack] }, &mut fx2);
        assert!(
            matches!(acked, Outcome::Settled(ref r) if r[0].is_ok()),
            "leased"
        );
    }
    black_box(fx);
}

fn bench(c: &mut Criterion) {
    let payload = Bytes::from(vec![0u8; 128]);
    let mut g = c.benchmark_group("enqueue_deliver_ack");
    g.throughput(Throughput::Elements(BATCH));
    for (name, order, backlog) in [
        ("fifo_empty", Order::Fifo, 0),
        ("priority_empty", Order::Priority, 0),
        ("fifo_backlog_1m", Order::Fifo, 1_000_000),
        ("priority_backlog_1m", Order::Priority, 1_000_000),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let mut q = queue(order);
                    let mut fx = Effects::default();
                    if backlog > 0 {
                        // Deep queue: lower priority than the measured tasks
                        // would be unfair to FIFO, so they just sit behind.
                        put(&mut q, tasks(1 << 40, backlog, &payload), &mut fx);
                    }
                    let add = Command::AddConsumer {
                        id: ConsumerId(1),
                        name: "bench".into(),
                        peer: String::new(),
                        detached: false,
                    };
                    q.execute(0, add, &mut fx);
                    (q, 0u64)
                },
                |(q, next)| {
                    for _ in 0..10 {
                        round_trip(q, next, &payload);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
