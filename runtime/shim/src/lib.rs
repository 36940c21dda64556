//! The per-container supervisor, `inarray-shim DIR`, and its protocol with the daemon.
//!
//! The daemon spawns one shim per container start, from a sealed in-memory copy of this
//! executable (CVE-2019-5736, [`sealed`]). The shim is a small single-threaded program (no async
//! runtime): it is the only code that calls libcontainer, which forks, so it must not run inside
//! the multi-threaded daemon. It detaches from the daemon (fork + setsid), so the container
//! survives a daemon stop, crash or upgrade, then:
//!
//! 1. enters a private mount namespace (slave of the host), so every mount it makes — the overlay
//!    root and the volume binds — exists only for it and the container, and disappears with them;
//! 2. mounts the overlay (read-only image layers, the container's private upper);
//! 3. resolves each volume source beneath the array root and bind-mounts it *through the opened
//!    fd* onto a target resolved beneath the rootfs without following symlinks;
//! 4. points stdio at /dev/null and the log file, creates and starts the container;
//! 5. reports `{pid, shim_pid, shim_start}` (or `{error}`) on its original stdout to the daemon;
//! 6. reaps the container and writes `exit.json` atomically, then deletes the runtime state
//!    (cgroups) and exits.
//!
//! The daemon's side of the protocol (spawning, the pidfd watch, signals) is
//! `inarray_runtime::supervisor`; both sides share only [`protocol`], [`paths`] and [`volumes`].

mod cgroup;
mod container;
mod exec;
pub mod logfile;
mod memory;
pub mod paths;
pub mod protocol;
mod relay;
pub mod sealed;
mod serve;
mod supervise;
pub mod volumes;

pub use cgroup::{is_v2, oom_kills, MOUNT_ROOT};
pub use paths::ContainerPaths;
pub use sealed::SealedExe;
pub use supervise::main;

/// The executable's file name: installed beside `inarray`, found there by the daemon.
pub const EXE_NAME: &str = "inarray-shim";
