//! Jobs: running and recent ones with their progress, and one job's
//! outcomes as they arrive.

use maud::{Markup, html};

use super::{bar, card, field, fmt, pct};
use crate::web::model::*;

pub(super) fn jobs_body(j: &JobList, now: u64) -> Markup {
    html! {
        h1 { "Jobs" }
        div .scroll {
            table .grid .jobs {
                thead {
                    tr {
                        th { "Job" }
                        th { "Queues" }
                        th .progress-col { "Progress" }
                        th { "State" }
                        th { "Started" }
                        th { "Last activity" }
                    }
                }
                tbody data-list="jobs" data-key="id" data-template="tpl-job" {
                    @for r in &j.jobs { (job_row(r, now)) }
                }
            }
        }
        div .empty data-hide="jobs" hidden[!j.jobs.is_empty()] {
            p { "No jobs. A job groups the tasks of one batch and follows their outcomes:" }
            pre { code { "seq 1 100 | sluice enqueue emails --job newsletter-42" } }
        }
        template #tpl-job { (job_row(&blank_job(), now)) }
    }
}

fn job_progress(j: &JobRow) -> Markup {
    let den = j.total.unwrap_or(j.stored);
    html! {
        span .bar .split title="Succeeded, failed, of the total (or of the tasks stored so far while the job is open)" {
            (bar("succeeded/total|stored", j.succeeded, den, "ok"))
            (bar("failed/total|stored", j.failed, den, "bad"))
        }
        span .sub {
            span data-f="" data-fmt="jobdone" { (fmt::job_done(j)) }
            " " span .bad data-f="failed" data-fmt="failed" { (fmt::failed(j.failed)) }
        }
    }
}

fn job_row(r: &JobRow, now: u64) -> Markup {
    html! {
        tr data-item data-key=(r.id) {
            th scope="row" {
                a data-f="id" data-fmt="text" data-href="/jobs/{id}" href=(format!("/jobs/{}", pct(&r.id))) { (r.id) }
            }
            td { (field("queues", "list", r.queues.join(", "))) }
            td .progress-col { (job_progress(r)) }
            td { span .state data-f="" data-fmt="jobstate" { (fmt::job_state(r)) } }
            td { (field("started_at_unix_ms", "ago", fmt::ago(r.started_at_unix_ms, now))) }
            td { (field("last_at_unix_ms", "ago", fmt::ago(r.last_at_unix_ms, now))) }
        }
    }
}

fn blank_job() -> JobRow {
    JobRow {
        id: String::new(),
        stored: 0,
        total: None,
        succeeded: 0,
        failed: 0,
        done: false,
        started_at_unix_ms: 0,
        last_at_unix_ms: 0,
        queues: Vec::new(),
    }
}

pub(super) fn job_body(p: &JobPage, now: u64) -> Markup {
    let j = &p.job;
    html! {
        div .pagehead {
            div {
                p .crumbs { a href="/jobs" { "Jobs" } " /" }
                h1 { "Job " code { (j.id) } }
                p .links {
                    "Tasks in "
                    @for (i, q) in j.queues.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href=(format!("/queues/{q}")) { (q) }
                    }
                }
            }
        }
        section .cards {
            (card("State", html! { span data-f="job" data-fmt="jobstate" { (fmt::job_state(j)) } }))
            (card("Progress", html! {
                span .small data-f="job" data-fmt="jobdone" { (fmt::job_done(j)) }
                span .bar .split {
                    (bar("job.succeeded/job.total|job.stored", j.succeeded, j.total.unwrap_or(j.stored), "ok"))
                    (bar("job.failed/job.total|job.stored", j.failed, j.total.unwrap_or(j.stored), "bad"))
                }
            }))
            (card("Succeeded", field("job.succeeded", "int", fmt::int(j.succeeded))))
            (card("Failed", field("job.failed", "int", fmt::int(j.failed))))
            (card("Stored", field("job.stored", "int", fmt::int(j.stored))))
            (card("Started", field("job.started_at_unix_ms", "ago", fmt::ago(j.started_at_unix_ms, now))))
        }
        section {
            h2 { "Outcomes" span .muted { " · newest first" } }
            div .scroll {
                table .grid {
                    thead {
                        tr {
                            th { "Task" }
                            th { "Outcome" }
                            th .num { "Attempts" }
                            th { "Result or error" }
                        }
                    }
                    tbody data-list="outcomes" data-key="task_id" data-template="tpl-outcome" {
                        @for o in &p.outcomes { (outcome_row(o)) }
                    }
                }
            }
            p .empty data-hide="outcomes" hidden[!p.outcomes.is_empty()] { "No outcome yet: they appear as workers finish tasks." }
            p .muted data-show="unkept" hidden[p.unkept == 0] {
                (field("unkept", "int", fmt::int(p.unkept))) " older outcomes were not kept (over the broker's limits)."
            }
            template #tpl-outcome { (outcome_row(&blank_outcome())) }
        }
    }
}

fn outcome_row(o: &OutcomeView) -> Markup {
    html! {
        tr data-item data-key=(o.task_id) {
            td { code .id { (field("task_id", "text", o.task_id.clone())) } }
            td {
                span .badge .ok data-show="succeeded" hidden[!o.succeeded] { "succeeded" }
                span .badge .bad data-hide="succeeded" hidden[o.succeeded] { "failed" }
            }
            td .num { (field("attempts", "int", fmt::int(u64::from(o.attempts)))) }
            td .payload {
                code data-hide="error" hidden[!o.error.is_empty()] data-f="result_preview" data-fmt="text" { (o.result_preview) }
                span .error data-show="error" hidden[o.error.is_empty()] data-f="error" data-fmt="text" { (o.error) }
            }
        }
    }
}

fn blank_outcome() -> OutcomeView {
    OutcomeView {
        task_id: String::new(),
        succeeded: false,
        attempts: 0,
        result_preview: String::new(),
        error: String::new(),
    }
}
