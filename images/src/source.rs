//! Where an import's files come from: a streamed archive (staged whole into the store's tmp
//! directory while hashing) or a layout directory (staged file by file on demand). Either way
//! the import only ever reads the staged copies, whose digests were computed as they were written.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};

use crate::fsutil::{open_dir, open_in_root};
use crate::tarstream::{Kind, TarReader};
use crate::unpack::clean_path;
use crate::{ImageError, Limits};

/// Most entries an image archive may hold (layers are single entries, so real archives have few).
const MAX_ARCHIVE_ENTRIES: u64 = 100_000;
/// Symlink hops followed when looking a path up in an archive.
const MAX_LINK_HOPS: usize = 16;

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// A private directory under the store's tmp/, removed with everything in it when dropped.
pub(crate) struct Staging {
    dir: PathBuf,
    next: Cell<u64>,
}

impl Staging {
    pub fn create(tmp: &Path, kind: &str) -> Result<Self, ImageError> {
        loop {
            let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = tmp.join(format!("{kind}-{}-{seq}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Staging {
                        dir,
                        next: Cell::new(0),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io("create staging directory", dir, e)),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path inside the staging directory.
    pub fn new_path(&self, prefix: &str) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        self.dir.join(format!("{prefix}{n}"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove staging directory");
            }
        }
    }
}

/// A file copied into staging, with the sha256 of exactly what was written.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub path: PathBuf,
    /// "sha256:<hex>"
    pub digest: String,
    pub size: u64,
}

/// Copies `reader` into a new staged file while hashing it; more than `limit` bytes is an error
/// naming `what`. `read_error` classifies failures of the reader.
pub(crate) fn stage_stream(
    reader: &mut dyn Read,
    staging: &Staging,
    limit: u64,
    what: &str,
    read_error: &dyn Fn(io::Error) -> ImageError,
) -> Result<Staged, ImageError> {
    let path = staging.new_path("f");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| ImageError::io("create", &path, e))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        size += n as u64;
        if size > limit {
            return Err(ImageError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| ImageError::io("write", &path, e))?;
    }
    Ok(Staged {
        path,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
    })
}

/// Writes `bytes` as a staged file (for documents the import synthesizes).
pub(crate) fn stage_bytes(staging: &Staging, bytes: &[u8]) -> Result<Staged, ImageError> {
    let path = staging.new_path("m");
    fs::write(&path, bytes).map_err(|e| ImageError::io("write", &path, e))?;
    Ok(Staged {
        path,
        digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        size: bytes.len() as u64,
    })
}

/// Reads a staged file of at most `limit` bytes.
pub(crate) fn read_small(staged: &Staged, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    if staged.size > limit {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let mut data = Vec::with_capacity(staged.size as usize);
    File::open(&staged.path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut data))
        .map_err(|e| ImageError::io("read", &staged.path, e))?;
    Ok(data)
}

/// Normalizes a path inside an archive or layout ("./a//b" → "a/b"); `..` is refused.
pub(crate) fn archive_key(raw: &[u8]) -> Result<String, ImageError> {
    let comps = clean_path(raw).map_err(|reason| {
        ImageError::InvalidArchive(format!("path {:?}: {reason}", String::from_utf8_lossy(raw)))
    })?;
    let joined = comps.join(&b'/');
    String::from_utf8(joined).map_err(|_| {
        ImageError::InvalidArchive(format!(
            "path {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })
}

/// Files of an image, looked up by their path inside the archive or layout.
pub(crate) trait Source {
    fn get(&mut self, path: &str) -> Result<Option<Staged>, ImageError>;
}

enum Link {
    Symbolic(Vec<u8>),
    Hard(String),
}

/// Every regular file of a streamed archive, staged.
pub(crate) struct ArchiveSource {
    files: HashMap<String, Staged>,
    links: HashMap<String, Link>,
}

impl ArchiveSource {
    pub fn read<R: Read>(
        reader: R,
        staging: &Staging,
        limits: &Limits,
    ) -> Result<Self, ImageError> {
        let mut tar = TarReader::new(reader);
        let mut files: HashMap<String, Staged> = HashMap::new();
        let mut links = HashMap::new();
        let mut count: u64 = 0;
        while let Some(entry) = tar.next_entry().map_err(ImageError::ArchiveRead)? {
            count += 1;
            if count > MAX_ARCHIVE_ENTRIES {
                return Err(ImageError::InvalidArchive(format!(
                    "more than {MAX_ARCHIVE_ENTRIES} entries"
                )));
            }
            let key = archive_key(&entry.path)?;
            match entry.kind {
                Kind::File => {
                    let what = format!("archive entry {key:?}");
                    let staged = stage_stream(
                        &mut EntryReader(&mut tar),
                        staging,
                        limits.max_blob_bytes,
                        &what,
                        &ImageError::ArchiveRead,
                    )?;
                    links.remove(&key);
                    if let Some(old) = files.insert(key, staged) {
                        let _ = fs::remove_file(old.path);
                    }
                }
                Kind::Symlink => {
                    files.remove(&key).map(|old| fs::remove_file(old.path));
                    links.insert(key, Link::Symbolic(entry.link.clone()));
                }
                Kind::HardLink => {
                    let target = archive_key(&entry.link)?;
                    files.remove(&key).map(|old| fs::remove_file(old.path));
                    links.insert(key, Link::Hard(target));
                }
                // Directories and anything else carry nothing an image import needs.
                _ => {}
            }
        }
        Ok(ArchiveSource { files, links })
    }
}

impl Source for ArchiveSource {
    fn get(&mut self, path: &str) -> Result<Option<Staged>, ImageError> {
        let mut key = archive_key(path.as_bytes())?;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(staged) = self.files.get(&key) {
                return Ok(Some(staged.clone()));
            }
            key = match self.links.get(&key) {
                None => return Ok(None),
                Some(Link::Hard(target)) => target.clone(),
                Some(Link::Symbolic(target)) => resolve_symlink(&key, target)?,
            };
        }
        Err(ImageError::InvalidArchive(format!(
            "too many levels of symbolic links at {path:?}"
        )))
    }
}

/// Resolves a symlink's target lexically relative to the link's directory; it must stay inside
/// the archive.
fn resolve_symlink(link: &str, target: &[u8]) -> Result<String, ImageError> {
    let mut parts: Vec<&[u8]> = if target.starts_with(b"/") {
        Vec::new()
    } else {
        let mut dir: Vec<&[u8]> = link.as_bytes().split(|&b| b == b'/').collect();
        dir.pop();
        dir
    };
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(ImageError::InvalidArchive(format!(
                        "symbolic link {link:?} points outside the archive"
                    )));
                }
            }
            c => parts.push(c),
        }
    }
    archive_key(&parts.join(&b'/'))
}

struct EntryReader<'a, R>(&'a mut TarReader<R>);

impl<R: Read> Read for EntryReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

/// An OCI image layout directory; files are opened beneath it (symlinks cannot lead out) and
/// copied into staging while hashing, once each.
pub(crate) struct DirSource<'a> {
    root: OwnedFd,
    dir: PathBuf,
    staging: &'a Staging,
    limit: u64,
    cache: HashMap<String, Staged>,
}

impl<'a> DirSource<'a> {
    pub fn open(dir: &Path, staging: &'a Staging, limits: &Limits) -> Result<Self, ImageError> {
        let root = open_dir(dir).map_err(|e| ImageError::io("open image layout", dir, e.into()))?;
        Ok(DirSource {
            root,
            dir: dir.to_path_buf(),
            staging,
            limit: limits.max_blob_bytes,
            cache: HashMap::new(),
        })
    }
}

impl Source for DirSource<'_> {
    fn get(&mut self, path: &str) -> Result<Option<Staged>, ImageError> {
        let key = archive_key(path.as_bytes())?;
        if let Some(staged) = self.cache.get(&key) {
            return Ok(Some(staged.clone()));
        }
        let full = self.dir.join(&key);
        let fd = match open_in_root(&self.root, key.as_bytes(), OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(ImageError::io("open", full, e.into())),
        };
        let mut file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| ImageError::io("stat", &full, e))?;
        if !meta.is_file() {
            return Err(ImageError::InvalidArchive(format!(
                "{key:?} is not a regular file"
            )));
        }
        let what = format!("layout file {key:?}");
        let read_error = |e| ImageError::io("read", full.clone(), e);
        let staged = stage_stream(&mut file, self.staging, self.limit, &what, &read_error)?;
        self.cache.insert(key, staged.clone());
        Ok(Some(staged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_archive_symlinks_lexically() {
        assert_eq!(
            resolve_symlink("a/layer.tar", b"../b/layer.tar").unwrap(),
            "b/layer.tar"
        );
        assert_eq!(resolve_symlink("a/x", b"/c/d").unwrap(), "c/d");
        assert!(resolve_symlink("a/x", b"../../etc/passwd").is_err());
    }
}
