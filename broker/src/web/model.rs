//! What the dashboard shows, as plain values: built from the broker's state
//! at one moment, rendered by the pages (`pages`) and sent as JSON by the
//! API (`api`) — the same values both ways, so a page and its live
//! updates never disagree.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::broker::{Broker, QueueHandle};
use crate::engine::{Hold, Millis};

/// The overview: the broker and every queue the viewer may read.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub broker: BrokerView,
    pub queues: Vec<QueueRow>,
}

/// The broker as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    pub version: String,
    pub uptime_s: u64,
    /// Bytes counted against the memory budget, and the budget.
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    /// The log's size on disk (None: in memory only).
    pub log_bytes: Option<u64>,
    /// The log's fsync latency, p99, over the broker's life (None: no
    /// log, or no fsync yet).
    pub fsync_p99_ms: Option<f64>,
    /// "standalone", "leader" or "follower".
    pub role: String,
    /// Who is looking: None when the broker has no auth file (everyone
    /// may do everything).
    pub viewer: Option<Viewer>,
}

/// A signed-in token.
#[derive(Debug, Clone, Serialize)]
pub struct Viewer {
    /// The token's name in the auth file.
    pub name: String,
}

/// One queue in the overview.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    pub name: String,
    pub durable: bool,
    pub paused: bool,
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub capacity: u64,
    pub waiting_producers: u64,
    pub consumers: u64,
    pub credit: u64,
    /// Its dead letter queue, if it has one.
    pub dead_letter: Option<String>,
    /// Tasks that died in it (dead-lettered or dropped).
    pub dead_total: u64,
    /// Per second, over the last sampling interval (0 before two samples).
    pub enqueue_rate: f64,
    pub ack_rate: f64,
    /// Why ready tasks are not delivered now (empty: they are, or none is
    /// ready).
    pub holds: Vec<HoldView>,
    /// Ready + delayed at each of the last samples, oldest first, for a
    /// sparkline.
    pub depth_history: Vec<u64>,
    /// Whether the viewer may act on it (pause, purge, redrive, delete).
    pub can_admin: bool,
}

/// A reason a queue holds its ready tasks back.
#[derive(Debug, Clone, Serialize)]
pub struct HoldView {
    /// "paused", "throttled", "in_flight_cap", "rate_limited",
    /// "groups_held", "no_credit".
    pub reason: &'static str,
    /// For "throttled" and "rate_limited": until when (ms since the
    /// epoch).
    pub until_unix_ms: Option<u64>,
    /// In words, for people: "rate limited, next token in 120 ms".
    pub text: String,
}

/// The queue page.
#[derive(Debug, Clone, Serialize)]
pub struct QueuePage {
    pub queue: QueueRow,
    pub options: OptionsView,
    pub consumers: Vec<ConsumerView>,
    pub groups: Vec<GroupView>,
    /// Queues whose dead letters go to this one.
    pub dead_letter_of: Vec<String>,
    /// Producers waiting for space, and since when the oldest waits.
    pub waiting_producers: u64,
    pub history: History,
    pub totals: Totals,
    /// The schedules that enqueue into it, by name.
    pub schedules: Vec<ScheduleRow>,
}

/// A queue's options, with defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct OptionsView {
    pub capacity: u64,
    /// "fifo", "lifo", "priority".
    pub order: &'static str,
    pub ack_deadline_ms: u64,
    /// 0 = unlimited.
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub retry_multiplier: f64,
    /// 0 = no cap.
    pub max_in_flight: u64,
    /// "20/1000ms burst 5"-like, None without a limit.
    pub rate_limit: Option<RateView>,
    pub max_in_flight_per_group: u64,
    pub idempotency_window_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateView {
    pub tasks: u64,
    pub per_ms: u64,
    pub burst: u64,
}

/// The counters since the queue was created.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub enqueued: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead: u64,
    pub purged: u64,
}

/// One consumer of a queue.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerView {
    pub id: String,
    pub name: String,
    pub peer: String,
    pub credit: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub mean_processing_ms: u64,
    pub oldest_lease_age_ms: u64,
    pub connected_at_unix_ms: u64,
}

/// One group with ready tasks.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub ready: u64,
    pub leased: u64,
    pub delayed: u64,
    pub throttled_until_unix_ms: Option<u64>,
    pub at_cap: bool,
}

/// A queue's recent past, one sample every `interval_s`, oldest first;
/// the rates are per second over the interval before each sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub interval_s: u64,
    pub t_unix_ms: Vec<u64>,
    pub ready: Vec<u64>,
    pub delayed: Vec<u64>,
    pub leased: Vec<u64>,
    pub enqueue_rate: Vec<f64>,
    pub deliver_rate: Vec<f64>,
    pub ack_rate: Vec<f64>,
}

/// A page of a queue's waiting tasks (ready and delayed; leased ones are
/// with their consumers), by id.
#[derive(Debug, Clone, Serialize)]
pub struct TaskList {
    pub queue: String,
    pub tasks: Vec<TaskView>,
    /// Pass as `after` for the next page; None on the last.
    pub next_after: Option<String>,
    /// Ready + delayed in all.
    pub total: u64,
}

/// One waiting task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    /// The payload's first bytes as text (invalid UTF-8 replaced).
    pub payload_preview: String,
    pub payload_bytes: u64,
    pub headers: BTreeMap<String, String>,
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    pub enqueued_at_unix_ms: u64,
    /// Delayed: when it is due.
    pub due_unix_ms: Option<u64>,
    pub group: Option<String>,
    pub key: Option<String>,
    pub job: Option<String>,
    /// A dead letter's origin and last error (its x-sluice-dead-* headers).
    pub dead_from: Option<String>,
    pub dead_reason: Option<String>,
    pub last_error: Option<String>,
}

/// The jobs page.
#[derive(Debug, Clone, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobRow>,
}

/// One job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: String,
    /// Tasks stored under it so far.
    pub stored: u64,
    /// The sealed total (None: not sealed yet).
    pub total: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub done: bool,
    pub started_at_unix_ms: u64,
    pub last_at_unix_ms: u64,
    pub queues: Vec<String>,
}

/// A job's page: the job and its last outcomes, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    pub job: JobRow,
    pub outcomes: Vec<OutcomeView>,
    /// Outcomes the broker did not keep (over its limits).
    pub unkept: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeView {
    pub task_id: String,
    pub succeeded: bool,
    pub attempts: u32,
    pub result_preview: String,
    pub error: String,
}

/// The schedules page: every schedule of a queue the viewer may read.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleRow>,
}

/// One schedule and how its ticks went.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub queue: String,
    /// When it ticks: "0 3 * * * (Europe/Paris)", "every 30s", "every
    /// 1h30m".
    pub when: String,
    /// Its definition's parts: a cron expression and its zone ("UTC" when
    /// none was given), or an interval.
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub every_ms: Option<u64>,
    /// Missed ticks it fires late (0: it skips them).
    pub catch_up: u32,
    /// None while paused (or when its cron expression has no date to come).
    pub next_tick_unix_ms: Option<u64>,
    /// The last tick handled (fired, failed or missed), and when it was;
    /// None before the first.
    pub last_tick_unix_ms: Option<u64>,
    pub last_run_unix_ms: Option<u64>,
    /// The task the last fired tick enqueued (or found by its key).
    pub last_task_id: Option<String>,
    /// Why the last tick failed; None when it fired.
    pub last_error: Option<String>,
    /// "running" or "paused".
    pub state: &'static str,
    pub paused: bool,
    /// Ticks fired, missed (and skipped) and failed, ever.
    pub fired: u64,
    pub missed: u64,
    pub failed: u64,
    /// Whether the viewer may pause, resume and delete it (the admin right
    /// on its queue).
    pub can_admin: bool,
}

/// How many bytes of a payload or result a preview shows.
pub const PREVIEW_BYTES: usize = 256;

/// The first [`PREVIEW_BYTES`] of `b` as text.
pub fn preview(b: &[u8]) -> String {
    let cut = &b[..b.len().min(PREVIEW_BYTES)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if b.len() > PREVIEW_BYTES {
        s.push('…');
    }
    s
}

/// A hold as the dashboard shows it, in words relative to `now`.
pub fn hold_view(h: &Hold, q: &QueueHandle, now: Millis) -> HoldView {
    let _ = q;
    let (reason, until, text) = match *h {
        Hold::Paused => ("paused", None, "paused".to_owned()),
        Hold::Throttled { until } => (
            "throttled",
            Some(until),
            format!("throttled for {}", in_words(until.saturating_sub(now))),
        ),
        Hold::InFlightCap => ("in_flight_cap", None, "in-flight cap reached".to_owned()),
        Hold::RateLimited { until } => (
            "rate_limited",
            Some(until),
            format!(
                "rate limited, next token in {}",
                in_words(until.saturating_sub(now))
            ),
        ),
        Hold::GroupsHeld => (
            "groups_held",
            None,
            "every group with ready tasks is at its cap or throttled".to_owned(),
        ),
        Hold::NoCredit => ("no_credit", None, "no consumer credit".to_owned()),
    };
    HoldView {
        reason,
        until_unix_ms: until,
        text,
    }
}

/// A short duration for people: "120 ms", "3.2 s", "4 min".
fn in_words(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", ms / 60_000),
    }
}

/// Whether `broker` answers with its own name for a queue (used by pages
/// to link dead letter queues that exist).
pub fn exists(broker: &Broker, name: &str) -> bool {
    broker.queue(name).is_ok()
}
