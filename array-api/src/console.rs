//! The web console: its page and assets at `/ui/` (compiled into the binary, served to anyone:
//! they hold no data), and the sign-in that turns a token into a session cookie
//! (`POST /ui/session`, `DELETE /ui/session`; the rules are in `access/sessions.rs`). Everything
//! the page shows it reads from the public API with that cookie. Design: docs/design/console.md.

use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::access::sessions::{clear_cookie, cookie_secret, set_cookie};
use crate::access::{Access, Caller, TlsConnection};
use crate::error::ApiError;
use crate::extract::Path;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
        .route("/ui/session", post(sign_in).delete(sign_out))
}

/// The console's policy: scripts, styles, images and connections from this origin only (no
/// inline script or style), never framed, no plugins, forms posting nowhere else.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'; object-src 'none'";

/// The files of `array-api/console/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/ui.js"),
    ),
    (
        "home.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/home.js"),
    ),
    (
        "containers.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/containers.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/jobs.js"),
    ),
    (
        "activity.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/activity.js"),
    ),
    (
        "terminal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/terminal.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/style.css"),
    ),
    (
        "xterm.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/xterm.mjs"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/vendor/xterm.css"),
    ),
    (
        "xterm-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../console/vendor/LICENSE"),
    ),
];

/// Each asset's ETag (a hash of its bytes), computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        use sha2::Digest;
        ASSETS
            .iter()
            .map(|(_, _, b)| {
                let d = sha2::Sha256::digest(b);
                let hex: String = d[..12].iter().map(|x| format!("{x:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The headers every console reply carries.
pub fn security_headers(h: &mut HeaderMap) {
    let mut put = |k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    put("content-security-policy", CSP);
    put("x-content-type-options", "nosniff");
    put("x-frame-options", "DENY");
    put("referrer-policy", "no-referrer");
    put("cross-origin-opener-policy", "same-origin");
    put("cross-origin-resource-policy", "same-origin");
}

fn serve(name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let i = ASSETS
        .iter()
        .position(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no such console file: {name}")))?;
    let (_, kind, bytes) = ASSETS[i];
    let tag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, kind)], bytes).into_response()
    };
    let h = resp.headers_mut();
    security_headers(h);
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated at every load (a daemon upgrade changes them), answered 304 when unchanged.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn index(headers: HeaderMap) -> Result<Response, ApiError> {
    serve("index.html", &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    serve(&file, &headers)
}

/// Signs in: the request carries `Authorization: Bearer <token>` (checked by the access guard
/// like any other, failures counted); the reply sets the session cookie.
async fn sign_in(
    State(access): State<Access>,
    Caller(id): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let secret = access.open_session(&id)?;
    let tls = req.extensions().get::<TlsConnection>().is_some();
    let mut resp = axum::Json(json!({"who": id.who, "scope": id.scope})).into_response();
    let cookie = HeaderValue::from_str(&set_cookie(&secret, tls)).map_err(ApiError::internal)?;
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Signs out: the session ends and the cookie is cleared.
async fn sign_out(State(access): State<Access>, req: Request) -> Result<Response, ApiError> {
    if let Some(secret) = cookie_secret(req.headers()) {
        access.close_session(secret);
    }
    let tls = req.extensions().get::<TlsConnection>().is_some();
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let cookie = HeaderValue::from_str(&clear_cookie(tls)).map_err(ApiError::internal)?;
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}
