//! The gateway's shared state (the export table, the handle key, the fd cache), the TCP listener,
//! per-connection reading and writing with limits, and the worker threads that run procedures.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use inarray_store::Store;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::exports::{ExportSpec, Policy};
use crate::handle::HandleKey;
use crate::rpc::{self, RecordError};
use crate::sys::{self, KernelHandle};
use crate::{Limits, NfsError};

/// Per-export counters (logged every minute while they move; for `/metrics` once it exists).
#[derive(Default, Debug)]
pub struct Stats {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub latency_us_total: AtomicU64,
    pub latency_us_max: AtomicU64,
}

impl Stats {
    pub fn record(&self, ok: bool, started: Instant) {
        let us = started.elapsed().as_micros() as u64;
        self.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_us_total.fetch_add(us, Ordering::Relaxed);
        self.latency_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

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
    pub store: Store,
    pub table: RwLock<Arc<Table>>,
    pub fds: Mutex<HashMap<Vec<u8>, Arc<OwnedFd>>>,
    streams: Mutex<HashMap<StreamKey, DirStream>>,
    stats: Mutex<HashMap<u32, Arc<Stats>>>,
    /// Changes at every start: clients resend UNSTABLE writes not yet committed.
    pub write_verifier: [u8; 8],
    pub limits: Limits,
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    pub fn new(array: OwnedFd, key: &[u8], store: Store, limits: Limits) -> Result<Self, NfsError> {
        let mut write_verifier = [0u8; 8];
        write_verifier.copy_from_slice(&crate::handle::fresh_key().map_err(NfsError::Random)?[..8]);
        Ok(Self {
            array,
            key: HandleKey::new(key),
            store,
            table: RwLock::new(Arc::new(Table::default())),
            fds: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
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
        let rows = self.store.list_exports().await?;
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
            let stats = self
                .stats
                .lock()
                .expect("stats lock")
                .entry(id)
                .or_default()
                .clone();
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
        *self.table.write().expect("table lock") = Arc::new(t);
        Ok(())
    }

    fn open_root(&self, id: u32, path: &str) -> std::io::Result<Root> {
        let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // Not O_PATH: open_by_handle_at refuses an O_PATH fd as its mount fd.
        let fd = sys::openat2(
            &self.array,
            &c,
            (libc::O_RDONLY | libc::O_DIRECTORY) as u64,
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

    fn log_stats(&self, last: &mut HashMap<u32, u64>) {
        let t = self.table();
        for e in t.by_id.values() {
            let ops = e.stats.ops.load(Ordering::Relaxed);
            if last.get(&e.id) == Some(&ops) {
                continue;
            }
            last.insert(e.id, ops);
            let total = e.stats.latency_us_total.load(Ordering::Relaxed);
            tracing::info!(
                export = %e.spec.name,
                ops,
                errors = e.stats.errors.load(Ordering::Relaxed),
                bytes_read = e.stats.bytes_read.load(Ordering::Relaxed),
                bytes_written = e.stats.bytes_written.load(Ordering::Relaxed),
                mean_latency_us = total.checked_div(ops).unwrap_or(0),
                max_latency_us = e.stats.latency_us_max.swap(0, Ordering::Relaxed),
                "nfs export statistics"
            );
        }
    }
}

/// A request on its way to a worker thread.
struct Job {
    shared: Arc<Shared>,
    record: Vec<u8>,
    peer: IpAddr,
    out: Arc<Out>,
    conn_permit: OwnedSemaphorePermit,
    _queue_permit: OwnedSemaphorePermit,
}

/// A reply being sent: the bytes, how many are written, and the connection's in-flight permit,
/// released once the reply is out.
type Queued = (Vec<u8>, usize, OwnedSemaphorePermit);

/// The sending side of a connection, shared by the worker threads and a writer task. A worker
/// writes its reply straight to the socket when nothing is queued and the socket takes it all
/// without blocking (no hand-off, one context switch less per call); otherwise the rest is queued
/// for the writer task, so a client that does not read its replies never blocks a worker.
struct Out {
    half: OwnedWriteHalf,
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    /// The reader is done and every reply is queued or sent.
    finished: AtomicBool,
    /// The writer gave up (socket error, or a peer that reads nothing): replies are dropped.
    dead: AtomicBool,
}

impl Out {
    fn send(&self, buf: Vec<u8>, permit: OwnedSemaphorePermit) {
        let mut q = self.queue.lock().expect("reply queue");
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let mut off = 0;
        if q.is_empty() {
            while off < buf.len() {
                match self.half.try_write(&buf[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // A dead connection: the reply is dropped, the reader sees the end.
                    Err(_) => return,
                }
            }
            if off == buf.len() {
                return;
            }
        }
        q.push_back((buf, off, permit));
        drop(q);
        self.wake.notify_one();
    }

    fn give_up(&self) {
        let mut q = self.queue.lock().expect("reply queue");
        self.dead.store(true, Ordering::Relaxed);
        q.clear();
    }

    /// The writer task: sends what workers could not, until the connection is finished.
    async fn drain(&self, idle: Duration) {
        loop {
            loop {
                if self.queue.lock().expect("reply queue").is_empty() {
                    break;
                }
                match tokio::time::timeout(idle, self.half.writable()).await {
                    Ok(Ok(())) => {}
                    // The peer reads nothing for this long, or the socket failed: give up.
                    _ => return self.give_up(),
                }
                let mut q = self.queue.lock().expect("reply queue");
                while let Some((buf, off, _)) = q.front_mut() {
                    match self.half.try_write(&buf[*off..]) {
                        Ok(n) => {
                            *off += n;
                            if *off == buf.len() {
                                q.pop_front();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            drop(q);
                            return self.give_up();
                        }
                    }
                }
            }
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// Worker threads: each has its own filesystem identity (fsuid, fsgid, groups) and umask, so
/// procedures run as the mapped NFS user without affecting the rest of the daemon.
pub struct Pool {
    tx: std::sync::mpsc::SyncSender<Job>,
    queue: Arc<Semaphore>,
}

impl Pool {
    pub fn start(threads: usize, queue: usize) -> Result<Self, NfsError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..threads {
            let rx = rx.clone();
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("nfs-worker-{i}"))
                .spawn(move || {
                    let init = sys::private_umask();
                    let failed = init.is_err();
                    let _ = ready.send(init);
                    if failed {
                        return;
                    }
                    loop {
                        let job = match rx.lock().expect("job queue").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let reply = crate::dispatch::handle(&job.shared, &job.record, job.peer);
                        if let Some(r) = reply {
                            job.out.send(r, job.conn_permit);
                        }
                    }
                })
                .map_err(NfsError::Thread)?;
        }
        for _ in 0..threads {
            ready_rx
                .recv()
                .map_err(|_| NfsError::Thread(std::io::Error::other("worker died at start")))?
                .map_err(NfsError::Thread)?;
        }
        Ok(Self {
            tx,
            queue: Arc::new(Semaphore::new(queue)),
        })
    }
}

/// Serves NFSv3 and MOUNT on `listener` until `shutdown` resolves.
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    pool: Pool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NfsError> {
    let limits = shared.limits;
    let pool = Arc::new(pool);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let refresher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = HashMap::new();
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = crate::CHANGED.notified() => {}
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
        let _ = stream.set_nodelay(true);
        let (shared, pool) = (shared.clone(), pool.clone());
        tokio::spawn(async move {
            connection(shared, pool, stream, peer).await;
            drop(permit);
        });
    }
    refresher.abort();
    Ok(())
}

async fn connection(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let limits = shared.limits;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let out = Arc::new(Out {
        half: wr,
        queue: Mutex::new(VecDeque::new()),
        wake: Notify::new(),
        finished: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    let writer = {
        let out = out.clone();
        tokio::spawn(async move { out.drain(limits.idle_timeout).await })
    };
    let in_flight = Arc::new(Semaphore::new(limits.in_flight));
    let peer_ip = peer.ip().to_canonical();
    loop {
        // Throttle: with `in_flight` requests unanswered, stop reading (TCP pushes back).
        let Ok(conn_permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let record = match tokio::time::timeout(
            limits.idle_timeout,
            rpc::read_record(&mut rd, limits.max_record),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(RecordError::Closed)) => break,
            Ok(Err(RecordError::TooLarge(n))) => {
                tracing::warn!(%peer, bytes = n, "nfs record over the limit; connection dropped");
                break;
            }
            Ok(Err(RecordError::TooManyFragments)) => {
                tracing::warn!(%peer, "nfs record with too many fragments; connection dropped");
                break;
            }
            Ok(Err(RecordError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "nfs connection read failed");
                break;
            }
            Err(_) => {
                tracing::debug!(%peer, "idle nfs connection closed");
                break;
            }
        };
        let Ok(queue_permit) = pool.queue.clone().acquire_owned().await else {
            break;
        };
        let job = Job {
            shared: shared.clone(),
            record,
            peer: peer_ip,
            out: out.clone(),
            conn_permit,
            _queue_permit: queue_permit,
        };
        if pool.tx.try_send(job).is_err() {
            tracing::error!("nfs worker queue unexpectedly full");
            break;
        }
    }
    // Every reply is out (or dropped with a dead connection) once all in-flight permits are back.
    let _ = in_flight.acquire_many(limits.in_flight as u32).await;
    out.finished.store(true, Ordering::Release);
    out.wake.notify_one();
    let _ = writer.await;
}
