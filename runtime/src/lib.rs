//! Containers: typed requests, OCI specs with safe defaults, bind access beneath the array root,
//! the per-container shim (the only caller of libcontainer), and the manager that ties them to the
//! state database.

pub mod cgroups;
pub mod config;
pub mod engines;
mod fsutil;
pub mod ioguard;
pub mod launcher;
pub mod manager;
pub mod paths;
pub mod resources;
pub mod sealed;
pub mod shim;
pub mod spec;
pub mod supervisor;
pub mod user;
pub mod volumes;

pub use config::{ContainerConfig, InvalidField, Network, PullPolicy, RestartPolicy};
pub use fsutil::{open_beneath, write_atomic};
pub use manager::{
    ImageRemoval, Manager, ManagerError, ManagerOptions, PruneReport, ReconcileReport,
};
pub use volumes::{Volume, VolumeError};
