//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while importing, verifying or managing images.
///
/// [`ImageError::is_invalid_input`] tells the caller whether the error came from the image it was
/// given (HTTP 400) or from the node itself (HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file-system operation on the node failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the archive stream failed (truncated, corrupt tar framing, connection lost).
    #[error("cannot read the image archive: {0}")]
    ArchiveRead(#[source] std::io::Error),
    /// The archive or layout is not an image this crate understands.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// A file the image's metadata names is not in the archive or layout.
    #[error("{what} {path:?} is missing from the image")]
    MissingFile { what: &'static str, path: String },
    /// An image reference does not follow the distribution grammar.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("invalid or unsupported digest {0:?}")]
    InvalidDigest(String),
    /// A manifest, config or layer has a media type this crate does not handle.
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// A descriptor names a blob that is not in the archive or layout.
    #[error("{what} blob {digest} is missing from the image")]
    MissingBlob { what: &'static str, digest: String },
    /// A blob's content does not hash to its digest.
    #[error("blob {digest} does not match its digest: its content hashes to {actual}")]
    DigestMismatch { digest: String, actual: String },
    /// A blob's size differs from its descriptor's (a truncated blob, usually).
    #[error("blob {digest} is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// A size limit was exceeded.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// A JSON document could not be parsed.
    #[error("malformed {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document parsed but its content is not acceptable.
    #[error("invalid {what}: {reason}")]
    InvalidMetadata { what: String, reason: String },
    /// The image config's rootfs.diff_ids does not match what the layers unpack to.
    #[error("layer {layer}: its uncompressed content hashes to {actual} but the image config says {expected}")]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    /// A layer could not be decompressed or is not a valid tar stream.
    #[error("layer {layer}: {reason}")]
    LayerFormat { layer: String, reason: String },
    /// A layer holds an entry that is refused (path escape, device node, bad link).
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// The index lists manifests, none for this node's platform.
    #[error("the image has no manifest for {0}")]
    NoMatchingPlatform(String),
    /// A layer asked for by [`crate::ImageStore::layer_dirs`] is not unpacked in the store.
    #[error("layer {diff_id} is not in the image store")]
    MissingLayer { diff_id: String },
    /// Pulling from a registry failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl ImageError {
    /// True when the error is the image's (or the caller's input's) fault, false when the node
    /// itself failed (disk, permissions) or the store lacks something it should have.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ImageError::Io { .. } | ImageError::MissingLayer { .. } => false,
            ImageError::Registry(e) => e.kind != crate::registry::RegistryErrorKind::Internal,
            _ => true,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::InvalidMetadata {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
