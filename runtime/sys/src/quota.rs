//! The filesystem ioctls behind array volumes: btrfs subvolumes, snapshots and qgroup limits,
//! the filesystem's magic number, and the project id of an inode (`FS_IOC_FS{GET,SET}XATTR`).
//!
//! Every call takes a directory fd (opened beneath the array by the caller) and a single name
//! component, never a path: nothing here resolves a path. The structs are the kernel's UAPI
//! layouts (`linux/btrfs.h`, `linux/fs.h`), sized and checked by the tests below.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX + 1`: the name buffer of `btrfs_ioctl_vol_args`.
const VOL_NAME_LEN: usize = 4088;
/// `BTRFS_SUBVOL_NAME_MAX + 1`: the name buffer of `btrfs_ioctl_vol_args_v2`.
const VOL2_NAME_LEN: usize = 4040;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// The objectid of every subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `BTRFS_SUPER_MAGIC`, `EXT4_SUPER_MAGIC`, `XFS_SUPER_MAGIC` as `statfs` reports them.
pub const BTRFS_MAGIC: i64 = 0x9123_683e;
pub const EXT4_MAGIC: i64 = 0xef53;
pub const XFS_MAGIC: i64 = 0x5846_5342;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME_LEN],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; VOL2_NAME_LEN],
}

#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 992],
}

/// `struct fsxattr` of `linux/fs.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: new entries of a directory take its project id.
pub const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_write_ptr!(btrfs_subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(btrfs_snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_readwrite!(btrfs_ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
nix::ioctl_write_ptr!(btrfs_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_read!(btrfs_fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
nix::ioctl_read!(btrfs_qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);
nix::ioctl_read!(fs_getxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_setxattr, b'X', 32, FsXattr);

/// A single, non-empty name component that fits `len - 1` bytes (the buffers are NUL-ended).
fn component<const N: usize>(name: &str) -> Result<[u8; N], Errno> {
    let b = name.as_bytes();
    if b.is_empty()
        || b.len() >= N
        || b.contains(&b'/')
        || b.contains(&0)
        || name == "."
        || name == ".."
    {
        return Err(Errno::EINVAL);
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

/// The magic number of the filesystem `fd` is on (`fstatfs`).
pub fn fs_magic(fd: BorrowedFd<'_>) -> Result<i64, Errno> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

/// Creates the subvolume `name` in the directory `dir`.
pub fn btrfs_create_subvolume(dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    let args = VolArgs {
        fd: 0,
        name: component::<VOL_NAME_LEN>(name)?,
    };
    // SAFETY: `args` is a live, fully initialized `btrfs_ioctl_vol_args`; the kernel only reads it.
    unsafe { btrfs_subvol_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Snapshots the subvolume open at `source` as `name` in the directory `dir` (read-only when
/// `read_only`). Atomic: the snapshot is the source's state at one transaction.
pub fn btrfs_snapshot(
    source: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &str,
    read_only: bool,
) -> Result<(), Errno> {
    let args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: component::<VOL2_NAME_LEN>(name)?,
    };
    // SAFETY: `args` is a live, fully initialized `btrfs_ioctl_vol_args_v2` whose `fd` is a
    // descriptor borrowed for the call; the kernel only reads it.
    unsafe { btrfs_snap_create_v2(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Deletes the subvolume `name` of the directory `dir` (its contents go with it).
pub fn btrfs_delete_subvolume(dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    let args = VolArgs {
        fd: 0,
        name: component::<VOL_NAME_LEN>(name)?,
    };
    // SAFETY: `args` is a live, fully initialized `btrfs_ioctl_vol_args`; the kernel only reads it.
    unsafe { btrfs_snap_destroy(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// The id of the subvolume `fd` is in (its qgroup is `0/<id>`).
pub fn btrfs_subvolume_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: `args` is a live `btrfs_ioctl_ino_lookup_args` the kernel reads and fills in.
    unsafe { btrfs_ino_lookup(fd.as_raw_fd(), &mut args) }?;
    Ok(args.treeid)
}

/// Sets the referenced-bytes limit of the qgroup of the subvolume open at `subvol` (`None`:
/// no limit). Fails with ENOTCONN/ENOENT when quotas are not enabled on the filesystem.
pub fn btrfs_set_limit(subvol: BorrowedFd<'_>, bytes: Option<u64>) -> Result<(), Errno> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0, // 0: the qgroup of the subvolume the fd is in
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes.unwrap_or(u64::MAX),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: `args` is a live, fully initialized `btrfs_ioctl_qgroup_limit_args`.
    unsafe { btrfs_qgroup_limit(subvol.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// The filesystem id of the btrfs `fd` is on, as `/sys/fs/btrfs/<uuid>` names it.
pub fn btrfs_fsid(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    // SAFETY: `args` is a live, zeroed `btrfs_ioctl_fs_info_args` (flags 0) the kernel fills in.
    unsafe { btrfs_fs_info(fd.as_raw_fd(), &mut args) }?;
    let h: Vec<String> = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let h = h.concat();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The qgroup counters of the btrfs subvolume `fd` is in, from the kernel's sysfs view
/// (`/sys/fs/btrfs/<fsid>/qgroups/0_<id>/`): referenced bytes, and the referenced-bytes limit
/// when one is set. `None` when `fd` is not on btrfs or quotas are off.
/// An `O_PATH` descriptor of a directory is reopened (`openat(fd, ".")`) for the ioctls.
pub fn btrfs_qgroup(fd: BorrowedFd<'_>) -> Option<(u64, Option<u64>)> {
    let reopened;
    let fd = match btrfs_subvolume_id(fd) {
        Err(Errno::EBADF) => {
            reopened = crate::openat(
                &fd,
                ".",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .ok()?;
            reopened.as_fd()
        }
        _ => fd,
    };
    let id = btrfs_subvolume_id(fd).ok()?;
    let fsid = btrfs_fsid(fd).ok()?;
    let dir = format!("/sys/fs/btrfs/{fsid}/qgroups/0_{id}");
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let referenced = read("referenced")?;
    let limited = read("limit_flags").unwrap_or(0) & BTRFS_QGROUP_LIMIT_MAX_RFER != 0;
    let limit = read("max_referenced").filter(|&m| limited && m > 0);
    Some((referenced, limit))
}

/// The extended attributes (project id, flags) of the inode open at `fd`.
pub fn fs_get_xattr(fd: BorrowedFd<'_>) -> Result<FsXattr, Errno> {
    let mut x = FsXattr::default();
    // SAFETY: `x` is a live `struct fsxattr` the kernel fills in.
    unsafe { fs_getxattr(fd.as_raw_fd(), &mut x) }?;
    Ok(x)
}

/// Sets the project id of the directory open at `fd` (a read-write fd, not `O_PATH`) and its
/// inherit flag, so everything created below takes the same project id.
pub fn fs_set_project(fd: BorrowedFd<'_>, projid: u32) -> Result<(), Errno> {
    let mut x = fs_get_xattr(fd)?;
    x.projid = projid;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: `x` is a live, fully initialized `struct fsxattr`; the kernel only reads it.
    unsafe { fs_setxattr(fd.as_raw_fd(), &x) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_sizes() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
    }

    #[test]
    fn names_are_one_component() {
        for bad in ["", ".", "..", "a/b", "x\0", &"n".repeat(4088)] {
            assert_eq!(component::<VOL_NAME_LEN>(bad).unwrap_err(), Errno::EINVAL);
        }
        assert!(component::<VOL_NAME_LEN>("vol-1").is_ok());
    }
}
