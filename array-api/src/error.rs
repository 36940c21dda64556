//! The API's one error type: every failure becomes `{"error": {"code", "message"}}` with a status
//! chosen here, in one place. Internal errors are logged in full and answered with a generic text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inarray_runtime::ManagerError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
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
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        use ManagerError as M;
        match e {
            M::NotFound { .. } => Self::not_found(e.to_string()),
            M::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            M::Invalid(f) => Self::bad_request(f.to_string()),
            M::Volume(v) if v.is_client_error() => Self::bad_request(v.to_string()),
            M::Image(inarray_images::ImageError::Registry(r)) => Self::registry(r),
            M::Image(i) if i.is_invalid_input() => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_image", i.to_string())
            }
            ref start @ M::Start { ref message, .. } => {
                if start.is_disk_full() || is_disk_full(message) {
                    return Self::disk_full();
                }
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "start_failed",
                    format!("cannot start the container: {message}"),
                )
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
        Self::internal(e)
    }
}
