//! Unpacks one layer tar into its own directory, confined to that directory.
//!
//! Every parent directory is opened with `openat2(RESOLVE_IN_ROOT)` relative to the layer
//! directory, so `..`, absolute symlinks and symlink chains all resolve inside it; the final
//! component is created with `*at` calls on that parent descriptor and never followed
//! (`O_NOFOLLOW | O_EXCL`, `AT_SYMLINK_NOFOLLOW`). Entries with a `..` component, device nodes
//! and hard links to anything outside the layer are refused.
//!
//! OCI whiteouts become what overlayfs understands: `.wh.<name>` a 0:0 character device
//! `<name>`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use inarray_sys::openat;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

use crate::fsutil::{
    is_dir, is_whiteout, lstat_at, open_dir, open_in_root, remove_tree_at, set_xattr,
};
use crate::tarstream::{Kind, TarEntry};
use crate::ImageError;

/// Most entries one layer may hold.
pub(crate) const MAX_LAYER_ENTRIES: u64 = 4_000_000;
/// Deepest entry path accepted (bounds descriptor use when replacing directories).
pub(crate) const MAX_PATH_COMPONENTS: usize = 256;
const MAX_PATH_BYTES: usize = 4096;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Extended attributes copied from PAX `SCHILY.xattr.*` records; everything else (notably
/// `trusted.*`, which overlayfs interprets) is dropped.
fn xattr_allowed(name: &[u8]) -> bool {
    name == b"security.capability" || name.starts_with(b"user.")
}

/// Splits a tar path into its components: leading `/` and `./` and empty or `.` components are
/// dropped; a `..` component, a NUL byte or an over-long path is an error (the reason).
pub(crate) fn clean_path(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    if raw.contains(&0) {
        return Err("the path contains a NUL byte".into());
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
    }
    let mut out = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("the path has a '..' component".into()),
            c if c.len() > 255 => return Err("a path component is longer than 255 bytes".into()),
            c => out.push(c),
        }
    }
    if out.len() > MAX_PATH_COMPONENTS {
        return Err(format!(
            "the path is deeper than {MAX_PATH_COMPONENTS} components"
        ));
    }
    Ok(out)
}

pub(crate) struct Unpacker {
    root: OwnedFd,
    root_path: PathBuf,
    layer: String,
    max_bytes: u64,
    written: u64,
    entries: u64,
    dir_times: Vec<(Vec<u8>, i64)>,
    buf: Vec<u8>,
}

impl Unpacker {
    /// Unpacks into `root_path`, an existing empty directory.
    pub fn new(root_path: &Path, layer: &str, max_bytes: u64) -> Result<Self, ImageError> {
        let root = open_dir(root_path)
            .map_err(|e| ImageError::io("open layer directory", root_path, e.into()))?;
        Ok(Unpacker {
            root,
            root_path: root_path.to_path_buf(),
            layer: layer.to_string(),
            max_bytes,
            written: 0,
            entries: 0,
            dir_times: Vec::new(),
            buf: vec![0; 128 * 1024],
        })
    }

    /// Bytes of regular-file content written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Applies directory modification times (deferred, since creating entries changes them).
    pub fn finish(self) -> Result<(), ImageError> {
        for (path, mtime) in &self.dir_times {
            let t = TimeSpec::new(*mtime, 0);
            let comps = clean_path(path).unwrap_or_default();
            let fd = match comps.split_last() {
                None => inarray_sys::dup(&self.root),
                Some((base, parents)) => {
                    open_in_root(&self.root, &parents.join(&b'/'), dir_flags()).and_then(|parent| {
                        openat(
                            &parent,
                            *base,
                            dir_flags() | OFlag::O_NOFOLLOW,
                            Mode::empty(),
                        )
                    })
                }
            };
            // A directory replaced by a later entry is simply skipped.
            if let Ok(fd) = fd {
                futimens(fd.as_raw_fd(), &t, &t)
                    .map_err(|e| self.sys_error("set times of", path, e))?;
            }
        }
        Ok(())
    }

    /// Creates one entry; `data` yields its content.
    pub fn entry(&mut self, e: &TarEntry, data: &mut dyn Read) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > MAX_LAYER_ENTRIES {
            return Err(ImageError::LayerFormat {
                layer: self.layer.clone(),
                reason: format!("more than {MAX_LAYER_ENTRIES} entries"),
            });
        }
        let comps = clean_path(&e.path).map_err(|reason| self.refuse(&e.path, reason))?;
        let Some((&base, parents)) = comps.split_last() else {
            // The layer root itself ("./").
            if e.kind != Kind::Dir {
                return Err(self.refuse(&e.path, "the layer root must be a directory"));
            }
            let root =
                inarray_sys::dup(&self.root).map_err(|err| self.sys_error("open", &e.path, err))?;
            self.set_owner_mode(&root, e)?;
            self.dir_times.push((Vec::new(), e.mtime));
            return Ok(());
        };

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(e, parents, base);
        }
        match e.kind {
            Kind::Char | Kind::Block => {
                return Err(self.refuse(&e.path, "device nodes are not allowed in layers"))
            }
            Kind::Other(flag) => {
                return Err(self.refuse(
                    &e.path,
                    format!("unsupported tar entry type {:?}", flag as char),
                ))
            }
            _ => {}
        }
        // Resolve a hard link's target before touching anything.
        let link_target = if e.kind == Kind::HardLink {
            let target = clean_path(&e.link)
                .map_err(|reason| self.refuse(&e.path, format!("hard link target: {reason}")))?;
            if target == comps {
                return Ok(()); // a link to itself: nothing to do
            }
            Some(self.hard_link_target(e, &target)?)
        } else {
            None
        };

        let parent = self.parent_dir(e, parents)?;
        let existing =
            lstat_at(&parent, base).map_err(|err| self.sys_error("stat", &e.path, err))?;
        let mut replaced_whiteout = false;
        let mut keep_dir = false;
        if let Some(st) = existing {
            if e.kind == Kind::Dir && is_dir(&st) {
                keep_dir = true;
            } else {
                replaced_whiteout = is_whiteout(&st);
                remove_tree_at(&parent, base)
                    .map_err(|err| self.sys_error("replace", &e.path, err))?;
            }
        }
        let at = Some(parent.as_raw_fd());
        match e.kind {
            Kind::Dir => {
                if !keep_dir {
                    mkdirat(at, base, Mode::from_bits_truncate(0o700))
                        .map_err(|err| self.sys_error("create directory", &e.path, err))?;
                }
                let dir = openat(
                    &parent,
                    base,
                    dir_flags() | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|err| self.sys_error("open directory", &e.path, err))?;
                self.set_owner_mode(&dir, e)?;
                if replaced_whiteout {
                    // The directory replaces one deleted in this layer: hide the lower one.
                    set_xattr(&dir, b"trusted.overlay.opaque", b"y")
                        .map_err(|err| self.sys_error("mark opaque", &e.path, err))?;
                }
                let path = comps.join(&b'/');
                self.dir_times.push((path, e.mtime));
            }
            Kind::File => {
                let fd = openat(
                    &parent,
                    base,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|err| self.sys_error("create file", &e.path, err))?;
                let mut file = File::from(fd);
                self.copy_data(e, data, &mut file)?;
                let fd = OwnedFd::from(file);
                self.set_owner_mode(&fd, e)?;
                // After chown, which clears security.capability.
                for (name, value) in e.xattrs.iter().filter(|(n, _)| xattr_allowed(n)) {
                    set_xattr(&fd, name, value)
                        .map_err(|err| self.sys_error("set extended attribute on", &e.path, err))?;
                }
                let t = TimeSpec::new(e.mtime, 0);
                futimens(fd.as_raw_fd(), &t, &t)
                    .map_err(|err| self.sys_error("set times of", &e.path, err))?;
            }
            Kind::Symlink => {
                if e.link.is_empty() || e.link.contains(&0) || e.link.len() >= MAX_PATH_BYTES {
                    return Err(self.refuse(&e.path, "invalid symbolic link target"));
                }
                symlinkat(e.link.as_slice(), at, base)
                    .map_err(|err| self.sys_error("create symbolic link", &e.path, err))?;
                self.set_owner_times_nofollow(&parent, base, e)?;
            }
            Kind::HardLink => {
                let (target_dir, target_base) = link_target.expect("resolved above");
                linkat(
                    Some(target_dir.as_raw_fd()),
                    target_base.as_slice(),
                    at,
                    base,
                    AtFlags::empty(),
                )
                .map_err(|err| self.sys_error("create hard link", &e.path, err))?;
            }
            Kind::Fifo => {
                mknodat(at, base, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(|err| self.sys_error("create fifo", &e.path, err))?;
                self.set_owner_times_nofollow(&parent, base, e)?;
                // After chown; the name was just created by us in a directory only we write to.
                fchmodat(
                    at,
                    base,
                    Mode::from_bits_truncate(e.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|err| self.sys_error("set mode of", &e.path, err))?;
            }
            Kind::Char | Kind::Block | Kind::Other(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    fn whiteout(&mut self, e: &TarEntry, parents: &[&[u8]], base: &[u8]) -> Result<(), ImageError> {
        let parent = self.parent_dir(e, parents)?;
        if base == OPAQUE_MARKER {
            return set_xattr(&parent, b"trusted.overlay.opaque", b"y")
                .map_err(|err| self.sys_error("mark opaque", &e.path, err));
        }
        if base.starts_with(b".wh..wh.") {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk and the like): nothing for overlayfs
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(self.refuse(&e.path, "malformed whiteout name"));
        }
        // An entry of the same name added by this layer already hides the lower one; OCI says
        // whiteouts only apply to lower layers, so it stays.
        let existing =
            lstat_at(&parent, name).map_err(|err| self.sys_error("stat", &e.path, err))?;
        if existing.is_none() {
            mknodat(
                Some(parent.as_raw_fd()),
                name,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|err| self.sys_error("create whiteout", &e.path, err))?;
        }
        Ok(())
    }

    /// Opens the directory that will hold an entry, creating missing directories (0755, owned
    /// by the unpacking user, root) inside the layer.
    fn parent_dir(&self, e: &TarEntry, parents: &[&[u8]]) -> Result<OwnedFd, ImageError> {
        match open_in_root(&self.root, &parents.join(&b'/'), dir_flags()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(err) => return Err(self.sys_error("open parent directory of", &e.path, err)),
        }
        let mut current = open_in_root(&self.root, b"", dir_flags())
            .map_err(|err| self.sys_error("open layer root for", &e.path, err))?;
        for i in 0..parents.len() {
            let prefix = parents[..=i].join(&b'/');
            match open_in_root(&self.root, &prefix, dir_flags()) {
                Ok(fd) => {
                    current = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(err) => return Err(self.sys_error("open parent directory of", &e.path, err)),
            }
            let created = match mkdirat(
                Some(current.as_raw_fd()),
                parents[i],
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(err) => return Err(self.sys_error("create parent directory of", &e.path, err)),
            };
            let fd = match open_in_root(&self.root, &prefix, dir_flags()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    return Err(self.refuse(
                        &e.path,
                        "a parent path component is a dangling symbolic link",
                    ))
                }
                Err(err) => return Err(self.sys_error("open parent directory of", &e.path, err)),
            };
            if created {
                fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                    .map_err(|err| self.sys_error("set mode of parent of", &e.path, err))?;
            }
            current = fd;
        }
        Ok(current)
    }

    fn hard_link_target(
        &self,
        e: &TarEntry,
        target: &[&[u8]],
    ) -> Result<(OwnedFd, Vec<u8>), ImageError> {
        let not_here = || self.refuse(&e.path, "the hard link target is not in this layer");
        let Some((&base, parents)) = target.split_last() else {
            return Err(not_here());
        };
        let dir = match open_in_root(&self.root, &parents.join(&b'/'), dir_flags()) {
            Ok(dir) => dir,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(not_here()),
            Err(err) => return Err(self.sys_error("open hard link target of", &e.path, err)),
        };
        match lstat_at(&dir, base)
            .map_err(|err| self.sys_error("stat hard link target of", &e.path, err))?
        {
            None => Err(not_here()),
            Some(st) if is_dir(&st) => Err(self.refuse(&e.path, "hard link to a directory")),
            Some(_) => Ok((dir, base.to_vec())),
        }
    }

    fn copy_data(
        &mut self,
        e: &TarEntry,
        data: &mut dyn Read,
        file: &mut File,
    ) -> Result<(), ImageError> {
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(ImageError::LayerFormat {
                        layer: self.layer.clone(),
                        reason: err.to_string(),
                    })
                }
            };
            if n == 0 {
                return Ok(());
            }
            self.written += n as u64;
            if self.written > self.max_bytes {
                return Err(ImageError::TooLarge {
                    what: format!("unpacked layer {}", self.layer),
                    limit: self.max_bytes,
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(|err| ImageError::io("write", self.entry_path(&e.path), err))?;
        }
    }

    fn set_owner_mode(&self, fd: &OwnedFd, e: &TarEntry) -> Result<(), ImageError> {
        let (uid, gid) = self.ids(e)?;
        fchown(fd.as_raw_fd(), Some(uid), Some(gid))
            .map_err(|err| self.sys_error("change owner of", &e.path, err))?;
        // After chown, which clears set-user-ID and set-group-ID.
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(e.mode))
            .map_err(|err| self.sys_error("set mode of", &e.path, err))
    }

    fn set_owner_times_nofollow(
        &self,
        parent: &OwnedFd,
        base: &[u8],
        e: &TarEntry,
    ) -> Result<(), ImageError> {
        let (uid, gid) = self.ids(e)?;
        fchownat(
            Some(parent.as_raw_fd()),
            base,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|err| self.sys_error("change owner of", &e.path, err))?;
        let t = TimeSpec::new(e.mtime, 0);
        utimensat(
            Some(parent.as_raw_fd()),
            base,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|err| self.sys_error("set times of", &e.path, err))
    }

    fn ids(&self, e: &TarEntry) -> Result<(Uid, Gid), ImageError> {
        match (u32::try_from(e.uid), u32::try_from(e.gid)) {
            (Ok(uid), Ok(gid)) if uid != u32::MAX && gid != u32::MAX => {
                Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
            }
            _ => Err(self.refuse(&e.path, "uid or gid out of range")),
        }
    }

    fn entry_path(&self, raw: &[u8]) -> PathBuf {
        let shown = String::from_utf8_lossy(raw);
        self.root_path.join(shown.trim_start_matches('/'))
    }

    fn refuse(&self, raw: &[u8], reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            reason: reason.into(),
        }
    }

    /// A failed system call: the node's fault (disk full, out of descriptors) becomes
    /// [`ImageError::Io`], anything else is blamed on the entry.
    fn sys_error(&self, op: &'static str, raw: &[u8], err: Errno) -> ImageError {
        match err {
            Errno::ENOSPC
            | Errno::EDQUOT
            | Errno::EIO
            | Errno::EMFILE
            | Errno::ENFILE
            | Errno::ENOMEM
            | Errno::EROFS
            | Errno::EPERM
            | Errno::EACCES => ImageError::io(op, self.entry_path(raw), err.into()),
            _ => self.refuse(
                raw,
                format!("cannot {op} it: {}", err.desc().to_lowercase()),
            ),
        }
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}
