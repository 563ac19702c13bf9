//! The control plane's endpoints (an axum `Router`): status, swap,
//! rollback, snapshot, metrics, state queries. Every error is `{"error": ..}` with
//! a status that says what kind it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::metrics;
use super::protocol::{parse_request, Request, DEFAULT_WAIT, MAX_REQUEST, REQUEST_TIMEOUT};
use super::query::{state_get, state_scan, QueryError, DEFAULT_SCAN, MAX_SCAN};
use super::server::{error, Conn};
use super::status::status;
use crate::state::{SnapshotError, SnapshotReport};
use crate::swap::{Asker, Controller};

type App = Arc<Controller>;

/// An error answer.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> HttpResponse {
        error(self.0, self.1)
    }
}

impl From<QueryError> for Fail {
    fn from(e: QueryError) -> Fail {
        match e {
            QueryError::NotFound(m) => Fail(StatusCode::NOT_FOUND, m),
            QueryError::Failed(m) => Fail(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// What the control plane serves.
const ENDPOINTS: &str = "GET /, GET /status, POST /swap, POST /rollback, POST /snapshot, GET /metrics, GET /state/OPERATOR?prefix=&limit=, GET /state/OPERATOR/KEY[/NAME]";

/// The endpoints, on `controller`.
pub(super) fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(get_status))
        .route("/swap", post(swap))
        .route("/rollback", post(rollback))
        .route("/snapshot", post(snapshot))
        .route("/metrics", get(get_metrics))
        .route("/state/{operator}", get(scan))
        .route("/state/{operator}/{key}", get(key))
        .route("/state/{operator}/{key}/{name}", get(key_name))
        .fallback(unknown)
        .method_not_allowed_fallback(wrong_method)
        .with_state(controller)
}

async fn unknown(method: Method, uri: Uri) -> Fail {
    Fail(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {method} {} (the control plane serves: {ENDPOINTS})",
            uri.path()
        ),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Fail {
    Fail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method} (the control plane serves: {ENDPOINTS})",
            uri.path()
        ),
    )
}

/// The live page: operators, rates, versions, dead letters, checkpoint
/// age, a swap and rollback form. It holds no data itself: its script asks
/// `/status` and `/metrics` every second.
async fn page() -> HttpResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// The live page's HTML (`control/page.html`).
const PAGE: &str = include_str!("page.html");

async fn get_status(State(c): State<App>) -> HttpResponse {
    Json(status(&c)).into_response()
}

async fn get_metrics(State(c): State<App>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&c),
    )
        .into_response()
}

async fn swap(State(c): State<App>, Extension(conn): Extension<Conn>, body: Body) -> HttpResponse {
    change(c, conn, "/swap", body).await
}

async fn rollback(
    State(c): State<App>,
    Extension(conn): Extension<Conn>,
    body: Body,
) -> HttpResponse {
    change(c, conn, "/rollback", body).await
}

/// The refusal for an operator the pipeline does not run (the swap
/// controller's words).
fn no_operator(c: &Controller, operator: &str) -> Fail {
    let names: Vec<&str> = c.operator_names().collect();
    Fail(
        StatusCode::NOT_FOUND,
        format!(
            "no operator named `{operator}` in this pipeline (it runs: {})",
            names.join(", ")
        ),
    )
}

/// Sets its flag when dropped: the handler's future was dropped because
/// its connection went away.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A swap or rollback: answers once it is durable, or why not.
async fn change(c: App, conn: Conn, path: &'static str, body: Body) -> HttpResponse {
    let received = Instant::now();
    let body = match read_body(body, received + REQUEST_TIMEOUT).await {
        Ok(b) => b,
        Err(f) => return f.into_response(),
    };
    let envelope = match parse_request("POST", path, &body) {
        Ok(e) => e,
        Err(m) => return Fail(StatusCode::BAD_REQUEST, m).into_response(),
    };
    let operator = match &envelope.request {
        Request::Swap { operator, .. } | Request::Rollback { operator } => operator.clone(),
        Request::Status => return get_status(State(c)).await,
    };
    if !c.operator_names().any(|n| n == operator) {
        return no_operator(&c, &operator).into_response();
    }
    let wait = envelope
        .wait_ms
        .map_or(DEFAULT_WAIT, std::time::Duration::from_millis);
    let gone = Arc::new(AtomicBool::new(false));
    let _gone_on_drop = SetOnDrop(gone.clone());
    let done = tokio::task::spawn_blocking(move || {
        let waiting = || !gone.load(Ordering::Acquire) && conn.still_waiting();
        let asker = Asker {
            deadline: received + wait,
            waiting: &waiting,
        };
        match envelope.request {
            Request::Swap {
                operator,
                component,
            } => c.swap(&operator, &component, &asker),
            Request::Rollback { operator } => c.rollback(&operator, &asker),
            Request::Status => unreachable!("answered above"),
        }
    })
    .await;
    match done {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(refused)) => Fail(StatusCode::CONFLICT, refused.0).into_response(),
        Err(e) => Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the {} failed: {e}", &path[1..]),
        )
        .into_response(),
    }
}

/// The request body, which must arrive whole by `deadline` and be at most
/// [`MAX_REQUEST`] bytes.
async fn read_body(body: Body, deadline: Instant) -> Result<Bytes, Fail> {
    let read = axum::body::to_bytes(body, MAX_REQUEST);
    match tokio::time::timeout_at(deadline.into(), read).await {
        Err(_) => Err(Fail(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request did not arrive whole within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_long =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            Err(match too_long {
                true => Fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request is longer than {MAX_REQUEST} bytes"),
                ),
                false => Fail(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
            })
        }
    }
}

/// Runs a state read off the runtime's thread.
async fn read_state<T: Send + 'static>(
    c: App,
    operator: &str,
    read: impl FnOnce(&Controller) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, Fail> {
    if !c.operator_names().any(|n| n == operator) {
        return Err(no_operator(&c, operator));
    }
    match tokio::task::spawn_blocking(move || read(&c)).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the state failed: {e}"),
        )),
    }
}

/// A path that did not decode.
fn bad_path(e: axum::extract::rejection::PathRejection) -> Fail {
    Fail(StatusCode::BAD_REQUEST, format!("malformed path: {e}"))
}

async fn key(
    State(c): State<App>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, Fail> {
    let Path((operator, key)) = path.map_err(bad_path)?;
    let op = operator.clone();
    let v = read_state(c, &op, move |c| state_get(c.store(), &operator, &key, None)).await?;
    Ok(Json(v))
}

async fn key_name(
    State(c): State<App>,
    path: Result<Path<(String, String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, Fail> {
    let Path((operator, key, name)) = path.map_err(bad_path)?;
    let op = operator.clone();
    let v = read_state(c, &op, move |c| {
        state_get(c.store(), &operator, &key, Some(&name))
    })
    .await?;
    Ok(Json(v))
}

/// `?prefix=P&limit=N` of a scan.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

async fn scan(
    State(c): State<App>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    raw: RawQuery,
) -> Result<Json<super::query::Scan>, Fail> {
    let Path(operator) = path.map_err(bad_path)?;
    let uri: Uri = format!("/?{}", raw.0.unwrap_or_default())
        .parse()
        .map_err(|e| Fail(StatusCode::BAD_REQUEST, format!("malformed query: {e}")))?;
    let Query(q) = Query::<ScanQuery>::try_from_uri(&uri).map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("malformed query: {}", e.body_text()),
        )
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_SCAN);
    if limit > MAX_SCAN {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is more than {MAX_SCAN}; narrow the prefix, or scan in steps"),
        ));
    }
    let op = operator.clone();
    let s = read_state(c, &op, move |c| {
        state_scan(c.store(), &operator, &q.prefix, limit)
    })
    .await?;
    Ok(Json(s))
}

/// The body of `POST /snapshot`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    /// The directory to write, an absolute path on the pipeline's machine.
    dest: std::path::PathBuf,
}

/// `POST /snapshot`: a consistent copy of the state directory as of the
/// last checkpoint, written into a new or empty directory.
async fn snapshot(State(c): State<App>, body: Body) -> Result<Json<SnapshotReport>, Fail> {
    let body = read_body(body, Instant::now() + REQUEST_TIMEOUT).await?;
    let req: SnapshotBody = serde_json::from_slice(&body).map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e} (expected {{\"dest\": \"/absolute/path\"}})"),
        )
    })?;
    if !req.dest.is_absolute() {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed request: dest {:?} is not an absolute path (the pipeline's working directory is not yours)",
                req.dest
            ),
        ));
    }
    match tokio::task::spawn_blocking(move || c.store().snapshot(&req.dest)).await {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(e @ SnapshotError::Dest { .. })) => Err(Fail(StatusCode::CONFLICT, e.to_string())),
        Ok(Err(e)) => Err(Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the snapshot failed: {e}"),
        )),
    }
}
