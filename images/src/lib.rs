//! Image archives in, a verified content-addressed store and unpacked layer directories out.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     every verified blob (manifests, configs, layer blobs)
//! <root>/layers/sha256/<hex>    each layer unpacked once, named by its diff id: an overlayfs lower
//! <root>/tmp/                   staging; emptied by ImageStore::open
//! ```
//!
//! An import stages everything under `tmp/`, verifies every digest, size, media type and diff id,
//! unpacks new layers into `tmp/` and only then renames blobs and layer directories into place:
//! a failed import leaves `blobs/` and `layers/` as they were. The crate knows nothing about SQL;
//! the caller records the returned [`ImportedImage`]s and passes the digests it still needs to
//! [`ImageStore::gc`]. The import is synchronous (call it from `spawn_blocking`).
//!
//! **Invariant:** a directory under `layers/sha256/` only ever appears by rename of a fully
//! unpacked, diff-id-verified tree, and nothing in a layer tar can create or change a file outside
//! its own layer directory.
//!
//! [`Puller`] (module [`registry`]) pulls from OCI Distribution registries through the same
//! import: the blobs the store lacks are fetched into staging while hashed, then verified and
//! committed like an archive's. Its HTTP client ([`http`]) is the daemon's only one: webhooks
//! use it too.
//!
//! # Limitations an operator should know
//! - Needs Linux 5.6+ (`openat2`) and root (whiteout devices, `trusted.overlay.*`, chown).
//! - Each layer is unpacked on its own, not onto the layers below it. A tar that writes through a
//!   symlinked directory of a *lower* layer (lower has `lib -> usr/lib`, upper has `lib/x.so`)
//!   gets a real `lib/` directory that hides the lower symlink in the overlay; a layer that omits
//!   parent directory entries gets implicit 0755 root directories that override the lower
//!   layers' owner and mode in the merged view. Layers written by docker, buildah or buildkit
//!   list real paths and their parents, so this only bites hand-made tars.
//! - overlayfs: `lowerdir=` wants the top layer first (the reverse of
//!   [`ImageStore::layer_dirs`]), and legacy `mount(2)` options fit in one page, so at ~100 bytes a
//!   path only ~40 layers fit; use relative names from a `chdir` or the new mount API's
//!   `lowerdir+` (Linux 6.8+) for deeper images. The kernel caps lowers at 500.
//! - Layer compression is taken from the magic bytes (gzip, zstd including skippable and
//!   multiple frames, or none), whatever the media type says; bzip2/xz layers are refused.
//!   So is a whole archive's (`docker save img | gzip`): its decompressed stream is capped at
//!   `max_unpacked_layer_bytes`; bzip2/xz archives are refused by name (no decoder among our
//!   dependencies).
//! - GNU sparse files, device nodes and extended attributes other than `security.capability` and
//!   `user.*` are refused or dropped.
//! - A streamed archive is staged whole (every regular file, each up to `max_blob_bytes`, at most
//!   100 000 entries) before it is parsed, since `index.json` may come last: the store's file
//!   system needs room for the archive plus the unpacked layers.
//! - Commit flushes the store's file system once with `syncfs`.
//! - [`ImageStore::gc`] must not run while an import is in flight.

mod error;
mod export;
mod fsutil;
pub mod http;
mod import;
mod layer;
mod reference;
pub mod registry;
mod source;
mod store;
mod tarstream;
mod unpack;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use error::ImageError;
pub use export::ExportImage;
pub use reference::Reference;
pub use registry::{
    Credentials, PullEvent, Puller, RegistryError, RegistryErrorKind, RegistrySettings,
};
pub use store::{GcReport, ImageStore, Limits};

use serde::{Deserialize, Serialize};

/// What the runtime needs from an image config (`config` in the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings, in image order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The image's `HEALTHCHECK` (absent from the records of images imported before it was
    /// read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ImageHealthcheck>,
}

/// An image config's `Healthcheck`, as Docker writes it (durations in nanoseconds, 0 = the
/// default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageHealthcheck {
    /// `["NONE"]`, `["CMD", argv…]` or `["CMD-SHELL", command]`.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: u64,
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub start_period: u64,
    #[serde(default)]
    pub retries: u32,
}

/// One layer of an image, as imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Digest of the (possibly compressed) layer blob, `"sha256:<hex>"`.
    pub digest: String,
    /// Digest of the uncompressed tar stream, `"sha256:<hex>"`; names the unpacked directory.
    pub diff_id: String,
    pub media_type: String,
    /// Size of the blob in bytes (compressed).
    pub size: u64,
}

/// An image the store now holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    /// `"sha256:<hex>"` of the config blob.
    pub id: String,
    /// `"sha256:<hex>"` of the manifest blob. For docker archives, which carry no manifest, this is
    /// the OCI manifest the import wrote for the image (also stored as a blob).
    pub manifest_digest: String,
    /// Normalized references ("name:tag").
    pub names: Vec<String>,
    pub config: RuntimeConfig,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// Bytes of regular-file content across all layers, unpacked.
    pub size: u64,
}

impl ImportedImage {
    /// The digests gc must keep for this image: manifest, config, layer blobs and diff ids.
    pub fn referenced_digests(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.id.as_str()]
            .into_iter()
            .chain(
                self.layers
                    .iter()
                    .flat_map(|l| [l.digest.as_str(), l.diff_id.as_str()]),
            )
    }

    /// The diff ids in stacking order (bottom first), as [`ImageStore::layer_dirs`] wants them.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}
