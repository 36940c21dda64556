//! `/v1/tokens` and `/v1/audit`: API tokens and the audit log, through [`Access`] (which owns
//! the token table and the audit log's store handle).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use inarray_store::TokenRow;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::{Access, Caller, Scope};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(delete_token))
        .route("/v1/audit", get(list_audit))
}

#[derive(Serialize)]
struct TokenView {
    id: i64,
    name: String,
    scope: String,
    created_at: chrono::DateTime<chrono::Utc>,
    created_by: String,
    /// The secret, in the reply to its creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<TokenRow> for TokenView {
    fn from(r: TokenRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            scope: r.scope,
            created_at: r.created_at,
            created_by: r.created_by,
            token: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scope: Scope,
}

async fn list_tokens(State(a): State<Access>) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    Ok(axum::Json(
        a.tokens().await?.into_iter().map(TokenView::from).collect(),
    ))
}

async fn create_token(
    State(a): State<Access>,
    Caller(caller): Caller,
    Json(req): Json<NewToken>,
) -> Result<Response, ApiError> {
    let (row, secret) = a.create_token(&req.name, req.scope, &caller.who).await?;
    tracing::info!(token = %row.name, scope = %row.scope, by = %caller.who, "token created");
    let mut view = TokenView::from(row);
    view.token = Some(secret);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn delete_token(
    State(a): State<Access>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    a.delete_token(&name).await?;
    tracing::info!(token = %name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Entries with an id below this one (the `next` of the previous page).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

async fn list_audit(
    State(a): State<Access>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not between 1 and 1000"
        )));
    }
    let rows = a.audit_page(q.before, limit).await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({"id": r.id, "at": r.at, "who": r.who, "method": r.method, "route": r.route,
                   "target": r.target, "status": r.status})
        })
        .collect();
    Ok(axum::Json(json!({"entries": entries, "next": next})))
}
