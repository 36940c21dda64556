//! The gateway's shared state (the export table, the handle key, the fd cache), the TCP listener,
//! and the connection threads: each connection is served by a thread of its own that reads a
//! record, runs the procedure as the caller's mapped identity and writes the reply, in turn.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::exports::{ExportSpec, Policy};
use crate::handle::HandleKey;
use crate::metrics::{Metrics, Stats};
use crate::rpc::{RecordError, RecordReader};
use crate::sys::{self, KernelHandle};
use crate::{Exports, Limits, NfsError};

/// The export's root directory, opened beneath the array root without following any symlink.
pub struct Root {
    pub fd: OwnedFd,
    /// (device, inode): bound into every handle's MAC, and the stop for `..`.
    pub id: (u64, u64),
    pub fh: Vec<u8>,
}

pub struct Export {
    pub id: u32,
    pub spec: ExportSpec,
    pub policy: Policy,
    /// None when the path is missing or unusable (logged); MNT answers NOENT, handles STALE.
    pub root: Option<Root>,
    pub stats: Arc<Stats>,
}

#[derive(Default)]
pub struct Table {
    pub by_id: HashMap<u32, Arc<Export>>,
    pub by_name: HashMap<String, Arc<Export>>,
}

/// Recently used files: handle → O_PATH fd (opening by handle is a syscall per request
/// otherwise). Bounded; entries whose file was deleted are dropped when met.
const FD_CACHE: usize = 4096;

/// An open directory being listed over several READDIR(PLUS) calls: the fd, positioned after
/// the entries read so far, and the entries read from the kernel but not yet sent.
pub struct DirStream {
    pub dir: OwnedFd,
    pending: std::collections::VecDeque<Entry>,
    buf: Vec<u8>,
}

pub struct Entry {
    pub ino: u64,
    pub next: u64,
    pub name: std::ffi::CString,
}

impl DirStream {
    pub fn new(dir: OwnedFd) -> Self {
        Self {
            dir,
            pending: Default::default(),
            buf: Vec::new(),
        }
    }

    /// The next entry, reading up to `chunk` bytes of dirents when none is pending; None at the
    /// end of the directory.
    pub fn next(&mut self, chunk: usize) -> std::io::Result<Option<Entry>> {
        if self.pending.is_empty() {
            self.buf.resize(chunk, 0);
            let n = sys::getdents(&self.dir, &mut self.buf)?;
            self.pending
                .extend(sys::parse_dirents(&self.buf[..n]).map(|e| Entry {
                    ino: e.ino,
                    next: e.next,
                    name: e.name.to_owned(),
                }));
        }
        Ok(self.pending.pop_front())
    }

    /// Puts back an entry that did not fit in a reply.
    pub fn unread(&mut self, e: Entry) {
        self.pending.push_front(e);
    }
}

/// Which listing a stream continues: directory handle, the cookie it resumes at, and the identity
/// that opened it (a stream opened by one user is never continued by another).
#[derive(PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub fh: Vec<u8>,
    pub cookie: u64,
    pub ident: crate::exports::Ident,
}

/// Listings in progress kept between calls; abandoned ones are dropped when the table is full.
const DIR_STREAMS: usize = 64;

pub struct Shared {
    pub array: OwnedFd,
    pub key: HandleKey,
    pub exports: Exports,
    pub table: RwLock<Arc<Table>>,
    pub fds: Mutex<HashMap<Vec<u8>, Arc<OwnedFd>>>,
    streams: Mutex<HashMap<StreamKey, DirStream>>,
    pub metrics: Metrics,
    /// Changes at every start: clients resend UNSTABLE writes not yet committed.
    pub write_verifier: [u8; 8],
    pub limits: Limits,
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    pub fn new(
        array: OwnedFd,
        key: &[u8],
        exports: Exports,
        limits: Limits,
    ) -> Result<Self, NfsError> {
        let mut write_verifier = [0u8; 8];
        write_verifier.copy_from_slice(&crate::handle::fresh_key().map_err(NfsError::Random)?[..8]);
        Ok(Self {
            array,
            key: HandleKey::new(key),
            exports,
            table: RwLock::new(Arc::new(Table::default())),
            fds: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            write_verifier,
            limits,
            rt: tokio::runtime::Handle::current(),
        })
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    /// Re-reads the exports from SQL and reopens their roots.
    pub async fn reload(&self) -> Result<(), NfsError> {
        let rows = self.exports.store().list_exports().await?;
        let mut t = Table::default();
        for row in rows {
            let spec = match ExportSpec::try_from(&row) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(export = %row.name, error = %e, "export row is invalid; not served");
                    continue;
                }
            };
            let Ok(id) = u32::try_from(row.id) else {
                continue;
            };
            let root = match self.open_root(id, &spec.path) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(export = %spec.name, path = %spec.path, error = %e,
                        "export path cannot be opened beneath the array without symlinks; not served");
                    None
                }
            };
            let stats = self.metrics.stats(id, &spec.name);
            let e = Arc::new(Export {
                id,
                policy: Policy::new(&spec),
                spec,
                root,
                stats,
            });
            t.by_name.insert(e.spec.name.clone(), e.clone());
            t.by_id.insert(id, e);
        }
        self.metrics.retain(|id| t.by_id.contains_key(&id));
        *self.table.write().expect("table lock") = Arc::new(t);
        Ok(())
    }

    fn open_root(&self, id: u32, path: &str) -> std::io::Result<Root> {
        let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // Not O_PATH: open_by_handle_at refuses an O_PATH fd as its mount fd.
        let fd = sys::openat2(
            &self.array,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let st = sys::fstat(&fd)?;
        let k = sys::name_to_handle(&fd, c"")?;
        let rid = (st.st_dev, st.st_ino);
        Ok(Root {
            fh: self.key.encode(id, rid, &k),
            fd,
            id: rid,
        })
    }

    /// The O_PATH fd of a verified handle's file. Must run with the thread's identity at root
    /// (open_by_handle_at needs CAP_DAC_READ_SEARCH).
    pub fn open_handle(
        &self,
        fh: &[u8],
        root: &Root,
        k: &KernelHandle,
    ) -> std::io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.fds.lock().expect("fd cache").get(fh) {
            return Ok(fd.clone());
        }
        sys::become_ident(&crate::exports::Ident::ROOT)?;
        let fd = Arc::new(sys::open_by_handle(&root.fd, k)?);
        let mut c = self.fds.lock().expect("fd cache");
        if c.len() >= FD_CACHE {
            c.clear();
        }
        c.insert(fh.to_vec(), fd.clone());
        Ok(fd)
    }

    pub fn take_stream(&self, key: &StreamKey) -> Option<DirStream> {
        self.streams.lock().expect("stream table").remove(key)
    }

    pub fn keep_stream(&self, key: StreamKey, s: DirStream) {
        let mut t = self.streams.lock().expect("stream table");
        if t.len() >= DIR_STREAMS {
            t.clear();
        }
        t.insert(key, s);
    }

    pub fn forget_handle(&self, fh: &[u8]) {
        self.fds.lock().expect("fd cache").remove(fh);
    }

    fn log_stats(&self, last: &mut HashMap<String, u64>) {
        for e in self.metrics.snapshot() {
            let ops: u64 = e.procedures.iter().map(|p| p.count).sum();
            if last.get(&e.export) == Some(&ops) {
                continue;
            }
            last.insert(e.export.clone(), ops);
            let errors: u64 = e.procedures.iter().map(|p| p.errors).sum();
            let secs: f64 = e.procedures.iter().map(|p| p.latency_seconds_sum).sum();
            tracing::info!(
                export = %e.export,
                ops,
                errors,
                bytes_read = e.bytes_read,
                bytes_written = e.bytes_written,
                mean_latency_us = if ops > 0 { (secs * 1e6 / ops as f64) as u64 } else { 0 },
                "nfs export statistics"
            );
        }
    }
}

/// Serves NFSv3 and MOUNT on `listener` until `shutdown` resolves: each accepted connection gets a
/// thread of its own (at most `max_connections`).
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NfsError> {
    let limits = shared.limits;
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let refresher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = HashMap::new();
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = shared.exports.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                if let Err(e) = shared.reload().await {
                    tracing::error!(error = %e, "cannot reload the nfs exports");
                }
                n += 1;
                if n % 30 == 0 {
                    shared.log_stats(&mut last);
                }
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "nfs accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "nfs connection refused: too many connections");
            continue;
        };
        let sock = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "nfs connection dropped");
                continue;
            }
        };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nfs-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || connection(shared, sock, peer, permit));
        if let Err(e) = spawned {
            tracing::error!(%peer, error = %e, "cannot start an nfs connection thread");
        }
    }
    refresher.abort();
    Ok(())
}

/// Writes a reply: its head, then the READ data waiting in the thread's splice pipe and its XDR
/// padding.
fn send(
    sock: &std::net::TcpStream,
    wr: &mut &std::net::TcpStream,
    reply: &crate::rpc::Reply,
) -> std::io::Result<()> {
    if reply.spliced == 0 {
        return wr.write_all(&reply.head);
    }
    let pad = crate::xdr::pad(reply.spliced);
    sys::send_more(sock, &reply.head)?;
    sys::splice_out(sock, pad > 0)?;
    wr.write_all(&[0u8; 3][..pad])
}

/// Time slice asked for connection threads (the kernel's minimum is 0.1 ms).
const CALL_SLICE_NS: u64 = 100_000;

/// Stack of a connection thread: procedures keep their buffers on the heap.
const CONNECTION_STACK: usize = 512 * 1024;

/// One connection, on its own thread: read a record, run it, write the reply, in turn. The thread
/// is the daemon's own (never a tokio thread), has a private umask of 0, and switches its
/// filesystem identity to each call's mapped user. One request is served at a time: while it runs
/// the connection is not read, so a client pipelining calls is held back by TCP. Memory: the
/// record buffer (at most one record plus one read-ahead) and one reply.
fn connection(
    shared: Arc<Shared>,
    sock: std::net::TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let limits = shared.limits;
    if let Err(e) = sys::private_umask() {
        tracing::error!(%peer, error = %e, "nfs connection thread cannot get a private umask");
        return;
    }
    // The listener's sockets are non-blocking (tokio's); this thread blocks, with time limits: a
    // client that sends nothing, or reads none of its replies, for `idle_timeout` is dropped.
    let setup = sock
        .set_nonblocking(false)
        .and_then(|()| sock.set_nodelay(true))
        .and_then(|()| sock.set_read_timeout(Some(limits.idle_timeout)))
        .and_then(|()| sock.set_write_timeout(Some(limits.idle_timeout)));
    if let Err(e) = setup {
        tracing::debug!(%peer, error = %e, "nfs connection dropped");
        return;
    }
    // Calls are short and a client waits for each: run them as soon as they arrive.
    if let Err(e) = sys::short_slice(CALL_SLICE_NS) {
        tracing::debug!(error = %e, "nfs connection thread keeps the default time slice");
    }
    let peer_ip = peer.ip().to_canonical();
    let mut reader = RecordReader::new(limits.max_record);
    let mut rd = &sock;
    let mut wr = &sock;
    loop {
        let record = match reader.next(&mut rd) {
            Ok(r) => r,
            Err(RecordError::Closed) => break,
            Err(RecordError::TooLarge(n)) => {
                tracing::warn!(%peer, bytes = n, "nfs record over the limit; connection dropped");
                break;
            }
            Err(RecordError::TooManyFragments) => {
                tracing::warn!(%peer, "nfs record with too many fragments; connection dropped");
                break;
            }
            Err(RecordError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                tracing::debug!(%peer, "idle nfs connection closed");
                break;
            }
            Err(RecordError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "nfs connection read failed");
                break;
            }
        };
        let Some(reply) = crate::dispatch::handle(&shared, record, peer_ip) else {
            tracing::debug!(%peer, "nfs record is not an rpc call; connection dropped");
            break;
        };
        let sent = send(&sock, &mut wr, &reply);
        crate::xdr::recycle(reply.head);
        if let Err(e) = sent {
            tracing::debug!(%peer, error = %e, "nfs reply not sent; connection dropped");
            break;
        }
    }
}
