//! Docker-shaped errors: `{"message": "…"}` with Docker's status codes (400 bad parameter, 403
//! refused for safety, 404 no such object, 409 conflict, 500 the daemon's fault, 501 not
//! implemented here). Statuses come from the native classification (`crate::error`), the one
//! place that maps domain errors, with the two the Docker CLI does not know folded into its own:
//! 422 (a container that cannot start, an invalid field) → 400, 507 (the state disk is full) →
//! 500. Every reply of the Docker listener passes [`docker_shaped`], so even the access guard's
//! and the body limit's refusals come back in this shape.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use inarray_runtime::ManagerError;
use serde_json::{json, Value};

use crate::error::ApiError;

#[derive(Debug)]
pub struct DockerError {
    pub status: StatusCode,
    pub message: String,
}

pub type Result<T, E = DockerError> = std::result::Result<T, E>;

impl DockerError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400: a parameter or field is wrong or not supported here; the message names it.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 403: refused because it would weaken the array's protection; the message says why.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 304: the container is already in the asked state (start, stop); no body.
    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, "")
    }
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, message)
    }
    /// 500: logged in full, answered with a generic text (the native rule).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::internal(detail).into()
    }
    pub fn no_such_container(key: &str) -> Self {
        Self::not_found(format!("No such container: {key}"))
    }
    /// The text the Docker CLI reacts to by pulling the image and trying again.
    pub fn no_such_image(key: &str) -> Self {
        Self::not_found(format!("No such image: {key}"))
    }
    pub fn no_such_exec(id: &str) -> Self {
        Self::not_found(format!("No such exec instance: {id}"))
    }
    /// Prefixes the message (e.g. with the Docker field a native error is about).
    pub fn context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl std::fmt::Display for DockerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

/// The status a Docker client understands for a native one.
fn docker_status(s: StatusCode) -> StatusCode {
    match s {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        StatusCode::INSUFFICIENT_STORAGE => StatusCode::INTERNAL_SERVER_ERROR,
        s => s,
    }
}

impl From<ApiError> for DockerError {
    fn from(e: ApiError) -> Self {
        Self::new(docker_status(e.status), e.message)
    }
}

impl From<ManagerError> for DockerError {
    fn from(e: ManagerError) -> Self {
        match &e {
            ManagerError::NotFound { kind, key } => match *kind {
                "container" => Self::no_such_container(key),
                "image" => Self::no_such_image(key),
                "exec" => Self::no_such_exec(key),
                _ => ApiError::from(e).into(),
            },
            _ => ApiError::from(e).into(),
        }
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_MODIFIED {
            return self.status.into_response();
        }
        (self.status, axum::Json(json!({ "message": self.message }))).into_response()
    }
}

/// The largest error body [`docker_shaped`] rewrites (native error bodies are small).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Every reply of the Docker listener: Docker's headers, and an error body that is not
/// `{"message"}` yet (the access guard's, the body limit's, a native extractor's) rewritten
/// into that shape with the same status (mapped as [`DockerError`] maps them).
pub async fn docker_shaped(resp: Response) -> Response {
    let mut resp = if resp.status().is_client_error() || resp.status().is_server_error() {
        reshape(resp).await
    } else {
        resp
    };
    let h = resp.headers_mut();
    h.insert(
        "API-Version",
        HeaderValue::from_static(super::API_VERSION_TEXT),
    );
    h.insert("OSType", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!("inarray/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    resp
}

async fn reshape(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let status = docker_status(parts.status);
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return DockerError::new(status, "error (reply too long to show)").into_response()
        }
    };
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v)
            if v.get("message").is_some_and(Value::is_string)
                && v.as_object().is_some_and(|o| o.len() == 1) =>
        {
            // Already Docker-shaped.
            return Response::from_parts(parts, Body::from(bytes));
        }
        Ok(v) => v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let mut out = DockerError::new(status, message).into_response();
    for (k, v) in parts.headers.iter() {
        // The guard's WWW-Authenticate and Retry-After stay; the body's headers are new.
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response) -> (StatusCode, Value) {
        let status = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn native_errors_become_docker_shaped_with_dockers_statuses() {
        let (s, v) = body_of(docker_shaped(ApiError::busy(3).into_response()).await).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            v["message"].as_str().unwrap().contains("too many requests"),
            "{v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        let (s, v) = body_of(
            docker_shaped(ApiError::start_failed("exec: no such file").into_response()).await,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "422 is not a Docker status");
        assert!(v["message"].as_str().unwrap().contains("no such file"));
        let plain = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        let (s, v) = body_of(docker_shaped(plain).await).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v["message"], "length limit exceeded");
        let r = docker_shaped(DockerError::no_such_image("x:latest").into_response()).await;
        assert_eq!(r.headers()["API-Version"], super::super::API_VERSION_TEXT);
        let (s, v) = body_of(r).await;
        assert_eq!(
            (s, v),
            (
                StatusCode::NOT_FOUND,
                json!({"message": "No such image: x:latest"})
            )
        );
    }

    #[test]
    fn not_found_names_the_docker_object() {
        let e = DockerError::from(ManagerError::NotFound {
            kind: "container",
            key: "web".into(),
        });
        assert_eq!(e.message, "No such container: web");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }
}
