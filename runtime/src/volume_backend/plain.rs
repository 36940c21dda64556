//! Plain directories: the fallback on any filesystem without a backend of its own. A volume is
//! a directory; it has no quota (a size is refused, never silently ignored) and no cheap
//! snapshot (snapshots, restores and clones are refused: a full copy is not what an operator
//! asking for a snapshot expects).

use nix::errno::Errno;

use super::{
    io, names_in, open_in, remove_tree, walk, BackendError, BackendKind, Capabilities, Dirs,
    Result, Usage, VolumeBackend,
};

pub struct Plain {
    dirs: Dirs,
    /// Why there is no quota on this array, in the operator's terms.
    why: String,
}

impl Plain {
    pub(crate) fn new(dirs: Dirs, why: String) -> Self {
        Self { dirs, why }
    }

    fn no_quota(&self) -> BackendError {
        BackendError::Unsupported(format!(
            "the array's volume backend (plain directories) has no quota: {}; a size cannot be enforced: create the volume without one, or put the array on btrfs with quotas enabled",
            self.why
        ))
    }
}

fn no_snapshots() -> BackendError {
    BackendError::Unsupported(
        "the array's filesystem has no snapshot backend (plain directories): snapshots, restores and clones need btrfs".into(),
    )
}

impl VolumeBackend for Plain {
    fn kind(&self) -> BackendKind {
        BackendKind::Plain
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: false,
            snapshots: false,
        }
    }

    fn create(&self, name: &str, size: Option<u64>) -> Result<()> {
        if size.is_some() {
            return Err(self.no_quota());
        }
        let dir = self.dirs.volumes()?;
        match nix::sys::stat::mkdirat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
            name,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(io(format!("cannot create directory {name}"), e)),
        }
    }

    fn set_size(&self, _name: &str, size: Option<u64>) -> Result<()> {
        match size {
            Some(_) => Err(self.no_quota()),
            None => Ok(()),
        }
    }

    fn usage(&self, name: &str) -> Result<Usage> {
        let fd = open_in(&self.dirs.volumes()?, name)?
            .ok_or_else(|| io(format!("volume {name}"), Errno::ENOENT))?;
        let (files, bytes) = walk(&fd);
        Ok(Usage {
            bytes: Some(bytes),
            files,
        })
    }

    fn destroy(&self, name: &str) -> Result<()> {
        remove_tree(&self.dirs.volumes()?, name)
    }

    fn list(&self) -> Result<Vec<String>> {
        names_in(&self.dirs.volumes()?)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(open_in(&self.dirs.volumes()?, name)?.is_some())
    }

    fn snapshot(&self, _: &str, _: &str) -> Result<()> {
        Err(no_snapshots())
    }

    fn delete_snapshot(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }

    fn snapshot_exists(&self, _: &str, _: &str) -> Result<bool> {
        Ok(false)
    }

    fn restore(&self, _: &str, _: &str, _: Option<u64>) -> Result<()> {
        Err(no_snapshots())
    }

    fn clone_volume(&self, _: &str, _: Option<&str>, _: &str, _: Option<u64>) -> Result<()> {
        Err(no_snapshots())
    }
}
