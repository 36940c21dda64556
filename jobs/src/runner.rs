//! The container seam: what the scheduler needs from the runtime, as a trait, so the scheduler loop
//! is unit-tested with a recording fake and the daemon uses the real [`Manager`].

use std::time::Duration;

use inarray_runtime::{ContainerConfig, Manager, ManagerError};
use inarray_store::ContainerState;

use crate::clock::BoxFuture;
use crate::JobsError;

/// How a run's container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// None when it never ran to an exit (its start failed, supervision was lost).
    pub exit_code: Option<i64>,
    /// Why, in that case.
    pub error: Option<String>,
}

pub trait Runner: Send + Sync + 'static {
    /// Checks what can be checked before a job is saved (the image exists or can be pulled).
    fn check<'a>(&'a self, cfg: &'a ContainerConfig) -> BoxFuture<'a, Result<(), JobsError>>;
    /// Creates and starts a container (named by `cfg.name`); its id. A failed start of a created
    /// container is [`JobsError::Start`] with the id.
    fn run(&self, cfg: ContainerConfig) -> BoxFuture<'_, Result<String, JobsError>>;
    /// Starts a container that was created but never started.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), JobsError>>;
    /// Waits for the container to end.
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Exit, JobsError>>;
    /// SIGTERM, then SIGKILL after `grace`; returns once it has ended.
    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> BoxFuture<'a, Result<(), JobsError>>;
    /// Removes the container (killing it first if it runs).
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), JobsError>>;
    /// The container with this exact name, if any: its id and state.
    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, ContainerState)>, JobsError>>;
}

impl Runner for Manager {
    fn check<'a>(&'a self, cfg: &'a ContainerConfig) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async move {
            // With a pull policy other than `never`, a missing image is pulled now, so a job
            // naming an unknown image or tag is refused when it is saved, not at its first run.
            self.ensure_image(&cfg.image, cfg.pull).await?;
            Ok(())
        })
    }

    fn run(&self, cfg: ContainerConfig) -> BoxFuture<'_, Result<String, JobsError>> {
        Box::pin(async move {
            let name = cfg.name.clone();
            match self.create(cfg).await {
                Ok(row) => Ok(row.id),
                Err(ManagerError::Start { message, .. }) => {
                    let container_id = match name {
                        Some(n) => self.find_by_name(&n).await?.map(|r| r.id),
                        None => None,
                    };
                    Err(JobsError::Start {
                        container_id,
                        message,
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async move {
            match Manager::start(self, id).await {
                Ok(_) => Ok(()),
                Err(ManagerError::Start { message, .. }) => Err(JobsError::Start {
                    container_id: Some(id.to_owned()),
                    message,
                }),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Exit, JobsError>> {
        Box::pin(async move {
            let row = Manager::wait(self, id).await?;
            Ok(Exit {
                exit_code: row.exit_code,
                error: row.error,
            })
        })
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async move {
            Manager::stop(self, id, grace).await?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async move { Ok(self.delete(id, true).await?) })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, ContainerState)>, JobsError>> {
        Box::pin(async move { Ok(self.find_by_name(name).await?.map(|r| (r.id, r.state))) })
    }
}
