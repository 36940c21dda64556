//! Opening paths beneath a directory fd without ever leaving it: `openat2(2)` with
//! `RESOLVE_BENEATH` or `RESOLVE_IN_ROOT`, magic links always refused, and the EAGAIN the kernel
//! answers when a concurrent rename raced the walk retried a bounded number of times.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode};

use crate::fd::openat2_once;

/// How many times an EAGAIN from a confined `openat2` is retried before it is reported.
pub(crate) const EAGAIN_RETRIES: u32 = 64;

/// Runs `op` again while it fails with EAGAIN, at most [`EAGAIN_RETRIES`] more times.
pub(crate) fn retry_eagain<T>(mut op: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut tries = 0;
    loop {
        match op() {
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Opens `rel` beneath `root` with `resolve` rules, always with `RESOLVE_NO_MAGICLINKS` and
/// `O_CLOEXEC` (and `O_NOCTTY` unless `O_PATH`). An empty `rel` opens `root` itself.
///
/// With `RESOLVE_IN_ROOT`, `..` stops at `root` and absolute symlinks are taken relative to it;
/// with `RESOLVE_BENEATH`, either is refused (`EXDEV`). With `RESOLVE_IN_ROOT` or
/// `RESOLVE_BENEATH` the kernel answers EAGAIN when a rename anywhere on the filesystem raced a
/// `..` step (it cannot prove the walk stayed inside): retried, as openat2(2) says; bounded,
/// then the error is reported.
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
    retry_eagain(|| openat2_once(root, rel, how))
}

/// Opens `rel` (relative, no `..`) beneath `root` as an `O_PATH` fd, creating missing
/// directories (0755) on the way when `create` is set. `resolve` decides how symlinks are
/// treated; each step is resolved from `root` again, so a symlink met on the way is resolved
/// with `root` as its root, exactly as a single lookup would.
pub fn open_or_create_dirs(
    root: &impl AsRawFd,
    rel: &Path,
    resolve: ResolveFlag,
    create: bool,
) -> nix::Result<OwnedFd> {
    match open_beneath(root, rel, OFlag::O_PATH, resolve) {
        Err(Errno::ENOENT) if create => {}
        other => return other,
    }
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut prefix = PathBuf::new();
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
pub fn identity(fd: &impl AsRawFd) -> nix::Result<(u64, u64)> {
    let st = fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether an open file is a directory.
pub fn is_dir(fd: &impl AsRawFd) -> nix::Result<bool> {
    let st = fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The `/proc/self/fd/N` path of an fd, for mount(2) "through the fd" or reopening an `O_PATH`
/// fd with real access.
pub fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dir_fd(p: &Path) -> OwnedFd {
        crate::open(
            p,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn real_path(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(proc_fd_path(fd)).unwrap()
    }

    #[test]
    fn eagain_is_retried_a_bounded_number_of_times() {
        let mut calls = 0;
        let r: nix::Result<()> = retry_eagain(|| {
            calls += 1;
            Err(Errno::EAGAIN)
        });
        assert_eq!(r, Err(Errno::EAGAIN));
        assert_eq!(calls, EAGAIN_RETRIES + 1);

        let mut calls = 0;
        let r = retry_eagain(|| {
            calls += 1;
            if calls < 3 {
                Err(Errno::EAGAIN)
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r, Ok(3));

        let mut calls = 0;
        let r: nix::Result<()> = retry_eagain(|| {
            calls += 1;
            Err(Errno::ENOENT)
        });
        assert_eq!(
            (r, calls),
            (Err(Errno::ENOENT), 1),
            "other errors are not retried"
        );
    }

    #[test]
    fn beneath_refuses_dotdot_and_escaping_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(tmp.path().join("outside"), b"x").unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink("a", root.join("rel")).unwrap();
        let fd = dir_fd(&root);
        let beneath = ResolveFlag::RESOLVE_BENEATH;
        for escape in ["..", "../outside", "a/../../outside", "abs", "up", "/etc"] {
            assert_eq!(
                open_beneath(&fd, Path::new(escape), OFlag::O_PATH, beneath).unwrap_err(),
                Errno::EXDEV,
                "{escape}"
            );
        }
        let inside = open_beneath(&fd, Path::new("rel"), OFlag::O_PATH, beneath).unwrap();
        assert_eq!(real_path(&inside), root.canonicalize().unwrap().join("a"));
        let itself = open_beneath(&fd, Path::new(""), OFlag::O_PATH, beneath).unwrap();
        assert_eq!(identity(&itself).unwrap(), identity(&fd).unwrap());
    }

    #[test]
    fn in_root_confines_dotdot_and_absolute_symlinks_to_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        let fd = dir_fd(&root);
        let canon = root.canonicalize().unwrap();
        let in_root = ResolveFlag::RESOLVE_IN_ROOT;
        for (rel, want) in [
            ("abs", canon.join("etc")),
            ("up", canon.clone()),
            ("../../..", canon.clone()),
        ] {
            let got = open_beneath(&fd, Path::new(rel), OFlag::O_PATH, in_root).unwrap();
            assert_eq!(real_path(&got), want, "{rel}");
        }
        // Created through the absolute link: inside the root, never in the host's /etc.
        let made = open_or_create_dirs(&fd, Path::new("abs/new/deeper"), in_root, true).unwrap();
        assert_eq!(real_path(&made), canon.join("etc/new/deeper"));
        assert!(is_dir(&made).unwrap());
        assert_eq!(
            open_or_create_dirs(&fd, Path::new("missing"), in_root, false).unwrap_err(),
            Errno::ENOENT
        );
    }

    #[test]
    fn magic_links_are_refused() {
        let fd = dir_fd(Path::new("/"));
        let r = open_beneath(
            &fd,
            Path::new("proc/self/exe"),
            OFlag::O_PATH,
            ResolveFlag::RESOLVE_IN_ROOT,
        );
        assert_eq!(r.unwrap_err(), Errno::ELOOP);
    }
}
