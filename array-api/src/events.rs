//! `/v1/watches`, `/v1/subscriptions`, `/v1/events`: file events. Each handler is one call on
//! [`inarray_events::Events`], a part of the router's state.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use inarray_events::{parse_types, Events, LogEvent, SubscriptionSpec, WatchSpec};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/watches", get(list_watches).post(create_watch))
        .route("/v1/watches/{name}", get(get_watch).delete(delete_watch))
        .route(
            "/v1/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/v1/subscriptions/{name}",
            get(get_subscription).delete(delete_subscription),
        )
        .route("/v1/subscriptions/{name}/events", get(poll_events))
        .route("/v1/subscriptions/{name}/stream", get(stream_events))
        .route("/v1/subscriptions/{name}/ws", get(ws_events))
        .route("/v1/subscriptions/{name}/ack", post(ack))
        .route("/v1/events", get(read_events))
}

async fn list_watches(State(e): State<Events>) -> Response {
    axum::Json(e.watches()).into_response()
}

async fn create_watch(
    State(e): State<Events>,
    Json(spec): Json<WatchSpec>,
) -> Result<Response, ApiError> {
    let w = e.create_watch(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(w)).into_response())
}

async fn get_watch(
    State(e): State<Events>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(e.watch(&name)?).into_response())
}

async fn delete_watch(
    State(e): State<Events>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    e.delete_watch(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_subscriptions(State(e): State<Events>) -> Response {
    axum::Json(e.subscriptions()).into_response()
}

async fn create_subscription(
    State(e): State<Events>,
    Json(spec): Json<SubscriptionSpec>,
) -> Result<Response, ApiError> {
    let s = e.create_subscription(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(s)).into_response())
}

async fn get_subscription(
    State(e): State<Events>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(e.subscription(&name)?).into_response())
}

async fn delete_subscription(
    State(e): State<Events>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    e.delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollQuery {
    /// Seconds to wait for an event when there is none (0-300, default 0).
    wait: Option<u64>,
    /// Events per answer (1-10000, default 1000).
    max: Option<u32>,
}

/// Events per answer: 1-10000, default 1000.
fn max_of(max: Option<u32>) -> Result<u32, ApiError> {
    let m = max.unwrap_or(1000);
    if !(1..=inarray_events::service::MAX_EVENTS_PER_POLL).contains(&m) {
        return Err(ApiError::bad_request(format!(
            "max: must be between 1 and {}",
            inarray_events::service::MAX_EVENTS_PER_POLL
        )));
    }
    Ok(m)
}

fn wait_of(wait: Option<u64>) -> Result<Duration, ApiError> {
    let w = wait.unwrap_or(0);
    if w > inarray_events::service::MAX_WAIT_SECONDS {
        return Err(ApiError::bad_request(format!(
            "wait: {w} is more than {} seconds",
            inarray_events::service::MAX_WAIT_SECONDS
        )));
    }
    Ok(Duration::from_secs(w))
}

async fn poll_events(
    State(e): State<Events>,
    Path(name): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    let d = e
        .next(&name, wait_of(q.wait)?, q.max.unwrap_or(1000))
        .await?;
    Ok(axum::Json(d).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    max: Option<u32>,
}

/// Server-sent events: each event is `id: <seq>`, `event: <kind>` (a file event) or
/// `event: <type>` (a lifecycle event), `data: <the event as JSON>`.
/// Acknowledge with `POST …/ack` as with polling; unacknowledged events come again after the
/// ack deadline.
async fn stream_events(
    State(e): State<Events>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let max = max_of(q.max)?;
    // Refuse a bad name before the stream starts.
    e.subscription(&name)?;
    let stream = futures_util::stream::unfold(
        (e, name, std::collections::VecDeque::<SseEvent>::new()),
        move |(e, name, mut queue)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), (e, name, queue)));
                }
                match e.next(&name, Duration::from_secs(15), max).await {
                    Ok(d) => {
                        for ev in d.events {
                            let data = serde_json::to_string(&ev).unwrap_or_default();
                            // A file event is named by its kind (as before lifecycle events),
                            // a lifecycle event by its type (`container.die`).
                            let name = match &ev {
                                LogEvent::File(f) => f.kind.as_str(),
                                LogEvent::Lifecycle(l) => l.kind.as_str(),
                            };
                            queue.push_back(
                                SseEvent::default()
                                    .id(ev.seq().to_string())
                                    .event(name)
                                    .data(data),
                            );
                        }
                    }
                    Err(_) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A WebSocket: see [`crate::events_ws`].
async fn ws_events(
    State(e): State<Events>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let max = max_of(q.max)?;
    crate::events_ws::upgrade(e, name, max, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    seq: i64,
}

async fn ack(
    State(e): State<Events>,
    Path(name): Path<String>,
    Json(b): Json<AckBody>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(e.ack(&name, b.seq).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    /// Events with a seq above this (default: 0).
    after: Option<i64>,
    max: Option<u32>,
    wait: Option<u64>,
    /// Comma-separated types (`container.die,job`, `*`); default `file`.
    types: Option<String>,
}

/// The longest `types` query accepted.
const MAX_TYPES_QUERY: usize = 4096;

/// A `types` query (comma-separated) → what the log's reads match; absent: file events.
fn types_of(types: Option<&str>) -> Result<Vec<inarray_store::TypeMatch>, ApiError> {
    let Some(t) = types else {
        return Ok(vec![inarray_store::TypeMatch {
            object: inarray_store::FILE.into(),
            action: None,
        }]);
    };
    if t.len() > MAX_TYPES_QUERY {
        return Err(ApiError::bad_request(format!(
            "types: longer than {MAX_TYPES_QUERY} bytes"
        )));
    }
    let list: Vec<String> = t.split(',').map(str::to_owned).collect();
    Ok(parse_types("types", &list)?)
}

/// The log itself, without a subscription (for `inarray events tail`): no cursor is kept.
async fn read_events(
    State(e): State<Events>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let wait = wait_of(q.wait)?;
    let types = types_of(q.types.as_deref())?;
    let after = q.after.unwrap_or(0);
    let max = q.max.unwrap_or(1000);
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = e.subscribe_seq();
    let mut closing = e.closing();
    loop {
        rx.borrow_and_update();
        let events = e.read(after, max, &types).await?;
        if !events.is_empty()
            || tokio::time::Instant::now() >= deadline
            || *closing.borrow_and_update()
        {
            return Ok(axum::Json(events).into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = rx.changed() => {}
            _ = closing.changed() => {}
        }
    }
}
