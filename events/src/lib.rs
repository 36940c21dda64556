//! File events: inotify watches → a durable event log in SQL → subscriptions, webhooks and
//! event-triggered containers. Design and measurements: `docs/design/events.md`.
//!
//! - [`spec`]: the typed requests (watches, subscriptions, triggers) and their validation.
//! - [`glob`]: include/exclude patterns.
//! - [`watcher`]: one thread per watch reading its inotify instance: recursive watches, move
//!   pairing, new-directory pickup with a scan, overflow and lost-watch resync.
//! - [`service`]: [`Events`], the service the daemon starts: the batch writer, retention,
//!   subscriptions (long-poll, ack, redelivery), triggers and webhooks.
//! - [`lifecycle`]: [`LifecycleLog`], the sink of lifecycle events (containers, jobs, images,
//!   exports) into the same log.
//! - [`nats`]: optional publishing to NATS JetStream.

pub mod glob;
pub mod lifecycle;
pub mod nats;
pub mod service;
pub mod spec;
pub mod trigger;
pub mod watcher;
pub mod webhook;

pub use lifecycle::LifecycleLog;
pub use service::{Delivery, Events, EventsOptions, SubscriptionView, WatchView};
pub use spec::{
    parse_types, Event, From, Kind, LifecycleView, LogEvent, SubscriptionSpec, TriggerMode,
    TriggerSpec, WatchSpec, WebhookSpec,
};

use inarray_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A field of a request fails validation.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no such {kind}: {name}")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// The kernel's inotify watch limit is reached and could not be raised.
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> EventsError {
    EventsError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
