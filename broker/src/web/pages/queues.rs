//! The overview (every queue, the broker) and a queue's page.

use maud::{Markup, html};

use super::{action, bar, card, field, fmt, holds, schedules, spark};
use crate::web::model::*;

// ---- overview -----------------------------------------------------------------

pub(super) fn overview_body(o: &Overview) -> Markup {
    let b = &o.broker;
    html! {
        section .cards aria-label="Broker" {
            (card("Role", html! {
                (field("broker.role", "text", b.role.clone()))
                " " span .muted { "v" (field("broker.version", "text", b.version.clone())) }
            }))
            (card("Uptime", field("broker.uptime_s", "secs", fmt::secs(b.uptime_s))))
            (card("Memory", html! {
                (field("broker.memory_used_bytes", "bytes", fmt::bytes(b.memory_used_bytes)))
                span .muted { " of " (field("broker.memory_budget_bytes", "bytes", fmt::bytes(b.memory_budget_bytes))) }
                span .bar title="Memory counted against the budget (--max-memory)" {
                    (bar("broker.memory_used_bytes/broker.memory_budget_bytes", b.memory_used_bytes, b.memory_budget_bytes, ""))
                }
            }))
            (card("Log on disk", html! {
                span data-f="broker.log_bytes" data-fmt="bytes" data-null="in memory only" {
                    (b.log_bytes.map(fmt::bytes).unwrap_or_else(|| "in memory only".into()))
                }
            }))
            (card("fsync p99", html! {
                span data-f="broker.fsync_p99_ms" data-fmt="msf" data-null="—" {
                    (b.fsync_p99_ms.map(fmt::msf).unwrap_or_else(|| "—".into()))
                }
            }))
            (card("Queues", field("queues", "count", o.queues.len().to_string())))
        }
        section {
            h1 { "Queues" }
            div .scroll {
                table .grid .queues {
                    thead {
                        tr {
                            th { "Queue" }
                            th title="Ready + delayed, the last 5 minutes" { "Depth" }
                            th .num title="Waiting to be delivered" { "Ready" }
                            th .num title="Waiting for their time (retries, delays)" { "Delayed" }
                            th .num title="With a consumer, not acked yet" { "Leased" }
                            th .num title="Producers waiting for space" { "Waiting producers" }
                            th .num { "Consumers" }
                            th .num title="Deliveries the consumers asked for" { "Credit" }
                            th .num { "Enqueued/s" }
                            th .num { "Acked/s" }
                            th .num title="Tasks that died in this queue (dead-lettered or dropped)" { "Dead" }
                            th { "Delivery" }
                        }
                    }
                    tbody data-list="queues" data-key="name" data-template="tpl-queue" {
                        @for q in &o.queues { (queue_row(q)) }
                    }
                }
            }
            div .empty data-hide="queues" hidden[!o.queues.is_empty()] {
                p { "No queues yet. Create one and watch it here:" }
                pre { code { "sluice queue create emails --capacity 100\nsluice enqueue emails \"hello alice\" \"hello bob\"" } }
            }
            template #tpl-queue { (queue_row(&blank_queue_row())) }
        }
    }
}

fn queue_row(q: &QueueRow) -> Markup {
    let dlq = q.dead_letter.as_deref().unwrap_or_default();
    html! {
        tr data-item data-key=(q.name) {
            th scope="row" .name {
                a data-f="name" data-href="/queues/{name}" href=(format!("/queues/{}", q.name)) { (q.name) }
                span .badge .warn data-show="paused" hidden[!q.paused] { "paused" }
                span .badge data-show="durable" hidden[!q.durable] { "durable" }
            }
            td { (spark("depth_history", &q.depth_history)) }
            td .num { (field("ready", "int", fmt::int(q.ready))) }
            td .num { (field("delayed", "int", fmt::int(q.delayed))) }
            td .num { (field("leased", "int", fmt::int(q.leased))) }
            td .num { (field("waiting_producers", "int", fmt::int(q.waiting_producers))) }
            td .num { (field("consumers", "int", fmt::int(q.consumers))) }
            td .num { (field("credit", "int", fmt::int(q.credit))) }
            td .num { (field("enqueue_rate", "rate", fmt::rate(q.enqueue_rate))) }
            td .num { (field("ack_rate", "rate", fmt::rate(q.ack_rate))) }
            td .num {
                a data-show="dead_letter" hidden[q.dead_letter.is_none()]
                    data-href="/queues/{dead_letter}/tasks" href=(format!("/queues/{dlq}/tasks"))
                    title="Dead letters go to this queue's dead letter queue: browse it" {
                    (field("dead_total", "int", fmt::int(q.dead_total)))
                }
                span data-hide="dead_letter" hidden[q.dead_letter.is_some()] {
                    (field("dead_total", "int", fmt::int(q.dead_total)))
                }
            }
            td { (holds("holds", &q.holds, "—")) }
        }
    }
}

fn blank_queue_row() -> QueueRow {
    QueueRow {
        name: String::new(),
        durable: false,
        paused: false,
        ready: 0,
        delayed: 0,
        leased: 0,
        capacity: 0,
        waiting_producers: 0,
        consumers: 0,
        credit: 0,
        dead_letter: None,
        dead_total: 0,
        enqueue_rate: 0.0,
        ack_rate: 0.0,
        holds: Vec::new(),
        depth_history: Vec::new(),
        can_admin: false,
    }
}

// ---- a queue ------------------------------------------------------------------

pub(super) fn queue_body(p: &QueuePage, dlq_exists: bool, now: u64) -> Markup {
    let q = &p.queue;
    let o = &p.options;
    let t = &p.totals;
    let url = format!("/api/queues/{}", q.name);
    let depth = q.ready + q.delayed + q.leased;
    html! {
        div .pagehead {
            div {
                p .crumbs { a href="/" { "Queues" } " /" }
                h1 {
                    (q.name)
                    span .badge .warn data-show="queue.paused" hidden[!q.paused] { "paused" }
                    span .badge { (o.order) }
                    @if q.durable { span .badge { "durable" } }
                }
                p .links {
                    a href=(format!("/queues/{}/tasks", q.name)) { "Waiting tasks" }
                    @if let Some(d) = &q.dead_letter {
                        " · dead letters go to "
                        @if dlq_exists {
                            a href=(format!("/queues/{d}")) { (d) }
                            " ("
                            a href=(format!("/queues/{d}/tasks")) { "browse" }
                            ")"
                        } @else {
                            code { (d) } " (missing)"
                        }
                    }
                    @if !p.dead_letter_of.is_empty() {
                        " · dead letter queue of "
                        @for (i, n) in p.dead_letter_of.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(format!("/queues/{n}")) { (n) }
                        }
                    }
                }
            }
            @if q.can_admin {
                div .actions {
                    span data-hide="queue.paused" hidden[q.paused] {
                        (action("Pause", "", "POST", &format!("{url}/pause"),
                            &format!("Pause {}? Nothing is delivered until it is resumed; producers may still enqueue.", q.name),
                            "refresh"))
                    }
                    span data-show="queue.paused" hidden[!q.paused] {
                        (action("Resume", "primary", "POST", &format!("{url}/resume"),
                            &format!("Resume {}? Its ready tasks are delivered again.", q.name), "refresh"))
                    }
                    (action("Purge", "danger", "POST", &format!("{url}/purge"),
                        &format!("Purge {}? Every waiting task (ready and delayed) is removed for good; leased tasks stay with their consumers.", q.name),
                        "refresh"))
                    (action("Delete", "danger", "DELETE", &url,
                        &format!("Delete the queue {} and every task in it? This cannot be undone.", q.name),
                        "home"))
                }
            }
        }
        section .cards aria-label="Now" {
            (card("Ready", field("queue.ready", "int", fmt::int(q.ready))))
            (card("Delayed", field("queue.delayed", "int", fmt::int(q.delayed))))
            (card("Leased", field("queue.leased", "int", fmt::int(q.leased))))
            (card("Capacity", html! {
                (field("queue.capacity", "int", fmt::int(q.capacity)))
                span .bar title="Ready + delayed + leased, of the capacity" {
                    (bar("queue.ready+queue.delayed+queue.leased/queue.capacity", depth, q.capacity, ""))
                }
            }))
            (card("Consumers", html! {
                (field("queue.consumers", "int", fmt::int(q.consumers)))
                span .muted { " · credit " (field("queue.credit", "int", fmt::int(q.credit))) }
            }))
            (card("Waiting producers", field("waiting_producers", "int", fmt::int(p.waiting_producers))))
            (card("Enqueued/s", field("queue.enqueue_rate", "rate", fmt::rate(q.enqueue_rate))))
            (card("Acked/s", field("queue.ack_rate", "rate", fmt::rate(q.ack_rate))))
        }
        section .delivery {
            h2 { "Delivery" }
            p {
                (holds("queue.holds", &q.holds, "nothing held back: ready tasks go to consumers with credit"))
            }
        }
        section .charts {
            figure .chart-box {
                figcaption { "Depth" span .muted { " · last hour" } }
                div #chart-depth .chart data-chart="depth" {}
            }
            figure .chart-box {
                figcaption { "Rates" span .muted { " · per second, last hour" } }
                div #chart-rates .chart data-chart="rates" {}
            }
            p .muted .note data-hide="history.t_unix_ms" hidden[!p.history.t_unix_ms.is_empty()] {
                "No samples yet: the broker takes one every " (p.history.interval_s) " s."
            }
        }
        section {
            h2 { "Consumers" }
            div .scroll {
                table .grid {
                    thead {
                        tr {
                            th { "Consumer" }
                            th .num title="Deliveries it asked for and has not received" { "Credit" }
                            th .num { "In flight" }
                            th .num { "Delivered" }
                            th .num { "Acked" }
                            th .num { "Nacked" }
                            th .num { "Mean processing" }
                            th .num { "Oldest lease" }
                            th { "Connected" }
                        }
                    }
                    tbody data-list="consumers" data-key="id" data-template="tpl-consumer" {
                        @for c in &p.consumers { (consumer_row(c, now)) }
                    }
                }
            }
            p .empty data-hide="consumers" hidden[!p.consumers.is_empty()] {
                "No consumer. Start one: " code { "sluice-worker --queue " (q.name) " -- cat" }
            }
            template #tpl-consumer { (consumer_row(&blank_consumer(), now)) }
        }
        (schedules::queue_section(&p.schedules, now))
        // A queue without named groups has one, unnamed: nothing to show.
        section #groups hidden[!p.groups.iter().any(|g| !g.name.is_empty())] {
            h2 { "Groups" }
            div .scroll {
                table .grid {
                    thead {
                        tr {
                            th { "Group" }
                            th .num { "Ready" }
                            th .num { "Leased" }
                            th .num { "Delayed" }
                            th { "Held" }
                        }
                    }
                    tbody data-list="groups" data-key="name" data-template="tpl-group" {
                        @for g in &p.groups { (group_row(g, now)) }
                    }
                }
            }
            template #tpl-group { (group_row(&blank_group(), now)) }
        }
        div .columns {
            section {
                h2 { "Options" }
                dl .kv {
                    dt { "Capacity" } dd { (field("options.capacity", "int", fmt::int(o.capacity))) }
                    dt { "Order" } dd { (field("options.order", "text", o.order.to_owned())) }
                    dt { "Ack deadline" } dd { (field("options.ack_deadline_ms", "ms", fmt::ms(o.ack_deadline_ms))) }
                    dt { "Max attempts" } dd { (field("options.max_attempts", "limit", fmt::limit(u64::from(o.max_attempts)))) }
                    dt { "Retry backoff" } dd {
                        (field("options.retry_initial_ms", "ms", fmt::ms(o.retry_initial_ms)))
                        " to " (field("options.retry_max_ms", "ms", fmt::ms(o.retry_max_ms)))
                        ", ×" (field("options.retry_multiplier", "text", o.retry_multiplier.to_string()))
                    }
                    dt { "Max in flight" } dd { (field("options.max_in_flight", "limit", fmt::limit(o.max_in_flight))) }
                    dt { "Rate" } dd {
                        span data-f="options.rate_limit" data-fmt="ratelimit" data-null="no limit" {
                            (o.rate_limit.as_ref().map(fmt::rate_limit).unwrap_or_else(|| "no limit".into()))
                        }
                    }
                    dt { "Max in flight per group" } dd { (field("options.max_in_flight_per_group", "limit", fmt::limit(o.max_in_flight_per_group))) }
                    dt { "Idempotency window" } dd { (field("options.idempotency_window_ms", "msoff", fmt::ms_off(o.idempotency_window_ms))) }
                    dt { "Dead letter queue" } dd { (field("queue.dead_letter", "text", q.dead_letter.clone().unwrap_or_else(|| "—".into()))) }
                }
            }
            section {
                h2 { "Totals" span .muted { " · since created" } }
                dl .kv {
                    dt { "Enqueued" } dd { (field("totals.enqueued", "int", fmt::int(t.enqueued))) }
                    dt { "Delivered" } dd { (field("totals.delivered", "int", fmt::int(t.delivered))) }
                    dt { "Acked" } dd { (field("totals.acked", "int", fmt::int(t.acked))) }
                    dt { "Nacked" } dd { (field("totals.nacked", "int", fmt::int(t.nacked))) }
                    dt { "Lease expired" } dd { (field("totals.expired", "int", fmt::int(t.expired))) }
                    dt { "Died" } dd { (field("totals.dead", "int", fmt::int(t.dead))) }
                    dt { "Purged" } dd { (field("totals.purged", "int", fmt::int(t.purged))) }
                }
            }
        }
    }
}

fn consumer_row(c: &ConsumerView, now: u64) -> Markup {
    html! {
        tr data-item data-key=(c.id) {
            th scope="row" {
                (field("name", "text", c.name.clone()))
                div .sub { (field("id", "text", c.id.clone())) " · " (field("peer", "text", c.peer.clone())) }
            }
            td .num { (field("credit", "int", fmt::int(c.credit))) }
            td .num { (field("in_flight", "int", fmt::int(c.in_flight))) }
            td .num { (field("delivered", "int", fmt::int(c.delivered))) }
            td .num { (field("acked", "int", fmt::int(c.acked))) }
            td .num { (field("nacked", "int", fmt::int(c.nacked))) }
            td .num { (field("mean_processing_ms", "ms", fmt::ms(c.mean_processing_ms))) }
            td .num { (field("oldest_lease_age_ms", "msoff", fmt::ms_off(c.oldest_lease_age_ms))) }
            td { (field("connected_at_unix_ms", "ago", fmt::ago(c.connected_at_unix_ms, now))) }
        }
    }
}

fn blank_consumer() -> ConsumerView {
    ConsumerView {
        id: String::new(),
        name: String::new(),
        peer: String::new(),
        credit: 0,
        in_flight: 0,
        delivered: 0,
        acked: 0,
        nacked: 0,
        mean_processing_ms: 0,
        oldest_lease_age_ms: 0,
        connected_at_unix_ms: 0,
    }
}

fn group_row(g: &GroupView, now: u64) -> Markup {
    html! {
        tr data-item data-key=(g.name) {
            th scope="row" { (field("name", "group", fmt::group(&g.name))) }
            td .num { (field("ready", "int", fmt::int(g.ready))) }
            td .num { (field("leased", "int", fmt::int(g.leased))) }
            td .num { (field("delayed", "int", fmt::int(g.delayed))) }
            td {
                span .badge .warn data-show="at_cap" hidden[!g.at_cap] { "at its cap" }
                span data-show="throttled_until_unix_ms" hidden[g.throttled_until_unix_ms.is_none()] {
                    " throttled, ends "
                    span data-f="throttled_until_unix_ms" data-fmt="due" {
                        (g.throttled_until_unix_ms.map(|t| fmt::due(t, now)).unwrap_or_default())
                    }
                }
            }
        }
    }
}

fn blank_group() -> GroupView {
    GroupView {
        name: String::new(),
        ready: 0,
        leased: 0,
        delayed: 0,
        throttled_until_unix_ms: None,
        at_cap: false,
    }
}
