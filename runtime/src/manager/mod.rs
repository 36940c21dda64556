//! The container manager: the daemon's typed actions on containers, images and engines.
//!
//! Source of truth: the SQL row holds what the operator asked for (the spec, a stop request, the
//! restart count); the shim's files (`shim-pid.json`, `exit.json`) hold what happened to the
//! process. [`Manager::reconcile`] copies the latter into the former at start, and a monitor task
//! per running container does so at every exit. Every action refreshes the row first.
//!
//! One file per concern, each an `impl Manager` block: `images.rs` (imports, pulls, registries,
//! prune), `lifecycle.rs` (create, start, stop, kill, wait, delete), `monitor.rs` (exits, restart
//! policies, reconcile), `boot.rs` (after a reboot or a failover: which containers start again,
//! paced), `engines.rs` (engines, live limits, usage and processes), `update.rs` (rename,
//! restart policy), `io_guard.rs` (the I/O guard's list of containers), `volumes.rs` and
//! `snapshots.rs` (array volumes: the registry kept true against the volume backend).
//! Processes are reached only through the [`Launcher`] seam, cgroups only
//! through the [`CgroupDriver`] seam, SQL only through the store's typed methods.

mod boot;
#[cfg(test)]
mod boot_tests;
mod engines;
mod error;
#[cfg(test)]
mod events_tests;
mod exec;
mod health;
mod images;
mod io_guard;
mod lifecycle;
mod monitor;
mod networks;
mod snapshots;
#[cfg(test)]
mod tests;
mod update;
mod volumes;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inarray_images::{Credentials, ImageStore, Puller};
use inarray_store::{ContainerRow, Store};
use tokio::sync::broadcast;

use crate::engines::{CgroupDriver, CgroupLayout};
use crate::launcher::{Launcher, ShimLauncher};
use crate::volumes::ArrayRoot;
use inarray_shim::protocol::ShimRecord;
use inarray_shim::ContainerPaths;

pub use boot::{starts_at_boot, NodeBoot, Since, REBOOTED};
pub(crate) use error::internal;
pub use error::{Cause, ManagerError, Result};
pub use exec::{Attached, Attachment, ExecConfig, ExecInfo};
pub use images::{ImageRemoval, PruneReport, PrunedImage};
pub use monitor::{backoff, ReconcileReport};
pub use update::ContainerUpdate;
pub use volumes::{SnapshotInfo, UsedBy, VolumeInfo, VolumePatch, VolumeSpec};

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
    pub cgroups: CgroupLayout,
    /// A container's log limits when its request has none.
    pub container_log: inarray_shim::logfile::LogLimits,
    /// Starts the daemon makes on its own (restart policies, after a reboot) at once, at most.
    pub restart_concurrency: usize,
    /// netavark, aardvark-dns and the subnets of bridge networks.
    pub networks: crate::network::NetworkOptions,
}

/// The default of [`ManagerOptions::restart_concurrency`].
pub const RESTART_CONCURRENCY: usize = 8;

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    cgroups: Arc<dyn CgroupDriver>,
    launcher: Arc<dyn Launcher>,
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
    /// Health of running containers with a check (`health.rs`).
    health: Mutex<HashMap<String, crate::health::Health>>,
    /// One permit per start the daemon makes on its own (`restart_concurrency`).
    starts: Arc<tokio::sync::Semaphore>,
    puller: Puller,
    /// Imports and pulls (through recording the image row) hold it shared; garbage collection
    /// holds it exclusively, so it never removes what an import is about to record.
    gc_lock: tokio::sync::RwLock<()>,
    /// Pulls in flight, by normalized reference: a second pull of the same one joins the first.
    pulls: Mutex<HashMap<String, Arc<images::SharedPull>>>,
    /// Credentials from the config file (an API credential replaces one; deleting it restores it).
    config_credentials: Mutex<HashMap<String, Credentials>>,
    /// What the I/O guard does now, for `/metrics`.
    io_guard: Arc<Mutex<crate::ioguard::GuardStatus>>,
    /// The last rows of containers auto-removed after their exit, newest last (at most
    /// [`REMEMBER_REMOVED`]): a waiter that wakes after the delete still learns the exit.
    removed: Mutex<std::collections::VecDeque<ContainerRow>>,
    /// Where lifecycle events go (`set_event_sink`; none: not recorded).
    events: std::sync::OnceLock<crate::events::Sink>,
    /// Array volumes on disk, by the array's filesystem (`volume_backend`).
    volume_backend: Arc<dyn crate::volume_backend::VolumeBackend>,
    /// Held by every change of volumes and snapshots (`volumes.rs`).
    volume_lock: tokio::sync::Mutex<()>,
    /// Published ports of the containers whose network is set up, by container id.
    published: Mutex<HashMap<String, Vec<crate::network::PortMapping>>>,
    /// Serializes network changes (allocations, netavark runs, port checks).
    net_lock: tokio::sync::Mutex<()>,
}

/// How many auto-removed containers' last rows are remembered.
const REMEMBER_REMOVED: usize = 256;

impl Manager {
    /// A manager whose containers are supervised by `inarray-shim` processes (`opts.shim_exe`).
    pub fn new(
        store: Store,
        images: Arc<ImageStore>,
        cgroups: Arc<dyn CgroupDriver>,
        opts: ManagerOptions,
    ) -> Result<Self> {
        let launcher = Arc::new(ShimLauncher::new(opts.shim_exe.clone()));
        Self::with_launcher(store, images, cgroups, launcher, opts)
    }

    /// A manager whose containers are started through `launcher` (tests use a recording double).
    pub(crate) fn with_launcher(
        store: Store,
        images: Arc<ImageStore>,
        cgroups: Arc<dyn CgroupDriver>,
        launcher: Arc<dyn Launcher>,
        opts: ManagerOptions,
    ) -> Result<Self> {
        let array = ArrayRoot::open(&opts.array_dir, &opts.protected)?;
        let volume_backend = Arc::from(
            crate::volume_backend::detect(&opts.array_dir)
                .map_err(|e| internal("volume backend", e))?,
        );
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
        let starts = Arc::new(tokio::sync::Semaphore::new(opts.restart_concurrency.max(1)));
        Ok(Self {
            inner: Arc::new(Inner {
                cgroups,
                launcher,
                store,
                images,
                array,
                opts,
                containers_root,
                runtime_root,
                changes,
                locks: Mutex::default(),
                streaks: Mutex::default(),
                health: Mutex::default(),
                starts,
                puller,
                gc_lock: tokio::sync::RwLock::new(()),
                pulls: Mutex::default(),
                config_credentials: Mutex::default(),
                io_guard: Arc::default(),
                removed: Mutex::default(),
                events: std::sync::OnceLock::new(),
                volume_backend,
                volume_lock: tokio::sync::Mutex::new(()),
                published: Mutex::default(),
                net_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Sends lifecycle events (containers, images) to `sink` from now on; set once, before
    /// [`Manager::reconcile`] so that what it records is reported too.
    pub fn set_event_sink(&self, sink: crate::events::Sink) {
        let _ = self.inner.events.set(sink);
    }

    /// Records a lifecycle event at once (in order with the others); the future completes once
    /// it is durable.
    fn emit(&self, event: crate::events::LifecycleEvent) -> crate::events::Recorded {
        match self.inner.events.get() {
            Some(sink) => sink.record(event),
            None => Box::pin(async {}),
        }
    }

    /// A container's event with its image.
    fn container_event(
        &self,
        kind: crate::events::EventType,
        row: &ContainerRow,
    ) -> crate::events::LifecycleEvent {
        crate::events::LifecycleEvent::new(kind, &row.id, &row.name)
            .with("image", row.image_ref.as_str())
    }

    /// Where a container's files live (its log, its records).
    pub fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths::new(&self.inner.containers_root, id)
    }

    /// The log limits a container gets when its request sets none (`container_log_*`).
    pub fn default_log_limits(&self) -> inarray_shim::logfile::LogLimits {
        self.inner.opts.container_log
    }

    /// Subscribe to "container <id> changed" notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    fn changed(&self, id: &str) {
        let _ = self.inner.changes.send(id.to_owned());
    }

    /// The last row of a container that was auto-removed after its exit (recently: the newest
    /// few hundred are remembered, in memory only).
    pub fn removed_container(&self, id: &str) -> Option<ContainerRow> {
        self.inner
            .removed
            .lock()
            .expect("removed")
            .iter()
            .rev()
            .find(|r| r.id == id)
            .cloned()
    }

    fn remember_removed(&self, row: ContainerRow) {
        let mut removed = self.inner.removed.lock().expect("removed");
        if removed.len() >= REMEMBER_REMOVED {
            removed.pop_front();
        }
        removed.push_back(row);
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
        self.inner
            .cgroups
            .remove_container(self.inner.opts.cgroups.root(), id)
    }
}

fn shim_record(row: &ContainerRow) -> Option<ShimRecord> {
    Some(ShimRecord {
        pid: row.pid? as i32,
        shim_pid: row.shim_pid? as i32,
        shim_start: row.shim_start? as u64,
    })
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
