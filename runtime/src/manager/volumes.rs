//! Array volumes: the registry (SQL rows) kept true against the backend's files.
//!
//! Crash safety comes from the row's state, written before the files change: a create records
//! the row `creating`, makes the volume, then marks it `ready`; a delete marks it `deleting`
//! before removing anything. [`Manager::reconcile_volumes`] (at start) removes whatever a
//! `creating` or `deleting` row names, and the backend's work in progress (dot-names), so after
//! a `kill -9` at any point a volume is either fully there (`ready`, its files complete) or
//! fully gone (no row, no files). One async lock serializes every change of volumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use inarray_store::{names, NewVolume, StoreError, VolumeRow};
use serde::{Deserialize, Serialize};

use super::{internal, Manager, ManagerError, Result};
use crate::config::{ContainerConfig, InvalidField};
use crate::events::EventType;
use crate::volume_backend::{
    BackendError, BackendKind, Capabilities, Usage, VolumeBackend, VOLUMES_DIR,
};

/// The smallest size a volume may have (a btrfs qgroup smaller than a few extents is useless).
pub const MIN_SIZE: u64 = 1 << 20;
/// The largest size (1 EiB): stored as a SQLite integer, and beyond any array.
pub const MAX_SIZE: u64 = 1 << 60;
const MAX_LABELS: usize = 64;

/// The body of `POST /v1/volumes`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: String,
    /// The quota in bytes; absent: no limit.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The body of `PATCH /v1/volumes/{name}`: a field left out is unchanged; `size: null`
/// removes the limit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePatch {
    #[serde(default, deserialize_with = "present")]
    pub size: Option<Option<u64>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Who uses a volume: a volume in use cannot be deleted (409 naming them).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UsedBy {
    /// Containers (any state) that mount it.
    pub containers: Vec<String>,
    /// Jobs whose container mounts it.
    pub jobs: Vec<String>,
    /// NFS exports of the volume or of a directory in it.
    pub exports: Vec<String>,
}

impl UsedBy {
    fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.jobs.is_empty() && self.exports.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.containers.is_empty() {
            parts.push(format!("containers {}", self.containers.join(", ")));
        }
        if !self.jobs.is_empty() {
            parts.push(format!("jobs {}", self.jobs.join(", ")));
        }
        if !self.exports.is_empty() {
            parts.push(format!("NFS exports {}", self.exports.join(", ")));
        }
        parts.join("; ")
    }
}

/// A volume as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub backend: BackendKind,
    /// The quota in bytes (`null`: none).
    pub size: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub usage: Usage,
    pub created: DateTime<Utc>,
    pub used_by: UsedBy,
    pub capabilities: Capabilities,
    /// The volume's directory, relative to the array root.
    pub path: String,
}

/// A snapshot as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub volume: String,
    pub name: String,
    pub created: DateTime<Utc>,
}

fn bad(field: &str, reason: impl Into<String>) -> ManagerError {
    ManagerError::Invalid(InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

pub(super) fn check_name(field: &str, name: &str) -> Result<()> {
    names::VOLUME.check(name).map_err(|m| bad(field, m))
}

fn check_size(size: Option<u64>) -> Result<()> {
    match size {
        Some(s) if s < MIN_SIZE => Err(bad(
            "size",
            format!("{s} bytes is too small: at least {MIN_SIZE} (1 MiB)"),
        )),
        Some(s) if s > MAX_SIZE => Err(bad(
            "size",
            format!("{s} bytes is too large: at most {MAX_SIZE} (1 EiB)"),
        )),
        _ => Ok(()),
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(bad("labels", format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 128 || k.contains('\0') || v.len() > 4096 || v.contains('\0') {
            return Err(bad(
                &format!("labels[{:?}]", k.chars().take(40).collect::<String>()),
                "a key is 1 to 128 bytes, a value at most 4096, neither with NUL",
            ));
        }
    }
    Ok(())
}

/// The directory of a volume relative to the array root (what a container's bind resolves).
pub fn volume_path(name: &str) -> String {
    format!("{VOLUMES_DIR}/volumes/{name}")
}

pub(super) fn backend_error(e: BackendError) -> ManagerError {
    match e {
        BackendError::Unsupported(m) => bad("size", m),
        BackendError::NotReady(m) => ManagerError::Conflict(m),
        e @ BackendError::Io { .. } => internal("volume backend", e),
    }
}

pub(super) fn snapshot_unsupported(e: BackendError) -> ManagerError {
    match e {
        BackendError::Unsupported(m) => ManagerError::Conflict(m),
        e => backend_error(e),
    }
}

impl Manager {
    pub(super) fn backend(&self) -> Arc<dyn VolumeBackend> {
        self.inner.volume_backend.clone()
    }

    /// Runs a backend call on a blocking thread (ioctls, walks).
    pub(super) async fn on_backend<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn VolumeBackend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let b = self.backend();
        tokio::task::spawn_blocking(move || f(b.as_ref()))
            .await
            .unwrap_or_else(|e| {
                Err(BackendError::Io {
                    what: "volume task".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// The backend the array's filesystem gave this daemon.
    pub fn volume_backend_kind(&self) -> BackendKind {
        self.inner.volume_backend.kind()
    }

    pub(super) async fn ready_volume(&self, name: &str) -> Result<VolumeRow> {
        match self.inner.store.volume(name).await? {
            Some(r) if r.state == "ready" => Ok(r),
            _ => Err(ManagerError::NotFound {
                kind: "volume",
                key: name.to_owned(),
            }),
        }
    }

    /// Containers and jobs whose requests mount the volume `name`.
    pub async fn volume_users(&self, name: &str) -> Result<UsedBy> {
        let mut used = UsedBy::default();
        for c in self.inner.store.list_containers(true).await? {
            if let Ok(cfg) = serde_json::from_str::<ContainerConfig>(&c.spec) {
                if cfg
                    .volumes
                    .iter()
                    .any(|v| v.volume.as_deref() == Some(name))
                {
                    used.containers.push(c.name);
                }
            }
        }
        for j in self.inner.store.list_jobs().await? {
            let spec: serde_json::Value = serde_json::from_str(&j.spec).unwrap_or_default();
            let mounts = spec["container"]["volumes"].as_array().cloned();
            if mounts
                .unwrap_or_default()
                .iter()
                .any(|v| v["volume"].as_str() == Some(name))
            {
                used.jobs.push(j.name);
            }
        }
        let dir = volume_path(name);
        for e in self.inner.store.list_exports().await? {
            if e.path == dir || e.path.starts_with(&format!("{dir}/")) {
                used.exports.push(e.name);
            }
        }
        Ok(used)
    }

    /// Containers using the volume that are running now (a restore waits for them to stop).
    pub(super) async fn running_users(&self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for c in self.inner.store.list_containers(false).await? {
            if let Ok(cfg) = serde_json::from_str::<ContainerConfig>(&c.spec) {
                if cfg
                    .volumes
                    .iter()
                    .any(|v| v.volume.as_deref() == Some(name))
                {
                    out.push(c.name);
                }
            }
        }
        Ok(out)
    }

    async fn info(&self, row: VolumeRow) -> Result<VolumeInfo> {
        let n = row.name.clone();
        let usage = self
            .on_backend(move |b| b.usage(&n))
            .await
            .map_err(backend_error)?;
        let labels = serde_json::from_str(&row.labels).unwrap_or_default();
        Ok(VolumeInfo {
            used_by: self.volume_users(&row.name).await?,
            path: volume_path(&row.name),
            backend: if row.backend == "btrfs" {
                BackendKind::Btrfs
            } else {
                BackendKind::Plain
            },
            size: row.size.map(|s| s as u64),
            labels,
            usage,
            created: row.created_at,
            capabilities: self.backend().capabilities(),
            name: row.name,
        })
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for r in self.inner.store.list_volumes().await? {
            if r.state == "ready" {
                out.push(self.info(r).await?);
            }
        }
        Ok(out)
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let r = self.ready_volume(name).await?;
        self.info(r).await
    }

    /// Creates a volume: the row (`creating`), the backend's volume, the row `ready`.
    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo> {
        check_name("name", &spec.name)?;
        check_size(spec.size)?;
        check_labels(&spec.labels)?;
        let kind = self.backend().kind();
        let _g = self.inner.volume_lock.lock().await;
        let labels = serde_json::to_string(&spec.labels).map_err(|e| internal("labels", e))?;
        self.insert_creating(&spec.name, kind, spec.size, &labels)
            .await?;
        let (n, size) = (spec.name.clone(), spec.size);
        if let Err(e) = self.on_backend(move |b| b.create(&n, size)).await {
            self.forget_creating(&spec.name).await;
            return Err(backend_error(e));
        }
        self.inner
            .store
            .set_volume_state(&spec.name, "ready")
            .await?;
        self.emit(volume_event(EventType::VolumeCreate, &spec.name).with("size", spec.size))
            .await;
        drop(_g);
        self.volume(&spec.name).await
    }

    pub(super) async fn insert_creating(
        &self,
        name: &str,
        kind: BackendKind,
        size: Option<u64>,
        labels: &str,
    ) -> Result<()> {
        self.inner
            .store
            .insert_volume(NewVolume {
                name,
                backend: kind.as_str(),
                size: size.map(|s| s as i64),
                labels,
                project_id: None,
                created_at: Utc::now(),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("a volume named {name} already exists"))
                }
                e => e.into(),
            })
    }

    /// Undoes a create that failed: whatever the backend made, then the row.
    pub(super) async fn forget_creating(&self, name: &str) {
        let n = name.to_owned();
        if let Err(e) = self.on_backend(move |b| b.destroy(&n)).await {
            tracing::warn!(volume = name, error = %e, "cannot remove a volume whose create failed (reconcile retries)");
            return;
        }
        if let Err(e) = self.inner.store.delete_volume(name).await {
            tracing::warn!(volume = name, error = %e, "cannot remove the row of a failed volume");
        }
    }

    /// Changes a volume's size (live) and labels.
    pub async fn update_volume(&self, name: &str, patch: VolumePatch) -> Result<VolumeInfo> {
        if let Some(size) = patch.size {
            check_size(size)?;
        }
        if let Some(l) = &patch.labels {
            check_labels(l)?;
        }
        let _g = self.inner.volume_lock.lock().await;
        let row = self.ready_volume(name).await?;
        let size = match patch.size {
            Some(s) => s,
            None => row.size.map(|s| s as u64),
        };
        if patch.size.is_some() {
            let n = name.to_owned();
            self.on_backend(move |b| b.set_size(&n, size))
                .await
                .map_err(backend_error)?;
        }
        let labels = match &patch.labels {
            Some(l) => serde_json::to_string(l).map_err(|e| internal("labels", e))?,
            None => row.labels,
        };
        self.inner
            .store
            .update_volume(name, size.map(|s| s as i64), &labels)
            .await?;
        self.emit(volume_event(EventType::VolumeUpdate, name).with("size", size))
            .await;
        drop(_g);
        self.volume(name).await
    }

    /// Deletes a volume and its snapshots; refused (409, naming them) while anything uses it.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let _g = self.inner.volume_lock.lock().await;
        self.ready_volume(name).await?;
        let users = self.volume_users(name).await?;
        if !users.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "volume {name} is in use by {}",
                users.describe()
            )));
        }
        self.inner.store.set_volume_state(name, "deleting").await?;
        self.finish_delete(name).await?;
        self.emit(volume_event(EventType::VolumeDelete, name)).await;
        Ok(())
    }

    /// Removes the snapshots, the volume and the row of a volume marked `deleting`.
    async fn finish_delete(&self, name: &str) -> Result<()> {
        for s in self.inner.store.list_snapshots(name).await? {
            let (v, n) = (name.to_owned(), s.name.clone());
            self.on_backend(move |b| b.delete_snapshot(&v, &n))
                .await
                .map_err(backend_error)?;
            self.inner.store.delete_snapshot(name, &s.name).await?;
        }
        let n = name.to_owned();
        self.on_backend(move |b| b.destroy(&n))
            .await
            .map_err(backend_error)?;
        self.inner.store.delete_volume(name).await?;
        Ok(())
    }

    /// Makes the registry and the files agree after a crash (see the module's doc). Run at
    /// start, before any container starts.
    pub async fn reconcile_volumes(&self) -> Result<()> {
        let _g = self.inner.volume_lock.lock().await;
        let rows = self.inner.store.list_volumes().await?;
        if rows.is_empty() && !self.inner.opts.array_dir.join(VOLUMES_DIR).exists() {
            return Ok(());
        }
        for r in &rows {
            match r.state.as_str() {
                "creating" | "deleting" => {
                    tracing::info!(volume = %r.name, state = %r.state, "finishing a volume change a crash interrupted: removed");
                    self.finish_delete(&r.name).await?;
                    continue;
                }
                _ => {}
            }
            for s in self.inner.store.list_snapshots(&r.name).await? {
                if s.state != "ready" {
                    let (v, n) = (r.name.clone(), s.name.clone());
                    self.on_backend(move |b| b.delete_snapshot(&v, &n))
                        .await
                        .map_err(backend_error)?;
                    self.inner.store.delete_snapshot(&r.name, &s.name).await?;
                }
            }
        }
        let known: std::collections::HashSet<String> = self
            .inner
            .store
            .list_volumes()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        let entries = self.on_backend(|b| b.list()).await.map_err(backend_error)?;
        for e in entries {
            if e.starts_with('.') {
                // Work in progress of an interrupted restore: the volume kept its old contents.
                let n = e.clone();
                self.on_backend(move |b| b.destroy(&n))
                    .await
                    .map_err(backend_error)?;
            } else if !known.contains(&e) {
                tracing::warn!(entry = %e, dir = %volume_path(&e), "a volume directory without a registry entry (not made by this daemon): left alone");
            }
        }
        for name in &known {
            let n = name.clone();
            if !self
                .on_backend(move |b| b.exists(&n))
                .await
                .map_err(backend_error)?
            {
                tracing::error!(volume = %name, "a registered volume is missing from the array");
            }
        }
        Ok(())
    }

    /// The array path a container mount of the volume `name` resolves (the volume must exist);
    /// `field` names the request field in the error.
    pub(super) async fn volume_source(&self, field: &str, name: &str) -> Result<String> {
        check_name(field, name)?;
        match self.inner.store.volume(name).await? {
            Some(r) if r.state == "ready" => Ok(volume_path(name)),
            _ => Err(bad(field, format!("no such volume: {name}"))),
        }
    }
}

/// A volume's lifecycle event: volumes are known by their name (id and name alike).
pub(super) fn volume_event(kind: EventType, name: &str) -> crate::events::LifecycleEvent {
    crate::events::LifecycleEvent::new(kind, name, name)
}
