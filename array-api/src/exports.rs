//! `/v1/exports`: the NFS exports. Requests are validated by the gateway crate's types, stored in
//! SQL, and a running gateway is told at once (new mounts see the change; existing handles are
//! checked against the new client rules on their next call).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_nfs::{ExportPatch, ExportSpec, Invalid};
use inarray_runtime::Manager;
use inarray_store::{ExportRow, StoreError};
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::{Json, Path};

/// The export object of the API: the request's fields plus bookkeeping.
#[derive(Serialize)]
pub struct ExportView {
    #[serde(flatten)]
    pub spec: ExportSpec,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn view(row: &ExportRow) -> Result<ExportView, ApiError> {
    Ok(ExportView {
        spec: inarray_nfs::view(row).map_err(ApiError::internal)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn invalid(e: Invalid) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// Makes the running NFS gateway's counters reachable from `/metrics`.
pub fn attach_metrics(router: axum::Router, metrics: inarray_nfs::Metrics) -> axum::Router {
    router.layer(axum::Extension(metrics))
}

pub fn routes() -> Router<Manager> {
    Router::new()
        .route("/v1/exports", get(list_exports).post(create_export))
        .route(
            "/v1/exports/{name}",
            get(get_export).patch(patch_export).delete(delete_export),
        )
}

async fn list_exports(State(m): State<Manager>) -> Result<axum::Json<Vec<ExportView>>, ApiError> {
    let rows = m.store().list_exports().await?;
    Ok(axum::Json(rows.iter().map(view).collect::<Result<_, _>>()?))
}

async fn find(m: &Manager, name: &str) -> Result<ExportRow, ApiError> {
    m.store()
        .export(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such export: {name}")))
}

async fn get_export(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<axum::Json<ExportView>, ApiError> {
    Ok(axum::Json(view(&find(&m, &name).await?)?))
}

async fn create_export(
    State(m): State<Manager>,
    Json(spec): Json<ExportSpec>,
) -> Result<Response, ApiError> {
    let spec = spec.validate().map_err(invalid)?;
    let rows = spec.client_rows();
    let row = m
        .store()
        .insert_export(spec.as_new(&rows))
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("an export named {:?} already exists", spec.name),
            ),
            other => other.into(),
        })?;
    inarray_nfs::exports_changed();
    Ok((StatusCode::CREATED, axum::Json(view(&row)?)).into_response())
}

async fn patch_export(
    State(m): State<Manager>,
    Path(name): Path<String>,
    Json(patch): Json<ExportPatch>,
) -> Result<axum::Json<ExportView>, ApiError> {
    let current = inarray_nfs::view(&find(&m, &name).await?).map_err(ApiError::internal)?;
    let spec = current.patched(patch).map_err(invalid)?;
    let rows = spec.client_rows();
    let row = m
        .store()
        .update_export(spec.as_new(&rows))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such export: {name}")))?;
    inarray_nfs::exports_changed();
    Ok(axum::Json(view(&row)?))
}

async fn delete_export(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !m.store().delete_export(&name).await? {
        return Err(ApiError::not_found(format!("no such export: {name}")));
    }
    inarray_nfs::exports_changed();
    Ok(StatusCode::NO_CONTENT)
}
