//! The web dashboard on `--http-listen`: pages people look at when a
//! queue misbehaves (queues, a queue's charts and consumers, dead
//! letters, schedules, jobs), the JSON API they are drawn from, and
//! `/metrics`.
//!
//! One binary: pages are rendered by maud at compile time's templates,
//! the stylesheet, script and chart library (uPlot, vendored) are
//! embedded with `include_bytes!`. Pages come from the server with the
//! state at that moment, then update themselves by polling the API.
//!
//! - `model`: what is shown, as plain values (JSON and pages alike);
//! - `view`: those values read from the broker;
//! - `api`: the JSON API and the actions;
//! - `pages`: the HTML;
//! - `session`: who is looking (tokens, the session cookie);
//! - `history`: each queue's last hour, sampled for the charts.

pub mod api;
pub mod history;
pub mod model;
pub mod pages;
pub mod session;
pub mod view;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::Tokens;
use crate::broker::Broker;
use crate::cluster::proposer::Current;

/// What every handler shares.
#[derive(Clone)]
pub struct Web {
    pub broker: Broker,
    pub tokens: Option<Arc<Tokens>>,
    pub history: history::Histories,
    pub cluster: Option<Current>,
    pub started: Instant,
}

/// The dashboard's routes.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/queues/{name}", get(pages::queue))
        .route("/queues/{name}/tasks", get(pages::tasks))
        .route("/schedules", get(pages::schedules))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/login", get(pages::login))
        .route("/static/{file}", get(pages::asset))
        .route("/metrics", get(metrics))
        .route("/api/overview", get(api::overview))
        .route(
            "/api/queues/{name}",
            get(api::queue_page).delete(api::delete),
        )
        .route("/api/queues/{name}/tasks", get(api::tasks))
        .route("/api/queues/{name}/pause", post(api::pause))
        .route("/api/queues/{name}/resume", post(api::resume))
        .route("/api/queues/{name}/purge", post(api::purge))
        .route("/api/queues/{name}/redrive", post(api::redrive))
        .route("/api/schedules", get(api::schedules))
        .route("/api/schedules/{name}", delete(api::delete_schedule))
        .route("/api/schedules/{name}/pause", post(api::pause_schedule))
        .route("/api/schedules/{name}/resume", post(api::resume_schedule))
        .route("/api/jobs", get(api::jobs))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/session", post(api::sign_in).delete(api::sign_out))
        .with_state(web)
}

async fn metrics(
    axum::extract::State(web): axum::extract::State<Web>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&web.broker, web.cluster.as_ref()),
    )
}

/// Serves the dashboard on `listener` until `shutdown`, sampling every
/// queue's history meanwhile.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    tokens: Option<Arc<Tokens>>,
    cluster: Option<Current>,
    shutdown: CancellationToken,
) {
    let web = Web {
        broker: broker.clone(),
        tokens,
        history: history::Histories::default(),
        cluster,
        started: Instant::now(),
    };
    tokio::spawn(web.history.clone().run(broker, shutdown.clone()));
    let app = router(web);
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "dashboard server stopped");
    }
}
