//! btrfs: a volume is a subvolume, its size the referenced-bytes limit of its qgroup (`0/<id>`),
//! set and changed live by `BTRFS_IOC_QGROUP_LIMIT`; snapshots are read-only subvolume
//! snapshots (atomic, copy-on-write), a restore is a writable snapshot of the snapshot swapped
//! in by `renameat2(RENAME_EXCHANGE)`, a clone a writable snapshot under a new name.
//!
//! Usage is read from the kernel's sysfs view of the qgroup
//! (`/sys/fs/btrfs/<fsid>/qgroups/0_<id>/referenced`): no tree-search ioctl to parse, no
//! `btrfs` executable to run, and it is the same counter the limit is enforced against. It is
//! updated at each transaction commit (30 s at most by default; a `sync` forces it).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use super::{
    io, names_in, open_in, walk, BackendError, BackendKind, Capabilities, Dirs, Result, Usage,
    VolumeBackend,
};
use inarray_sys::quota;

pub struct Btrfs {
    dirs: Dirs,
}

impl Btrfs {
    pub(crate) fn new(dirs: Dirs) -> Self {
        Self { dirs }
    }

    fn volume(&self, name: &str) -> Result<OwnedFd> {
        open_in(&self.dirs.volumes()?, name)?
            .ok_or_else(|| io(format!("volume {name}"), Errno::ENOENT))
    }

    fn limit(&self, fd: &OwnedFd, name: &str, size: Option<u64>) -> Result<()> {
        quota::btrfs_set_limit(fd.as_fd(), size).map_err(|e| match e {
            // Quotas off: ENOTCONN (newer kernels) or ENOENT (no qgroup tree).
            Errno::ENOTCONN | Errno::ENOENT | Errno::EINVAL => BackendError::NotReady(format!(
                "btrfs quotas are not enabled on the array's filesystem (run `btrfs quota enable <array>`): cannot limit volume {name} ({e})"
            )),
            e => io(format!("cannot set the qgroup limit of volume {name}"), e),
        })
    }

    /// Deletes the subvolume `name` of `dir` if it exists. The kernel removes its qgroup
    /// itself once the subvolume's tree is dropped (Linux ≥ 6.10 does so in every quota mode).
    fn delete_in(dir: &OwnedFd, name: &str) -> Result<()> {
        match quota::btrfs_delete_subvolume(dir.as_fd(), name) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io(format!("cannot delete subvolume {name}"), e)),
        }
    }
}

impl VolumeBackend for Btrfs {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: true,
            snapshots: true,
        }
    }

    fn create(&self, name: &str, size: Option<u64>) -> Result<()> {
        let dir = self.dirs.volumes()?;
        match quota::btrfs_create_subvolume(dir.as_fd(), name) {
            Ok(()) => {}
            // A crash left it: reconcile would have removed it, so it is this create's.
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(format!("cannot create subvolume {name}"), e)),
        }
        if size.is_some() {
            let fd = self.volume(name)?;
            if let Err(e) = self.limit(&fd, name, size) {
                let _ = Self::delete_in(&dir, name);
                return Err(e);
            }
        }
        Ok(())
    }

    fn set_size(&self, name: &str, size: Option<u64>) -> Result<()> {
        self.limit(&self.volume(name)?, name, size)
    }

    fn usage(&self, name: &str) -> Result<Usage> {
        let fd = self.volume(name)?;
        let (files, _) = walk(&fd);
        Ok(Usage {
            bytes: quota::btrfs_qgroup(fd.as_fd()).map(|(referenced, _)| referenced),
            files,
        })
    }

    fn destroy(&self, name: &str) -> Result<()> {
        Self::delete_in(&self.dirs.volumes()?, name)
    }

    fn list(&self) -> Result<Vec<String>> {
        names_in(&self.dirs.volumes()?)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(open_in(&self.dirs.volumes()?, name)?.is_some())
    }

    fn snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        let src = self.volume(volume)?;
        let dir = self.dirs.snapshots_of(volume)?;
        match quota::btrfs_snapshot(src.as_fd(), dir.as_fd(), snapshot, true) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(io(format!("cannot snapshot {volume} as {snapshot}"), e)),
        }
    }

    fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        let dir = self.dirs.snapshots_of(volume)?;
        Self::delete_in(&dir, snapshot)?;
        // The per-volume directory goes with its last snapshot (ENOTEMPTY otherwise: fine).
        let top = self.dirs.dir("snapshots")?;
        let _ = nix::unistd::unlinkat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&top)),
            volume,
            nix::unistd::UnlinkatFlags::RemoveDir,
        );
        Ok(())
    }

    fn snapshot_exists(&self, volume: &str, snapshot: &str) -> Result<bool> {
        Ok(open_in(&self.dirs.snapshots_of(volume)?, snapshot)?.is_some())
    }

    fn restore(&self, volume: &str, snapshot: &str, size: Option<u64>) -> Result<()> {
        let vols = self.dirs.volumes()?;
        let snaps = self.dirs.snapshots_of(volume)?;
        let snap = open_in(&snaps, snapshot)?
            .ok_or_else(|| io(format!("snapshot {volume}@{snapshot}"), Errno::ENOENT))?;
        let work = format!(".restore-{volume}");
        Self::delete_in(&vols, &work)?;
        quota::btrfs_snapshot(snap.as_fd(), vols.as_fd(), &work, false)
            .map_err(|e| io(format!("cannot restore {volume} from {snapshot}"), e))?;
        let fresh = open_in(&vols, &work)?
            .ok_or_else(|| io(format!("restored copy of {volume}"), Errno::ENOENT))?;
        if let Err(e) = size.map_or(Ok(()), |_| self.limit(&fresh, volume, size)) {
            let _ = Self::delete_in(&vols, &work);
            return Err(e);
        }
        // One atomic step: the volume's name now holds the snapshot's copy.
        nix::fcntl::renameat2(
            Some(std::os::fd::AsRawFd::as_raw_fd(&vols)),
            volume,
            Some(std::os::fd::AsRawFd::as_raw_fd(&vols)),
            work.as_str(),
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| io(format!("cannot swap in the restored {volume}"), e))?;
        Self::delete_in(&vols, &work)
    }

    fn clone_volume(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        target: &str,
        size: Option<u64>,
    ) -> Result<()> {
        let vols = self.dirs.volumes()?;
        let src = match snapshot {
            Some(s) => open_in(&self.dirs.snapshots_of(volume)?, s)?
                .ok_or_else(|| io(format!("snapshot {volume}@{s}"), Errno::ENOENT))?,
            None => self.volume(volume)?,
        };
        match quota::btrfs_snapshot(src.as_fd(), vols.as_fd(), target, false) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(format!("cannot clone {volume} as {target}"), e)),
        }
        let fd = self.volume(target)?;
        if let Err(e) = size.map_or(Ok(()), |_| self.limit(&fd, target, size)) {
            let _ = Self::delete_in(&vols, target);
            return Err(e);
        }
        Ok(())
    }
}
