//! The load: producers enqueue tasks stamped with when and by whom they
//! were sent; consumers take them over Consume streams, ack each one, and
//! record latency, redeliveries and which tasks they saw.
//!
//! A task's payload starts with a 20-byte header: enqueue time (µs since the
//! run began, u64 LE), producer (u32 LE), sequence (u64 LE). Producer and
//! consumer share one process and one clock, so latencies need no clock sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use sluice_client::Client;
use sluice_client::proto::{
    AckItem, ConsumeRequest, EnqueueMode, LeaseRef, NewTask, PublishRequest, QueueOptions,
    Subscribe,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;

use super::BenchArgs;
use super::spawn::Usage;
use crate::cli::exit::Failure;

/// Bytes of the bench's header at the start of every payload.
pub const HEADER: usize = 20;

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub label: &'static str,
    pub sent: u64,
    pub acked: u64,
    pub elapsed: Duration,
    pub payload: usize,
    /// Enqueue -> delivery, µs.
    pub delivery: Histogram<u64>,
    /// Enqueue -> ack sent, µs.
    pub ack: Histogram<u64>,
    pub redeliveries: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Time producers spent waiting in Enqueue calls, summed.
    pub enqueue_wait: Duration,
    pub usage: Option<Usage>,
    /// Tasks queued before the measured run (included in sent and acked).
    pub backlog: u64,
    /// Broker's peak memory right after the backlog was queued.
    pub backlog_rss: Option<u64>,
    /// Broker CPU use while everything was held idle, as a share of one core.
    pub idle_cpu: Option<f64>,
    /// Time from SIGKILL to serving again on the same data.
    pub recovery: Option<Duration>,
}

impl Outcome {
    pub fn with_usage(mut self, usage: Option<Usage>) -> Self {
        self.usage = usage;
        self
    }

    pub fn tasks_per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Seen (producer, seq) pairs, as one growable bitset per producer.
#[derive(Default, Clone)]
struct Seen {
    bits: Vec<Vec<u64>>,
    dups: u64,
}

impl Seen {
    fn insert(&mut self, producer: u32, seq: u64) {
        let p = producer as usize;
        if self.bits.len() <= p {
            self.bits.resize(p + 1, Vec::new());
        }
        let words = &mut self.bits[p];
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        if words[w] & (1 << b) != 0 {
            self.dups += 1;
        }
        words[w] |= 1 << b;
    }

    /// Adds another consumer's sightings; a task seen by both is a duplicate.
    fn merge(&mut self, other: Seen) {
        self.dups += other.dups;
        for (p, words) in other.bits.into_iter().enumerate() {
            if self.bits.len() <= p {
                self.bits.resize(p + 1, Vec::new());
            }
            let mine = &mut self.bits[p];
            if mine.len() < words.len() {
                mine.resize(words.len(), 0);
            }
            for (m, o) in mine.iter_mut().zip(words) {
                self.dups += u64::from((*m & o).count_ones());
                *m |= o;
            }
        }
    }

    fn count(&self) -> u64 {
        self.bits
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// One consumer's records.
struct Record {
    delivery: Histogram<u64>,
    ack: Histogram<u64>,
    seen: Seen,
    redeliveries: u64,
}

impl Record {
    fn new() -> Self {
        Record {
            delivery: histogram(),
            ack: histogram(),
            seen: Seen::default(),
            redeliveries: 0,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

struct Shared {
    start: Instant,
    sent: AtomicU64,
    acked: AtomicU64,
    producers_done: AtomicBool,
    enqueue_wait_us: AtomicU64,
}

impl Shared {
    /// Never 0: a 0 stamp marks a backlog task.
    fn micros(&self) -> u64 {
        (self.start.elapsed().as_micros() as u64).max(1)
    }
}

/// Queue names of a run; `label` keeps a real and a baseline run apart.
fn queue_names(args: &BenchArgs, label: &str) -> Vec<String> {
    let pid = std::process::id();
    (0..args.queues)
        .map(|q| format!("bench-{label}-{pid}-{q}"))
        .collect()
}

/// Runs the load once against `url`.
pub async fn run(
    url: &str,
    args: &BenchArgs,
    label: &'static str,
    target: &mut super::spawn::Target,
) -> Result<Outcome, Failure> {
    let mut client = Client::connect(url).await?;
    let queues = queue_names(args, label);
    let backlog_per_queue = args.backlog.div_ceil(u64::from(args.queues));
    for q in &queues {
        let options = QueueOptions {
            // Room for the backlog plus what producers have in flight.
            capacity: args.capacity.max(
                backlog_per_queue
                    + u64::from(args.producers)
                        * u64::from(args.batch * args.pipeline).max(u64::from(args.window)),
            ),
            durable: args.durable,
            ..Default::default()
        };
        client.create_queue(q, options).await?;
    }
    if args.backlog > 0 {
        fill(&client, &queues, args).await?;
    }
    let backlog_rss = if args.backlog > 0 {
        target.usage().map(|u| u.peak_rss)
    } else {
        None
    };
    let recovery = if args.measure_recovery {
        let took = target.crash_and_restart().await?;
        client = Client::connect(url).await?;
        Some(took)
    } else {
        None
    };

    // Consumers first, so the first task finds them subscribed; many at a
    // time (10,000 queues means 10,000 streams).
    let mut streams = Vec::new();
    let mut opening = JoinSet::new();
    for c in 0..args.consumers {
        for (q, name) in queues.iter().enumerate() {
            if serves(c, q as u32, args) {
                while opening.len() >= 64 {
                    if let Some(r) = opening.join_next().await {
                        streams.push(opened(r)?);
                    }
                }
                let (client, name, credit) = (client.clone(), name.clone(), args.credit);
                opening.spawn(async move { subscribe(&client, &name, c, credit).await });
            }
        }
    }
    while let Some(r) = opening.join_next().await {
        streams.push(opened(r)?);
    }

    let idle_cpu = match args.idle {
        Some(d) => {
            let before = target.usage();
            tokio::time::sleep(d).await;
            match (before, target.usage()) {
                (Some(a), Some(b)) => {
                    Some((b.cpu.saturating_sub(a.cpu)).as_secs_f64() / d.as_secs_f64())
                }
                _ => None,
            }
        }
        None => None,
    };

    // The clock starts now: setup is not part of the figures.
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent: AtomicU64::new(args.backlog),
        acked: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
        enqueue_wait_us: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let mut consumers = JoinSet::new();
    for stream in streams {
        consumers.spawn(consume(stream, Arc::clone(&shared), stop.clone()));
    }
    let progress = tokio::spawn(progress(Arc::clone(&shared), stop.clone(), label));
    let mut producers = JoinSet::new();
    for p in 0..args.producers {
        let (client, queues, args, shared) = (
            client.clone(),
            queues.clone(),
            args.clone(),
            Arc::clone(&shared),
        );
        if args.mode == super::ProducerMode::Publish {
            producers.spawn(publish(client, queues, p, args, shared));
        } else {
            producers.spawn(produce(client, queues, p, args, shared));
        }
    }
    let mut first_error = None;
    while let Some(r) = producers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Failure::Refused(format!("producer failed: {e}")));
            }
        }
    }
    shared.producers_done.store(true, Ordering::SeqCst);
    if let Some(e) = first_error {
        stop.cancel();
        return Err(e);
    }

    // Wait for every sent task to be acked, or the settle timeout.
    let sent = shared.sent.load(Ordering::SeqCst);
    let settle_end = Instant::now() + args.settle_timeout;
    while shared.acked.load(Ordering::SeqCst) < sent && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = shared.start.elapsed();
    stop.cancel();
    progress.abort();

    let mut total = Record::new();
    while let Some(r) = consumers.join_next().await {
        let Ok(Ok(rec)) = r else {
            return Err(Failure::Refused(match r {
                Ok(Err(e)) => format!("consumer failed: {e}"),
                Err(e) => format!("consumer failed: {e}"),
                Ok(Ok(_)) => "consumer failed".into(),
            }));
        };
        let _ = total.delivery.add(&rec.delivery);
        let _ = total.ack.add(&rec.ack);
        total.redeliveries += rec.redeliveries;
        total.seen.merge(rec.seen);
    }
    let unique = total.seen.count();
    for q in &queues {
        let _ = client.delete_queue(q, false).await;
    }
    Ok(Outcome {
        label,
        sent,
        acked: shared.acked.load(Ordering::SeqCst),
        elapsed,
        payload: args.payload,
        delivery: total.delivery,
        ack: total.ack,
        redeliveries: total.redeliveries,
        duplicates: total.seen.dups,
        lost: sent.saturating_sub(unique),
        enqueue_wait: Duration::from_micros(shared.enqueue_wait_us.load(Ordering::SeqCst)),
        usage: None,
        backlog: args.backlog,
        backlog_rss,
        idle_cpu,
        recovery,
    })
}

/// The producer number the backlog's tasks carry.
fn backlog_producer(args: &BenchArgs) -> u32 {
    args.producers
}

/// Queues --backlog tasks before anyone consumes, round-robin over the
/// queues, in large batches.
async fn fill(client: &Client, queues: &[String], args: &BenchArgs) -> Result<(), Failure> {
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

/// Which queues consumer `c` serves: its share when there are more queues
/// than consumers, otherwise one queue each, several consumers per queue.
fn serves(c: u32, q: u32, args: &BenchArgs) -> bool {
    if args.queues >= args.consumers {
        q % args.consumers == c
    } else {
        q == c % args.queues
    }
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
}

/// Sends this producer's share: --tasks / --producers tasks, or until
/// --duration passes.
async fn produce(
    client: Client,
    queues: Vec<String>,
    producer: u32,
    args: BenchArgs,
    shared: Arc<Shared>,
) -> Result<(), Failure> {
    let Share {
        tasks: share,
        deadline,
    } = Share::of(&args, producer, &shared);
    let more = |seq: u64| match deadline {
        Some(d) => Instant::now() < d,
        None => seq < share,
    };
    let batch = match (args.rate, args.mode) {
        (Some(_), _) | (None, super::ProducerMode::Single) => 1,
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
        let n = match deadline {
            Some(_) => batch,
            None => batch.min(share - seq),
        };
        let mut tasks = Vec::with_capacity(n as usize);
        let now = shared.micros();
        for i in 0..n {
            tasks.push(NewTask {
                payload: payload(args.payload, now, producer, seq + i),
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
async fn publish(
    client: Client,
    queues: Vec<String>,
    producer: u32,
    args: BenchArgs,
    shared: Arc<Shared>,
) -> Result<(), Failure> {
    let Share {
        tasks: share,
        deadline,
    } = Share::of(&args, producer, &shared);
    let more = |seq: u64| match deadline {
        Some(d) => Instant::now() < d,
        None => seq < share,
    };
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
            let n = match deadline {
                Some(_) => batch,
                None => batch.min(share - seq),
            };
            if credit >= n {
                let now = shared.micros();
                let tasks = (0..n)
                    .map(|i| NewTask {
                        payload: payload(args.payload, now, producer, seq + i),
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

fn opened(r: Result<Result<Stream, Failure>, tokio::task::JoinError>) -> Result<Stream, Failure> {
    r.map_err(|e| Failure::Refused(format!("subscribe task failed: {e}")))?
}

fn flatten(r: Result<Result<(), Failure>, tokio::task::JoinError>) -> Result<(), Failure> {
    r.map_err(|e| Failure::Refused(format!("enqueue task failed: {e}")))?
}

fn payload(size: usize, now_us: u64, producer: u32, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(now_us);
    b.put_u32_le(producer);
    b.put_u64_le(seq);
    b.resize(size.max(HEADER), 0);
    b.freeze()
}

fn header(p: &[u8]) -> Option<(u64, u32, u64)> {
    let t = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let producer = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(12..20)?.try_into().ok()?);
    Some((t, producer, seq))
}

struct Stream {
    tx: mpsc::Sender<ConsumeRequest>,
    rx: tonic::Streaming<sluice_client::proto::ConsumeResponse>,
}

async fn subscribe(client: &Client, queue: &str, c: u32, credit: u32) -> Result<Stream, Failure> {
    let (tx, rx) = mpsc::channel(64);
    let first = ConsumeRequest {
        subscribe: Some(Subscribe {
            queue: queue.to_owned(),
            consumer_name: format!("bench-{c}"),
        }),
        credit,
        ..Default::default()
    };
    let refused = |m: String| Failure::Refused(format!("subscribing to {queue}: {m}"));
    tx.send(first)
        .await
        .map_err(|_| refused("stream closed".into()))?;
    let mut rx = client
        .raw()
        .consume(ReceiverStream::new(rx))
        .await
        .map_err(|s| refused(s.message().to_owned()))?
        .into_inner();
    match rx.message().await {
        Ok(Some(r)) if r.subscribed.is_some() => Ok(Stream { tx, rx }),
        Ok(_) => Err(refused("no confirmation".into())),
        Err(s) => Err(refused(s.message().to_owned())),
    }
}

/// Takes deliveries, acks each one, and grants one credit per task acked,
/// in one frame per frame received.
async fn consume(
    mut s: Stream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Record, String> {
    let mut rec = Record::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            m = s.rx.message() => match m {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if stop.is_cancelled() || shared.producers_done.load(Ordering::SeqCst) {
                        break;
                    }
                    return Err(e.message().to_owned());
                }
            },
        };
        if frame.deliveries.is_empty() {
            continue;
        }
        let now = shared.micros();
        let mut acks = Vec::with_capacity(frame.deliveries.len());
        for d in &frame.deliveries {
            let Some(task) = &d.task else { continue };
            if let Some((t, producer, seq)) = header(&task.payload) {
                // Backlog tasks (t = 0) were queued before the clock started.
                if t > 0 {
                    let _ = rec.delivery.record(now.saturating_sub(t).max(1));
                }
                rec.seen.insert(producer, seq);
            }
            if d.attempt > 1 {
                rec.redeliveries += 1;
            }
            acks.push(AckItem {
                // On the stream that holds the lease, as the worker
                // runtime settles: no token needed.
                lease: Some(LeaseRef {
                    task_id: task.id.clone(),
                    attempt: d.attempt,
                    ..LeaseRef::default()
                }),
                result: Bytes::new(),
            });
        }
        let n = acks.len() as u32;
        let ack_time = shared.micros();
        for d in &frame.deliveries {
            if let Some((t, _, _)) = d.task.as_ref().and_then(|t| header(&t.payload))
                && t > 0
            {
                let _ = rec.ack.record(ack_time.saturating_sub(t).max(1));
            }
        }
        let reply = ConsumeRequest {
            acks,
            credit: n,
            ..Default::default()
        };
        if s.tx.send(reply).await.is_err() {
            break;
        }
        shared.acked.fetch_add(u64::from(n), Ordering::SeqCst);
    }
    Ok(rec)
}

/// One line a second on stderr when it is a terminal.
async fn progress(shared: Arc<Shared>, stop: CancellationToken, label: &str) {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return stop.cancelled().await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let acked = shared.acked.load(Ordering::Relaxed);
        let sent = shared.sent.load(Ordering::Relaxed);
        let _ = write!(
            std::io::stderr(),
            "\r{label}: {:>6.1}s  sent {sent:>10}  acked {acked:>10}  {:>9}/s   ",
            shared.start.elapsed().as_secs_f64(),
            acked - last
        );
        last = acked;
    }
    let _ = writeln!(std::io::stderr());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let p = payload(128, 42, 3, 7);
        assert_eq!(p.len(), 128);
        assert_eq!(header(&p), Some((42, 3, 7)));
        assert_eq!(header(&p[..10]), None);
    }

    #[test]
    fn seen_counts_duplicates_within_and_across_consumers() {
        let mut a = Seen::default();
        a.insert(0, 1);
        a.insert(0, 1);
        a.insert(1, 100);
        let mut b = Seen::default();
        b.insert(0, 1);
        b.insert(0, 2);
        a.merge(b);
        assert_eq!(a.dups, 2);
        assert_eq!(a.count(), 3);
    }
}
