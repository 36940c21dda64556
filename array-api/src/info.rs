//! `/v1/health`, `/v1/openapi.json` and `/v1/info`: about the daemon itself.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The OpenAPI document, served as it is checked in.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/info", get(info))
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn info(State(s): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let engines: Vec<Value> = s
        .manager
        .engines()
        .await?
        .into_iter()
        .map(|e| json!({"name": e.name, "resources": e.resources}))
        .collect();
    let exports: Vec<Value> = s
        .exports
        .list()
        .await?
        .into_iter()
        .map(|e| json!({"name": e.spec.name, "path": e.spec.path}))
        .collect();
    let i = s.access.info();
    Ok(axum::Json(json!({
        "version": i.version,
        "array": i.array,
        "state_dir": i.state_dir,
        "cgroup_mode": i.cgroup_mode,
        "listen": i.listen,
        "nfs_listen": i.nfs_listen,
        "docker_listen": i.docker_listen,
        "engines": engines,
        "exports": exports,
    })))
}
