//! Human-readable output: aligned tables and queue summaries. Scripts should
//! use `--json`; this format may change.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_client::proto::{
    ConsumerInfo, GetBrokerInfoResponse, GroupInfo, Hold, HoldReason, QueueInfo, QueueOptions,
    QueueStats, RateLimit, ScheduleInfo, ScheduleSpec,
};

use super::json::{fsync_name, order_name};

/// Width of the labels of a queue's `label  value` lines (the longest,
/// "retry backoff" and "max in flight", plus two spaces).
const LABEL: usize = 15;

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

/// How far `unix_ms` is from `now`, to the second and in its two largest
/// units: "in 4h 2m", "in 12s", "3s ago", "now".
pub fn relative(unix_ms: u64, now: u64) -> String {
    let (ahead, gap) = if unix_ms >= now {
        (true, unix_ms - now)
    } else {
        (false, now - unix_ms)
    };
    let secs = gap.saturating_add(500) / 1000;
    if secs == 0 {
        return "now".to_owned();
    }
    let full = humantime::format_duration(Duration::from_secs(secs)).to_string();
    let short = full.split(' ').take(2).collect::<Vec<_>>().join(" ");
    if ahead {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

/// A moment as RFC 3339 (UTC, seconds) and how far off it is:
/// "2026-12-01T03:00:00Z (in 4h 2m)"; "-" for 0 (the proto's "none").
pub fn moment(unix_ms: u64, now: u64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    format!("{} ({})", timestamp(unix_ms), relative(unix_ms, now))
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
        let s = q.stats.clone().unwrap_or_default();
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

/// `schedule list`: one line per schedule.
pub fn schedule_list(schedules: &[ScheduleInfo]) -> String {
    schedule_list_at(schedules, now_ms())
}

fn schedule_list_at(schedules: &[ScheduleInfo], now: u64) -> String {
    if schedules.is_empty() {
        return "no schedules\n".to_owned();
    }
    let mut table = Table::new(&[
        "NAME", "QUEUE", "WHEN", "NEXT", "LAST", "RESULT", "STATE", "FIRED", "MISSED", "FAILED",
    ]);
    for s in schedules {
        let spec = s.spec.clone().unwrap_or_default();
        let result = match (s.last_error.as_str(), s.last_task_id.as_str()) {
            ("", "") => "-".to_owned(),
            ("", id) => id.to_owned(),
            (error, _) => format!("failed: {error}"),
        };
        table.row(vec![
            spec.name.clone(),
            spec.queue.clone(),
            schedule_when(&spec),
            moment(s.next_tick_unix_ms, now),
            moment(s.last_tick_unix_ms, now),
            result.replace(['\n', '\r'], " "),
            schedule_state(s).to_owned(),
            s.fired.to_string(),
            s.missed.to_string(),
            s.failed.to_string(),
        ]);
    }
    table.render("")
}

/// When a schedule ticks: "0 3 * * * (Europe/Paris)", "@hourly (UTC)",
/// "every 30s".
pub fn schedule_when(spec: &ScheduleSpec) -> String {
    if spec.cron.is_empty() {
        return format!("every {}", ms(spec.every_ms));
    }
    let zone = if spec.time_zone.is_empty() {
        "UTC"
    } else {
        &spec.time_zone
    };
    format!("{} ({zone})", spec.cron)
}

/// "running" or "paused".
pub fn schedule_state(s: &ScheduleInfo) -> &'static str {
    if s.paused { "paused" } else { "running" }
}

/// What comes next for a schedule, after `created schedule NAME: ` and the
/// like: "next tick 2026-12-01T03:00:00Z (in 4h 2m)", or why there is none.
pub fn schedule_next(s: &ScheduleInfo) -> String {
    schedule_next_at(s, now_ms())
}

fn schedule_next_at(s: &ScheduleInfo, now: u64) -> String {
    let name = s.spec.as_ref().map_or("", |spec| spec.name.as_str());
    if s.paused {
        return format!("paused, no tick fires until `sluice schedule resume {name}`");
    }
    if s.next_tick_unix_ms == 0 {
        // A cron expression with no date to come (30 February).
        return "running, but its expression matches no time to come".to_owned();
    }
    format!("next tick {}", moment(s.next_tick_unix_ms, now))
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
        ("--max-schedules", l.max_schedules.to_string()),
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

/// `queue show`: options, then what `stats` shows, then the groups with
/// ready tasks.
pub fn queue_show(q: &QueueInfo) -> String {
    queue_show_at(q, now_ms())
}

fn queue_show_at(q: &QueueInfo, now: u64) -> String {
    let mut out = format!("queue {}\n", q.name);
    let _ = writeln!(
        out,
        "  {:<LABEL$}{}",
        "created",
        timestamp(q.created_at_unix_ms)
    );
    out.push_str(&options_lines(&q.options.clone().unwrap_or_default()));
    out.push_str(&stats_body(q, now));
    if !q.groups.is_empty() {
        out.push('\n');
        out.push_str(&groups(&q.groups, now).render("  "));
        let all = q.stats.as_ref().map_or(0, |s| s.groups);
        let shown = q.groups.len() as u64;
        if all > shown {
            let _ = writeln!(
                out,
                "  ({shown} groups with ready tasks shown, most ready first; {all} with unfinished tasks)"
            );
        }
    }
    out
}

/// `queue update`: the queue's options now.
pub fn queue_updated(q: &QueueInfo) -> String {
    format!(
        "updated queue {}\n{}",
        q.name,
        options_lines(&q.options.clone().unwrap_or_default())
    )
}

/// A queue's options, a `label  value` line each.
fn options_lines(o: &QueueOptions) -> String {
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
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let lines = [
        ("order", order_name(o.order).to_owned()),
        ("capacity", o.capacity.to_string()),
        ("ack deadline", ms(o.ack_deadline_ms)),
        ("max attempts", max_attempts),
        ("retry backoff", retry_policy(o)),
        ("dead letter", dead_letter),
        ("durable", yes_no(o.durable)),
        ("max in flight", cap(o.max_in_flight, "leased at once")),
        ("rate limit", rate_limit(o.rate_limit.as_ref())),
        (
            "group cap",
            cap(o.max_in_flight_per_group, "leased per group"),
        ),
        ("paused", yes_no(o.paused)),
    ];
    let mut out = String::new();
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<LABEL$}{value}");
    }
    out
}

/// "50 leased at once", or "no cap" for 0.
fn cap(n: u64, what: &str) -> String {
    if n == 0 {
        "no cap".to_owned()
    } else {
        format!("{n} {what}")
    }
}

/// "10/s, burst 20", "5/500ms, burst 1", or "none".
pub fn rate_limit(r: Option<&RateLimit>) -> String {
    match r {
        Some(r) if r.tasks > 0 => {
            let per_ms = if r.per_ms == 0 { 1000 } else { r.per_ms };
            format!("{}/{}, burst {}", r.tasks, period(per_ms), r.burst.max(1))
        }
        _ => "none".to_owned(),
    }
}

/// A rate's period as `--rate` takes it: "s", "2s", "m", "90s", "500ms".
fn period(ms: u64) -> String {
    for (unit_ms, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ] {
        if ms.is_multiple_of(unit_ms) {
            return match ms / unit_ms {
                1 => unit.to_owned(),
                n => format!("{n}{unit}"),
            };
        }
    }
    format!("{ms}ms")
}

/// "1s x2 up to 5m", or "none" when failed tasks are ready again at once.
fn retry_policy(o: &QueueOptions) -> String {
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

/// `stats`: depths, counters, flow control and the consumers table of
/// one queue.
pub fn queue_stats(q: &QueueInfo) -> String {
    queue_stats_at(q, now_ms())
}

fn queue_stats_at(q: &QueueInfo, now: u64) -> String {
    let mut out = format!("queue {}\n", q.name);
    // `queue show` lists every option; stats names the flow limits, which
    // explain what it shows held.
    if let Some(limits) = flow_limits(&q.options.clone().unwrap_or_default()) {
        let _ = writeln!(out, "  {:<LABEL$}{limits}", "limits");
    }
    out.push_str(&stats_body(q, now));
    out
}

/// "at most 50 leased, 10/s (burst 20), at most 5 leased per group", or
/// None when the queue has none of these limits.
fn flow_limits(o: &QueueOptions) -> Option<String> {
    let mut parts = Vec::new();
    if o.max_in_flight > 0 {
        parts.push(format!("at most {} leased", o.max_in_flight));
    }
    if o.rate_limit.as_ref().is_some_and(|r| r.tasks > 0) {
        parts.push(rate_limit(o.rate_limit.as_ref()));
    }
    if o.max_in_flight_per_group > 0 {
        parts.push(format!(
            "at most {} leased per group",
            o.max_in_flight_per_group
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn stats_body(q: &QueueInfo, now: u64) -> String {
    let o = q.options.clone().unwrap_or_default();
    let s = q.stats.clone().unwrap_or_default();
    let mut out = String::new();
    let mut lines = vec![
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
        ("delivery", delivery(&o, &s, now)),
    ];
    if s.groups > 0 {
        lines.push(("groups", format!("{} ({} held)", s.groups, s.groups_held)));
    }
    lines.push((
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
    ));
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<LABEL$}{value}");
    }
    if !q.consumers.is_empty() {
        out.push('\n');
        out.push_str(&consumers(&q.consumers).render("  "));
    }
    out
}

/// Whether the queue delivers, and if not why: every hold the broker
/// reported ("paused; no consumer credit"). A pause or throttle is named
/// even while nothing is ready (the broker reports holds only then).
fn delivery(o: &QueueOptions, s: &QueueStats, now: u64) -> String {
    let held = |r: HoldReason| s.holds.iter().any(|h| h.reason == r as i32);
    let mut reasons = Vec::new();
    if o.paused && !held(HoldReason::Paused) {
        reasons.push("paused".to_owned());
    }
    if s.throttled_until_unix_ms > now && !held(HoldReason::Throttled) {
        reasons.push(throttled(s.throttled_until_unix_ms, now));
    }
    reasons.extend(s.holds.iter().map(|h| hold(h, o, s, now)));
    match reasons.is_empty() {
        false => reasons.join("; "),
        true if s.ready > 0 => "delivering".to_owned(),
        true => "nothing ready".to_owned(),
    }
}

/// One reason a queue holds its ready tasks back, for people.
fn hold(h: &Hold, o: &QueueOptions, s: &QueueStats, now: u64) -> String {
    match HoldReason::try_from(h.reason) {
        Ok(HoldReason::Paused) => "paused".to_owned(),
        Ok(HoldReason::Throttled) => throttled(h.until_unix_ms, now),
        Ok(HoldReason::InFlightCap) => format!("in-flight cap reached ({})", o.max_in_flight),
        Ok(HoldReason::RateLimited) if h.until_unix_ms > now => {
            format!("rate limited, next token in {}", ms(h.until_unix_ms - now))
        }
        Ok(HoldReason::RateLimited) => "rate limited".to_owned(),
        Ok(HoldReason::GroupsHeld) => {
            format!("groups held ({} at cap or throttled)", s.groups_held)
        }
        Ok(HoldReason::NoCredit) => "no consumer credit".to_owned(),
        // A reason from a newer broker: say there is one.
        Ok(HoldReason::Unspecified) | Err(_) => format!("held (reason {})", h.reason),
    }
}

/// "throttled until 12:34:56.789Z (in 3.2s)".
fn throttled(until_unix_ms: u64, now: u64) -> String {
    format!("throttled until {}", clock(until_unix_ms, now))
}

/// A moment within the next day: its UTC time of day to the millisecond
/// and how far off it is, "12:34:56.789Z (in 3.2s)".
fn clock(unix_ms: u64, now: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let full = humantime::format_rfc3339_millis(at).to_string();
    let time = full.split_once('T').map_or(full.as_str(), |(_, t)| t);
    match unix_ms.saturating_sub(now) {
        0 => format!("{time} (now)"),
        left => format!("{time} (in {})", ms(left)),
    }
}

/// The groups table of `queue show`.
fn groups(list: &[GroupInfo], now: u64) -> Table {
    let mut table = Table::new(&["GROUP", "READY", "LEASED", "DELAYED", "THROTTLED", "AT CAP"]);
    for g in list {
        table.row(vec![
            if g.name.is_empty() {
                "(default)".to_owned()
            } else {
                g.name.clone()
            },
            g.ready.to_string(),
            g.leased.to_string(),
            g.delayed.to_string(),
            if g.throttled_until_unix_ms > now {
                format!("until {}", clock(g.throttled_until_unix_ms, now))
            } else {
                "-".to_owned()
            },
            if g.at_cap { "yes" } else { "-" }.to_owned(),
        ]);
    }
    table
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    use super::super::parse;
    use super::*;

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
            groups: Vec::new(),
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

    #[test]
    fn rates_read_as_the_flag_takes_them() {
        let r = |tasks, per_ms, burst| RateLimit {
            tasks,
            per_ms,
            burst,
        };
        assert_eq!(rate_limit(Some(&r(10, 1000, 20))), "10/s, burst 20");
        assert_eq!(rate_limit(Some(&r(10, 0, 0))), "10/s, burst 1");
        assert_eq!(rate_limit(Some(&r(5, 500, 1))), "5/500ms, burst 1");
        assert_eq!(rate_limit(Some(&r(600, 60_000, 1))), "600/m, burst 1");
        assert_eq!(rate_limit(Some(&r(1, 90_000, 1))), "1/90s, burst 1");
        assert_eq!(rate_limit(Some(&r(3, 7_200_000, 1))), "3/2h, burst 1");
        assert_eq!(rate_limit(Some(&r(0, 1000, 1))), "none");
        assert_eq!(rate_limit(None), "none");
        // Every period printed parses back to itself.
        for per_ms in [
            1, 500, 1000, 1500, 2000, 60_000, 90_000, 3_600_000, 86_400_000,
        ] {
            let text = format!("7/{}", period(per_ms));
            assert_eq!(
                parse::rate(&text),
                Ok(Some(parse::Rate { tasks: 7, per_ms })),
                "{text}"
            );
        }
    }

    const NOW: u64 = 1_700_000_000_000; // 22:13:20.000 UTC

    #[test]
    fn relative_times_to_the_second() {
        const AT: u64 = 1_700_000_000_000;
        assert_eq!(relative(AT + 12_000, AT), "in 12s");
        assert_eq!(relative(AT + 12_400, AT), "in 12s");
        assert_eq!(relative(AT - 3_000, AT), "3s ago");
        assert_eq!(relative(AT + 300, AT), "now");
        assert_eq!(relative(AT, AT), "now");
        // Two units at most: the largest say enough.
        assert_eq!(
            relative(AT + (4 * 3600 + 2 * 60 + 13) * 1000, AT),
            "in 4h 2m"
        );
        assert_eq!(relative(AT + 3_600_000, AT), "in 1h");
        assert_eq!(relative(AT - 90_061_000, AT), "1day 1h ago");
        assert_eq!(moment(0, AT), "-");
        assert_eq!(
            moment(AT + 14_520_000, AT),
            "2023-11-15T02:15:20Z (in 4h 2m)"
        );
    }

    fn schedule(name: &str, spec: ScheduleSpec, info: ScheduleInfo) -> ScheduleInfo {
        ScheduleInfo {
            spec: Some(ScheduleSpec {
                name: name.into(),
                queue: "q".into(),
                ..spec
            }),
            ..info
        }
    }

    #[test]
    fn schedule_list_reads_as_a_table() {
        assert_eq!(schedule_list_at(&[], NOW), "no schedules\n");
        let list = [
            schedule(
                "nightly",
                ScheduleSpec {
                    cron: "0 3 * * *".into(),
                    time_zone: "Europe/Paris".into(),
                    ..ScheduleSpec::default()
                },
                ScheduleInfo {
                    next_tick_unix_ms: NOW + 12_000,
                    last_tick_unix_ms: NOW - 3_000,
                    last_task_id: "t42".into(),
                    fired: 7,
                    missed: 2,
                    ..ScheduleInfo::default()
                },
            ),
            schedule(
                "poll",
                ScheduleSpec {
                    every_ms: 30_000,
                    ..ScheduleSpec::default()
                },
                ScheduleInfo {
                    paused: true,
                    last_tick_unix_ms: NOW - 60_000,
                    last_error: "queue full".into(),
                    failed: 1,
                    ..ScheduleInfo::default()
                },
            ),
            schedule(
                "fresh",
                ScheduleSpec {
                    cron: "@hourly".into(),
                    ..ScheduleSpec::default()
                },
                ScheduleInfo::default(),
            ),
        ];
        let text = schedule_list_at(&list, NOW);
        let lines: Vec<&str> = text.lines().collect();
        fn cells(line: &str) -> Vec<&str> {
            line.split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect()
        }
        assert_eq!(
            cells(lines[0]),
            [
                "NAME", "QUEUE", "WHEN", "NEXT", "LAST", "RESULT", "STATE", "FIRED", "MISSED",
                "FAILED"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "nightly",
                "q",
                "0 3 * * * (Europe/Paris)",
                "2023-11-14T22:13:32Z (in 12s)",
                "2023-11-14T22:13:17Z (3s ago)",
                "t42",
                "running",
                "7",
                "2",
                "0"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "poll",
                "q",
                "every 30s",
                "-",
                "2023-11-14T22:12:20Z (1m ago)",
                "failed: queue full",
                "paused",
                "0",
                "0",
                "1"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "fresh",
                "q",
                "@hourly (UTC)",
                "-",
                "-",
                "-",
                "running",
                "0",
                "0",
                "0"
            ]
        );
    }

    #[test]
    fn a_schedule_says_what_comes_next() {
        let running = schedule(
            "s",
            ScheduleSpec::default(),
            ScheduleInfo {
                next_tick_unix_ms: NOW + 14_520_000,
                ..ScheduleInfo::default()
            },
        );
        assert_eq!(
            schedule_next_at(&running, NOW),
            "next tick 2023-11-15T02:15:20Z (in 4h 2m)"
        );
        let paused = ScheduleInfo {
            paused: true,
            next_tick_unix_ms: 0,
            ..running.clone()
        };
        assert_eq!(
            schedule_next_at(&paused, NOW),
            "paused, no tick fires until `sluice schedule resume s`"
        );
        let never = ScheduleInfo {
            next_tick_unix_ms: 0,
            ..running
        };
        assert!(schedule_next_at(&never, NOW).contains("no time to come"));
    }

    fn held(options: QueueOptions, stats: QueueStats) -> QueueInfo {
        QueueInfo {
            name: "api".into(),
            options: Some(options),
            stats: Some(stats),
            ..QueueInfo::default()
        }
    }

    fn hold(reason: HoldReason, until_unix_ms: u64) -> Hold {
        Hold {
            reason: reason as i32,
            until_unix_ms,
        }
    }

    #[test]
    fn holds_say_why_nothing_is_delivered() {
        let q = held(
            QueueOptions {
                max_in_flight: 50,
                paused: true,
                ..QueueOptions::default()
            },
            QueueStats {
                ready: 4,
                groups: 7,
                groups_held: 3,
                throttled_until_unix_ms: NOW + 3_200,
                holds: vec![
                    hold(HoldReason::Paused, 0),
                    hold(HoldReason::Throttled, NOW + 3_200),
                    hold(HoldReason::InFlightCap, 0),
                    hold(HoldReason::RateLimited, NOW + 120),
                    hold(HoldReason::GroupsHeld, 0),
                    hold(HoldReason::NoCredit, 0),
                ],
                ..QueueStats::default()
            },
        );
        let text = queue_stats_at(&q, NOW);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("delivery"))
            .expect("a delivery line");
        assert_eq!(
            line,
            "  delivery       paused; throttled until 22:13:23.200Z (in 3.2s); \
             in-flight cap reached (50); rate limited, next token in 120ms; \
             groups held (3 at cap or throttled); no consumer credit"
        );
        assert!(text.contains("  groups         7 (3 held)\n"), "{text}");
        assert!(
            text.contains("  limits         at most 50 leased\n"),
            "{text}"
        );
    }

    #[test]
    fn a_pause_or_throttle_shows_with_nothing_ready() {
        let delivery = |o, s| {
            let text = queue_stats_at(&held(o, s), NOW);
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix("delivery"))
                .map(|v| v.trim().to_owned())
                .expect("a delivery line")
        };
        let paused = QueueOptions {
            paused: true,
            ..QueueOptions::default()
        };
        assert_eq!(delivery(paused, QueueStats::default()), "paused");
        let throttled = QueueStats {
            throttled_until_unix_ms: NOW + 65_000,
            ..QueueStats::default()
        };
        assert_eq!(
            delivery(QueueOptions::default(), throttled),
            "throttled until 22:14:25.000Z (in 1m 5s)"
        );
        let flowing = QueueStats {
            ready: 1,
            ..QueueStats::default()
        };
        assert_eq!(delivery(QueueOptions::default(), flowing), "delivering");
        assert_eq!(
            delivery(QueueOptions::default(), QueueStats::default()),
            "nothing ready"
        );
        // A throttle that ended by this clock is not shown; an unknown
        // reason from a newer broker is.
        let unknown = QueueStats {
            ready: 1,
            throttled_until_unix_ms: NOW - 1,
            holds: vec![Hold {
                reason: 99,
                until_unix_ms: 0,
            }],
            ..QueueStats::default()
        };
        assert_eq!(
            delivery(QueueOptions::default(), unknown),
            "held (reason 99)"
        );
    }

    #[test]
    fn show_lists_flow_options_and_groups() {
        let mut q = held(
            QueueOptions {
                capacity: 100,
                max_in_flight: 50,
                rate_limit: Some(RateLimit {
                    tasks: 10,
                    per_ms: 1000,
                    burst: 20,
                }),
                max_in_flight_per_group: 5,
                ..QueueOptions::default()
            },
            QueueStats {
                ready: 3,
                groups: 2,
                ..QueueStats::default()
            },
        );
        q.groups = vec![
            GroupInfo {
                name: "acme".into(),
                ready: 2,
                leased: 5,
                delayed: 1,
                throttled_until_unix_ms: NOW + 500,
                at_cap: true,
            },
            GroupInfo {
                name: String::new(),
                ready: 1,
                ..GroupInfo::default()
            },
        ];
        let text = queue_show_at(&q, NOW);
        for want in [
            "  max in flight  50 leased at once\n",
            "  rate limit     10/s, burst 20\n",
            "  group cap      5 leased per group\n",
            "  paused         no\n",
            "  retry backoff  none (ready again at once)\n",
            "GROUP      READY  LEASED  DELAYED  THROTTLED                       AT CAP\n",
            "acme       2      5       1        until 22:13:20.500Z (in 500ms)  yes\n",
            "(default)  1      0       0        -                               -\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // Without flow options: "no cap", "none".
        let plain = queue_updated(&held(QueueOptions::default(), QueueStats::default()));
        assert!(plain.starts_with("updated queue api\n"), "{plain}");
        assert!(plain.contains("  max in flight  no cap\n"), "{plain}");
        assert!(plain.contains("  rate limit     none\n"), "{plain}");
    }
}
