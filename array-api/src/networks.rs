//! `/v1/networks`: bridge networks (netavark) — list, create, inspect, remove.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_runtime::network::NetworkSpec;
use inarray_runtime::Manager;
use inarray_store::NetworkRow;
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route("/v1/networks/{name}", get(inspect).delete(remove))
}

/// The network object of the API.
#[derive(Serialize)]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub driver: &'static str,
    /// The bridge's link name on the node.
    pub interface: String,
    pub subnet: String,
    pub gateway: String,
    pub ipv6: bool,
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    pub internal: bool,
    pub dns: bool,
    pub options: serde_json::Value,
    pub builtin: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<NetworkRow> for NetworkView {
    fn from(n: NetworkRow) -> Self {
        Self {
            options: serde_json::from_str(&n.options).unwrap_or_default(),
            name: n.name,
            id: n.id,
            driver: "bridge",
            interface: n.interface,
            subnet: n.subnet,
            gateway: n.gateway,
            ipv6: n.subnet6.is_some(),
            subnet6: n.subnet6,
            gateway6: n.gateway6,
            internal: n.internal,
            dns: n.dns,
            builtin: n.builtin,
            created_at: n.created_at,
        }
    }
}

async fn list(State(m): State<Manager>) -> Result<axum::Json<Vec<NetworkView>>, ApiError> {
    Ok(axum::Json(
        m.list_networks()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

async fn inspect(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<axum::Json<NetworkView>, ApiError> {
    Ok(axum::Json(m.network(&name).await?.into()))
}

async fn create(
    State(m): State<Manager>,
    Json(spec): Json<NetworkSpec>,
) -> Result<Response, ApiError> {
    let n = m.create_network(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(NetworkView::from(n))).into_response())
}

async fn remove(
    State(m): State<Manager>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
