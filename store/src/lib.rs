//! The one place that owns SQL: embedded migrations and typed queries.
//!
//! SQLite is opened in WAL mode with `synchronous=FULL`, so a write acknowledged to a caller survives
//! a crash or power loss. Every other crate sees typed rows, never SQL.

mod access;
mod boots;
mod containers;
mod engines;
mod events;
mod execs;
mod exports;
mod images;
mod jobs;
mod lifecycle;
pub mod names;
mod networks;
mod registries;
mod volumes;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use access::{AuditRow, NewAudit, TokenRow};
pub use boots::{BootChange, BootRow};
pub use containers::{ContainerRow, ContainerState, ExitUpdate, NewContainer};
pub use engines::EngineRow;
pub use events::{
    EventFilter, EventRow, LoggedEvent, NewEvent, StateEntry, SubscriptionRow, TypeMatch, WatchRow,
    FILE,
};
pub use execs::ExecRow;
pub use exports::{ExportClientRow, ExportRow, NewExport};
pub use images::{ImageRow, NewImage};
pub use jobs::{HistoryLimits, JobBatch, JobRow, NewRun, RunRow, RunState, RunTrigger, RunUpdate};
pub use lifecycle::NewLifecycleEvent;
pub use networks::{EndpointRow, NetworkRow};
pub use registries::RegistryCredentialRow;
pub use volumes::{NewVolume, SnapshotRow, VolumeRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{kind} {key} already exists")]
    Conflict { kind: &'static str, key: String },
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether `error`, or any error in its source chain, says a disk is full: an I/O error ENOSPC
/// (or EDQUOT) from any layer, or SQLite's SQLITE_FULL. Decided by kind, never by the message's
/// words, so every crate's errors are classified alike (the API answers 507 for them).
pub fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            // SQLITE_FULL (13), possibly with an extended code in the upper bits.
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff)
                == Some(13)
            {
                return true;
            }
        }
        if let Some(sqlx::Error::Io(io)) = e.downcast_ref::<sqlx::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// A handle on the state database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        // Root-only: the database holds registry credentials.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ =
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        }
        Ok(Self { pool })
    }

    /// `PRAGMA integrity_check`: "ok" when the database is sound.
    pub async fn integrity_check(&self) -> Result<String> {
        let (s,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?;
        Ok(s)
    }

    /// A cheap round trip to the database (for health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Maps a UNIQUE violation to [`StoreError::Conflict`].
fn unique_conflict(err: sqlx::Error, kind: &'static str, key: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
            kind,
            key: key.to_owned(),
        },
        _ => StoreError::Sql(err),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) async fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_twice_and_is_sound() {
        let (dir, store) = test_store().await;
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        store.close().await;
        // Reopening applies no migration twice.
        let again = Store::open(&dir.path().join("state.db")).await.unwrap();
        assert_eq!(again.integrity_check().await.unwrap(), "ok");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&again.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
