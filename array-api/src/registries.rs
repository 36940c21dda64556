//! Pulling images from registries, pruning the image store, and registry credentials.
//!
//! `POST /v1/images/pull` answers in JSON lines (`application/x-ndjson`): the pull's progress
//! events, then one final line, `{"event":"done","image":{…}}` or
//! `{"event":"error","status":N,"error":{"code","message"}}`. A failure before the first
//! progress event (unknown image, refused credentials, unreachable registry) is answered with
//! its own status and the ordinary error body instead, so most errors keep their 4xx/502.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use inarray_images::PullEvent;
use inarray_runtime::{Manager, ManagerError};
use inarray_store::ImageRow;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::images::ImageView;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/prune", post(prune_images))
        .route("/v1/registries", get(list_registries).post(set_credentials))
        .route("/v1/registries/{registry}", delete(delete_credentials))
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    reference: String,
    /// Progress as JSON lines (default); `false` answers once, when the pull is over.
    #[serde(default = "default_true")]
    stream: bool,
}

fn done_line(row: ImageRow) -> Value {
    json!({"event": "done", "image": ImageView::from(row)})
}

fn error_line(e: ManagerError) -> Value {
    let e = ApiError::from(e);
    json!({"event": "error", "status": e.status.as_u16(),
           "error": {"code": e.code, "message": e.message}})
}

fn line(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}

async fn pull_image(
    State(m): State<Manager>,
    Json(req): Json<PullRequest>,
) -> Result<Response, ApiError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PullEvent>();
    let reference = req.reference;
    // Its own task: the pull goes on (and is shared) if the client goes away.
    let task = tokio::spawn(async move { m.pull_image(&reference, Some(tx)).await });
    let outcome = |joined: Result<Result<ImageRow, ManagerError>, tokio::task::JoinError>| {
        joined.map_err(|e| ManagerError::Internal {
            what: "pull task".into(),
            source: e.into(),
        })?
    };
    if !req.stream {
        while rx.recv().await.is_some() {}
        let row = outcome(task.await)?;
        return Ok((StatusCode::OK, axum::Json(done_line(row))).into_response());
    }
    let Some(first) = rx.recv().await else {
        // Over before any progress: answer with the pull's own status.
        let row = outcome(task.await)?;
        return Ok(ndjson(Body::from(line(&done_line(row)))));
    };
    let stream = futures_util::stream::unfold(
        (Some(first), rx, Some(task)),
        move |(first, mut rx, task)| async move {
            if let Some(ev) = first {
                return Some((Ok::<_, std::io::Error>(line(&ev)), (None, rx, task)));
            }
            if let Some(ev) = rx.recv().await {
                return Some((Ok(line(&ev)), (None, rx, task)));
            }
            let task = task?;
            let last = match outcome(task.await) {
                Ok(row) => done_line(row),
                Err(e) => error_line(e),
            };
            Some((Ok(line(&last)), (None, rx, None)))
        },
    );
    Ok(ndjson(Body::from_stream(stream)))
}

fn ndjson(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

async fn prune_images(State(m): State<Manager>) -> Result<axum::Json<Value>, ApiError> {
    let report = m.prune_images().await?;
    Ok(axum::Json(serde_json::to_value(report).unwrap_or_default()))
}

async fn list_registries(State(m): State<Manager>) -> Result<axum::Json<Value>, ApiError> {
    let list: Vec<Value> = m
        .registry_credentials()
        .await?
        .into_iter()
        .map(|(registry, username, from_api)| {
            json!({"registry": registry, "username": username,
                   "source": if from_api { "api" } else { "config" }})
        })
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsRequest {
    registry: String,
    username: String,
    password: String,
}

async fn set_credentials(
    State(m): State<Manager>,
    Json(req): Json<CredentialsRequest>,
) -> Result<StatusCode, ApiError> {
    m.set_registry_credentials(&req.registry, &req.username, &req.password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_credentials(
    State(m): State<Manager>,
    Path(registry): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.delete_registry_credentials(&registry).await?;
    Ok(StatusCode::NO_CONTENT)
}
