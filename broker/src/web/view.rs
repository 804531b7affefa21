//! The dashboard's values, read from the broker at one moment.

use std::collections::BTreeMap;

use crate::api::auth::{Access, Role};
use crate::broker::{QueueHandle, now_ms};
use crate::engine::{Order, TaskId};
use crate::ids::{parse_task_id, task_id_str};

use super::Web;
use super::model::*;
use super::session::may;

/// Samples in an overview row's sparkline (5 minutes).
const SPARK_SAMPLES: usize = 60;

pub fn broker(web: &Web, access: &Access) -> BrokerView {
    let limits = web.broker.limits();
    let (log_bytes, fsync_p99_ms) = match web.broker.log() {
        Some(log) => {
            let s = log.stats();
            (Some(s.total_bytes), p99_ms(&s.fsync_latency))
        }
        None => (None, None),
    };
    BrokerView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: web.started.elapsed().as_secs(),
        memory_used_bytes: web.broker.held_bytes(),
        memory_budget_bytes: limits.max_memory_bytes,
        log_bytes,
        fsync_p99_ms,
        role: match &web.cluster {
            None => "standalone",
            Some(_) if web.broker.serving() => "leader",
            Some(_) => "follower",
        }
        .to_owned(),
        viewer: access.name().map(|n| Viewer { name: n.to_owned() }),
    }
}

/// The 99th percentile of a latency histogram, in ms: the upper bound of
/// the bucket it falls in.
fn p99_ms(s: &crate::latency::Snapshot) -> Option<f64> {
    if s.count == 0 {
        return None;
    }
    let want = (s.count as f64 * 0.99).ceil() as u64;
    crate::latency::BOUNDS
        .iter()
        .zip(&s.cumulative)
        .find(|(_, n)| **n >= want)
        .map(|(b, _)| b * 1000.0)
}

pub fn row(web: &Web, access: &Access, q: &QueueHandle) -> QueueRow {
    let v = q.view(0);
    let now = now_ms();
    let (depth_history, enqueue_rate, ack_rate) = web.history.recent(q.name(), SPARK_SAMPLES);
    QueueRow {
        name: q.name().to_owned(),
        durable: q.durable(),
        paused: v.config.paused,
        ready: v.stats.ready,
        delayed: v.stats.delayed,
        leased: v.stats.leased,
        capacity: v.config.capacity,
        waiting_producers: v.stats.waiting_producers,
        consumers: v.stats.consumers,
        credit: v.stats.credit,
        dead_letter: v.config.dead_letter.clone(),
        dead_total: v.stats.dead_total,
        enqueue_rate,
        ack_rate,
        holds: v.holds.iter().map(|h| hold_view(h, q, now)).collect(),
        depth_history,
        can_admin: may(access, Role::Admin, q.name()),
    }
}

pub fn overview(web: &Web, access: &Access) -> Overview {
    let queues = web
        .broker
        .queues()
        .iter()
        .filter(|q| may(access, Role::Read, q.name()))
        .map(|q| row(web, access, q))
        .collect();
    Overview {
        broker: broker(web, access),
        queues,
    }
}

pub fn queue_page(web: &Web, access: &Access, q: &QueueHandle) -> QueuePage {
    let v = q.view(crate::api::reply::MAX_GROUPS_SHOWN);
    let c = &v.config;
    let s = &v.stats;
    let dead_letter_of = web
        .broker
        .queues()
        .iter()
        .filter(|o| o.config().dead_letter.as_deref() == Some(q.name()))
        .map(|o| o.name().to_owned())
        .collect();
    QueuePage {
        queue: row(web, access, q),
        options: OptionsView {
            capacity: c.capacity,
            order: match c.order {
                Order::Fifo => "fifo",
                Order::Lifo => "lifo",
                Order::Priority => "priority",
            },
            ack_deadline_ms: c.ack_deadline_ms,
            max_attempts: c.max_attempts,
            retry_initial_ms: c.retry.initial_ms,
            retry_max_ms: c.retry.max_ms,
            retry_multiplier: f64::from(c.retry.multiplier_milli) / 1000.0,
            max_in_flight: c.max_in_flight,
            rate_limit: c.rate.map(|r| RateView {
                tasks: r.tasks,
                per_ms: r.per_ms,
                burst: r.burst,
            }),
            max_in_flight_per_group: c.group_max_in_flight,
            idempotency_window_ms: c.key_window_ms,
        },
        consumers: v
            .consumers
            .iter()
            .map(|c| ConsumerView {
                id: format!("c{}", c.id.0),
                name: c.name.clone(),
                peer: c.peer.clone(),
                credit: c.credit,
                in_flight: c.in_flight,
                delivered: c.delivered,
                acked: c.acked,
                nacked: c.nacked,
                mean_processing_ms: c.mean_processing_ms,
                oldest_lease_age_ms: c.oldest_lease_age_ms,
                connected_at_unix_ms: c.connected_at,
            })
            .collect(),
        groups: v
            .groups
            .iter()
            .map(|g| GroupView {
                name: g.name.clone(),
                ready: g.ready,
                leased: g.leased,
                delayed: g.delayed,
                throttled_until_unix_ms: (g.throttled_until > 0).then_some(g.throttled_until),
                at_cap: g.at_cap,
            })
            .collect(),
        dead_letter_of,
        waiting_producers: s.waiting_producers,
        history: web.history.of(q.name()),
        totals: Totals {
            enqueued: s.enqueued_total,
            delivered: s.delivered_total,
            acked: s.acked_total,
            nacked: s.nacked_total,
            expired: s.expired_total,
            dead: s.dead_total,
            purged: s.purged_total,
        },
        schedules: web
            .broker
            .schedules()
            .list()
            .into_iter()
            .filter(|s| s.spec.as_ref().is_some_and(|spec| spec.queue == q.name()))
            .map(|s| schedule_row(access, s))
            .collect(),
    }
}

/// Most tasks a page of a queue lists.
pub const MAX_PAGE: usize = 500;

/// A page of `q`'s waiting tasks after `after` (an id as the API shows
/// it); Err for an id that is not one.
pub fn tasks(q: &QueueHandle, after: Option<&str>, limit: usize) -> Result<TaskList, String> {
    let after = match after {
        None | Some("") => None,
        Some(a) => Some(parse_task_id(a).ok_or_else(|| format!("{a:?} is not a task id"))?),
    };
    let limit = limit.clamp(1, MAX_PAGE);
    let (page, total) = q.browse(after, limit + 1);
    let more = page.len() > limit;
    let tasks: Vec<TaskView> = page.into_iter().take(limit).map(task_view).collect();
    let next_after = more.then(|| tasks.last().map(|t| t.id.clone())).flatten();
    Ok(TaskList {
        queue: q.name().to_owned(),
        tasks,
        next_after,
        total,
    })
}

fn task_view(b: crate::engine::Browsed) -> TaskView {
    let headers: BTreeMap<String, String> = b
        .body
        .headers
        .as_deref()
        .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let header = |k: &str| headers.get(k).cloned();
    TaskView {
        id: task_id_str(b.id),
        payload_preview: preview(&b.body.payload),
        payload_bytes: b.body.payload.len() as u64,
        priority: b.priority,
        attempts: b.attempt,
        enqueued_at_unix_ms: b.body.enqueued_at,
        due_unix_ms: b.due,
        group: b.group.map(String::from),
        key: b.key.map(String::from),
        job: b.job.map(String::from),
        dead_from: header("x-sluice-dead-from"),
        dead_reason: header("x-sluice-dead-reason"),
        last_error: header("x-sluice-dead-error").or_else(|| b.error.map(String::from)),
        headers,
    }
}

pub fn jobs(web: &Web, access: &Access) -> JobList {
    JobList {
        jobs: web
            .broker
            .jobs()
            .list(1000)
            .into_iter()
            .filter(|j| j.queues.iter().all(|q| may(access, Role::Read, q)))
            .map(job_row)
            .collect(),
    }
}

pub fn job_row(j: crate::jobs::JobBrief) -> JobRow {
    JobRow {
        id: j.id,
        stored: j.stored,
        total: j.total,
        succeeded: j.succeeded,
        failed: j.failed,
        done: j.done,
        started_at_unix_ms: j.started,
        last_at_unix_ms: j.last,
        queues: j.queues,
    }
}

/// Most outcomes a job's page lists.
pub const MAX_OUTCOMES_SHOWN: usize = 200;

pub fn job_page(web: &Web, access: &Access, id: &str) -> Option<JobPage> {
    let (j, outcomes, unkept) = web.broker.jobs().detail(id, MAX_OUTCOMES_SHOWN)?;
    if !j.queues.iter().all(|q| may(access, Role::Read, q)) {
        return None;
    }
    Some(JobPage {
        job: job_row(j),
        outcomes: outcomes
            .into_iter()
            .map(|o| OutcomeView {
                task_id: o.task_id,
                succeeded: o.succeeded,
                attempts: o.attempts,
                result_preview: preview(&o.result),
                error: o.error,
            })
            .collect(),
        unkept,
    })
}

/// Every schedule of a queue `access` may read, by name.
pub fn schedules(web: &Web, access: &Access) -> ScheduleList {
    ScheduleList {
        schedules: web
            .broker
            .schedules()
            .list()
            .into_iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .is_some_and(|spec| may(access, Role::Read, &spec.queue))
            })
            .map(|s| schedule_row(access, s))
            .collect(),
    }
}

pub fn schedule_row(access: &Access, s: sluice_proto::v1::ScheduleInfo) -> ScheduleRow {
    let spec = s.spec.unwrap_or_default();
    let cron = (!spec.cron.is_empty()).then(|| spec.cron.trim().to_owned());
    let time_zone = cron.as_ref().map(|_| match spec.time_zone.as_str() {
        "" => "UTC".to_owned(),
        tz => tz.to_owned(),
    });
    let when = match (&cron, &time_zone) {
        (Some(c), Some(tz)) => format!("{c} ({tz})"),
        // An interval in `When::describe`'s words ("every 1h30m"). A cron
        // expression is shown as given rather than parsed again for them:
        // parsing one checks decades of dates, too much on every poll.
        _ => crate::schedules::When::every(spec.every_ms)
            .map(|w| w.describe())
            .unwrap_or_else(|_| format!("every {} ms", spec.every_ms)),
    };
    let set = |ms: u64| (ms > 0).then_some(ms);
    let text = |t: String| (!t.is_empty()).then_some(t);
    ScheduleRow {
        can_admin: may(access, Role::Admin, &spec.queue),
        every_ms: cron.is_none().then_some(spec.every_ms),
        name: spec.name,
        queue: spec.queue,
        when,
        cron,
        time_zone,
        catch_up: spec.catch_up,
        next_tick_unix_ms: set(s.next_tick_unix_ms),
        last_tick_unix_ms: set(s.last_tick_unix_ms),
        last_run_unix_ms: set(s.last_run_unix_ms),
        last_task_id: text(s.last_task_id),
        last_error: text(s.last_error),
        state: if s.paused { "paused" } else { "running" },
        paused: s.paused,
        fired: s.fired,
        missed: s.missed,
        failed: s.failed,
    }
}

/// Ids as the API takes them.
pub fn ids(list: &[String]) -> Result<Vec<TaskId>, String> {
    list.iter()
        .map(|s| parse_task_id(s).ok_or_else(|| format!("{s:?} is not a task id")))
        .collect()
}
