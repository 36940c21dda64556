//! Container rows: the daemon's record of every container and its lifecycle.
//!
//! The SQL row is the source of truth for what the operator asked for (spec, stop requests, restart
//! counts); the shim's files are the source of truth for what happened to the process (pid, exit).
//! The runtime's reconcile copies the latter into the former.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::{unique_conflict, Result, Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Recorded, never started (or waiting for its first start).
    Created,
    /// A shim supervises a live process.
    Running,
    /// Exited; the restart policy will start it again after a backoff.
    Restarting,
    /// Exited and stays so.
    Exited,
    /// Supervision was lost or the start failed; `error` says why.
    Dead,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContainerState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "restarting" => Self::Restarting,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            other => {
                return Err(StoreError::Corrupt {
                    what: "container state",
                    detail: other.to_owned(),
                })
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct ContainerRow {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub image_ref: String,
    /// JSON of the validated request (owned by the runtime crate).
    pub spec: String,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub pid: Option<i64>,
    pub shim_pid: Option<i64>,
    pub shim_start: Option<i64>,
    pub stop_requested: bool,
    pub restart_count: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub engine: String,
    /// The last exit was a kill by the memory cap.
    pub oom_killed: bool,
}

pub struct NewContainer<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub image_id: &'a str,
    pub image_ref: &'a str,
    pub spec: &'a str,
    pub engine: &'a str,
}

/// What a shim reported when its container ended.
#[derive(Clone, Debug)]
pub struct ExitUpdate {
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub finished_at: DateTime<Utc>,
    pub oom_killed: bool,
}

const COLUMNS: &str =
    "id, name, image_id, image_ref, spec, state, exit_code, error, pid, shim_pid, \
     shim_start, stop_requested, restart_count, created_at, started_at, finished_at, engine, oom_killed";

fn row_from(r: &sqlx::sqlite::SqliteRow) -> Result<ContainerRow> {
    use sqlx::Row;
    let state: String = r.try_get("state")?;
    Ok(ContainerRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        image_id: r.try_get("image_id")?,
        image_ref: r.try_get("image_ref")?,
        spec: r.try_get("spec")?,
        state: state.parse()?,
        exit_code: r.try_get("exit_code")?,
        error: r.try_get("error")?,
        pid: r.try_get("pid")?,
        shim_pid: r.try_get("shim_pid")?,
        shim_start: r.try_get("shim_start")?,
        stop_requested: r.try_get("stop_requested")?,
        restart_count: r.try_get("restart_count")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        engine: r.try_get("engine")?,
        oom_killed: r.try_get("oom_killed")?,
    })
}

impl Store {
    pub async fn insert_container(&self, c: NewContainer<'_>) -> Result<ContainerRow> {
        sqlx::query(
            "INSERT INTO containers (id, name, image_id, image_ref, spec, state, created_at, engine)
             VALUES (?, ?, ?, ?, ?, 'created', ?, ?)",
        )
        .bind(c.id)
        .bind(c.name)
        .bind(c.image_id)
        .bind(c.image_ref)
        .bind(c.spec)
        .bind(Utc::now())
        .bind(c.engine)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "container", c.name))?;
        self.container(c.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "container",
                detail: format!("{} vanished after insert", c.id),
            })
    }

    pub async fn container(&self, id: &str) -> Result<Option<ContainerRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM containers WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row_from).transpose()
    }

    /// Finds by exact id, exact name, or a unique id prefix (at least 4 characters).
    pub async fn find_container(&self, key: &str) -> Result<Option<ContainerRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM containers WHERE id = ?1 OR name = ?1
             UNION ALL SELECT {COLUMNS} FROM containers WHERE length(?1) >= 4 AND substr(id, 1, length(?1)) = ?1
               AND id <> ?1 AND name <> ?1"
        ))
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<ContainerRow> = rows.iter().map(row_from).collect::<Result<_>>()?;
        if let Some(exact) = rows.iter().find(|r| r.id == key || r.name == key) {
            return Ok(Some(exact.clone()));
        }
        Ok(if rows.len() == 1 {
            rows.into_iter().next()
        } else {
            None
        })
    }

    pub async fn list_containers(&self, all: bool) -> Result<Vec<ContainerRow>> {
        let filter = if all {
            ""
        } else {
            "WHERE state IN ('running', 'restarting')"
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM containers {filter} ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_from).collect()
    }

    /// A shim reported a started container.
    pub async fn mark_running(
        &self,
        id: &str,
        pid: i64,
        shim_pid: i64,
        shim_start: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE containers SET state = 'running', pid = ?, shim_pid = ?, shim_start = ?,
               started_at = ?, finished_at = NULL, exit_code = NULL, error = NULL WHERE id = ?",
        )
        .bind(pid)
        .bind(shim_pid)
        .bind(shim_start)
        .bind(Utc::now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an exit (or a failed start, or lost supervision).
    pub async fn mark_exited(&self, id: &str, u: &ExitUpdate) -> Result<()> {
        sqlx::query(
            "UPDATE containers SET state = ?, exit_code = ?, error = ?, finished_at = ?,
               oom_killed = ?, pid = NULL, shim_pid = NULL, shim_start = NULL WHERE id = ?",
        )
        .bind(u.state.as_str())
        .bind(u.exit_code)
        .bind(&u.error)
        .bind(u.finished_at)
        .bind(u.oom_killed)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_state(&self, id: &str, state: ContainerState) -> Result<()> {
        sqlx::query("UPDATE containers SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_stop_requested(&self, id: &str, requested: bool) -> Result<()> {
        sqlx::query("UPDATE containers SET stop_requested = ? WHERE id = ?")
            .bind(requested)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces the stored request (a live resource update).
    pub async fn set_spec(&self, id: &str, spec: &str) -> Result<()> {
        sqlx::query("UPDATE containers SET spec = ? WHERE id = ?")
            .bind(spec)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives the container another name, with its stored request (which names it too); a name
    /// another container has is a conflict.
    pub async fn rename_container(&self, id: &str, name: &str, spec: &str) -> Result<()> {
        sqlx::query("UPDATE containers SET name = ?, spec = ? WHERE id = ?")
            .bind(name)
            .bind(spec)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_conflict(e, "container", name))?;
        Ok(())
    }

    /// Counts one restart; returns the new count.
    pub async fn bump_restart_count(&self, id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "UPDATE containers SET restart_count = restart_count + 1 WHERE id = ? RETURNING restart_count",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    pub async fn delete_container(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM containers WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_store, NewImage};

    async fn with_image(store: &Store) -> String {
        let id = format!("sha256:{}", "cd".repeat(32));
        store
            .put_image(NewImage {
                id: &id,
                manifest_digest: "sha256:00",
                names: &["img:latest".to_owned()],
                config: &serde_json::json!({}),
                layers: &serde_json::json!([]),
                size: 1,
            })
            .await
            .unwrap();
        id
    }

    #[tokio::test]
    async fn lifecycle_round_trip() {
        let (_d, store) = test_store().await;
        let image = with_image(&store).await;
        let c = store
            .insert_container(NewContainer {
                id: "0123456789abcdef",
                name: "web",
                image_id: &image,
                image_ref: "img:latest",
                spec: "{}",
                engine: "default",
            })
            .await
            .unwrap();
        assert_eq!(c.state, ContainerState::Created);
        let dup = store
            .insert_container(NewContainer {
                id: "fedcba9876543210",
                name: "web",
                image_id: &image,
                image_ref: "img:latest",
                spec: "{}",
                engine: "default",
            })
            .await;
        assert!(
            matches!(
                dup,
                Err(StoreError::Conflict {
                    kind: "container",
                    ..
                })
            ),
            "{dup:?}"
        );
        assert!(store.list_containers(false).await.unwrap().is_empty());
        store
            .mark_running("0123456789abcdef", 42, 41, 1000)
            .await
            .unwrap();
        let c = store.find_container("web").await.unwrap().unwrap();
        assert_eq!(
            (c.state, c.pid, c.shim_pid),
            (ContainerState::Running, Some(42), Some(41))
        );
        assert!(
            store.find_container("0123").await.unwrap().is_some(),
            "id prefix"
        );
        assert!(
            store.find_container("012").await.unwrap().is_none(),
            "too short a prefix"
        );
        assert_eq!(store.list_containers(false).await.unwrap().len(), 1);
        let upd = ExitUpdate {
            state: ContainerState::Exited,
            exit_code: Some(3),
            error: None,
            finished_at: Utc::now(),
            oom_killed: false,
        };
        store.mark_exited("0123456789abcdef", &upd).await.unwrap();
        let c = store.container("0123456789abcdef").await.unwrap().unwrap();
        assert_eq!(
            (c.state, c.exit_code, c.pid),
            (ContainerState::Exited, Some(3), None)
        );
        assert_eq!(store.bump_restart_count(&c.id).await.unwrap(), 1);
        assert_eq!(store.image_users(&image).await.unwrap(), vec!["web"]);
        assert!(store.delete_container(&c.id).await.unwrap());
        assert!(store.container(&c.id).await.unwrap().is_none());
    }
}
