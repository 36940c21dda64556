//! Who may call what: the peer of each connection, bearer tokens and their scopes, the limits on
//! requests, the audit log of mutating calls, the per-request span and latency histograms.
//!
//! - [`config`]: the `[api]` table (limits, TLS, audit retention);
//! - [`tokens`](self::tokens): token secrets and the in-memory table of their hashes;
//! - [`guard`]: the middleware every request passes, in this order — observe (span, latency,
//!   log), identify (peer → principal), audit, in-flight limit, authorize (scope);
//! - the handlers of `/v1/tokens` and `/v1/audit` are in `crate::tokens`, `/v1/info` in
//!   `crate::info`.
//!
//! The rules:
//! - over a unix socket the caller is `unix:<uid>` (SO_PEERCRED) and has the `admin` scope: the
//!   socket's mode and group are the access control;
//! - over TCP the caller must send `Authorization: Bearer <token>`; a missing, unknown or expired
//!   token is 401, a token whose scope does not cover the route is 403, both in the API's error
//!   shape; a peer whose tokens failed `auth_failures` times within `auth_failure_window` is
//!   refused (429 with `Retry-After`) for `auth_block` (`limiter.rs`);
//! - at most `max_in_flight` requests are served at once (503 beyond);
//! - every mutating call (any method but GET/HEAD), refused ones included — by authentication,
//!   scope or the in-flight limit —, is appended to the audit log in SQL before its reply is sent.
//!
//! Tokens are random 256-bit secrets; only their SHA-256 is stored (see docs/design/service.md for
//! why no slow KDF is needed). The table is cached in memory and re-read after every change and
//! on SIGHUP.

mod config;
pub(crate) mod guard;
mod limiter;
pub mod sessions;
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::Method;
use inarray_store::{AuditRow, NewAudit, Store};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

pub use config::{ApiConfig, Limits, Retention, MAX_BODY_CEILING};
pub use guard::Caller;
pub use tokens::{parse_ttl, TOKEN_PREFIX};

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

/// A connection that came through TLS (a request extension the listener adds).
#[derive(Clone, Copy, Debug)]
pub struct TlsConnection;

/// Routes anyone may GET: the console's page and assets (no data; sign-in happens in the page).
pub fn is_public(method: &Method, route: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (route == "/ui/" || route == "/ui/{file}")
}

/// The scope a request needs, from its method and matched route template.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let under = |p: &str| route == p || route.starts_with(&format!("{p}/"));
    // Any valid token may open (and end) a console session; the session keeps its scope.
    if route == "/ui/session" {
        return Scope::Read;
    }
    // Starting an exec is an action, also when a browser asks for it with a WebSocket's GET.
    if route == "/v1/execs/{id}/start" {
        return Scope::Operate;
    }
    // Registry credentials (usernames; passwords are never returned) are the admin's business.
    if under("/v1/tokens") || under("/v1/audit") || under("/v1/registries") {
        return Scope::Admin;
    }
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    if under("/v1/containers") || under("/v1/execs") || under("/v1/images") || under("/v1/jobs") {
        return Scope::Operate;
    }
    // The Docker API's routes (its own listener; the version prefix is off by now).
    if under("/containers") || under("/exec") || under("/images") {
        return Scope::Operate;
    }
    Scope::Admin
}

/// The authenticated caller of a request (a request extension after the guard).
#[derive(Clone, Debug)]
pub struct Identity {
    /// `unix:<uid>` or `token:<id>:<name>`.
    pub who: String,
    pub scope: Scope,
    /// The SHA-256 of the token that authenticated it (none over the unix socket).
    pub token_hash: Option<[u8; 32]>,
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
    /// The Docker API's socket (`unix:/PATH`) when `docker_listen` is set.
    pub docker_listen: Option<String>,
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
    tokens: RwLock<HashMap<[u8; 32], tokens::CachedToken>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    latency: Mutex<crate::metrics::Histograms>,
    auth_failures: limiter::AuthLimiter,
    sessions: sessions::Sessions,
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
                auth_failures: limiter::AuthLimiter::new(
                    limits.auth_failures,
                    limits.auth_failure_window,
                    limits.auth_block,
                ),
                sessions: sessions::Sessions::default(),
            }),
        };
        a.reload_tokens().await?;
        Ok(a)
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Opens a console session for the caller's token; returns the cookie's secret.
    pub fn open_session(&self, id: &Identity) -> Result<String, ApiError> {
        let hash = id.token_hash.ok_or_else(|| {
            ApiError::bad_request("a console session is opened with a token (over TCP)")
        })?;
        self.inner
            .sessions
            .open(hash)
            .map_err(|e| ApiError::internal(format!("/dev/urandom: {e}")))
    }

    /// Ends a console session.
    pub fn close_session(&self, secret: &str) {
        self.inner.sessions.close(secret);
    }

    /// The daemon's facts, for `/v1/info`.
    pub fn info(&self) -> &DaemonInfo {
        &self.inner.info
    }

    /// Appends one entry to the audit log.
    async fn audit(&self, entry: NewAudit<'_>) -> Result<(), inarray_store::StoreError> {
        self.inner.store.insert_audit(entry).await.map(drop)
    }

    /// A page of the audit log, newest first: entries with an id below `before`.
    pub async fn audit_page(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRow>, ApiError> {
        Ok(self.inner.store.list_audit(before, limit).await?)
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

    fn observe_latency(&self, method: &Method, route: &str, status: u16, d: std::time::Duration) {
        self.inner
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(method.as_str(), route, status, d);
    }
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
            (&p, "/containers/create", Operate),
            (&p, "/exec/{id}/start", Operate),
            (&d, "/images/{*rest}", Operate),
            (&p, "/build", Admin),
            (&Method::PATCH, "/v1/exports/{name}", Admin),
            (&p, "/v1/tokens", Admin),
            (&d, "/v1/tokens/{name}", Admin),
            (&p, "unmatched", Admin),
            (&p, "/v1/containersx", Admin),
            (&p, "/ui/session", Read),
            (&d, "/ui/session", Read),
            (&g, "/v1/execs/{id}/start", Operate),
            (&p, "/v1/execs/{id}/start", Operate),
        ] {
            assert_eq!(required_scope(m, r), s, "{m} {r}");
        }
        assert!(Admin > Operate && Operate > Read);
        assert!(is_public(&g, "/ui/") && is_public(&g, "/ui/{file}"));
        assert!(!is_public(&p, "/ui/session") && !is_public(&g, "/v1/info"));
    }
}
