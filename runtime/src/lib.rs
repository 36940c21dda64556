//! Containers: typed requests, OCI specs with safe defaults, the daemon's side of the shim
//! protocol, and the manager that ties them to the state database. The shim itself (the only
//! caller of libcontainer) and bind access beneath the array root are the `inarray-shim` crate.

pub mod cgroups;
pub mod config;
pub mod engines;
pub mod ioguard;
pub mod launcher;
pub mod manager;
pub mod resources;
pub mod spec;
pub mod supervisor;
pub mod user;

pub use config::{ContainerConfig, InvalidField, Network, PullPolicy, RestartPolicy};
pub use inarray_shim::volumes;
pub use manager::{
    ImageRemoval, Manager, ManagerError, ManagerOptions, PruneReport, ReconcileReport,
};
pub use volumes::{Volume, VolumeError};
