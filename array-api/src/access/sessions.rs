//! Console sessions: a browser that signed in with a token (`POST /ui/session` with
//! `Authorization: Bearer …`) holds a random session secret in an `HttpOnly; SameSite=Strict`
//! cookie (`Secure` over TLS); the token itself never reaches the page's storage or a URL.
//!
//! The table is in memory (a daemon restart signs everyone out), keyed by the SHA-256 of the
//! session secret, and points at the *token's* hash: a revoked or expired token ends its sessions
//! at their next request. A session lives [`SESSION_LIFE`] at most; the table holds
//! [`MAX_SESSIONS`], the oldest going first.
//!
//! A request authenticated by the cookie is a browser's, so it must also be CSRF-safe
//! ([`csrf_refusal`]): a mutating one carries the console's own header ([`CSRF_HEADER`], which a
//! cross-site form cannot send and a cross-origin `fetch` cannot without a CORS preflight, which
//! this daemon never grants), and any `Origin` it carries must be this host's (WebSocket
//! upgrades, which browsers send with cookies but without CORS, must carry one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "inarray_session";
/// The header every mutating request of the console carries (value: `1`).
pub const CSRF_HEADER: &str = "x-inarray-console";
/// A session's life from its sign-in.
pub const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 4096;

struct Session {
    token_hash: [u8; 32],
    created: Instant,
}

#[derive(Default)]
pub(super) struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

fn hash(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Sessions {
    /// A new session for the token of this hash; returns its secret (hex, 256 bits).
    pub(super) fn open(&self, token_hash: [u8; 32]) -> std::io::Result<String> {
        use std::io::Read;
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, s| now.duration_since(s.created) < SESSION_LIFE);
        if t.len() >= MAX_SESSIONS {
            if let Some(oldest) = t.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                t.remove(&oldest);
            }
        }
        t.insert(
            hash(&secret),
            Session {
                token_hash,
                created: now,
            },
        );
        Ok(secret)
    }

    /// The token hash of a live session.
    pub(super) fn token_of(&self, secret: &str) -> Option<[u8; 32]> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&hash(secret))
            .filter(|s| s.created.elapsed() < SESSION_LIFE)
            .map(|s| s.token_hash)
    }

    /// Ends a session (sign-out).
    pub(super) fn close(&self, secret: &str) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(&hash(secret));
    }
}

/// The session secret of the request's cookie, if it has one.
pub fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that holds a session (`Secure` when the connection is TLS).
pub fn set_cookie(secret: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_LIFE.as_secs()
    )
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie(tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// Why a cookie-authenticated request is refused as a possible cross-site request, if it is.
pub fn csrf_refusal(method: &Method, headers: &HeaderMap, tls: bool) -> Option<&'static str> {
    let text = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return Some("a cross-site request is refused for a console session");
    }
    let origin = text(header::ORIGIN);
    if let Some(origin) = origin {
        let host = text(header::HOST).unwrap_or("");
        let scheme = if tls { "https" } else { "http" };
        if origin != format!("{scheme}://{host}") {
            return Some("the request's Origin is not this console's");
        }
    }
    let upgrade = headers.contains_key(header::UPGRADE);
    if upgrade && origin.is_none() {
        return Some("a console session's WebSocket must carry its Origin");
    }
    let mutating = !(method == Method::GET || method == Method::HEAD);
    if mutating && headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Some("a console session's request must carry the X-Inarray-Console header");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=b; inarray_session=abc ; c=d")]);
        assert_eq!(cookie_secret(&h), Some("abc"));
        assert_eq!(
            cookie_secret(&headers(&[("cookie", "inarray_session=")])),
            None
        );
        assert_eq!(
            cookie_secret(&headers(&[("cookie", "xinarray_session=a")])),
            None
        );
        assert!(set_cookie("s", true).contains("; Secure"));
        assert!(!set_cookie("s", false).contains("Secure"));
        assert!(set_cookie("s", false).contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let p = Method::POST;
        let g = Method::GET;
        let host = ("host", "node:8080");
        let ok = headers(&[host, ("origin", "http://node:8080"), (CSRF_HEADER, "1")]);
        assert_eq!(csrf_refusal(&p, &ok, false), None);
        // The same over TLS needs https.
        assert!(csrf_refusal(&p, &ok, true).is_some());
        // A form post: no custom header.
        let form = headers(&[host, ("origin", "http://node:8080")]);
        assert!(csrf_refusal(&p, &form, false).is_some());
        let evil = headers(&[host, ("origin", "http://evil.example"), (CSRF_HEADER, "1")]);
        assert!(csrf_refusal(&p, &evil, false).is_some());
        assert!(csrf_refusal(&g, &evil, false).is_some());
        let site = headers(&[host, ("sec-fetch-site", "cross-site")]);
        assert!(csrf_refusal(&g, &site, false).is_some());
        // A plain GET (navigation, same-origin fetch) needs nothing more.
        assert_eq!(csrf_refusal(&g, &headers(&[host]), false), None);
        // A WebSocket needs its Origin.
        let ws = headers(&[host, ("upgrade", "websocket")]);
        assert!(csrf_refusal(&g, &ws, false).is_some());
        let ws = headers(&[
            host,
            ("upgrade", "websocket"),
            ("origin", "http://node:8080"),
        ]);
        assert_eq!(csrf_refusal(&g, &ws, false), None);
    }

    #[test]
    fn sessions_follow_their_token_and_end() {
        let s = Sessions::default();
        let a = s.open([1; 32]).unwrap();
        let b = s.open([2; 32]).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.token_of(&a), Some([1; 32]));
        s.close(&a);
        assert_eq!(s.token_of(&a), None);
        assert_eq!(s.token_of(&b), Some([2; 32]));
        assert_eq!(s.token_of("nope"), None);
    }
}
