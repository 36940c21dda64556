//! Pulling images from OCI Distribution (Docker Registry v2) registries.
//!
//! A pull resolves the reference to one manifest (choosing this node's platform from an image
//! index), then hands the ordinary import ([`crate::import`]) a [`pull::RegistrySource`] that
//! fetches each blob the import asks for into the same staging directory an archive import
//! uses, hashing it while it streams and refusing it past its descriptor's size. Blobs the store
//! already holds are not fetched. So a pulled image is verified (digests, sizes, diff ids) and
//! committed exactly like an imported one, and a failed pull leaves nothing behind.
//!
//! The HTTP client is our own small one over hyper and rustls (why: docs/design/images.md).

mod auth;
mod client;
mod pull;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use client::split_name;
pub use pull::{LayerProgress, PullEvent, Puller};

/// How the node reaches one registry (`host[:port]`, as references name it; `docker.io` for
/// Docker Hub). Deserializable for the daemon's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Speak plain HTTP to this registry (`true`) or only TLS (`false`). Unset: plain HTTP for
    /// a loopback registry (`localhost`, 127.0.0.0/8, `[::1]`) without a `ca_file`, as dockerd
    /// does, and TLS for every other. Redirects and token realms on plain HTTP go only to hosts listed `true`.
    pub insecure: Option<bool>,
    /// Registries (`host[:port]`) tried in order before this one, for the same repository.
    pub mirrors: Vec<String>,
    /// PEM file of CA certificates trusted for this host besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A user name and password (or token) for one registry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What went wrong with a pull, in classes a caller maps to statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryErrorKind {
    /// The repository, tag or digest is unknown to the registry.
    NotFound,
    /// The image has no manifest for this node's platform.
    NoPlatform,
    /// The registry refused the credentials (or wants some the node does not have).
    Denied,
    /// The registry could not be reached, timed out, or answered 5xx/429.
    Unreachable,
    /// The registry answered something that breaks the protocol (hostile or broken server).
    Protocol,
    /// Content does not match its digest or size.
    Corrupt,
    /// The image the registry serves is not one this node accepts (media types, layer tars).
    Invalid,
    /// The node itself failed (disk, permissions).
    Internal,
}

/// A pull failure: its class, the registry it concerns, and the registry's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", if registry.is_empty() { "pull" } else { registry.as_str() })]
pub struct RegistryError {
    pub kind: RegistryErrorKind,
    pub registry: String,
    pub message: String,
}

impl RegistryError {
    pub(crate) fn new(
        kind: RegistryErrorKind,
        registry: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        RegistryError {
            kind,
            registry: registry.into(),
            message: message.into(),
        }
    }
}
