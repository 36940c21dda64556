//! The Docker Engine API (issue #17), served on the daemon's second listener (`docker_listen`):
//! a translation layer over the native [`Manager`], never a second runtime. Every container
//! made through it is an ordinary inarray container (engines, limits, stats, jobs can name it);
//! bind sources are confined to the array.
//!
//! One file per concern: this one (the router, the API version prefix, query and body
//! helpers), `errors.rs` (Docker's `{"message"}` and statuses), `fields.rs` (which request
//! fields exist and what is done with each), `types.rs` (our serde types), `create.rs` (a
//! Docker create body → a native `ContainerConfig`), `containers.rs` (lifecycle), `views.rs`
//! (list, inspect), `usage.rs` (stats, top), `update.rs`, `streams.rs` (attach, with the pending attaches a start hands its stream
//! to, and logs), `exec.rs`, `images.rs`, `system.rs` (`_ping`, `version`, `info`).
//!
//! Routes are served unversioned and under `/v1.NN/` for NN in 24..=51; a version outside that
//! range is a 400 that says the supported range. The reference: docs/design/docker-api.md.

mod containers;
mod create;
mod errors;
mod exec;
mod fields;
mod images;
mod streams;
mod system;
mod types;
mod update;
mod usage;
mod views;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::Uri;
use axum::middleware::{from_fn, map_response, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use inarray_runtime::Manager;
use serde_json::Value;

use crate::access::{Access, Limits};
use crate::state::AppState;
pub use errors::DockerError;
use errors::Result;

/// The newest API version served (Docker 28.4's); clients negotiate down from it.
pub const API_VERSION: (u32, u32) = (1, 51);
pub const API_VERSION_TEXT: &str = "1.51";
/// The oldest: Docker 1.13's (the Debian docker CLI speaks 1.41).
pub const MIN_API_VERSION: (u32, u32) = (1, 24);
pub const MIN_API_VERSION_TEXT: &str = "1.24";

/// The Docker router's state: the native services it translates to, and the attaches that
/// wait for their container's start.
#[derive(Clone)]
pub struct DockerState {
    pub manager: Manager,
    pub access: Access,
    pending: Arc<streams::PendingAttaches>,
}

impl FromRef<DockerState> for Manager {
    fn from_ref(s: &DockerState) -> Self {
        s.manager.clone()
    }
}

impl FromRef<DockerState> for Access {
    fn from_ref(s: &DockerState) -> Self {
        s.access.clone()
    }
}

impl FromRef<DockerState> for Limits {
    fn from_ref(s: &DockerState) -> Self {
        s.access.limits()
    }
}

/// The Docker API over the native services of `app`, behind the same access guard as the
/// native API (a unix peer is an admin by the socket's permissions; the same audit log and
/// in-flight limit).
pub fn router(app: &AppState) -> Router {
    let state = DockerState {
        manager: app.manager.clone(),
        access: app.access.clone(),
        pending: Arc::default(),
    };
    let routes = Router::new()
        .merge(system::routes())
        .merge(containers::routes())
        .merge(streams::routes())
        .merge(exec::routes())
        .merge(images::routes())
        .merge(usage::routes())
        .fallback(unrouted)
        .method_not_allowed_fallback(|| async {
            DockerError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(from_fn(check_version))
        .layer(DefaultBodyLimit::max(crate::routes::JSON_BODY_LIMIT));
    let access = state.access.clone();
    let inner = crate::access::guard::layers(routes, &access)
        .layer(map_response(errors::docker_shaped))
        .with_state(state);
    // The version prefix is taken off before routing (a layer on the router runs after it).
    Router::new().fallback_service(tower::service_fn(move |mut req: Request| {
        let inner = inner.clone();
        async move {
            strip_version(&mut req);
            tower::ServiceExt::oneshot(inner, req).await
        }
    }))
}

/// The API version a request named in its path (`/v1.41/…`); none for an unversioned path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requested {
    Version(u32, u32),
    Malformed(String),
}

fn parse_version(v: &str) -> Requested {
    let mut it = v.split('.');
    let parsed = (|| {
        let major = it.next()?.parse().ok()?;
        let minor = match it.next() {
            Some(m) => m.parse().ok()?,
            None => 0,
        };
        it.next().is_none().then_some((major, minor))
    })();
    match parsed {
        Some((a, b)) => Requested::Version(a, b),
        None => Requested::Malformed(v.to_owned()),
    }
}

/// `/v1.41/containers/json?all=1` → `/containers/json?all=1`, the version kept as an extension.
fn strip_version(req: &mut Request) {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v") else {
        return;
    };
    let (version, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return;
    }
    let requested = parse_version(version);
    let tail = if tail.is_empty() { "/" } else { tail };
    let new = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_owned(),
    };
    if let Ok(uri) = new.parse::<Uri>() {
        *req.uri_mut() = uri;
        req.extensions_mut().insert(requested);
    }
}

/// 400 for a version outside 1.24..=1.51, with Docker's wording.
async fn check_version(req: Request, next: Next) -> Response {
    match req.extensions().get::<Requested>() {
        Some(Requested::Malformed(v)) => {
            DockerError::bad_request(format!("invalid API version {v:?}: expected 1.NN"))
                .into_response()
        }
        Some(Requested::Version(a, b)) if (*a, *b) < MIN_API_VERSION => DockerError::bad_request(format!(
            "client version {a}.{b} is too old. Minimum supported API version is {MIN_API_VERSION_TEXT}, please upgrade your client to a newer version"
        ))
        .into_response(),
        Some(Requested::Version(a, b)) if (*a, *b) > API_VERSION => DockerError::bad_request(format!(
            "client version {a}.{b} is too new. Maximum supported API version is {API_VERSION_TEXT}"
        ))
        .into_response(),
        _ => next.run(req).await,
    }
}

/// The Docker API areas this layer does not serve (yet) answer 501; anything else is 404.
async fn unrouted(req: Request) -> DockerError {
    const AREAS: [&str; 20] = [
        "containers",
        "images",
        "exec",
        "volumes",
        "networks",
        "events",
        "system",
        "build",
        "swarm",
        "nodes",
        "services",
        "tasks",
        "secrets",
        "configs",
        "plugins",
        "session",
        "distribution",
        "auth",
        "commit",
        "grpc",
    ];
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let first = parts[0];
    // Looking up one object of a kind this layer has none of is a plain "no such" (the
    // Docker CLI's `inspect NAME` asks each kind in turn until one knows the name).
    const KINDS: [(&str, &str); 8] = [
        ("networks", "network"),
        ("volumes", "volume"),
        ("services", "service"),
        ("tasks", "task"),
        ("nodes", "node"),
        ("configs", "config"),
        ("secrets", "secret"),
        ("plugins", "plugin"),
    ];
    let lookup = matches!(parts.as_slice(), [_, _] | [_, _, "json"]);
    if let Some((_, kind)) = KINDS.iter().find(|(area, _)| *area == first) {
        if lookup
            && (req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD)
        {
            return DockerError::not_found(format!("No such {kind}: {}", parts[1]));
        }
    }
    if AREAS.contains(&first) {
        DockerError::not_implemented(format!(
            "{} {path} is not implemented by inarray's Docker API (the routes it serves: docs/design/docker-api.md)",
            req.method()
        ))
    } else {
        DockerError::not_found("page not found")
    }
}

/// The query string as Docker reads it: every parameter once (the last wins), unknown ones
/// ignored (as Docker does: clients of different versions send different sets).
pub struct DockerQuery(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for DockerQuery {
    type Rejection = DockerError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(q)
            .map_err(|e| DockerError::bad_request(format!("query string: {e}")))?;
        Ok(Self(pairs))
    }
}

fn serde_urlencoded_pairs(q: &str) -> std::result::Result<Vec<(String, String)>, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{q}").parse::<Uri>().map_err(|e| e.to_string())?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| e.body_text())
}

impl DockerQuery {
    fn raw(&self, key: &str) -> Option<&String> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The parameter (its last value), if not empty.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.raw(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Every value of a repeated parameter (`names=a&names=b`).
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Docker's boolean rule: anything but "", "0", "no", "false", "none" is true.
    pub fn bool(&self, key: &str) -> bool {
        self.raw(key).is_some_and(|v| {
            !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            )
        })
    }

    /// A boolean parameter by Docker's rule, or none when it is not given.
    pub fn raw_bool(&self, key: &str) -> Option<bool> {
        self.raw(key).map(|_| self.bool(key))
    }

    /// An integer parameter; a malformed one is a 400 naming it.
    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        self.str(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    DockerError::bad_request(format!("{key}: {v:?} is not an integer"))
                })
            })
            .transpose()
    }
}

/// A JSON request body, within the native limits (size 413, time 408, depth and array length
/// 400); an empty body is `null`. The content type is not insisted on (Docker clients differ).
pub async fn json_body(body: Body, limits: &Limits) -> Result<Value> {
    let bytes: Bytes = crate::extract::read_body(body, limits).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    crate::extract::check_shape(&bytes, limits.max_json_depth, limits.max_array_len)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DockerError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Reads a checked body into its typed form; a wrong type is a 400 naming the field.
/// The values of one entry of a `filters` query: Docker sends `{"k": ["v", …]}` or the older
/// `{"k": {"v": true}}`; anything else is a 400 naming the filter.
pub fn filter_values(k: &str, vals: &Value) -> Result<Vec<String>> {
    match vals {
        Value::Array(a) => Ok(a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()),
        Value::Object(o) => Ok(o
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect()),
        _ => Err(DockerError::bad_request(format!(
            "filters: {k}: expected a list"
        ))),
    }
}

/// A `filters` query parameter decoded: each filter's values (none given: no filter). The
/// caller says which filters it serves.
pub fn filters(raw: Option<&str>) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    let Some(raw) = raw else {
        return Ok(Default::default());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| DockerError::bad_request(format!("filters: not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| DockerError::bad_request("filters: expected a JSON object"))?;
    obj.iter()
        .map(|(k, vals)| Ok((k.clone(), filter_values(k, vals)?)))
        .collect()
}

pub fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        DockerError::bad_request(format!("{path}: {}", e.into_inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(path: &str) -> (String, Option<Requested>) {
        let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
        strip_version(&mut req);
        (
            req.uri().to_string(),
            req.extensions().get::<Requested>().cloned(),
        )
    }

    #[test]
    fn the_version_prefix_is_taken_off_and_kept() {
        assert_eq!(
            stripped("/v1.41/containers/json?all=1"),
            (
                "/containers/json?all=1".into(),
                Some(Requested::Version(1, 41))
            )
        );
        assert_eq!(
            stripped("/v1.12/_ping"),
            ("/_ping".into(), Some(Requested::Version(1, 12)))
        );
        assert_eq!(stripped("/_ping"), ("/_ping".into(), None));
        assert_eq!(stripped("/volumes"), ("/volumes".into(), None));
        assert_eq!(
            stripped("/v1..2/info"),
            ("/info".into(), Some(Requested::Malformed("1..2".into())))
        );
        assert_eq!(
            stripped("/v1/containers"),
            ("/containers".into(), Some(Requested::Version(1, 0)))
        );
    }

    #[test]
    fn query_booleans_follow_docker() {
        let q = DockerQuery(
            [
                ("a", "1"),
                ("b", "true"),
                ("c", "0"),
                ("d", "False"),
                ("e", ""),
                ("n", "x"),
                ("n", "y"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        assert_eq!(q.all("n"), ["x", "y"]);
        assert_eq!(q.str("n"), Some("y"));
        assert!(q.bool("a") && q.bool("b"));
        assert!(!q.bool("c") && !q.bool("d") && !q.bool("e") && !q.bool("missing"));
    }
}
