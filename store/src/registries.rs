//! Registry credentials set through the API. The password column is a secret: callers never
//! return it (the runtime only hands it to the image puller).

use chrono::{DateTime, Utc};

use crate::{Result, Store};

#[derive(Clone)]
pub struct RegistryCredentialRow {
    pub registry: String,
    pub username: String,
    pub password: String,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for RegistryCredentialRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentialRow")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Store {
    pub async fn list_registry_credentials(&self) -> Result<Vec<RegistryCredentialRow>> {
        let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT registry, username, password, updated_at FROM registry_credentials ORDER BY registry",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(registry, username, password, updated_at)| RegistryCredentialRow {
                    registry,
                    username,
                    password,
                    updated_at,
                },
            )
            .collect())
    }

    /// Sets (replacing) the credentials of a registry.
    pub async fn put_registry_credentials(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO registry_credentials (registry, username, password, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(registry) DO UPDATE SET username = excluded.username,
                 password = excluded.password, updated_at = excluded.updated_at",
        )
        .bind(registry)
        .bind(username)
        .bind(password)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a registry's credentials; false when it had none.
    pub async fn delete_registry_credentials(&self, registry: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM registry_credentials WHERE registry = ?")
            .bind(registry)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
