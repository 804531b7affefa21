//! The load: producers enqueue tasks stamped with when and by whom they
//! were sent; consumers take them over Consume streams, ack each one, and
//! record latency, redeliveries and which tasks they saw.
//!
//! A task's payload starts with a 20-byte header: enqueue time (µs since the
//! run began, u64 LE), producer (u32 LE), sequence (u64 LE). Producer and
//! consumer share one process and one clock, so latencies need no clock sync.
//!
//! This file runs the load and gathers what it measured; `produce` and
//! `consume` are the two sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use sluice_client::Client;
use sluice_client::proto::QueueOptions;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod consume;
mod produce;
mod schedules;

use consume::{consume, opened, serves, subscribe};
use produce::{fill, produce, publish};

pub use schedules::{Ticks, run as run_schedules};

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
    /// Schedules mode: the ticks.
    pub schedules: Option<Ticks>,
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
    /// Deliveries of scheduled tasks (`x-sluice-schedule` set).
    ticks: Vec<TickDelivery>,
}

/// One delivery of a schedule's task, as the consumer saw it.
#[derive(Debug, Clone)]
pub(super) struct TickDelivery {
    pub schedule: String,
    /// `x-sluice-tick`, RFC 3339 in UTC.
    pub tick: String,
    pub task_id: String,
    pub enqueued_at_unix_ms: u64,
}

impl Record {
    fn new() -> Self {
        Record {
            delivery: histogram(),
            ack: histogram(),
            seen: Seen::default(),
            redeliveries: 0,
            ticks: Vec::new(),
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
            max_in_flight: args.max_in_flight,
            max_in_flight_per_group: args.max_in_flight_per_group,
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

    // Consumers first, so the first task finds them subscribed.
    let streams = open_streams(&client, &queues, args).await?;

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
        schedules: None,
    })
}

/// Opens every consumer's stream on the queues it serves, many at a time
/// (10,000 queues means 10,000 streams).
async fn open_streams(
    client: &Client,
    queues: &[String],
    args: &BenchArgs,
) -> Result<Vec<consume::Stream>, Failure> {
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
    Ok(streams)
}

fn flatten(r: Result<Result<(), Failure>, tokio::task::JoinError>) -> Result<(), Failure> {
    r.map_err(|e| Failure::Refused(format!("enqueue task failed: {e}")))?
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
    use super::consume::header;
    use super::produce::payload;
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
