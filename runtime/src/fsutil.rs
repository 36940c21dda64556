//! Small fd-based filesystem helpers: resolving paths beneath a root without escaping it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode};

/// Takes ownership of a raw fd a successful syscall just returned.
pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens `rel` beneath `root` with `resolve` rules (always at least RESOLVE_NO_MAGICLINKS).
pub fn open_beneath(
    root: &impl AsRawFd,
    rel: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    // openat2 refuses O_PATH combined with anything but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW.
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    let how = OpenHow::new()
        .flags(flags | extra)
        .resolve(resolve | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // With RESOLVE_IN_ROOT/RESOLVE_BENEATH the kernel answers EAGAIN when a rename anywhere on
    // the filesystem raced a `..` step (it cannot prove the walk stayed inside): retry, as
    // openat2(2) says; bounded, then the error is reported.
    let mut tries = 0;
    loop {
        match openat2(root.as_raw_fd(), rel, how) {
            Err(nix::errno::Errno::EAGAIN) if tries < 64 => tries += 1,
            other => return other.map(owned),
        }
    }
}

/// Opens `rel` (relative, no `..`) beneath `root` as an O_PATH fd, creating missing directories
/// (0755) on the way when `create` is set. `resolve` decides how symlinks are treated.
pub(crate) fn open_or_create_dirs(
    root: &impl AsRawFd,
    rel: &Path,
    resolve: ResolveFlag,
    create: bool,
) -> nix::Result<OwnedFd> {
    match open_beneath(root, rel, OFlag::O_PATH, resolve) {
        Err(Errno::ENOENT) if create => {}
        other => return other,
    }
    // Each step is resolved from `root` again (not from the previous directory), so a symlink
    // met on the way is resolved with `root` as its root, exactly as a single lookup would.
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut prefix = std::path::PathBuf::new();
    let mut dir = open_beneath(root, Path::new("."), dir_flags, resolve)?;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        prefix.push(name);
        dir = open_beneath(root, &prefix, dir_flags, resolve)?;
    }
    Ok(dir)
}

/// (device, inode) of an open file.
pub(crate) fn identity(fd: &impl AsRawFd) -> nix::Result<(u64, u64)> {
    let st = fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

pub(crate) fn is_dir(fd: &impl AsRawFd) -> nix::Result<bool> {
    let st = fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The `/proc/self/fd/N` path of an fd, for mount(2) "through the fd".
pub(crate) fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Replaces `path` with `data` atomically (temp file, rename), without forcing it to disk: for
/// derived files that are regenerated when lost.
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
