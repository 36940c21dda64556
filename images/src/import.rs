//! Turning a source's files into verified images: OCI layouts and docker archives are both read
//! into [`Plan`]s, every layer is checked against its diff id (unpacking the new ones into
//! staging), and only then is anything moved into the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::fsutil::open_dir;
use crate::layer::{is_layer_media_type, process_layer, Compression};
use crate::reference::{is_sha256_digest, is_sha256_hex};
use crate::source::{archive_key, read_small, stage_bytes, Source, Staged, Staging};
use crate::{ImageError, ImageStore, ImportedImage, Layer, Reference, RuntimeConfig};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Nesting of indexes followed (index.json → image index → manifest).
const MAX_INDEX_DEPTH: usize = 2;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayoutJson {
    image_layout_version: String,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    config: Option<ContainerConfigJson>,
    rootfs: RootFsJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfigJson {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    healthcheck: Option<crate::ImageHealthcheck>,
}

#[derive(Deserialize)]
struct RootFsJson {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

struct PlanLayer {
    blob: Staged,
    media_type: String,
    diff_id: String,
}

/// One image, fully verified except for its layers' content.
struct Plan {
    manifest: Staged,
    config: Staged,
    runtime: RuntimeConfig,
    layers: Vec<PlanLayer>,
    names: Vec<String>,
}

struct Importer<'a> {
    store: &'a ImageStore,
    staging: &'a Staging,
    source: &'a mut dyn Source,
    plans: Vec<Plan>,
    /// Index entries skipped for another platform (to explain an empty result).
    skipped_platforms: Vec<String>,
}

pub(crate) fn import(
    store: &ImageStore,
    staging: &Staging,
    source: &mut dyn Source,
    name: Option<&Reference>,
) -> Result<Vec<ImportedImage>, ImageError> {
    let mut importer = Importer {
        store,
        staging,
        source,
        plans: Vec::new(),
        skipped_platforms: Vec::new(),
    };
    if let Some(index) = importer.source.get("index.json")? {
        importer.oci(index)?;
    } else if let Some(manifest) = importer.source.get("manifest.json")? {
        importer.docker(manifest)?;
    } else {
        return Err(ImageError::InvalidArchive(
            "neither an OCI image layout (no index.json) nor a docker archive (no manifest.json)"
                .into(),
        ));
    }
    let mut plans = std::mem::take(&mut importer.plans);
    if plans.is_empty() {
        return Err(match importer.skipped_platforms.first() {
            Some(_) => ImageError::NoMatchingPlatform(format!(
                "linux/{} (found {})",
                host_arch(),
                importer.skipped_platforms.join(", ")
            )),
            None => ImageError::InvalidArchive("the archive holds no image".into()),
        });
    }
    if let Some(name) = name {
        if plans.len() != 1 {
            return Err(ImageError::InvalidArchive(format!(
                "a name was given but the archive holds {} images",
                plans.len()
            )));
        }
        plans[0].names = vec![name.to_string()];
    }
    let sizes = verify_layers(store, staging, &plans)?;
    commit(store, staging, &plans, &sizes)?;
    for plan in &plans {
        tracing::info!(id = %plan.config.digest, names = ?plan.names, "imported image");
    }
    Ok(plans
        .into_iter()
        .map(|plan| ImportedImage {
            id: plan.config.digest.clone(),
            manifest_digest: plan.manifest.digest.clone(),
            size: plan
                .layers
                .iter()
                .map(|l| sizes.get(&l.diff_id).map_or(0, |s| s.bytes))
                .sum(),
            layers: plan
                .layers
                .into_iter()
                .map(|l| Layer {
                    digest: l.blob.digest,
                    diff_id: l.diff_id,
                    media_type: l.media_type,
                    size: l.blob.size,
                })
                .collect(),
            names: plan.names,
            config: plan.runtime,
        })
        .collect())
}

impl Importer<'_> {
    fn limit(&self) -> u64 {
        self.store.limits().max_manifest_bytes
    }

    fn oci(&mut self, index_file: Staged) -> Result<(), ImageError> {
        if let Some(layout) = self.source.get("oci-layout")? {
            let layout: OciLayoutJson = parse_json(&layout, self.limit(), "oci-layout")?;
            if !layout.image_layout_version.starts_with("1.") {
                return Err(ImageError::invalid(
                    "oci-layout",
                    format!(
                        "unsupported imageLayoutVersion {:?}",
                        layout.image_layout_version
                    ),
                ));
            }
        }
        // Newer docker writes both index.json and manifest.json; the latter's RepoTags name images.
        let mut repo_tags: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(manifest) = self.source.get("manifest.json")? {
            let entries: Vec<DockerManifestEntry> =
                parse_json(&manifest, self.limit(), "manifest.json")?;
            for entry in entries {
                let key = archive_key(entry.config.as_bytes())?;
                if let Some(hex) = key.strip_prefix("blobs/sha256/") {
                    let names = parse_repo_tags(entry.repo_tags.as_deref().unwrap_or_default())?;
                    repo_tags
                        .entry(format!("sha256:{hex}"))
                        .or_default()
                        .extend(names);
                }
            }
        }
        let index: IndexJson = parse_json(&index_file, self.limit(), "index.json")?;
        check_index(&index, "index.json")?;
        let has_repo_tags = !repo_tags.is_empty();
        for desc in &index.manifests {
            let names = names_from_annotations(desc, has_repo_tags)?;
            self.descriptor(desc, names, 0)?;
        }
        for plan in &mut self.plans {
            if let Some(tags) = repo_tags.get(&plan.config.digest) {
                plan.names.extend(tags.iter().cloned());
            }
            dedup(&mut plan.names);
        }
        Ok(())
    }

    fn descriptor(
        &mut self,
        desc: &Descriptor,
        names: Vec<String>,
        depth: usize,
    ) -> Result<(), ImageError> {
        if let Some(platform) = &desc.platform {
            if platform.os != "linux" || platform.architecture != host_arch() {
                self.skipped_platforms
                    .push(format!("{}/{}", platform.os, platform.architecture));
                return Ok(());
            }
        }
        match desc.media_type.as_str() {
            MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => {
                if let Some(plan) = self
                    .plans
                    .iter_mut()
                    .find(|p| p.manifest.digest == desc.digest)
                {
                    plan.names.extend(names);
                    return Ok(());
                }
                let plan = self.manifest(desc, names)?;
                self.plans.push(plan);
                Ok(())
            }
            MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ImageError::invalid(
                        "image index",
                        "indexes nested too deeply",
                    ));
                }
                let blob = self.small_blob(desc, "image index")?;
                let index: IndexJson = parse_json(&blob, self.limit(), "image index")?;
                check_index(&index, "image index")?;
                for child in &index.manifests {
                    let mut child_names = names.clone();
                    child_names.extend(names_from_annotations(child, false)?);
                    self.descriptor(child, child_names, depth + 1)?;
                }
                Ok(())
            }
            other => Err(ImageError::UnsupportedMediaType(other.to_string())),
        }
    }

    fn manifest(&mut self, desc: &Descriptor, names: Vec<String>) -> Result<Plan, ImageError> {
        let manifest_blob = self.small_blob(desc, "manifest")?;
        let manifest: ManifestJson = parse_json(&manifest_blob, self.limit(), "manifest")?;
        if manifest.schema_version != 2 {
            return Err(ImageError::invalid(
                "manifest",
                format!("schemaVersion {} is not 2", manifest.schema_version),
            ));
        }
        if let Some(mt) = &manifest.media_type {
            if mt != MEDIA_OCI_MANIFEST && mt != MEDIA_DOCKER_MANIFEST {
                return Err(ImageError::UnsupportedMediaType(mt.clone()));
            }
        }
        let config_type = manifest.config.media_type.as_str();
        if config_type != MEDIA_OCI_CONFIG && config_type != MEDIA_DOCKER_CONFIG {
            return Err(ImageError::UnsupportedMediaType(config_type.to_string()));
        }
        for layer in &manifest.layers {
            if !is_layer_media_type(&layer.media_type) {
                return Err(ImageError::UnsupportedMediaType(layer.media_type.clone()));
            }
        }
        let config_blob = self.small_blob(&manifest.config, "config")?;
        let (runtime, diff_ids) = parse_config(&config_blob, self.limit(), manifest.layers.len())?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let blob = self.blob(&desc.digest, Some(desc.size), "layer")?;
            layers.push(PlanLayer {
                blob,
                media_type: desc.media_type.clone(),
                diff_id,
            });
        }
        let mut names = names;
        dedup(&mut names);
        Ok(Plan {
            manifest: manifest_blob,
            config: config_blob,
            runtime,
            layers,
            names,
        })
    }

    fn docker(&mut self, manifest_file: Staged) -> Result<(), ImageError> {
        let entries: Vec<DockerManifestEntry> =
            parse_json(&manifest_file, self.limit(), "manifest.json")?;
        for entry in entries {
            let config = self.docker_file(&entry.config, "config")?;
            let (runtime, diff_ids) = parse_config(&config, self.limit(), entry.layers.len())?;
            let mut layers = Vec::with_capacity(entry.layers.len());
            for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
                let blob = self.docker_file(path, "layer")?;
                let compression = Compression::of_file(&blob.path)
                    .map_err(|e| ImageError::io("read", &blob.path, e))?;
                layers.push(PlanLayer {
                    blob,
                    media_type: compression.oci_media_type().to_string(),
                    diff_id,
                });
            }
            let manifest_json = synthesized_manifest(&config, &layers);
            let manifest = stage_bytes(self.staging, manifest_json.as_bytes())?;
            let mut names = parse_repo_tags(entry.repo_tags.as_deref().unwrap_or_default())?;
            dedup(&mut names);
            if let Some(plan) = self
                .plans
                .iter_mut()
                .find(|p| p.manifest.digest == manifest.digest)
            {
                plan.names.extend(names);
                dedup(&mut plan.names);
                continue;
            }
            self.plans.push(Plan {
                manifest,
                config,
                runtime,
                layers,
                names,
            });
        }
        Ok(())
    }

    /// A file a docker archive's manifest.json names; when its name is a digest
    /// (`<hex>.json`, `blobs/sha256/<hex>`) the content must match it.
    fn docker_file(&mut self, path: &str, what: &'static str) -> Result<Staged, ImageError> {
        let key = archive_key(path.as_bytes())?;
        let staged = self
            .source
            .get(&key)?
            .ok_or_else(|| ImageError::MissingFile {
                what,
                path: key.clone(),
            })?;
        let named_hex = key
            .strip_prefix("blobs/sha256/")
            .or_else(|| key.strip_suffix(".json"))
            .filter(|hex| is_sha256_hex(hex));
        if let Some(hex) = named_hex {
            let expected = format!("sha256:{hex}");
            if staged.digest != expected {
                return Err(ImageError::DigestMismatch {
                    digest: expected,
                    actual: staged.digest,
                });
            }
        }
        Ok(staged)
    }

    fn small_blob(&mut self, desc: &Descriptor, what: &'static str) -> Result<Staged, ImageError> {
        if desc.size > self.limit() {
            return Err(ImageError::TooLarge {
                what: format!("{what} {}", desc.digest),
                limit: self.limit(),
            });
        }
        self.blob(&desc.digest, Some(desc.size), what)
    }

    /// The verified blob `digest` of `size` bytes.
    fn blob(
        &mut self,
        digest: &str,
        size: Option<u64>,
        what: &'static str,
    ) -> Result<Staged, ImageError> {
        if !is_sha256_digest(digest) {
            return Err(ImageError::InvalidDigest(digest.to_string()));
        }
        let hex = &digest["sha256:".len()..];
        let staged = self
            .source
            .get(&format!("blobs/sha256/{hex}"))?
            .ok_or_else(|| ImageError::MissingBlob {
                what,
                digest: digest.to_string(),
            })?;
        if let Some(size) = size {
            if staged.size != size {
                return Err(ImageError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: staged.size,
                });
            }
        }
        if staged.digest != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual: staged.digest,
            });
        }
        Ok(staged)
    }
}

fn check_index(index: &IndexJson, what: &str) -> Result<(), ImageError> {
    if index.schema_version != 2 {
        return Err(ImageError::invalid(
            what,
            format!("schemaVersion {} is not 2", index.schema_version),
        ));
    }
    if let Some(mt) = &index.media_type {
        if mt != MEDIA_OCI_INDEX && mt != MEDIA_DOCKER_LIST {
            return Err(ImageError::UnsupportedMediaType(mt.clone()));
        }
    }
    Ok(())
}

fn parse_json<T: DeserializeOwned>(
    staged: &Staged,
    limit: u64,
    what: &str,
) -> Result<T, ImageError> {
    let data = read_small(staged, limit, what)?;
    serde_json::from_slice(&data).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

/// Parses an image config; checks its rootfs against the manifest's layer count.
fn parse_config(
    staged: &Staged,
    limit: u64,
    layer_count: usize,
) -> Result<(RuntimeConfig, Vec<String>), ImageError> {
    let config: ConfigJson = parse_json(staged, limit, "image config")?;
    if config.rootfs.kind != "layers" {
        return Err(ImageError::invalid(
            "image config",
            format!("rootfs type {:?} is not \"layers\"", config.rootfs.kind),
        ));
    }
    if config.rootfs.diff_ids.len() != layer_count {
        return Err(ImageError::invalid(
            "image config",
            format!(
                "rootfs lists {} diff ids for {} layers",
                config.rootfs.diff_ids.len(),
                layer_count
            ),
        ));
    }
    if let Some(bad) = config.rootfs.diff_ids.iter().find(|d| !is_sha256_digest(d)) {
        return Err(ImageError::InvalidDigest(bad.clone()));
    }
    let c = config.config.unwrap_or_default();
    let runtime = RuntimeConfig {
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        healthcheck: c.healthcheck.filter(|h| !h.test.is_empty()),
    };
    Ok((runtime, config.rootfs.diff_ids))
}

fn names_from_annotations(
    desc: &Descriptor,
    has_repo_tags: bool,
) -> Result<Vec<String>, ImageError> {
    let Some(annotations) = &desc.annotations else {
        return Ok(Vec::new());
    };
    if let Some(full) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return Ok(vec![Reference::parse(full)?.to_string()]);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        // Docker writes a bare tag here and the full name in manifest.json.
        Some(r) if has_repo_tags && !r.contains([':', '/', '@']) => Ok(Vec::new()),
        Some(r) => Ok(vec![Reference::parse(r)?.to_string()]),
        None => Ok(Vec::new()),
    }
}

fn parse_repo_tags(tags: &[String]) -> Result<Vec<String>, ImageError> {
    tags.iter()
        .filter(|t| t.as_str() != "<none>:<none>")
        .map(|t| Reference::parse(t).map(|r| r.to_string()))
        .collect()
}

fn dedup(names: &mut Vec<String>) {
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// The OCI manifest recorded for a docker-archive image. The byte layout is fixed (tests and
/// tests/common/image_builder.rs compute the same digest).
fn synthesized_manifest(config: &Staged, layers: &[PlanLayer]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
                l.media_type, l.blob.digest, l.blob.size
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_MANIFEST}","config":{{"mediaType":"{MEDIA_OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        config.digest,
        config.size,
        layers.join(",")
    )
}

/// The OCI architecture name of this build.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

struct LayerState {
    bytes: u64,
    /// Unpacked into staging by this import, to be renamed into the store.
    unpacked: Option<PathBuf>,
}

/// Checks every layer's diff id; unpacks layers the store does not have yet into staging.
fn verify_layers(
    store: &ImageStore,
    staging: &Staging,
    plans: &[Plan],
) -> Result<HashMap<String, LayerState>, ImageError> {
    let max = store.limits().max_unpacked_layer_bytes;
    let mut states: HashMap<String, LayerState> = HashMap::new();
    // Blob digest → diff id it was found to have.
    let mut checked: HashMap<String, String> = HashMap::new();
    for layer in plans.iter().flat_map(|p| &p.layers) {
        let actual = match checked.get(&layer.blob.digest) {
            Some(actual) => actual.clone(),
            None => {
                let hex = &layer.diff_id["sha256:".len()..];
                let present = states.contains_key(&layer.diff_id)
                    || fs::symlink_metadata(store.layer_path(hex)).is_ok_and(|m| m.is_dir());
                let dest = if present {
                    None
                } else {
                    let dir = staging.new_path("layer-");
                    fs::create_dir(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
                    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        .map_err(|e| ImageError::io("set mode of", &dir, e))?;
                    Some(dir)
                };
                let outcome =
                    process_layer(&layer.blob.path, &layer.blob.digest, dest.as_deref(), max)?;
                if outcome.diff_id == layer.diff_id && !states.contains_key(&layer.diff_id) {
                    states.insert(
                        layer.diff_id.clone(),
                        LayerState {
                            bytes: outcome.unpacked_bytes,
                            unpacked: dest,
                        },
                    );
                }
                checked.insert(layer.blob.digest.clone(), outcome.diff_id.clone());
                outcome.diff_id
            }
        };
        if actual != layer.diff_id {
            return Err(ImageError::DiffIdMismatch {
                layer: layer.blob.digest.clone(),
                expected: layer.diff_id.clone(),
                actual,
            });
        }
    }
    Ok(states)
}

/// Moves verified blobs and unpacked layers into the store.
fn commit(
    store: &ImageStore,
    staging: &Staging,
    plans: &[Plan],
    layers: &HashMap<String, LayerState>,
) -> Result<(), ImageError> {
    // One flush of the staging file system makes every staged file and tree durable before any
    // of them becomes visible under its final name.
    let staging_fd =
        open_dir(staging.dir()).map_err(|e| ImageError::io("open", staging.dir(), e.into()))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&staging_fd))
        .map_err(|e| ImageError::io("sync", staging.dir(), e.into()))?;

    let mut moved = HashSet::new();
    let blobs = plans.iter().flat_map(|p| {
        [&p.manifest, &p.config]
            .into_iter()
            .chain(p.layers.iter().map(|l| &l.blob))
    });
    for blob in blobs {
        if !moved.insert(blob.digest.clone()) {
            continue;
        }
        let dest = store.blob_path(&blob.digest["sha256:".len()..]);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        fs::rename(&blob.path, &dest).map_err(|e| ImageError::io("move blob into", &dest, e))?;
    }
    for (diff_id, state) in layers {
        let Some(dir) = &state.unpacked else { continue };
        let dest = store.layer_path(&diff_id["sha256:".len()..]);
        match fs::rename(dir, &dest) {
            Ok(()) => {}
            // Another import committed the same layer meanwhile: keep theirs.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
            Err(e) => return Err(ImageError::io("move layer into", &dest, e)),
        }
    }
    for sub in ["blobs/sha256", "layers/sha256"] {
        let dir = store.root().join(sub);
        fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io("sync", &dir, e))?;
    }
    Ok(())
}
