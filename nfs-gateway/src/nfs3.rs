//! NFSv3 procedures (RFC 1813). Every procedure starts from a handle: its MAC is verified, its
//! export must still exist and allow the client's address (checked on every call, not only at
//! MNT), and the file is opened by its kernel handle beneath the export's root. The procedure then
//! runs with the worker thread's filesystem identity set to the caller's mapped uid/gid/groups,
//! so the kernel itself enforces permissions and owns new files by the mapped user. Names are
//! resolved one component at a time relative to a directory fd, never following a symlink.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::exports::{Access, Ident};
use crate::handle::{HandleKey, MAX_HANDLE};
use crate::metrics::Stats;
use crate::rpc::{self, Accept, AuthSys, CallHeader};
use crate::server::{DirStream, Export, Shared, StreamKey};
use crate::sys;
use crate::xdr::{Decoder, Encoder, Garbage};

/// Largest READ and WRITE payload (FSINFO rtmax/wtmax).
pub const MAX_IO: u32 = 1024 * 1024;
/// READs of at least this many bytes are spliced from the file to the socket.
const SPLICE_MIN: usize = 16 * 1024;
const MAX_DIR_REPLY: u32 = 1024 * 1024;
const NAME_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stat {
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    NxIo = 6,
    Acces = 13,
    Exist = 17,
    XDev = 18,
    NoDev = 19,
    NotDir = 20,
    IsDir = 21,
    Inval = 22,
    FBig = 27,
    NoSpc = 28,
    RoFs = 30,
    MLink = 31,
    NameTooLong = 63,
    NotEmpty = 66,
    DQuot = 69,
    Stale = 70,
    BadHandle = 10001,
    NotSync = 10002,
    NotSupp = 10004,
    TooSmall = 10005,
    ServerFault = 10006,
    BadType = 10007,
}

enum Fail {
    Garbage,
    Stat(Stat),
}

impl From<Garbage> for Fail {
    fn from(_: Garbage) -> Self {
        Fail::Garbage
    }
}

impl From<Stat> for Fail {
    fn from(s: Stat) -> Self {
        Fail::Stat(s)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Stat(errno_stat(&e))
    }
}

pub fn errno_stat(e: &io::Error) -> Stat {
    match e.raw_os_error().unwrap_or(libc::EIO) {
        libc::EPERM => Stat::Perm,
        libc::ENOENT => Stat::NoEnt,
        libc::ENXIO => Stat::NxIo,
        libc::EACCES => Stat::Acces,
        libc::EEXIST => Stat::Exist,
        libc::EXDEV => Stat::XDev,
        libc::ENODEV => Stat::NoDev,
        libc::ENOTDIR => Stat::NotDir,
        libc::EISDIR => Stat::IsDir,
        libc::EINVAL | libc::ELOOP => Stat::Inval,
        libc::EFBIG => Stat::FBig,
        libc::ENOSPC => Stat::NoSpc,
        libc::EROFS => Stat::RoFs,
        libc::EMLINK => Stat::MLink,
        libc::ENAMETOOLONG => Stat::NameTooLong,
        libc::ENOTEMPTY => Stat::NotEmpty,
        libc::EDQUOT => Stat::DQuot,
        libc::ESTALE => Stat::Stale,
        libc::EOPNOTSUPP => Stat::NotSupp,
        _ => Stat::Io,
    }
}

type R = Result<(), Fail>;

/// Words of zeros that follow the status in a failed reply of each procedure: empty
/// post_op_attr / wcc_data, which RFC 1813 allows.
fn fail_words(proc_: u32) -> usize {
    match proc_ {
        1 => 0,
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 13 | 21 => 2,
        14 => 4,
        15 => 3,
        _ => 1,
    }
}

/// Procedures that change the filesystem: refused with ROFS for read-only clients.
fn writes(proc_: u32) -> bool {
    matches!(proc_, 2 | 7 | 8 | 9 | 10 | 11 | 12 | 13 | 14 | 15)
}

/// Runs one NFS call: the reply, and how many bytes of READ data wait in the thread's splice pipe
/// to be sent after it (they belong at the end of the reply; see `sys::splice_out`).
pub fn call(
    shared: &Shared,
    call: &CallHeader,
    mut d: Decoder<'_>,
    peer: IpAddr,
) -> (Encoder, usize) {
    let p = call.proc_;
    if p == 0 {
        return (rpc::accepted(call.xid, Accept::Success, 64), 0);
    }
    if p > 21 {
        return (rpc::accepted(call.xid, Accept::ProcUnavail, 64), 0);
    }
    let started = Instant::now();
    let mut e = rpc::accepted(call.xid, Accept::Success, 512);
    let mark = e.len();
    let mut op = Op {
        shared,
        peer,
        cred: call.cred.as_ref(),
        proc_: p,
        e: &mut e,
        stats: None,
        ident: Ident::ROOT,
        spliced: 0,
    };
    let r = match p {
        1 => op.getattr(&mut d),
        2 => op.setattr(&mut d),
        3 => op.lookup(&mut d),
        4 => op.access(&mut d),
        5 => op.readlink(&mut d),
        6 => op.read(&mut d),
        7 => op.write(&mut d),
        8 => op.create(&mut d),
        9 => op.mkdir(&mut d),
        10 => op.symlink(&mut d),
        11 => op.mknod(&mut d),
        12 => op.remove(&mut d, false),
        13 => op.remove(&mut d, true),
        14 => op.rename(&mut d),
        15 => op.link(&mut d),
        16 => op.readdir(&mut d, false),
        17 => op.readdir(&mut d, true),
        18 => op.fsstat(&mut d),
        19 => op.fsinfo(&mut d),
        20 => op.pathconf(&mut d),
        _ => op.commit(&mut d),
    };
    let stats = op.stats.take();
    let spliced = op.spliced;
    if r.is_err() && spliced > 0 {
        sys::splice_discard();
    }
    let ok = match r {
        Ok(()) => true,
        Err(Fail::Garbage) => {
            if let Some(s) = &stats {
                s.record(p, false, started);
            }
            return (rpc::accepted(call.xid, Accept::GarbageArgs, 64), 0);
        }
        Err(Fail::Stat(s)) => {
            e.buf.truncate(mark);
            e.u32(s as u32);
            for _ in 0..fail_words(p) {
                e.u32(0);
            }
            false
        }
    };
    if let Some(s) = stats {
        s.record(p, ok, started);
    }
    (e, if ok { spliced } else { 0 })
}

/// A resolved handle.
struct Target {
    x: Arc<Export>,
    fd: Arc<OwnedFd>,
    st: libc::stat,
    access: Access,
}

impl Target {
    fn is_dir(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    fn fsid(&self) -> u64 {
        u64::from(self.x.id)
    }
    fn root(&self) -> &crate::server::Root {
        self.x.root.as_ref().expect("resolved targets have a root")
    }
}

/// Optional attributes of SETATTR, CREATE, MKDIR, SYMLINK, MKNOD.
#[derive(Default)]
struct Sattr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<Option<(u32, u32)>>,
    mtime: Option<Option<(u32, u32)>>,
}

fn sattr(d: &mut Decoder<'_>) -> Result<Sattr, Garbage> {
    let opt32 = |d: &mut Decoder<'_>| -> Result<Option<u32>, Garbage> {
        Ok(if d.bool()? { Some(d.u32()?) } else { None })
    };
    let time = |d: &mut Decoder<'_>| -> Result<Option<Option<(u32, u32)>>, Garbage> {
        Ok(match d.u32()? {
            0 => None,
            1 => Some(None),
            2 => Some(Some((d.u32()?, d.u32()?))),
            _ => return Err(Garbage),
        })
    };
    Ok(Sattr {
        mode: opt32(d)?,
        uid: opt32(d)?,
        gid: opt32(d)?,
        size: if d.bool()? { Some(d.u64()?) } else { None },
        atime: time(d)?,
        mtime: time(d)?,
    })
}

fn file_type(mode: u32) -> u32 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 1,
        libc::S_IFDIR => 2,
        libc::S_IFBLK => 3,
        libc::S_IFCHR => 4,
        libc::S_IFLNK => 5,
        libc::S_IFSOCK => 6,
        _ => 7,
    }
}

fn fattr(e: &mut Encoder, st: &libc::stat, fsid: u64) {
    e.u32(file_type(st.st_mode));
    e.u32(st.st_mode & 0o7777);
    e.u32(st.st_nlink as u32);
    e.u32(st.st_uid);
    e.u32(st.st_gid);
    e.u64(st.st_size as u64);
    e.u64(st.st_blocks as u64 * 512);
    e.u32(libc::major(st.st_rdev));
    e.u32(libc::minor(st.st_rdev));
    e.u64(fsid);
    e.u64(st.st_ino);
    e.u32(st.st_atime as u32);
    e.u32(st.st_atime_nsec as u32);
    e.u32(st.st_mtime as u32);
    e.u32(st.st_mtime_nsec as u32);
    e.u32(st.st_ctime as u32);
    e.u32(st.st_ctime_nsec as u32);
}

fn post_op(e: &mut Encoder, st: Option<&libc::stat>, fsid: u64) {
    match st {
        Some(st) => {
            e.bool(true);
            fattr(e, st, fsid);
        }
        None => e.bool(false),
    }
}

fn wcc(e: &mut Encoder, pre: Option<&libc::stat>, post: Option<&libc::stat>, fsid: u64) {
    match pre {
        Some(st) => {
            e.bool(true);
            e.u64(st.st_size as u64);
            e.u32(st.st_mtime as u32);
            e.u32(st.st_mtime_nsec as u32);
            e.u32(st.st_ctime as u32);
            e.u32(st.st_ctime_nsec as u32);
        }
        None => e.bool(false),
    }
    post_op(e, post, fsid);
}

/// A name from the wire for an entry to create, remove or rename: not empty, no `/`, no NUL,
/// not `.` or `..`, at most 255 bytes.
fn entry_name(n: &[u8]) -> Result<CString, Stat> {
    if n.len() > NAME_MAX {
        return Err(Stat::NameTooLong);
    }
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(Stat::Acces);
    }
    CString::new(n).map_err(|_| Stat::Acces)
}

fn ok(e: &mut Encoder) {
    e.u32(0);
}

struct Op<'a> {
    shared: &'a Shared,
    peer: IpAddr,
    cred: Option<&'a AuthSys>,
    proc_: u32,
    e: &'a mut Encoder,
    stats: Option<Arc<Stats>>,
    ident: Ident,
    /// Bytes of READ data waiting in the thread's splice pipe, sent after the reply.
    spliced: usize,
}

impl Op<'_> {
    /// Handle → verified, allowed, opened file; the thread then acts as the mapped user.
    fn resolve(&mut self, d: &mut Decoder<'_>) -> Result<Target, Fail> {
        let fh = d.opaque(MAX_HANDLE)?;
        self.resolve_fh(fh)
    }

    fn resolve_fh(&mut self, fh: &[u8]) -> Result<Target, Fail> {
        let id = HandleKey::export_id(fh).map_err(|_| Stat::BadHandle)?;
        let x = self
            .shared
            .table()
            .by_id
            .get(&id)
            .cloned()
            .ok_or(Stat::Stale)?;
        self.stats = Some(x.stats.clone());
        let Some(access) = x.policy.access(self.peer) else {
            tracing::warn!(export = %x.spec.name, client = %self.peer, "nfs call refused: client not allowed");
            return Err(Stat::Acces.into());
        };
        let root = x.root.as_ref().ok_or(Stat::Stale)?;
        let dec = self
            .shared
            .key
            .decode(fh, root.id)
            .map_err(|_| Stat::BadHandle)?;
        let fd = self
            .shared
            .open_handle(fh, root, &dec.kernel)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ESTALE) | Some(libc::ENOENT) => Stat::Stale,
                _ => errno_stat(&e),
            })?;
        let st = sys::fstat(&*fd)?;
        if st.st_nlink == 0 {
            // Deleted behind our back: the handle is stale, not a ghost.
            self.shared.forget_handle(fh);
            return Err(Stat::Stale.into());
        }
        if self.proc_ != 21 && writes(self.proc_) && access == Access::Ro {
            return Err(Stat::RoFs.into());
        }
        self.ident = x.policy.map(self.cred);
        sys::become_ident(&self.ident).map_err(|_| Stat::ServerFault)?;
        Ok(Target { x, fd, st, access })
    }

    fn as_root<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        sys::become_ident(&Ident::ROOT)?;
        let r = f();
        sys::become_ident(&self.ident)?;
        r
    }

    fn handle_of(&self, t: &Target, fd: &OwnedFd) -> io::Result<Vec<u8>> {
        let k = sys::name_to_handle(fd, c"")?;
        Ok(self.shared.key.encode(t.x.id, t.root().id, &k))
    }

    fn getattr(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        ok(self.e);
        fattr(self.e, &t.st, t.fsid());
        Ok(())
    }

    fn setattr(&mut self, d: &mut Decoder<'_>) -> R {
        let fh = d.opaque(MAX_HANDLE)?;
        let s = sattr(d)?;
        let guard = if d.bool()? {
            Some((d.u32()?, d.u32()?))
        } else {
            None
        };
        let t = self.resolve_fh(fh)?;
        if let Some((sec, nsec)) = guard {
            if (t.st.st_ctime as u32, t.st.st_ctime_nsec as u32) != (sec, nsec) {
                return Err(Stat::NotSync.into());
            }
        }
        self.apply(&t.fd, &t.st, &s)?;
        let post = sys::fstat(&*t.fd).ok();
        ok(self.e);
        wcc(self.e, Some(&t.st), post.as_ref(), t.fsid());
        Ok(())
    }

    /// Applies attributes as the mapped user: size, owner, mode, times (owner before mode, as
    /// chown clears set-id bits).
    fn apply(&self, fd: &OwnedFd, st: &libc::stat, s: &Sattr) -> io::Result<()> {
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let Some(size) = s.size {
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => sys::truncate(fd, size)?,
                libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
                _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        if s.uid.is_some() || s.gid.is_some() {
            let uid = s.uid.filter(|u| *u != st.st_uid);
            let gid = s.gid.filter(|g| *g != st.st_gid);
            if uid.is_some() || gid.is_some() {
                sys::fchownat(fd, uid, gid)?;
            }
        }
        if let Some(mode) = s.mode {
            if !is_link {
                sys::chmod(fd, mode & 0o7777)?;
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            sys::utimens(fd, s.atime, s.mtime, is_link)?;
        }
        Ok(())
    }

    fn lookup(&mut self, d: &mut Decoder<'_>) -> R {
        let fh = d.opaque(MAX_HANDLE)?;
        let name = d.opaque(1024)?;
        let t = self.resolve_fh(fh)?;
        if !t.is_dir() {
            return Err(Stat::NotDir.into());
        }
        if name.len() > NAME_MAX {
            return Err(Stat::NameTooLong.into());
        }
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(Stat::Acces.into());
        }
        let (child_fh, st) = match name {
            b"." => (fh.to_vec(), t.st),
            b".." => self.parent(&t, fh)?,
            _ => {
                let c = CString::new(name).map_err(|_| Stat::Acces)?;
                let st = sys::lstatat(&*t.fd, &c)?;
                if st.st_dev != t.root().id.0 {
                    // A mount point inside the export: not crossed.
                    return Err(Stat::Acces.into());
                }
                let k = sys::name_to_handle(&*t.fd, &c)?;
                (self.shared.key.encode(t.x.id, t.root().id, &k), st)
            }
        };
        ok(self.e);
        self.e.opaque(&child_fh);
        post_op(self.e, Some(&st), t.fsid());
        post_op(self.e, Some(&t.st), t.fsid());
        Ok(())
    }

    /// `..`: the export root is its own parent; a parent outside the export (a directory moved
    /// out of it behind our back) is refused.
    fn parent(&self, t: &Target, fh: &[u8]) -> Result<(Vec<u8>, libc::stat), Fail> {
        let root = t.root();
        if (t.st.st_dev, t.st.st_ino) == root.id {
            return Ok((fh.to_vec(), t.st));
        }
        let parent = sys::openat(&*t.fd, c"..", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let inside = self.as_root(|| beneath(&parent, root.id))?;
        if !inside {
            tracing::warn!(export = %t.x.spec.name, "lookup of .. leaves the export; refused");
            return Err(Stat::Acces.into());
        }
        let st = sys::fstat(&parent)?;
        Ok((self.handle_of(t, &parent)?, st))
    }

    fn access(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        let want = d.u32()?;
        const READ: u32 = 1;
        const LOOKUP: u32 = 2;
        const MODIFY: u32 = 4;
        const EXTEND: u32 = 8;
        const DELETE: u32 = 16;
        const EXECUTE: u32 = 32;
        let fmt = t.st.st_mode & libc::S_IFMT;
        let mut granted = 0;
        if fmt == libc::S_IFLNK {
            granted |= READ;
        } else {
            if sys::may_access(&*t.fd, libc::R_OK) {
                granted |= READ;
            }
            if sys::may_access(&*t.fd, libc::X_OK) {
                granted |= if fmt == libc::S_IFDIR {
                    LOOKUP
                } else {
                    EXECUTE
                };
            }
            if t.access == Access::Rw && sys::may_access(&*t.fd, libc::W_OK) {
                granted |= MODIFY | EXTEND;
                if fmt == libc::S_IFDIR {
                    granted |= DELETE;
                }
            }
        }
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        self.e.u32(granted & want);
        Ok(())
    }

    fn readlink(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        if t.st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(Stat::Inval.into());
        }
        let target = sys::readlink(&*t.fd)?;
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        self.e.opaque(&target);
        Ok(())
    }

    /// Reopens a regular file for I/O as the mapped user; its owner may always (like knfsd,
    /// which lets owners write files they made read-only while writing them).
    fn open_io(&self, t: &Target, flags: libc::c_int) -> Result<OwnedFd, Fail> {
        match t.st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(Stat::IsDir.into()),
            _ => return Err(Stat::Inval.into()),
        }
        match sys::reopen(&*t.fd, flags) {
            Ok(f) => Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && t.st.st_uid == self.ident.uid => {
                Ok(self.as_root(|| sys::reopen(&*t.fd, flags))?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        let offset = d.u64()?;
        let count = d.u32()?.min(MAX_IO) as usize;
        let f = self.open_io(&t, libc::O_RDONLY)?;
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        let count_at = self.e.len();
        self.e.u32(0); // count
        self.e.u32(0); // eof
        self.e.u32(0); // data length
                       // Large reads: the file's pages go to the socket through a pipe after this header, never
                       // copied through our memory; small ones (or when splicing fails) are read into the reply.
        let spliced = if count >= SPLICE_MIN {
            sys::splice_in(&f, offset, count).ok()
        } else {
            None
        };
        let n = match spliced {
            Some(n) => {
                self.spliced = n;
                n
            }
            None => {
                let n = inarray_sys::pread_append(&f, &mut self.e.buf, count, offset)?;
                self.e
                    .buf
                    .extend_from_slice(&[0u8; 3][..crate::xdr::pad(n)]);
                n
            }
        };
        let size = sys::fstat(&f).map(|s| s.st_size as u64).unwrap_or(0);
        let eof = offset + n as u64 >= size;
        self.e.patch_u32(count_at, n as u32);
        self.e.patch_u32(count_at + 4, u32::from(eof));
        self.e.patch_u32(count_at + 8, n as u32);
        if let Some(s) = &self.stats {
            s.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write(&mut self, d: &mut Decoder<'_>) -> R {
        let fh = d.opaque(MAX_HANDLE)?;
        let offset = d.u64()?;
        let count = d.u32()? as usize;
        let stable = d.u32()?;
        let data = d.opaque(self.shared.limits.max_record)?;
        if stable > 2 {
            return Err(Fail::Garbage);
        }
        let t = self.resolve_fh(fh)?;
        let data = &data[..count.min(data.len())];
        let f = self.open_io(&t, libc::O_WRONLY)?;
        let n = inarray_sys::pwrite_all(&f, data, offset)?;
        // stable_how is honoured: FILE_SYNC and DATA_SYNC are on disk before the reply.
        match stable {
            2 => sys::fsync(&f, false)?,
            1 => sys::fsync(&f, true)?,
            _ => {}
        }
        let post = sys::fstat(&f).ok();
        ok(self.e);
        wcc(self.e, Some(&t.st), post.as_ref(), t.fsid());
        self.e.u32(n as u32);
        self.e.u32(stable);
        self.e.fixed(&self.shared.write_verifier);
        if let Some(s) = &self.stats {
            s.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Replies for CREATE, MKDIR, SYMLINK, MKNOD: the new object's handle and attributes and the
    /// directory's wcc data.
    fn created(&mut self, t: &Target, obj: &OwnedFd) -> R {
        let fh = self.handle_of(t, obj)?;
        let st = sys::fstat(obj)?;
        let post = sys::fstat(&*t.fd).ok();
        ok(self.e);
        self.e.bool(true);
        self.e.opaque(&fh);
        post_op(self.e, Some(&st), t.fsid());
        wcc(self.e, Some(&t.st), post.as_ref(), t.fsid());
        Ok(())
    }

    fn dir_and_name(&mut self, d: &mut Decoder<'_>) -> Result<(Target, CString), Fail> {
        let fh = d.opaque(MAX_HANDLE)?;
        let name = d.opaque(1024)?.to_vec();
        self.dir_and_name_of(fh, &name)
    }

    fn dir_and_name_of(&mut self, fh: &[u8], name: &[u8]) -> Result<(Target, CString), Fail> {
        let t = self.resolve_fh(fh)?;
        if !t.is_dir() {
            return Err(Stat::NotDir.into());
        }
        let c = entry_name(name)?;
        Ok((t, c))
    }

    fn create(&mut self, d: &mut Decoder<'_>) -> R {
        let fh = d.opaque(MAX_HANDLE)?;
        let name = d.opaque(1024)?;
        let how = d.u32()?;
        let (attrs, verf) = match how {
            0 | 1 => (sattr(d)?, None),
            2 => (Sattr::default(), Some(d.fixed(8)?)),
            _ => return Err(Fail::Garbage),
        };
        let (t, c) = self.dir_and_name_of(fh, name)?;
        let mode = attrs.mode.unwrap_or(0o644) & 0o7777;
        let excl = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
        let obj = match sys::openat(&*t.fd, &c, excl, if verf.is_some() { 0o600 } else { mode }) {
            Ok(f) => {
                if let Some(v) = verf {
                    // EXCLUSIVE: the verifier is kept in the times until the client's SETATTR.
                    let (a, m) = verf_times(v);
                    sys::utimens(&f, Some(Some((a, 0))), Some(Some((m, 0))), false)?;
                } else {
                    let rest = Sattr {
                        mode: None,
                        ..attrs
                    };
                    self.apply(&f, &sys::fstat(&f)?, &rest)?;
                }
                f
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && how != 1 => {
                let f = sys::openat(&*t.fd, &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                let st = sys::fstat(&f)?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(Stat::Exist.into());
                }
                match verf {
                    Some(v) => {
                        let (a, m) = verf_times(v);
                        if (st.st_atime as u32, st.st_mtime as u32) != (a, m) {
                            return Err(Stat::Exist.into());
                        }
                    }
                    // UNCHECKED on an existing file: only the attributes (e.g. size 0) apply.
                    None => self.apply(
                        &f,
                        &st,
                        &Sattr {
                            mode: None,
                            ..attrs
                        },
                    )?,
                }
                f
            }
            Err(e) => return Err(e.into()),
        };
        self.created(&t, &obj)
    }

    fn mkdir(&mut self, d: &mut Decoder<'_>) -> R {
        let (t, c) = self.dir_and_name(d)?;
        let attrs = sattr(d)?;
        sys::mkdirat(&*t.fd, &c, attrs.mode.unwrap_or(0o755) & 0o7777)?;
        let obj = sys::openat(
            &*t.fd,
            &c,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
        )?;
        self.apply(
            &obj,
            &sys::fstat(&obj)?,
            &Sattr {
                mode: None,
                ..attrs
            },
        )?;
        self.created(&t, &obj)
    }

    fn symlink(&mut self, d: &mut Decoder<'_>) -> R {
        let (t, c) = self.dir_and_name(d)?;
        let attrs = sattr(d)?;
        let target = d.opaque(4096)?;
        if target.is_empty() {
            return Err(Stat::Inval.into());
        }
        let target = CString::new(target).map_err(|_| Stat::Inval)?;
        sys::symlinkat(&target, &*t.fd, &c)?;
        let obj = sys::openat(&*t.fd, &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let rest = Sattr {
            mode: None,
            size: None,
            ..attrs
        };
        self.apply(&obj, &sys::fstat(&obj)?, &rest)?;
        self.created(&t, &obj)
    }

    fn mknod(&mut self, d: &mut Decoder<'_>) -> R {
        let (t, c) = self.dir_and_name(d)?;
        let kind = d.u32()?;
        let (fmt, attrs) = match kind {
            // Device nodes would let a client reach host devices through containers: refused.
            3 | 4 => {
                sattr(d)?;
                d.u32()?;
                d.u32()?;
                return Err(Stat::Perm.into());
            }
            6 => (libc::S_IFSOCK, sattr(d)?),
            7 => (libc::S_IFIFO, sattr(d)?),
            _ => return Err(Stat::BadType.into()),
        };
        sys::mknodat(&*t.fd, &c, fmt | (attrs.mode.unwrap_or(0o644) & 0o7777))?;
        let obj = sys::openat(&*t.fd, &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.apply(
            &obj,
            &sys::fstat(&obj)?,
            &Sattr {
                mode: None,
                ..attrs
            },
        )?;
        self.created(&t, &obj)
    }

    fn remove(&mut self, d: &mut Decoder<'_>, dir: bool) -> R {
        let (t, c) = self.dir_and_name(d)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(&*t.fd, &c, flags)?;
        let post = sys::fstat(&*t.fd).ok();
        ok(self.e);
        wcc(self.e, Some(&t.st), post.as_ref(), t.fsid());
        Ok(())
    }

    fn rename(&mut self, d: &mut Decoder<'_>) -> R {
        let ffh = d.opaque(MAX_HANDLE)?;
        let fname = d.opaque(1024)?;
        let tfh = d.opaque(MAX_HANDLE)?;
        let tname = d.opaque(1024)?;
        let (from, fc) = self.dir_and_name_of(ffh, fname)?;
        let (to, tc) = self.dir_and_name_of(tfh, tname)?;
        if from.x.id != to.x.id {
            return Err(Stat::XDev.into());
        }
        sys::renameat(&*from.fd, &fc, &*to.fd, &tc)?;
        let fpost = sys::fstat(&*from.fd).ok();
        let tpost = sys::fstat(&*to.fd).ok();
        ok(self.e);
        wcc(self.e, Some(&from.st), fpost.as_ref(), from.fsid());
        wcc(self.e, Some(&to.st), tpost.as_ref(), to.fsid());
        Ok(())
    }

    fn link(&mut self, d: &mut Decoder<'_>) -> R {
        let ffh = d.opaque(MAX_HANDLE)?;
        let dfh = d.opaque(MAX_HANDLE)?;
        let name = d.opaque(1024)?;
        let file = self.resolve_fh(ffh)?;
        let (dir, c) = self.dir_and_name_of(dfh, name)?;
        if file.x.id != dir.x.id {
            return Err(Stat::XDev.into());
        }
        if file.is_dir() {
            return Err(Stat::IsDir.into());
        }
        sys::linkat(&*file.fd, &*dir.fd, &c)?;
        let fpost = sys::fstat(&*file.fd).ok();
        let dpost = sys::fstat(&*dir.fd).ok();
        ok(self.e);
        post_op(self.e, fpost.as_ref(), file.fsid());
        wcc(self.e, Some(&dir.st), dpost.as_ref(), dir.fsid());
        Ok(())
    }

    /// READDIR and READDIRPLUS. Cookies are the kernel's directory offsets (getdents64 `d_off`),
    /// so a listing resumes where it stopped with one lseek. READDIRPLUS adds each entry's
    /// attributes and handle (one fstatat and one name_to_handle_at per entry, never following a
    /// symlink).
    fn readdir(&mut self, d: &mut Decoder<'_>, plus: bool) -> R {
        let fh = d.opaque(MAX_HANDLE)?;
        let cookie = d.u64()?;
        d.fixed(8)?;
        let count = d.u32()?;
        // READDIR: count bounds the reply; READDIRPLUS: count is dircount, and maxcount (next)
        // bounds the reply.
        let max = if plus { d.u32()? } else { count }.min(MAX_DIR_REPLY) as usize;
        let t = self.resolve_fh(fh)?;
        if !t.is_dir() {
            return Err(Stat::NotDir.into());
        }
        // A listing read in several calls continues on the stream the previous call left (kept
        // per directory, cookie and identity), so the directory is neither reopened nor re-sought.
        let key = StreamKey {
            fh: fh.to_vec(),
            cookie,
            ident: self.ident.clone(),
        };
        let mut stream = match self.shared.take_stream(&key) {
            Some(s) => s,
            None => {
                let dir = sys::openat(&*t.fd, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                if cookie != 0 {
                    sys::lseek(&dir, cookie).map_err(|_| Stat::Inval)?;
                }
                DirStream::new(dir)
            }
        };
        let fsid = t.fsid();
        let root = t.root().id;
        ok(self.e);
        post_op(self.e, Some(&t.st), fsid);
        self.e.fixed(&[0u8; 8]); // cookie verifier: cookies stay valid
        let base = self.e.len();
        // Room for the end of the list and the eof flag.
        let budget = max.saturating_sub(base - 4 * 7 + 8);
        // Read about as many entries as the reply can hold: a READDIRPLUS entry takes ~5 times
        // its dirent in the reply, a READDIR entry about the same.
        let chunk = if plus { max / 4 } else { max }.clamp(4096, 64 * 1024);
        let mut entries = 0usize;
        let mut last = cookie;
        let eof = loop {
            let Some(ent) = stream.next(chunk)? else {
                break true;
            };
            let name = ent.name.as_bytes();
            let before = self.e.len();
            self.e.bool(true);
            self.e.u64(ent.ino);
            self.e.opaque(name);
            self.e.u64(ent.next);
            if plus {
                let attrs = match name {
                    b".." => None,
                    b"." => Some(t.st),
                    _ => sys::lstatat(&stream.dir, &ent.name).ok(),
                };
                post_op(self.e, attrs.as_ref(), fsid);
                let fh = match (name, &attrs) {
                    (b".", _) => sys::name_to_handle(&*t.fd, c"").ok(),
                    (_, Some(st)) if st.st_dev == root.0 => {
                        sys::name_to_handle(&stream.dir, &ent.name).ok()
                    }
                    _ => None,
                };
                match fh {
                    Some(k) => {
                        self.e.bool(true);
                        self.e.opaque(&self.shared.key.encode(t.x.id, root, &k));
                    }
                    None => self.e.bool(false),
                }
            }
            if self.e.len() - base > budget {
                self.e.buf.truncate(before);
                if entries == 0 {
                    return Err(Stat::TooSmall.into());
                }
                stream.unread(ent);
                break false;
            }
            last = ent.next;
            entries += 1;
        };
        self.e.bool(false);
        self.e.bool(eof);
        if !eof {
            self.shared.keep_stream(
                StreamKey {
                    cookie: last,
                    ..key
                },
                stream,
            );
        }
        Ok(())
    }

    fn fsstat(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        let v = sys::fstatvfs(&*t.fd)?;
        let frsize = v.f_frsize as u64;
        let (mut total, mut free, mut avail) = (
            v.f_blocks as u64 * frsize,
            v.f_bfree as u64 * frsize,
            v.f_bavail as u64 * frsize,
        );
        // Inside a btrfs subvolume with a qgroup limit (an array volume): its size and what is
        // left of it, never more than the filesystem has.
        if let Some((used, Some(limit))) =
            inarray_sys::quota::btrfs_qgroup(std::os::fd::AsFd::as_fd(&*t.fd))
        {
            let left = limit.saturating_sub(used);
            total = total.min(limit);
            free = free.min(left);
            avail = avail.min(left);
        }
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        self.e.u64(total);
        self.e.u64(free);
        self.e.u64(avail);
        self.e.u64(v.f_files as u64);
        self.e.u64(v.f_ffree as u64);
        self.e.u64(v.f_favail as u64);
        self.e.u32(0);
        Ok(())
    }

    fn fsinfo(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        for v in [MAX_IO, MAX_IO, 4096, MAX_IO, MAX_IO, 4096, 64 * 1024] {
            self.e.u32(v);
        }
        self.e.u64(i64::MAX as u64);
        self.e.u32(0);
        self.e.u32(1); // time_delta: 1 ns
        const FSF3_LINK: u32 = 1;
        const FSF3_SYMLINK: u32 = 2;
        const FSF3_HOMOGENEOUS: u32 = 8;
        const FSF3_CANSETTIME: u32 = 16;
        self.e
            .u32(FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME);
        Ok(())
    }

    fn pathconf(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        ok(self.e);
        post_op(self.e, Some(&t.st), t.fsid());
        self.e.u32(65000);
        self.e.u32(NAME_MAX as u32);
        self.e.bool(true); // no_trunc
        self.e.bool(true); // chown_restricted
        self.e.bool(false); // case_insensitive
        self.e.bool(true); // case_preserving
        Ok(())
    }

    /// Flushes UNSTABLE writes. The fsync runs as root: it reveals and changes no data.
    fn commit(&mut self, d: &mut Decoder<'_>) -> R {
        let t = self.resolve(d)?;
        d.u64()?;
        d.u32()?;
        if t.st.st_mode & libc::S_IFMT == libc::S_IFREG {
            self.as_root(|| sys::fsync(&sys::reopen(&*t.fd, libc::O_RDONLY)?, false))?;
        }
        let post = sys::fstat(&*t.fd).ok();
        ok(self.e);
        wcc(self.e, Some(&t.st), post.as_ref(), t.fsid());
        self.e.fixed(&self.shared.write_verifier);
        Ok(())
    }
}

fn verf_times(v: &[u8]) -> (u32, u32) {
    // Seconds fit in 31 bits so that every filesystem stores them as given.
    let a = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) & 0x7fff_ffff;
    let m = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) & 0x7fff_ffff;
    (a, m)
}

/// Whether a directory lies beneath (or is) the directory with identity `root`, by walking `..`
/// up (the kernel's view, not a path string).
fn beneath(dir: &OwnedFd, root: (u64, u64)) -> io::Result<bool> {
    let mut cur = sys::openat(dir, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for _ in 0..4096 {
        let st = sys::fstat(&cur)?;
        if (st.st_dev, st.st_ino) == root {
            return Ok(true);
        }
        let parent = sys::openat(&cur, c"..", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let pst = sys::fstat(&parent)?;
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino) {
            return Ok(false);
        }
        cur = parent;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_entry_names_are_refused() {
        for (bad, want) in [
            (&b""[..], Stat::Acces),
            (b".", Stat::Acces),
            (b"..", Stat::Acces),
            (b"a/b", Stat::Acces),
            (b"../x", Stat::Acces),
            (b"x\0y", Stat::Acces),
        ] {
            assert_eq!(entry_name(bad).unwrap_err(), want, "{bad:?}");
        }
        assert_eq!(entry_name(&[b'a'; 256]).unwrap_err(), Stat::NameTooLong);
        assert!(entry_name(&[b'a'; 255]).is_ok());
        assert!(entry_name(b"...").is_ok());
    }

    #[test]
    fn failure_replies_are_well_formed() {
        // GETATTR: status only; RENAME: two empty wcc_data; LINK: post_op + wcc_data.
        assert_eq!(fail_words(1), 0);
        assert_eq!(fail_words(14), 4);
        assert_eq!(fail_words(15), 3);
        assert_eq!(fail_words(3), 1);
        assert!(writes(7) && writes(14) && !writes(21) && !writes(6));
    }
}
