//! The system calls the gateway is built on: kernel file handles, fd-relative lookups, directory
//! reading, and the per-thread filesystem identity (fsuid, fsgid, supplementary groups) that makes
//! the kernel enforce permissions as the mapped NFS user.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::exports::Ident;

/// Takes ownership of an fd a successful syscall just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful open-type syscall returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Largest kernel file handle we embed in an NFS handle (ext4 uses 8 bytes, xfs 8–16, btrfs 20,
/// tmpfs 12).
pub const MAX_KERNEL_HANDLE: usize = 38;

#[repr(C)]
struct FileHandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; 128],
}

/// A kernel file handle: the file's identity on its filesystem (inode and generation), valid
/// across reboots and restarts while the file exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHandle {
    pub kind: i32,
    pub bytes: Vec<u8>,
}

/// `name_to_handle_at(dir, name, AT_EMPTY_PATH when name is empty)`, never following a symlink.
pub fn name_to_handle(dir: &impl AsRawFd, name: &CStr) -> io::Result<KernelHandle> {
    let mut buf = FileHandleBuf {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `buf` is a valid file_handle with room for 128 bytes as declared in handle_bytes;
    // `name` is NUL-terminated; `mount_id` is a valid out pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut buf as *mut FileHandleBuf,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = buf.handle_bytes as usize;
    if n > MAX_KERNEL_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    Ok(KernelHandle {
        kind: buf.handle_type,
        bytes: buf.f_handle[..n].to_vec(),
    })
}

/// `open_by_handle_at(mount, handle, O_PATH)`. Needs CAP_DAC_READ_SEARCH: call it as root.
pub fn open_by_handle(mount: &impl AsRawFd, h: &KernelHandle) -> io::Result<OwnedFd> {
    let mut buf = FileHandleBuf {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.kind,
        f_handle: [0; 128],
    };
    buf.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `buf` is a valid file_handle whose handle_bytes matches its filled contents.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut buf as *mut FileHandleBuf,
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    owned(rc)
}

pub fn openat(
    dir: &impl AsRawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned fd is owned by the caller.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    owned(fd.into())
}

/// Opens `path` beneath `dir` with resolve flags (beneath a root, no symlinks, no magic links),
/// retried on the EAGAIN of a racing rename: `inarray_sys::open_beneath` with libc's flags.
pub fn openat2(
    dir: &impl AsRawFd,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    inarray_sys::open_beneath(
        dir,
        std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes())),
        inarray_sys::OFlag::from_bits_retain(flags),
        inarray_sys::ResolveFlag::from_bits_retain(resolve),
    )
    .map_err(io::Error::from)
}

/// The `/proc/self/fd/N` path of an fd: reopening an O_PATH fd through it checks permissions
/// against the calling thread's filesystem identity.
pub fn proc_path(fd: &impl AsRawFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Reopens an O_PATH fd with real access `flags`, as the current thread's identity.
pub fn reopen(fd: &impl AsRawFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated; the returned fd is owned by the caller.
    // No O_NOFOLLOW: the magic link itself must be followed (callers check the file type first).
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    owned(fd.into())
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dir: &impl AsRawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a valid out pointer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn fstatvfs(fd: &impl AsRawFd) -> io::Result<libc::statvfs> {
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `faccessat2(fd, "", mode, AT_EACCESS | AT_EMPTY_PATH)`: whether the thread's filesystem identity
/// may access the file.
pub fn may_access(fd: &impl AsRawFd, mode: libc::c_int) -> bool {
    // SAFETY: the path is a NUL-terminated empty string; AT_EMPTY_PATH makes it name `fd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    rc == 0
}

pub fn readlink(fd: &impl AsRawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4097];
    // SAFETY: `buf` is writable for its length; the empty path names `fd` itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn mkdirat(dir: &impl AsRawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn mknodat(dir: &impl AsRawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

pub fn symlinkat(target: &CStr, dir: &impl AsRawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

pub fn unlinkat(dir: &impl AsRawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn renameat(
    from: &impl AsRawFd,
    fname: &CStr,
    to: &impl AsRawFd,
    tname: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::renameat(
            from.as_raw_fd(),
            fname.as_ptr(),
            to.as_raw_fd(),
            tname.as_ptr(),
        )
    })
}

/// A hard link to the file behind an O_PATH fd, through its /proc path (AT_EMPTY_PATH would need
/// CAP_DAC_READ_SEARCH, which the mapped identity does not have).
pub fn linkat(file: &impl AsRawFd, dir: &impl AsRawFd, name: &CStr) -> io::Result<()> {
    let p = proc_path(file);
    // SAFETY: both paths are NUL-terminated.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
}

pub fn fchownat(fd: &impl AsRawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // SAFETY: the empty path with AT_EMPTY_PATH names `fd` itself (works on O_PATH fds).
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn chmod(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated.
    check(unsafe { libc::chmod(p.as_ptr(), mode) })
}

pub fn truncate(fd: &impl AsRawFd, size: u64) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated.
    check(unsafe { libc::truncate(p.as_ptr(), size as libc::off_t) })
}

/// Sets times (None: leave; Some(None): now; Some(Some((s, ns)))): explicit).
pub fn utimens(
    fd: &impl AsRawFd,
    atime: Option<Option<(u32, u32)>>,
    mtime: Option<Option<(u32, u32)>>,
    is_link: bool,
) -> io::Result<()> {
    let ts = |t: Option<Option<(u32, u32)>>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some((s, ns))) => libc::timespec {
            tv_sec: s.into(),
            tv_nsec: ns.into(),
        },
    };
    let times = [ts(atime), ts(mtime)];
    if is_link {
        // SAFETY: `times` holds two timespecs; the empty path names the fd itself.
        return check(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        });
    }
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated and `times` holds two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) })
}

/// A pipe used to move file data to a socket without copying it through user memory.
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// Bytes in the pipe, not yet moved out.
    held: usize,
}

/// Room asked for in a splice pipe: one largest READ (the kernel's default pipe-max-size).
const PIPE_SIZE: usize = 1024 * 1024;

thread_local! {
    /// The calling thread's splice pipe (made on first use, dropped after any failure).
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

fn new_pipe(size: usize) -> io::Result<Pipe> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two fds pipe2 returns.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded: both fds are ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on a pipe we own. Smaller than asked (a lower pipe-max-size) is fine:
    // reads are then short, and clients continue them.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok(Pipe { rd, wr, held: 0 })
}

/// Moves up to `count` bytes of `file` at `offset` into the thread's pipe (page references, no
/// copy), for [`splice_out`] to send after the reply's header; returns how many (fewer only at
/// the end of the file). An error leaves nothing held: the caller may read the data instead.
pub fn splice_in(file: &impl AsRawFd, offset: u64, count: usize) -> io::Result<usize> {
    PIPE.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_ref().is_some_and(|p| p.held != 0) {
            *p = None;
        }
        if p.is_none() {
            *p = Some(new_pipe(PIPE_SIZE)?);
        }
        let pipe = p.as_mut().expect("made above");
        let mut off = offset as libc::off64_t;
        while pipe.held < count {
            // SAFETY: valid fds; `off` is a valid in/out offset for the file.
            let n = unsafe {
                libc::splice(
                    file.as_raw_fd(),
                    &mut off,
                    pipe.wr.as_raw_fd(),
                    std::ptr::null_mut(),
                    count - pipe.held,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // The pipe is full (a read not aligned to pages needs one slot more): a
                    // short read, which NFS clients continue.
                    io::ErrorKind::WouldBlock if pipe.held > 0 => break,
                    _ => {}
                }
                *p = None;
                return Err(e);
            }
            if n == 0 {
                break;
            }
            pipe.held += n as usize;
        }
        Ok(pipe.held)
    })
}

/// Sends everything [`splice_in`] put in the thread's pipe to `sock` (blocking, with the
/// socket's send timeout); `more`: further bytes of the same reply follow.
pub fn splice_out(sock: &impl AsRawFd, more: bool) -> io::Result<()> {
    PIPE.with(|p| {
        let mut p = p.borrow_mut();
        let Some(pipe) = p.as_mut() else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let flags = if more { libc::SPLICE_F_MORE } else { 0 };
        while pipe.held > 0 {
            // SAFETY: valid fds; no offsets for a pipe and a socket.
            let n = unsafe {
                libc::splice(
                    pipe.rd.as_raw_fd(),
                    std::ptr::null_mut(),
                    sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    pipe.held,
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                *p = None;
                return Err(e);
            }
            if n == 0 {
                *p = None;
                return Err(io::ErrorKind::WriteZero.into());
            }
            pipe.held -= n as usize;
        }
        Ok(())
    })
}

/// Drops whatever the thread's pipe holds (a reply that will not be sent).
pub fn splice_discard() {
    PIPE.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_ref().is_some_and(|p| p.held != 0) {
            *p = None;
        }
    });
}

/// `send(sock, data, MSG_MORE)` until all is sent: more of the same reply follows.
pub fn send_more(sock: &impl AsRawFd, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the pointer and length describe the unsent tail of `data`.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

pub fn fsync(fd: &impl AsRawFd, data_only: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a valid fd.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

pub fn lseek(fd: &impl AsRawFd, pos: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), pos as libc::off_t, libc::SEEK_SET) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One directory entry from getdents64.
pub struct DirEntry<'a> {
    pub ino: u64,
    /// The position after this entry: the NFS cookie that resumes after it.
    pub next: u64,
    pub name: &'a CStr,
}

/// Reads a batch of entries into `buf`; returns the number of bytes filled (0 at the end).
pub fn getdents(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Iterates the linux_dirent64 records of a getdents64 batch.
pub fn parse_dirents(buf: &[u8]) -> impl Iterator<Item = DirEntry<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos + 19 > buf.len() {
            return None;
        }
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().ok()?);
        let next = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().ok()?) as u64;
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        if reclen < 19 || pos + reclen > buf.len() {
            return None;
        }
        let name = CStr::from_bytes_until_nul(&buf[pos + 19..pos + reclen]).ok()?;
        pos += reclen;
        Some(DirEntry { ino, next, name })
    })
}

/// Gives the calling thread its own umask (0: NFS clients apply theirs) so file modes are exactly
/// what the client asked for, without touching the rest of the daemon.
pub fn private_umask() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) affects only the calling thread's fs_struct.
    check(unsafe { libc::unshare(libc::CLONE_FS) })?;
    // SAFETY: umask cannot fail; it now changes only this thread's private fs_struct.
    unsafe { libc::umask(0) };
    Ok(())
}

/// Asks the scheduler for a short time slice for the calling thread (`sched_setattr` with
/// SCHED_OTHER, nice unchanged, `sched_runtime` = `slice_ns`; EEVDF kernels, 6.12 and later):
/// its CPU share is unchanged, but a call that wakes it is run sooner (an earlier deadline) rather
/// than queued behind CPU-bound work. Older kernels ignore the value.
pub fn short_slice(slice_ns: u64) -> io::Result<()> {
    // SAFETY: sched_attr is plain data; all-zero is a valid start.
    let mut a: libc::sched_attr = unsafe { std::mem::zeroed() };
    a.size = std::mem::size_of::<libc::sched_attr>() as u32;
    a.sched_policy = libc::SCHED_OTHER as u32;
    // SAFETY: plain syscall on the calling thread (pid 0).
    a.sched_nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    a.sched_runtime = slice_ns;
    // SAFETY: `a` is a valid sched_attr of the size it declares; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &a as *const libc::sched_attr, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

thread_local! {
    static CURRENT: RefCell<Ident> = const { RefCell::new(Ident::ROOT) };
}

/// Makes the calling thread's filesystem identity `id`: supplementary groups, fsgid, fsuid, with
/// raw syscalls (glibc's setgroups would change every thread of the daemon). While the fsuid is
/// not 0 the kernel also drops the thread's filesystem capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER,
/// CAP_CHOWN, …), so every check is made for the mapped user. No-op when already `id`.
pub fn become_ident(id: &Ident) -> io::Result<()> {
    CURRENT.with(|cur| {
        let mut cur = cur.borrow_mut();
        if *cur == *id {
            return Ok(());
        }
        // SAFETY: setfsuid/setfsgid/setgroups only change the calling thread's credentials; the
        // gids pointer and count describe a live slice.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, 0u32);
            libc::syscall(libc::SYS_setfsgid, 0u32);
            if libc::syscall(libc::SYS_setgroups, id.gids.len(), id.gids.as_ptr()) < 0 {
                let e = io::Error::last_os_error();
                *cur = Ident {
                    uid: 0,
                    gid: 0,
                    gids: vec![u32::MAX],
                };
                return Err(e);
            }
            libc::syscall(libc::SYS_setfsgid, id.gid);
            libc::syscall(libc::SYS_setfsuid, id.uid);
            // setfsuid reports no error: read back what is in force (-1 changes nothing).
            let uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
            let gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
            if uid != id.uid || gid != id.gid {
                libc::syscall(libc::SYS_setfsuid, 0u32);
                *cur = Ident {
                    uid: 0,
                    gid: gid.wrapping_add(1),
                    gids: vec![u32::MAX],
                };
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        *cur = id.clone();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_and_handles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let d = openat(
            &std::fs::File::open(dir.path()).unwrap(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = getdents(&d, &mut buf).unwrap();
        let mut names: Vec<String> = parse_dirents(&buf[..n])
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".", "..", "a", "sub"]);
        // Handles: name → handle → the same inode (opening needs root; only then checked).
        let h = name_to_handle(&d, c"a").unwrap();
        assert!(!h.bytes.is_empty() && h.bytes.len() <= MAX_KERNEL_HANDLE);
        assert!(
            is_root(),
            "open_by_handle_at needs root: run the tests as root, as CI does"
        );
        let f = open_by_handle(&d, &h).unwrap();
        assert_eq!(fstat(&f).unwrap().st_ino, lstatat(&d, c"a").unwrap().st_ino);
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn short_slice_applies_to_the_calling_thread_only() {
        let slice = |s: &str| -> Option<u64> {
            s.lines()
                .find(|l| l.starts_with("se.slice"))?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        };
        let before = std::fs::read_to_string("/proc/thread-self/sched").ok();
        std::thread::spawn(move || {
            short_slice(100_000).unwrap();
            // Kernels with EEVDF slices and scheduler statistics show it.
            if let Some(v) = std::fs::read_to_string("/proc/thread-self/sched")
                .ok()
                .as_deref()
                .and_then(slice)
            {
                assert_eq!(v, 100_000);
            }
        })
        .join()
        .unwrap();
        let after = std::fs::read_to_string("/proc/thread-self/sched").ok();
        assert_eq!(
            before.as_deref().and_then(slice),
            after.as_deref().and_then(slice),
            "this thread is unchanged"
        );
    }

    #[test]
    fn identity_switch_is_per_thread() {
        assert!(
            is_root(),
            "switching identities needs root: run the tests as root, as CI does"
        );
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let p = secret.clone();
        std::thread::spawn(move || {
            become_ident(&Ident {
                uid: 4242,
                gid: 4242,
                gids: vec![],
            })
            .unwrap();
            assert_eq!(
                std::fs::read(&p).unwrap_err().kind(),
                io::ErrorKind::PermissionDenied
            );
            become_ident(&Ident::ROOT).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"s");
        })
        .join()
        .unwrap();
        // This thread never changed.
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    }
}
