//! The exports service: the one way exports are read and changed, by the API's handlers and by
//! the config file (at start and on SIGHUP) alike. It owns the store handle for the `exports`
//! rows and the gateway's reload signal: every change is written to SQL first, then the gateway
//! of this process (if one serves) is woken to re-read its table at once (it also re-reads every
//! 2 s and at every MNT). New mounts see a change; existing handles are checked against the new
//! client rules on their next call.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use inarray_store::{ExportRow, Store, StoreError};
use tokio::sync::Notify;

use crate::exports::{ExportPatch, ExportSpec, Invalid};

/// A stored export: its definition and bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    pub spec: ExportSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why an export operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("no such export: {0}")]
    NotFound(String),
    #[error("an export named {0:?} already exists")]
    Conflict(String),
    /// Declared twice in the config file.
    #[error("export {0} is declared twice in the config file")]
    Duplicate(String),
    /// An export of the config file is invalid.
    #[error("export {name}: {source}")]
    Config { name: String, source: Invalid },
    /// A row this version cannot read (an internal error, not the caller's).
    #[error("export {name}: the stored row is unreadable: {source}")]
    Unreadable { name: String, source: Invalid },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The exports service; cheap to clone (every clone shares the reload signal).
#[derive(Clone)]
pub struct Exports {
    store: Store,
    changed: Arc<Notify>,
    /// Told of every change once it is in SQL (the daemon records a lifecycle event).
    hook: Arc<std::sync::OnceLock<ChangeHook>>,
}

/// A change of an export: `action` is `create`, `update` or `delete`; `origin` is `api` or
/// `config` (the config file, at start or on SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportChange {
    pub action: &'static str,
    pub name: String,
    /// Relative to the array root (None for a delete).
    pub path: Option<String>,
    pub origin: &'static str,
}

/// Called with each change; the future completes once it is recorded.
pub type ChangeHook = Arc<
    dyn Fn(ExportChange) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

fn stored(row: &ExportRow) -> Result<Export, ExportError> {
    Ok(Export {
        spec: ExportSpec::try_from(row).map_err(|source| ExportError::Unreadable {
            name: row.name.clone(),
            source,
        })?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

impl Exports {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            changed: Arc::new(Notify::new()),
            hook: Arc::default(),
        }
    }

    /// Tells `hook` of every change from now on (set once).
    pub fn on_change(&self, hook: ChangeHook) {
        let _ = self.hook.set(hook);
    }

    async fn tell(
        &self,
        action: &'static str,
        name: &str,
        path: Option<&str>,
        origin: &'static str,
    ) {
        if let Some(hook) = self.hook.get() {
            hook(ExportChange {
                action,
                name: name.to_owned(),
                path: path.map(str::to_owned),
                origin,
            })
            .await;
        }
    }

    /// The store handle, for the gateway's own reads (its table, the handle key).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Resolves when an export changed (for the gateway's refresher).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }

    /// Tells the gateway of this process to re-read its table now.
    fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub async fn list(&self) -> Result<Vec<Export>, ExportError> {
        self.store
            .list_exports()
            .await?
            .iter()
            .map(stored)
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<Export, ExportError> {
        match self.store.export(name).await? {
            Some(row) => stored(&row),
            None => Err(ExportError::NotFound(name.to_owned())),
        }
    }

    /// Validates and stores a new export.
    pub async fn create(&self, spec: ExportSpec) -> Result<Export, ExportError> {
        let spec = spec.validate()?;
        let rows = spec.client_rows();
        let row = self
            .store
            .insert_export(spec.as_new(&rows))
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => ExportError::Conflict(spec.name.clone()),
                other => other.into(),
            })?;
        self.notify();
        self.tell("create", &spec.name, Some(&spec.path), "api")
            .await;
        stored(&row)
    }

    /// Applies a partial update; the result is validated as a whole.
    pub async fn update(&self, name: &str, patch: ExportPatch) -> Result<Export, ExportError> {
        let spec = self.get(name).await?.spec.patched(patch)?;
        let rows = spec.client_rows();
        let row = self
            .store
            .update_export(spec.as_new(&rows))
            .await?
            .ok_or_else(|| ExportError::NotFound(name.to_owned()))?;
        self.notify();
        self.tell("update", &spec.name, Some(&spec.path), "api")
            .await;
        stored(&row)
    }

    /// Deletes an export; its clients' handles become stale.
    pub async fn delete(&self, name: &str) -> Result<(), ExportError> {
        if !self.store.delete_export(name).await? {
            return Err(ExportError::NotFound(name.to_owned()));
        }
        self.notify();
        self.tell("delete", name, None, "api").await;
        Ok(())
    }

    /// Makes the exports of the config file true in SQL. The file is authoritative for the
    /// exports it declares: missing ones are added, differing ones are replaced (keeping their
    /// id, so clients' handles stay valid), and an export that an earlier start took from the
    /// file but that the file no longer declares is deleted (its handles become stale). Exports
    /// made through the API and never declared in the file are left alone. Every export is
    /// validated before anything changes.
    pub async fn apply_config(&self, specs: &[ExportSpec]) -> Result<(), ExportError> {
        let mut valid = Vec::with_capacity(specs.len());
        for spec in specs {
            let v = spec
                .clone()
                .validate()
                .map_err(|source| ExportError::Config {
                    name: spec.name.clone(),
                    source,
                })?;
            if valid.iter().any(|s: &ExportSpec| s.name == v.name) {
                return Err(ExportError::Duplicate(v.name));
            }
            valid.push(v);
        }
        let store = &self.store;
        for spec in &valid {
            let rows = spec.client_rows();
            match store.export(&spec.name).await? {
                None => {
                    store.insert_export(spec.as_new(&rows)).await?;
                    tracing::info!(export = %spec.name, "nfs export added from the config file");
                    self.tell("create", &spec.name, Some(&spec.path), "config")
                        .await;
                }
                Some(row) if ExportSpec::try_from(&row).ok().as_ref() != Some(spec) => {
                    store.update_export(spec.as_new(&rows)).await?;
                    tracing::info!(export = %spec.name, "nfs export updated from the config file");
                    self.tell("update", &spec.name, Some(&spec.path), "config")
                        .await;
                }
                Some(_) => {}
            }
            store.set_export_from_config(&spec.name, true).await?;
        }
        for row in store.list_exports().await? {
            if row.from_config && !valid.iter().any(|s| s.name == row.name) {
                store.delete_export(&row.name).await?;
                tracing::info!(export = %row.name, "nfs export removed from the config file: deleted");
                self.tell("delete", &row.name, None, "config").await;
            }
        }
        self.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::{Access, ClientRule, Squash};

    fn spec(name: &str, path: &str) -> ExportSpec {
        ExportSpec {
            name: name.into(),
            path: path.into(),
            clients: vec![ClientRule {
                matches: "*".into(),
                access: Access::Ro,
            }],
            squash: Squash::Root,
            anon_uid: 65534,
            anon_gid: 65534,
        }
    }

    async fn service() -> (tempfile::TempDir, Exports) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        (dir, Exports::new(store))
    }

    #[tokio::test]
    async fn changes_are_validated_stored_and_signalled() {
        let (_dir, x) = service().await;
        let woken = {
            let x = x.clone();
            tokio::spawn(async move { x.changed().await })
        };
        tokio::task::yield_now().await;
        let made = x.create(spec("pub", "./data/")).await.unwrap();
        assert_eq!(made.spec.path, "data", "the path is normalized");
        tokio::time::timeout(std::time::Duration::from_secs(5), woken)
            .await
            .expect("the gateway's signal fires on a change")
            .unwrap();
        assert!(matches!(
            x.create(spec("pub", "other")).await,
            Err(ExportError::Conflict(n)) if n == "pub"
        ));
        assert!(matches!(
            x.create(spec("bad/name", "data")).await,
            Err(ExportError::Invalid(i)) if i.field == "name"
        ));
        let patched = x
            .update(
                "pub",
                ExportPatch {
                    squash: Some(Squash::All),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (patched.spec.squash, patched.spec.path.as_str()),
            (Squash::All, "data")
        );
        assert_eq!(x.get("pub").await.unwrap().spec, patched.spec);
        assert!(matches!(
            x.update("nope", ExportPatch::default()).await,
            Err(ExportError::NotFound(n)) if n == "nope"
        ));
        x.delete("pub").await.unwrap();
        assert!(matches!(
            x.delete("pub").await,
            Err(ExportError::NotFound(_))
        ));
        assert!(x.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn every_change_is_told_once_it_is_stored() {
        let (_dir, x) = service().await;
        let seen: Arc<std::sync::Mutex<Vec<ExportChange>>> = Arc::default();
        let hook: ChangeHook = {
            let seen = seen.clone();
            Arc::new(move |c| {
                seen.lock().unwrap().push(c);
                Box::pin(async {})
            })
        };
        x.on_change(hook);
        x.create(spec("a", "data")).await.unwrap();
        assert!(
            x.create(spec("a", "data")).await.is_err(),
            "refused: not told"
        );
        x.update("a", ExportPatch::default()).await.unwrap();
        x.apply_config(&[spec("f", "data")]).await.unwrap();
        x.apply_config(&[]).await.unwrap();
        x.delete("a").await.unwrap();
        let got: Vec<(&str, String, &str)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.action, c.name.clone(), c.origin))
            .collect();
        assert_eq!(
            got,
            [
                ("create", "a".into(), "api"),
                ("update", "a".into(), "api"),
                ("create", "f".into(), "config"),
                ("delete", "f".into(), "config"),
                ("delete", "a".into(), "api"),
            ]
        );
    }

    #[tokio::test]
    async fn the_config_file_owns_only_what_it_declares() {
        let (_dir, x) = service().await;
        x.create(spec("api", "data")).await.unwrap();
        x.apply_config(&[spec("file", "data")]).await.unwrap();
        let names = |l: Vec<Export>| l.into_iter().map(|e| e.spec.name).collect::<Vec<_>>();
        let mut got = names(x.list().await.unwrap());
        got.sort();
        assert_eq!(got, ["api", "file"]);
        assert!(matches!(
            x.apply_config(&[spec("d", "a"), spec("d", "b")]).await,
            Err(ExportError::Duplicate(n)) if n == "d"
        ));
        x.apply_config(&[]).await.unwrap();
        assert_eq!(names(x.list().await.unwrap()), ["api"]);
    }
}
