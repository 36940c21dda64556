//! The REST API (`/v1`, JSON, axum) and its client. The only crate that knows HTTP.

pub mod access;
mod attach;
pub mod client;
pub mod console;
pub mod containers;
pub mod docker;
pub mod engines;
pub mod error;
pub mod events;
pub mod events_ws;
mod execs;
pub mod exports;
pub mod extract;
pub mod images;
pub mod info;
pub mod jobs;
pub mod metrics;
pub mod networks;
pub mod registries;
pub mod routes;
pub mod serve;
pub mod state;
mod stats;
pub mod tokens;
mod volumes;

pub use error::ApiError;
pub use routes::router;
pub use state::AppState;
