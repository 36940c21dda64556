//! File-descriptor based helpers that never follow a path out of a directory.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Opens `rel` (a relative path, empty for the directory itself) resolving it with `root` as the
/// root directory: `..` and absolute symlinks cannot leave `root`, magic links and mount
/// crossings are refused.
pub(crate) fn open_in_root(root: &OwnedFd, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    inarray_sys::open_beneath(
        root,
        Path::new(OsStr::from_bytes(rel)),
        flags,
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_XDEV,
    )
}

/// Opens a directory for use as a `*at` anchor.
pub(crate) fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    inarray_sys::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: &OwnedFd, name: &[u8]) -> nix::Result<Option<FileStat>> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub(crate) fn is_whiteout(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never following a
/// symlink.
pub(crate) fn remove_tree_at(dir: &OwnedFd, name: &[u8]) -> nix::Result<()> {
    let st = match lstat_at(dir, name)? {
        Some(st) => st,
        None => return Ok(()),
    };
    if !is_dir(&st) {
        return unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
    }
    let fd = inarray_sys::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let child_anchor = inarray_sys::dup(&fd)?;
    let mut listing = Dir::from_fd(fd.into_raw_fd())?;
    let mut children: Vec<(CString, Option<Type>)> = Vec::new();
    for item in listing.iter() {
        let item = item?;
        let child = item.file_name();
        if child.to_bytes() == b"." || child.to_bytes() == b".." {
            continue;
        }
        children.push((child.to_owned(), item.file_type()));
    }
    drop(listing);
    for (child, kind) in children {
        match kind {
            Some(Type::Directory) | None => remove_tree_at(&child_anchor, child.to_bytes())?,
            Some(_) => unlinkat(
                Some(child_anchor.as_raw_fd()),
                child.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            )?,
        }
    }
    unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
}

/// Sets an extended attribute on an open file.
pub(crate) fn set_xattr(fd: &OwnedFd, name: &[u8], value: &[u8]) -> nix::Result<()> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `name` is a NUL-terminated string and `value` a valid slice; both outlive the
    // call, and `fd` is an open descriptor we own.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Reads an extended attribute of an open file (tests and diagnostics).
#[cfg(test)]
pub(crate) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its whole length.
    let rc = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}
