//! Usage replies shared by engines and containers: one JSON document, or with `stream=true` one
//! per second as JSON lines until the client goes.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use inarray_runtime::engines::Usage;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    #[serde(default)]
    pub(crate) stream: bool,
}

/// One JSON document, or with `stream=true` one per second as JSON lines until the client goes.
pub(crate) fn stats_response<F, Fut>(stream: bool, first: Usage, next: F) -> Response
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Usage>> + Send,
{
    if !stream {
        return axum::Json(first).into_response();
    }
    let line = |u: &Usage| {
        let mut v = serde_json::to_vec(u).unwrap_or_default();
        v.push(b'\n');
        v
    };
    let head =
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(line(&first))));
    let tail = futures_util::stream::unfold(next, move |next| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let u = next().await?;
        Some((Ok(line(&u)), next))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(head, tail));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
