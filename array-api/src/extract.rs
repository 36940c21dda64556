//! Extractors whose rejections come back in the API's error shape.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json`, with malformed bodies answered as `{"error": …}` (400, 413, 415 or 422).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected request with `Content-Type: application/json`",
            ));
        }
        // Bytes honours the body limit (413) without buffering more than it.
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                ApiError::new(r.status(), "invalid_body", lowercase_first(&r.body_text()))
            })?;
        // Request bodies are JSON objects, never arrays (serde would otherwise accept a struct
        // written as the array of its fields).
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "the request body must be a JSON object",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|v| de.end().map(|()| v).map_err(|e| (".".to_owned(), e)));
        value.map(Json).map_err(|(path, inner)| {
            let syntax = matches!(
                inner.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
            let text = lowercase_first(&inner.to_string());
            let message = if path == "." {
                text
            } else {
                format!("{path}: {text}")
            };
            if syntax {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("failed to parse the request body as JSON: {message}"),
                )
            } else {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
        })
    }
}

/// axum's rejection texts start with a capital letter; ours are lowercase (acronyms such as "EOF"
/// stay as they are).
pub(crate) fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(f), Some(g)) if f.is_uppercase() && !g.is_uppercase() => f
            .to_lowercase()
            .chain(std::iter::once(g))
            .chain(c)
            .collect(),
        _ => s.to_owned(),
    }
}

/// `axum::extract::Query` with API-shaped rejections.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| ApiError::bad_request(lowercase_first(&r.body_text())))
    }
}

/// `axum::extract::Path` with API-shaped rejections.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| ApiError::bad_request(lowercase_first(&r.body_text())))
    }
}
