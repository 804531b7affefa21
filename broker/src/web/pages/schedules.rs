//! Schedules: every schedule the visitor may see, with its ticks and the
//! buttons an admin has, and the small list of a queue's own schedules on
//! its page (the same cells, without the queue, counts and buttons).

use maud::{Markup, html};

use super::{field, fmt, row_action};
use crate::web::model::*;

/// Which table a row is drawn for.
#[derive(Clone, Copy, PartialEq)]
enum Cols {
    /// The schedules page: every column, and the buttons.
    All,
    /// A queue's page: the queue is the page's.
    OfQueue,
}

pub(super) fn schedules_body(l: &ScheduleList, now: u64) -> Markup {
    html! {
        h1 { "Schedules" }
        div .scroll {
            table .grid .schedules {
                thead { (head(Cols::All)) }
                tbody data-list="schedules" data-key="name" data-template="tpl-schedule" {
                    @for s in &l.schedules { (row(s, now, Cols::All)) }
                }
            }
        }
        div .empty data-hide="schedules" hidden[!l.schedules.is_empty()] {
            p { "No schedules. A schedule enqueues a task on every tick of a cron expression or an interval:" }
            pre { code { "sluice schedule create nightly --queue reports --cron \"0 3 * * *\" --tz Europe/Paris\nsluice schedule create poll --queue api --every 30s" } }
        }
        template #tpl-schedule { (row(&blank(), now, Cols::All)) }
    }
}

/// A queue's schedules, on its page; hidden while it has none.
pub(super) fn queue_section(schedules: &[ScheduleRow], now: u64) -> Markup {
    html! {
        section #schedules data-show="schedules" hidden[schedules.is_empty()] {
            h2 {
                "Schedules"
                span .muted { " · enqueue into this queue · " a href="/schedules" { "all schedules" } }
            }
            div .scroll {
                table .grid {
                    thead { (head(Cols::OfQueue)) }
                    tbody data-list="schedules" data-key="name" data-template="tpl-schedule" {
                        @for s in schedules { (row(s, now, Cols::OfQueue)) }
                    }
                }
            }
            template #tpl-schedule { (row(&blank(), now, Cols::OfQueue)) }
        }
    }
}

fn head(cols: Cols) -> Markup {
    html! {
        tr {
            th { "Schedule" }
            @if cols == Cols::All { th { "Queue" } }
            th { "When" }
            th { "Next tick" }
            th title="The last tick handled: fired, failed or missed" { "Last tick" }
            th title="The task the last tick enqueued, or why it failed" { "Result" }
            th { "State" }
            @if cols == Cols::All {
                th .num title="Ticks whose task was stored" { "Fired" }
                th .num title="Ticks the broker could not fire on time, skipped" { "Missed" }
                th .num title="Ticks whose enqueue failed (a full or missing queue)" { "Failed" }
                th { span .visually-hidden { "Actions" } }
            }
        }
    }
}

fn row(s: &ScheduleRow, now: u64, cols: Cols) -> Markup {
    let failed = s.last_error.is_some();
    html! {
        tr data-item data-key=(s.name) {
            th scope="row" .name { (field("name", "text", s.name.clone())) }
            @if cols == Cols::All {
                td { a data-f="queue" data-href="/queues/{queue}" href=(format!("/queues/{}", s.queue)) { (s.queue) } }
            }
            td {
                code data-f="when" { (s.when) }
                div .sub data-show="catch_up" hidden[s.catch_up == 0] {
                    "fires up to " (field("catch_up", "int", fmt::int(u64::from(s.catch_up)))) " missed ticks late"
                }
            }
            td {
                span data-f="next_tick_unix_ms" data-fmt="until" data-null="—" {
                    (s.next_tick_unix_ms.map(|t| fmt::until(t, now)).unwrap_or_else(|| "—".into()))
                }
            }
            td {
                span data-f="last_tick_unix_ms" data-fmt="ago" data-null="—" {
                    (s.last_tick_unix_ms.map(|t| fmt::ago(t, now)).unwrap_or_else(|| "—".into()))
                }
            }
            td .result {
                span data-show="last_error" hidden[!failed] {
                    span .badge .bad { "failed" } " "
                    span .error data-f="last_error" { (s.last_error.clone().unwrap_or_default()) }
                }
                span data-hide="last_error" hidden[failed] {
                    code .id data-f="last_task_id" data-null="—" {
                        (s.last_task_id.clone().unwrap_or_else(|| "—".into()))
                    }
                }
            }
            td {
                span .badge .ok data-hide="paused" hidden[s.paused] { "running" }
                span .badge .warn data-show="paused" hidden[!s.paused] { "paused" }
            }
            @if cols == Cols::All {
                td .num { (field("fired", "int", fmt::int(s.fired))) }
                td .num { (field("missed", "int", fmt::int(s.missed))) }
                td .num { (field("failed", "int", fmt::int(s.failed))) }
                td { (actions(s)) }
            }
        }
    }
}

/// Pause or resume, and delete; shown where the visitor administers the
/// schedule's queue.
fn actions(s: &ScheduleRow) -> Markup {
    let url = "/api/schedules/{name}";
    html! {
        div .actions .row-actions data-show="can_admin" hidden[!s.can_admin] {
            span data-hide="paused" hidden[s.paused] {
                (row_action(&s.name, "Pause", "", "POST", &format!("{url}/pause"),
                    "Pause the schedule {name}? No tick fires until it is resumed; the ticks meanwhile are neither fired nor missed."))
            }
            span data-show="paused" hidden[!s.paused] {
                (row_action(&s.name, "Resume", "primary", "POST", &format!("{url}/resume"),
                    "Resume the schedule {name}? It fires again from its next tick."))
            }
            (row_action(&s.name, "Delete", "danger", "DELETE", url,
                "Delete the schedule {name}? No tick fires again; the tasks it enqueued stay in their queue. This cannot be undone."))
        }
    }
}

fn blank() -> ScheduleRow {
    ScheduleRow {
        name: String::new(),
        queue: String::new(),
        when: String::new(),
        cron: None,
        time_zone: None,
        every_ms: None,
        catch_up: 0,
        next_tick_unix_ms: None,
        last_tick_unix_ms: None,
        last_run_unix_ms: None,
        last_task_id: None,
        last_error: None,
        state: "running",
        paused: false,
        fired: 0,
        missed: 0,
        failed: 0,
        can_admin: false,
    }
}
