//! The router's one state: every service a handler may need, each reached with
//! `State<Service>` through [`FromRef`]. A service the daemon always runs is a plain field, so a
//! router without it does not compile; the one that may be absent (the NFS gateway's counters,
//! when no `nfs_listen` is set) is an `Option` and its absence is answered explicitly.

use axum::extract::FromRef;
use inarray_events::Events;
use inarray_jobs::Jobs;
use inarray_nfs::Exports;
use inarray_runtime::Manager;

use crate::access::{Access, Limits};

#[derive(Clone)]
pub struct AppState {
    /// Containers, images, engines: the runtime's typed actions.
    pub manager: Manager,
    /// The job scheduler.
    pub jobs: Jobs,
    /// File events: watches, subscriptions, the log.
    pub events: Events,
    /// The NFS exports service (shared with the gateway and SIGHUP reload).
    pub exports: Exports,
    /// The running NFS gateway's counters, for `/metrics`; `None` when it does not serve.
    pub nfs_metrics: Option<inarray_nfs::Metrics>,
    /// Tokens, limits, the daemon's facts, the latency histograms.
    pub access: Access,
}

macro_rules! sub_state {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(s: &AppState) -> Self {
                s.$field.clone()
            }
        })*
    };
}

sub_state!(
    manager: Manager,
    jobs: Jobs,
    events: Events,
    exports: Exports,
    nfs_metrics: Option<inarray_nfs::Metrics>,
    access: Access,
);

impl FromRef<AppState> for Limits {
    fn from_ref(s: &AppState) -> Self {
        s.access.limits()
    }
}
