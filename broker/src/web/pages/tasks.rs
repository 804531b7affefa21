//! A queue's waiting tasks, page by page: the dead letter browser, with
//! redrive and purge for admins.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::{field, fmt, pct};
use crate::web::model::*;

/// What the tasks page shows besides the list.
pub(super) struct TasksCtx<'a> {
    pub name: &'a str,
    /// Whether the visitor may redrive and purge.
    pub can_admin: bool,
    /// The page: the tasks after this id.
    pub after: Option<&'a str>,
    /// Queues whose dead letters come here.
    pub dead_letter_of: &'a [String],
    /// Queues a redrive may send tasks to.
    pub targets: &'a [String],
}

pub(super) fn tasks_body(c: &TasksCtx, list: Result<TaskList, String>, now: u64) -> Markup {
    let name = c.name;
    let (tasks, next_after, total, error) = match list {
        Ok(l) => (l.tasks, l.next_after, l.total, None),
        Err(e) => (Vec::new(), None, 0, Some(e)),
    };
    html! {
        div .pagehead {
            div {
                p .crumbs {
                    a href="/" { "Queues" } " / "
                    a href=(format!("/queues/{name}")) { (name) } " /"
                }
                h1 { "Waiting tasks" }
                p .links {
                    (field("total", "int", fmt::int(total)))
                    " waiting (ready and delayed) in " a href=(format!("/queues/{name}")) { (name) }
                    @if !c.dead_letter_of.is_empty() {
                        ", the dead letter queue of "
                        @for (i, n) in c.dead_letter_of.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(format!("/queues/{n}")) { (n) }
                        }
                    }
                    ". Leased tasks are with their consumers."
                }
            }
        }
        @if let Some(e) = &error {
            p .error role="alert" { (e) }
        }
        @if c.can_admin {
            div .toolbar #task-actions data-queue=(name) {
                label {
                    "Redrive to "
                    select #redrive-to {
                        option value="" { "each task's origin queue" }
                        @for t in c.targets {
                            option value=(t) { (t) }
                        }
                    }
                }
                button #redrive-selected .primary type="button" disabled { "Redrive selected" }
                button #redrive-all type="button" { "Redrive all" }
                button #purge-tasks .danger type="button" { "Purge" }
            }
        }
        div .scroll {
            table .grid .tasks {
                thead {
                    tr {
                        @if c.can_admin {
                            th .pick {
                                input #pick-all type="checkbox" aria-label="Select every task on this page";
                            }
                        }
                        th { "Task" }
                        th { "Payload" }
                        th { "Dead letter" }
                        th { "Headers" }
                        th .num title="Deliveries so far, in this queue" { "Attempts" }
                        th { "Enqueued" }
                    }
                }
                tbody data-list="tasks" data-key="id" data-template="tpl-task" {
                    @for t in &tasks { (task_row(t, c.can_admin, now)) }
                }
            }
        }
        p .empty data-hide="tasks" hidden[!tasks.is_empty()] { "No waiting task." }
        nav .pager {
            @if c.after.is_some() {
                a href=(format!("/queues/{name}/tasks")) { "← First page" }
            }
            a #next-page data-show="next_after" hidden[next_after.is_none()]
                data-href=(format!("/queues/{name}/tasks?after={{next_after}}"))
                href=(format!("/queues/{name}/tasks?after={}", pct(next_after.as_deref().unwrap_or_default()))) {
                "Next page →"
            }
        }
        template #tpl-task { (task_row(&blank_task(), c.can_admin, now)) }
    }
}

/// Headers a task row shows in its own column (the dead letter's).
const DEAD_HEADERS: &str = "x-sluice-dead-";

fn task_row(t: &TaskView, can_admin: bool, now: u64) -> Markup {
    let dead_attempts = t.headers.get("x-sluice-dead-attempts");
    html! {
        tr data-item data-key=(t.id) {
            @if can_admin {
                td .pick { input .pick type="checkbox" aria-label="Select this task"; }
            }
            td { code .id { (field("id", "text", t.id.clone())) } }
            td .payload {
                code data-f="payload_preview" data-fmt="text" { (t.payload_preview) }
                div .sub { (field("payload_bytes", "bytes", fmt::bytes(t.payload_bytes))) }
            }
            td .dead {
                div data-show="dead_from" hidden[t.dead_from.is_none()] {
                    "from " strong { (field("dead_from", "text", t.dead_from.clone().unwrap_or_default())) }
                    ", " (field("dead_reason", "reason", fmt::reason(t.dead_reason.as_deref().unwrap_or_default())))
                    span data-show="headers.x-sluice-dead-attempts" hidden[dead_attempts.is_none()] {
                        " after "
                        (field("headers.x-sluice-dead-attempts", "attempts", fmt::attempts(dead_attempts.map(String::as_str).unwrap_or_default())))
                    }
                }
                div .error data-show="last_error" hidden[t.last_error.is_none()] {
                    (field("last_error", "text", t.last_error.clone().unwrap_or_default()))
                }
                span .muted data-hide="dead_from" hidden[t.dead_from.is_some()] { "—" }
            }
            td {
                span .chips data-headers="headers" data-skip=(DEAD_HEADERS) {
                    @for (k, v) in &t.headers {
                        @if !k.starts_with(DEAD_HEADERS) {
                            span .chip { (k) "=" (v) }
                        }
                    }
                }
                span .chip .group data-show="group" hidden[t.group.is_none()] {
                    "group " (field("group", "text", t.group.clone().unwrap_or_default()))
                }
            }
            td .num { (field("attempts", "int", fmt::int(u64::from(t.attempts)))) }
            td {
                (field("enqueued_at_unix_ms", "ago", fmt::ago(t.enqueued_at_unix_ms, now)))
                div .sub data-show="due_unix_ms" hidden[t.due_unix_ms.is_none()] {
                    "due " span data-f="due_unix_ms" data-fmt="due" {
                        (t.due_unix_ms.map(|d| fmt::due(d, now)).unwrap_or_default())
                    }
                }
            }
        }
    }
}

fn blank_task() -> TaskView {
    TaskView {
        id: String::new(),
        payload_preview: String::new(),
        payload_bytes: 0,
        headers: BTreeMap::new(),
        priority: 0,
        attempts: 0,
        enqueued_at_unix_ms: 0,
        due_unix_ms: None,
        group: None,
        key: None,
        job: None,
        dead_from: None,
        dead_reason: None,
        last_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_escaped() {
        let mut t = blank_task();
        t.id = "0000000000000001".into();
        t.payload_preview = "<script>alert(1)</script>".into();
        t.headers.insert("x<y".into(), "\"quoted\"".into());
        let html = task_row(&t, true, 0).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("x&lt;y=&quot;quoted&quot;"), "{html}");
    }
}
