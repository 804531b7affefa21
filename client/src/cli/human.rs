//! Human-readable output: aligned tables and queue summaries. Scripts should
//! use `--json`; this format may change.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use sluice_client::proto::{ConsumerInfo, GetBrokerInfoResponse, QueueInfo};

use super::json::{fsync_name, order_name};

/// A table whose columns are as wide as their widest cell, two spaces
/// apart, the last column unpadded.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's lines, each prefixed by `indent`.
    pub fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let cell = |r: &Vec<String>| r.get(c).map_or(0, |s| s.chars().count());
                self.rows.iter().map(cell).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A millisecond count for people: "-" for 0 (the proto's "none"),
/// "850ms", "12.5s", "3m 20s".
pub fn ms(ms: u64) -> String {
    match ms {
        0 => "-".to_owned(),
        1..=999 => format!("{ms}ms"),
        1_000..=59_999 => {
            let secs = format!("{:.1}", ms as f64 / 1000.0);
            format!("{}s", secs.strip_suffix(".0").unwrap_or(&secs))
        }
        _ => humantime::format_duration(Duration::from_secs(ms / 1000)).to_string(),
    }
}

/// "1 task", "5 tasks".
pub fn tasks(n: u64) -> String {
    if n == 1 {
        "1 task".to_owned()
    } else {
        format!("{n} tasks")
    }
}

/// A Unix-epoch millisecond timestamp as RFC 3339 (UTC, seconds).
pub fn timestamp(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `queue list`: one line per queue.
pub fn queue_list(queues: &[QueueInfo]) -> String {
    if queues.is_empty() {
        return "no queues\n".to_owned();
    }
    let mut table = Table::new(&[
        "NAME",
        "ORDER",
        "CAPACITY",
        "READY",
        "DELAYED",
        "LEASED",
        "UNFINISHED",
        "CONSUMERS",
    ]);
    for q in queues {
        let o = q.options.clone().unwrap_or_default();
        let s = q.stats.unwrap_or_default();
        table.row(vec![
            q.name.clone(),
            order_name(o.order).to_owned(),
            o.capacity.to_string(),
            s.ready.to_string(),
            s.delayed.to_string(),
            s.leased.to_string(),
            s.unfinished.to_string(),
            q.consumers.len().to_string(),
        ]);
    }
    table.render("")
}

/// `sluice info`: version and set-up, then the limits by the flag that
/// sets each.
pub fn broker_info(i: &GetBrokerInfoResponse) -> String {
    let mut out = format!("sluice-broker {} ({})\n", i.version, i.build);
    let storage = match fsync_name(i.fsync) {
        _ if i.in_memory => "in memory (durable queues refused)".to_owned(),
        Some("interval") => format!("write-ahead log, fsync every {}", ms(i.fsync_interval_ms)),
        Some(policy) => format!("write-ahead log, fsync {policy}"),
        None => "write-ahead log".to_owned(),
    };
    let tls = match (i.tls, i.tls_client_certificates) {
        (false, _) => "off",
        (true, false) => "on",
        (true, true) => "on, client certificates required",
    };
    let lines = [
        ("storage", storage),
        (
            "auth",
            if i.auth { "tokens required" } else { "open" }.to_owned(),
        ),
        ("tls", tls.to_owned()),
        ("features", i.features.join(" ")),
    ];
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<10}{value}");
    }
    let l = i.limits.unwrap_or_default();
    let none_if_0 = |n: u64| {
        if n == 0 {
            "none".to_owned()
        } else {
            n.to_string()
        }
    };
    out.push('\n');
    let mut table = Table::new(&["limit", "value"]);
    for (name, value) in [
        ("--max-payload-bytes", l.max_payload_bytes.to_string()),
        ("--max-memory-bytes", l.max_memory_bytes.to_string()),
        ("--max-queues", l.max_queues.to_string()),
        (
            "--max-consumers-per-queue",
            l.max_consumers_per_queue.to_string(),
        ),
        ("--max-consumers", l.max_consumers.to_string()),
        ("--max-credit", l.max_credit.to_string()),
        ("--max-batch", l.max_batch.to_string()),
        (
            "--max-streams-per-connection",
            l.max_streams_per_connection.to_string(),
        ),
        ("--max-disk-bytes", none_if_0(l.max_disk_bytes)),
        ("request bytes", l.max_request_bytes.to_string()),
        ("response bytes", l.max_response_bytes.to_string()),
        (
            "consume frame payload bytes",
            l.consume_frame_payload_bytes.to_string(),
        ),
    ] {
        table.row(vec![name.to_owned(), value]);
    }
    out.push_str(&table.render("  "));
    out
}

/// `queue show`: options, then what `stats` shows.
pub fn queue_show(q: &QueueInfo) -> String {
    let o = q.options.clone().unwrap_or_default();
    let mut out = format!("queue {}\n", q.name);
    let max_attempts = match o.max_attempts {
        Some(0) => "unlimited".to_owned(),
        Some(n) => n.to_string(),
        None => "-".to_owned(),
    };
    let dead_letter = if o.dead_letter.is_empty() {
        "- (dropped)".to_owned()
    } else {
        o.dead_letter.clone()
    };
    let lines = [
        ("created", timestamp(q.created_at_unix_ms)),
        ("order", order_name(o.order).to_owned()),
        ("capacity", o.capacity.to_string()),
        ("ack deadline", ms(o.ack_deadline_ms)),
        ("max attempts", max_attempts),
        ("retry backoff", retry_policy(&o)),
        ("dead letter", dead_letter),
        ("durable", if o.durable { "yes" } else { "no" }.to_owned()),
    ];
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<13}{value}");
    }
    out.push_str(&stats_body(q));
    out
}

/// "1s x2 up to 5m", or "none" when failed tasks are ready again at once.
fn retry_policy(o: &sluice_client::proto::QueueOptions) -> String {
    match o.retry_initial_ms {
        None | Some(0) => "none (ready again at once)".to_owned(),
        Some(initial) => format!(
            "{} x{} up to {}, jittered",
            ms(initial),
            o.retry_multiplier,
            ms(o.retry_max_ms)
        ),
    }
}

/// `stats`: depths, counters and the consumers table of one queue.
pub fn queue_stats(q: &QueueInfo) -> String {
    format!("queue {}\n{}", q.name, stats_body(q))
}

fn stats_body(q: &QueueInfo) -> String {
    let s = q.stats.unwrap_or_default();
    let mut out = String::new();
    let lines = [
        (
            "depth",
            format!(
                "{} ready, {} delayed ({} retrying), {} leased ({} unfinished)",
                s.ready, s.delayed, s.retrying, s.leased, s.unfinished
            ),
        ),
        (
            "capacity",
            format!(
                "{} ({} waiting now)",
                s.capacity,
                s.ready.saturating_add(s.delayed)
            ),
        ),
        (
            "producers",
            format!(
                "{} waiting for space ({} tasks)",
                s.waiting_producers, s.waiting_tasks
            ),
        ),
        (
            "consumers",
            format!("{} (unspent credit {})", s.consumers, s.credit),
        ),
        (
            "totals",
            format!(
                "{} enqueued, {} delivered, {} acked, {} nacked, {} expired, {} dead, {} purged",
                s.enqueued_total,
                s.delivered_total,
                s.acked_total,
                s.nacked_total,
                s.expired_total,
                s.dead_total,
                s.purged_total
            ),
        ),
    ];
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<13}{value}");
    }
    if !q.consumers.is_empty() {
        out.push('\n');
        out.push_str(&consumers(&q.consumers).render("  "));
    }
    out
}

fn consumers(list: &[ConsumerInfo]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "CREDIT",
        "IN FLIGHT",
        "DELIVERED",
        "ACKED",
        "NACKED",
        "MEAN TIME",
        "OLDEST LEASE",
    ]);
    for c in list {
        table.row(vec![
            c.id.clone(),
            if c.name.is_empty() { "-" } else { &c.name }.to_owned(),
            c.credit.to_string(),
            c.in_flight.to_string(),
            c.delivered.to_string(),
            c.acked.to_string(),
            c.nacked.to_string(),
            ms(c.mean_processing_ms),
            ms(c.oldest_lease_age_ms),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::proto::{QueueOptions, QueueStats};

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "BB", "C"]);
        t.row(vec!["long".into(), "1".into(), "x".into()]);
        assert_eq!(t.render(""), "A     BB  C\nlong  1   x\n");
    }

    #[test]
    fn milliseconds_for_people() {
        assert_eq!(ms(0), "-");
        assert_eq!(ms(850), "850ms");
        assert_eq!(ms(12_500), "12.5s");
        assert_eq!(ms(30_000), "30s");
        assert_eq!(ms(200_000), "3m 20s");
    }

    #[test]
    fn task_counts() {
        assert_eq!(tasks(0), "0 tasks");
        assert_eq!(tasks(1), "1 task");
        assert_eq!(tasks(2), "2 tasks");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn stats_show_consumers() {
        let q = QueueInfo {
            name: "jobs".into(),
            options: Some(QueueOptions::default()),
            stats: Some(QueueStats {
                ready: 3,
                capacity: 10,
                ..QueueStats::default()
            }),
            consumers: vec![ConsumerInfo {
                id: "c1".into(),
                name: "host/1".into(),
                mean_processing_ms: 12,
                ..ConsumerInfo::default()
            }],
            created_at_unix_ms: 0,
        };
        let text = queue_stats(&q);
        assert!(text.starts_with("queue jobs\n"));
        assert!(text.contains("3 ready, 0 delayed (0 retrying), 0 leased"));
        assert!(text.contains("c1"));
        assert!(text.contains("12ms"));
        assert!(queue_list(&[]).contains("no queues"));
        assert!(
            queue_list(&[q])
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("jobs"))
        );
    }
}
