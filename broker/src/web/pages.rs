//! The dashboard's HTML (a first cut: the pages are being written).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use super::{Web, session, view};

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sluice" }
            }
            body { (body) }
        }
    }
}

fn signed_in(web: &Web, headers: &HeaderMap) -> Option<crate::api::auth::Access> {
    session::access(web.tokens.as_deref(), headers)
}

pub async fn overview(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return Redirect::to("/login").into_response();
    };
    let o = view::overview(&web, &access);
    layout(
        "queues",
        html! {
            h1 { "queues" }
            table { @for q in &o.queues { tr { td { a href={"/queues/" (q.name)} { (q.name) } } td { (q.ready) } } } }
        },
    )
    .into_response()
}

pub async fn queue(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return Redirect::to("/login").into_response();
    };
    match web.broker.queue(&name) {
        Ok(q) if session::may(&access, crate::api::auth::Role::Read, &name) => {
            let p = view::queue_page(&web, &access, &q);
            layout(
                &name,
                html! { h1 { (p.queue.name) } p { (p.queue.ready) " ready" } },
            )
            .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such queue").into_response(),
    }
}

pub async fn tasks(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    queue(State(web), headers, Path(name)).await
}

pub async fn jobs(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return Redirect::to("/login").into_response();
    };
    let j = view::jobs(&web, &access);
    layout(
        "jobs",
        html! { h1 { "jobs" } @for r in &j.jobs { p { (r.id) } } },
    )
    .into_response()
}

pub async fn job(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(access) = signed_in(&web, &headers) else {
        return Redirect::to("/login").into_response();
    };
    match view::job_page(&web, &access, &id) {
        Some(p) => layout(&id, html! { h1 { (p.job.id) } }).into_response(),
        None => (StatusCode::NOT_FOUND, "no such job").into_response(),
    }
}

pub async fn login() -> Response {
    layout("sign in", html! { h1 { "sign in" } }).into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let _ = file;
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "no such file",
    )
        .into_response()
}
