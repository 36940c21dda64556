//! `/v1/exports`: the NFS exports, each handler one call on the gateway crate's exports service
//! ([`inarray_nfs::Exports`]), which validates, stores and tells a running gateway at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_nfs::{Export, ExportPatch, ExportSpec, Exports};
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// The export object of the API: the request's fields plus bookkeeping.
#[derive(Serialize)]
pub struct ExportView {
    #[serde(flatten)]
    pub spec: ExportSpec,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Export> for ExportView {
    fn from(e: Export) -> Self {
        Self {
            spec: e.spec,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/exports", get(list_exports).post(create_export))
        .route(
            "/v1/exports/{name}",
            get(get_export).patch(patch_export).delete(delete_export),
        )
}

async fn list_exports(State(x): State<Exports>) -> Result<axum::Json<Vec<ExportView>>, ApiError> {
    Ok(axum::Json(
        x.list().await?.into_iter().map(ExportView::from).collect(),
    ))
}

async fn get_export(
    State(x): State<Exports>,
    Path(name): Path<String>,
) -> Result<axum::Json<ExportView>, ApiError> {
    Ok(axum::Json(x.get(&name).await?.into()))
}

async fn create_export(
    State(x): State<Exports>,
    Json(spec): Json<ExportSpec>,
) -> Result<Response, ApiError> {
    let made = x.create(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(ExportView::from(made))).into_response())
}

async fn patch_export(
    State(x): State<Exports>,
    Path(name): Path<String>,
    Json(patch): Json<ExportPatch>,
) -> Result<axum::Json<ExportView>, ApiError> {
    Ok(axum::Json(x.update(&name, patch).await?.into()))
}

async fn delete_export(
    State(x): State<Exports>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    x.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
