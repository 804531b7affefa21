//! Schedules mode (`--schedules N`): N interval schedules on one queue,
//! the bench's consumers acking each tick's task, and what arrived
//! compared with what the schedules' interval and the broker's counts say
//! should have.
//!
//! A tick's task carries `x-sluice-schedule` and `x-sluice-tick`; a tick
//! delivered under two task ids is a duplicate (a redelivery keeps its
//! id). Lateness is the task's `enqueued_at_unix_ms` minus its tick, both
//! by the broker's clock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use sluice_client::Client;
use sluice_client::proto::{QueueOptions, ScheduleSpec, ScheduledTask};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Record, Shared, TickDelivery, consume, histogram, open_streams, progress};
use crate::cli::bench::BenchArgs;
use crate::cli::exit::Failure;

/// What a schedules run measured, beside the common [`Outcome`] fields.
#[derive(Debug)]
pub struct Ticks {
    /// Schedules created.
    pub schedules: u32,
    pub every: Duration,
    /// Ticks due from each schedule's creation to the end of --duration
    /// (the last tick at least [`SETTLED`] before the schedules are
    /// paused), by its interval.
    pub expected: u64,
    /// Distinct ticks delivered of those expected (at or before the end).
    pub received_to_end: u64,
    /// Ticks the broker counts as fired, missed and failed (ListSchedules,
    /// once the schedules are paused).
    pub fired: u64,
    pub missed: u64,
    pub failed: u64,
    /// Deliveries of scheduled tasks (redeliveries included).
    pub received: u64,
    /// Distinct (schedule, tick) pairs delivered.
    pub distinct: u64,
    /// Ticks delivered under more than one task id: one per extra id.
    pub duplicates: u64,
    /// Tick -> enqueued, µs, once per distinct tick (its first task).
    pub lateness: Histogram<u64>,
}

/// Schedule calls made at a time.
const AT_ONCE: usize = 64;

/// The end of the run is the last tick this long before the schedules are
/// paused: ticks up to it have fired unless late by as much (pausing 1,000
/// schedules takes a while, and ticks go on meanwhile).
const SETTLED: Duration = Duration::from_millis(250);

/// Runs schedules mode against `url`.
pub async fn run(url: &str, args: &BenchArgs, label: &'static str) -> Result<Outcome, Failure> {
    let n = args.schedules.unwrap_or(0);
    let duration = args.duration.unwrap_or_default();
    let every_ms = args.every.as_millis() as u64;
    let client = Client::connect(url).await?;
    let pid = std::process::id();
    let queue = format!("bench-{label}-{pid}-schedules");
    let options = QueueOptions {
        capacity: args.capacity,
        durable: args.durable,
        max_in_flight: args.max_in_flight,
        max_in_flight_per_group: args.max_in_flight_per_group,
        ..Default::default()
    };
    client.create_queue(&queue, options).await?;
    let streams = open_streams(&client, std::slice::from_ref(&queue), args).await?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent: AtomicU64::new(0),
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

    let names: Vec<String> = (0..n).map(|i| format!("bench-{pid}-{i}")).collect();
    let made = each(&client, &names, |client, name| {
        let spec = ScheduleSpec {
            name,
            queue: queue.clone(),
            every_ms,
            task: Some(ScheduledTask::default()),
            ..ScheduleSpec::default()
        };
        async move {
            client.create_schedule(spec, false).await?;
            Ok(())
        }
    })
    .await;
    if let Err(e) = made {
        stop.cancel();
        cleanup(&client, &names, &queue).await;
        return Err(e);
    }

    tokio::time::sleep(duration).await;
    let end_ms = {
        let now = unix_ms().saturating_sub(SETTLED.as_millis() as u64);
        now - now % every_ms.max(1)
    };
    // Paused, a schedule fires no more: its counts are then final.
    let paused = each(&client, &names, |client, name| async move {
        client.pause_schedule(&name).await?;
        Ok(())
    })
    .await;
    let infos = match paused {
        Ok(()) => client
            .list_schedules(Some(&queue))
            .await
            .map_err(Failure::from),
        Err(e) => Err(e),
    };
    let infos = match infos {
        Ok(i) => i,
        Err(e) => {
            stop.cancel();
            cleanup(&client, &names, &queue).await;
            return Err(e);
        }
    };
    let mine: HashMap<&str, ()> = names.iter().map(|n| (n.as_str(), ())).collect();
    let (mut expected, mut fired, mut missed, mut failed) = (0, 0, 0, 0);
    for info in &infos {
        let Some(spec) = &info.spec else { continue };
        if !mine.contains_key(spec.name.as_str()) {
            continue;
        }
        expected += ticks_between(info.created_at_unix_ms, end_ms, every_ms);
        fired += info.fired;
        missed += info.missed;
        failed += info.failed;
    }
    shared.sent.store(fired, Ordering::SeqCst);

    // Every fired tick's task acked, or the settle timeout.
    let settle_end = Instant::now() + args.settle_timeout;
    while shared.acked.load(Ordering::SeqCst) < fired && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = shared.start.elapsed();
    shared.producers_done.store(true, Ordering::SeqCst);
    stop.cancel();
    progress.abort();

    let mut total = Record::new();
    while let Some(r) = consumers.join_next().await {
        let rec = match r {
            Ok(Ok(rec)) => rec,
            Ok(Err(e)) => return Err(Failure::Refused(format!("consumer failed: {e}"))),
            Err(e) => return Err(Failure::Refused(format!("consumer failed: {e}"))),
        };
        total.redeliveries += rec.redeliveries;
        total.ticks.extend(rec.ticks);
    }
    cleanup(&client, &names, &queue).await;
    let tally = tally(&total.ticks, end_ms)?;
    Ok(Outcome {
        label,
        sent: fired,
        acked: shared.acked.load(Ordering::SeqCst),
        elapsed,
        payload: 0,
        delivery: histogram(),
        ack: histogram(),
        redeliveries: total.redeliveries,
        duplicates: tally.duplicates,
        lost: fired.saturating_sub(tally.distinct),
        enqueue_wait: Duration::ZERO,
        usage: None,
        backlog: 0,
        backlog_rss: None,
        idle_cpu: None,
        recovery: None,
        schedules: Some(Ticks {
            schedules: n,
            every: args.every,
            expected,
            received_to_end: tally.to_end,
            fired,
            missed,
            failed,
            received: tally.received,
            distinct: tally.distinct,
            duplicates: tally.duplicates,
            lateness: tally.lateness,
        }),
    })
}

/// Runs `f` for every name, [`AT_ONCE`] at a time; the first error.
async fn each<F, Fut>(client: &Client, names: &[String], f: F) -> Result<(), Failure>
where
    F: Fn(Client, String) -> Fut,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut first_error = None;
    let mut note = |r: Result<Result<(), Failure>, tokio::task::JoinError>| {
        let e = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => Failure::Refused(format!("schedule call failed: {e}")),
        };
        first_error.get_or_insert(e);
    };
    for name in names {
        while running.len() >= AT_ONCE {
            if let Some(r) = running.join_next().await {
                note(r);
            }
        }
        running.spawn(f(client.clone(), name.clone()));
    }
    while let Some(r) = running.join_next().await {
        note(r);
    }
    first_error.map_or(Ok(()), Err)
}

/// Deletes the bench's schedules and queue; what fails is left behind.
async fn cleanup(client: &Client, names: &[String], queue: &str) {
    let _ = each(client, names, |client, name| async move {
        client.delete_schedule(&name).await?;
        Ok(())
    })
    .await;
    let _ = client.delete_queue(queue, false).await;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ticks of an `every_ms` schedule (multiples of it since the epoch) after
/// `from_ms` and at or before `to_ms`.
fn ticks_between(from_ms: u64, to_ms: u64, every_ms: u64) -> u64 {
    if every_ms == 0 {
        return 0;
    }
    (to_ms / every_ms).saturating_sub(from_ms / every_ms)
}

/// Deliveries counted.
#[derive(Debug)]
struct Tally {
    received: u64,
    distinct: u64,
    /// Distinct ticks at or before the end.
    to_end: u64,
    duplicates: u64,
    lateness: Histogram<u64>,
}

fn tally(deliveries: &[TickDelivery], end_ms: u64) -> Result<Tally, Failure> {
    // (schedule, tick) -> task ids seen, and the first one's lateness.
    let mut ticks: HashMap<(&str, &str), (Vec<&str>, u64)> = HashMap::new();
    let mut to_end = 0;
    for d in deliveries {
        let tick = humantime::parse_rfc3339(&d.tick).map_err(|e| {
            Failure::Refused(format!(
                "schedule {}: x-sluice-tick {:?} is not RFC 3339: {e}",
                d.schedule, d.tick
            ))
        })?;
        let tick_ms = tick
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let late_us = d.enqueued_at_unix_ms.saturating_sub(tick_ms) * 1000;
        let (ids, _) = ticks
            .entry((d.schedule.as_str(), d.tick.as_str()))
            .or_insert_with(|| {
                to_end += u64::from(tick_ms <= end_ms);
                (Vec::new(), late_us)
            });
        if !ids.contains(&d.task_id.as_str()) {
            ids.push(d.task_id.as_str());
        }
    }
    let mut lateness = histogram();
    let mut duplicates = 0;
    for (ids, late_us) in ticks.values() {
        duplicates += ids.len() as u64 - 1;
        let _ = lateness.record((*late_us).max(1));
    }
    Ok(Tally {
        received: deliveries.len() as u64,
        distinct: ticks.len() as u64,
        to_end,
        duplicates,
        lateness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(schedule: &str, tick: &str, id: &str, enqueued_at_unix_ms: u64) -> TickDelivery {
        TickDelivery {
            schedule: schedule.into(),
            tick: tick.into(),
            task_id: id.into(),
            enqueued_at_unix_ms,
        }
    }

    #[test]
    fn ticks_between_counts_the_grid_after_creation() {
        // Created at 10.5 s, ended at 13.0 s, every second: 11, 12, 13.
        assert_eq!(ticks_between(10_500, 13_000, 1_000), 3);
        assert_eq!(ticks_between(10_000, 10_999, 1_000), 0);
        assert_eq!(ticks_between(0, 59_999, 30_000), 1);
        assert_eq!(ticks_between(5, 4, 1_000), 0);
    }

    #[test]
    fn a_tick_under_two_ids_is_a_duplicate_a_redelivery_is_not() {
        // 2026-12-01T00:00:01Z = 1796083201000 ms.
        let t1 = "2026-12-01T00:00:01Z";
        let t2 = "2026-12-01T00:00:02Z";
        let at = 1_796_083_201_000;
        let ds = [
            delivery("a", t1, "id1", at + 3),
            delivery("a", t1, "id1", at + 3), // redelivered: same id
            delivery("a", t1, "id9", at + 500), // another task for the tick
            delivery("b", t1, "id2", at + 7),
            delivery("a", t2, "id3", at + 1_002),
        ];
        let t = tally(&ds, at).expect("valid ticks");
        assert_eq!(t.received, 5);
        assert_eq!(t.distinct, 3);
        assert_eq!(t.to_end, 2);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.lateness.max(), t.lateness.highest_equivalent(7_000));
        assert!(tally(&[delivery("a", "yesterday", "x", 0)], at).is_err());
    }
}
