//! The API's one error type: every failure becomes `{"error": {"code", "message"}}` with a status
//! chosen here, in one place: the named constructors below and the maps from each domain's error
//! type (runtime, store, jobs, events, exports, registries). Handlers choose only their success
//! status (200, 201, 204). Internal errors are logged in full and answered with a generic text.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use inarray_events::EventsError;
use inarray_jobs::JobsError;
use inarray_nfs::ExportError;
use inarray_runtime::ManagerError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 429: the peer failed to authenticate too often; refused for `left` more.
    pub fn auth_blocked(left: Duration) -> Self {
        Self {
            retry_after: Some(left),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_auth_failures",
                format!(
                    "too many failed authentications from this peer; retry in {} s",
                    secs_up(left)
                ),
            )
        }
    }
    /// 400: the request is invalid; the message names the field or parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 405: the route exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }
    /// 409: the object exists already, or is in a state that forbids the action.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 422: the container was made but its process could not start.
    pub fn start_failed(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "start_failed",
            format!("cannot start the container: {message}"),
        )
    }
    /// 401: no credentials, or unknown ones (the reply carries `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403: the caller's scope does not cover the route.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 503: every request slot is taken.
    pub fn busy(max_in_flight: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("too many requests in flight (at most {max_in_flight}); retry later"),
        )
    }
    /// 415: a JSON body without a JSON content type.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected request with `Content-Type: application/json`",
        )
    }
    /// 400: the body is not JSON.
    pub fn malformed_json(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("failed to parse the request body as JSON: {message}"),
        )
    }
    /// 422: JSON of the wrong shape; the message names the field.
    pub fn invalid_field(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
    }
    /// 408: the body did not arrive in time.
    pub fn body_timeout(limit: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {limit:?}"),
        )
    }
    /// 408: a streamed upload stopped sending.
    pub fn upload_stalled(idle: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the upload stalled: no data for {idle:?}; nothing was imported"),
        )
    }
    /// 413: the body is over the configured size.
    pub fn body_too_large(max_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_body",
            format!("the request body is over the length limit of {max_bytes} bytes"),
        )
    }
    /// 400: the body could not be read.
    pub fn unreadable_body(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("cannot read the request body: {e}"),
        )
    }
    /// 500: logged in full, answered with a generic text (507 if the text says the disk is full).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        if is_disk_full(&detail) {
            tracing::error!(error = %detail, "disk full");
            return Self::disk_full();
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the daemon's log",
        )
    }
}

impl ApiError {
    /// 507: the daemon's own disk (state directory: database, images, container state) is full.
    pub fn disk_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "no space left on the daemon's state disk (No space left on device); free space there and retry",
        )
    }
    /// A pull's failure: the registry's message, a status per class.
    pub fn registry(e: inarray_images::RegistryError) -> Self {
        use inarray_images::RegistryErrorKind as K;
        let (status, code) = match e.kind {
            K::NotFound => (StatusCode::NOT_FOUND, "image_not_found"),
            K::NoPlatform => (StatusCode::NOT_FOUND, "platform_not_found"),
            K::Denied => (StatusCode::FORBIDDEN, "registry_auth_refused"),
            K::Unreachable => (StatusCode::BAD_GATEWAY, "registry_unreachable"),
            K::Protocol => (StatusCode::BAD_GATEWAY, "registry_error"),
            K::Corrupt => (StatusCode::BAD_GATEWAY, "digest_mismatch"),
            K::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_image"),
            K::Internal => return Self::internal(e),
        };
        Self::new(status, code, e.to_string())
    }
}

/// Whether an error's text says the disk is full: ENOSPC from any layer, or SQLite's
/// SQLITE_FULL. Errors reach here as text from several crates, hence the match on words.
fn is_disk_full(text: &str) -> bool {
    text.contains("No space left on device")
        || text.contains("os error 28")
        || text.contains("database or disk is full")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(d) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs_up(d)));
        }
        r
    }
}

/// Whole seconds, rounded up (at least 1).
fn secs_up(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        use ManagerError as M;
        match e {
            M::NotFound { .. } => Self::not_found(e.to_string()),
            M::Store(s) => Self::from(s),
            M::Conflict(m) => Self::conflict(m),
            M::TooMany(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many", m),
            M::Invalid(f) => Self::bad_request(f.to_string()),
            M::Volume(v) if v.is_client_error() => Self::bad_request(v.to_string()),
            M::Image(inarray_images::ImageError::Registry(r)) => Self::registry(r),
            M::Image(i) if i.is_invalid_input() => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_image", i.to_string())
            }
            ref start @ M::Start { ref message, .. } => {
                // By kind: the daemon's own causes, and the errno a shim reports with its
                // failure. The words are a fallback for what reaches the shim only as text
                // (errors from inside libcontainer).
                if start.is_disk_full() || is_disk_full(message) {
                    return Self::disk_full();
                }
                Self::start_failed(message)
            }
            other if other.is_disk_full() => {
                tracing::error!(error = %other, "disk full");
                Self::disk_full()
            }
            other => Self::internal(other),
        }
    }
}

impl From<inarray_store::StoreError> for ApiError {
    fn from(e: inarray_store::StoreError) -> Self {
        match e {
            // A unique key taken between the caller's check and its insert.
            inarray_store::StoreError::Conflict { .. } => Self::conflict(e.to_string()),
            e if inarray_store::is_disk_full(&e) => {
                tracing::error!(error = %e, "disk full");
                Self::disk_full()
            }
            e => Self::internal(e),
        }
    }
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Invalid { .. } => Self::bad_request(e.to_string()),
            JobsError::NotFound(_) => Self::not_found(e.to_string()),
            JobsError::Conflict(m) => Self::conflict(m),
            JobsError::Start { message, .. } => Self::start_failed(message),
            JobsError::Container(m) => m.into(),
            JobsError::Store(s) => s.into(),
            JobsError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<EventsError> for ApiError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Invalid { .. } => Self::bad_request(e.to_string()),
            EventsError::NotFound { .. } => Self::not_found(e.to_string()),
            EventsError::Conflict(m) => Self::conflict(m),
            // 507: the kernel's inotify limits (watches, instances) are reached.
            EventsError::Limit(m) => Self::new(StatusCode::INSUFFICIENT_STORAGE, "limit", m),
            EventsError::Store(s) => s.into(),
            EventsError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Invalid(_) => Self::bad_request(e.to_string()),
            ExportError::NotFound(_) => Self::not_found(e.to_string()),
            ExportError::Conflict(_) => Self::conflict(e.to_string()),
            ExportError::Store(s) => s.into(),
            ExportError::Duplicate(_)
            | ExportError::Config { .. }
            | ExportError::Unreadable { .. } => Self::internal(e),
        }
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn store_conflicts_are_409_and_a_full_disk_is_507_by_kind() {
        let conflict = || inarray_store::StoreError::Conflict {
            kind: "export",
            key: "x".into(),
        };
        assert_eq!(ApiError::from(conflict()).status, StatusCode::CONFLICT);
        assert_eq!(
            ApiError::from(ManagerError::Store(conflict())).status,
            StatusCode::CONFLICT
        );
        // ENOSPC kept as the source of an internal error: 507, whatever the message says.
        let full = ManagerError::Internal {
            what: "writing the bundle".into(),
            source: Box::new(std::io::Error::from_raw_os_error(libc_enospc())),
        };
        assert_eq!(
            ApiError::from(full).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        let other = ManagerError::Internal {
            what: "writing the bundle".into(),
            source: Box::new(std::io::Error::from_raw_os_error(13)),
        };
        let e = ApiError::from(other);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !e.message.contains("bundle"),
            "details are not sent: {}",
            e.message
        );
    }

    /// ENOSPC on Linux.
    fn libc_enospc() -> i32 {
        28
    }
}
