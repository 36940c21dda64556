//! `/v1/engines`: engines (cgroup groups of containers with shared limits), their live limits
//! and usage statistics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_runtime::engines::{self, EngineDef};
use inarray_runtime::resources::{Resources, ResourcesUpdate};
use inarray_runtime::Manager;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::stats::{stats_response, StatsQuery};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/engines", get(list).post(create))
        .route(
            "/v1/engines/{name}",
            get(inspect).patch(update).delete(remove),
        )
        .route("/v1/engines/{name}/stats", get(engine_stats))
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

/// The body of `PATCH /v1/engines/{name}` and `PATCH /v1/containers/{id}`: a limit left out is
/// unchanged, `null` removes it, a value replaces it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesPatch {
    pub resources: ResourcesUpdate,
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
