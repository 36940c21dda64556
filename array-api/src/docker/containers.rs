//! Container lifecycle over the native typed actions: create, start, stop, kill, restart,
//! wait (`condition=not-running|next-exit|removed`), remove, resize, update, rename, prune. Attach and logs are in
//! `streams.rs`, list and inspect in `views.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use inarray_images::Reference;
use inarray_runtime::ManagerError;
use inarray_store::{ContainerRow, ContainerState};
use serde_json::json;

use super::create::{docker_message, translate};
use super::errors::{DockerError, Result};
use super::{json_body, DockerQuery, DockerState};
use crate::extract::Path;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/containers/create", post(create))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/restart", post(restart))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/resize", post(resize))
        .route("/containers/{id}/update", post(update))
        .route("/containers/{id}/rename", post(rename))
        .route("/containers/{id}", delete(remove).post(prune))
        .merge(super::views::routes())
}

async fn create(State(st): State<DockerState>, q: DockerQuery, body: Body) -> Result<Response> {
    let name = q
        .str("name")
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty());
    if let Some(p) = q.str("platform") {
        if !p.starts_with("linux") {
            return Err(DockerError::bad_request(format!(
                "platform: {p:?}: this node runs linux containers only"
            )));
        }
    }
    let v = json_body(body, &st.access.limits()).await?;
    let array = st.access.info().array.clone();
    let mut t = translate(&v, name, &array, st.manager.default_log_limits())?;
    // A missing image is a 404 with Docker's words: the CLI pulls it and tries again.
    let image = match st.manager.find_image(&t.config.image).await {
        Ok(i) => i,
        Err(ManagerError::NotFound { .. }) => {
            let shown = Reference::parse(&t.config.image)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| t.config.image.clone());
            return Err(DockerError::no_such_image(&shown));
        }
        Err(e) => return Err(e.into()),
    };
    if t.image_cmd_alone {
        let defaults: inarray_images::RuntimeConfig = image.config_as().unwrap_or_default();
        t.config.command = defaults.cmd;
    }
    let row = st.manager.create(t.config).await.map_err(|e| {
        let mut d = DockerError::from(e);
        d.message = docker_message(&d.message, &t.origins);
        d
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"Id": row.id, "Warnings": t.warnings})),
    )
        .into_response())
}

fn active(r: &ContainerRow) -> bool {
    matches!(
        r.state,
        ContainerState::Running | ContainerState::Restarting
    )
}

/// 204; 304 if it runs already. Attaches waiting for this start (a `docker run`'s) get the
/// stream, and the start holds the output until the first of them is connected.
async fn start(State(st): State<DockerState>, Path(id): Path<String>) -> Result<StatusCode> {
    let row = st.manager.get(&id).await?;
    if active(&row) {
        return Err(DockerError::not_modified());
    }
    super::streams::start_with_pending(&st, &row.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The stop timeout: `t` seconds (Docker's default 10; -1, "wait for ever", is the native
/// maximum of an hour).
fn timeout(q: &DockerQuery) -> Result<Duration> {
    if q.str("signal")
        .is_some_and(|s| !matches!(s, "SIGTERM" | "TERM" | "15"))
    {
        return Err(DockerError::bad_request(
            "signal: not supported by inarray: a stop sends SIGTERM, then SIGKILL after the timeout (use kill for other signals)",
        ));
    }
    match q.int("t")?.or(q.int("timeout")?) {
        None => Ok(Duration::from_secs(10)),
        Some(-1) => Ok(Duration::from_secs(3600)),
        Some(t) if (0..=3600).contains(&t) => Ok(Duration::from_secs(t as u64)),
        Some(t) => Err(DockerError::bad_request(format!(
            "t: {t} is out of range (-1 or 0 to 3600 seconds)"
        ))),
    }
}

async fn stop(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let t = timeout(&q)?;
    let row = st.manager.get(&id).await?;
    if !active(&row) {
        return Err(DockerError::not_modified());
    }
    st.manager.stop(&row.id, t).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let t = timeout(&q)?;
    st.manager.restart(&id, t).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn kill(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let sig = crate::containers::parse_signal(q.str("signal").unwrap_or("SIGKILL"))?;
    let row = st.manager.get(&id).await?;
    if row.state != ContainerState::Running {
        return Err(DockerError::conflict(format!(
            "Container {} is not running",
            row.id
        )));
    }
    let mut rx = st.manager.subscribe();
    st.manager.kill(&row.id, sig).await?;
    if sig == nix::sys::signal::Signal::SIGKILL {
        // As Docker does: a SIGKILL's reply waits for the exit (at most 10 s), so the next
        // command sees the container stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            match st.manager.get(&row.id).await {
                Ok(r) if r.state == ContainerState::Running => {}
                _ => break,
            }
            recv_for(&mut rx, &row.id, Duration::from_millis(500)).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    if q.bool("link") {
        return Err(DockerError::bad_request(
            "link: links are not supported by inarray",
        ));
    }
    let row = st.manager.get(&id).await?;
    let force = q.bool("force");
    if active(&row) && !force {
        return Err(DockerError::conflict(format!(
            "You cannot remove a {} container {}. Stop the container before attempting removal or force remove",
            row.state, row.id
        )));
    }
    // `v` (anonymous volumes) has nothing to remove: there are none.
    st.manager.delete(&row.id, force).await?;
    st.pending.forget(&row.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/prune` (it shares its path with `DELETE /containers/{id}`): removes every
/// container that does not run (created, exited, dead), with Docker's `until` and `label`
/// filters.
async fn prune(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<Response> {
    if id != "prune" {
        return Err(DockerError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        ));
    }
    let filters = PruneFilters::parse(&q)?;
    let mut deleted = Vec::new();
    for row in st.manager.list(true).await? {
        if active(&row) || !filters.keep(&row) {
            continue;
        }
        // One that started or went meanwhile is left alone: prune never forces.
        if st.manager.delete(&row.id, false).await.is_ok() {
            st.pending.forget(&row.id);
            deleted.push(row.id);
        }
    }
    Ok(axum::Json(json!({"ContainersDeleted": deleted, "SpaceReclaimed": 0})).into_response())
}

/// `filters` of a prune: `until` (a time or a duration before now) and `label` (`k`, `k=v`,
/// `label!=…` to exclude).
struct PruneFilters {
    until: Option<chrono::DateTime<chrono::Utc>>,
    labels: Vec<(String, Option<String>, bool)>,
}

impl PruneFilters {
    fn parse(q: &DockerQuery) -> Result<Self> {
        let mut f = Self {
            until: None,
            labels: Vec::new(),
        };
        for (k, vals) in super::filters(q.str("filters"))? {
            for val in vals {
                match k.as_str() {
                    "until" => f.until = Some(until(&val)?),
                    "label" | "label!" => {
                        let (key, value) = match val.split_once('=') {
                            Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
                            None => (val.clone(), None),
                        };
                        f.labels.push((key, value, k == "label"));
                    }
                    other => {
                        return Err(DockerError::bad_request(format!(
                            "filters: invalid filter '{other}'"
                        )))
                    }
                }
            }
        }
        Ok(f)
    }

    /// Whether the filters let `row` be pruned.
    fn keep(&self, row: &ContainerRow) -> bool {
        if self.until.is_some_and(|u| row.created_at >= u) {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        let labels = serde_json::from_str::<inarray_runtime::ContainerConfig>(&row.spec)
            .map(|c| c.labels)
            .unwrap_or_default();
        self.labels.iter().all(|(k, v, want)| {
            let has = labels
                .get(k)
                .is_some_and(|x| v.as_ref().is_none_or(|v| v == x));
            has == *want
        })
    }
}

/// `until`: RFC 3339, seconds since the epoch, or a Go duration before now (`24h`, `90m`).
fn until(v: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = crate::containers::parse_time("until", v) {
        return Ok(t);
    }
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| DockerError::bad_request(format!("filters: until: {v:?} is not a time")))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(DockerError::bad_request(format!(
                "filters: until: {v:?} is not a time or a duration (s, m, h)"
            )))
        }
    };
    Ok(chrono::Utc::now() - chrono::Duration::seconds(secs))
}

/// `docker update`: the resource fields of HostConfig (zero means "unchanged", as in Docker) and
/// `RestartPolicy` (an empty name means unchanged).
async fn update(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let v = super::json_body(body, &st.access.limits()).await?;
    let update = super::update::update_from(&v)?;
    st.manager.update(&id, &update).await?;
    Ok(axum::Json(json!({"Warnings": []})).into_response())
}

async fn rename(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let name = q
        .str("name")
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DockerError::bad_request("name: a new name is required"))?;
    st.manager
        .update(
            &id,
            &inarray_runtime::ContainerUpdate {
                name: Some(name.to_owned()),
                ..Default::default()
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let (h, w) = size(&q)?;
    st.manager.resize_container(&id, h, w).await?;
    Ok(StatusCode::OK)
}

/// `h` and `w` of a resize, each 1..=65535.
pub fn size(q: &DockerQuery) -> Result<(u16, u16)> {
    let dim = |k: &str| -> Result<u16> {
        q.int(k)?
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                DockerError::bad_request(format!("{k}: a size from 1 to 65535 is required"))
            })
    };
    Ok((dim("h")?, dim("w")?))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
    NotRunning,
    NextExit,
    Removed,
}

/// 200 at once (the Docker CLI blocks on these headers before it sends the start); the body,
/// `{"StatusCode", "Error"}`, comes when the condition is met.
async fn wait(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<Response> {
    let cond = match q.str("condition").unwrap_or("not-running") {
        "not-running" => Condition::NotRunning,
        "next-exit" => Condition::NextExit,
        "removed" => Condition::Removed,
        other => {
            return Err(DockerError::bad_request(format!(
                "condition: {other:?} is not one of not-running, next-exit, removed"
            )))
        }
    };
    // Subscribed before the first look: no change between the two is missed.
    let mut rx = st.manager.subscribe();
    let first = st.manager.get(&id).await?;
    let m = st.manager.clone();
    let outcome = async move {
        let id = first.id.clone();
        let mut last = first.clone();
        loop {
            let now = match m.get(&id).await {
                Ok(r) => Some(r),
                Err(ManagerError::NotFound { .. }) => None,
                Err(e) => break Err(DockerError::from(e).message),
            };
            let done = match (&now, cond) {
                (None, _) => {
                    // Removed: how it ended is the last row seen, or the one the auto-remove kept.
                    if let Some(r) = m.removed_container(&id) {
                        last = r;
                    }
                    true
                }
                (Some(r), Condition::NotRunning) => r.state != ContainerState::Running,
                (Some(r), Condition::NextExit) => {
                    !matches!(r.state, ContainerState::Running | ContainerState::Created)
                        && r.finished_at.is_some()
                        && r.finished_at != first.finished_at
                }
                (Some(_), Condition::Removed) => false,
            };
            if let Some(r) = now {
                last = r;
            }
            if done {
                break Ok(last);
            }
            recv_for(&mut rx, &id, Duration::from_secs(1)).await;
        }
    };
    let body = futures_util::stream::once(async move {
        let v = match outcome.await {
            Ok(r) => {
                let error = match (&r.error, r.exit_code) {
                    (Some(e), None) => json!({"Message": e}),
                    _ => serde_json::Value::Null,
                };
                json!({"StatusCode": r.exit_code.unwrap_or(if r.state == ContainerState::Created { 0 } else { 255 }), "Error": error})
            }
            Err(e) => json!({"StatusCode": 255, "Error": {"Message": e}}),
        };
        Ok::<_, std::io::Error>(format!("{v}\n"))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Waits for a change notification about `id`, at most `max`.
pub async fn recv_for(rx: &mut tokio::sync::broadcast::Receiver<String>, id: &str, max: Duration) {
    let _ = tokio::time::timeout(max, async {
        loop {
            match rx.recv().await {
                Ok(changed) if changed == id => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
