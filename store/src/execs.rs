//! Exec rows: processes started in running containers. The runtime's request is kept as JSON;
//! the pid and the exit come from the container's shim.

use chrono::{DateTime, Utc};

use crate::{Result, Store, StoreError};

/// `created` (recorded, not started), `running`, `exited` (exit code or error recorded).
#[derive(Clone, Debug)]
pub struct ExecRow {
    pub id: String,
    pub container_id: String,
    pub config: String,
    pub state: String,
    pub pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, container_id, config, state, pid, exit_code, error, created_at, started_at, finished_at";

fn row_from(r: &sqlx::sqlite::SqliteRow) -> Result<ExecRow> {
    use sqlx::Row;
    Ok(ExecRow {
        id: r.try_get("id")?,
        container_id: r.try_get("container_id")?,
        config: r.try_get("config")?,
        state: r.try_get("state")?,
        pid: r.try_get("pid")?,
        exit_code: r.try_get("exit_code")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

impl Store {
    /// Records a new exec of `container_id`, and forgets the container's oldest ended execs
    /// beyond the `keep` most recent ones.
    pub async fn insert_exec(
        &self,
        id: &str,
        container_id: &str,
        config: &str,
        now: DateTime<Utc>,
        keep: u32,
    ) -> Result<ExecRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO execs (id, container_id, config, state, created_at)
             VALUES (?, ?, ?, 'created', ?)",
        )
        .bind(id)
        .bind(container_id)
        .bind(config)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM execs WHERE container_id = ?1 AND state = 'exited' AND id NOT IN
               (SELECT id FROM execs WHERE container_id = ?1 ORDER BY created_at DESC LIMIT ?2)",
        )
        .bind(container_id)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.exec(id).await?.ok_or_else(|| StoreError::Corrupt {
            what: "exec",
            detail: format!("{id} vanished after insert"),
        })
    }

    pub async fn exec(&self, id: &str) -> Result<Option<ExecRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM execs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row_from).transpose()
    }

    /// Execs of `container_id` in `state`, oldest first.
    pub async fn execs_in_state(&self, container_id: &str, state: &str) -> Result<Vec<ExecRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM execs WHERE container_id = ? AND state = ? ORDER BY created_at"
        ))
        .bind(container_id)
        .bind(state)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_from).collect()
    }

    /// Every running exec (reconcile at start).
    pub async fn running_execs(&self) -> Result<Vec<ExecRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM execs WHERE state = 'running' ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_from).collect()
    }

    /// Moves a `created` exec to `running`; false if it was not `created` (started already).
    pub async fn claim_exec_start(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE execs SET state = 'running', started_at = ? WHERE id = ? AND state = 'created'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_exec_pid(&self, id: &str, pid: i64) -> Result<()> {
        sqlx::query("UPDATE execs SET pid = ? WHERE id = ?")
            .bind(pid)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how an exec ended (an exit code, or the error that kept it from running).
    pub async fn mark_exec_exited(
        &self,
        id: &str,
        exit_code: Option<i64>,
        error: Option<&str>,
        finished_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE execs SET state = 'exited', exit_code = ?, error = ?, finished_at = ?
             WHERE id = ? AND state <> 'exited'",
        )
        .bind(exit_code)
        .bind(error)
        .bind(finished_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{test_store, NewContainer, NewImage};
    use chrono::Utc;

    #[tokio::test]
    async fn exec_rows_start_once_end_once_and_are_pruned() {
        let (_dir, store) = test_store().await;
        let image = format!("sha256:{}", "ab".repeat(32));
        store
            .put_image(NewImage {
                id: &image,
                manifest_digest: "sha256:00",
                names: &["busybox:latest".to_owned()],
                config: &serde_json::json!({}),
                layers: &serde_json::json!([]),
                size: 1,
            })
            .await
            .unwrap();
        store
            .insert_container(NewContainer {
                id: "c1",
                name: "one",
                image_id: &image,
                image_ref: "busybox",
                spec: "{}",
                engine: "default",
            })
            .await
            .unwrap();
        let now = Utc::now();
        let e = store.insert_exec("e1", "c1", "{}", now, 2).await.unwrap();
        assert_eq!(e.state, "created");
        assert!(store.claim_exec_start("e1", now).await.unwrap());
        assert!(
            !store.claim_exec_start("e1", now).await.unwrap(),
            "starts once"
        );
        store.set_exec_pid("e1", 42).await.unwrap();
        assert_eq!(store.running_execs().await.unwrap().len(), 1);
        store
            .mark_exec_exited("e1", Some(7), None, now)
            .await
            .unwrap();
        store
            .mark_exec_exited("e1", Some(9), None, now)
            .await
            .unwrap();
        let e = store.exec("e1").await.unwrap().unwrap();
        assert_eq!(
            (e.state.as_str(), e.exit_code, e.pid),
            ("exited", Some(7), Some(42))
        );
        // Keep 2: the ended e1 is forgotten once two newer execs exist.
        for id in ["e2", "e3"] {
            let later = now + chrono::Duration::seconds(1);
            store.insert_exec(id, "c1", "{}", later, 2).await.unwrap();
        }
        assert!(store.exec("e1").await.unwrap().is_none());
        assert!(store.exec("e2").await.unwrap().is_some());
        // Removing the container removes its execs.
        store.delete_container("c1").await.unwrap();
        assert!(store.exec("e3").await.unwrap().is_none());
    }
}
