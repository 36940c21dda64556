//! The NFSv3 gateway: the array's exports served over NFSv3, with MOUNT on the same TCP port.
//!
//! Our own ONC RPC transport and NFSv3/MOUNT procedures (docs/design/nfs.md says why the
//! `nfsserve`/`nfs3_server` crates are not used): every request is checked against the export's
//! client rules, runs as the caller's squashed identity on a worker thread, and reaches files only
//! through authenticated handles and fd-relative, no-follow lookups beneath the export root.

mod dispatch;
pub mod exports;
mod handle;
mod metrics;
mod mount;
mod nfs3;
mod rpc;
mod server;
mod sys;
mod xdr;

/// Entry points for the fuzz targets (fuzz/): the transport and call-header decoding the gateway
/// owns, on bytes as a hostile client would send them. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Reads records (record marking, fragments) from `stream` as a connection does, with a
    /// record limit of `max` bytes, and parses each record's RPC call header and AUTH_SYS
    /// credential. Returns how many calls parsed; never panics.
    pub fn records_and_calls(stream: &[u8], max: usize) -> usize {
        let mut r = std::io::Cursor::new(stream);
        let mut reader = crate::rpc::RecordReader::new(max);
        let mut calls = 0;
        while let Ok(record) = reader.next(&mut r) {
            let mut d = crate::xdr::Decoder::new(record);
            if crate::rpc::parse_call(&mut d).is_ok() {
                calls += 1;
            }
        }
        calls
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inarray_store::{ExportRow, Store, StoreError};
use tokio::net::TcpListener;

pub use exports::{Access, ClientRule, ExportPatch, ExportSpec, Invalid, Squash};
pub use metrics::{ExportMetrics, Metrics, ProcedureMetrics, LATENCY_BOUNDS_US, PROCEDURES};

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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("export {name}: {source}")]
    Config { name: String, source: Invalid },
    #[error("export {0} is declared twice in the config file")]
    DuplicateExport(String),
}

/// Resource limits against hostile or broken clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest RPC record (all fragments): a 1 MiB WRITE plus its headers.
    pub max_record: usize,
    /// Connections served at once (a thread each); more are refused.
    pub max_connections: usize,
    /// A connection that sends nothing, or takes none of its reply, for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record: nfs3::MAX_IO as usize + 16 * 1024,
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
        Ok(Self { shared, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The per-export counters, for `/metrics`.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NfsError> {
        server::run(self.shared, self.listener, shutdown).await
    }
}

/// Makes the exports of the config file true in SQL. The file is authoritative for the exports
/// it declares: missing ones are added, differing ones are replaced (keeping their id, so clients'
/// handles stay valid), and an export that an earlier start took from the file but that the file
/// no longer declares is deleted (its handles become stale). Exports made through the API and
/// never declared in the file are left alone. Every export is validated before anything changes.
pub async fn apply_config(store: &Store, specs: &[ExportSpec]) -> Result<(), NfsError> {
    let mut valid = Vec::with_capacity(specs.len());
    for spec in specs {
        let v = spec.clone().validate().map_err(|source| NfsError::Config {
            name: spec.name.clone(),
            source,
        })?;
        if valid.iter().any(|s: &ExportSpec| s.name == v.name) {
            return Err(NfsError::DuplicateExport(v.name));
        }
        valid.push(v);
    }
    for spec in &valid {
        let rows = spec.client_rows();
        match store.export(&spec.name).await? {
            None => {
                store.insert_export(spec.as_new(&rows)).await?;
                tracing::info!(export = %spec.name, "nfs export added from the config file");
            }
            Some(row) if ExportSpec::try_from(&row).ok().as_ref() != Some(spec) => {
                store.update_export(spec.as_new(&rows)).await?;
                tracing::info!(export = %spec.name, "nfs export updated from the config file");
            }
            Some(_) => {}
        }
        store.set_export_from_config(&spec.name, true).await?;
    }
    for row in store.list_exports().await? {
        if row.from_config && !valid.iter().any(|s| s.name == row.name) {
            store.delete_export(&row.name).await?;
            tracing::info!(export = %row.name, "nfs export removed from the config file: deleted");
        }
    }
    exports_changed();
    Ok(())
}

/// A running gateway, as the daemon sees it.
pub struct Serving {
    pub addr: SocketAddr,
    pub metrics: Metrics,
}

/// The daemon's wiring: makes the config file's exports true in SQL and, when `listen` is set,
/// binds the gateway and serves it for the life of the process.
pub async fn start(
    exports: &[ExportSpec],
    listen: Option<SocketAddr>,
    array: &Path,
    store: &Store,
) -> Result<Option<Serving>, NfsError> {
    apply_config(store, exports).await?;
    let Some(addr) = listen else {
        return Ok(None);
    };
    let gw = Gateway::bind(addr, array, store.clone(), Limits::default()).await?;
    let bound = gw
        .local_addr()
        .map_err(|source| NfsError::Bind { addr, source })?;
    let metrics = gw.metrics();
    tracing::info!(listen = %bound, "nfs gateway serving (NFSv3 and MOUNT on one port)");
    tokio::spawn(async move {
        if let Err(e) = gw.serve(std::future::pending()).await {
            tracing::error!(error = %e, "nfs gateway stopped");
        }
    });
    Ok(Some(Serving {
        addr: bound,
        metrics,
    }))
}

/// The API's view of a stored export.
pub fn view(row: &ExportRow) -> Result<ExportSpec, Invalid> {
    ExportSpec::try_from(row)
}
