//! The dashboard's JSON API, under `/api`: what the pages show, and the
//! actions an admin token may take. Every call checks the visitor's
//! rights as the gRPC API does (reading needs the right to read the
//! queue; pause, resume, purge, redrive and delete need its admin; a
//! schedule is its queue's, to read and to administer). A change must
//! come as a POST (DELETE for a queue or a schedule) with a JSON body:
//! a cross-site form can send neither, so a signed-in browser cannot be
//! made to act by another page.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::auth::{Access, Role};
use crate::engine::{Command, NewTask};
use crate::error::Error;

use super::session::{self, may};
use super::{Web, view};

/// An API error: a status and a one-line message, as JSON.
pub struct ApiError(StatusCode, String);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: &self.1 })).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status: tonic::Status = e.into();
        let code = match status.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, status.message().to_owned())
    }
}

/// A JSON body axum could not read, answered in the API's own shape
/// (`{"error": ...}`) with axum's status (400 malformed, 422 wrong fields).
fn unreadable(r: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(r.status(), r.body_text())
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The visitor's rights; 401 without a valid token.
pub fn visitor(web: &Web, headers: &HeaderMap) -> Result<Access, ApiError> {
    session::access(web.tokens.as_deref(), headers).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "sign in with a token (POST /api/session, or Authorization: Bearer)".into(),
        )
    })
}

/// A queue the visitor may act on as `role`. An unknown queue and one the
/// visitor may not read answer alike (404): names are not leaked.
fn queue(
    web: &Web,
    access: &Access,
    name: &str,
    role: Role,
) -> Result<std::sync::Arc<crate::broker::QueueHandle>, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no queue {name:?}"));
    if !may(access, Role::Read, name) {
        return Err(not_found());
    }
    let q = web.broker.queue(name).map_err(|_| not_found())?;
    if !may(access, role, name) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token may not administer queue {name:?}"),
        ));
    }
    Ok(q)
}

/// The queue of schedule `name`, if the visitor may act on it as `role`.
/// A schedule of a queue the visitor may not read answers as an unknown
/// one (404), as the gRPC API's does.
fn schedule(web: &Web, access: &Access, name: &str, role: Role) -> Result<String, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no schedule {name:?}"));
    let queue = web
        .broker
        .schedules()
        .get(name)
        .and_then(|s| s.spec)
        .map(|s| s.queue)
        .ok_or_else(not_found)?;
    if !may(access, Role::Read, &queue) {
        return Err(not_found());
    }
    if !may(access, role, &queue) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token may not administer queue {queue:?}, whose schedule {name:?} is"),
        ));
    }
    Ok(queue)
}

/// Changes are made on the member that leads (or a lone broker): a
/// follower's state only follows the leader's log.
fn leading(web: &Web) -> Result<(), ApiError> {
    if web.cluster.is_none() || web.broker.serving() {
        return Ok(());
    }
    let hint = web
        .broker
        .leader_hint()
        .map(|l| format!(": the leader is at {l}"))
        .unwrap_or_default();
    Err(ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("this cluster member does not lead; act on the leader's dashboard{hint}"),
    ))
}

/// A change's body must be JSON (see the module docs).
fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match ok {
        true => Ok(()),
        false => Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send changes as JSON (content-type: application/json)".into(),
        )),
    }
}

pub async fn overview(State(web): State<Web>, headers: HeaderMap) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    Ok(Json(view::overview(&web, &access)).into_response())
}

pub async fn queue_page(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    let q = queue(&web, &access, &name, Role::Read)?;
    Ok(Json(view::queue_page(&web, &access, &q)).into_response())
}

#[derive(Deserialize)]
pub struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn tasks(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    let q = queue(&web, &access, &name, Role::Read)?;
    let list = view::tasks(&q, page.after.as_deref(), page.limit.unwrap_or(50)).map_err(bad)?;
    Ok(Json(list).into_response())
}

pub async fn jobs(State(web): State<Web>, headers: HeaderMap) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    Ok(Json(view::jobs(&web, &access)).into_response())
}

pub async fn job(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    let page = view::job_page(&web, &access, &id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {id:?}")))?;
    Ok(Json(page).into_response())
}

/// What an action answers.
#[derive(Serialize)]
pub struct Done {
    /// Tasks it removed or moved, where that applies.
    pub count: u64,
    pub message: String,
}

pub async fn pause(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    set_paused(web, headers, name, true).await
}

pub async fn resume(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    set_paused(web, headers, name, false).await
}

async fn set_paused(
    web: Web,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    queue(&web, &access, &name, Role::Admin)?;
    web.broker
        .update_queue(&name, !paused, |s| {
            let mut s = s.clone();
            s.config.paused = paused;
            Ok(s)
        })
        .await?;
    tracing::info!(queue = %name, paused, by = ?access.name(), "queue paused or resumed from the dashboard");
    Ok(Json(Done {
        count: 0,
        message: format!("{} {name}", if paused { "paused" } else { "resumed" }),
    }))
}

pub async fn purge(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    let q = queue(&web, &access, &name, Role::Admin)?;
    let n = web
        .broker
        .apply(&q, |core, now, fx| core.remove(now, Command::Purge, fx));
    tracing::info!(queue = %name, purged = n, by = ?access.name(), "queue purged from the dashboard");
    Ok(Json(Done {
        count: n,
        message: format!("purged {n} tasks from {name}"),
    }))
}

pub async fn delete(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    queue(&web, &access, &name, Role::Admin)?;
    let n = web.broker.delete_queue(&name, false).await?;
    tracing::info!(queue = %name, discarded = n, by = ?access.name(), "queue deleted from the dashboard");
    Ok(Json(Done {
        count: n,
        message: format!("deleted {name} and {n} unfinished tasks"),
    }))
}

pub async fn schedules(State(web): State<Web>, headers: HeaderMap) -> Result<Response, ApiError> {
    let access = visitor(&web, &headers)?;
    Ok(Json(view::schedules(&web, &access)).into_response())
}

pub async fn pause_schedule(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    set_schedule_paused(web, headers, name, true).await
}

pub async fn resume_schedule(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    set_schedule_paused(web, headers, name, false).await
}

async fn set_schedule_paused(
    web: Web,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    let queue = schedule(&web, &access, &name, Role::Admin)?;
    web.broker.pause_schedule(&name, paused).await?;
    tracing::info!(schedule = %name, queue = %queue, paused, by = ?access.name(), "schedule paused or resumed from the dashboard");
    let message = match paused {
        true => format!("paused schedule {name}: no tick fires until it is resumed"),
        false => format!("resumed schedule {name}"),
    };
    Ok(Json(Done { count: 0, message }))
}

pub async fn delete_schedule(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    let queue = schedule(&web, &access, &name, Role::Admin)?;
    web.broker.delete_schedule(&name).await?;
    tracing::info!(schedule = %name, queue = %queue, by = ?access.name(), "schedule deleted from the dashboard");
    Ok(Json(Done {
        count: 0,
        message: format!("deleted schedule {name}"),
    }))
}

#[derive(Deserialize, Default)]
pub struct Redrive {
    /// The tasks to move; none: every waiting task of the queue.
    ids: Option<Vec<String>>,
    /// Where to; none: each task's `x-sluice-dead-from` queue.
    to: Option<String>,
}

/// Tasks moved per step: each step stores its copies (durably) before it
/// removes the originals, so an interruption leaves a task in both
/// queues, never in neither.
const REDRIVE_STEP: usize = 500;

pub async fn redrive(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    req: Result<Json<Redrive>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Done>, ApiError> {
    json_body(&headers)?;
    let Json(req) = req.map_err(unreadable)?;
    leading(&web)?;
    let access = visitor(&web, &headers)?;
    let q = queue(&web, &access, &name, Role::Admin)?;
    let wanted = match &req.ids {
        None => None,
        Some(ids) => Some(view::ids(ids).map_err(bad)?),
    };
    if let Some(to) = &req.to {
        crate::api::validate::queue_name(to)?;
    }
    let mut moved = 0u64;
    let mut after = None;
    loop {
        let (page, _) = q.browse(after, REDRIVE_STEP);
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.id);
        let page: Vec<_> = page
            .into_iter()
            .filter(|b| wanted.as_ref().is_none_or(|w| w.contains(&b.id)))
            .collect();
        let mut by_target: std::collections::BTreeMap<String, Vec<crate::engine::Browsed>> =
            Default::default();
        for b in page {
            let target = req.to.clone().or_else(|| {
                b.body
                    .headers
                    .as_deref()
                    .and_then(|h| h.get("x-sluice-dead-from").cloned())
            });
            let Some(target) = target else {
                return Err(bad(format!(
                    "task {} names no queue to go back to (no x-sluice-dead-from); give `to`",
                    crate::ids::task_id_str(b.id)
                )));
            };
            by_target.entry(target).or_default().push(b);
        }
        for (target, tasks) in by_target {
            if !may(&access, Role::Produce, &target) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!("this token may not produce to {target:?}"),
                ));
            }
            let to = web.broker.queue(&target)?;
            let ids: Vec<_> = tasks.iter().map(|b| b.id).collect();
            let first = web.broker.task_ids(tasks.len() as u64);
            let copies: Vec<NewTask> = tasks
                .into_iter()
                .enumerate()
                .map(|(i, b)| NewTask {
                    id: crate::engine::TaskId(first.0 + i as u64),
                    payload: b.body.payload,
                    headers: b
                        .body
                        .headers
                        .map(|h| *h)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with("x-sluice-dead-"))
                        .collect(),
                    priority: b.priority,
                    delay_ms: 0,
                    key: None,
                    job: None,
                    group: b.group,
                })
                .collect();
            let n = copies.len() as u64;
            web.broker.enqueue(&to, copies, false, None, None).await?;
            let (_, durability) = web.broker.apply_logged(&q, |core, now, fx| {
                core.remove(now, Command::Remove { ids }, fx)
            });
            if let Some(d) = durability {
                d.await.map_err(Error::from)?;
            }
            moved += n;
        }
    }
    tracing::info!(queue = %name, moved, by = ?access.name(), "tasks redriven from the dashboard");
    Ok(Json(Done {
        count: moved,
        message: format!("moved {moved} tasks"),
    }))
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// Signs in: a valid token is kept in the session cookie.
pub async fn sign_in(
    State(web): State<Web>,
    req: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let req = match req {
        Ok(Json(req)) => req,
        Err(r) => return unreadable(r).into_response(),
    };
    let valid = match &web.tokens {
        None => true,
        Some(t) => t.check(&req.token).is_some(),
    };
    if !valid {
        return ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()).into_response();
    }
    (
        [(header::SET_COOKIE, session::set_cookie(&req.token))],
        Json(Done {
            count: 0,
            message: "signed in".into(),
        }),
    )
        .into_response()
}

pub async fn sign_out() -> Response {
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Json(Done {
            count: 0,
            message: "signed out".into(),
        }),
    )
        .into_response()
}
