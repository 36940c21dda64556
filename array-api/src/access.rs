//! Who may call what: the peer of each connection, bearer tokens and their scopes, the limits on
//! requests, the audit log of mutating calls, the per-request span and latency histograms.
//!
//! Every request passes through [`guard`] (a middleware the daemon adds with [`attach`]):
//! - over a unix socket the caller is `unix:<uid>` (SO_PEERCRED) and has the `admin` scope: the
//!   socket's mode and group are the access control;
//! - over TCP the caller must send `Authorization: Bearer <token>`; a missing or unknown token is
//!   401, a token whose scope does not cover the route is 403, both in the API's error shape;
//! - at most `max_in_flight` requests are served at once (503 beyond);
//! - every mutating call (any method but GET/HEAD), refused ones included, is appended to the
//!   audit log in SQL before its reply is sent.
//!
//! Tokens are random 256-bit secrets; only their SHA-256 is stored (see docs/design/service.md for
//! why no slow KDF is needed). The table is cached in memory and re-read after every change and
//! on SIGHUP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use inarray_runtime::Manager;
use inarray_store::{NewAudit, Store, TokenRow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// The other end of a connection, attached to every request by the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket client, by its kernel credentials (SO_PEERCRED).
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    /// A TCP client; `client_cert` is the subject of a verified TLS client certificate.
    Tcp {
        addr: SocketAddr,
        client_cert: Option<String>,
    },
}

/// What a token may do. Ordered: each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET on everything but tokens and the audit log.
    Read,
    /// Read, and actions on containers, images and jobs.
    Operate,
    /// Everything: engines, exports, tokens, the audit log.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "operate" => Some(Self::Operate),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The scope a request needs, from its method and matched route template.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let under = |p: &str| route == p || route.starts_with(&format!("{p}/"));
    // Registry credentials (usernames; passwords are never returned) are the admin's business.
    if under("/v1/tokens") || under("/v1/audit") || under("/v1/registries") {
        return Scope::Admin;
    }
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    if under("/v1/containers") || under("/v1/images") || under("/v1/jobs") {
        return Scope::Operate;
    }
    Scope::Admin
}

/// The authenticated caller of a request (a request extension after [`guard`]).
#[derive(Clone, Debug)]
pub struct Identity {
    /// `unix:<uid>` or `token:<id>:<name>`.
    pub who: String,
    pub scope: Scope,
}

/// Request limits; every one has a default and a config key (`[api]` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON request body (bytes); image archives are streamed and bounded by the image store.
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body.
    pub max_json_depth: usize,
    /// Most entries in any one JSON array of a body.
    pub max_array_len: usize,
    /// Time to receive a request's headers; it runs from the connection's start or the end of
    /// the previous reply, so it is also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time to receive a whole JSON body.
    pub body_timeout: Duration,
    /// Longest silence while a streamed upload (image import) is read.
    pub idle_timeout: Duration,
    /// Requests served at once, over all listeners (503 beyond).
    pub max_in_flight: usize,
    /// Open connections per listener (new ones are closed beyond).
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests before closing their connections.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_json_depth: 32,
            max_array_len: 16384,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_in_flight: 256,
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// The `[api]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub max_body_bytes: Option<usize>,
    pub max_json_depth: Option<usize>,
    pub max_array_len: Option<usize>,
    pub header_timeout_secs: Option<f64>,
    pub body_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub max_connections: Option<usize>,
    pub shutdown_timeout_secs: Option<f64>,
    /// Days an audit entry is kept (default 90).
    pub audit_retention_days: Option<u32>,
    /// Most audit entries kept (default 1,000,000).
    pub audit_max_entries: Option<u64>,
    /// PEM certificate chain and private key: the TCP listeners speak TLS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: TLS clients must then present a certificate it signed (tokens are still
    /// needed on top).
    pub tls_client_ca: Option<PathBuf>,
}

/// Largest body a config may allow (the router's own ceiling).
pub const MAX_BODY_CEILING: usize = 16 << 20;

impl ApiConfig {
    pub fn limits(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let secs = |key: &str, v: Option<f64>, def: Duration| match v {
            None => Ok(def),
            Some(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(format!("api.{key}: {s} is not between 0 and 86400 seconds")),
        };
        let count = |key: &str, v: Option<usize>, def: usize, max: usize| match v {
            None => Ok(def),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(format!("api.{key}: {n} is not between 1 and {max}")),
        };
        Ok(Limits {
            max_body_bytes: count(
                "max_body_bytes",
                self.max_body_bytes,
                d.max_body_bytes,
                MAX_BODY_CEILING,
            )?,
            max_json_depth: count("max_json_depth", self.max_json_depth, d.max_json_depth, 128)?,
            max_array_len: count(
                "max_array_len",
                self.max_array_len,
                d.max_array_len,
                1 << 20,
            )?,
            header_timeout: secs(
                "header_timeout_secs",
                self.header_timeout_secs,
                d.header_timeout,
            )?,
            body_timeout: secs("body_timeout_secs", self.body_timeout_secs, d.body_timeout)?,
            idle_timeout: secs("idle_timeout_secs", self.idle_timeout_secs, d.idle_timeout)?,
            max_in_flight: count(
                "max_in_flight",
                self.max_in_flight,
                d.max_in_flight,
                1 << 16,
            )?,
            max_connections: count(
                "max_connections",
                self.max_connections,
                d.max_connections,
                1 << 20,
            )?,
            shutdown_timeout: secs(
                "shutdown_timeout_secs",
                self.shutdown_timeout_secs,
                d.shutdown_timeout,
            )?,
        })
    }

    /// The TLS setup, when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            (Some(c), Some(k)) => {
                crate::serve::tls_config(c, k, self.tls_client_ca.as_deref()).map(Some)
            }
            _ => Err("api: tls_cert and tls_key go together (and tls_client_ca needs both)".into()),
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            days: self.audit_retention_days.unwrap_or(90),
            max_entries: self.audit_max_entries.unwrap_or(1_000_000),
        }
    }
}

/// How long audit entries are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub max_entries: u64,
}

/// Facts about the daemon for `GET /v1/info`.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonInfo {
    pub version: String,
    pub array: PathBuf,
    pub state_dir: PathBuf,
    /// `v1`, `v2` or `hybrid`.
    pub cgroup_mode: String,
    pub listen: Vec<String>,
    pub nfs_listen: Option<String>,
}

#[derive(Clone, Debug)]
struct CachedToken {
    id: i64,
    name: String,
    scope: Scope,
}

/// API access state, shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    limits: Limits,
    info: DaemonInfo,
    tokens: RwLock<HashMap<[u8; 32], CachedToken>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    latency: Mutex<crate::metrics::Histograms>,
}

/// The prefix of every token secret (so that leaked tokens are easy to find in logs and repos).
pub const TOKEN_PREFIX: &str = "inarray_";

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new random secret: the prefix and 256 bits from the kernel's CSPRNG, in hex.
fn new_secret() -> Result<String, ApiError> {
    use std::io::Read;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| ApiError::internal(format!("/dev/urandom: {e}")))?;
    let mut s = String::from(TOKEN_PREFIX);
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

impl Access {
    /// Loads the token table; `limits` apply for the life of the process.
    pub async fn new(store: Store, limits: Limits, info: DaemonInfo) -> Result<Self, ApiError> {
        let a = Self {
            inner: Arc::new(Inner {
                in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
                store,
                limits,
                info,
                tokens: RwLock::new(HashMap::new()),
                latency: Mutex::new(crate::metrics::Histograms::default()),
            }),
        };
        a.reload_tokens().await?;
        Ok(a)
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Re-reads the token table from SQL; returns (added, removed) token names.
    pub async fn reload_tokens(&self) -> Result<(Vec<String>, Vec<String>), ApiError> {
        let rows = self.inner.store.list_tokens().await?;
        let mut map = HashMap::new();
        for r in rows {
            let Some(scope) = Scope::parse(&r.scope) else {
                return Err(ApiError::internal(format!(
                    "token {}: unknown scope {:?} in the database",
                    r.name, r.scope
                )));
            };
            let Ok(hash) = <[u8; 32]>::try_from(r.secret_hash.as_slice()) else {
                return Err(ApiError::internal(format!(
                    "token {}: the stored hash is not 32 bytes",
                    r.name
                )));
            };
            map.insert(
                hash,
                CachedToken {
                    id: r.id,
                    name: r.name,
                    scope,
                },
            );
        }
        let mut tokens = self.inner.tokens.write().unwrap_or_else(|p| p.into_inner());
        let before: Vec<(i64, String)> = tokens.values().map(|t| (t.id, t.name.clone())).collect();
        let after: Vec<(i64, String)> = map.values().map(|t| (t.id, t.name.clone())).collect();
        let added = after
            .iter()
            .filter(|t| !before.contains(t))
            .map(|t| t.1.clone())
            .collect();
        let removed = before
            .iter()
            .filter(|t| !after.contains(t))
            .map(|t| t.1.clone())
            .collect();
        *tokens = map;
        Ok((added, removed))
    }

    fn lookup(&self, secret: &str) -> Option<CachedToken> {
        let tokens = self.inner.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.get(&hash_secret(secret)).cloned()
    }

    /// Deletes audit entries beyond the retention; returns how many.
    pub async fn prune_audit(&self, r: Retention) -> Result<u64, ApiError> {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(r.days));
        Ok(self.inner.store.prune_audit(cutoff, r.max_entries).await?)
    }

    /// The latency histograms and the in-flight gauge, for `/metrics`.
    pub fn write_metrics(&self, out: &mut crate::metrics::Exposition) {
        let in_flight = self.inner.limits.max_in_flight - self.inner.in_flight.available_permits();
        out.gauge(
            "inarray_api_requests_in_flight",
            "API requests being served",
            &[],
            in_flight as f64,
        );
        self.inner
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(out);
    }

    /// Authenticates a request from its peer and headers.
    fn identify(&self, parts: &Parts) -> Result<Identity, ApiError> {
        match parts.extensions.get::<Peer>() {
            Some(Peer::Unix { uid, .. }) => Ok(Identity {
                who: format!("unix:{uid}"),
                scope: Scope::Admin,
            }),
            Some(Peer::Tcp { .. }) | None => {
                let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
                    return Err(unauthorized("a bearer token is required"));
                };
                let secret = value
                    .to_str()
                    .ok()
                    .and_then(|v| {
                        let (kind, rest) = v.split_once(' ')?;
                        kind.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                    })
                    .ok_or_else(|| {
                        unauthorized("the authorization header must be `Bearer <token>`")
                    })?;
                let t = self
                    .lookup(secret)
                    .ok_or_else(|| unauthorized("unknown or revoked token"))?;
                Ok(Identity {
                    who: format!("token:{}:{}", t.id, t.name),
                    scope: t.scope,
                })
            }
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Adds the access guard (and the access state, for the token, audit and info routes) to the
/// router. The daemon always does; a router without it serves no `/v1/tokens` or `/v1/audit`.
pub fn attach(router: Router, access: Access) -> Router {
    router
        .layer(axum::middleware::from_fn_with_state(access.clone(), guard))
        .layer(axum::Extension(access))
}

fn peer_text(p: Option<&Peer>) -> String {
    match p {
        Some(Peer::Unix { uid, pid, .. }) => match pid {
            Some(pid) => format!("unix:{uid} pid {pid}"),
            None => format!("unix:{uid}"),
        },
        Some(Peer::Tcp {
            addr,
            client_cert: Some(fp),
        }) => format!("tcp:{addr} cert {fp}"),
        Some(Peer::Tcp { addr, .. }) => format!("tcp:{addr}"),
        None => "in-process".into(),
    }
}

/// The middleware: span, limits, authentication, scope, audit, metrics.
async fn guard(
    axum::extract::State(access): axum::extract::State<Access>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let target = req.uri().path().to_owned();
    let peer = peer_text(req.extensions().get::<Peer>());
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        peer = %peer,
        who = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    async move {
        let mutating = !(method == Method::GET || method == Method::HEAD);
        let Ok(permit) = access.inner.in_flight.clone().try_acquire_owned() else {
            let resp = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "too many requests in flight (at most {}); retry later",
                    access.inner.limits.max_in_flight
                ),
            )
            .into_response();
            return finish(&access, &method, &route, start, resp, None);
        };
        let (mut parts, body) = req.into_parts();
        let identity = access.identify(&parts);
        let who = match &identity {
            Ok(id) => id.who.clone(),
            Err(_) => match parts.extensions.get::<Peer>() {
                Some(Peer::Tcp { addr, .. }) => format!("anonymous:{}", addr.ip()),
                _ => "anonymous".into(),
            },
        };
        let identity = identity.and_then(|id| {
            let need = required_scope(&method, &route);
            if id.scope >= need {
                Ok(id)
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "the token's scope is {}; {method} {route} needs {}",
                        id.scope.as_str(),
                        need.as_str()
                    ),
                ))
            }
        });
        tracing::Span::current().record("who", who.as_str());
        let resp = match identity {
            Err(e) => {
                let mut r = e.into_response();
                if r.status() == StatusCode::UNAUTHORIZED {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                r
            }
            Ok(id) => {
                parts.extensions.insert(id);
                parts.extensions.insert(access.inner.limits);
                next.run(Request::from_parts(parts, body)).await
            }
        };
        if mutating {
            let entry = NewAudit {
                who: &who,
                method: method.as_str(),
                route: &route,
                target: &target,
                status: resp.status().as_u16(),
            };
            if let Err(e) = access.inner.store.insert_audit(entry).await {
                tracing::error!(error = %e, "cannot append to the audit log");
            }
        }
        finish(&access, &method, &route, start, resp, Some(permit))
    }
    .instrument(span)
    .await
}

/// Records the latency, logs the request and keeps the in-flight permit until the reply's body
/// is sent (or dropped).
fn finish(
    access: &Access,
    method: &Method,
    route: &str,
    start: Instant,
    resp: Response,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let status = resp.status();
    let elapsed = start.elapsed();
    access
        .inner
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .observe(method.as_str(), route, status.as_u16(), elapsed);
    tracing::Span::current().record("status", status.as_u16());
    let ms = elapsed.as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), ms, "request failed");
    } else if method == Method::GET || method == Method::HEAD {
        tracing::debug!(status = status.as_u16(), ms, "request");
    } else {
        tracing::info!(status = status.as_u16(), ms, "request");
    }
    match permit {
        None => resp,
        Some(permit) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Body::new(Held {
                    inner: body,
                    _permit: permit,
                }),
            )
        }
    }
}

/// A reply body that keeps the request's in-flight permit until it is sent or dropped, and
/// keeps its size hint (so replies keep their Content-Length).
struct Held {
    inner: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::body::HttpBody for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The access state, from the request's extensions.
pub struct AccessExt(pub Access);

impl<S: Send + Sync> FromRequestParts<S> for AccessExt {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Access>()
            .cloned()
            .map(AccessExt)
            .ok_or_else(|| ApiError::internal("api access is not attached to the router"))
    }
}

/// The caller, from the request's extensions.
pub struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::internal("the request has no authenticated caller"))
    }
}

// ------------------------------------------------------------------------------------ routes

pub fn routes() -> Router<Manager> {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(delete_token))
        .route("/v1/audit", get(list_audit))
        .route("/v1/info", get(info))
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

fn check_token_name(name: &str) -> Result<(), ApiError> {
    inarray_store::names::TOKEN
        .check(name)
        .map_err(|reason| ApiError::bad_request(format!("name: {reason}")))
}

async fn list_tokens(
    axum::extract::State(m): axum::extract::State<Manager>,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    Ok(axum::Json(
        m.store()
            .list_tokens()
            .await?
            .into_iter()
            .map(TokenView::from)
            .collect(),
    ))
}

async fn create_token(
    axum::extract::State(m): axum::extract::State<Manager>,
    AccessExt(access): AccessExt,
    Caller(caller): Caller,
    Json(req): Json<NewToken>,
) -> Result<Response, ApiError> {
    check_token_name(&req.name)?;
    let secret = new_secret()?;
    let row = m
        .store()
        .insert_token(
            &req.name,
            req.scope.as_str(),
            &hash_secret(&secret),
            &caller.who,
        )
        .await
        .map_err(|e| match e {
            inarray_store::StoreError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("token {} already exists", req.name),
            ),
            e => e.into(),
        })?;
    access.reload_tokens().await?;
    tracing::info!(token = %row.name, scope = %row.scope, by = %caller.who, "token created");
    let mut view = TokenView::from(row);
    view.token = Some(secret);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn delete_token(
    axum::extract::State(m): axum::extract::State<Manager>,
    AccessExt(access): AccessExt,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !m.store().delete_token(&name).await? {
        return Err(ApiError::not_found(format!("no such token: {name}")));
    }
    access.reload_tokens().await?;
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
    axum::extract::State(m): axum::extract::State<Manager>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not between 1 and 1000"
        )));
    }
    let rows = m.store().list_audit(q.before, limit).await?;
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

async fn info(
    axum::extract::State(m): axum::extract::State<Manager>,
    AccessExt(access): AccessExt,
) -> Result<axum::Json<Value>, ApiError> {
    let engines: Vec<Value> = m
        .engines()
        .await?
        .into_iter()
        .map(|e| json!({"name": e.name, "resources": e.resources}))
        .collect();
    let exports: Vec<Value> = m
        .store()
        .list_exports()
        .await?
        .into_iter()
        .map(|e| json!({"name": e.name, "path": e.path}))
        .collect();
    let i = &access.inner.info;
    Ok(axum::Json(json!({
        "version": i.version,
        "array": i.array,
        "state_dir": i.state_dir,
        "cgroup_mode": i.cgroup_mode,
        "listen": i.listen,
        "nfs_listen": i.nfs_listen,
        "engines": engines,
        "exports": exports,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_method_and_route() {
        use Scope::*;
        let g = Method::GET;
        let p = Method::POST;
        let d = Method::DELETE;
        for (m, r, s) in [
            (&g, "/v1/containers", Read),
            (&g, "/metrics", Read),
            (&g, "/v1/engines/{name}", Read),
            (&g, "/v1/tokens", Admin),
            (&g, "/v1/audit", Admin),
            (&p, "/v1/containers", Operate),
            (&p, "/v1/containers/{id}/start", Operate),
            (&d, "/v1/images/{*reference}", Operate),
            (&p, "/v1/images/import", Operate),
            (&p, "/v1/jobs/{name}/run", Operate),
            (&p, "/v1/engines", Admin),
            (&Method::PATCH, "/v1/exports/{name}", Admin),
            (&p, "/v1/tokens", Admin),
            (&d, "/v1/tokens/{name}", Admin),
            (&p, "unmatched", Admin),
            (&p, "/v1/containersx", Admin),
        ] {
            assert_eq!(required_scope(m, r), s, "{m} {r}");
        }
        assert!(Admin > Operate && Operate > Read);
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn config_limits_are_checked() {
        assert_eq!(ApiConfig::default().limits().unwrap(), Limits::default());
        let c = ApiConfig {
            max_body_bytes: Some(MAX_BODY_CEILING + 1),
            ..Default::default()
        };
        assert!(c.limits().unwrap_err().contains("max_body_bytes"));
        let c = ApiConfig {
            header_timeout_secs: Some(0.0),
            ..Default::default()
        };
        assert!(c.limits().unwrap_err().contains("header_timeout_secs"));
        let c = ApiConfig {
            header_timeout_secs: Some(0.5),
            max_in_flight: Some(2),
            ..Default::default()
        };
        let l = c.limits().unwrap();
        assert_eq!(
            (l.header_timeout, l.max_in_flight),
            (Duration::from_millis(500), 2)
        );
    }
}
