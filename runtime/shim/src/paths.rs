//! Where a container's files live under the state directory.

use std::path::{Path, PathBuf};

/// `<state>/containers/<id>/…` — everything the daemon and the shim keep for one container.
#[derive(Clone, Debug)]
pub struct ContainerPaths {
    pub dir: PathBuf,
}

impl ContainerPaths {
    pub fn new(containers_root: &Path, id: &str) -> Self {
        Self {
            dir: containers_root.join(id),
        }
    }
    /// The shim's instructions, written by the daemon.
    pub fn shim_config(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
    /// The container's private overlay upper layer: everything it changed in its root.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// stdout and stderr of the container.
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    /// The shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    /// Written by the shim, atomically, when the container has exited.
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Exit records of execs (`<exec id>.json`, an [`ExitRecord`](crate::protocol::ExitRecord)),
    /// written by the shim when an exec has ended.
    pub fn execs(&self) -> PathBuf {
        self.dir.join("execs")
    }
    pub fn exec_exit(&self, exec: &str) -> PathBuf {
        self.execs().join(format!("{exec}.json"))
    }
    /// Written by the shim once the container runs: who supervises it.
    pub fn shim_record(&self) -> PathBuf {
        self.dir.join("shim-pid.json")
    }
}

/// The shim's control socket for container `id`: beside libcontainer's state, whose root is kept
/// short because unix socket paths are limited to 107 bytes.
pub fn control_socket(runtime_root: &Path, id: &str) -> PathBuf {
    runtime_root.join(format!("{id}.sock"))
}
