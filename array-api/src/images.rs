//! `/v1/images`: import an archive, list, inspect, remove. Pulling from registries and pruning
//! are in `registries.rs`.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use inarray_runtime::Manager;
use inarray_store::ImageRow;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::Limits;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route(
            "/v1/images/import",
            post(import_image).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/images/{*reference}",
            get(inspect_image).delete(remove_image),
        )
}

#[derive(Serialize)]
pub struct ImageView {
    pub id: String,
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub size: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub config: Value,
    pub layers: Value,
}

impl From<ImageRow> for ImageView {
    fn from(r: ImageRow) -> Self {
        Self {
            config: serde_json::from_str(&r.config).unwrap_or(Value::Null),
            layers: serde_json::from_str(&r.layers).unwrap_or(Value::Null),
            id: r.id,
            names: r.names,
            manifest_digest: r.manifest_digest,
            size: r.size,
            created_at: r.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    name: Option<String>,
}

async fn import_image(
    State(m): State<Manager>,
    State(limits): State<Limits>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let images = import_upload(&m, &limits, body, q.name).await?;
    let views: Vec<ImageView> = images.into_iter().map(ImageView::from).collect();
    let first = views
        .first()
        .map(|v| json!({"id": v.id, "names": v.names}))
        .unwrap_or(Value::Null);
    let body = json!({"id": first["id"], "names": first["names"], "images": views});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// Imports the archive streamed in `body` (compressed or not). A client that stops sending
/// mid-upload is cut off after the idle timeout (408); nothing is imported then.
pub(crate) async fn import_upload(
    m: &Manager,
    limits: &Limits,
    body: Body,
    name: Option<String>,
) -> Result<Vec<ImageRow>, ApiError> {
    let idle = limits.idle_timeout;
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stalled.clone();
    let stream = Box::pin(futures_util::stream::unfold(
        body.into_data_stream(),
        move |mut s| {
            let flag = flag.clone();
            async move {
                match tokio::time::timeout(idle, futures_util::StreamExt::next(&mut s)).await {
                    Ok(Some(item)) => Some((item.map_err(std::io::Error::other), s)),
                    Ok(None) => None,
                    Err(_) => {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no data for {idle:?}"),
                            )),
                            s,
                        ))
                    }
                }
            }
        },
    ));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    match m.import_image(reader, name).await {
        Ok(i) => Ok(i),
        Err(_) if stalled.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(ApiError::upload_stalled(idle))
        }
        Err(e) => Err(e.into()),
    }
}

async fn list_images(State(m): State<Manager>) -> Result<axum::Json<Vec<ImageView>>, ApiError> {
    Ok(axum::Json(
        m.list_images()
            .await?
            .into_iter()
            .map(ImageView::from)
            .collect(),
    ))
}

async fn inspect_image(
    State(m): State<Manager>,
    Path(r): Path<String>,
) -> Result<axum::Json<ImageView>, ApiError> {
    Ok(axum::Json(m.find_image(&r).await?.into()))
}

async fn remove_image(
    State(m): State<Manager>,
    Path(r): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(match m.remove_image(&r).await? {
        inarray_runtime::ImageRemoval::Untagged(name) => json!({"untagged": name}),
        inarray_runtime::ImageRemoval::Deleted(id) => json!({"deleted": id}),
    }))
}
