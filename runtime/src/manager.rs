//! The container manager: the daemon's typed actions on containers and images.
//!
//! Source of truth: the SQL row holds what the operator asked for (the spec, a stop request, the
//! restart count); the shim's files (`shim-pid.json`, `exit.json`) hold what happened to the
//! process. [`Manager::reconcile`] copies the latter into the former at start, and a monitor task
//! per running container does so at every exit. Every action refreshes the row first.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use inarray_images::{
    Credentials, ImageError, ImageStore, ImportedImage, PullEvent, Puller, Reference,
    RegistryError, RegistryErrorKind, RegistrySettings,
};
use inarray_store::{
    ContainerRow, ContainerState, ExitUpdate, ImageRow, NewContainer, NewImage, Store, StoreError,
};
use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::{ContainerConfig, InvalidField, PullPolicy};
use crate::engines::{self, CgroupDriver, EngineDef, Usage};
use crate::resources::Resources;
use crate::spec::{self, ImageDefaults, SpecContext};
use crate::supervisor;
use crate::volumes::{ArrayRoot, VolumeError};
use inarray_shim::protocol::{ShimConfig, ShimRecord};
use inarray_shim::ContainerPaths;

/// Fixed settings of a manager.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    pub state_dir: PathBuf,
    pub array_dir: PathBuf,
    /// Daemon paths no volume may expose (state dir, socket directories).
    pub protected: Vec<PathBuf>,
    /// The executable the shims run (the sealed copy of `inarray-shim`).
    pub shim_exe: PathBuf,
    /// Memory the node allots to containers: engines' memory limits must fit in it.
    pub container_memory: u64,
    /// Where this daemon's engines and containers live in the cgroup hierarchies.
    pub cgroups: engines::CgroupLayout,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no such {kind}: {key}")]
    NotFound { kind: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot start the container: {0}")]
    Start(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

fn internal(what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Internal(format!("{what}: {e}"))
}

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    cgroups: Arc<dyn CgroupDriver>,
    store: Store,
    images: Arc<ImageStore>,
    array: ArrayRoot,
    opts: ManagerOptions,
    containers_root: PathBuf,
    runtime_root: PathBuf,
    /// Ids of containers whose row changed (exits, starts): wakes `wait` and log followers.
    changes: broadcast::Sender<String>,
    /// One async lock per container: actions on one container are serialized.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Consecutive quick crashes per container (resets after a run of 10 s), for the backoff.
    streaks: Mutex<HashMap<String, u32>>,
    puller: Puller,
    /// Imports and pulls (through recording the image row) hold it shared; garbage collection
    /// holds it exclusively, so it never removes what an import is about to record.
    gc_lock: tokio::sync::RwLock<()>,
    /// Pulls in flight, by normalized reference: a second pull of the same one joins the first.
    pulls: Mutex<HashMap<String, Arc<SharedPull>>>,
    /// Credentials from the config file (an API credential replaces one; deleting it restores it).
    config_credentials: Mutex<HashMap<String, Credentials>>,
    /// What the I/O guard does now, for `/metrics`.
    io_guard: Arc<Mutex<crate::ioguard::GuardStatus>>,
}

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

struct SharedPull {
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

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long an exited container's shim may take to tear the runtime state down before the
/// daemon goes on without it (its leftovers are then removed by the daemon).
const SHIM_TEARDOWN: Duration = Duration::from_secs(30);

/// Restart delay after `streak` consecutive quick exits: 100 ms doubling, capped at 1 min.
pub fn backoff(streak: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(streak.min(20)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

impl Manager {
    pub fn new(
        store: Store,
        images: Arc<ImageStore>,
        cgroups: Arc<dyn CgroupDriver>,
        opts: ManagerOptions,
    ) -> Result<Self> {
        let array = ArrayRoot::open(&opts.array_dir, &opts.protected)?;
        let containers_root = opts.state_dir.join("containers");
        let runtime_root = opts.state_dir.join("rt");
        let trash = opts.state_dir.join("trash");
        for d in [&containers_root, &runtime_root, &trash] {
            std::fs::create_dir_all(d)
                .map_err(|e| internal(&format!("cannot create {}", d.display()), e))?;
        }
        // What a previous run moved aside but had no time to remove.
        empty_trash(trash);
        let (changes, _) = broadcast::channel(4096);
        let puller = Puller::new(images.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                cgroups,
                store,
                images,
                array,
                opts,
                containers_root,
                runtime_root,
                changes,
                locks: Mutex::default(),
                streaks: Mutex::default(),
                puller,
                gc_lock: tokio::sync::RwLock::new(()),
                pulls: Mutex::default(),
                config_credentials: Mutex::default(),
                io_guard: Arc::default(),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths::new(&self.inner.containers_root, id)
    }

    /// Subscribe to "container <id> changed" notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    fn changed(&self, id: &str) {
        let _ = self.inner.changes.send(id.to_owned());
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .expect("locks")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Kills what is left in a container's cgroups, wherever (whichever engine) they are.
    fn cleanup_cgroups(&self, id: &str) -> std::io::Result<()> {
        for path in crate::cgroups::find_container(self.inner.opts.cgroups.root(), id) {
            crate::cgroups::cleanup(&path)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- images

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
            out.push(self.record_image(&img).await?);
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
        Ok(row)
    }

    /// Pulls the image a container (or a job's container) names, as `policy` says.
    async fn pull_for(&self, image: &str, policy: PullPolicy) -> Result<()> {
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
            if in_use.contains(&img.id) || img.created_at > cutoff {
                continue;
            }
            self.inner.store.delete_image(&img.id).await?;
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

    // ------------------------------------------------------------ containers

    /// Validates and records a container, and starts it unless `start: false`.
    pub async fn create(&self, cfg: ContainerConfig) -> Result<ContainerRow> {
        cfg.validate()?;
        self.pull_for(&cfg.image, cfg.pull).await?;
        // Held until the row exists: a prune cannot remove the image in between.
        let gc_shared = self.inner.gc_lock.read().await;
        let image = self.find_image(&cfg.image).await?;
        for (i, v) in cfg.volumes.iter().enumerate() {
            // Resolved here for a clear 400; resolved again (fd-based) by the shim at each start.
            self.inner
                .array
                .resolve(&format!("volumes[{i}].source"), &v.source, v.create)?;
        }
        let engine = cfg
            .engine
            .clone()
            .unwrap_or_else(|| engines::DEFAULT.to_owned());
        let def = self.engine(&engine).await?;
        if let Some(excess) = cfg.resources.excess_over(&def.resources) {
            return Err(ManagerError::Conflict(format!(
                "resources: {excess} (engine {engine})"
            )));
        }
        let id = new_id()?;
        let name = cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("c-{}", &id[..12]));
        // Built now only to refuse what cannot run (user, command); rebuilt at every start.
        self.plan(&id, &cfg, &image, &def.resources)?;
        let cfg_json = serde_json::to_string(&cfg).map_err(|e| internal("spec json", e))?;
        let row = self
            .inner
            .store
            .insert_container(NewContainer {
                id: &id,
                name: &name,
                image_id: &image.id,
                image_ref: &cfg.image,
                spec: &cfg_json,
                engine: &engine,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("a container named {name} already exists"))
                }
                e => e.into(),
            })?;
        drop(gc_shared);
        if cfg.start {
            return self.start(&id).await.map_err(|e| match e {
                ManagerError::Start(m) => ManagerError::Start(format!(
                    "{m} (the container {name}, id {id}, is kept in state dead: inspect or delete it)"
                )),
                e => e,
            });
        }
        Ok(row)
    }

    /// The limits a container's own cgroup gets: its own, and on cgroup v1 its engine's I/O limits
    /// where it has none (v1 block-I/O throttling is flat).
    fn container_limits(&self, own: &Resources, engine: &Resources) -> Resources {
        if self.inner.cgroups.is_v2() {
            return own.clone();
        }
        own.merged(&own.io_limits_within(engine))
    }

    /// The runtime spec and the shim's instructions for a container, derived from its request and
    /// its image. Never stored as a source of truth: every start derives them again from SQL.
    /// `engine_limits`: the limits of the engine it runs in (on cgroup v1 the container's cgroup
    /// carries the engine's I/O throttles too, see [`Resources::io_limits_within`]).
    fn plan(
        &self,
        id: &str,
        cfg: &ContainerConfig,
        image: &ImageRow,
        engine_limits: &Resources,
    ) -> Result<(oci_spec::runtime::Spec, ShimConfig)> {
        let engine = cfg.engine.as_deref().unwrap_or(engines::DEFAULT);
        let defaults: ImageDefaults = image.config_as()?;
        let layers: Vec<inarray_images::Layer> = image.layers_as()?;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let lowers = self.inner.images.layer_dirs(&diff_ids)?;
        let user = cfg
            .user
            .clone()
            .or_else(|| defaults.user.clone())
            .unwrap_or_default();
        let identity = crate::user::resolve(&user, &lowers).map_err(|reason| InvalidField {
            field: "user".into(),
            reason,
        })?;
        let spec = spec::build(
            cfg,
            &defaults,
            &SpecContext {
                hostname: &id[..12],
                cgroups_path: &self.inner.opts.cgroups.container(engine, id),
                identity,
                resources: self
                    .container_limits(&cfg.resources, engine_limits)
                    .to_oci(self.inner.cgroups.device(), self.inner.cgroups.is_v2()),
            },
        )
        .map_err(|e| match e {
            spec::SpecError::NoCommand(reason) => ManagerError::Invalid(InvalidField {
                field: "command".into(),
                reason,
            }),
            e => internal("spec", e),
        })?;
        let shim = ShimConfig {
            id: id.to_owned(),
            array_root: self.inner.opts.array_dir.clone(),
            protected: self.inner.opts.protected.clone(),
            volumes: cfg.volumes.clone(),
            lowers,
            runtime_root: self.inner.runtime_root.clone(),
            cgroup: self.inner.opts.cgroups.container(engine, id),
        };
        Ok((spec, shim))
    }

    /// Writes the bundle and the shim's instructions for a start. Not fsynced: they are derived
    /// state, written again at every start, and read by a shim started right after.
    async fn prepare(&self, row: &ContainerRow) -> Result<ContainerPaths> {
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let image = self
            .inner
            .store
            .image_by_id(&row.image_id)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "image",
                key: row.image_id.clone(),
            })?;
        let engine = self.engine(&row.engine).await?;
        let (spec, shim) = self.plan(&row.id, &cfg, &image, &engine.resources)?;
        let paths = self.paths(&row.id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(paths.bundle())?;
            let spec_json = serde_json::to_vec_pretty(&spec).map_err(std::io::Error::other)?;
            inarray_sys::write_replace(&paths.bundle().join("config.json"), &spec_json)?;
            let shim_json = serde_json::to_vec_pretty(&shim).map_err(std::io::Error::other)?;
            inarray_sys::write_replace(&paths.shim_config(), &shim_json)
        };
        write().map_err(|e| internal(&format!("cannot prepare {}", paths.dir.display()), e))?;
        Ok(paths)
    }

    /// Finds a container by id, name or unique id prefix.
    pub async fn get(&self, key: &str) -> Result<ContainerRow> {
        self.inner
            .store
            .find_container(key)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "container",
                key: key.to_owned(),
            })
    }

    pub async fn list(&self, all: bool) -> Result<Vec<ContainerRow>> {
        Ok(self.inner.store.list_containers(all).await?)
    }

    /// Starts a created or exited container. Allowed in: created, exited, dead.
    pub async fn start(&self, key: &str) -> Result<ContainerRow> {
        let row = self.get(key).await?;
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let row = self.get(&row.id).await?;
        match row.state {
            ContainerState::Running | ContainerState::Restarting => {
                return Err(ManagerError::Conflict(format!(
                    "container {} is already {}",
                    row.name, row.state
                )))
            }
            _ => {}
        }
        if row.stop_requested {
            self.inner.store.set_stop_requested(&row.id, false).await?;
        }
        self.spawn(&row.id).await
    }

    /// Spawns a shim for `id` and records the outcome. The caller holds the container's lock.
    async fn spawn(&self, id: &str) -> Result<ContainerRow> {
        let row = self.get(id).await?;
        let prepared = self.prepare(&row).await;
        let spawned = match prepared {
            Ok(paths) => supervisor::spawn_shim(&self.inner.opts.shim_exe, &paths)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match spawned {
            Ok((rec, exit_pipe)) => {
                self.inner
                    .store
                    .mark_running(
                        id,
                        rec.pid.into(),
                        rec.shim_pid.into(),
                        rec.shim_start as i64,
                    )
                    .await?;
                self.changed(id);
                self.monitor(id.to_owned(), rec, Some(exit_pipe), Instant::now());
                self.get(id).await
            }
            Err(msg) => {
                let _ = self.cleanup_cgroups(id);
                self.inner
                    .store
                    .mark_exited(
                        id,
                        &ExitUpdate {
                            state: ContainerState::Dead,
                            exit_code: None,
                            error: Some(msg.clone()),
                            finished_at: Utc::now(),
                            oom_killed: false,
                        },
                    )
                    .await?;
                self.changed(id);
                Err(ManagerError::Start(msg))
            }
        }
    }

    /// Watches the shim of a running container; records its exit and applies the restart policy.
    /// With the shim's pipe (a shim this daemon started), the exit is known as soon as the shim
    /// has recorded it; for a re-adopted shim, when the shim is gone.
    fn monitor(
        &self,
        id: String,
        rec: ShimRecord,
        exit_pipe: Option<supervisor::ExitPipe>,
        started: Instant,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            match exit_pipe {
                Some(p) => p.exited().await,
                None => supervisor::wait_shim_gone(rec).await,
            }
            if let Err(e) = this.on_exit(&id, started.elapsed(), Some(rec)).await {
                tracing::error!(container = %id, error = %e, "recording an exit failed");
            }
        });
    }

    /// Records how a container ended (from its exit record), then restarts it if its policy says so.
    ///
    /// The container's lock is held until the shim `rec` is gone: nothing may start the
    /// container again, or delete its files, while its old shim still tears the runtime down.
    async fn on_exit(&self, id: &str, ran_for: Duration, rec: Option<ShimRecord>) -> Result<()> {
        let lock = self.lock_for(id);
        let g = lock.lock().await;
        let Some(row) = self.inner.store.container(id).await? else {
            return Ok(());
        };
        let paths = self.paths(id);
        let mut exit = supervisor::read_exit_record(&paths);
        if exit.is_none() {
            // The pipe ended without a record: the shim died. Make sure it is gone, then look
            // once more (it may have written the record just before dying).
            if let Some(rec) = rec {
                supervisor::wait_shim_gone(rec).await;
            }
            exit = supervisor::read_exit_record(&paths);
        }
        let update = match exit {
            Some(x) => ExitUpdate {
                state: ContainerState::Exited,
                exit_code: Some(x.exit_code.into()),
                error: None,
                finished_at: x.finished_at,
                oom_killed: x.oom_killed,
            },
            None => ExitUpdate {
                state: ContainerState::Dead,
                exit_code: None,
                error: Some("the container's supervisor ended without recording an exit".into()),
                finished_at: Utc::now(),
                oom_killed: false,
            },
        };
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let restart = update.state == ContainerState::Exited
            && cfg.restart.should_restart(
                update.exit_code.unwrap_or(-1),
                row.restart_count,
                row.stop_requested,
            );
        if !restart {
            // Recorded first, so waiters learn the exit at once; the shim finishes below.
            self.inner.store.mark_exited(id, &update).await?;
            self.inner.streaks.lock().expect("streaks").remove(id);
            self.changed(id);
        }
        if let Some(rec) = rec {
            let _ = tokio::time::timeout(SHIM_TEARDOWN, supervisor::wait_shim_gone(rec)).await;
        }
        // Whatever the shim left behind (it was killed, say) goes now.
        let _ = self.cleanup_cgroups(id);
        if !restart {
            return Ok(());
        }
        let streak = {
            let mut s = self.inner.streaks.lock().expect("streaks");
            let e = s.entry(id.to_owned()).or_default();
            if ran_for >= STABLE_RUN {
                *e = 0;
            }
            let cur = *e;
            *e = e.saturating_add(1);
            cur
        };
        let delay = backoff(streak);
        self.inner
            .store
            .mark_exited(
                id,
                &ExitUpdate {
                    state: ContainerState::Restarting,
                    ..update
                },
            )
            .await?;
        self.changed(id);
        drop(g);
        tracing::info!(container = %id, delay_ms = delay.as_millis() as u64, "restarting per policy");
        tokio::time::sleep(delay).await;
        let _g = lock.lock().await;
        match self.inner.store.container(id).await? {
            // Still waiting to restart (not stopped, removed or started by hand meanwhile).
            Some(r) if r.state == ContainerState::Restarting && !r.stop_requested => {
                self.inner.store.bump_restart_count(id).await?;
                if let Err(e) = self.spawn(id).await {
                    tracing::warn!(container = %id, error = %e, "restart failed");
                }
            }
            // A stop arrived during the backoff: it stays exited.
            Some(r) if r.state == ContainerState::Restarting => {
                self.inner
                    .store
                    .set_state(id, ContainerState::Exited)
                    .await?;
                self.changed(id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends SIGTERM, then SIGKILL after `timeout`; no restart policy applies afterwards.
    /// Allowed in any state: stopping a stopped container is a no-op.
    pub async fn stop(&self, key: &str, timeout: Duration) -> Result<ContainerRow> {
        let id = self.get(key).await?.id;
        self.inner.store.set_stop_requested(&id, true).await?;
        // A restart that was under way when the request arrived may still bring the container
        // up once: stop that run too (the request now prevents any further restart).
        for _ in 0..3 {
            let row = self.settle_stopped(&id).await?;
            if row.state != ContainerState::Running {
                return Ok(row);
            }
            let mut rx = self.subscribe();
            let rec = shim_record(&row);
            if let Some(rec) = rec {
                let _ = supervisor::signal(rec, Signal::SIGTERM);
            }
            if !self.wait_until_not_running(&id, &mut rx, timeout).await? {
                if let Some(rec) = rec {
                    let _ = supervisor::signal(rec, Signal::SIGKILL);
                }
                self.wait_until_not_running(&id, &mut rx, Duration::from_secs(30))
                    .await?;
            }
        }
        self.settle_stopped(&id).await
    }

    /// After a stop request: a container the restart policy had already scheduled to start again
    /// (its exit was recorded before the request) stays exited instead.
    async fn settle_stopped(&self, id: &str) -> Result<ContainerRow> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.get(id).await?;
        if row.state == ContainerState::Restarting {
            self.inner
                .store
                .set_state(id, ContainerState::Exited)
                .await?;
            self.changed(id);
            return self.get(id).await;
        }
        Ok(row)
    }

    /// Sends a signal to the container's init. Allowed in: running.
    pub async fn kill(&self, key: &str, sig: Signal) -> Result<ContainerRow> {
        let row = self.get(key).await?;
        let rec = match (row.state, shim_record(&row)) {
            (ContainerState::Running, Some(rec)) => rec,
            _ => {
                return Err(ManagerError::Conflict(format!(
                    "container {} is not running",
                    row.name
                )))
            }
        };
        supervisor::signal(rec, sig).map_err(|e| {
            ManagerError::Conflict(format!("cannot signal container {}: {e}", row.name))
        })?;
        self.get(&row.id).await
    }

    /// Stops (if running) and starts again.
    pub async fn restart(&self, key: &str, timeout: Duration) -> Result<ContainerRow> {
        let row = self.stop(key, timeout).await?;
        self.start(&row.id).await
    }

    /// Blocks until the container is exited or dead (not restarting); returns the row.
    pub async fn wait(&self, key: &str) -> Result<ContainerRow> {
        let mut rx = self.subscribe();
        let id = self.get(key).await?.id;
        loop {
            let row = self.get(&id).await?;
            if matches!(row.state, ContainerState::Exited | ContainerState::Dead) {
                return Ok(row);
            }
            if row.state == ContainerState::Created {
                return Err(ManagerError::Conflict(format!(
                    "container {} has not been started",
                    row.name
                )));
            }
            recv_for(&mut rx, &id, Duration::from_secs(5)).await;
        }
    }

    /// Returns true once not running (exited, dead or restarting), false on timeout.
    async fn wait_until_not_running(
        &self,
        id: &str,
        rx: &mut broadcast::Receiver<String>,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.get(id).await?;
            if row.state != ContainerState::Running {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            recv_for(rx, id, left.min(Duration::from_millis(500))).await;
        }
    }

    /// Removes a container: its row, private upper layer, logs and runtime leftovers.
    /// Allowed in: created, exited, dead; running/restarting only with `force` (killed first).
    pub async fn delete(&self, key: &str, force: bool) -> Result<()> {
        let row = self.get(key).await?;
        if matches!(
            row.state,
            ContainerState::Running | ContainerState::Restarting
        ) {
            if !force {
                return Err(ManagerError::Conflict(format!(
                    "container {} is {}; stop it first or delete with force=true",
                    row.name, row.state
                )));
            }
            self.stop(&row.id, Duration::ZERO).await?;
        }
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let t0 = Instant::now();
        self.remove_files(&row.id)?;
        let t1 = Instant::now();
        self.inner.store.delete_container(&row.id).await?;
        tracing::debug!(
            container = %row.id,
            files_ms = (t1 - t0).as_secs_f64() * 1e3,
            sql_ms = t1.elapsed().as_secs_f64() * 1e3,
            "deleted"
        );
        self.inner.locks.lock().expect("locks").remove(&row.id);
        self.changed(&row.id);
        Ok(())
    }

    fn remove_files(&self, id: &str) -> Result<()> {
        self.cleanup_cgroups(id)
            .map_err(|e| internal("cgroup cleanup", e))?;
        let rt = self.inner.runtime_root.join(id);
        if rt.exists() {
            std::fs::remove_dir_all(&rt)
                .map_err(|e| internal(&format!("cannot remove {}", rt.display()), e))?;
        }
        // Moved aside at once (one rename), removed in the background: a delete does not wait
        // for the disk to unlink (and discard) a container's upper layer file by file.
        let dir = self.paths(id).dir;
        let trash = self.inner.opts.state_dir.join("trash");
        let aside = trash.join(format!("{id}-{}", new_id()?));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {
                in_background(move || remove_logged(&aside));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(&format!("cannot remove {}", dir.display()), e)),
        }
    }

    /// Brings SQL in line with reality after a (re)start of the daemon: re-adopts containers whose
    /// shims live, records exits that happened meanwhile (and applies restart policies), removes
    /// directories and cgroups that belong to no container.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let rows = self.inner.store.list_containers(true).await?;
        let known: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        for row in &rows {
            match row.state {
                ContainerState::Running => {
                    let paths = self.paths(&row.id);
                    let rec = shim_record(row).or_else(|| supervisor::read_shim_record(&paths));
                    match rec {
                        Some(rec) if supervisor::is_same_process(rec.shim_pid, rec.shim_start) => {
                            self.monitor(row.id.clone(), rec, None, Instant::now());
                            report.adopted += 1;
                        }
                        _ => {
                            self.on_exit_detached(&row.id);
                            report.exited += 1;
                        }
                    }
                }
                ContainerState::Restarting => {
                    self.on_exit_detached(&row.id);
                    report.restarted += 1;
                }
                ContainerState::Created | ContainerState::Exited | ContainerState::Dead => {
                    // A start the daemon was killed in the middle of: the shim came up (its
                    // record is written once the container runs) but the row was not marked
                    // running. The shim removes both records when it begins, so a record next
                    // to a live shim is this run's. Adopted like a running one; its exit, when
                    // it comes, is recorded as usual.
                    let paths = self.paths(&row.id);
                    let Some(rec) = supervisor::read_shim_record(&paths) else {
                        continue;
                    };
                    let live = supervisor::is_same_process(rec.shim_pid, rec.shim_start);
                    let exited = supervisor::read_exit_record(&paths).is_some();
                    let never_started = row.state == ContainerState::Created;
                    // An exited row's exit record may be the one already recorded (its shim
                    // outlives the record by a moment): only a run without one is new there.
                    // A never-started row with an exit record ran and exited unseen.
                    let adopt = live && (never_started || !exited);
                    let ran = !live && never_started && exited;
                    if !adopt && !ran {
                        continue;
                    }
                    self.inner
                        .store
                        .mark_running(
                            &row.id,
                            rec.pid.into(),
                            rec.shim_pid.into(),
                            rec.shim_start as i64,
                        )
                        .await?;
                    if adopt {
                        self.monitor(row.id.clone(), rec, None, Instant::now());
                        report.adopted += 1;
                    } else {
                        self.on_exit_detached(&row.id);
                        report.exited += 1;
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.inner.containers_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(name.as_str()) {
                    let _ = self.remove_files(&name);
                    report.removed_orphans += 1;
                }
            }
        }
        Ok(report)
    }

    fn on_exit_detached(&self, id: &str) {
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.on_exit(&id, Duration::ZERO, None).await {
                tracing::error!(container = %id, error = %e, "reconciling an exit failed");
            }
        });
    }
}

// ------------------------------------------------------------------ engines

impl Manager {
    /// Where this daemon's engines and containers live in the cgroup hierarchies.
    pub fn cgroup_layout(&self) -> &engines::CgroupLayout {
        &self.inner.opts.cgroups
    }

    /// An engine's definition; 404 when unknown.
    pub async fn engine(&self, name: &str) -> Result<EngineDef> {
        let row = self
            .inner
            .store
            .engine(name)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "engine",
                key: name.to_owned(),
            })?;
        let resources: Resources =
            serde_json::from_str(&row.resources).map_err(|e| internal("stored engine", e))?;
        Ok(EngineDef {
            name: row.name,
            resources,
        })
    }

    pub async fn engines(&self) -> Result<Vec<EngineDef>> {
        let mut out = Vec::new();
        for row in self.inner.store.list_engines().await? {
            let resources: Resources =
                serde_json::from_str(&row.resources).map_err(|e| internal("stored engine", e))?;
            out.push(EngineDef {
                name: row.name,
                resources,
            });
        }
        Ok(out)
    }

    /// At start: records the built-in engines and those of the config file (the config's limits
    /// win for the engines it names), applies every engine's limits to its cgroup, and moves the
    /// daemon itself into `storage`.
    pub async fn init_engines(&self, configured: &[EngineDef]) -> Result<()> {
        let builtin = engines::builtin();
        for e in builtin.iter().chain(configured) {
            engines::validate_name(&e.name).map_err(|m| internal("engine in the config", m))?;
            engines::validate_engine(&e.name, &e.resources, &format!("engines.{}", e.name))
                .map_err(|m| internal("engine in the config", m))?;
        }
        for e in &builtin {
            let json = serde_json::to_string(&e.resources).map_err(|e| internal("engine", e))?;
            self.inner.store.ensure_engine(&e.name, &json).await?;
        }
        for e in configured {
            let json = serde_json::to_string(&e.resources).map_err(|e| internal("engine", e))?;
            if !self.inner.store.ensure_engine(&e.name, &json).await? {
                self.inner.store.update_engine(&e.name, &json).await?;
            }
        }
        let all = self.engines().await?;
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(|m| internal("engines in the config", m))?;
        for e in &all {
            self.inner
                .cgroups
                .apply(&self.inner.opts.cgroups.engine(&e.name), &e.resources)
                .map_err(|m| internal("engine cgroup", m))?;
            // Containers that ran on across the restart get what the config says now.
            if e.resources.has_io_limits() {
                self.push_io_limits(e).await?;
            }
        }
        self.inner
            .cgroups
            .add_process(
                &self.inner.opts.cgroups.engine(engines::STORAGE),
                std::process::id() as i32,
            )
            .map_err(|m| internal("moving the daemon into the storage engine", m))?;
        Ok(())
    }

    /// Adds an engine. 409 when the name is taken or the memory limits would over-commit.
    pub async fn create_engine(&self, def: EngineDef) -> Result<EngineDef> {
        engines::validate_name(&def.name).map_err(|m| InvalidField {
            field: "name".into(),
            reason: m.trim_start_matches("name: ").into(),
        })?;
        validate_engine_resources(&def.name, &def.resources)?;
        let mut all = self.engines().await?;
        if all.iter().any(|e| e.name == def.name) {
            return Err(ManagerError::Conflict(format!(
                "engine {} already exists",
                def.name
            )));
        }
        all.push(def.clone());
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(ManagerError::Conflict)?;
        self.inner
            .cgroups
            .apply(&self.inner.opts.cgroups.engine(&def.name), &def.resources)
            .map_err(|m| internal("engine cgroup", m))?;
        let json = serde_json::to_string(&def.resources).map_err(|e| internal("engine", e))?;
        self.inner
            .store
            .insert_engine(&def.name, &json)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("engine {} already exists", def.name))
                }
                e => e.into(),
            })?;
        Ok(def)
    }

    /// Changes an engine's limits live (fields in `patch` replace the current ones). 409 when
    /// the memory limits would over-commit, or a container in it asks for more than the new limits.
    pub async fn update_engine(&self, name: &str, patch: &Resources) -> Result<EngineDef> {
        validate_resources(patch)?;
        let current = self.engine(name).await?;
        let updated = EngineDef {
            name: name.to_owned(),
            resources: current.resources.merged(patch),
        };
        validate_engine_resources(name, &updated.resources)?;
        let mut all: Vec<EngineDef> = self
            .engines()
            .await?
            .into_iter()
            .filter(|e| e.name != name)
            .collect();
        all.push(updated.clone());
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(ManagerError::Conflict)?;
        for row in self.inner.store.list_containers(true).await? {
            if row.engine != name {
                continue;
            }
            let cfg: ContainerConfig =
                serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
            if let Some(excess) = cfg.resources.excess_over(&updated.resources) {
                return Err(ManagerError::Conflict(format!(
                    "container {} in engine {name} asks for more: {excess}",
                    row.name
                )));
            }
        }
        self.inner
            .cgroups
            .apply(&self.inner.opts.cgroups.engine(name), &updated.resources)
            .map_err(|m| {
                ManagerError::Conflict(format!("the kernel refused the new limits: {m}"))
            })?;
        let json = serde_json::to_string(&updated.resources).map_err(|e| internal("engine", e))?;
        self.inner.store.update_engine(name, &json).await?;
        if patch.has_io_limits() {
            self.push_io_limits(&updated).await?;
        }
        Ok(updated)
    }

    /// cgroup v1 throttles each cgroup on its own: the running containers' cgroups carry their
    /// engine's I/O limits (where they have none of their own) and get the engine's current ones
    /// here. Nothing to do on v2, where the engine's io.max binds its containers.
    async fn push_io_limits(&self, engine: &EngineDef) -> Result<()> {
        if self.inner.cgroups.is_v2() {
            return Ok(());
        }
        for row in self.inner.store.list_containers(true).await? {
            if row.engine != engine.name || row.state != ContainerState::Running {
                continue;
            }
            let cfg: ContainerConfig =
                serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
            let io = cfg.resources.io_limits_within(&engine.resources);
            let path = self.inner.opts.cgroups.container(&engine.name, &row.id);
            // Never made here (apply creates a missing cgroup): one that is gone has exited.
            if !crate::cgroups::exists(&path) {
                continue;
            }
            if let Err(m) = self.inner.cgroups.apply(&path, &io) {
                // It may have exited meanwhile (its cgroup gone); its next start applies them.
                tracing::warn!(container = %row.id, engine = %engine.name, "the engine's I/O limits were not applied to the container: {m}");
            }
        }
        Ok(())
    }

    /// The I/O guard's state now.
    pub fn io_guard_status(&self) -> crate::ioguard::GuardStatus {
        self.inner.io_guard.lock().expect("lock").clone()
    }

    /// Runs the I/O guard ([`crate::ioguard`]) until the daemon stops: its sampling loop on a
    /// thread of its own (never in the way of the API's runtime), and here, the list of running
    /// containers it works on, refreshed when a container starts or ends and every 2 s. Returns at
    /// once when it is disabled or the array is on no block device.
    pub async fn run_io_guard(&self, cfg: crate::ioguard::GuardConfig) {
        use crate::ioguard as g;
        let Some(dev) = self.inner.cgroups.device() else {
            tracing::warn!("the I/O guard is off: the array is on no block device");
            return;
        };
        if !cfg.enabled {
            tracing::info!("the I/O guard is off (io_guard.enabled = false)");
            return;
        }
        let v2 = self.inner.cgroups.is_v2();
        let root = std::path::Path::new("/sys/fs/cgroup");
        let layout = &self.inner.opts.cgroups;
        let dirs = g::Dirs {
            storage: g::io_dir(root, &layout.engine(engines::STORAGE), v2),
            containers: g::io_dir(root, layout.root(), v2),
            root: root.to_path_buf(),
        };
        let targets = Arc::new(Mutex::new(g::Targets::default()));
        let mut changes = self.subscribe();
        let mut started = false;
        loop {
            match self.guard_targets().await {
                Ok((list, share)) => {
                    let mut t = targets.lock().expect("lock");
                    if t.list != list || t.share != share {
                        t.list = list;
                        t.share = share;
                        t.generation += 1;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the I/O guard cannot list the containers"),
            }
            if !started {
                started = true;
                let (targets, status) = (targets.clone(), self.inner.io_guard.clone());
                let cfg = cfg.clone();
                let dirs = dirs.clone();
                let spawned = std::thread::Builder::new()
                    .name("io-guard".into())
                    .spawn(move || g::run(cfg, dev, v2, dirs, targets, status));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "the I/O guard's thread did not start");
                    return;
                }
            }
            // Until a container starts or ends, or 2 s pass; a burst of starts is one refresh
            // (at most five a second, each a store query and every running container's spec).
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), changes.recv()).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            while changes.try_recv().is_ok() {}
        }
    }

    /// The running containers (id, cgroup path, the I/O limits they have without the guard) and
    /// their share of the disk against `storage` (by the I/O weights of the engines they run in).
    async fn guard_targets(&self) -> Result<(Vec<crate::ioguard::Target>, f64)> {
        let engines: HashMap<String, Resources> = self
            .engines()
            .await?
            .into_iter()
            .map(|e| (e.name, e.resources))
            .collect();
        let mut out = Vec::new();
        let mut used: Vec<&str> = Vec::new();
        let rows = self.inner.store.list_containers(true).await?;
        for row in &rows {
            if row.state != ContainerState::Running {
                continue;
            }
            let Ok(cfg) = serde_json::from_str::<ContainerConfig>(&row.spec) else {
                continue;
            };
            let engine = engines.get(&row.engine).cloned().unwrap_or_default();
            if !used.contains(&row.engine.as_str()) {
                used.push(&row.engine);
            }
            out.push(crate::ioguard::Target {
                id: row.id.clone(),
                cgroup: self.inner.opts.cgroups.container(&row.engine, &row.id),
                limits: cfg.resources.io_limits_within(&engine),
            });
        }
        let storage = engines.get(engines::STORAGE).cloned().unwrap_or_default();
        let used: Vec<&Resources> = used.iter().filter_map(|n| engines.get(*n)).collect();
        Ok((out, crate::ioguard::share(&storage, &used)))
    }

    /// Removes an engine: not a built-in one, nor one with containers (409).
    pub async fn delete_engine(&self, name: &str) -> Result<()> {
        self.engine(name).await?;
        if engines::is_builtin(name) {
            return Err(ManagerError::Conflict(format!("engine {name} is built in")));
        }
        let users = self.inner.store.engine_users(name).await?;
        if !users.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "engine {name} has container(s) {}; remove them first",
                users.join(", ")
            )));
        }
        crate::cgroups::cleanup(&self.inner.opts.cgroups.engine(name))
            .map_err(|e| internal("engine cgroup", e))?;
        self.inner.store.delete_engine(name).await?;
        Ok(())
    }

    pub async fn engine_usage(&self, name: &str) -> Result<Usage> {
        self.engine(name).await?;
        self.inner
            .cgroups
            .usage(&self.inner.opts.cgroups.engine(name))
            .map_err(|m| internal("engine stats", m))
    }

    /// Usage of a running container. 409 when it is not running (it has no cgroup then).
    pub async fn container_usage(&self, key: &str) -> Result<Usage> {
        let row = self.get(key).await?;
        if row.state != ContainerState::Running {
            return Err(ManagerError::Conflict(format!(
                "container {} is not running",
                row.name
            )));
        }
        self.inner
            .cgroups
            .usage(&self.inner.opts.cgroups.container(&row.engine, &row.id))
            .map_err(|m| internal("container stats", m))
    }

    /// Changes a container's limits (fields in `patch` replace the current ones), live when it
    /// runs, and for every later start. Allowed in any state; 409 beyond its engine.
    pub async fn update_resources(&self, key: &str, patch: &Resources) -> Result<ContainerRow> {
        validate_resources(patch)?;
        let row = self.get(key).await?;
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let row = self.get(&row.id).await?;
        let mut cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let merged = cfg.resources.merged(patch);
        validate_resources(&merged)?;
        let engine = self.engine(&row.engine).await?;
        if let Some(excess) = merged.excess_over(&engine.resources) {
            return Err(ManagerError::Conflict(format!(
                "resources: {excess} (engine {})",
                row.engine
            )));
        }
        if row.state == ContainerState::Running {
            // v2: what changed; v1: everything, with the engine's I/O limits where the
            // container has none of its own.
            let live = if self.inner.cgroups.is_v2() {
                patch.clone()
            } else {
                self.container_limits(&merged, &engine.resources)
            };
            self.inner
                .cgroups
                .apply(
                    &self.inner.opts.cgroups.container(&row.engine, &row.id),
                    &live,
                )
                .map_err(|m| {
                    ManagerError::Conflict(format!("the kernel refused the new limits: {m}"))
                })?;
        }
        cfg.resources = merged;
        let json = serde_json::to_string(&cfg).map_err(|e| internal("spec json", e))?;
        self.inner.store.set_spec(&row.id, &json).await?;
        self.get(&row.id).await
    }
}

fn validate_resources(r: &Resources) -> Result<()> {
    invalid_resources(r.validate("resources"))
}

fn validate_engine_resources(name: &str, r: &Resources) -> Result<()> {
    invalid_resources(engines::validate_engine(name, r, "resources"))
}

/// "resources.FIELD: reason" → 400 naming the field.
fn invalid_resources(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(|m| {
        let (field, reason) = m.split_once(": ").unwrap_or(("resources", &m));
        ManagerError::Invalid(InvalidField {
            field: field.into(),
            reason: reason.into(),
        })
    })
}

/// What [`Manager::remove_image`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRemoval {
    /// Only this name went; the image keeps its other names.
    Untagged(String),
    /// The image (this id) and everything only it used went.
    Deleted(String),
}

/// What [`Manager::reconcile`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: usize,
    pub exited: usize,
    pub restarted: usize,
    pub removed_orphans: usize,
}

fn shim_record(row: &ContainerRow) -> Option<ShimRecord> {
    Some(ShimRecord {
        pid: row.pid? as i32,
        shim_pid: row.shim_pid? as i32,
        shim_start: row.shim_start? as u64,
    })
}

/// Waits for a change notification about `id`, at most `max`.
async fn recv_for(rx: &mut broadcast::Receiver<String>, id: &str, max: Duration) {
    let _ = tokio::time::timeout(max, async {
        loop {
            match rx.recv().await {
                Ok(changed) if changed == id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
    .await;
}

/// Removes everything in the trash directory (best effort, logged), in the background.
fn empty_trash(trash: PathBuf) {
    in_background(move || {
        if let Ok(entries) = std::fs::read_dir(&trash) {
            for e in entries.flatten() {
                remove_logged(&e.path());
            }
        }
    });
}

fn remove_logged(path: &std::path::Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
    }
}

/// Runs `work` on a blocking thread of the runtime (or right here outside one).
fn in_background(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(work)),
        Err(_) => work(),
    }
}

/// A new container id: 24 hex digits (96 random bits).
fn new_id() -> Result<String> {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| internal("random id", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(10), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id().unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_id().unwrap());
    }
}
