//! Scheduled jobs: cron schedules that run containers — on time, exactly once, across restarts.
//!
//! - [`schedule`]: cron expressions in IANA time zones, and the daylight-saving rule.
//! - [`spec`]: the job definition and its validation.
//! - [`scheduler`]: [`Jobs`], the service: definitions and next-fire times in SQL, one timer on
//!   the earliest next fire, runs as containers (concurrency, timeouts, retries, history), and
//!   the missed-run policy at start.
//! - [`clock`] and [`runner`]: the seams (time, containers) the tests replace.

pub mod clock;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod spec;

pub use clock::{Clock, FakeClock, SystemClock};
pub use runner::{Exit, Runner};
pub use schedule::Schedule;
pub use scheduler::{Job, Jobs, JobsOptions, Recovery};
pub use spec::{Concurrency, History, HistoryPatch, JobPatch, JobSpec, Missed};

use inarray_runtime::ManagerError;
use inarray_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A field of a request fails validation.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no such job: {0}")]
    NotFound(String),
    /// The name is taken, or the action is not allowed now.
    #[error("{0}")]
    Conflict(String),
    /// A run's container was created but did not start.
    #[error("{message}")]
    Start {
        container_id: Option<String>,
        message: String,
    },
    /// A container action failed (no such image, no such container, …).
    #[error(transparent)]
    Container(#[from] ManagerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl JobsError {
    /// The container (or image) the action was about does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Container(ManagerError::NotFound { .. }))
    }
}
