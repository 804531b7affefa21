//! The dashboard's HTML: each page is rendered here with the values of
//! `view` at that moment, then `assets/app.js` keeps it current by polling
//! the JSON API (the same `model` values) every 2 s and filling the same
//! elements in place.
//!
//! The markup is the contract between the two, in `data-` attributes:
//! - `data-f="a.b"`: the element's text is the value at `a.b` of the
//!   page's JSON (of the row's item inside a list), formatted by
//!   `data-fmt` (see [`fmt`]; app.js has the same formats: keep them
//!   alike), or `data-null` when there is none;
//! - `data-href="/queues/{name}"`: a link built from the item's fields;
//! - `data-show` / `data-hide="a"`: shown only when `a` is (is not) set:
//!   true, non-zero, non-empty;
//! - `data-bar="used/budget"`: a bar's width, `data-spark`: a sparkline,
//!   `data-holds`: a queue's holds in words, `data-headers`: a task's
//!   headers;
//! - `data-list="queues"` + `data-template`: one `data-item` row per
//!   element, kept by its `data-key`; new rows are cloned from the
//!   template, which is the row function rendered with a blank item, so a
//!   row's markup is written once;
//! - `data-url-tpl` / `data-confirm-tpl`: a row's action button's
//!   `data-url` and `data-confirm` (see [`action`]), built from the item's
//!   fields as `data-href` is (see [`row_action`]).
//!
//! Here: the handlers, the frame around every page, the assets and the
//! pieces pages share; the pages' bodies are in `queues` (the overview and
//! a queue), `tasks` (a queue's waiting tasks), `schedules`, `jobs`, and
//! the formats in `fmt`.
//!
//! Pages are sent with a content security policy that allows scripts from
//! this server only (nothing inline), and may not be framed: an admin's
//! buttons cannot be clicked through another site's page.

mod fmt;
mod jobs;
mod queues;
mod schedules;
mod tasks;

use std::sync::LazyLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::api::auth::{Access, Role};
use crate::broker::now_ms;

use super::model::{HoldView, exists};
use super::session::may;
use super::{Web, session, view};

// ---- handlers -------------------------------------------------------------

fn signed_in(web: &Web, headers: &HeaderMap) -> Option<Access> {
    session::access(web.tokens.as_deref(), headers)
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

pub async fn overview(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let o = view::overview(&web, &access);
    let frame = Frame {
        title: "Queues",
        page: "overview",
        api: Some("/api/overview".into()),
        nav: Nav::Queues,
        who: who(&web, &access),
        charts: false,
    };
    frame.render(queues::overview_body(&o))
}

pub async fn queue(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let Some(q) = readable(&web, &access, &name) else {
        return no_queue(&web, &access, &name);
    };
    let p = view::queue_page(&web, &access, &q);
    let frame = Frame {
        title: &name,
        page: "queue",
        api: Some(format!("/api/queues/{name}")),
        nav: Nav::Queues,
        who: who(&web, &access),
        charts: true,
    };
    let dlq_exists = p
        .queue
        .dead_letter
        .as_deref()
        .is_some_and(|d| exists(&web.broker, d));
    frame.render(queues::queue_body(&p, dlq_exists, now_ms()))
}

/// `/queues/{name}/tasks?after=ID`: which page of the list.
#[derive(Deserialize)]
pub struct TasksQuery {
    after: Option<String>,
}

/// Tasks listed on one page.
const TASKS_PER_PAGE: usize = 50;

pub async fn tasks(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<TasksQuery>,
) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let Some(q) = readable(&web, &access, &name) else {
        return no_queue(&web, &access, &name);
    };
    let after = query.after.filter(|a| !a.is_empty());
    let list = view::tasks(&q, after.as_deref(), TASKS_PER_PAGE);
    let dead_letter_of: Vec<String> = web
        .broker
        .queues()
        .iter()
        .filter(|o| o.config().dead_letter.as_deref() == Some(name.as_str()))
        .filter(|o| may(&access, Role::Read, o.name()))
        .map(|o| o.name().to_owned())
        .collect();
    // Where a redrive may send tasks: the queues this token may produce to.
    let targets: Vec<String> = web
        .broker
        .queues()
        .iter()
        .map(|o| o.name().to_owned())
        .filter(|n| *n != name && may(&access, Role::Produce, n))
        .collect();
    let mut api = format!("/api/queues/{name}/tasks?limit={TASKS_PER_PAGE}");
    if let Some(a) = &after {
        api.push_str("&after=");
        api.push_str(&pct(a));
    }
    let frame = Frame {
        title: &format!("Waiting tasks of {name}"),
        page: "tasks",
        api: Some(api),
        nav: Nav::Queues,
        who: who(&web, &access),
        charts: false,
    };
    let ctx = tasks::TasksCtx {
        name: &name,
        can_admin: may(&access, Role::Admin, &name),
        after: after.as_deref(),
        dead_letter_of: &dead_letter_of,
        targets: &targets,
    };
    frame.render(tasks::tasks_body(&ctx, list, now_ms()))
}

pub async fn schedules(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let l = view::schedules(&web, &access);
    let frame = Frame {
        title: "Schedules",
        page: "schedules",
        api: Some("/api/schedules".into()),
        nav: Nav::Schedules,
        who: who(&web, &access),
        charts: false,
    };
    frame.render(schedules::schedules_body(&l, now_ms()))
}

pub async fn jobs(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let j = view::jobs(&web, &access);
    let frame = Frame {
        title: "Jobs",
        page: "jobs",
        api: Some("/api/jobs".into()),
        nav: Nav::Jobs,
        who: who(&web, &access),
        charts: false,
    };
    frame.render(jobs::jobs_body(&j, now_ms()))
}

pub async fn job(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return to_login();
    };
    let frame = Frame {
        title: &format!("Job {id}"),
        page: "job",
        api: Some(format!("/api/jobs/{}", pct(&id))),
        nav: Nav::Jobs,
        who: who(&web, &access),
        charts: false,
    };
    match view::job_page(&web, &access, &id) {
        Some(p) => frame.render(jobs::job_body(&p, now_ms())),
        None => frame.not_found(html! {
            h1 { "No job " code { (id) } }
            p { "The broker keeps no job by that id (or this token may not read its queues)." }
            p { a href="/jobs" { "All jobs" } }
        }),
    }
}

pub async fn login() -> Response {
    let frame = Frame {
        title: "Sign in",
        page: "login",
        api: None,
        nav: Nav::None,
        who: Who::Nobody,
        charts: false,
    };
    frame.render(html! {
        form #login .card .narrow {
            h1 { "Sign in" }
            p .muted {
                "This broker asks for a token (one of its " code { "--auth-file" } "). "
                "The dashboard keeps it in a cookie that scripts cannot read, "
                "until you sign out or close the browser."
            }
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password"
                required autofocus spellcheck="false";
            button .primary type="submit" { "Sign in" }
            p #login-error .error role="alert" hidden {}
        }
    })
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file",
        )
            .into_response(),
    }
}

/// The queue `name` if the visitor may read it; an unknown queue and one
/// the visitor may not read look alike, as in the API.
fn readable(
    web: &Web,
    access: &Access,
    name: &str,
) -> Option<std::sync::Arc<crate::broker::QueueHandle>> {
    if !may(access, Role::Read, name) {
        return None;
    }
    web.broker.queue(name).ok()
}

fn no_queue(web: &Web, access: &Access, name: &str) -> Response {
    let frame = Frame {
        title: "No such queue",
        page: "missing",
        api: None,
        nav: Nav::Queues,
        who: who(web, access),
        charts: false,
    };
    frame.not_found(html! {
        h1 { "No queue " code { (name) } }
        p { "There is no queue by that name (or this token may not read it)." }
        p { a href="/" { "All queues" } }
    })
}

// ---- assets ---------------------------------------------------------------

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Everything the pages load, in the binary: nothing is fetched from
/// elsewhere at run time.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
    // uPlot 1.6.32 from the npm registry, as published (MIT).
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("assets/uPlot.LICENSE"),
    },
];

/// A hash of every asset: pages name assets with it (`?v=`), so a browser
/// that cached an older broker's script asks for the new one.
static ASSETS_VERSION: LazyLock<String> = LazyLock::new(|| {
    // FNV-1a: no dependency, and collisions only cost a stale cache.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ASSETS.iter().flat_map(|a| a.body) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
});

fn asset_url(name: &str) -> String {
    format!("/static/{name}?v={}", *ASSETS_VERSION)
}

// ---- the frame around every page --------------------------------------------

#[derive(PartialEq)]
enum Nav {
    Queues,
    Schedules,
    Jobs,
    None,
}

/// Who is looking, as the header shows it.
enum Who {
    /// The sign-in page: nobody yet.
    Nobody,
    /// No auth file: everyone may do everything.
    Open,
    /// A token, by its name in the auth file.
    Token(String),
}

fn who(web: &Web, access: &Access) -> Who {
    match (&web.tokens, access.name()) {
        (None, _) => Who::Open,
        (Some(_), Some(n)) => Who::Token(n.to_owned()),
        (Some(_), None) => Who::Token("signed in".to_owned()),
    }
}

struct Frame<'a> {
    title: &'a str,
    /// Which of app.js's pages this is (`data-page`).
    page: &'static str,
    /// The JSON API the page polls.
    api: Option<String>,
    nav: Nav,
    who: Who,
    /// Whether the page draws charts (loads uPlot).
    charts: bool,
}

/// What every page is sent with: not cached (it is a moment's state), not
/// framed, scripts from this server only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

impl Frame<'_> {
    fn render(self, body: Markup) -> Response {
        self.respond(StatusCode::OK, body)
    }

    fn not_found(self, body: Markup) -> Response {
        self.respond(StatusCode::NOT_FOUND, body)
    }

    fn respond(self, status: StatusCode, body: Markup) -> Response {
        let current = |n: Nav| (self.nav == n).then_some("page");
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="color-scheme" content="light dark";
                    title { (self.title) " · sluice" }
                    link rel="icon" type="image/svg+xml" href=(asset_url("favicon.svg"));
                    @if self.charts {
                        link rel="stylesheet" href=(asset_url("uPlot.min.css"));
                    }
                    link rel="stylesheet" href=(asset_url("app.css"));
                    @if self.charts {
                        script src=(asset_url("uPlot.iife.min.js")) {}
                    }
                    // In the head, not deferred: it applies the remembered
                    // theme before the first paint, then waits for the page.
                    script src=(asset_url("app.js")) {}
                }
                body data-page=(self.page) data-api=[self.api.as_deref()] {
                    header .top {
                        a .brand href="/" {
                            img src=(asset_url("favicon.svg")) alt="" width="20" height="20";
                            "sluice"
                        }
                        @if self.nav != Nav::None {
                            nav {
                                a href="/" aria-current=[current(Nav::Queues)] { "Queues" }
                                a href="/schedules" aria-current=[current(Nav::Schedules)] { "Schedules" }
                                a href="/jobs" aria-current=[current(Nav::Jobs)] { "Jobs" }
                            }
                        }
                        div .tools {
                            @if self.api.is_some() {
                                span #live .live title="Updates every 2 seconds" { "live" }
                            }
                            button #theme .ghost type="button" title="Dark or light"
                                aria-label="Switch between dark and light" { "◐" }
                            @match &self.who {
                                Who::Nobody => {}
                                Who::Open => span .who title="The broker runs without --auth-file: everyone may do everything" {
                                    "open access"
                                },
                                Who::Token(name) => {
                                    span .who title="Signed in as" { (name) }
                                    button #signout .ghost type="button" { "Sign out" }
                                }
                            }
                        }
                    }
                    main { (body) }
                    dialog #confirm aria-labelledby="confirm-text" {
                        form method="dialog" {
                            p #confirm-text {}
                            div .buttons {
                                button value="cancel" type="submit" { "Cancel" }
                                button #confirm-ok .danger value="ok" type="submit" { "OK" }
                            }
                        }
                    }
                    div #toast role="status" aria-live="polite" hidden {}
                }
            }
        };
        let mut res = (status, page).into_response();
        let h = res.headers_mut();
        for (k, v) in [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        res
    }
}

// ---- pieces -------------------------------------------------------------------

/// A number the page keeps current: `data-f` + `data-fmt`, with its text
/// now.
fn field(path: &str, format: &str, text: String) -> Markup {
    html! { span data-f=(path) data-fmt=(format) { (text) } }
}

/// A bar filled to `num / den`, `spec` naming the fields (`used/total`).
fn bar(spec: &str, num: u64, den: u64, class: &str) -> Markup {
    html! {
        span class=(format!("bar-fill {class}").trim_end()) data-bar=(spec) style=(format!("width: {:.1}%", percent(num, den))) {}
    }
}

fn percent(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 * 100.0 / den as f64).min(100.0)
    }
}

/// A queue's holds in words (app.js redraws them in the same shape).
fn holds(path: &str, holds: &[HoldView], empty: &str) -> Markup {
    html! {
        span .holds data-holds=(path) data-empty=(empty) {
            @for h in holds {
                span .hold data-reason=(h.reason) { (h.text) }
            }
            @if holds.is_empty() {
                span .muted { (empty) }
            }
        }
    }
}

/// A sparkline of `values` (depth over the last minutes).
fn spark(path: &str, values: &[u64]) -> Markup {
    let (line, area) = fmt::spark_paths(values);
    let max = values.iter().copied().max().unwrap_or(0);
    html! {
        svg .spark data-spark=(path) viewBox="0 0 100 24" preserveAspectRatio="none"
            role="img" aria-label=(format!("depth over the last minutes, at most {max}")) {
            path .area d=(area) {}
            path .line d=(line) {}
        }
    }
}

fn card(label: &str, body: Markup) -> Markup {
    html! {
        div .stat {
            div .label { (label) }
            div .value { (body) }
        }
    }
}

/// An action button: app.js confirms `confirm` first, then sends `method
/// url` with a JSON body and, once done, does `then` ("refresh": poll now,
/// "home": go to the overview).
fn action(label: &str, class: &str, method: &str, url: &str, confirm: &str, then: &str) -> Markup {
    html! {
        button type="button" class=(class) data-action=(method) data-url=(url)
            data-confirm=(confirm) data-ok=(label) data-then=(then) { (label) }
    }
}

/// An action button in a list's row: as [`action`], its `url` and
/// `confirm` templates with `{name}` filled with the row's `name` now, and
/// kept in `data-url-tpl` / `data-confirm-tpl` so that app.js fills them
/// for rows it makes from the template. Once done, the page polls.
fn row_action(
    name: &str,
    label: &str,
    class: &str,
    method: &str,
    url: &str,
    confirm: &str,
) -> Markup {
    html! {
        button type="button" class=(class) data-action=(method)
            data-url=(url.replace("{name}", &pct(name))) data-url-tpl=(url)
            data-confirm=(confirm.replace("{name}", name)) data-confirm-tpl=(confirm)
            data-ok=(label) data-then="refresh" { (label) }
    }
}

/// Percent-encodes a path segment or query value (job ids are any text).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_asset_is_served_and_others_are_not() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            let res = asset(Path(a.name.to_owned())).await;
            assert_eq!(res.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(res.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(res.headers().contains_key(header::CACHE_CONTROL));
        }
        for missing in ["nope.js", "../pages.rs", "", "app.js.map"] {
            let res = asset(Path(missing.to_owned())).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{missing}");
        }
        assert_eq!(asset_url("app.js").len(), "/static/app.js?v=".len() + 8);
    }

    #[test]
    fn job_ids_are_encoded_in_links() {
        assert_eq!(pct("a b/c?"), "a%20b%2Fc%3F");
    }
}
