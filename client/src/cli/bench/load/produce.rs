//! The producers' side of the load: the backlog filled first, then each
//! producer's share sent over Enqueue calls or a Publish stream, every
//! payload stamped with its header (see the parent module).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_client::Client;
use sluice_client::proto::{EnqueueMode, NewTask, PublishRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{BenchArgs, HEADER, Shared, flatten};
use crate::cli::exit::Failure;

/// The producer number the backlog's tasks carry.
fn backlog_producer(args: &BenchArgs) -> u32 {
    args.producers
}

/// Queues --backlog tasks before anyone consumes, round-robin over the
/// queues, in large batches.
pub(super) async fn fill(
    client: &Client,
    queues: &[String],
    args: &BenchArgs,
) -> Result<(), Failure> {
    const BATCH: u64 = 1000;
    let producer = backlog_producer(args);
    let mut calls = JoinSet::new();
    let mut seq = 0u64;
    let mut call = 0usize;
    while seq < args.backlog {
        while calls.len() >= 4 {
            if let Some(r) = calls.join_next().await {
                flatten(r)?;
            }
        }
        let n = BATCH.min(args.backlog - seq);
        let tasks = (seq..seq + n)
            .map(|i| NewTask {
                payload: payload(args.payload, 0, producer, i),
                group: group(args, i),
                ..Default::default()
            })
            .collect();
        seq += n;
        let queue = queues[call % queues.len()].clone();
        call += 1;
        let client = client.clone();
        calls.spawn(async move {
            client
                .enqueue(&queue, tasks, EnqueueMode::Wait, None)
                .await?;
            Ok(())
        });
    }
    while let Some(r) = calls.join_next().await {
        flatten(r)?;
    }
    Ok(())
}

/// What one producer sends: its part of --tasks, or all it can until
/// --duration passes (then `deadline` is set and `tasks` unused).
struct Share {
    tasks: u64,
    deadline: Option<Instant>,
}

impl Share {
    fn of(args: &BenchArgs, producer: u32, shared: &Shared) -> Share {
        let n = u64::from(args.producers);
        Share {
            tasks: args.tasks / n + u64::from(u64::from(producer) < args.tasks % n),
            deadline: args.duration.map(|d| shared.start + d),
        }
    }

    /// The size of the batch starting at task `seq`: `batch`, or what is
    /// left of a count.
    fn batch_at(&self, seq: u64, batch: u64) -> u64 {
        match self.deadline {
            Some(_) => batch,
            None => batch.min(self.tasks - seq),
        }
    }

    /// Whether task `seq` is still to be sent.
    fn more(&self, seq: u64) -> bool {
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => seq < self.tasks,
        }
    }
}

/// Sends this producer's share: --tasks / --producers tasks, or until
/// --duration passes.
pub(super) async fn produce(
    client: Client,
    queues: Vec<String>,
    producer: u32,
    args: BenchArgs,
    shared: Arc<Shared>,
) -> Result<(), Failure> {
    let share = Share::of(&args, producer, &shared);
    let more = |seq: u64| share.more(seq);
    let batch = match (args.rate, args.mode) {
        (Some(_), _) | (None, crate::cli::bench::ProducerMode::Single) => 1,
        _ => u64::from(args.batch),
    };
    // Latency mode: each producer sends its part of --rate, paced per tick.
    let per_sec = args.rate.map(|r| r as f64 / f64::from(args.producers));
    let mut in_flight: JoinSet<Result<(), Failure>> = JoinSet::new();
    let limit = if per_sec.is_some() {
        1024
    } else {
        args.pipeline as usize
    };
    let mut seq = 0u64;
    let mut call = 0u64;
    let started = Instant::now();
    while more(seq) {
        if let Some(rate) = per_sec {
            // Send what is due by now; sleep until the next one is.
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            if seq >= due {
                let next = Duration::from_secs_f64((seq + 1) as f64 / rate);
                tokio::time::sleep_until(started + next).await;
                continue;
            }
        }
        while in_flight.len() >= limit {
            if let Some(r) = in_flight.join_next().await {
                flatten(r)?;
            }
        }
        let n = share.batch_at(seq, batch);
        let mut tasks = Vec::with_capacity(n as usize);
        let now = shared.micros();
        for i in 0..n {
            tasks.push(NewTask {
                payload: payload(args.payload, now, producer, seq + i),
                group: group(&args, seq + i),
                ..Default::default()
            });
        }
        seq += n;
        let queue = queues[((u64::from(producer) + call) % queues.len() as u64) as usize].clone();
        call += 1;
        let client = client.clone();
        let shared = Arc::clone(&shared);
        in_flight.spawn(async move {
            let t = Instant::now();
            client
                .enqueue(&queue, tasks, EnqueueMode::Wait, None)
                .await?;
            shared
                .enqueue_wait_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            shared.sent.fetch_add(n, Ordering::SeqCst);
            Ok(())
        });
    }
    while let Some(r) = in_flight.join_next().await {
        flatten(r)?;
    }
    Ok(())
}

/// A producer on a Publish stream: frames of exactly --batch tasks (one,
/// with --rate), sent while credit lasts, up to --window unconfirmed; a
/// task counts as sent once its frame is confirmed. Frames are not merged
/// (unlike the client library's Publisher): this measures the broker's
/// cost per frame, as an outside client sending one task per message sees.
pub(super) async fn publish(
    client: Client,
    queues: Vec<String>,
    producer: u32,
    args: BenchArgs,
    shared: Arc<Shared>,
) -> Result<(), Failure> {
    let share = Share::of(&args, producer, &shared);
    let more = |seq: u64| share.more(seq);
    let batch = if args.rate.is_some() {
        1
    } else {
        u64::from(args.batch)
    };
    let per_sec = args.rate.map(|r| r as f64 / f64::from(args.producers));
    let queue = queues[producer as usize % queues.len()].clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let first = PublishRequest {
        queue,
        window: args.window,
        ..Default::default()
    };
    let closed = || Failure::Refused("the publish stream closed".into());
    tx.send(first).map_err(|_| closed())?;
    let mut inbound = client
        .raw()
        .publish(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| Failure::Refused(format!("publish: {s}")))?
        .into_inner();
    let (mut credit, mut seq, mut unconfirmed) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    loop {
        // Paced: the moment the next task is due (None: as fast as credit
        // allows).
        let due_at = per_sec.map(|rate| started + Duration::from_secs_f64((seq + 1) as f64 / rate));
        let due = due_at.is_none_or(|at| Instant::now() >= at);
        if more(seq) && due {
            let n = share.batch_at(seq, batch);
            if credit >= n {
                let now = shared.micros();
                let tasks = (0..n)
                    .map(|i| NewTask {
                        payload: payload(args.payload, now, producer, seq + i),
                        group: group(&args, seq + i),
                        ..Default::default()
                    })
                    .collect();
                tx.send(PublishRequest {
                    tasks,
                    ..Default::default()
                })
                .map_err(|_| closed())?;
                credit -= n;
                seq += n;
                unconfirmed += n;
                continue;
            }
        }
        if !more(seq) && unconfirmed == 0 {
            break;
        }
        let waited = Instant::now();
        let frame = tokio::select! {
            m = inbound.message() => Some(m),
            _ = sleep_until_opt(due_at), if more(seq) && !due => None,
        };
        shared
            .enqueue_wait_us
            .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
        match frame {
            Some(Ok(Some(r))) => {
                credit += r.credit;
                let n = r.confirmed_ids.len() as u64;
                unconfirmed = unconfirmed.saturating_sub(n);
                shared.sent.fetch_add(n, Ordering::SeqCst);
            }
            Some(Ok(None)) => {
                return Err(Failure::Refused(
                    "the broker ended the publish stream".into(),
                ));
            }
            Some(Err(s)) => return Err(Failure::Refused(format!("publish: {s}"))),
            None => {}
        }
    }
    // Half-close; the broker ends the stream once all is confirmed.
    drop(tx);
    while let Some(r) = inbound
        .message()
        .await
        .map_err(|s| Failure::Refused(format!("publish: {s}")))?
    {
        shared
            .sent
            .fetch_add(r.confirmed_ids.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) fn payload(size: usize, now_us: u64, producer: u32, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(now_us);
    b.put_u32_le(producer);
    b.put_u64_le(seq);
    b.resize(size.max(HEADER), 0);
    b.freeze()
}

/// The group of a producer's task `n` with --groups (none without).
fn group(args: &BenchArgs, n: u64) -> String {
    match args.groups {
        0 => String::new(),
        g => format!("g{}", n % g),
    }
}
