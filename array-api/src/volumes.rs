//! `/v1/volumes`: array volumes (named pieces of the array with a quota), their snapshots,
//! restores and clones. The rules are the runtime's (`Manager::create_volume` …); this file only
//! maps routes to them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use inarray_runtime::{Manager, SnapshotInfo, VolumeInfo, VolumePatch, VolumeSpec};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/volumes", get(list).post(create))
        .route(
            "/v1/volumes/{name}",
            get(inspect).patch(update).delete(remove),
        )
        .route(
            "/v1/volumes/{name}/snapshots",
            get(snapshots).post(snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}",
            delete(delete_snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}/restore",
            post(restore),
        )
        .route("/v1/volumes/{name}/clone", post(clone))
}

async fn list(State(m): State<Manager>) -> Result<axum::Json<Vec<VolumeInfo>>, ApiError> {
    Ok(axum::Json(m.volumes().await?))
}

async fn inspect(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<axum::Json<VolumeInfo>, ApiError> {
    Ok(axum::Json(m.volume(&name).await?))
}

async fn create(
    State(m): State<Manager>,
    Json(spec): Json<VolumeSpec>,
) -> Result<Response, ApiError> {
    let v = m.create_volume(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn update(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Json(p): Json<VolumePatch>,
) -> Result<axum::Json<VolumeInfo>, ApiError> {
    Ok(axum::Json(m.update_volume(&name, p).await?))
}

async fn remove(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.delete_volume(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    name: String,
}

async fn snapshots(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<SnapshotInfo>>, ApiError> {
    Ok(axum::Json(m.snapshots(&name).await?))
}

async fn snapshot(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Json(b): Json<SnapshotBody>,
) -> Result<Response, ApiError> {
    let s = m.create_snapshot(&name, &b.name).await?;
    Ok((StatusCode::CREATED, axum::Json(s)).into_response())
}

async fn delete_snapshot(
    State(m): State<Manager>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    m.delete_snapshot(&name, &snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(m): State<Manager>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<axum::Json<VolumeInfo>, ApiError> {
    Ok(axum::Json(m.restore_snapshot(&name, &snapshot).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    /// The new volume's name.
    name: String,
    /// Clone this snapshot of the volume; absent: the live volume (an atomic copy-on-write
    /// snapshot of it).
    #[serde(default)]
    snapshot: Option<String>,
    /// The new volume's quota; absent: the source's.
    #[serde(default)]
    size: Option<u64>,
}

async fn clone(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Json(b): Json<CloneBody>,
) -> Result<Response, ApiError> {
    let v = m
        .clone_volume(&name, b.snapshot.as_deref(), &b.name, b.size)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}
