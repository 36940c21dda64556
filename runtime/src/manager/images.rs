//! Images: imports, registry pulls (shared when concurrent), credentials, removal and prune.
//! Imports and pulls hold the gc lock shared until the image row exists; garbage collection holds
//! it exclusively, so it never removes what an import is about to record.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use inarray_images::{
    Credentials, ImageError, ImportedImage, PullEvent, Reference, RegistryError, RegistryErrorKind,
    RegistrySettings,
};
use inarray_store::{ImageRow, NewImage};
use tokio::sync::{broadcast, mpsc, watch};

use super::{internal, Manager, ManagerError, Result};
use crate::config::{InvalidField, PullPolicy};
use crate::events::{EventType, LifecycleEvent};

/// Removes a pull from the in-flight map when dropped.
struct Unregister {
    manager: Manager,
    key: String,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Ok(mut pulls) = self.manager.inner.pulls.lock() {
            pulls.remove(&self.key);
        }
    }
}

pub(super) struct SharedPull {
    events: broadcast::Sender<PullEvent>,
    done: watch::Receiver<Option<Result<ImageRow, RegistryError>>>,
}

/// What [`Manager::prune_images`] removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    /// The images removed.
    pub images: Vec<PrunedImage>,
    pub blobs_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PrunedImage {
    pub id: String,
    pub names: Vec<String>,
}

/// A registry name as references spell it (`host[:port]`, `docker.io`).
fn validate_registry(registry: &str) -> Result<()> {
    let ok = Reference::parse(&format!("{registry}/x"))
        .ok()
        .is_some_and(|r| inarray_images::registry::split_name(&r.name).0 == registry);
    if ok {
        Ok(())
    } else {
        Err(ManagerError::Invalid(InvalidField {
            field: "registry".into(),
            reason: format!(
                "{registry:?} is not a registry host[:port] (e.g. registry.example:5000)"
            ),
        }))
    }
}

/// How much of an archive after its end marker an import still reads (tar record padding).
const TRAILING_BYTES: u64 = 1 << 20;

impl Manager {
    /// Imports an image archive read from `reader` (runs on a blocking thread).
    pub async fn import_image<R: Read + Send + 'static>(
        &self,
        reader: R,
        name: Option<String>,
    ) -> Result<Vec<ImageRow>> {
        let reference = name.as_deref().map(Reference::parse).transpose()?;
        let images = self.inner.images.clone();
        let _shared = self.inner.gc_lock.read().await;
        let imported = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let result = images.import_archive(&mut reader, reference.as_ref());
            // A tar ends with padding after its end marker: read it, so the client is not cut
            // off (EPIPE) while it still sends the last bytes of a successful upload.
            if result.is_ok() {
                let _ = std::io::copy(&mut reader.take(TRAILING_BYTES), &mut std::io::sink());
            }
            result
        })
        .await
        .map_err(|e| internal("import task", e))??;
        let mut out = Vec::new();
        for img in imported {
            let row = self.record_image(&img).await?;
            self.emit(image_event(EventType::ImageImport, &row)).await;
            out.push(row);
        }
        Ok(out)
    }

    /// Records an image the store committed; the caller holds `gc_lock` shared.
    async fn record_image(&self, img: &ImportedImage) -> Result<ImageRow> {
        self.inner
            .store
            .put_image(NewImage {
                id: &img.id,
                manifest_digest: &img.manifest_digest,
                names: &img.names,
                config: &img.config,
                layers: &img.layers,
                size: img.size,
            })
            .await?;
        self.inner
            .store
            .image_by_id(&img.id)
            .await?
            .ok_or_else(|| internal("image", "vanished"))
    }

    /// The registries' settings (from the config file): insecure hosts, mirrors, credentials.
    /// Credentials set through the API (in SQL) are applied on top.
    pub async fn configure_registries(
        &self,
        settings: HashMap<String, RegistrySettings>,
        credentials: HashMap<String, Credentials>,
    ) -> Result<()> {
        self.inner.puller.set_settings(settings);
        for (host, c) in &credentials {
            self.inner.puller.set_credentials(host, Some(c.clone()));
        }
        *self.inner.config_credentials.lock().expect("credentials") = credentials;
        for row in self.inner.store.list_registry_credentials().await? {
            self.inner.puller.set_credentials(
                &row.registry,
                Some(Credentials {
                    username: row.username,
                    password: row.password,
                }),
            );
        }
        Ok(())
    }

    /// Stores credentials for a registry (`host[:port]`) and uses them from now on.
    pub async fn set_registry_credentials(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<()> {
        validate_registry(registry)?;
        let bad = |field: &str, reason: &str| {
            ManagerError::Invalid(InvalidField {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if username.is_empty()
            || username.len() > 256
            || username.contains(':')
            || username.chars().any(char::is_control)
        {
            return Err(bad(
                "username",
                "1-256 characters, no ':' or control characters",
            ));
        }
        if password.is_empty()
            || password.len() > 16 * 1024
            || password.chars().any(char::is_control)
        {
            return Err(bad("password", "1-16384 characters, no control characters"));
        }
        self.inner
            .store
            .put_registry_credentials(registry, username, password)
            .await?;
        self.inner.puller.set_credentials(
            registry,
            Some(Credentials {
                username: username.into(),
                password: password.into(),
            }),
        );
        Ok(())
    }

    /// Forgets the API's credentials for a registry (the config file's, if any, apply again).
    pub async fn delete_registry_credentials(&self, registry: &str) -> Result<()> {
        if !self
            .inner
            .store
            .delete_registry_credentials(registry)
            .await?
        {
            return Err(ManagerError::NotFound {
                kind: "registry credentials",
                key: registry.into(),
            });
        }
        let fallback = self
            .inner
            .config_credentials
            .lock()
            .expect("credentials")
            .get(registry)
            .cloned();
        self.inner.puller.set_credentials(registry, fallback);
        Ok(())
    }

    /// Registries with credentials: (host, username, set through the API rather than the
    /// config file). Passwords are never returned.
    pub async fn registry_credentials(&self) -> Result<Vec<(String, String, bool)>> {
        let mut out: Vec<(String, String, bool)> = self
            .inner
            .config_credentials
            .lock()
            .expect("credentials")
            .iter()
            .map(|(h, c)| (h.clone(), c.username.clone(), false))
            .collect();
        for row in self.inner.store.list_registry_credentials().await? {
            out.retain(|(h, _, _)| *h != row.registry);
            out.push((row.registry, row.username, true));
        }
        out.sort();
        Ok(out)
    }

    /// Pulls `reference` from its registry and records it. A pull of a reference already being
    /// pulled joins it (one fetch, one result, progress from the moment of joining). `progress`
    /// receives each step; the pull goes on if the receiver goes away.
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: Option<mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<ImageRow> {
        let r = Reference::parse(reference)?;
        let key = r.to_string();
        let (mut events, mut done) = {
            let mut pulls = self.inner.pulls.lock().expect("pulls");
            match pulls.get(&key) {
                Some(shared) => (shared.events.subscribe(), shared.done.clone()),
                None => {
                    let (etx, erx) = broadcast::channel(1024);
                    let (dtx, drx) = watch::channel(None);
                    pulls.insert(
                        key.clone(),
                        Arc::new(SharedPull {
                            events: etx.clone(),
                            done: drx.clone(),
                        }),
                    );
                    let this = self.clone();
                    tokio::spawn(async move {
                        // Unregisters the pull even if it panics (joiners then see the end).
                        let unregister = Unregister {
                            manager: this.clone(),
                            key,
                        };
                        let result = this.pull_and_record(&r, etx).await;
                        drop(unregister);
                        let _ = dtx.send(Some(result));
                    });
                    (erx, drx)
                }
            }
        };
        let forward = |e: PullEvent| {
            if let Some(p) = &progress {
                let _ = p.send(e);
            }
        };
        loop {
            if done.borrow().is_some() {
                break;
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(e) => forward(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = done.wait_for(Option::is_some).await;
                        break;
                    }
                },
                changed = done.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        while let Ok(e) = events.try_recv() {
            forward(e);
        }
        let result = done.borrow().clone();
        match result {
            Some(Ok(row)) => Ok(row),
            Some(Err(e)) => Err(ManagerError::Image(ImageError::Registry(e))),
            None => Err(internal("pull", "the pull task ended without a result")),
        }
    }

    async fn pull_and_record(
        &self,
        r: &Reference,
        events: broadcast::Sender<PullEvent>,
    ) -> std::result::Result<ImageRow, RegistryError> {
        let _shared = self.inner.gc_lock.read().await;
        let started = Instant::now();
        let img = self
            .inner
            .puller
            .pull(
                r,
                Arc::new(move |e| {
                    let _ = events.send(e);
                }),
            )
            .await?;
        let row = self.record_image(&img).await.map_err(|e| RegistryError {
            kind: RegistryErrorKind::Internal,
            registry: String::new(),
            message: format!("cannot record the pulled image: {e}"),
        })?;
        tracing::info!(reference = %r, id = %img.id, ms = started.elapsed().as_millis() as u64, "pulled image");
        self.emit(
            LifecycleEvent::new(EventType::ImagePull, &row.id, r.to_string())
                .with("names", row.names.clone()),
        )
        .await;
        Ok(row)
    }

    /// Pulls the image a container (or a job's container) names, as `policy` says.
    pub(super) async fn pull_for(&self, image: &str, policy: PullPolicy) -> Result<()> {
        match policy {
            PullPolicy::Never => {}
            PullPolicy::Always => {
                self.pull_image(image, None).await?;
            }
            PullPolicy::Missing => match self.find_image(image).await {
                Ok(_) => {}
                // An image id (or id prefix) is never a registry reference.
                Err(ManagerError::NotFound { .. })
                    if !image.starts_with("sha256:") && Reference::parse(image).is_ok() =>
                {
                    self.pull_image(image, None).await?;
                }
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }

    /// The gc lock, exclusively. Never queued behind a long pull: a waiting writer would hold
    /// up every new reader (container creates), so it is tried for up to 10 s, then refused.
    async fn gc_exclusive(&self) -> Result<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(guard) = self.inner.gc_lock.try_write() {
                return Ok(guard);
            }
            if Instant::now() >= deadline {
                return Err(ManagerError::Conflict(
                    "an image import or pull is in progress; try again when it is over".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The image is in the store, pulled now if `policy` allows and it is missing (for checks
    /// before a job is saved: `always` pulls only when missing here, and again at each run).
    pub async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<()> {
        let policy = match policy {
            PullPolicy::Always => PullPolicy::Missing,
            p => p,
        };
        self.pull_for(image, policy).await?;
        self.find_image(image).await.map(|_| ())
    }

    /// Removes every image no container (in any state) and no job references, then the blobs
    /// and layer directories nothing references any more. Imports and pulls wait meanwhile.
    pub async fn prune_images(&self) -> Result<PruneReport> {
        self.prune_images_older_than(Duration::ZERO).await
    }

    /// [`Self::prune_images`], keeping images stored less than `min_age` ago: the periodic prune
    /// passes its interval, so that an image imported or pulled for a container or job about to
    /// be made is not removed before anything names it.
    pub async fn prune_images_older_than(&self, min_age: Duration) -> Result<PruneReport> {
        self.prune(min_age, false).await
    }

    /// [`Self::prune_images`] of the images without a name only (Docker's "dangling" ones: a
    /// tag moved to another image, or an import without a name).
    pub async fn prune_dangling_images(&self) -> Result<PruneReport> {
        self.prune(Duration::ZERO, true).await
    }

    async fn prune(&self, min_age: Duration, dangling_only: bool) -> Result<PruneReport> {
        let cutoff = chrono::Duration::from_std(min_age)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let _exclusive = self.gc_exclusive().await?;
        let mut in_use: HashSet<String> = self
            .inner
            .store
            .list_containers(true)
            .await?
            .into_iter()
            .map(|c| c.image_id)
            .collect();
        for job in self.inner.store.list_jobs().await? {
            let spec: serde_json::Value = serde_json::from_str(&job.spec).unwrap_or_default();
            if let Some(image) = spec.pointer("/container/image").and_then(|v| v.as_str()) {
                if let Ok(img) = self.find_image(image).await {
                    in_use.insert(img.id);
                }
            }
        }
        let mut report = PruneReport::default();
        for img in self.inner.store.list_images().await? {
            if in_use.contains(&img.id)
                || img.created_at > cutoff
                || (dangling_only && !img.names.is_empty())
            {
                continue;
            }
            self.inner.store.delete_image(&img.id).await?;
            self.emit(image_event(EventType::ImageDelete, &img).with("reason", "prune"))
                .await;
            report.images.push(PrunedImage {
                id: img.id,
                names: img.names,
            });
        }
        let gc = self.gc_locked().await?;
        report.blobs_removed = gc.blobs_removed;
        report.layers_removed = gc.layers_removed;
        report.bytes_freed = gc.bytes_freed;
        tracing::info!(
            images = report.images.len(),
            bytes = report.bytes_freed,
            "pruned images"
        );
        Ok(report)
    }

    /// Every image, newest first as the store lists them.
    pub async fn list_images(&self) -> Result<Vec<ImageRow>> {
        Ok(self.inner.store.list_images().await?)
    }

    /// Finds an image by reference ("busybox" means "busybox:latest") or id.
    pub async fn find_image(&self, key: &str) -> Result<ImageRow> {
        if let Some(img) = self.inner.store.find_image(key).await? {
            return Ok(img);
        }
        if let Ok(r) = Reference::parse(key) {
            if let Some(img) = self.inner.store.find_image(&r.to_string()).await? {
                return Ok(img);
            }
        }
        Err(ManagerError::NotFound {
            kind: "image",
            key: key.to_owned(),
        })
    }

    /// Gives the image `key` (a name or id) the name `name` too, moving the name from another
    /// image if it had it (`docker tag`). Returns the image with its names.
    pub async fn tag_image(&self, key: &str, name: &str) -> Result<ImageRow> {
        let reference = Reference::parse(name)?;
        if reference.digest.is_some() {
            return Err(ManagerError::Invalid(InvalidField {
                field: "name".into(),
                reason: format!("{name:?}: a tag cannot name a digest"),
            }));
        }
        let img = self.find_image(key).await?;
        let _shared = self.inner.gc_lock.read().await;
        if !self
            .inner
            .store
            .tag_image(&reference.to_string(), &img.id)
            .await?
        {
            return Err(ManagerError::NotFound {
                kind: "image",
                key: key.to_owned(),
            });
        }
        self.find_image(&img.id).await
    }

    /// What `docker save KEY…` writes: each image by a name (saved under that name) or by id
    /// (saved without names). A missing image is an error before anything is written.
    pub async fn export_plan(&self, keys: &[String]) -> Result<Vec<inarray_images::ExportImage>> {
        let mut out = Vec::new();
        for key in keys {
            let img = self.find_image(key).await?;
            let name = Reference::parse(key)
                .ok()
                .map(|r| r.to_string())
                .filter(|n| img.names.contains(n));
            let layers: Vec<inarray_images::Layer> = img.layers_as()?;
            out.push(inarray_images::ExportImage {
                names: name.into_iter().collect(),
                manifest_digest: img.manifest_digest,
                config_digest: img.id,
                layer_digests: layers.into_iter().map(|l| l.digest).collect(),
            });
        }
        Ok(out)
    }

    /// Writes the images of `plan` as one archive to `out` (on a blocking thread); garbage
    /// collection waits meanwhile, so no blob goes away mid-archive.
    pub async fn export_images<W: std::io::Write + Send + 'static>(
        &self,
        plan: Vec<inarray_images::ExportImage>,
        out: W,
    ) -> Result<()> {
        let _shared = self.inner.gc_lock.read().await;
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || images.export_archive(&plan, out))
            .await
            .map_err(|e| internal("export task", e))??;
        Ok(())
    }

    /// Removes an image name, as `docker rmi` does: a name shared with other names is only
    /// untagged; the last name (or the image id) removes the image — 409 while a container uses
    /// it — and frees the blobs and layers nothing else uses.
    pub async fn remove_image(&self, key: &str) -> Result<ImageRemoval> {
        let img = self.find_image(key).await?;
        let name = if img.names.iter().any(|n| n == key) {
            Some(key.to_owned())
        } else {
            Reference::parse(key)
                .ok()
                .map(|r| r.to_string())
                .filter(|n| img.names.contains(n))
        };
        if let Some(name) = name.filter(|_| img.names.len() > 1) {
            self.inner.store.untag_image(&name).await?;
            self.emit(LifecycleEvent::new(EventType::ImageUntag, &img.id, &name))
                .await;
            return Ok(ImageRemoval::Untagged(name));
        }
        let users = self.inner.store.image_users(&img.id).await?;
        if !users.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "image {key} is used by container(s) {}; remove them first",
                users.join(", ")
            )));
        }
        let _exclusive = self.gc_exclusive().await?;
        self.inner.store.delete_image(&img.id).await?;
        self.emit(image_event(EventType::ImageDelete, &img)).await;
        self.gc_locked().await?;
        Ok(ImageRemoval::Deleted(img.id))
    }

    /// Garbage-collects the image store; the caller holds `gc_lock` exclusively.
    async fn gc_locked(&self) -> Result<inarray_images::GcReport> {
        let mut keep = HashSet::new();
        for img in self.inner.store.list_images().await? {
            keep.insert(img.id.clone());
            keep.insert(img.manifest_digest.clone());
            for l in img.layers_as::<Vec<inarray_images::Layer>>()? {
                keep.insert(l.digest);
                keep.insert(l.diff_id);
            }
        }
        let images = self.inner.images.clone();
        let report = tokio::task::spawn_blocking(move || images.gc(&keep))
            .await
            .map_err(|e| internal("gc task", e))??;
        Ok(report)
    }
}

/// What [`Manager::remove_image`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRemoval {
    /// Only this name went; the image keeps its other names.
    Untagged(String),
    /// The image (this id) and everything only it used went.
    Deleted(String),
}

/// An image's event: named by its first name (none: its id), with all its names.
fn image_event(kind: EventType, img: &ImageRow) -> LifecycleEvent {
    let name = img.names.first().cloned().unwrap_or_else(|| img.id.clone());
    LifecycleEvent::new(kind, &img.id, name).with("names", img.names.clone())
}
