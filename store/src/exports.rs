//! NFS export rows and the key that authenticates NFS file handles.
//!
//! The rows are the operator's intent; their shape (client matches, squash modes) is validated by
//! the NFS gateway crate before it reaches here. `id` is embedded in file handles and is never
//! reused (AUTOINCREMENT), so a handle from a deleted export can never name a file of a new one.

use chrono::{DateTime, Utc};

use crate::{parse_json, unique_conflict, Result, Store, StoreError};

/// One client rule of an export, as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportClientRow {
    #[serde(rename = "match")]
    pub matches: String,
    pub access: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRow {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub clients: Vec<ExportClientRow>,
    pub squash: String,
    pub anon_uid: i64,
    pub anon_gid: i64,
    /// Declared in the config file (which then decides whether it exists), not made by the API.
    pub from_config: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An export to insert or to replace (by name).
pub struct NewExport<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub clients: &'a [ExportClientRow],
    pub squash: &'a str,
    pub anon_uid: i64,
    pub anon_gid: i64,
}

const COLUMNS: &str =
    "id, name, path, clients, squash, anon_uid, anon_gid, from_config, created_at, updated_at";

fn row_from(r: &sqlx::sqlite::SqliteRow) -> Result<ExportRow> {
    use sqlx::Row;
    let clients: String = r.try_get("clients")?;
    Ok(ExportRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        path: r.try_get("path")?,
        clients: parse_json("export clients", &clients)?,
        squash: r.try_get("squash")?,
        anon_uid: r.try_get("anon_uid")?,
        anon_gid: r.try_get("anon_gid")?,
        from_config: r.try_get("from_config")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn clients_json(clients: &[ExportClientRow]) -> Result<String> {
    serde_json::to_string(clients).map_err(|e| StoreError::Corrupt {
        what: "export clients",
        detail: e.to_string(),
    })
}

impl Store {
    pub async fn insert_export(&self, e: NewExport<'_>) -> Result<ExportRow> {
        let now = Utc::now();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO exports (name, path, clients, squash, anon_uid, anon_gid, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(e.name)
        .bind(e.path)
        .bind(clients_json(e.clients)?)
        .bind(e.squash)
        .bind(e.anon_uid)
        .bind(e.anon_gid)
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|err| unique_conflict(err, "export", e.name))?;
        self.export_by_id(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "export",
                detail: format!("{} vanished after insert", e.name),
            })
    }

    /// Replaces every field of the export named `e.name` but its id; None when there is none.
    pub async fn update_export(&self, e: NewExport<'_>) -> Result<Option<ExportRow>> {
        let id: Option<(i64,)> = sqlx::query_as(
            "UPDATE exports SET path = ?, clients = ?, squash = ?, anon_uid = ?, anon_gid = ?,
               updated_at = ? WHERE name = ? RETURNING id",
        )
        .bind(e.path)
        .bind(clients_json(e.clients)?)
        .bind(e.squash)
        .bind(e.anon_uid)
        .bind(e.anon_gid)
        .bind(Utc::now())
        .bind(e.name)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some((id,)) => self.export_by_id(id).await,
            None => Ok(None),
        }
    }

    pub async fn export_by_id(&self, id: i64) -> Result<Option<ExportRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM exports WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row_from).transpose()
    }

    pub async fn export(&self, name: &str) -> Result<Option<ExportRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM exports WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row_from).transpose()
    }

    pub async fn list_exports(&self) -> Result<Vec<ExportRow>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM exports ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_from).collect()
    }

    /// Marks the export named `name` as declared in the config file (or not); false when there is
    /// no such export.
    pub async fn set_export_from_config(&self, name: &str, from_config: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE exports SET from_config = ? WHERE name = ?")
            .bind(from_config)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_export(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM exports WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The NFS handle key: the stored one, or `fresh` stored now when there is none yet (the first
    /// start). Every later call returns the same bytes.
    pub async fn nfs_handle_key(&self, fresh: &[u8]) -> Result<Vec<u8>> {
        sqlx::query("INSERT OR IGNORE INTO nfs_handle_key (id, key) VALUES (1, ?)")
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        let (key,): (Vec<u8>,) = sqlx::query_as("SELECT key FROM nfs_handle_key WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store;

    fn rw_all() -> Vec<ExportClientRow> {
        vec![ExportClientRow {
            matches: "*".into(),
            access: "rw".into(),
        }]
    }

    #[tokio::test]
    async fn export_round_trip_and_ids_are_never_reused() {
        let (_d, store) = test_store().await;
        let clients = rw_all();
        let new = |name: &'static str| NewExport {
            name,
            path: "data",
            clients: &clients,
            squash: "root",
            anon_uid: 65534,
            anon_gid: 65534,
        };
        let a = store.insert_export(new("a")).await.unwrap();
        assert_eq!((a.name.as_str(), a.path.as_str()), ("a", "data"));
        assert_eq!(a.clients, clients);
        assert!(matches!(
            store.insert_export(new("a")).await,
            Err(StoreError::Conflict { kind: "export", .. })
        ));
        let ro = vec![ExportClientRow {
            matches: "10.0.0.0/8".into(),
            access: "ro".into(),
        }];
        let upd = store
            .update_export(NewExport {
                clients: &ro,
                squash: "all",
                ..new("a")
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((upd.id, upd.squash.as_str()), (a.id, "all"));
        assert_eq!(upd.clients, ro);
        assert!(store.update_export(new("zz")).await.unwrap().is_none());
        // The config-file mark: off for API exports, kept by updates.
        assert!(!upd.from_config);
        assert!(store.set_export_from_config("a", true).await.unwrap());
        assert!(!store.set_export_from_config("zz", true).await.unwrap());
        let upd = store.update_export(new("a")).await.unwrap().unwrap();
        assert!(upd.from_config);
        assert!(store.delete_export("a").await.unwrap());
        assert!(!store.delete_export("a").await.unwrap());
        let again = store.insert_export(new("a")).await.unwrap();
        assert!(again.id > a.id, "an id is never reused");
        assert_eq!(store.list_exports().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_handle_key_is_kept() {
        let (_d, store) = test_store().await;
        let first = store.nfs_handle_key(&[1; 32]).await.unwrap();
        assert_eq!(first, vec![1; 32]);
        assert_eq!(store.nfs_handle_key(&[2; 32]).await.unwrap(), vec![1; 32]);
    }
}
