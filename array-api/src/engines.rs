//! Routes for engines, usage statistics, live resource updates and the Prometheus endpoint.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_runtime::engines::{self, EngineDef, Usage};
use inarray_runtime::resources::Resources;
use inarray_runtime::Manager;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::routes::ContainerView;

pub fn routes() -> Router<Manager> {
    Router::new()
        .route("/v1/engines", get(list).post(create))
        .route(
            "/v1/engines/{name}",
            get(inspect).patch(update).delete(remove),
        )
        .route("/v1/engines/{name}/stats", get(engine_stats))
        .route("/v1/containers/{id}/stats", get(container_stats))
        .route("/metrics", get(metrics))
}

#[derive(Serialize)]
pub struct EngineView {
    pub name: String,
    pub builtin: bool,
    pub cgroup: String,
    pub resources: Resources,
}

impl EngineView {
    fn new(m: &Manager, e: EngineDef) -> Self {
        Self {
            builtin: engines::is_builtin(&e.name),
            cgroup: m.cgroup_layout().engine(&e.name),
            name: e.name,
            resources: e.resources,
        }
    }
}

async fn list(State(m): State<Manager>) -> Result<axum::Json<Vec<EngineView>>, ApiError> {
    Ok(axum::Json(
        m.engines()
            .await?
            .into_iter()
            .map(|e| EngineView::new(&m, e))
            .collect(),
    ))
}

async fn inspect(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<axum::Json<EngineView>, ApiError> {
    Ok(axum::Json(EngineView::new(&m, m.engine(&name).await?)))
}

async fn create(
    State(m): State<Manager>,
    Json(def): Json<EngineDef>,
) -> Result<Response, ApiError> {
    let e = m.create_engine(def).await?;
    Ok((StatusCode::CREATED, axum::Json(EngineView::new(&m, e))).into_response())
}

/// The body of `PATCH /v1/engines/{name}` and `PATCH /v1/containers/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesPatch {
    pub resources: Resources,
}

async fn update(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Json(p): Json<ResourcesPatch>,
) -> Result<axum::Json<EngineView>, ApiError> {
    let e = m.update_engine(&name, &p.resources).await?;
    Ok(axum::Json(EngineView::new(&m, e)))
}

async fn remove(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.delete_engine(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/containers/{id}`: live resource limits, like `docker update`.
pub async fn update_container(
    State(m): State<Manager>,
    Path(id): Path<String>,
    Json(p): Json<ResourcesPatch>,
) -> Result<axum::Json<ContainerView>, ApiError> {
    Ok(axum::Json(
        m.update_resources(&id, &p.resources).await?.try_into()?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    #[serde(default)]
    stream: bool,
}

/// One JSON document, or with `stream=true` one per second as JSON lines until the client goes.
fn stats_response<F, Fut>(stream: bool, first: Usage, next: F) -> Response
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Usage>> + Send,
{
    if !stream {
        return axum::Json(first).into_response();
    }
    let line = |u: &Usage| {
        let mut v = serde_json::to_vec(u).unwrap_or_default();
        v.push(b'\n');
        v
    };
    let head =
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(line(&first))));
    let tail = futures_util::stream::unfold(next, move |next| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let u = next().await?;
        Some((Ok(line(&u)), next))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(head, tail));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn engine_stats(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    let first = m.engine_usage(&name).await?;
    Ok(stats_response(q.stream, first, move || {
        let (m, name) = (m.clone(), name.clone());
        async move { m.engine_usage(&name).await.ok() }
    }))
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

/// Prometheus text exposition (format 0.0.4) for the daemon, engines and running containers.
async fn metrics(
    State(m): State<Manager>,
    access: Option<axum::Extension<crate::access::Access>>,
    nfs: Option<axum::Extension<inarray_nfs::Metrics>>,
) -> Result<Response, ApiError> {
    let mut out = crate::metrics::Exposition::default();
    out.gauge("inarray_up", "1 while the daemon serves", &[], 1.0);
    if let Some(axum::Extension(a)) = access {
        a.write_metrics(&mut out);
    }
    if let Some(rss) = self_rss_bytes() {
        out.gauge(
            "inarray_daemon_resident_memory_bytes",
            "resident memory of the daemon process",
            &[],
            rss as f64,
        );
    }
    let g = m.io_guard_status();
    if g.running {
        out.gauge(
            "inarray_io_guard_holding",
            "1 while the I/O guard holds the containers to their share of the array disk",
            &[],
            if g.holding { 1.0 } else { 0.0 },
        );
        out.gauge(
            "inarray_io_guard_budget_bytes_per_second",
            "what the containers may move on the array disk together while the guard holds",
            &[],
            g.budget_bps as f64,
        );
        out.gauge(
            "inarray_io_guard_disk_peak_bytes_per_second",
            "the array disk's peak rate as the guard estimates it",
            &[],
            g.peak_bps as f64,
        );
        out.counter(
            "inarray_io_guard_engagements_total",
            "how often the I/O guard took hold",
            &[],
            g.engagements as f64,
        );
    }
    let containers = m.list(true).await?;
    for state in ["created", "running", "restarting", "exited", "dead"] {
        let n = containers
            .iter()
            .filter(|c| c.state.as_str() == state)
            .count();
        out.gauge(
            "inarray_containers",
            "containers by state",
            &[("state", state)],
            n as f64,
        );
    }
    for e in m.engines().await? {
        if let Ok(u) = m.engine_usage(&e.name).await {
            out.usage("engine", &[("engine", &e.name)], &u);
        }
    }
    for c in containers.iter().filter(|c| c.state.as_str() == "running") {
        if let Ok(u) = m.container_usage(&c.id).await {
            out.usage(
                "container",
                &[("container", &c.name), ("id", &c.id), ("engine", &c.engine)],
                &u,
            );
        }
    }
    if let Some(axum::Extension(nfs)) = nfs {
        out.nfs(&nfs.snapshot());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    )
        .into_response())
}

fn self_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
