//! One watch: its own inotify instance, read by its own thread.
//!
//! Paths are relative to the watch root and `/`-separated. The watch root is resolved beneath the
//! array root (`openat2(RESOLVE_IN_ROOT)`, like volume sources); every directory below it is
//! opened from the root's fd with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and inotify is pointed
//! at the opened directory through `/proc/self/fd/N`, never at a path that could be swapped for a
//! symlink in between. Symlinks inside the tree are reported as entries, never followed.
//!
//! The thread keeps the last known state of the tree (`known`: path → type, size, mtime), updated
//! by every event. A kernel queue overflow (`IN_Q_OVERFLOW`) or a watch lost while its directory
//! still exists makes it rescan the tree, emit the differences against `known` as events and then
//! a `resync` event: nothing is lost silently.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inarray_runtime::volumes::ArrayRoot;
use inarray_store::{NewEvent, StateEntry};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, ResolveFlag};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use nix::sys::stat::{fstatat, SFlag};

use crate::spec::{now_us, Filter, Kind};
use crate::EventsError;

pub const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

/// What the watch knows of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub is_dir: bool,
    /// A regular file (not a symlink, device, fifo or socket).
    pub is_file: bool,
    pub size: i64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
}

/// Live figures of a watch (shown by `GET /v1/watches`).
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub watched_dirs: usize,
    pub known_entries: usize,
    pub resyncs: u64,
    pub events: u64,
    /// Set while the watch is degraded (its root vanished, a directory could not be watched).
    pub error: Option<String>,
}

/// Where a watch sends its events (batches, in order).
pub type Sink = tokio::sync::mpsc::Sender<Vec<NewEvent>>;

/// What a watch sends to be saved: its tree's state, so a restart can report what changed while
/// the daemon was down; or a barrier (answered once everything sent before it is saved).
pub enum SnapMsg {
    State(String, Vec<StateEntry>),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

pub type SnapSink = tokio::sync::mpsc::Sender<SnapMsg>;

/// How often a changed tree's state is saved.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub name: String,
    /// The watch root, relative to the array (validated).
    pub path: String,
    pub recursive: bool,
    pub filter: Filter,
    /// Repeated close_write/attrib of one path within this window become one event.
    pub coalesce: Duration,
    /// The state saved by the previous run (restoring a watch): differences are reported.
    pub baseline: Option<Vec<StateEntry>>,
    /// Where the tree's state is saved.
    pub snapshots: Option<SnapSink>,
}

/// A running watch; dropping it stops the thread.
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub status: Arc<Mutex<Status>>,
}

impl WatchHandle {
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the watch up (every directory watched, the tree's state read; nothing emitted) and starts
/// its thread. Blocking: call it from a blocking thread.
pub fn start(
    cfg: WatchConfig,
    array: Arc<ArrayRoot>,
    sink: Sink,
) -> Result<WatchHandle, EventsError> {
    let status = Arc::new(Mutex::new(Status::default()));
    let baseline = cfg.baseline.clone();
    let mut w = Watcher::new(cfg, array, sink, status.clone())?;
    match baseline {
        Some(b) => {
            // Restored: what changed while the daemon was down becomes events, then `resync`.
            w.known = b
                .into_iter()
                .map(|(p, is_dir, is_file, size, mtime)| {
                    (
                        p,
                        Meta {
                            is_dir,
                            is_file,
                            size,
                            mtime,
                        },
                    )
                })
                .collect();
            let before = w.out.len();
            w.establish(true)?;
            if w.out.len() > before {
                w.resyncs += 1;
                w.emit(Kind::Resync, "", None, true, None);
            }
            w.flush(true);
        }
        None => w.establish(false)?,
    }
    w.dirty = true;
    w.snapshot(false);
    w.publish_status();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("inarray-watch".into())
        .spawn(move || w.run(&flag))
        .map_err(|e| EventsError::Internal(format!("cannot start a watch thread: {e}")))?;
    Ok(WatchHandle {
        stop,
        thread: Some(thread),
        status,
    })
}

fn mask(filter: &Filter) -> AddWatchFlags {
    let mut m = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR;
    if filter.kinds.contains(&Kind::Attrib) {
        m |= AddWatchFlags::IN_ATTRIB;
    }
    m
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_and_name(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

/// The keys of `map` that are `prefix` or below it (a range scan of the sorted keys).
fn keys_under<V>(map: &BTreeMap<String, V>, prefix: &str) -> Vec<String> {
    map.range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| under(k, prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

fn meta_of(st: &nix::sys::stat::FileStat) -> Meta {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    Meta {
        is_dir: fmt == SFlag::S_IFDIR,
        is_file: fmt == SFlag::S_IFREG,
        size: st.st_size,
        mtime: st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec,
    }
}

/// Raises `fs.inotify.max_user_watches` (doubling it) when the kernel lets us; the clear error
/// naming the limit otherwise.
fn raise_watch_limit() -> Result<(), EventsError> {
    let current = std::fs::read_to_string(MAX_USER_WATCHES)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let err = |why: String| {
        EventsError::Limit(format!(
            "the inotify watch limit is reached: fs.inotify.max_user_watches = {} ({MAX_USER_WATCHES}); {why}",
            current.map_or("?".into(), |c| c.to_string())
        ))
    };
    let Some(c) = current else {
        return Err(err("cannot read it".into()));
    };
    let new = c.saturating_mul(2).max(c + 65_536);
    std::fs::write(MAX_USER_WATCHES, new.to_string()).map_err(|e| {
        err(format!(
            "raising it to {new} failed ({e}); raise it or watch less"
        ))
    })?;
    tracing::warn!(from = c, to = new, "raised fs.inotify.max_user_watches");
    Ok(())
}

struct Watcher {
    cfg: WatchConfig,
    /// Array-relative path of the watch root ("" for the array root itself).
    prefix: String,
    mask: AddWatchFlags,
    array: Arc<ArrayRoot>,
    root: Option<OwnedFd>,
    ino: Inotify,
    wd_dir: HashMap<WatchDescriptor, String>,
    dir_wd: BTreeMap<String, WatchDescriptor>,
    known: BTreeMap<String, Meta>,
    /// Unpaired IN_MOVED_FROM: (cookie, path, is_dir, read round it came in).
    moves: Vec<(u32, String, bool, u64)>,
    round: u64,
    out: Vec<NewEvent>,
    /// (path, kind) → index in `out`, for coalescing.
    pending: HashMap<(String, Kind), usize>,
    window_start: Option<Instant>,
    parent_cache: Option<(String, OwnedFd)>,
    sink: Sink,
    status: Arc<Mutex<Status>>,
    resyncs: u64,
    events: u64,
    error: Option<String>,
    root_lost: bool,
    last_retry: Instant,
    dirty: bool,
    last_snapshot: Instant,
}

impl Watcher {
    fn new(
        cfg: WatchConfig,
        array: Arc<ArrayRoot>,
        sink: Sink,
        status: Arc<Mutex<Status>>,
    ) -> Result<Self, EventsError> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| {
            EventsError::Limit(format!(
                "cannot create an inotify instance: {e} (fs.inotify.max_user_instances may be reached)"
            ))
        })?;
        let prefix = inarray_runtime::volumes::validate_source("path", &cfg.path)
            .map_err(|e| crate::invalid("path", e.to_string()))?
            .to_string_lossy()
            .into_owned();
        Ok(Self {
            mask: mask(&cfg.filter),
            cfg,
            prefix,
            array,
            root: None,
            ino,
            wd_dir: HashMap::new(),
            dir_wd: BTreeMap::new(),
            known: BTreeMap::new(),
            moves: Vec::new(),
            round: 0,
            out: Vec::new(),
            pending: HashMap::new(),
            window_start: None,
            parent_cache: None,
            sink,
            status,
            resyncs: 0,
            events: 0,
            error: None,
            root_lost: false,
            last_retry: Instant::now(),
            dirty: false,
            last_snapshot: Instant::now(),
        })
    }

    /// Resolves the root, watches the tree, reads its state. With `emit`, differences against the
    /// last known state become events (a resync); without, the state is only recorded.
    fn establish(&mut self, emit: bool) -> Result<(), EventsError> {
        let fd = self
            .array
            .resolve("path", &self.cfg.path, false)
            .map_err(|e| match e {
                inarray_runtime::VolumeError::Missing { .. } => crate::invalid(
                    "path",
                    format!("{:?} does not exist in the array", self.cfg.path),
                ),
                e => crate::invalid(
                    "path",
                    e.to_string().trim_start_matches("path: ").to_owned(),
                ),
            })?;
        // A watch root is a directory.
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| EventsError::Internal(format!("stat of the watch root: {e}")))?;
        if !meta_of(&st).is_dir {
            return Err(crate::invalid(
                "path",
                format!("{:?} is not a directory", self.cfg.path),
            ));
        }
        self.root = Some(fd);
        self.parent_cache = None;
        let snapshot = self.walk()?;
        if emit {
            self.diff_and_replace(snapshot);
        } else {
            self.known = snapshot;
        }
        Ok(())
    }

    /// Opens `rel` (relative to the watch root) without following any symlink.
    fn open_rel(&self, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        // The shared confined open (no magic links, CLOEXEC, retried on EAGAIN).
        let root = self.root.as_ref().ok_or(Errno::ENOENT)?;
        inarray_sys::open_beneath(
            root,
            std::path::Path::new(rel),
            flags,
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
    }

    /// Watches the directory `rel`; its open fd (for the scan that follows).
    fn add_dir(&mut self, rel: &str) -> Result<OwnedFd, EventsError> {
        let fd = self
            .open_rel(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| EventsError::Internal(format!("cannot open {rel:?}: {e}")))?;
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let wd = loop {
            match self.ino.add_watch(proc_path.as_str(), self.mask) {
                Ok(wd) => break wd,
                Err(Errno::ENOSPC) => raise_watch_limit()?,
                Err(e) => return Err(EventsError::Internal(format!("cannot watch {rel:?}: {e}"))),
            }
        };
        if let Some(old) = self.wd_dir.insert(wd, rel.to_owned()) {
            if old != rel {
                self.dir_wd.remove(&old);
            }
        }
        self.dir_wd.insert(rel.to_owned(), wd);
        Ok(fd)
    }

    /// Watches `rel` (a directory) and everything below it; the entries found, with their state.
    /// A directory that vanishes meanwhile is skipped.
    fn walk_from(&mut self, rel: &str) -> Result<Vec<(String, Meta)>, EventsError> {
        let mut found = Vec::new();
        let mut stack = vec![rel.to_owned()];
        while let Some(dir) = stack.pop() {
            let fd = match self.add_dir(&dir) {
                Ok(fd) => fd,
                Err(EventsError::Internal(e)) => {
                    tracing::debug!(watch = %self.cfg.name, dir, error = %e, "directory vanished during a scan");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name_str) = name.to_str() else {
                    tracing::warn!(watch = %self.cfg.name, dir, "skipping a name that is not UTF-8");
                    continue;
                };
                let child = join(&dir, name_str);
                if self.cfg.filter.excluded(&child) {
                    continue;
                }
                let Ok(st) = fstatat(
                    Some(fd.as_raw_fd()),
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) else {
                    continue;
                };
                let meta = meta_of(&st);
                if meta.is_dir && self.cfg.recursive {
                    stack.push(child.clone());
                }
                found.push((child, meta));
            }
        }
        Ok(found)
    }

    fn walk(&mut self) -> Result<BTreeMap<String, Meta>, EventsError> {
        Ok(self.walk_from("")?.into_iter().collect())
    }

    fn stat_rel(&mut self, rel: &str) -> Option<Meta> {
        let (parent, name) = parent_and_name(rel);
        let cached = matches!(&self.parent_cache, Some((p, _)) if p == parent);
        if !cached {
            let fd = self
                .open_rel(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .ok()?;
            self.parent_cache = Some((parent.to_owned(), fd));
        }
        let fd = self.parent_cache.as_ref()?.1.as_raw_fd();
        fstatat(
            Some(fd),
            OsStr::from_bytes(name.as_bytes()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| meta_of(&st))
    }

    fn array_path(&self, rel: &str) -> String {
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.prefix),
        }
    }

    fn emit(&mut self, kind: Kind, rel: &str, old: Option<&str>, is_dir: bool, meta: Option<Meta>) {
        let wanted = self.cfg.filter.wants(kind, rel)
            || (kind == Kind::Move
                && self.cfg.filter.kinds.contains(&Kind::Move)
                && old.is_some_and(|o| self.cfg.filter.path_ok(o)));
        if !wanted {
            return;
        }
        let event = NewEvent {
            watch: self.cfg.name.clone(),
            kind: kind.as_str().to_owned(),
            path: self.array_path(rel),
            old_path: old.map(|o| self.array_path(o)),
            is_dir,
            size: meta.filter(|m| !m.is_dir).map(|m| m.size),
            mtime: meta.map(|m| m.mtime),
            time: now_us(),
        };
        self.events += 1;
        if self.window_start.is_none() {
            self.window_start = Some(Instant::now());
        }
        if !self.cfg.coalesce.is_zero() {
            let coalescable = matches!(kind, Kind::CloseWrite | Kind::Attrib);
            if coalescable {
                if let Some(&i) = self.pending.get(&(rel.to_owned(), kind)) {
                    self.out[i] = event;
                    return;
                }
            }
            // Any other event on the path ends its coalescing.
            self.pending.retain(|(p, _), _| p != rel);
            if coalescable {
                self.pending.insert((rel.to_owned(), kind), self.out.len());
            }
        }
        self.out.push(event);
    }

    /// Sends what is pending when the coalescing window is over (immediately without one).
    /// False when the service is gone.
    fn flush(&mut self, force: bool) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let due = force
            || self
                .window_start
                .is_none_or(|t| t.elapsed() >= self.cfg.coalesce);
        if !due {
            return true;
        }
        self.window_start = None;
        self.pending.clear();
        let batch = std::mem::take(&mut self.out);
        self.publish_status();
        self.sink.blocking_send(batch).is_ok()
    }

    fn publish_status(&self) {
        let mut s = self.status.lock().expect("status");
        s.watched_dirs = self.dir_wd.len();
        s.known_entries = self.known.len();
        s.resyncs = self.resyncs;
        s.events = self.events;
        s.error = self.error.clone();
    }

    /// Forgets `rel` and everything below it (watches removed when `unwatch`).
    fn forget_tree(&mut self, rel: &str, unwatch: bool) {
        let keys = keys_under(&self.known, rel);
        for k in keys {
            self.known.remove(&k);
        }
        let dirs = keys_under(&self.dir_wd, rel);
        for d in dirs {
            if let Some(wd) = self.dir_wd.remove(&d) {
                self.wd_dir.remove(&wd);
                if unwatch {
                    let _ = self.ino.rm_watch(wd);
                }
            }
        }
        self.parent_cache = None;
    }

    /// Renames `old` (and everything below it) to `new` in the known state and the watch table.
    fn rename_tree(&mut self, old: &str, new: &str) {
        let rename = |k: &str| format!("{new}{}", &k[old.len()..]);
        let keys = keys_under(&self.known, old);
        // A replaced destination disappears first.
        self.forget_tree(new, false);
        for k in keys {
            if let Some(m) = self.known.remove(&k) {
                self.known.insert(rename(&k), m);
            }
        }
        let dirs = keys_under(&self.dir_wd, old);
        for d in dirs {
            if let Some(wd) = self.dir_wd.remove(&d) {
                let n = rename(&d);
                self.wd_dir.insert(wd, n.clone());
                self.dir_wd.insert(n, wd);
            }
        }
        self.parent_cache = None;
    }

    /// A new entry (created or moved in from outside the watch): reported, and a directory is
    /// watched and scanned right away so what was created in it meanwhile is reported too.
    /// `moved_in`: it came from outside the watch, reported as a `move` without `old_path`.
    fn appeared(&mut self, rel: &str, hinted_dir: bool, moved_in: bool) -> Result<(), EventsError> {
        let meta = self.stat_rel(rel);
        let is_dir = meta.map_or(hinted_dir, |m| m.is_dir);
        let already = self.known.contains_key(rel);
        if let Some(m) = meta {
            self.known.insert(rel.to_owned(), m);
        }
        if moved_in {
            self.emit(Kind::Move, rel, None, is_dir, meta);
        } else if !already {
            let kind = if is_dir { Kind::Mkdir } else { Kind::Create };
            self.emit(kind, rel, None, is_dir, meta);
        }
        if is_dir && self.cfg.recursive && meta.is_some() {
            for (child, m) in self.walk_from(rel)? {
                if self.known.insert(child.clone(), m).is_none() {
                    self.discovered(&child, m);
                }
            }
        }
        Ok(())
    }

    /// An entry found by a scan, not by an event: a directory is reported as `mkdir`, a regular
    /// file as `create` then `close_write` (its writer may be done already; if not, a real
    /// close_write follows), anything else as `create`.
    fn discovered(&mut self, rel: &str, m: Meta) {
        if m.is_dir {
            self.emit(Kind::Mkdir, rel, None, true, Some(m));
        } else {
            self.emit(Kind::Create, rel, None, false, Some(m));
            if m.is_file {
                self.emit(Kind::CloseWrite, rel, None, false, Some(m));
            }
        }
    }

    fn gone(&mut self, rel: &str, is_dir: bool) {
        let was = self.known.get(rel).copied();
        self.forget_tree(rel, is_dir);
        self.emit(
            Kind::Delete,
            rel,
            None,
            was.map_or(is_dir, |m| m.is_dir),
            None,
        );
    }

    /// Unpaired moves from older rounds (or all, when `all`) become deletes.
    fn flush_moves(&mut self, all: bool) {
        let round = self.round;
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.moves)
            .into_iter()
            .partition(|m| all || m.3 < round);
        self.moves = keep;
        for (_, rel, is_dir, _) in old {
            self.gone(&rel, is_dir);
        }
    }

    /// Rescans the tree, reports the differences, then a `resync` event.
    fn resync(&mut self, why: &str) {
        tracing::warn!(watch = %self.cfg.name, why, "rescanning the watched tree");
        self.moves.clear();
        self.resyncs += 1;
        match self.establish(true) {
            Ok(()) => {
                self.root_lost = false;
                self.error = None;
            }
            Err(e) => {
                self.root_lost = true;
                self.error = Some(format!("{why}; the watch root cannot be watched: {e}"));
                let gone: Vec<String> = self.known.keys().cloned().collect();
                for rel in gone.iter().rev() {
                    let m = self.known[rel];
                    self.emit(Kind::Delete, rel, None, m.is_dir, None);
                }
                self.known.clear();
                for (_, wd) in std::mem::take(&mut self.dir_wd) {
                    let _ = self.ino.rm_watch(wd);
                }
                self.wd_dir.clear();
            }
        }
        self.emit(Kind::Resync, "", None, true, None);
        self.flush(true);
    }

    fn diff_and_replace(&mut self, new: BTreeMap<String, Meta>) {
        let old = std::mem::take(&mut self.known);
        // Deletes, deepest first; then creates and changes, parents first.
        for (rel, m) in old.iter().rev() {
            match new.get(rel) {
                Some(n) if n.is_dir == m.is_dir => {}
                _ => self.emit(Kind::Delete, rel, None, m.is_dir, None),
            }
        }
        for (rel, n) in &new {
            match old.get(rel) {
                None => self.discovered(rel, *n),
                Some(m) if m.is_dir != n.is_dir => self.discovered(rel, *n),
                Some(m) if !n.is_dir && m != n => {
                    self.emit(Kind::CloseWrite, rel, None, false, Some(*n));
                }
                Some(_) => {}
            }
        }
        // Watches of directories that are gone.
        let stale: Vec<String> = self
            .dir_wd
            .keys()
            .filter(|d| !d.is_empty() && !new.get(*d).is_some_and(|m| m.is_dir))
            .cloned()
            .collect();
        for d in stale {
            if let Some(wd) = self.dir_wd.remove(&d) {
                self.wd_dir.remove(&wd);
                let _ = self.ino.rm_watch(wd);
            }
        }
        self.known = new;
    }

    /// Forgets the root and its watches, then resyncs (which reports everything as deleted and
    /// retries every second until the path is back).
    fn lose_root(&mut self, why: &str) {
        self.root = None;
        self.parent_cache = None;
        for (_, wd) in std::mem::take(&mut self.dir_wd) {
            let _ = self.ino.rm_watch(wd);
        }
        self.wd_dir.clear();
        self.resync(why);
    }

    /// Our fd keeps the root's dentry alive, so the kernel sends neither IN_DELETE_SELF nor
    /// IN_IGNORED when it is removed or moved away: check its identity now and then instead.
    fn check_root(&mut self) {
        let Some(fd) = self.root.as_ref() else {
            return;
        };
        let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) else {
            return;
        };
        let moved = match self.array.resolve("path", &self.cfg.path, false) {
            Ok(now) => nix::sys::stat::fstat(now.as_raw_fd())
                .map(|n| (n.st_dev, n.st_ino) != (st.st_dev, st.st_ino))
                .unwrap_or(true),
            Err(_) => true,
        };
        if st.st_nlink == 0 || moved {
            self.lose_root("the watch root was removed or moved");
        }
    }

    /// Sends the tree's state to be saved, when it changed since the last time. Periodic saves
    /// are skipped while the saver is busy (never blocking the reading of events); the last one,
    /// at stop, waits.
    fn snapshot(&mut self, wait: bool) {
        self.last_snapshot = Instant::now();
        if !self.dirty || self.root_lost {
            return;
        }
        let Some(snaps) = self.cfg.snapshots.clone() else {
            return;
        };
        let mut entries = Vec::with_capacity(self.known.len() + 1);
        entries.push((String::new(), true, false, 0, 0));
        entries.extend(
            self.known
                .iter()
                .map(|(p, m)| (p.clone(), m.is_dir, m.is_file, m.size, m.mtime)),
        );
        let msg = SnapMsg::State(self.cfg.name.clone(), entries);
        self.dirty = if wait {
            snaps.blocking_send(msg).is_err()
        } else {
            snaps.try_send(msg).is_err()
        };
    }

    fn handle(&mut self, ev: InotifyEvent) -> Result<(), EventsError> {
        self.dirty = true;
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            self.resync("the kernel's inotify queue overflowed");
            return Ok(());
        }
        let Some(dir) = self.wd_dir.get(&ev.wd).cloned() else {
            return Ok(());
        };
        if m.contains(AddWatchFlags::IN_IGNORED) {
            self.wd_dir.remove(&ev.wd);
            if self.dir_wd.get(&dir) == Some(&ev.wd) {
                self.dir_wd.remove(&dir);
            }
            let still_there = self
                .open_rel(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .is_ok();
            if dir.is_empty() || still_there {
                self.resync(if dir.is_empty() {
                    "the watch root was removed or moved"
                } else {
                    "a watch was lost while its directory still exists"
                });
            }
            return Ok(());
        }
        if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
            if dir.is_empty() {
                self.lose_root("the watch root was removed or moved");
            }
            return Ok(()); // a directory below: its parent reports it
        }
        let Some(name) = ev.name.as_ref() else {
            return Ok(());
        };
        let Some(name) = name.to_str() else {
            tracing::warn!(watch = %self.cfg.name, "skipping an event for a name that is not UTF-8");
            return Ok(());
        };
        let rel = join(&dir, name);
        if self.cfg.filter.excluded(&rel) {
            return Ok(());
        }
        let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
        if m.contains(AddWatchFlags::IN_CREATE) {
            self.appeared(&rel, is_dir, false)?;
        } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            let meta = self.stat_rel(&rel);
            if let Some(mm) = meta {
                self.known.insert(rel.clone(), mm);
            }
            self.emit(Kind::CloseWrite, &rel, None, false, meta);
        } else if m.contains(AddWatchFlags::IN_ATTRIB) {
            let meta = self.stat_rel(&rel);
            if let Some(mm) = meta {
                self.known.insert(rel.clone(), mm);
            }
            self.emit(Kind::Attrib, &rel, None, is_dir, meta);
        } else if m.contains(AddWatchFlags::IN_DELETE) {
            self.gone(&rel, is_dir);
        } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            self.moves.push((ev.cookie, rel, is_dir, self.round));
        } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
            match self.moves.iter().position(|mv| mv.0 == ev.cookie) {
                Some(i) => {
                    let (_, old, _, _) = self.moves.remove(i);
                    self.rename_tree(&old, &rel);
                    let meta = self.stat_rel(&rel);
                    if let Some(mm) = meta {
                        self.known.insert(rel.clone(), mm);
                    }
                    self.emit(Kind::Move, &rel, Some(&old), is_dir, meta);
                    // A directory that moved before its creation was processed was never
                    // watched: watch and scan it now, at its new place.
                    if is_dir
                        && self.cfg.recursive
                        && meta.is_some()
                        && !self.dir_wd.contains_key(&rel)
                    {
                        for (child, m) in self.walk_from(&rel)? {
                            if self.known.insert(child.clone(), m).is_none() {
                                self.discovered(&child, m);
                            }
                        }
                    }
                }
                None => self.appeared(&rel, is_dir, true)?,
            }
        }
        Ok(())
    }

    fn run(mut self, stop: &AtomicBool) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        while !stop.load(Ordering::SeqCst) {
            let timeout: u16 = if !self.moves.is_empty() {
                2
            } else if !self.out.is_empty() {
                let left = self
                    .cfg
                    .coalesce
                    .saturating_sub(self.window_start.map_or(Duration::ZERO, |t| t.elapsed()));
                left.as_millis().clamp(1, 200) as u16
            } else {
                200
            };
            let ready = {
                let mut fds = [PollFd::new(self.ino.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(timeout)).unwrap_or(0) > 0
            };
            if ready {
                self.round += 1;
                // Drain what the kernel has (bounded, so the flush below happens regularly).
                for _ in 0..64 {
                    match self.ino.read_events() {
                        Ok(evs) => {
                            for ev in evs {
                                if let Err(e) = self.handle(ev) {
                                    tracing::error!(watch = %self.cfg.name, error = %e, "watch degraded");
                                    self.error = Some(e.to_string());
                                }
                            }
                        }
                        Err(Errno::EAGAIN) => break,
                        Err(e) => {
                            tracing::error!(watch = %self.cfg.name, error = %e, "reading inotify failed");
                            break;
                        }
                    }
                }
                self.flush_moves(false);
            } else {
                self.flush_moves(true);
            }
            if self.last_retry.elapsed() >= Duration::from_secs(1) {
                self.last_retry = Instant::now();
                if !self.root_lost {
                    self.check_root();
                } else if self.array.resolve("path", &self.cfg.path, false).is_ok() {
                    self.resync("the watch root is back");
                }
            }
            if !self.flush(false) {
                return;
            }
            if self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.snapshot(false);
            }
        }
        self.flush_moves(true);
        self.flush(true);
        self.snapshot(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert!(under("a/b", "a") && under("a", "a") && !under("ab", "a"));
        assert_eq!(parent_and_name("a/b/c"), ("a/b", "c"));
        assert_eq!(parent_and_name("c"), ("", "c"));
        assert_eq!(join("", "x"), "x");
    }
}
