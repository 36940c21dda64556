//! The REST API (`/v1`, JSON, axum) and its client. The only crate that knows HTTP.

pub mod access;
pub mod client;
pub mod engines;
pub mod error;
pub mod events;
pub mod events_ws;
pub mod exports;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod registries;
pub mod routes;
pub mod serve;

pub use error::ApiError;
pub use routes::router;
