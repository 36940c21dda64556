//! Containers: typed requests, OCI specs with safe defaults, the daemon's side of the shim
//! protocol, engines and their cgroups, and the manager that ties them to the state database.
//! The shim itself (the only caller of libcontainer) and bind access beneath the array root are
//! the `inarray-shim` crate.
//!
//! The surface is narrow: the [`Manager`] (every typed action), the request and limit types
//! (`config`, `resources`), engines and the cgroup driver seam (`engines`, `cgroups`), and the
//! I/O guard's settings. Specs, users, the supervisor protocol and the launcher are internal.

pub mod cgroups;
pub mod config;
pub mod engines;
pub mod events;
pub mod health;
mod ioguard;
mod launcher;
pub mod logs;
mod manager;
pub mod network;
pub mod procs;
mod recording;
pub mod resources;
mod spec;
mod supervisor;
mod user;
pub mod volume_backend;

pub use config::{ContainerConfig, InvalidField, Network, PullPolicy, RestartPolicy};
pub use inarray_shim::logfile::LogLimits;
pub use inarray_shim::volumes;
pub use ioguard::{GuardConfig, GuardStatus};
pub use manager::{
    backoff, starts_at_boot, Attached, Attachment, Cause, ContainerUpdate, ExecConfig, ExecInfo,
    ImageRemoval, Manager, ManagerError, ManagerOptions, NodeBoot, PruneReport, PrunedImage,
    ReconcileReport, Since, REBOOTED, RESTART_CONCURRENCY,
};
pub use manager::{SnapshotInfo, UsedBy, VolumeInfo, VolumePatch, VolumeSpec};
pub use volumes::{Volume, VolumeError};
