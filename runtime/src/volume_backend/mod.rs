//! Array volumes on disk: the [`VolumeBackend`] trait and its backends, chosen by the array's
//! filesystem (`statfs` magic) — btrfs subvolumes with qgroup limits and native snapshots
//! (`btrfs.rs`), and a plain-directory fallback with neither quota nor cheap snapshots
//! (`plain.rs`).
//!
//! Layout, beneath the array root: `.inarray-volumes/volumes/<name>` (what a container mounts)
//! and `.inarray-volumes/snapshots/<volume>/<snapshot>`. Volume and snapshot names never start
//! with `.` (`inarray_store::names::VOLUME`), so a backend's work in progress uses dot-names
//! (`.restore-<name>`) that reconcile removes. Every operation goes through directory fds
//! opened beneath the array root without following symlinks, never through a path string.
//! The registry (SQL rows) is the manager's (`manager/volumes.rs`); a backend only knows files.

mod btrfs;
mod plain;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use inarray_sys::{open_beneath, open_or_create_dirs, OFlag, ResolveFlag};
use nix::errno::Errno;

pub use btrfs::Btrfs;
pub use plain::Plain;

/// The directory of the array that holds volumes and snapshots.
pub const VOLUMES_DIR: &str = ".inarray-volumes";

/// What a backend is; stored in each volume's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Btrfs,
    Plain,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Btrfs => "btrfs",
            Self::Plain => "plain",
        }
    }
}

/// What a backend can promise, shown to the operator.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Capabilities {
    /// A size limit is enforced by the kernel (writes past it fail with EDQUOT).
    pub quota: bool,
    /// Snapshots, restores and clones are cheap (copy-on-write) and atomic.
    pub snapshots: bool,
}

/// A volume's use of the array now.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    /// Bytes charged to the volume (the quota's count where there is one, else the allocated
    /// blocks of its files); `None` when the backend cannot tell.
    pub bytes: Option<u64>,
    /// Files, directories and other entries in the volume (a walk).
    pub files: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot do this at all (e.g. a quota on plain directories).
    #[error("{0}")]
    Unsupported(String),
    /// The filesystem is not set up for it (e.g. btrfs quotas not enabled).
    #[error("{0}")]
    NotReady(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>, errno: Errno) -> BackendError {
    BackendError::Io {
        what: what.into(),
        source: std::io::Error::from(errno),
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// One kind of volume storage. Names are single components checked by the caller; every
/// method is idempotent where it can be (a destroy of what is gone succeeds), so reconcile can
/// finish an operation a crash interrupted by running it again.
pub trait VolumeBackend: Send + Sync {
    fn kind(&self) -> BackendKind;
    fn capabilities(&self) -> Capabilities;
    /// Makes an empty volume limited to `size` bytes (`None`: no limit).
    fn create(&self, name: &str, size: Option<u64>) -> Result<()>;
    /// Changes the limit of an existing volume, live.
    fn set_size(&self, name: &str, size: Option<u64>) -> Result<()>;
    fn usage(&self, name: &str) -> Result<Usage>;
    /// Removes a volume and everything in it; its snapshots are removed by
    /// [`delete_snapshot`](Self::delete_snapshot) first.
    fn destroy(&self, name: &str) -> Result<()>;
    /// The names of the entries of `volumes/` (including work in progress: dot-names).
    fn list(&self) -> Result<Vec<String>>;
    fn exists(&self, name: &str) -> Result<bool>;
    /// Snapshots `volume` as `snapshot` (read-only, atomic).
    fn snapshot(&self, volume: &str, snapshot: &str) -> Result<()>;
    fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()>;
    fn snapshot_exists(&self, volume: &str, snapshot: &str) -> Result<bool>;
    /// Replaces the contents of `volume` by `snapshot`'s, atomically; the limit stays `size`.
    fn restore(&self, volume: &str, snapshot: &str, size: Option<u64>) -> Result<()>;
    /// Makes the new volume `target` from `snapshot` of `volume` (or from the live volume when
    /// `snapshot` is `None`), independent of it, limited to `size`.
    fn clone_volume(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        target: &str,
        size: Option<u64>,
    ) -> Result<()>;
}

/// The array root and the volume directories beneath it, opened without following symlinks.
#[derive(Debug)]
pub(crate) struct Dirs {
    array: OwnedFd,
}

const NO_LINKS: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS);

impl Dirs {
    pub(crate) fn open(array: &Path) -> Result<Self> {
        let array = inarray_sys::open(
            array,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io(format!("cannot open the array {}", array.display()), e))?;
        Ok(Self { array })
    }

    /// `.inarray-volumes/<sub>`, created (0700) when missing, opened for ioctls.
    pub(crate) fn dir(&self, sub: &str) -> Result<OwnedFd> {
        let rel = PathBuf::from(VOLUMES_DIR).join(sub);
        match open_beneath(
            &self.array,
            &rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            NO_LINKS,
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(io(format!("cannot open {}", rel.display()), e)),
        }
        open_or_create_dirs(&self.array, &rel, NO_LINKS, true)
            .map_err(|e| io(format!("cannot create {}", rel.display()), e))?;
        let top = open_beneath(
            &self.array,
            Path::new(VOLUMES_DIR),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            NO_LINKS,
        )
        .map_err(|e| io(format!("cannot open {VOLUMES_DIR}"), e))?;
        let _ = nix::sys::stat::fchmod(
            std::os::fd::AsRawFd::as_raw_fd(&top),
            nix::sys::stat::Mode::from_bits_truncate(0o700),
        );
        open_beneath(
            &self.array,
            &rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            NO_LINKS,
        )
        .map_err(|e| io(format!("cannot open {}", rel.display()), e))
    }

    pub(crate) fn volumes(&self) -> Result<OwnedFd> {
        self.dir("volumes")
    }

    /// `snapshots/<volume>`, created when missing.
    pub(crate) fn snapshots_of(&self, volume: &str) -> Result<OwnedFd> {
        self.dir(&format!("snapshots/{volume}"))
    }

    /// The magic number of the array's filesystem.
    pub(crate) fn magic(&self) -> Result<i64> {
        inarray_sys::quota::fs_magic(self.array.as_fd()).map_err(|e| io("statfs of the array", e))
    }
}

/// Opens `name` in `dir` (no symlink followed) for reading, or `None` when it is missing.
pub(crate) fn open_in(dir: &OwnedFd, name: &str) -> Result<Option<OwnedFd>> {
    match open_beneath(
        dir,
        Path::new(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        NO_LINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(io(format!("cannot open {name}"), e)),
    }
}

/// The names in a directory (not `.`/`..`).
pub(crate) fn names_in(dir: &OwnedFd) -> Result<Vec<String>> {
    let path = inarray_sys::proc_fd_path(dir);
    let rd = std::fs::read_dir(&path).map_err(|source| BackendError::Io {
        what: "cannot list the volume directory".into(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Counts the entries below `dir` and sums their allocated bytes, without following symlinks or
/// leaving the filesystem. Costs a `stat` per entry (≈ 0.1 s per 100k files, warm).
pub(crate) fn walk(dir: &OwnedFd) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let root = PathBuf::from(inarray_sys::proc_fd_path(dir));
    let Ok(dev) = std::fs::metadata(&root).map(|m| m.dev()) else {
        return (0, 0);
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            files += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() && md.dev() == dev {
                stack.push(e.path());
            }
        }
    }
    (files, bytes)
}

/// Removes `name` in `dir` and everything below it (never following a symlink out).
pub(crate) fn remove_tree(dir: &OwnedFd, name: &str) -> Result<()> {
    let p = PathBuf::from(inarray_sys::proc_fd_path(dir)).join(name);
    match std::fs::symlink_metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BackendError::Io {
                what: format!("cannot stat {name}"),
                source,
            })
        }
        Ok(md) if !md.is_dir() => std::fs::remove_file(&p),
        Ok(_) => std::fs::remove_dir_all(&p),
    }
    .map_err(|source| BackendError::Io {
        what: format!("cannot remove {name}"),
        source,
    })
}

/// The backend for the array at `array`, by its filesystem: btrfs → [`Btrfs`], anything else
/// → [`Plain`], which says why there is no quota (ext4/XFS project quotas: the mount option is
/// checked, the backend itself is not implemented yet; see docs/design/volumes.md).
pub fn detect(array: &Path) -> Result<Box<dyn VolumeBackend>> {
    let dirs = Dirs::open(array)?;
    let magic = dirs.magic()?;
    if magic == inarray_sys::quota::BTRFS_MAGIC {
        return Ok(Box::new(Btrfs::new(dirs)));
    }
    let fs = match magic {
        inarray_sys::quota::EXT4_MAGIC => Some("ext4"),
        inarray_sys::quota::XFS_MAGIC => Some("xfs"),
        _ => None,
    };
    let why = match fs {
        Some(fs) if mount_options(array).iter().any(|o| o == "prjquota" || o == "pquota") => {
            format!("the array is {fs} mounted with project quotas, but inarray's project-quota backend is not implemented yet")
        }
        Some(fs) => format!(
            "the array is {fs} mounted without project quotas (mount it with -o prjquota; a kernel without CONFIG_QUOTA/CONFIG_XFS_QUOTA cannot)"
        ),
        None => format!("the array's filesystem (statfs magic {magic:#x}) has no quota inarray can set"),
    };
    Ok(Box::new(Plain::new(dirs, why)))
}

/// The options of the mount `path` is on (the last mount whose point is a prefix of it).
fn mount_options(path: &Path) -> Vec<String> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, Vec<String>)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(point), Some(super_opts)) = (f.get(4), f.get(sep + 3)) else {
            continue;
        };
        if path.starts_with(point) && best.as_ref().is_none_or(|(l, _)| point.len() >= *l) {
            let mut opts: Vec<String> = f[5].split(',').map(str::to_owned).collect();
            opts.extend(super_opts.split(',').map(str::to_owned));
            best = Some((point.len(), opts));
        }
    }
    best.map(|(_, o)| o).unwrap_or_default()
}
