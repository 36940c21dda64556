//! Descriptors owned from the moment a syscall returns them, and the few syscalls nix offers no
//! safe form of. Every `unsafe` block of the crate is in this module.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

/// Takes ownership of a descriptor a successful syscall has just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: every caller passes a descriptor that a successful open/dup/pidfd_open call has
    // just returned: it is open, and nothing else owns or will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `open(2)`; the caller chooses the flags (pass `O_CLOEXEC`).
pub fn open(path: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    nix::fcntl::open(path, flags, mode).map(owned)
}

/// `openat(2)` relative to `dir`; the caller chooses the flags (pass `O_CLOEXEC`).
pub fn openat(
    dir: &impl AsRawFd,
    name: &(impl nix::NixPath + ?Sized),
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode).map(owned)
}

/// `openat2(2)` once (no retry: see [`crate::open_beneath`]).
pub(crate) fn openat2_once(
    dir: &impl AsRawFd,
    path: &Path,
    how: nix::fcntl::OpenHow,
) -> nix::Result<OwnedFd> {
    nix::fcntl::openat2(dir.as_raw_fd(), path, how).map(owned)
}

/// A close-on-exec duplicate of `fd`.
pub fn dup(fd: &impl AsRawFd) -> nix::Result<OwnedFd> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(0)).map(owned)
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    Ok(owned(fd))
}

/// One `pread(2)` of at most `max` bytes at `offset`, appended to `out` in its spare capacity
/// (never zero-filled first). Returns the number of bytes read (0 at the end of the file).
pub(crate) fn pread_spare(
    fd: &impl AsFd,
    out: &mut Vec<u8>,
    max: usize,
    offset: u64,
) -> io::Result<usize> {
    let len = out.len();
    let spare = out.spare_capacity_mut();
    let max = max.min(spare.len());
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the destination is `max` bytes of the vector's spare capacity, writable and not
    // aliased; pread writes at most `max` bytes there.
    let n = unsafe {
        libc::pread(
            fd.as_fd().as_raw_fd(),
            spare.as_mut_ptr().cast(),
            max,
            offset,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: pread initialised the first `n` (<= `max` <= spare capacity) bytes after `len`.
    unsafe { out.set_len(len + n) };
    Ok(n)
}

/// Unlocks the pseudo-terminal `master` (`TIOCSPTLCK` 0) and opens its peer, the slave side,
/// through the master itself (`TIOCGPTPEER`, Linux 4.13): no path lookup, so it works for a
/// master of any devpts instance, e.g. a container's.
pub fn pty_peer(master: &impl AsRawFd) -> io::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one c_int through the pointer, which points at a live local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd))
}

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`); the kernel signals SIGWINCH to its
/// foreground process group.
pub fn set_window_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points at a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the terminal `fd` the controlling terminal of the calling session leader
/// (`TIOCSCTTY`).
pub fn set_controlling_tty(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument by value (0: do not steal) and touches no memory.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
