//! Boot and failover. A daemon that starts after its node rebooted — or on another node against
//! the same array and state directory, a partner controller taking over — finds that nothing of
//! the previous boot runs: no shim, no container, no cgroup. It tells that from a daemon restart
//! by the kernel's boot id, recorded in the store at every start ([`NodeBoot`], [`Since`]).
//!
//! After a reboot, every container that was running (or waiting out a restart backoff) is
//! recorded `exited` with the reason "the node rebooted" (and the exit code its shim recorded as
//! the node went down, if it had time to); then [`starts_at_boot`] says which containers start
//! again. Those are recorded `restarting` in the same transaction that records the new boot, and
//! started a bounded number at once (`restart_concurrency`), engine by engine in name order
//! (`storage` first, though no container runs there), oldest first within an engine, so that
//! hundreds of starts do not starve the node's own storage service.
//!
//! A daemon killed during those starts finds the rest still `restarting` at its next start (in
//! the same boot): they are started then, as any restart the daemon had decided on.

use std::time::Instant;

use chrono::Utc;
use inarray_store::{BootChange, BootRow, ContainerRow, ContainerState, ExitUpdate};

use super::{internal, Manager, ReconcileReport, Result};
use crate::config::{ContainerConfig, RestartPolicy};
use crate::engines;
use crate::events::EventType;
use crate::supervisor;

/// The reason recorded for a run the node's reboot (or a failover) ended.
pub const REBOOTED: &str = "the node rebooted";

/// The node and kernel boot this daemon runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBoot {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): new at every boot.
    pub boot_id: String,
    /// The node's host name: tells a failover (another node) from a reboot.
    pub hostname: String,
}

/// How a daemon's start relates to the previous one against the same state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Since {
    /// No boot recorded (a new state directory, or the first start of a daemon that records
    /// boots): reconciled as after a daemon restart.
    #[default]
    Unknown,
    /// The same boot of the same node: the daemon restarted; live shims are re-adopted.
    Restart,
    /// The same node, another boot: it rebooted.
    Reboot,
    /// Another node: a partner controller took the array over.
    Failover,
}

impl Since {
    pub fn of(last: Option<&BootRow>, now: &NodeBoot) -> Self {
        match last {
            None => Self::Unknown,
            Some(b) if b.boot_id == now.boot_id => Self::Restart,
            Some(b) if b.hostname == now.hostname => Self::Reboot,
            Some(_) => Self::Failover,
        }
    }

    /// Whether nothing of the previous boot can be running.
    pub fn after_boot(self) -> bool {
        matches!(self, Self::Reboot | Self::Failover)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Restart => "restart",
            Self::Reboot => "reboot",
            Self::Failover => "failover",
        }
    }
}

/// Whether a container starts again when its daemon starts after a reboot.
///
/// `state` is the container's state as the previous boot left it; `last_exit` the exit code of
/// its last run — None when that run ended without one (the node went down under it, or its
/// supervisor died). A container never started (`created`) stays so. Otherwise, by policy:
/// - `no`: never;
/// - `always`: always — even one an operator stopped (as Docker's `always`: a stop holds until
///   the next daemon start after a reboot);
/// - `unless-stopped`: unless an operator stopped it (`stop_requested`, kept across reboots);
/// - `on-failure[:N]`: unless an operator stopped it, when its last exit was not a clean 0 (a
///   run the reboot ended counts as a failure). A start at boot is a fresh start: the count of
///   restarts N bounds starts again at 0.
pub fn starts_at_boot(
    policy: RestartPolicy,
    state: ContainerState,
    last_exit: Option<i64>,
    stop_requested: bool,
) -> bool {
    if state == ContainerState::Created {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !stop_requested,
        RestartPolicy::OnFailure { .. } => !stop_requested && last_exit != Some(0),
    }
}

/// What a start the daemon decided on came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Again {
    Started,
    /// The start failed: the container is `dead` with the reason.
    Failed,
    /// Nothing to do: it was stopped, started or removed meanwhile.
    Skipped,
}

impl Manager {
    /// After a reboot or a failover: records what the reboot did to every container and the new
    /// boot in one transaction, then starts (paced, in the background) those whose policy asks.
    pub(super) async fn reconcile_after_boot(
        &self,
        boot: &BootRow,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let now = Utc::now();
        let rows = self.inner.store.list_containers(true).await?;
        let mut changes = Vec::new();
        let mut starts: Vec<&ContainerRow> = Vec::new();
        // `auto_remove` containers the reboot ended: removed once that is recorded.
        let mut removals: Vec<String> = Vec::new();
        // The events of what the reboot did, recorded once the boot is.
        let mut events = Vec::new();
        for row in &rows {
            let cfg: ContainerConfig =
                serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
            let interrupted = match row.state {
                ContainerState::Created => continue,
                ContainerState::Running | ContainerState::Restarting => true,
                ContainerState::Exited | ContainerState::Dead => false,
            };
            let exit = if row.state == ContainerState::Running {
                // The shim removes an old exit record when it begins: one here is this run's,
                // written as the node went down.
                let rec = supervisor::read_exit_record(&self.paths(&row.id));
                ExitUpdate {
                    state: ContainerState::Exited,
                    exit_code: rec.as_ref().map(|x| x.exit_code.into()),
                    error: Some(REBOOTED.into()),
                    finished_at: rec.as_ref().map_or(now, |x| x.finished_at),
                    oom_killed: rec.is_some_and(|x| x.oom_killed),
                }
            } else {
                ExitUpdate {
                    state: if interrupted {
                        ContainerState::Exited
                    } else {
                        row.state
                    },
                    exit_code: row.exit_code,
                    error: if interrupted {
                        Some(REBOOTED.into())
                    } else {
                        row.error.clone()
                    },
                    finished_at: row.finished_at.unwrap_or(now),
                    oom_killed: row.oom_killed,
                }
            };
            let again = starts_at_boot(cfg.restart, row.state, exit.exit_code, row.stop_requested);
            if interrupted {
                events.push(
                    self.container_event(EventType::ContainerDie, row)
                        .with("exit_code", exit.exit_code)
                        .with("oom_killed", exit.oom_killed)
                        .with("error", REBOOTED),
                );
            }
            if again {
                events.push(
                    self.container_event(EventType::ContainerRestart, row)
                        .with("reason", "boot"),
                );
            }
            if interrupted {
                report.exited += 1;
                // Nothing is left on a rebooted node; a failover's partner never had any.
                let _ = self.cleanup_cgroups(&row.id);
            }
            if !interrupted && !again {
                continue;
            }
            if again {
                starts.push(row);
            } else if interrupted && cfg.auto_remove {
                removals.push(row.id.clone());
            }
            changes.push(BootChange {
                id: row.id.clone(),
                exit: ExitUpdate {
                    state: if again {
                        ContainerState::Restarting
                    } else {
                        exit.state
                    },
                    ..exit
                },
                start_again: again,
            });
        }
        self.inner.store.record_boot(boot, &changes).await?;
        let recorded: Vec<_> = events.into_iter().map(|e| self.emit(e)).collect();
        for r in recorded {
            r.await;
        }
        for c in &changes {
            self.changed(&c.id);
        }
        for id in removals {
            self.auto_remove(&id).await;
        }
        starts.sort_by(|a, b| start_order(a).cmp(&start_order(b)));
        report.boot_starts = starts.len();
        let order = starts
            .into_iter()
            .map(|r| (r.id.clone(), r.name.clone(), r.engine.clone()))
            .collect();
        self.start_at_boot(order);
        Ok(())
    }

    /// Starts the containers (id, name, engine) in this order, at most `restart_concurrency`
    /// at once; logs each start and a summary.
    fn start_at_boot(&self, order: Vec<(String, String, String)>) {
        if order.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let total = order.len();
            let at_once = this.inner.opts.restart_concurrency;
            tracing::info!(
                containers = total,
                at_once,
                "starting again after the reboot"
            );
            let mut tasks = tokio::task::JoinSet::new();
            for (i, (id, name, engine)) in order.into_iter().enumerate() {
                let Ok(permit) = this.inner.starts.clone().acquire_owned().await else {
                    return;
                };
                tracing::info!(container = %name, id = %id, engine = %engine, n = i + 1, of = total,
                    after_ms = t0.elapsed().as_millis() as u64, "boot start");
                let this = this.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    match this.start_again(&id, false).await {
                        Ok(again) => again,
                        Err(e) => {
                            tracing::warn!(container = %id, error = %e, "boot start failed");
                            Again::Failed
                        }
                    }
                });
            }
            let (mut started, mut failed, mut skipped) = (0, 0, 0);
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Again::Started) => started += 1,
                    Ok(Again::Skipped) => skipped += 1,
                    Ok(Again::Failed) | Err(_) => failed += 1,
                }
            }
            tracing::info!(
                started,
                failed,
                skipped,
                at_once,
                ms = t0.elapsed().as_millis() as u64,
                "boot starts done"
            );
        });
    }

    /// Starts a container the daemon itself decided to start again (its restart policy, a
    /// reboot), unless a stop or a start by hand came first. `count`: a restart its policy
    /// counts. The caller holds one of the `restart_concurrency` permits.
    pub(super) async fn start_again(&self, id: &str, count: bool) -> Result<Again> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        match self.inner.store.container(id).await? {
            // Still waiting to start (not stopped, removed or started by hand meanwhile).
            Some(r) if r.state == ContainerState::Restarting && !r.stop_requested => {
                if count {
                    self.inner.store.bump_restart_count(id).await?;
                }
                match self.spawn(&r).await {
                    Ok(_) => Ok(Again::Started),
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "start failed");
                        Ok(Again::Failed)
                    }
                }
            }
            // A stop arrived meanwhile: it stays exited.
            Some(r) if r.state == ContainerState::Restarting => {
                self.inner
                    .store
                    .set_state(id, ContainerState::Exited)
                    .await?;
                self.changed(id);
                Ok(Again::Skipped)
            }
            _ => Ok(Again::Skipped),
        }
    }
}

/// The order of starts after a reboot: engines in name order with `storage` first, then the
/// oldest container first.
fn start_order(r: &ContainerRow) -> (bool, &str, chrono::DateTime<Utc>, &str) {
    (
        r.engine != engines::STORAGE,
        r.engine.as_str(),
        r.created_at,
        r.id.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState::*;

    #[test]
    fn the_policies_at_boot() {
        let on_failure = RestartPolicy::OnFailure { max: Some(2) };
        for (policy, state, last_exit, stopped, starts) in [
            (RestartPolicy::No, Running, None, false, false),
            (RestartPolicy::No, Exited, Some(1), false, false),
            (RestartPolicy::Always, Running, None, false, true),
            (RestartPolicy::Always, Exited, Some(0), true, true),
            (RestartPolicy::Always, Dead, None, false, true),
            (RestartPolicy::Always, Created, None, false, false),
            (RestartPolicy::UnlessStopped, Running, None, false, true),
            (RestartPolicy::UnlessStopped, Exited, Some(143), true, false),
            (
                RestartPolicy::UnlessStopped,
                Restarting,
                Some(1),
                false,
                true,
            ),
            (on_failure, Running, None, false, true),
            (on_failure, Running, Some(0), false, false),
            (on_failure, Running, Some(137), false, true),
            (on_failure, Exited, Some(3), false, true),
            (on_failure, Exited, Some(0), false, false),
            (on_failure, Exited, Some(3), true, false),
            (on_failure, Dead, None, false, true),
        ] {
            assert_eq!(
                starts_at_boot(policy, state, last_exit, stopped),
                starts,
                "{policy} {state} exit {last_exit:?} stopped {stopped}"
            );
        }
    }

    #[test]
    fn a_reboot_or_a_failover_by_the_boot_id() {
        let now = NodeBoot {
            boot_id: "b2".into(),
            hostname: "a".into(),
        };
        let row = |boot_id: &str, hostname: &str| BootRow {
            boot_id: boot_id.into(),
            hostname: hostname.into(),
            recorded_at: Utc::now(),
        };
        assert_eq!(Since::of(None, &now), Since::Unknown);
        assert_eq!(Since::of(Some(&row("b2", "a")), &now), Since::Restart);
        assert_eq!(Since::of(Some(&row("b1", "a")), &now), Since::Reboot);
        assert_eq!(Since::of(Some(&row("b1", "b")), &now), Since::Failover);
        assert!(Since::Reboot.after_boot() && Since::Failover.after_boot());
        assert!(!Since::Restart.after_boot() && !Since::Unknown.after_boot());
    }
}
