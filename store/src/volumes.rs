//! Array volume rows (the registry of volumes and their snapshots). What a volume is on disk is
//! the runtime's (`inarray_runtime::volume_backend`); these rows are the operator's intent plus a
//! state that makes creation and deletion crash-safe (see migration 0012).

use chrono::{DateTime, Utc};

use crate::{unique_conflict, Result, Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRow {
    pub name: String,
    pub backend: String,
    pub size: Option<i64>,
    /// JSON object of strings.
    pub labels: String,
    /// `creating | ready | deleting`.
    pub state: String,
    pub project_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub volume: String,
    pub name: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
}

/// A volume to record (in state `creating`).
pub struct NewVolume<'a> {
    pub name: &'a str,
    pub backend: &'a str,
    pub size: Option<i64>,
    pub labels: &'a str,
    pub project_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

type Tuple = (
    String,
    String,
    Option<i64>,
    String,
    String,
    Option<i64>,
    DateTime<Utc>,
);

fn row((name, backend, size, labels, state, project_id, created_at): Tuple) -> VolumeRow {
    VolumeRow {
        name,
        backend,
        size,
        labels,
        state,
        project_id,
        created_at,
    }
}

const COLUMNS: &str = "name, backend, size, labels, state, project_id, created_at";

impl Store {
    pub async fn list_volumes(&self) -> Result<Vec<VolumeRow>> {
        let rows: Vec<Tuple> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM volumes ORDER BY name"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    pub async fn volume(&self, name: &str) -> Result<Option<VolumeRow>> {
        let r: Option<Tuple> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM volumes WHERE name = ?"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(row))
    }

    /// Records a volume in state `creating`; a name taken is a conflict.
    pub async fn insert_volume(&self, v: NewVolume<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO volumes (name, backend, size, labels, state, project_id, created_at)
             VALUES (?, ?, ?, ?, 'creating', ?, ?)",
        )
        .bind(v.name)
        .bind(v.backend)
        .bind(v.size)
        .bind(v.labels)
        .bind(v.project_id)
        .bind(v.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "volume", v.name))?;
        Ok(())
    }

    /// Moves a volume to `state`; false if it does not exist.
    pub async fn set_volume_state(&self, name: &str, state: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE volumes SET state = ? WHERE name = ?")
            .bind(state)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Changes a volume's size and labels; false if it does not exist.
    pub async fn update_volume(&self, name: &str, size: Option<i64>, labels: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE volumes SET size = ?, labels = ? WHERE name = ?")
            .bind(size)
            .bind(labels)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a volume's row and its snapshots' rows.
    pub async fn delete_volume(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM volumes WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The smallest project id above `floor` no volume holds (ids are never shared: UNIQUE).
    pub async fn free_project_id(&self, floor: i64) -> Result<i64> {
        let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(project_id) FROM volumes")
            .fetch_one(&self.pool)
            .await?;
        Ok(max.map_or(floor, |m| m.max(floor - 1) + 1))
    }

    pub async fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotRow>> {
        let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT volume, name, state, created_at FROM volume_snapshots
             WHERE volume = ? ORDER BY created_at, name",
        )
        .bind(volume)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(volume, name, state, created_at)| SnapshotRow {
                volume,
                name,
                state,
                created_at,
            })
            .collect())
    }

    /// Records a snapshot in state `creating`; a name taken (for that volume) is a conflict.
    pub async fn insert_snapshot(
        &self,
        volume: &str,
        name: &str,
        created_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO volume_snapshots (volume, name, state, created_at) VALUES (?, ?, 'creating', ?)",
        )
        .bind(volume)
        .bind(name)
        .bind(created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "snapshot", &format!("{volume}@{name}")))?;
        Ok(())
    }

    pub async fn set_snapshot_state(&self, volume: &str, name: &str, state: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE volume_snapshots SET state = ? WHERE volume = ? AND name = ?")
                .bind(state)
                .bind(volume)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM volume_snapshots WHERE volume = ? AND name = ?")
            .bind(volume)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::{test_store, StoreError};

    use super::NewVolume;

    #[tokio::test]
    async fn volume_rows() {
        let (_d, store) = test_store().await;
        let new = |name: &'static str, project_id| NewVolume {
            name,
            backend: "btrfs",
            size: Some(1 << 20),
            labels: "{}",
            project_id,
            created_at: chrono::Utc::now(),
        };
        store.insert_volume(new("a", None)).await.unwrap();
        assert!(matches!(
            store.insert_volume(new("a", None)).await,
            Err(StoreError::Conflict { kind: "volume", .. })
        ));
        assert_eq!(store.volume("a").await.unwrap().unwrap().state, "creating");
        assert!(store.set_volume_state("a", "ready").await.unwrap());
        assert!(store
            .update_volume("a", Some(2 << 20), r#"{"k":"v"}"#)
            .await
            .unwrap());
        let a = store.volume("a").await.unwrap().unwrap();
        assert_eq!((a.size, a.state.as_str()), (Some(2 << 20), "ready"));
        // Project ids: never shared while a row holds one.
        assert_eq!(store.free_project_id(1000).await.unwrap(), 1000);
        store.insert_volume(new("p", Some(1000))).await.unwrap();
        assert_eq!(store.free_project_id(1000).await.unwrap(), 1001);
        assert!(store.insert_volume(new("q", Some(1000))).await.is_err());
        store
            .insert_snapshot("a", "s1", chrono::Utc::now())
            .await
            .unwrap();
        assert!(store
            .insert_snapshot("a", "s1", chrono::Utc::now())
            .await
            .is_err());
        assert_eq!(store.list_snapshots("a").await.unwrap().len(), 1);
        assert!(store.delete_volume("a").await.unwrap());
        assert!(store.list_snapshots("a").await.unwrap().is_empty());
        assert_eq!(store.list_volumes().await.unwrap().len(), 1);
    }
}
