//! The router: every concern's routes merged under one [`AppState`], the fallbacks, the body
//! ceiling and the access guard. Handlers live in their concern's file.

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The router's ceiling on request bodies; JSON bodies are held to the (configurable, smaller)
/// `access::Limits::max_body_bytes`, image archives are streamed and bounded by the image store.
pub const JSON_BODY_LIMIT: usize = crate::access::MAX_BODY_CEILING;

/// The whole API over `state`, behind the access guard (which no route can be without).
pub fn router(state: AppState) -> Router {
    let access = state.access.clone();
    let routes = Router::new()
        .merge(crate::info::routes())
        .merge(crate::images::routes())
        .merge(crate::registries::routes())
        .merge(crate::containers::routes())
        .merge(crate::execs::routes())
        .merge(crate::engines::routes())
        .merge(crate::metrics::routes())
        .merge(crate::exports::routes())
        .merge(crate::jobs::routes())
        .merge(crate::tokens::routes())
        .merge(crate::events::routes())
        .merge(crate::volumes::routes())
        .merge(crate::networks::routes())
        .merge(crate::console::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    crate::access::guard::layers(routes, &access).with_state(state)
}
