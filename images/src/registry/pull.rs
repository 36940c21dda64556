//! One pull: reference → manifest (platform chosen from an index) → the ordinary import, fed by
//! a source that fetches blobs from the registry into staging while hashing them.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::{split_name, Client, Registries};
use super::{Credentials, RegistryError, RegistryErrorKind, RegistrySettings};
use crate::http::{self, Timeouts};
use crate::import::{self, host_arch};
use crate::reference::is_sha256_digest;
use crate::source::{stage_bytes, Source, Staged, Staging};
use crate::{ImageError, ImageStore, ImportedImage, Reference};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a manifest request accepts, most preferred first.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Progress of a layer is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// One step of a pull, for progress displays. Serialized as a JSON object with an `event` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: what the pull will fetch.
    Resolved {
        reference: String,
        manifest_digest: String,
        /// `os/arch` chosen from an image index; absent for a single-platform image.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        platform: Option<String>,
        layers: Vec<LayerProgress>,
        /// Bytes of all layer blobs.
        total_bytes: u64,
        /// Bytes of the layer blobs the store already holds (not fetched).
        cached_bytes: u64,
    },
    /// Bytes of one layer blob fetched so far.
    Layer {
        digest: String,
        bytes: u64,
        size: u64,
        done: bool,
    },
    /// Everything is fetched; the import verifies and unpacks.
    Verifying,
}

/// A layer of the manifest being pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    pub digest: String,
    pub size: u64,
    /// Already in the store: not fetched.
    pub cached: bool,
}

/// Pulls images into an [`ImageStore`]. Knows the registries' settings and credentials (both
/// replaceable at run time). Concurrent pulls of one reference are the caller's to share.
pub struct Puller {
    store: Arc<ImageStore>,
    client: Arc<Client>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformDoc>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformDoc {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    config: BlobDesc,
    layers: Vec<BlobDesc>,
}

#[derive(Deserialize)]
struct BlobDesc {
    digest: String,
    size: u64,
}

/// Most layers a pulled manifest may list.
const MAX_LAYERS: usize = 500;

impl Puller {
    pub fn new(store: Arc<ImageStore>) -> Self {
        Self::with_timeouts(store, Timeouts::default())
    }

    pub(crate) fn with_timeouts(store: Arc<ImageStore>, timeouts: Timeouts) -> Self {
        Puller {
            store,
            client: Arc::new(Client::new(http::Client::new(timeouts))),
        }
    }

    /// Replaces the registries' settings (insecure, mirrors), keyed by `host[:port]`.
    pub fn set_settings(&self, settings: HashMap<String, RegistrySettings>) {
        self.client.registries.write().expect("registries").settings = settings;
    }

    /// Sets (or with `None` removes) the credentials for one registry host.
    pub fn set_credentials(&self, host: &str, creds: Option<Credentials>) {
        let mut regs: std::sync::RwLockWriteGuard<'_, Registries> =
            self.client.registries.write().expect("registries");
        match creds {
            Some(c) => regs.credentials.insert(host.to_string(), c),
            None => regs.credentials.remove(host),
        };
    }

    /// Pulls `reference` into the store and returns the committed image, named `reference`.
    /// `progress` sees each step. Runs the import on a blocking thread.
    pub async fn pull(
        &self,
        reference: &Reference,
        progress: Arc<dyn Fn(PullEvent) + Send + Sync>,
    ) -> Result<ImportedImage, RegistryError> {
        let store = self.store.clone();
        let client = self.client.clone();
        let reference = reference.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            pull_blocking(&store, &client, &handle, &reference, &*progress)
        })
        .await
        .map_err(|e| {
            RegistryError::new(RegistryErrorKind::Internal, "", format!("pull task: {e}"))
        })?
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn pull_blocking(
    store: &ImageStore,
    client: &Client,
    handle: &tokio::runtime::Handle,
    reference: &Reference,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<ImportedImage, RegistryError> {
    let (host, repo) = split_name(&reference.name);
    let internal =
        |e: ImageError| RegistryError::new(RegistryErrorKind::Internal, &host, e.to_string());
    let staging = Staging::create(&store.tmp_dir(), "pull").map_err(internal)?;
    let limit = store.limits().max_manifest_bytes;
    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());

    let (top, top_type) = handle.block_on(fetch_manifest(client, &host, &repo, &wanted, limit))?;
    let top_digest = sha256(&top);
    if let Some(d) = &reference.digest {
        if *d != top_digest {
            return Err(RegistryError::new(
                RegistryErrorKind::Corrupt,
                &host,
                format!(
                    "manifest {d} does not match its digest: its content hashes to {top_digest}"
                ),
            ));
        }
    }
    let mut files: HashMap<String, Staged> = HashMap::new();
    let top_staged = stage_bytes(&staging, &top).map_err(internal)?;
    files.insert(blob_key(&top_digest), top_staged);

    let (manifest_type, manifest_digest, manifest_bytes, platform) = match top_type.as_str() {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
            let index: IndexDoc = serde_json::from_slice(&top).map_err(|e| {
                RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!("malformed image index: {e}"),
                )
            })?;
            if index.schema_version != 2 {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!(
                        "image index schemaVersion {} is not 2",
                        index.schema_version
                    ),
                ));
            }
            if let Some(mt) = &index.media_type {
                if *mt != top_type {
                    return Err(RegistryError::new(
                        RegistryErrorKind::Invalid,
                        &host,
                        format!("the registry says {top_type} but the document says {mt}"),
                    ));
                }
            }
            let chosen = select_platform(&index.manifests, "linux", host_arch())
                .map_err(|m| RegistryError::new(RegistryErrorKind::NoPlatform, &host, m))?
                .clone();
            if !is_sha256_digest(&chosen.digest) {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!("index entry has an invalid digest {:?}", chosen.digest),
                ));
            }
            if chosen.media_type != MEDIA_OCI_MANIFEST && chosen.media_type != MEDIA_DOCKER_MANIFEST
            {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!(
                        "the index entry for this platform is a {:?}, not an image manifest",
                        chosen.media_type.chars().take(100).collect::<String>()
                    ),
                ));
            }
            if chosen.size > limit {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!("manifest {} is larger than {limit} bytes", chosen.digest),
                ));
            }
            let (bytes, mt) =
                handle.block_on(fetch_manifest(client, &host, &repo, &chosen.digest, limit))?;
            let digest = sha256(&bytes);
            if digest != chosen.digest || bytes.len() as u64 != chosen.size {
                return Err(RegistryError::new(
                    RegistryErrorKind::Corrupt,
                    &host,
                    format!(
                        "manifest {} does not match its digest or size: {} bytes hashing to {digest}",
                        chosen.digest,
                        bytes.len()
                    ),
                ));
            }
            if mt != chosen.media_type {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &host,
                    format!(
                        "the index says {} but the registry serves {mt}",
                        chosen.media_type
                    ),
                ));
            }
            let staged = stage_bytes(&staging, &bytes).map_err(internal)?;
            files.insert(blob_key(&digest), staged);
            let p = chosen
                .platform
                .as_ref()
                .map(|p| format!("{}/{}", p.os, p.architecture));
            (mt, digest, bytes, p)
        }
        _ => (top_type.clone(), top_digest.clone(), top, None),
    };

    let manifest: ManifestDoc = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        RegistryError::new(
            RegistryErrorKind::Invalid,
            &host,
            format!("malformed manifest: {e}"),
        )
    })?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(RegistryError::new(
            RegistryErrorKind::Invalid,
            &host,
            format!(
                "the manifest lists {} layers (at most {MAX_LAYERS})",
                manifest.layers.len()
            ),
        ));
    }
    let mut sizes: HashMap<String, u64> = HashMap::new();
    sizes.insert(manifest.config.digest.clone(), manifest.config.size);
    let mut layers = Vec::new();
    for l in &manifest.layers {
        sizes.insert(l.digest.clone(), l.size);
        let cached = is_sha256_digest(&l.digest) && store_blob(store, &l.digest).is_some();
        layers.push(LayerProgress {
            digest: l.digest.clone(),
            size: l.size,
            cached,
        });
    }
    let total_bytes = layers.iter().map(|l| l.size).sum();
    let cached_bytes = layers.iter().filter(|l| l.cached).map(|l| l.size).sum();
    progress(PullEvent::Resolved {
        reference: reference.to_string(),
        manifest_digest: manifest_digest.clone(),
        platform,
        layers,
        total_bytes,
        cached_bytes,
    });

    // The import starts from an OCI layout's index.json: one entry, the chosen manifest.
    let index_json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_INDEX}","manifests":[{{"mediaType":"{manifest_type}","digest":"{manifest_digest}","size":{}}}]}}"#,
        manifest_bytes.len()
    );
    files.insert(
        "index.json".into(),
        stage_bytes(&staging, index_json.as_bytes()).map_err(internal)?,
    );
    let mut source = RegistrySource {
        store,
        client,
        handle,
        staging: &staging,
        host: host.clone(),
        repo,
        files,
        sizes,
        progress,
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        verifying_sent: false,
        failure: None,
    };
    let result = import::import(store, &staging, &mut source, Some(reference));
    if let Some(e) = source.failure.take() {
        return Err(e);
    }
    let mut images = result.map_err(|e| classify(&host, e))?;
    Ok(images.remove(0))
}

/// Maps an import error to a pull error: content that fails verification is the registry's
/// fault (it served it), the node's own failures are internal.
fn classify(host: &str, e: ImageError) -> RegistryError {
    let kind = match &e {
        ImageError::Io { .. } | ImageError::MissingLayer { .. } => RegistryErrorKind::Internal,
        ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::DiffIdMismatch { .. } => RegistryErrorKind::Corrupt,
        ImageError::NoMatchingPlatform(_) => RegistryErrorKind::NoPlatform,
        _ => RegistryErrorKind::Invalid,
    };
    RegistryError::new(kind, host, e.to_string())
}

fn blob_key(digest: &str) -> String {
    format!("blobs/sha256/{}", &digest["sha256:".len()..])
}

/// The store's copy of a blob, when it has one (verified when it was committed).
fn store_blob(store: &ImageStore, digest: &str) -> Option<Staged> {
    let path = store.blob_path(&digest["sha256:".len()..]);
    let meta = fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?;
    Some(Staged {
        path,
        digest: digest.to_string(),
        size: meta.len(),
    })
}

/// Picks the manifest for `os`/`arch` from an index's entries: an exact platform match (the
/// first, preferring entries without a variant for amd64 and `v8` for arm64); an index whose
/// only entry has no platform is taken as is.
pub(crate) fn select_platform<'a>(
    entries: &'a [IndexEntry],
    os: &str,
    arch: &str,
) -> Result<&'a IndexEntry, String> {
    let matching: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    let preferred_variant = match arch {
        "arm64" => Some("v8"),
        _ => None,
    };
    if let Some(best) = matching
        .iter()
        .find(|e| e.platform.as_ref().and_then(|p| p.variant.as_deref()) == preferred_variant)
        .or_else(|| matching.first())
    {
        return Ok(best);
    }
    if let [only] = entries {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let mut found: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    found.dedup();
    found.truncate(20);
    Err(format!(
        "the image has no manifest for {os}/{arch} (it has: {})",
        if found.is_empty() {
            "none".to_string()
        } else {
            found.join(", ")
        }
    ))
}

/// Fetches a manifest or index: bounded, its media type from Content-Type (or, when that is
/// generic, from the document's `mediaType`); anything else is refused.
async fn fetch_manifest(
    client: &Client,
    host: &str,
    repo: &str,
    reference: &str,
    limit: u64,
) -> Result<(Vec<u8>, String), RegistryError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let (resp, source) = client
        .get(host, repo, &path, Some(ACCEPT_MANIFESTS))
        .await?;
    let content_type = resp
        .header("content-type")
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let header_digest = resp.header("docker-content-digest").map(str::to_string);
    let bytes = resp.bytes(limit).await.map_err(|e| {
        RegistryError::new(
            RegistryErrorKind::Invalid,
            &source,
            format!("manifest {reference}: {e}"),
        )
    })?;
    let known = |t: &str| {
        [
            MEDIA_OCI_MANIFEST,
            MEDIA_OCI_INDEX,
            MEDIA_DOCKER_MANIFEST,
            MEDIA_DOCKER_LIST,
        ]
        .contains(&t)
    };
    let media_type = if known(&content_type) {
        content_type
    } else {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peek {
            #[serde(default)]
            media_type: Option<String>,
        }
        match serde_json::from_slice::<Peek>(&bytes).ok().and_then(|p| p.media_type) {
            Some(t) if known(&t) && matches!(content_type.as_str(), "" | "application/json" | "application/octet-stream") => t,
            _ => {
                return Err(RegistryError::new(
                    RegistryErrorKind::Invalid,
                    &source,
                    format!(
                        "manifest {reference}: unsupported media type {:?} (schema1 and non-image artifacts are not pulled)",
                        content_type.chars().take(100).collect::<String>()
                    ),
                ))
            }
        }
    };
    let digest = sha256(&bytes);
    if let Some(h) = header_digest {
        if is_sha256_digest(&h) && h != digest {
            return Err(RegistryError::new(
                RegistryErrorKind::Corrupt,
                &source,
                format!("manifest {reference}: the registry says {h} but the content hashes to {digest}"),
            ));
        }
    }
    Ok((bytes, media_type))
}

/// Blobs for the import, fetched from the registry on demand (or taken from the store).
struct RegistrySource<'a> {
    store: &'a ImageStore,
    client: &'a Client,
    handle: &'a tokio::runtime::Handle,
    staging: &'a Staging,
    host: String,
    repo: String,
    files: HashMap<String, Staged>,
    /// Blobs the manifest names, with their sizes: nothing else is fetched.
    sizes: HashMap<String, u64>,
    progress: &'a (dyn Fn(PullEvent) + Send + Sync),
    layers: Vec<String>,
    verifying_sent: bool,
    /// The registry's failure, kept whole (the import only sees an I/O error).
    failure: Option<RegistryError>,
}

impl Source for RegistrySource<'_> {
    fn get(&mut self, path: &str) -> Result<Option<Staged>, ImageError> {
        if let Some(s) = self.files.get(path) {
            return Ok(Some(s.clone()));
        }
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            // oci-layout, manifest.json: a registry has none.
            return Ok(None);
        };
        let digest = format!("sha256:{hex}");
        let Some(&size) = self.sizes.get(&digest) else {
            return Ok(None);
        };
        if !is_sha256_digest(&digest) {
            return Err(ImageError::InvalidDigest(digest));
        }
        let is_layer = self.layers.contains(&digest);
        if let Some(staged) = store_blob(self.store, &digest) {
            self.files.insert(path.to_string(), staged.clone());
            self.after(&digest);
            return Ok(Some(staged));
        }
        let staged = match self
            .handle
            .block_on(self.fetch_blob(&digest, size, is_layer))
        {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                self.failure = Some(e);
                return Err(ImageError::ArchiveRead(std::io::Error::other(message)));
            }
        };
        self.files.insert(path.to_string(), staged.clone());
        self.after(&digest);
        Ok(Some(staged))
    }
}

impl RegistrySource<'_> {
    /// After the last layer: tell the display the verification starts.
    fn after(&mut self, digest: &str) {
        if !self.verifying_sent && self.layers.last().map(String::as_str) == Some(digest) {
            self.verifying_sent = true;
            (self.progress)(PullEvent::Verifying);
        }
    }

    async fn fetch_blob(
        &self,
        digest: &str,
        size: u64,
        is_layer: bool,
    ) -> Result<Staged, RegistryError> {
        let host = self.host.as_str();
        let limits = self.store.limits();
        if size > limits.max_blob_bytes {
            return Err(RegistryError::new(
                RegistryErrorKind::Invalid,
                host,
                format!(
                    "blob {digest} is {size} bytes, over the limit of {}",
                    limits.max_blob_bytes
                ),
            ));
        }
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let (mut resp, source) = self.client.get(host, &self.repo, &path, None).await?;
        let corrupt = |m: String| RegistryError::new(RegistryErrorKind::Corrupt, &source, m);
        if let Some(len) = resp.content_length() {
            if len != size {
                return Err(corrupt(format!(
                    "blob {digest} is {len} bytes but its descriptor says {size}"
                )));
            }
        }
        let file_path = self.staging.new_path("blob-");
        let internal = |e: std::io::Error| {
            RegistryError::new(
                RegistryErrorKind::Internal,
                host,
                format!("cannot write {}: {e}", file_path.display()),
            )
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file_path)
            .map_err(internal)?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut last = Instant::now();
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                RegistryError::new(
                    RegistryErrorKind::Unreachable,
                    &source,
                    format!("blob {digest}: {e}"),
                )
            })?;
            let Some(chunk) = chunk else { break };
            written += chunk.len() as u64;
            if written > size {
                return Err(corrupt(format!(
                    "blob {digest} is longer than its descriptor's {size} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(internal)?;
            if is_layer && last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                (self.progress)(PullEvent::Layer {
                    digest: digest.to_string(),
                    bytes: written,
                    size,
                    done: false,
                });
            }
        }
        if written != size {
            return Err(corrupt(format!(
                "blob {digest} ended after {written} of {size} bytes"
            )));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(corrupt(format!(
                "blob {digest} does not match its digest: its content hashes to {actual}"
            )));
        }
        if is_layer {
            (self.progress)(PullEvent::Layer {
                digest: digest.to_string(),
                bytes: written,
                size,
                done: true,
            });
        }
        Ok(Staged {
            path: file_path,
            digest: actual,
            size,
        })
    }
}
