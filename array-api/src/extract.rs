//! Extractors whose rejections come back in the API's error shape.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::access::Limits;
use crate::error::ApiError;

/// `axum::Json`, with malformed bodies answered as `{"error": …}` (400, 413, 415 or 422), within
/// the router state's [`Limits`].
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    Limits: FromRef<S>,
{
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
            return Err(ApiError::unsupported_media_type());
        }
        let limits = Limits::from_ref(state);
        let bytes = read_body(req.into_body(), &limits).await?;
        check_shape(&bytes, limits.max_json_depth, limits.max_array_len)?;
        // Request bodies are JSON objects, never arrays (serde would otherwise accept a struct
        // written as the array of its fields).
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::invalid_field(
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
                ApiError::malformed_json(message)
            } else {
                ApiError::invalid_field(message)
            }
        })
    }
}

/// The whole body, within the size limit (413) and the body timeout (408).
pub(crate) async fn read_body(
    body: axum::body::Body,
    limits: &Limits,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::body_timeout(limits.body_timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::body_too_large(limits.max_body_bytes))
        }
        Ok(Err(e)) => Err(ApiError::unreadable_body(e)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Refuses JSON nested deeper than `max_depth` or with an array longer than `max_array`, before
/// anything is deserialized (one pass over the bytes, memory bounded by `max_depth`). Malformed
/// JSON passes here and is reported by the parser.
pub fn check_shape(bytes: &[u8], max_depth: usize, max_array: usize) -> Result<(), ApiError> {
    // For each open container: Some(entries so far) for an array, None for an object.
    let mut stack: Vec<Option<usize>> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    // An array was just opened and its first entry is not seen yet.
    let mut fresh = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if fresh && b != b']' {
            if let Some(Some(n)) = stack.last_mut() {
                *n = 1;
            }
        }
        fresh = false;
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                if stack.len() >= max_depth {
                    return Err(ApiError::bad_request(format!(
                        "the request body is nested deeper than {max_depth} levels"
                    )));
                }
                stack.push((b == b'[').then_some(0));
                fresh = b == b'[';
            }
            b']' | b'}' => {
                stack.pop();
            }
            b',' => {
                if let Some(Some(n)) = stack.last_mut() {
                    *n += 1;
                    if *n > max_array {
                        return Err(ApiError::bad_request(format!(
                            "the request body has an array of more than {max_array} entries"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::check_shape;

    #[test]
    fn depth_and_array_lengths() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_shape(deep(32).as_bytes(), 32, 10).is_ok());
        let e = check_shape(deep(33).as_bytes(), 32, 10).unwrap_err();
        assert!(e.message.contains("deeper than 32"), "{}", e.message);
        // Brackets inside strings are data.
        let s = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert!(check_shape(s.as_bytes(), 4, 10).is_ok(), "{s}");
        let arr = |n: usize| format!("{{\"a\": [{}]}}", vec!["1"; n].join(","));
        assert!(check_shape(arr(10).as_bytes(), 4, 10).is_ok());
        assert!(check_shape(arr(11).as_bytes(), 4, 10).is_err());
        assert!(check_shape(b"{\"a\": []}", 4, 0).is_ok());
        // Commas of an object do not count, nor do those of an inner array toward the outer.
        let obj = format!(
            "{{{}}}",
            (0..50)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(check_shape(obj.as_bytes(), 4, 10).is_ok());
        assert!(check_shape(b"[[1,2,3],[4,5,6]]", 4, 3).is_ok());
    }
}
