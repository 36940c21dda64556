//! The access guard: the middleware every request passes, as five small steps in one fixed
//! order (outermost first), each a `from_fn` layer added by [`layers`]:
//!
//! 1. [`observe`]: the request's span, its latency in the histograms, one log line;
//! 2. [`identify`]: the peer and the `Authorization` header become a principal — who the
//!    caller is (or `anonymous`), and whether authentication succeeded (a token that failed is
//!    counted against its peer, and a peer blocked for failing too often is not authenticated
//!    at all, see `limiter.rs`); nothing is refused yet;
//! 3. [`audit`]: a mutating call's entry is written to the audit log with the reply's status,
//!    before the reply is sent — whatever the steps below answered, refusals included;
//! 4. [`limit`]: at most `max_in_flight` requests at once (503 beyond); the slot is held until
//!    the reply's body is sent;
//! 5. [`authorize`]: 429 for a blocked peer, 401 without a valid token (an expired one
//!    included), 403 when its scope does not cover the route; otherwise the [`Identity`] is
//!    attached for the handler and the request goes on.
//!
//! The guard's steps hand their findings on as request extensions of its own (`Principal`);
//! [`layers`] adds them together, so none runs without the others.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use inarray_store::NewAudit;
use tracing::Instrument;

use super::limiter::PeerKey;
use super::sessions::{cookie_secret, csrf_refusal};
use super::{is_public, required_scope, Access, Identity, Peer, Scope, TlsConnection};
use crate::error::ApiError;

/// Adds the guard's steps to `router` (see the module's documentation for their order).
pub(crate) fn layers<S>(router: Router<S>, access: &Access) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // The layer added last runs first.
    router
        .layer(from_fn(authorize))
        .layer(from_fn_with_state(access.clone(), limit))
        .layer(from_fn_with_state(access.clone(), audit))
        .layer(from_fn_with_state(access.clone(), identify))
        .layer(from_fn_with_state(access.clone(), observe))
}

/// The caller as [`identify`] found it.
#[derive(Clone)]
struct Principal {
    /// `unix:<uid>`, `token:<id>:<name>`, `anonymous:<ip>` or `anonymous`.
    who: String,
    /// The identity, or why authentication failed.
    authenticated: Result<Identity, Refusal>,
}

#[derive(Clone, Copy)]
enum Refusal {
    /// 401, with the reason.
    Unauthorized(&'static str),
    /// 429: the peer failed too often; refused for this much longer.
    Blocked(Duration),
    /// 403 whatever the route: a browser where none is served, a cross-site request.
    Forbidden(&'static str),
}

/// Why a request is not authenticated, and whether it presented a credential (only those that
/// did count as failures).
struct Failure {
    reason: &'static str,
    presented: bool,
    /// Refused as a browser's request that may not be served (403, not counted).
    forbidden: bool,
}

fn is_mutating(method: &Method) -> bool {
    !(method == Method::GET || method == Method::HEAD)
}

/// The matched route template (`unmatched` for unknown paths: bounded cardinality).
fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into())
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

/// Step 1: span, latency histogram, log line.
async fn observe(State(access): State<Access>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = route_of(&req);
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
        let resp = next.run(req).await;
        let status = resp.status();
        let elapsed = start.elapsed();
        access.observe_latency(&method, &route, status.as_u16(), elapsed);
        tracing::Span::current().record("status", status.as_u16());
        let ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else if is_mutating(&method) {
            tracing::info!(status = status.as_u16(), ms, "request");
        } else {
            tracing::debug!(status = status.as_u16(), ms, "request");
        }
        resp
    }
    .instrument(span)
    .await
}

/// Step 2: peer → principal. A unix peer is admin by the socket's permissions; anyone else
/// needs a bearer token.
async fn identify(State(access): State<Access>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>();
    let key = peer.map(PeerKey::of);
    let now = Instant::now();
    let limiter = &access.inner.auth_failures;
    let authenticated = match key.and_then(|k| limiter.blocked(k, now)) {
        Some(left) => Err(Refusal::Blocked(left)),
        None => authenticate(&access, peer, &req).map_err(|f| {
            if f.forbidden {
                return Refusal::Forbidden(f.reason);
            }
            if let (true, Some(k)) = (f.presented, key) {
                if limiter.failed(k, now) {
                    let l = access.inner.limits;
                    tracing::warn!(
                        peer = %k,
                        failures = l.auth_failures,
                        within_s = l.auth_failure_window.as_secs_f64(),
                        blocked_s = l.auth_block.as_secs_f64(),
                        "too many failed authentications: the peer is refused for a while"
                    );
                }
            }
            Refusal::Unauthorized(f.reason)
        }),
    };
    let who = match (&authenticated, peer) {
        (Ok(id), _) => id.who.clone(),
        (Err(_), Some(Peer::Tcp { addr, .. })) => format!("anonymous:{}", addr.ip()),
        (Err(_), _) => "anonymous".into(),
    };
    tracing::Span::current().record("who", who.as_str());
    req.extensions_mut()
        .insert(Principal { who, authenticated });
    next.run(req).await
}

fn authenticate(access: &Access, peer: Option<&Peer>, req: &Request) -> Result<Identity, Failure> {
    let headers = req.headers();
    let failed = |reason| Failure {
        reason,
        presented: true,
        forbidden: false,
    };
    let forbidden = |reason| Failure {
        reason,
        presented: false,
        forbidden: true,
    };
    if let Some(Peer::Unix { uid, .. }) = peer {
        // The socket's permissions make its peers admin; a browser reaching it (a forwarded
        // socket) would lend that to every page it visits, so browsers are served on TCP only.
        if headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site") {
            return Err(forbidden(
                "browsers are served on a TCP listener with a token, not on the unix socket \
                 (see the operator guide's console section)",
            ));
        }
        return Ok(Identity {
            who: format!("unix:{uid}"),
            scope: Scope::Admin,
            token_hash: None,
        });
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return session(access, req).map_err(|f| {
            f.unwrap_or(Failure {
                reason: "a bearer token is required",
                presented: false,
                forbidden: false,
            })
        });
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (kind, rest) = v.split_once(' ')?;
            kind.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| failed("the authorization header must be `Bearer <token>`"))?;
    let (hash, t) = access
        .lookup(secret)
        .ok_or_else(|| failed("unknown or revoked token"))?;
    if t.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(failed("token expired"));
    }
    Ok(Identity {
        who: format!("token:{}:{}", t.id, t.name),
        scope: t.scope,
        token_hash: Some(hash),
    })
}

/// A console session's cookie (`sessions.rs`): its token, and the CSRF rules of a browser's
/// request. `Err(None)`: no cookie at all.
fn session(access: &Access, req: &Request) -> Result<Identity, Option<Failure>> {
    let headers = req.headers();
    let secret = cookie_secret(headers).ok_or(None)?;
    // A stale cookie (a restart's, a sign-out's, a revoked token's) is no attack: it is not
    // counted against the peer (a page reload sends it with each of its files; a session secret
    // has 256 bits, so guessing one is not a threat the limiter needs to slow down).
    let failed = |reason| {
        Some(Failure {
            reason,
            presented: false,
            forbidden: false,
        })
    };
    let hash = access
        .inner
        .sessions
        .token_of(secret)
        .ok_or_else(|| failed("the console session has ended: sign in again"))?;
    let t = access
        .lookup_hash(&hash)
        .ok_or_else(|| failed("the console session's token was revoked"))?;
    if t.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(failed("the console session's token expired"));
    }
    let tls = req.extensions().get::<TlsConnection>().is_some();
    if let Some(reason) = csrf_refusal(req.method(), headers, tls) {
        return Err(Some(Failure {
            reason,
            presented: false,
            forbidden: true,
        }));
    }
    Ok(Identity {
        who: format!("token:{}:{}", t.id, t.name),
        scope: t.scope,
        token_hash: Some(hash),
    })
}

/// Step 3: a mutating call's audit entry, written before its reply is sent.
async fn audit(State(access): State<Access>, req: Request, next: Next) -> Response {
    if !is_mutating(req.method()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = route_of(&req);
    let target = req.uri().path().to_owned();
    let who = req
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "anonymous".to_owned(), |p| p.who.clone());
    let resp = next.run(req).await;
    let entry = NewAudit {
        who: &who,
        method: method.as_str(),
        route: &route,
        target: &target,
        status: resp.status().as_u16(),
    };
    if let Err(e) = access.audit(entry).await {
        tracing::error!(error = %e, "cannot append to the audit log");
    }
    resp
}

/// Step 4: the in-flight limit. The slot is held until the reply's body is sent (or dropped).
async fn limit(State(access): State<Access>, req: Request, next: Next) -> Response {
    let Ok(permit) = access.inner.in_flight.clone().try_acquire_owned() else {
        return ApiError::busy(access.inner.limits.max_in_flight).into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    Response::from_parts(
        parts,
        Body::new(Held {
            inner: body,
            _permit: permit,
        }),
    )
}

/// Step 5: authentication and scope.
async fn authorize(mut req: Request, next: Next) -> Response {
    let Some(principal) = req.extensions_mut().remove::<Principal>() else {
        return ApiError::internal("the access guard's identify step did not run").into_response();
    };
    let route = route_of(&req);
    let public = is_public(req.method(), &route);
    let id = match principal.authenticated {
        Ok(id) => id,
        Err(Refusal::Forbidden(reason)) => return ApiError::forbidden(reason).into_response(),
        // The console's page and assets: served to anyone (the page signs in).
        Err(_) if public => return next.run(req).await,
        Err(Refusal::Unauthorized(reason)) => {
            return ApiError::unauthorized(reason).into_response()
        }
        Err(Refusal::Blocked(left)) => return ApiError::auth_blocked(left).into_response(),
    };
    let need = required_scope(req.method(), &route);
    if id.scope < need {
        return ApiError::forbidden(format!(
            "the token's scope is {}; {} {route} needs {}",
            id.scope.as_str(),
            req.method(),
            need.as_str()
        ))
        .into_response();
    }
    req.extensions_mut().insert(id);
    next.run(req).await
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

/// The authorized caller, for handlers (the guard attaches it to every request it lets by).
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
