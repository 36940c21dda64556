//! The seam between the manager's lifecycle rules and the processes that carry them out.
//!
//! [`Launcher`] is everything the manager does to a shim: spawn one for a prepared container,
//! signal the container's init through it, learn when it is gone. [`ShimLauncher`] is the real
//! one (the supervisor protocol); the lifecycle and restart-policy rules are unit-tested with the
//! recording double in `manager/tests.rs`, the way `jobs` tests its scheduler with a fake clock and
//! runner.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use nix::sys::signal::Signal;

use crate::supervisor::{self, SupervisorError};
use inarray_shim::protocol::{CtlReply, CtlRequest, ShimRecord};
use inarray_shim::ContainerPaths;

/// A future the manager awaits; boxed so that the trait stays object-safe.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A started container: who supervises it, and a future that resolves once the container has
/// exited (its exit record written) or its supervisor died.
pub struct Launched {
    pub record: ShimRecord,
    pub exited: Pending<()>,
}

/// What the manager does to the supervisors of its containers.
pub trait Launcher: Send + Sync + 'static {
    /// Starts the container prepared in `paths` (bundle and shim instructions written) and waits
    /// until it runs or has failed to start.
    fn spawn(&self, paths: &ContainerPaths) -> Pending<Result<Launched, SupervisorError>>;
    /// Sends `sig` to the container's init, if its supervisor is still the process `rec` names.
    fn signal(&self, rec: ShimRecord, sig: Signal) -> nix::Result<()>;
    /// Resolves once the supervisor `rec` names is gone (at once if it already is).
    fn wait_gone(&self, rec: ShimRecord) -> Pending<()>;
    /// Whether the supervisor `rec` names is alive (and is that process, not a reused pid).
    fn is_alive(&self, rec: ShimRecord) -> bool;
    /// Sends `req` on the control socket of a running container's shim; returns its answer and
    /// the connection, which carries the process's stdio after an attach.
    fn control(&self, socket: PathBuf, req: CtlRequest) -> Pending<std::io::Result<Controlled>>;
}

/// A shim's answer on its control socket, and the connection.
pub struct Controlled {
    pub reply: CtlReply,
    pub stream: tokio::net::UnixStream,
}

/// The real launcher: `inarray-shim` processes spawned from the sealed executable.
pub struct ShimLauncher {
    exe: PathBuf,
}

impl ShimLauncher {
    pub fn new(exe: PathBuf) -> Self {
        Self { exe }
    }
}

impl Launcher for ShimLauncher {
    fn spawn(&self, paths: &ContainerPaths) -> Pending<Result<Launched, SupervisorError>> {
        let (exe, paths) = (self.exe.clone(), paths.clone());
        Box::pin(async move {
            let (record, pipe) = supervisor::spawn_shim(&exe, &paths).await?;
            Ok(Launched {
                record,
                exited: Box::pin(pipe.exited()),
            })
        })
    }

    fn signal(&self, rec: ShimRecord, sig: Signal) -> nix::Result<()> {
        supervisor::signal(rec, sig)
    }

    fn wait_gone(&self, rec: ShimRecord) -> Pending<()> {
        Box::pin(supervisor::wait_shim_gone(rec))
    }

    fn is_alive(&self, rec: ShimRecord) -> bool {
        supervisor::is_same_process(rec.shim_pid, rec.shim_start)
    }

    fn control(&self, socket: PathBuf, req: CtlRequest) -> Pending<std::io::Result<Controlled>> {
        Box::pin(async move {
            let (reply, stream) = supervisor::control(&socket, &req).await?;
            Ok(Controlled { reply, stream })
        })
    }
}
