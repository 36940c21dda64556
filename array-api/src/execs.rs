//! Execs and attach: `POST /v1/containers/{id}/exec` records a process to run in a running
//! container, `POST /v1/execs/{id}/start` starts it (streamed over an upgraded connection, or
//! detached), `GET /v1/execs/{id}` reports it, `POST /v1/execs/{id}/resize` sizes its terminal;
//! `POST /v1/containers/{id}/attach` and `…/resize` do the same for the container's own process.
//! The processes are supervised by the container's shim; the stream format is in `attach.rs`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use inarray_runtime::{Attachment, ExecConfig, Manager};
use serde::Deserialize;

use crate::attach::{requested, respond, Source};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/containers/{id}/exec", post(create_exec))
        .route("/v1/containers/{id}/attach", post(attach_container))
        .route("/v1/containers/{id}/resize", post(resize_container))
        .route("/v1/execs/{id}", get(inspect_exec))
        .route("/v1/execs/{id}/start", post(start_exec).get(start_exec_ws))
        .route("/v1/execs/{id}/resize", post(resize_exec))
}

async fn create_exec(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Json(cfg): Json<ExecConfig>,
) -> Result<Response, ApiError> {
    let e = m.create_exec(&id, cfg).await?;
    Ok((StatusCode::CREATED, axum::Json(e)).into_response())
}

async fn inspect_exec(
    State(m): State<Manager>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(m.exec_info(&id).await?).into_response())
}

/// Upgraded: the stream; otherwise started detached (output discarded).
async fn start_exec(
    State(m): State<Manager>,
    Path(id): Path<String>,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let up = requested(&mut req)?;
    let (info, attached) = m.start_exec(&id, up.is_some()).await?;
    match (up, attached) {
        (Some(up), Some(a)) => {
            let done = async move {
                // Records the exit as soon as the stream has ended.
                let _ = m.exec_info(&id).await;
            };
            let stdin = info.stdin;
            Ok(respond(
                up,
                Source::Shim {
                    stream: a.stream,
                    stdin,
                },
                a.tty,
                done,
            ))
        }
        _ => Ok(axum::Json(info).into_response()),
    }
}

/// A browser's form of the start: its WebSocket API can only send a GET, so a GET starts the
/// exec only with a WebSocket upgrade (never as a side effect of a plain GET).
async fn start_exec_ws(
    State(m): State<Manager>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    m.exec_info(&id).await?;
    let h = req.headers();
    if !(crate::events_ws::header_has(h, axum::http::header::CONNECTION, "upgrade")
        && crate::events_ws::header_has(h, axum::http::header::UPGRADE, "websocket"))
    {
        return Err(ApiError::bad_request(
            "GET starts an exec only with a WebSocket upgrade (or POST it)",
        ));
    }
    start_exec(State(m), Path(id), req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Size {
    rows: u16,
    cols: u16,
}

impl Size {
    fn check(&self) -> Result<(), ApiError> {
        if self.rows == 0 || self.cols == 0 {
            return Err(ApiError::bad_request("rows, cols: must be at least 1"));
        }
        Ok(())
    }
}

async fn resize_exec(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Json(s): Json<Size>,
) -> Result<StatusCode, ApiError> {
    s.check()?;
    m.resize_exec(&id, s.rows, s.cols).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Json(s): Json<Size>,
) -> Result<StatusCode, ApiError> {
    s.check()?;
    m.resize_container(&id, s.rows, s.cols).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachQuery {
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    start: bool,
}

/// Needs an upgrade; with `start=true` a created or exited container is started first, its
/// output held until the stream is connected.
async fn attach_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let row = m.get(&id).await?;
    let Some(up) = requested(&mut req)? else {
        return Err(ApiError::bad_request(
            "attach needs an upgrade (Connection: Upgrade with Upgrade: tcp or websocket)",
        ));
    };
    match m.attach(&row.id, q.stdin, q.start).await? {
        Attachment::Relayed(a) => Ok(respond(
            up,
            Source::Shim {
                stream: a.stream,
                stdin: q.stdin,
            },
            a.tty,
            async {},
        )),
        Attachment::Log { tty } => {
            let follow = crate::containers::Follow::from_end(
                m,
                row.id,
                inarray_runtime::logs::LogQuery::default(),
            );
            Ok(respond(up, Source::Log(Box::new(follow)), tty, async {}))
        }
    }
}
