//! The bench's report: a table for people, JSON for machines. A run that
//! lost or duplicated a task fails (exit 1) after printing, so scripts and
//! CI can rely on the exit code.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::BenchArgs;
use super::load::{Outcome, Ticks};
use crate::cli::exit::Failure;

pub fn print(
    args: &BenchArgs,
    real: &Outcome,
    base: Option<&Outcome>,
    as_json: bool,
) -> Result<(), Failure> {
    if as_json {
        let mut v = json!({
            "config": config(args),
            "sluice": outcome(real),
        });
        if let Some(b) = base {
            v["baseline"] = outcome(b);
            v["ratio_to_baseline"] = json!(real.tasks_per_sec() / b.tasks_per_sec().max(1e-9));
        }
        super::super::print_json(&v)?;
    } else {
        let mut text = format!("{}\n", describe(args));
        text.push_str(&table(real));
        if let Some(b) = base {
            text.push('\n');
            text.push_str(&table(b));
            text.push_str(&format!(
                "\nsluice / baseline: {:.0}% of the gRPC ceiling\n",
                100.0 * real.tasks_per_sec() / b.tasks_per_sec().max(1e-9)
            ));
        }
        super::super::print(&text)?;
    }
    for o in std::iter::once(real).chain(base) {
        if o.lost > 0 || o.duplicates > 0 {
            return Err(Failure::Refused(format!(
                "{}: {} tasks lost, {} duplicates",
                o.label, o.lost, o.duplicates
            )));
        }
    }
    Ok(())
}

fn describe(a: &BenchArgs) -> String {
    if let Some(n) = a.schedules {
        return format!(
            "schedules mode: {n} schedule(s) every {} on one {} queue, for {}, {} consumer(s) with credit {}",
            humantime::format_duration(a.every),
            if a.durable { "durable" } else { "in-memory" },
            humantime::format_duration(a.duration.unwrap_or_default()),
            a.consumers,
            a.credit
        );
    }
    let amount = match a.duration {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => format!("{} tasks", a.tasks),
    };
    let pace = match a.rate {
        Some(r) => format!("latency mode at {r} tasks/s"),
        None => "throughput mode".into(),
    };
    let producing = match a.mode {
        super::ProducerMode::Publish => format!(
            "Publish, {} per frame, window {}",
            if a.rate.is_some() { 1 } else { a.batch },
            a.window
        ),
        super::ProducerMode::Single => format!("Enqueue, 1 per call, pipeline {}", a.pipeline),
        super::ProducerMode::Enqueue => {
            format!("Enqueue, batch {}, pipeline {}", a.batch, a.pipeline)
        }
    };
    format!(
        "{pace}: {amount} of {} B, {} producer(s) ({producing}), {} consumer(s) with credit {}, {} queue(s)",
        a.payload, a.producers, a.consumers, a.credit, a.queues
    )
}

fn config(a: &BenchArgs) -> Value {
    json!({
        "tasks": a.tasks,
        "duration_s": a.duration.map(|d| d.as_secs_f64()),
        "payload_bytes": a.payload,
        "queues": a.queues,
        "producers": a.producers,
        "consumers": a.consumers,
        "credit": a.credit,
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "batch": a.batch,
        "pipeline": a.pipeline,
        "window": a.window,
        "rate": a.rate,
        "spawn": a.spawn,
        "durable": a.durable,
        "fsync": a.durable.then(|| a.fsync.clone()),
        "schedules": a.schedules,
        "every_s": a.schedules.map(|_| a.every.as_secs_f64()),
    })
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

fn outcome(o: &Outcome) -> Value {
    let mut v = json!({
        "sent": o.sent,
        "acked": o.acked,
        "elapsed_s": o.elapsed.as_secs_f64(),
        "tasks_per_s": o.tasks_per_sec(),
        "mb_per_s": mb_per_sec(o),
        "enqueue_to_delivery": percentiles(&o.delivery),
        "enqueue_to_ack": percentiles(&o.ack),
        "producer_wait_s": o.enqueue_wait.as_secs_f64(),
        "redeliveries": o.redeliveries,
        "duplicates": o.duplicates,
        "lost": o.lost,
        "broker_cpu_s": o.usage.map(|u| u.cpu.as_secs_f64()),
        "broker_peak_rss_bytes": o.usage.map(|u| u.peak_rss),
        "backlog": o.backlog,
        "broker_rss_after_backlog_bytes": o.backlog_rss,
        "broker_idle_cpu_share": o.idle_cpu,
        "recovery_s": o.recovery.map(|d| d.as_secs_f64()),
    });
    if let Some(t) = &o.schedules {
        v["schedules"] = ticks(t);
    }
    v
}

fn ticks(t: &Ticks) -> Value {
    json!({
        "schedules": t.schedules,
        "every_s": t.every.as_secs_f64(),
        "ticks_expected": t.expected,
        "ticks_received_of_expected": t.received_to_end,
        "fired": t.fired,
        "missed": t.missed,
        "failed": t.failed,
        "tasks_received": t.received,
        "distinct_ticks": t.distinct,
        "duplicates": t.duplicates,
        "tick_to_enqueue": percentiles(&t.lateness),
    })
}

fn mb_per_sec(o: &Outcome) -> f64 {
    o.tasks_per_sec() * o.payload as f64 / 1e6
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn table(o: &Outcome) -> String {
    let row = |name: &str, h: &Histogram<u64>| {
        format!(
            "  {name:<20} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        )
    };
    let usage = match o.usage {
        Some(u) => format!(
            "{:.2} s CPU, peak RSS {:.1} MB",
            u.cpu.as_secs_f64(),
            u.peak_rss as f64 / 1e6
        ),
        None => "n/a (not local: use --spawn or --broker-pid)".into(),
    };
    if let Some(t) = &o.schedules {
        return ticks_table(o, t, &usage);
    }
    let mut s = format!(
        "{}: {} acked of {} sent in {:.2} s = {:.0} tasks/s, {:.1} MB/s\n",
        o.label,
        o.acked,
        o.sent,
        o.elapsed.as_secs_f64(),
        o.tasks_per_sec(),
        mb_per_sec(o)
    );
    s.push_str(&format!(
        "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
    ));
    s.push_str(&row("enqueue -> delivery", &o.delivery));
    s.push_str(&row("enqueue -> ack", &o.ack));
    s.push_str(&format!(
        "  broker: {usage}\n  redeliveries {}, duplicates {}, lost {}; producers spent {:.2} s in Enqueue calls\n",
        o.redeliveries,
        o.duplicates,
        o.lost,
        o.enqueue_wait.as_secs_f64()
    ));
    if o.backlog > 0 {
        let rss = o
            .backlog_rss
            .map_or("n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6));
        s.push_str(&format!(
            "  backlog: {} tasks queued first; broker peak RSS then {rss}\n",
            o.backlog
        ));
    }
    if let Some(d) = o.recovery {
        s.push_str(&format!(
            "  recovery: killed with {} tasks queued, serving again after {:.2} s\n",
            o.backlog,
            d.as_secs_f64()
        ));
    }
    if let Some(share) = o.idle_cpu {
        s.push_str(&format!(
            "  idle: broker used {:.2}% of a core with everything subscribed and idle\n",
            share * 100.0
        ));
    }
    s
}

/// Lateness comes from `enqueued_at_unix_ms`, in whole milliseconds: shown
/// as such, not as the histogram's bucket edge (6 ms, not 6.003).
fn whole_ms(us: u64) -> u64 {
    us / 1000
}

fn ticks_table(o: &Outcome, t: &Ticks, usage: &str) -> String {
    let h = &t.lateness;
    format!(
        "{}: {} ticks expected, {} of them received; {} fired in all (pausing takes a while), {} missed, {} failed; {} tasks received, {} distinct ticks, {} acked in {:.2} s\n\
         \x20 {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}\n\
         \x20 {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}\n\
         \x20 broker: {usage}\n\
         \x20 redeliveries {}, duplicates {}, lost {}\n",
        o.label,
        t.expected,
        t.received_to_end,
        t.fired,
        t.missed,
        t.failed,
        t.received,
        t.distinct,
        o.acked,
        o.elapsed.as_secs_f64(),
        "lateness (ms)",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "tick -> enqueued",
        whole_ms(h.value_at_quantile(0.5)),
        whole_ms(h.value_at_quantile(0.9)),
        whole_ms(h.value_at_quantile(0.99)),
        whole_ms(h.value_at_quantile(0.999)),
        whole_ms(h.max()),
        o.redeliveries,
        o.duplicates,
        o.lost,
    )
}
