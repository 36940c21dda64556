//! The manager's one error type. Every variant keeps its cause as a `source`, so callers classify
//! by kind ([`ManagerError::is_disk_full`]) and log the whole chain, never by matching words.

use inarray_images::ImageError;
use inarray_store::StoreError;

use crate::config::InvalidField;
use crate::volumes::VolumeError;

/// A cause of any kind, kept for the log and for classification.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no such {kind}: {key}")]
    NotFound { kind: &'static str, key: String },
    /// The object is in a state (or has a name, or limits) that does not allow the action.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A per-object cap is reached (e.g. concurrent execs in one container).
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The container could not be started; `message` says why for the operator.
    #[error("cannot start the container: {message}")]
    Start {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something of the daemon's own failed (`what` was being done).
    #[error("{what}: {source}")]
    Internal {
        what: String,
        #[source]
        source: Cause,
    },
}

pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

impl ManagerError {
    /// Whether the cause is a full disk (ENOSPC, EDQUOT or SQLITE_FULL anywhere in the chain).
    pub fn is_disk_full(&self) -> bool {
        inarray_store::is_disk_full(self)
    }

    /// The operator's text of a start failure (without the "cannot start" prefix).
    pub fn start_message(&self) -> Option<&str> {
        match self {
            Self::Start { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// An internal error: `what` was being done when `source` failed.
pub(crate) fn internal(what: &str, source: impl Into<Cause>) -> ManagerError {
    ManagerError::Internal {
        what: what.to_owned(),
        source: source.into(),
    }
}
