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
mod service;
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

use inarray_store::StoreError;
use tokio::net::TcpListener;

pub use exports::{Access, ClientRule, ExportPatch, ExportSpec, Invalid, Squash};
pub use metrics::{ExportMetrics, Metrics, ProcedureMetrics, LATENCY_BOUNDS_US, PROCEDURES};
pub use service::{ChangeHook, Export, ExportChange, ExportError, Exports};

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
    #[error(transparent)]
    Exports(#[from] ExportError),
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

/// A bound gateway, ready to serve.
pub struct Gateway {
    shared: Arc<server::Shared>,
    listener: TcpListener,
}

impl Gateway {
    /// Opens the array root, loads (or makes, on the first start) the handle key, loads the
    /// exports and binds `addr`. The gateway re-reads its table whenever `exports` changes one.
    pub async fn bind(
        addr: SocketAddr,
        array: &Path,
        exports: Exports,
        limits: Limits,
    ) -> Result<Self, NfsError> {
        let array_fd = std::fs::File::open(array)
            .map(std::os::fd::OwnedFd::from)
            .map_err(|source| NfsError::Array {
                path: array.to_owned(),
                source,
            })?;
        let key = exports
            .store()
            .nfs_handle_key(&handle::fresh_key().map_err(NfsError::Random)?)
            .await?;
        let shared = Arc::new(server::Shared::new(array_fd, &key, exports, limits)?);
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

/// A running gateway, as the daemon sees it.
pub struct Serving {
    pub addr: SocketAddr,
    pub metrics: Metrics,
}

/// The daemon's wiring: makes the config file's exports true in SQL and, when `listen` is set,
/// binds the gateway and serves it for the life of the process.
pub async fn start(
    exports: &Exports,
    config: &[ExportSpec],
    listen: Option<SocketAddr>,
    array: &Path,
) -> Result<Option<Serving>, NfsError> {
    exports.apply_config(config).await?;
    let Some(addr) = listen else {
        return Ok(None);
    };
    let gw = Gateway::bind(addr, array, exports.clone(), Limits::default()).await?;
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
