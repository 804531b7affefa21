//! Prometheus metrics on `--metrics-listen`: `GET /metrics` renders the
//! broker's state at the moment of the scrape (queues, consumers, the log,
//! process memory) in the text exposition format. Nothing is counted twice:
//! the figures are the engine's and the log's own counters.
//!
//! Names follow Prometheus conventions: `sluice_` prefix, base units
//! (bytes, seconds), `_total` for counters, one label `queue`.

use std::fmt::Write;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::cluster::proposer::Current;

/// Serves `/metrics` on `listener` until `shutdown`.
/// With `cluster`, the member's replication too.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    cluster: Option<Current>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
        };
        let broker = broker.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let broker = broker.clone();
                let cluster = cluster.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(render(&broker, cluster.as_ref()))))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    resp.map_err(|e| e.to_string())
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One metric family: its help, type and samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

/// A member's replication: Raft's metrics now, and the member's counts.
fn cluster_families(broker: &Broker, c: &Current) -> Vec<Family> {
    use std::sync::atomic::Ordering::Relaxed;
    let st = c.stats();
    let mut out = vec![
        single(
            "sluice_cluster_leader",
            "1 while this member leads (and serves).",
            "gauge",
            if broker.serving() { 1.0 } else { 0.0 },
        ),
        single(
            "sluice_cluster_leader_changes_total",
            "Times the leader this member knows of changed.",
            "counter",
            st.leader_changes.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_log_entries",
            "Raft log entries held in memory: those since the last purge behind a snapshot.",
            "gauge",
            st.log_entries.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_log_bytes",
            "Bytes of the Raft log entries held in memory.",
            "gauge",
            st.log_bytes.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_snapshots_built_total",
            "Snapshots this member built.",
            "counter",
            st.snapshots_built.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_snapshots_installed_total",
            "Snapshots this member installed from a leader.",
            "counter",
            st.snapshots_installed.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_last_snapshot_bytes",
            "Size of the last snapshot built or installed.",
            "gauge",
            st.last_snapshot_bytes.load(Relaxed) as f64,
        ),
        single(
            "sluice_cluster_last_snapshot_build_seconds",
            "How long building and syncing the last snapshot took.",
            "gauge",
            st.last_snapshot_build_micros.load(Relaxed) as f64 / 1e6,
        ),
    ];
    let Some(raft) = c.get() else {
        return out;
    };
    let m = raft.metrics().borrow().clone();
    let last = m.last_log_index.unwrap_or(0);
    out.extend([
        single(
            "sluice_cluster_term",
            "Raft term.",
            "gauge",
            m.current_term as f64,
        ),
        single(
            "sluice_cluster_last_log_index",
            "Index of the last entry in this member's log.",
            "gauge",
            last as f64,
        ),
        single(
            "sluice_cluster_applied_index",
            "Index of the last entry applied to the queues here.",
            "gauge",
            m.last_applied.map_or(0, |l| l.index) as f64,
        ),
        single(
            "sluice_cluster_snapshot_index",
            "Index the last snapshot covers.",
            "gauge",
            m.snapshot.map_or(0, |l| l.index) as f64,
        ),
    ]);
    if let Some(r) = &m.replication {
        out.push(Family {
            name: "sluice_cluster_follower_lag_entries",
            help: "On the leader: entries of its log a member has not yet matched.",
            kind: "gauge",
            samples: r
                .iter()
                .map(|(id, matched)| {
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    (format!("{{node=\"{id}\"}}"), lag as f64)
                })
                .collect(),
        });
    }
    out
}

/// A family of one sample, without labels.
fn single(name: &'static str, help: &'static str, kind: &'static str, v: f64) -> Family {
    Family {
        name,
        help,
        kind,
        samples: vec![(String::new(), v)],
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A hold's reason as metrics label it.
fn hold_name(h: &crate::engine::Hold) -> &'static str {
    use crate::engine::Hold;
    match h {
        Hold::Paused => "paused",
        Hold::Throttled { .. } => "throttled",
        Hold::InFlightCap => "in_flight_cap",
        Hold::RateLimited { .. } => "rate_limited",
        Hold::GroupsHeld => "groups_held",
        Hold::NoCredit => "no_credit",
    }
}

/// The text exposition of the broker now.
pub fn render(broker: &Broker, cluster: Option<&Current>) -> String {
    let queues = broker.queues();
    let mut fams: Vec<Family> = Vec::new();
    let mut per_queue = |name: &'static str,
                         help: &'static str,
                         kind: &'static str,
                         f: &dyn Fn(&crate::engine::QueueStats) -> u64| {
        let samples = queues
            .iter()
            .map(|q| {
                let (s, _) = q.snapshot();
                (format!("{{queue=\"{}\"}}", escape(q.name())), f(&s) as f64)
            })
            .collect();
        fams.push(Family {
            name,
            help,
            kind,
            samples,
        });
    };
    per_queue(
        "sluice_queue_ready_tasks",
        "Tasks that can be delivered now.",
        "gauge",
        &|s| s.ready,
    );
    per_queue(
        "sluice_queue_delayed_tasks",
        "Tasks waiting for their time (delay or retry backoff).",
        "gauge",
        &|s| s.delayed,
    );
    per_queue(
        "sluice_queue_retrying_tasks",
        "Delayed tasks waiting out a retry backoff.",
        "gauge",
        &|s| s.retrying,
    );
    per_queue(
        "sluice_queue_leased_tasks",
        "Tasks held by consumers.",
        "gauge",
        &|s| s.leased,
    );
    per_queue(
        "sluice_queue_payload_bytes",
        "Payload bytes of unfinished tasks.",
        "gauge",
        &|s| s.payload_bytes,
    );
    per_queue(
        "sluice_queue_waiting_producers",
        "Enqueue calls waiting for space.",
        "gauge",
        &|s| s.waiting_producers,
    );
    per_queue(
        "sluice_queue_consumers",
        "Consumers (streams and waiting Get calls).",
        "gauge",
        &|s| s.consumers,
    );
    per_queue(
        "sluice_queue_credit",
        "Credit granted by consumers and not yet spent.",
        "gauge",
        &|s| s.credit,
    );
    per_queue(
        "sluice_queue_publishers",
        "Publish streams.",
        "gauge",
        &|s| s.publishers,
    );
    per_queue(
        "sluice_queue_enqueued_tasks_total",
        "Tasks stored.",
        "counter",
        &|s| s.enqueued_total,
    );
    per_queue(
        "sluice_queue_delivered_tasks_total",
        "Deliveries, redeliveries included.",
        "counter",
        &|s| s.delivered_total,
    );
    per_queue(
        "sluice_queue_acked_tasks_total",
        "Tasks acked.",
        "counter",
        &|s| s.acked_total,
    );
    per_queue(
        "sluice_queue_nacked_tasks_total",
        "Nacks received.",
        "counter",
        &|s| s.nacked_total,
    );
    per_queue(
        "sluice_queue_expired_leases_total",
        "Leases that reached their deadline unsettled.",
        "counter",
        &|s| s.expired_total,
    );
    per_queue(
        "sluice_queue_dead_tasks_total",
        "Tasks dead-lettered or dropped.",
        "counter",
        &|s| s.dead_total,
    );
    per_queue(
        "sluice_queue_purged_tasks_total",
        "Tasks removed by purge.",
        "counter",
        &|s| s.purged_total,
    );
    per_queue(
        "sluice_queue_groups",
        "Fairness groups with unfinished tasks (tasks without a group count as one).",
        "gauge",
        &|s| s.groups,
    );
    per_queue(
        "sluice_queue_groups_held",
        "Groups with ready tasks held at their in-flight cap or by a throttle. Groups \
         themselves are not labels: their names come from clients and are unbounded.",
        "gauge",
        &|s| s.groups_held,
    );
    // Why each queue holds its ready tasks back now: one sample per queue
    // and reason, 1 while it applies.
    let reasons = [
        "paused",
        "throttled",
        "in_flight_cap",
        "rate_limited",
        "groups_held",
        "no_credit",
    ];
    let mut held = Vec::new();
    for q in &queues {
        let holds = q.view(0).holds;
        for reason in reasons {
            let on = holds.iter().any(|h| hold_name(h) == reason);
            held.push((
                format!("{{queue=\"{}\",reason=\"{reason}\"}}", escape(q.name())),
                if on { 1.0 } else { 0.0 },
            ));
        }
    }
    fams.push(Family {
        name: "sluice_queue_held",
        help: "1 while this reason holds the queue's ready tasks back (sluice stats says the same).",
        kind: "gauge",
        samples: held,
    });

    fams.push(single(
        "sluice_queues",
        "Queues.",
        "gauge",
        queues.len() as f64,
    ));
    fams.push(single(
        "sluice_payload_bytes",
        "Payload bytes of the unfinished tasks of all queues.",
        "gauge",
        queues
            .iter()
            .map(|q| q.snapshot().0.payload_bytes)
            .sum::<u64>() as f64,
    ));
    fams.push(single(
        "sluice_memory_bytes",
        "Bytes counted against --max-memory-bytes: payloads, headers, keys and job ids of \
         tasks, remembered idempotency keys, and jobs.",
        "gauge",
        broker.held_bytes() as f64,
    ));
    let schedules = broker.schedules();
    let (running, paused) = schedules.by_state();
    fams.push(Family {
        name: "sluice_schedules",
        help: "Schedules, by state.",
        kind: "gauge",
        samples: vec![
            ("{state=\"running\"}".into(), running as f64),
            ("{state=\"paused\"}".into(), paused as f64),
        ],
    });
    let ran = &schedules.ran;
    fams.push(Family {
        name: "sluice_schedule_ticks_total",
        help: "Schedule ticks this broker handled since it started, by result: fired (task \
               stored), failed (queue full until the next tick, deleted, budget), missed \
               (found later than their grace and not caught up).",
        kind: "counter",
        samples: [
            ("fired", &ran.fired),
            ("failed", &ran.failed),
            ("missed", &ran.missed),
        ]
        .into_iter()
        .map(|(r, n)| {
            (
                format!("{{result=\"{r}\"}}"),
                n.load(std::sync::atomic::Ordering::Relaxed) as f64,
            )
        })
        .collect(),
    });
    if let Some(log) = broker.log() {
        let s = log.stats();
        fams.push(single(
            "sluice_log_bytes",
            "Bytes of the write-ahead log on disk.",
            "gauge",
            s.total_bytes as f64,
        ));
        fams.push(single(
            "sluice_log_stopped",
            "1 when the log stopped taking writes after a failed fdatasync (restart needed).",
            "gauge",
            if s.stopped { 1.0 } else { 0.0 },
        ));
        fams.push(single(
            "sluice_log_free_bytes",
            "Free space the log may still use (disk or --max-disk-bytes), as last measured.",
            "gauge",
            log.free_bytes() as f64,
        ));
        fams.push(single(
            "sluice_log_segments",
            "Segment files of the log.",
            "gauge",
            s.segments as f64,
        ));
        fams.push(single(
            "sluice_log_records_written_total",
            "Records written to the log.",
            "counter",
            s.records_written as f64,
        ));
        fams.push(single(
            "sluice_log_written_bytes_total",
            "Bytes written to the log.",
            "counter",
            s.bytes_written as f64,
        ));
        fams.push(single(
            "sluice_log_writes_total",
            "Group-commit writes (one per group of appends).",
            "counter",
            s.batches as f64,
        ));
        fams.push(single(
            "sluice_log_fsyncs_total",
            "fdatasync calls.",
            "counter",
            s.fsyncs as f64,
        ));
        fams.push(single(
            "sluice_log_last_fsync_seconds",
            "Duration of the last fdatasync.",
            "gauge",
            s.last_fsync.as_secs_f64(),
        ));
        fams.push(single(
            "sluice_log_write_errors_total",
            "Log writes that failed.",
            "counter",
            s.write_errors as f64,
        ));
    }
    if let Some(c) = cluster {
        fams.extend(cluster_families(broker, c));
    }
    if let Some(rss) = resident_bytes() {
        fams.push(single(
            "sluice_process_resident_memory_bytes",
            "Resident memory of the broker.",
            "gauge",
            rss as f64,
        ));
    }

    let mut out = String::new();
    let mut histogram = |name: &str, help: &str, h: &crate::latency::Snapshot| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, n) in crate::latency::BOUNDS.iter().zip(&h.cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count {}", h.count);
    };
    histogram(
        "sluice_enqueue_wait_seconds",
        "How long Enqueue calls took to store their tasks, waiting for space included.",
        &broker.enqueue_wait(),
    );
    if let Some(log) = broker.log() {
        let s = log.stats();
        histogram(
            "sluice_log_write_seconds",
            "Duration of group-commit writes.",
            &s.write_latency,
        );
        histogram(
            "sluice_log_fsync_seconds",
            "Duration of fdatasync calls.",
            &s.fsync_latency,
        );
    }
    if let Some(c) = cluster {
        histogram(
            "sluice_cluster_commit_seconds",
            "From a proposal to its commit (written and synced on a majority) and apply here.",
            &c.stats().commit.snapshot(),
        );
    }
    for f in fams {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{}{} {}", f.name, labels, v);
        }
    }
    out
}

/// Resident set size from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
