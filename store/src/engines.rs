//! Engine rows: a name and its limits (a JSON document owned by the runtime crate).

use chrono::{DateTime, Utc};

use crate::{unique_conflict, Result, Store};

#[derive(Clone, Debug)]
pub struct EngineRow {
    pub name: String,
    pub resources: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    pub async fn list_engines(&self) -> Result<Vec<EngineRow>> {
        let rows: Vec<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, resources, created_at FROM engines ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, resources, created_at)| EngineRow {
                name,
                resources,
                created_at,
            })
            .collect())
    }

    pub async fn engine(&self, name: &str) -> Result<Option<EngineRow>> {
        let row: Option<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, resources, created_at FROM engines WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(name, resources, created_at)| EngineRow {
            name,
            resources,
            created_at,
        }))
    }

    /// Adds an engine; a name taken is a conflict.
    pub async fn insert_engine(&self, name: &str, resources: &str) -> Result<()> {
        sqlx::query("INSERT INTO engines (name, resources, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(resources)
            .bind(Utc::now())
            .execute(&self.pool)
            .await
            .map_err(|e| unique_conflict(e, "engine", name))?;
        Ok(())
    }

    /// Adds the engine if it is missing; leaves an existing one as it is. Returns true if added.
    pub async fn ensure_engine(&self, name: &str, resources: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO engines (name, resources, created_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(resources)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn update_engine(&self, name: &str, resources: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE engines SET resources = ? WHERE name = ?")
            .bind(resources)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_engine(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM engines WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Names of the containers (any state) in an engine.
    pub async fn engine_users(&self, name: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM containers WHERE engine = ?")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::{test_store, StoreError};

    #[tokio::test]
    async fn engine_rows() {
        let (_d, store) = test_store().await;
        assert!(store.ensure_engine("default", "{}").await.unwrap());
        assert!(!store
            .ensure_engine("default", r#"{"pids":1}"#)
            .await
            .unwrap());
        assert_eq!(
            store.engine("default").await.unwrap().unwrap().resources,
            "{}"
        );
        store
            .insert_engine("batch", r#"{"memory":1}"#)
            .await
            .unwrap();
        let dup = store.insert_engine("batch", "{}").await;
        assert!(matches!(
            dup,
            Err(StoreError::Conflict { kind: "engine", .. })
        ));
        assert!(store.update_engine("batch", r#"{"pids":5}"#).await.unwrap());
        assert_eq!(store.list_engines().await.unwrap().len(), 2);
        assert!(store.engine_users("batch").await.unwrap().is_empty());
        assert!(store.delete_engine("batch").await.unwrap());
        assert!(store.engine("batch").await.unwrap().is_none());
    }
}
