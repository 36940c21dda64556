//! The on-disk store: layout, open, lookups and garbage collection.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reference::is_sha256_hex;
use crate::source::{ArchiveSource, DirSource, Staging};
use crate::{import, ImageError, ImportedImage, Reference};

const GIB: u64 = 1024 * 1024 * 1024;

/// Size limits applied while importing. Deserializable (missing fields take the defaults) so a
/// daemon config file can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest blob (or archive entry) accepted.
    pub max_blob_bytes: u64,
    /// Largest uncompressed layer stream, and most file content one layer may unpack to.
    pub max_unpacked_layer_bytes: u64,
    /// Largest index, manifest, image config or manifest.json.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_bytes: 16 * GIB,
            max_unpacked_layer_bytes: 64 * GIB,
            max_manifest_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub layers_removed: u64,
    /// Blob bytes plus regular-file bytes of removed layers.
    pub bytes_freed: u64,
}

/// A content-addressed image store rooted at one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
}

impl ImageStore {
    /// Creates `root/{blobs/sha256, layers/sha256, tmp}` and clears stale `root/tmp/*` left by a
    /// crash. `root` is made mode 0700: layers keep their set-user-ID binaries, which no host user
    /// may reach. Only one store (one daemon) may use a root at a time.
    pub fn open(root: &Path, limits: Limits) -> Result<Self, ImageError> {
        fs::create_dir_all(root).map_err(|e| ImageError::io("create", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| ImageError::io("resolve", root, e))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io("set mode of", &root, e))?;
        for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
        }
        let store = ImageStore { root, limits };
        store.clear_tmp()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Imports an OCI image-layout archive (`skopeo copy … oci-archive:`) or a docker archive
    /// (`docker save`, `podman save`) from a stream, plain or gzip- or zstd-compressed (`docker
    /// save img | gzip`). With `name`, the (single) image is named `name` instead of what the
    /// archive says. Every image in the archive is imported.
    pub fn import_archive<R: Read>(
        &self,
        reader: R,
        name: Option<&Reference>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let staging = Staging::create(&self.tmp_dir(), "import")?;
        let reader = crate::layer::archive_stream(reader, self.limits.max_unpacked_layer_bytes)?;
        let mut source = ArchiveSource::read(reader, &staging, &self.limits)?;
        import::import(self, &staging, &mut source, name)
    }

    /// Imports from an OCI image layout directory on disk (read, not modified).
    pub fn import_layout_dir(
        &self,
        dir: &Path,
        name: Option<&Reference>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let staging = Staging::create(&self.tmp_dir(), "import")?;
        let mut source = DirSource::open(dir, &staging, &self.limits)?;
        import::import(self, &staging, &mut source, name)
    }

    /// Absolute paths of the unpacked layer directories, in the order given (bottom layer first;
    /// overlayfs's `lowerdir=` wants the reverse). Errors if one is missing.
    pub fn layer_dirs(&self, diff_ids: &[String]) -> Result<Vec<PathBuf>, ImageError> {
        diff_ids
            .iter()
            .map(|diff_id| {
                let hex = diff_id
                    .strip_prefix("sha256:")
                    .filter(|h| is_sha256_hex(h))
                    .ok_or_else(|| ImageError::InvalidDigest(diff_id.clone()))?;
                let dir = self.layer_path(hex);
                match fs::symlink_metadata(&dir) {
                    Ok(meta) if meta.is_dir() => Ok(dir),
                    Ok(_) => Err(ImageError::MissingLayer {
                        diff_id: diff_id.clone(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(ImageError::MissingLayer {
                            diff_id: diff_id.clone(),
                        })
                    }
                    Err(e) => Err(ImageError::io("stat", dir, e)),
                }
            })
            .collect()
    }

    /// Removes every blob and unpacked layer whose digest (`"sha256:<hex>"`) is not in `keep`.
    /// Must not run concurrently with an import (the caller serializes them).
    pub fn gc(&self, keep: &HashSet<String>) -> Result<GcReport, ImageError> {
        let mut report = GcReport::default();
        for (hex, path) in self.list_digest_dir(&self.root.join("blobs/sha256"))? {
            if keep.contains(&format!("sha256:{hex}")) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io("stat", &path, e))?;
            if meta.is_dir() {
                fs::remove_dir_all(&path).map_err(|e| ImageError::io("remove", &path, e))?;
            } else {
                fs::remove_file(&path).map_err(|e| ImageError::io("remove", &path, e))?;
            }
            report.blobs_removed += 1;
            report.bytes_freed += meta.len();
        }
        for (hex, path) in self.list_digest_dir(&self.root.join("layers/sha256"))? {
            if keep.contains(&format!("sha256:{hex}")) {
                continue;
            }
            let bytes = tree_bytes(&path);
            // Move it out of layers/ first, so a half-removed layer never looks valid.
            let doomed = Staging::create(&self.tmp_dir(), "gc")?;
            let target = doomed.dir().join("layer");
            fs::rename(&path, &target).map_err(|e| ImageError::io("move", &path, e))?;
            fs::remove_dir_all(&target).map_err(|e| ImageError::io("remove", &target, e))?;
            report.layers_removed += 1;
            report.bytes_freed += bytes;
        }
        tracing::info!(
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            "image store garbage collected"
        );
        Ok(report)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    pub(crate) fn layer_path(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(hex)
    }

    fn clear_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(|e| ImageError::io("list", &tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", &tmp, e))?;
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(|e| ImageError::io("remove stale", &path, e))?;
        }
        Ok(())
    }

    /// Entries of a `sha256` directory whose names are digests.
    fn list_digest_dir(&self, dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
            let name = entry.file_name();
            match name.to_str() {
                Some(hex) if is_sha256_hex(hex) => out.push((hex.to_string(), entry.path())),
                _ => {
                    tracing::warn!(path = %entry.path().display(), "unexpected entry in the image store")
                }
            }
        }
        Ok(out)
    }
}

/// Regular-file bytes under `dir`, never following symlinks (best effort).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
