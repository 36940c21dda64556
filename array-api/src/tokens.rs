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

use crate::access::{parse_ttl, Access, Caller, Scope};
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
    /// From then on it is refused (401 "token expired"); null: never.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// It has expired (it stays listed until deleted).
    expired: bool,
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
            expired: r.expires_at.is_some_and(|at| at <= chrono::Utc::now()),
            expires_at: r.expires_at,
            token: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scope: Scope,
    /// When it expires (RFC 3339) …
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// … or how long it lives: `30d`, `12h`, `90m`, or seconds (a number or a string).
    ttl: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
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
    let expires_at = match (req.expires_at, req.ttl) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "ttl: give expires_at or ttl, not both",
            ))
        }
        (at, None) => at,
        (None, Some(ttl)) => {
            let text = match ttl {
                Ttl::Seconds(n) => n.to_string(),
                Ttl::Text(t) => t,
            };
            Some(chrono::Utc::now() + parse_ttl("ttl", &text)?)
        }
    };
    let (row, secret) = a
        .create_token(&req.name, req.scope, &caller.who, expires_at)
        .await?;
    tracing::info!(token = %row.name, scope = %row.scope, by = %caller.who,
        expires_at = ?row.expires_at, "token created");
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
