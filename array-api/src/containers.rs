//! `/v1/containers`: each handler is one typed action of the runtime's [`Manager`] — create,
//! list, inspect, start, stop, restart, kill, wait, delete, logs, live resource limits (PATCH)
//! and usage statistics.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use inarray_runtime::logs::{LogChunk, LogFollower, LogQuery};
use inarray_runtime::{ContainerConfig, Manager};
use inarray_store::{ContainerRow, ContainerState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::Caller;
use crate::access::Scope;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::stats::{stats_response, StatsQuery};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/containers",
            get(list_containers).post(create_container),
        )
        .route(
            "/v1/containers/{id}",
            get(inspect_container)
                .delete(delete_container)
                .patch(update_container),
        )
        .route("/v1/containers/{id}/start", post(start_container))
        .route("/v1/containers/{id}/stop", post(stop_container))
        .route("/v1/containers/{id}/restart", post(restart_container))
        .route("/v1/containers/{id}/kill", post(kill_container))
        .route("/v1/containers/{id}/wait", post(wait_container))
        .route("/v1/containers/{id}/logs", get(container_logs))
        .route("/v1/containers/{id}/stats", get(container_stats))
        .route("/v1/containers/{id}/top", get(container_processes))
}

/// The container object of the API.
#[derive(Serialize)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub pid: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub restart_count: i64,
    pub restart: String,
    pub network: String,
    pub volumes: Value,
    pub command: Option<Vec<String>>,
    pub env: Vec<String>,
    pub engine: String,
    pub resources: inarray_runtime::resources::Resources,
    /// The last exit was a kill by the memory cap.
    pub oom_killed: bool,
    /// It has a terminal (attach to use it).
    pub tty: bool,
    /// Its stdin is open for attached clients.
    pub open_stdin: bool,
    /// It is deleted once it has exited.
    pub auto_remove: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    /// While running with a health check: status, failing streak, the last results.
    pub health: Option<inarray_runtime::health::Health>,
    /// Published ports (ephemeral ones as chosen at create).
    pub ports: Vec<inarray_runtime::network::PortMapping>,
    /// Its addresses on bridge networks (once it has started on one).
    pub networks: Vec<EndpointView>,
    pub hostname: Option<String>,
    pub aliases: Vec<String>,
}

/// A container's address on a network.
#[derive(Serialize)]
pub struct EndpointView {
    pub network: String,
    pub ip: String,
    pub ip6: Option<String>,
}

impl TryFrom<ContainerRow> for ContainerView {
    type Error = ApiError;
    fn try_from(r: ContainerRow) -> Result<Self, ApiError> {
        let cfg: ContainerConfig = serde_json::from_str(&r.spec).map_err(ApiError::internal)?;
        Ok(Self {
            id: r.id,
            name: r.name,
            image: r.image_ref,
            image_id: r.image_id,
            state: r.state,
            exit_code: r.exit_code,
            error: r.error,
            pid: r.pid,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            restart_count: r.restart_count,
            restart: cfg.restart.to_string(),
            network: cfg.network.to_string(),
            volumes: serde_json::to_value(&cfg.volumes).unwrap_or(Value::Null),
            command: cfg.command,
            env: cfg.env,
            engine: r.engine,
            resources: cfg.resources,
            oom_killed: r.oom_killed,
            tty: cfg.tty,
            open_stdin: cfg.open_stdin,
            auto_remove: cfg.auto_remove,
            labels: cfg.labels,
            health: None,
            ports: cfg.ports,
            networks: Vec::new(),
            hostname: cfg.hostname,
            aliases: cfg.aliases,
        })
    }
}

/// Ports below 1024 are the node's privileged ones: only the admin scope may publish them (here,
/// and for a job's container). `prefix`: where the request puts the container (`container.`).
pub(crate) fn privileged_ports(
    who: &crate::access::Identity,
    cfg: &ContainerConfig,
    prefix: &str,
) -> Result<(), ApiError> {
    if who.scope >= Scope::Admin {
        return Ok(());
    }
    match cfg
        .ports
        .iter()
        .enumerate()
        .find(|(_, p)| (1..1024).contains(&p.host_port))
    {
        Some((i, p)) => Err(ApiError::forbidden(format!(
            "{prefix}ports[{i}].host_port: publishing port {} (below 1024) needs the admin scope; the token's is {}",
            p.host_port,
            who.scope.as_str()
        ))),
        None => Ok(()),
    }
}

/// Adds the container's addresses (SQL) to its view.
async fn with_networks(m: &Manager, mut v: ContainerView) -> Result<ContainerView, ApiError> {
    v.networks = m
        .endpoints(&v.id)
        .await?
        .into_iter()
        .map(|e| EndpointView {
            network: e.network,
            ip: e.ip,
            ip6: e.ip6,
        })
        .collect();
    Ok(v)
}

fn view(m: &Manager, r: ContainerRow) -> Result<axum::Json<ContainerView>, ApiError> {
    Ok(axum::Json(with_health(m, r.try_into()?)))
}

/// [`view`] with the container's addresses.
async fn full_view(m: &Manager, r: ContainerRow) -> Result<axum::Json<ContainerView>, ApiError> {
    Ok(axum::Json(
        with_networks(m, with_health(m, r.try_into()?)).await?,
    ))
}

fn with_health(m: &Manager, mut v: ContainerView) -> ContainerView {
    if v.state == ContainerState::Running {
        v.health = m.health(&v.id);
    }
    v
}

async fn create_container(
    State(m): State<Manager>,
    Caller(who): Caller,
    Json(cfg): Json<ContainerConfig>,
) -> Result<Response, ApiError> {
    privileged_ports(&who, &cfg, "")?;
    let row = m.create(cfg).await?;
    Ok((StatusCode::CREATED, full_view(&m, row).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_containers(
    State(m): State<Manager>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<ContainerView>>, ApiError> {
    let rows = m.list(q.all).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|r| ContainerView::try_from(r).map(|v| with_health(&m, v)))
            .collect::<Result<_, _>>()?,
    ))
}

async fn inspect_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    full_view(&m, m.get(&id).await?).await
}

async fn start_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    full_view(&m, m.start(&id).await?).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    timeout: Option<u64>,
}

fn stop_timeout(q: &StopQuery) -> Result<Duration, ApiError> {
    match q.timeout {
        None => Ok(Duration::from_secs(10)),
        Some(t) if t <= 3600 => Ok(Duration::from_secs(t)),
        Some(t) => Err(ApiError::bad_request(format!(
            "timeout: {t} is over the maximum of 3600 seconds"
        ))),
    }
}

async fn stop_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    view(&m, m.stop(&id, stop_timeout(&q)?).await?)
}

async fn restart_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    view(&m, m.restart(&id, stop_timeout(&q)?).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillQuery {
    signal: Option<String>,
}

/// Parses "SIGTERM", "TERM", "term" or "15".
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, ApiError> {
    use std::str::FromStr;
    let bad = || ApiError::bad_request(format!("signal: {s:?} is not a signal name or number"));
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())
}

async fn kill_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    let sig = parse_signal(q.signal.as_deref().unwrap_or("SIGKILL"))?;
    view(&m, m.kill(&id, sig).await?)
}

async fn wait_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let row = m.wait(&id).await?;
    Ok(axum::Json(
        json!({"exit_code": row.exit_code, "state": row.state, "error": row.error}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    m.delete(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// RFC 3339 or seconds since the epoch.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    timestamps: bool,
    #[serde(default = "yes")]
    stdout: bool,
    #[serde(default = "yes")]
    stderr: bool,
}

fn yes() -> bool {
    true
}

/// A time of a query parameter: RFC 3339, or (fractional) seconds since the epoch.
pub(crate) fn parse_time(field: &str, v: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| chrono::DateTime::from_timestamp(s.trunc() as i64, (s.fract() * 1e9) as u32))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: {v:?} is neither an RFC 3339 time nor seconds since the epoch"
            ))
        })
}

impl LogsQuery {
    fn to_query(&self) -> Result<LogQuery, ApiError> {
        Ok(LogQuery {
            stdout: self.stdout,
            stderr: self.stderr,
            since: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            tail: self.tail,
            timestamps: self.timestamps,
        })
    }
}

/// The container's output as text (stdout and stderr as they came, each line once), across its
/// rotated files; with `follow`, then streams what comes until the container stops for good.
async fn container_logs(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let row = m.get(&id).await?;
    let query = q.to_query()?;
    let path = m.paths(&row.id).log();
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    // What is there now (bounded by the log's size limits), read off the async threads; a
    // follower goes on from exactly where that read stopped.
    let (now, end) = {
        let (p, query) = (path.clone(), query.clone());
        tokio::task::spawn_blocking(move || inarray_runtime::logs::read(&p, &query))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?
    };
    let follower = q.follow.then(|| {
        let log = LogFollower::from(&path, query.clone(), end);
        Follow::new(m.clone(), row.id.clone(), log)
    });
    let head: Vec<Result<Vec<u8>, std::io::Error>> = now.into_iter().map(|c| Ok(c.data)).collect();
    let head = futures_util::stream::iter(head);
    let Some(follower) = follower else {
        return Ok((text, Body::from_stream(head)).into_response());
    };
    let tail = futures_util::stream::unfold(follower, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk.data), s))
    });
    Ok((
        text,
        Body::from_stream(futures_util::StreamExt::chain(head, tail)),
    )
        .into_response())
}

/// A container log followed as it grows and rotates, until the container stops for good.
pub(crate) struct Follow {
    m: Manager,
    id: String,
    log: LogFollower,
    ready: std::collections::VecDeque<LogChunk>,
    rx: tokio::sync::broadcast::Receiver<String>,
    done: bool,
}

impl Follow {
    /// Follows the log of `id` from its current end.
    pub(crate) fn from_end(m: Manager, id: String, q: LogQuery) -> Self {
        let log = LogFollower::from_end(&m.paths(&id).log(), q);
        Self::new(m, id, log)
    }

    pub(crate) fn new(m: Manager, id: String, log: LogFollower) -> Self {
        let rx = m.subscribe();
        Self {
            m,
            id,
            log,
            ready: Default::default(),
            rx,
            done: false,
        }
    }

    /// The next piece of output; None once the container is gone or stopped and all is read.
    pub(crate) async fn next_chunk(&mut self) -> Option<LogChunk> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Some(c);
            }
            match self.log.poll() {
                Ok(chunks) if !chunks.is_empty() => {
                    self.ready.extend(chunks);
                    continue;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
            if self.done {
                return None;
            }
            let active = match self.m.get(&self.id).await {
                Ok(r) => matches!(
                    r.state,
                    ContainerState::Running | ContainerState::Restarting
                ),
                Err(_) => false,
            };
            if !active {
                // One more read after the exit was recorded picks up the last output.
                self.done = true;
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), self.rx.recv()).await;
        }
    }
}

/// `PATCH /v1/containers/{id}`: live resource limits, like `docker update`.
/// The body of `PATCH /v1/containers/{id}`: each part left out is unchanged. `resources` as for
/// engines (`null` removes a limit); `restart` a new policy; `name` another name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerPatch {
    #[serde(default, deserialize_with = "given")]
    resources: Option<inarray_runtime::resources::ResourcesUpdate>,
    #[serde(default, deserialize_with = "given")]
    restart: Option<inarray_runtime::RestartPolicy>,
    #[serde(default, deserialize_with = "given")]
    name: Option<String>,
}

/// A part that is given must be a value: `null` is JSON of the wrong shape (422), not "unchanged".
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

async fn update_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Json(p): Json<ContainerPatch>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    if p.resources.is_none() && p.restart.is_none() && p.name.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give resources, restart or name",
        ));
    }
    let update = inarray_runtime::ContainerUpdate {
        resources: p.resources,
        restart: p.restart,
        name: p.name,
    };
    let row = m.update(&id, &update).await?;
    Ok(axum::Json(row.try_into()?))
}

/// The processes of a running container, as the host's `/proc` shows them.
async fn container_processes(
    State(m): State<Manager>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let processes = m.processes(&id).await?;
    Ok(axum::Json(json!({ "processes": processes })))
}

async fn container_stats(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    let first = m.container_usage(&id).await?;
    Ok(stats_response(q.stream, first, move || {
        let (m, id) = (m.clone(), id.clone());
        async move { m.container_usage(&id).await.ok() }
    }))
}
