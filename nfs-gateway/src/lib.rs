//! The NFSv3 gateway: the array's exports served over NFSv3, with MOUNT on the same TCP port.
//!
//! Our own ONC RPC transport and NFSv3/MOUNT procedures (docs/design/nfs.md says why the
//! `nfsserve`/`nfs3_server` crates are not used): every request is checked against the export's
//! client rules, runs as the caller's squashed identity on a worker thread, and reaches files only
//! through authenticated handles and fd-relative, no-follow lookups beneath the export root.

mod dispatch;
pub mod exports;
mod handle;
mod mount;
mod nfs3;
mod rpc;
mod server;
mod sys;
mod xdr;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inarray_store::{ExportRow, Store, StoreError};
use tokio::net::TcpListener;

pub use exports::{Access, ClientRule, ExportPatch, ExportSpec, Invalid, Squash};

#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("cannot open the array root {path}: {source}")]
    Array {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for nfs on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read random bytes: {0}")]
    Random(std::io::Error),
    #[error("cannot start an nfs worker thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("export {name}: {source}")]
    Config { name: String, source: Invalid },
}

/// Resource limits against hostile or broken clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest RPC record (all fragments): a 1 MiB WRITE plus its headers.
    pub max_record: usize,
    /// Requests of one connection being served at once; past it the connection is not read
    /// (TCP pushes back on the client).
    pub in_flight: usize,
    /// Requests waiting for a worker, all connections together.
    pub queue: usize,
    pub threads: usize,
    pub max_connections: usize,
    /// A connection that sends no complete record for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record: nfs3::MAX_IO as usize + 16 * 1024,
            in_flight: 16,
            queue: 256,
            threads: 8,
            max_connections: 512,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Wakes running gateways after an export changed in SQL (they also re-read every 2 s, and at
/// every MNT).
static CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Tells the gateway of this process that exports changed.
pub fn exports_changed() {
    CHANGED.notify_waiters();
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    shared: Arc<server::Shared>,
    listener: TcpListener,
    pool: server::Pool,
}

impl Gateway {
    /// Opens the array root, loads (or makes, on the first start) the handle key, loads the
    /// exports and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        array: &Path,
        store: Store,
        limits: Limits,
    ) -> Result<Self, NfsError> {
        let array_fd = std::fs::File::open(array)
            .map(std::os::fd::OwnedFd::from)
            .map_err(|source| NfsError::Array {
                path: array.to_owned(),
                source,
            })?;
        let key = store
            .nfs_handle_key(&handle::fresh_key().map_err(NfsError::Random)?)
            .await?;
        let shared = Arc::new(server::Shared::new(array_fd, &key, store, limits)?);
        shared.reload().await?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NfsError::Bind { addr, source })?;
        let pool = server::Pool::start(limits.threads, limits.queue)?;
        Ok(Self {
            shared,
            listener,
            pool,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NfsError> {
        server::run(self.shared, self.listener, self.pool, shutdown).await
    }
}

/// Makes the exports of the config file true in SQL: missing ones are added, differing ones are
/// replaced (keeping their id, so clients' handles stay valid). Exports made through the API and
/// absent from the file are left alone.
pub async fn apply_config(store: &Store, specs: &[ExportSpec]) -> Result<(), NfsError> {
    for spec in specs {
        let spec = spec.clone().validate().map_err(|source| NfsError::Config {
            name: spec.name.clone(),
            source,
        })?;
        let rows = spec.client_rows();
        match store.export(&spec.name).await? {
            None => {
                store.insert_export(spec.as_new(&rows)).await?;
            }
            Some(row) if ExportSpec::try_from(&row).ok().as_ref() != Some(&spec) => {
                store.update_export(spec.as_new(&rows)).await?;
            }
            Some(_) => {}
        }
    }
    exports_changed();
    Ok(())
}

/// The daemon's wiring: makes the config file's exports true in SQL and, when `listen` is set,
/// binds the gateway and serves it for the life of the process. Returns the bound address.
pub async fn start(
    exports: &[ExportSpec],
    listen: Option<SocketAddr>,
    array: &Path,
    store: &Store,
) -> Result<Option<SocketAddr>, NfsError> {
    apply_config(store, exports).await?;
    let Some(addr) = listen else {
        return Ok(None);
    };
    let gw = Gateway::bind(addr, array, store.clone(), Limits::default()).await?;
    let bound = gw
        .local_addr()
        .map_err(|source| NfsError::Bind { addr, source })?;
    tracing::info!(listen = %bound, "nfs gateway serving (NFSv3 and MOUNT on one port)");
    tokio::spawn(async move {
        if let Err(e) = gw.serve(std::future::pending()).await {
            tracing::error!(error = %e, "nfs gateway stopped");
        }
    });
    Ok(Some(bound))
}

/// The API's view of a stored export.
pub fn view(row: &ExportRow) -> Result<ExportSpec, Invalid> {
    ExportSpec::try_from(row)
}
