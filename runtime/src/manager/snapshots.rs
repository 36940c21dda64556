//! Snapshots of array volumes: take, list, delete, restore, and clone into a new volume.
//!
//! The same crash rule as volumes (`volumes.rs`): a snapshot row is `creating` before the
//! backend makes it and `ready` after, `deleting` before it is removed; reconcile removes what
//! a `creating`/`deleting` row names. A restore changes no row: the backend builds the copy
//! under a dot-name and swaps it in with one atomic rename (reconcile removes a leftover copy),
//! so the volume holds either its old contents or the snapshot's. A clone is a volume create
//! whose backend step is a copy-on-write snapshot.

use chrono::Utc;
use inarray_store::StoreError;

use super::volumes::{backend_error, check_name, snapshot_unsupported, volume_event, volume_path};
use super::{Manager, ManagerError, Result, SnapshotInfo, VolumeInfo};
use crate::events::EventType;

impl Manager {
    pub async fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        self.ready_volume(volume).await?;
        Ok(self
            .inner
            .store
            .list_snapshots(volume)
            .await?
            .into_iter()
            .filter(|s| s.state == "ready")
            .map(|s| SnapshotInfo {
                volume: s.volume,
                name: s.name,
                created: s.created_at,
            })
            .collect())
    }

    async fn ready_snapshot(&self, volume: &str, name: &str) -> Result<()> {
        let found = self
            .inner
            .store
            .list_snapshots(volume)
            .await?
            .into_iter()
            .any(|s| s.name == name && s.state == "ready");
        if found {
            Ok(())
        } else {
            Err(ManagerError::NotFound {
                kind: "snapshot",
                key: format!("{volume}@{name}"),
            })
        }
    }

    /// Takes a read-only, atomic snapshot of a volume (also while containers write to it).
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotInfo> {
        check_name("name", name)?;
        let _g = self.inner.volume_lock.lock().await;
        self.ready_volume(volume).await?;
        if !self.backend().capabilities().snapshots {
            return Err(snapshot_unsupported(
                crate::volume_backend::BackendError::Unsupported(
                    "the array's volume backend (plain directories) has no snapshots: they need btrfs"
                        .into(),
                ),
            ));
        }
        let created = Utc::now();
        self.inner
            .store
            .insert_snapshot(volume, name, created)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => ManagerError::Conflict(format!(
                    "volume {volume} already has a snapshot named {name}"
                )),
                e => e.into(),
            })?;
        let (v, n) = (volume.to_owned(), name.to_owned());
        if let Err(e) = self.on_backend(move |b| b.snapshot(&v, &n)).await {
            let (v, n) = (volume.to_owned(), name.to_owned());
            if self
                .on_backend(move |b| b.delete_snapshot(&v, &n))
                .await
                .is_ok()
            {
                let _ = self.inner.store.delete_snapshot(volume, name).await;
            }
            return Err(snapshot_unsupported(e));
        }
        self.inner
            .store
            .set_snapshot_state(volume, name, "ready")
            .await?;
        self.emit(volume_event(EventType::VolumeSnapshot, volume).with("snapshot", name))
            .await;
        Ok(SnapshotInfo {
            volume: volume.to_owned(),
            name: name.to_owned(),
            created,
        })
    }

    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<()> {
        let _g = self.inner.volume_lock.lock().await;
        self.ready_snapshot(volume, name).await?;
        self.inner
            .store
            .set_snapshot_state(volume, name, "deleting")
            .await?;
        let (v, n) = (volume.to_owned(), name.to_owned());
        self.on_backend(move |b| b.delete_snapshot(&v, &n))
            .await
            .map_err(backend_error)?;
        self.inner.store.delete_snapshot(volume, name).await?;
        self.emit(volume_event(EventType::VolumeSnapshotDelete, volume).with("snapshot", name))
            .await;
        Ok(())
    }

    /// Gives the volume back the snapshot's contents; refused (409) while a running container
    /// mounts it.
    pub async fn restore_snapshot(&self, volume: &str, name: &str) -> Result<VolumeInfo> {
        let _g = self.inner.volume_lock.lock().await;
        let row = self.ready_volume(volume).await?;
        self.ready_snapshot(volume, name).await?;
        let running = self.running_users(volume).await?;
        if !running.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "volume {volume} is in use by running containers {}: stop them first",
                running.join(", ")
            )));
        }
        let size = row.size.map(|s| s as u64);
        let (v, n) = (volume.to_owned(), name.to_owned());
        self.on_backend(move |b| b.restore(&v, &n, size))
            .await
            .map_err(snapshot_unsupported)?;
        self.emit(volume_event(EventType::VolumeRestore, volume).with("snapshot", name))
            .await;
        drop(_g);
        self.volume(volume).await
    }

    /// Makes the new volume `target` from a snapshot of `volume` (or the live volume when
    /// `snapshot` is `None`), with the source's size and labels unless given.
    pub async fn clone_volume(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        target: &str,
        size: Option<u64>,
    ) -> Result<VolumeInfo> {
        check_name("name", target)?;
        if let Some(s) = size {
            if !(super::volumes::MIN_SIZE..=super::volumes::MAX_SIZE).contains(&s) {
                return Err(ManagerError::Invalid(crate::config::InvalidField {
                    field: "size".into(),
                    reason: format!(
                        "{s} bytes: a size is between {} and {} bytes",
                        super::volumes::MIN_SIZE,
                        super::volumes::MAX_SIZE
                    ),
                }));
            }
        }
        let _g = self.inner.volume_lock.lock().await;
        let row = self.ready_volume(volume).await?;
        if let Some(s) = snapshot {
            self.ready_snapshot(volume, s).await?;
        }
        if !self.backend().capabilities().snapshots {
            return Err(ManagerError::Conflict(
                "the array's volume backend (plain directories) has no clones: they need btrfs"
                    .into(),
            ));
        }
        let size = size.or(row.size.map(|s| s as u64));
        let kind = self.backend().kind();
        self.insert_creating(target, kind, size, &row.labels)
            .await?;
        let (v, s, t) = (
            volume.to_owned(),
            snapshot.map(str::to_owned),
            target.to_owned(),
        );
        if let Err(e) = self
            .on_backend(move |b| b.clone_volume(&v, s.as_deref(), &t, size))
            .await
        {
            self.forget_creating(target).await;
            return Err(snapshot_unsupported(e));
        }
        self.inner.store.set_volume_state(target, "ready").await?;
        self.emit(
            volume_event(EventType::VolumeCreate, target)
                .with("size", size)
                .with("cloned_from", volume)
                .with("snapshot", snapshot),
        )
        .await;
        tracing::debug!(volume, target, path = %volume_path(target), "volume cloned");
        drop(_g);
        self.volume(target).await
    }
}
