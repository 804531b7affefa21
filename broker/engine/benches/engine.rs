//! The engine's hot path, without gRPC: what one task costs to enqueue,
//! deliver and ack, in a shallow and in a deep queue.
//!
//! `cargo bench -p sluice-engine --bench engine`

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::{
    ConsumerId, Effects, EnqueueMode, NewTask, Order, QueueConfig, QueueState, TaskId,
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
        })
        .collect()
}

/// Enqueue a batch, deliver it to a consumer with credit, ack each task.
fn round_trip(q: &mut QueueState, next: &mut u64, payload: &Bytes) {
    let mut fx = Effects::default();
    q.enqueue(
        0,
        tasks(*next, BATCH, payload),
        EnqueueMode::FailFast,
        &mut fx,
    )
    .expect("fits");
    *next += BATCH;
    q.grant(0, ConsumerId(1), BATCH, &mut fx);
    let mut fx2 = Effects::default();
    for (_, d) in fx.deliveries.drain(..) {
        q.ack(1, d.id, d.attempt, &mut fx2).expect("leased");
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
                        q.enqueue(
                            0,
                            tasks(1 << 40, backlog, &payload),
                            EnqueueMode::FailFast,
                            &mut fx,
                        )
                        .expect("fits");
                    }
                    q.add_consumer(ConsumerId(1), "bench".into(), String::new(), false, 0);
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
