//! Exits and restarts: a monitor task per running container records its exit (from the shim's
//! exit record) and applies the restart policy; [`Manager::reconcile`] does the same for what
//! happened while the daemon was away (after a reboot, with the rules of `boot.rs`). Restarts
//! are paced with the starts after a reboot: at most `restart_concurrency` at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use inarray_store::{BootRow, ContainerState, ExitUpdate};

use super::{internal, shim_record, Manager, NodeBoot, Result, Since};
use crate::config::ContainerConfig;
use crate::events::EventType;
use crate::launcher::Pending;
use crate::supervisor;
use inarray_shim::protocol::ShimRecord;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long an exited container's shim may take to tear the runtime state down before the
/// daemon goes on without it (its leftovers are then removed by the daemon).
const SHIM_TEARDOWN: Duration = Duration::from_secs(30);

/// Restart delay after `streak` consecutive quick exits: 100 ms doubling, capped at 1 min.
pub fn backoff(streak: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(streak.min(20)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

impl Manager {
    /// Watches the shim of a running container; records its exit and applies the restart policy.
    /// With the shim's pipe (a shim this daemon started), the exit is known as soon as the shim
    /// has recorded it; for a re-adopted shim, when the shim is gone.
    pub(super) fn monitor(
        &self,
        id: String,
        rec: ShimRecord,
        exited: Option<Pending<()>>,
        started: Instant,
    ) {
        self.watch_health(id.clone());
        let this = self.clone();
        tokio::spawn(async move {
            match exited {
                Some(exited) => exited.await,
                None => this.inner.launcher.wait_gone(rec).await,
            }
            if let Err(e) = this.on_exit(&id, started.elapsed(), Some(rec)).await {
                tracing::error!(container = %id, error = %e, "recording an exit failed");
            }
        });
    }

    /// Records how a container ended (from its exit record), then restarts it if its policy says so.
    ///
    /// The container's lock is held until the shim `rec` is gone: nothing may start the
    /// container again, or delete its files, while its old shim still tears the runtime down.
    async fn on_exit(&self, id: &str, ran_for: Duration, rec: Option<ShimRecord>) -> Result<()> {
        let lock = self.lock_for(id);
        let g = lock.lock().await;
        let Some(row) = self.inner.store.container(id).await? else {
            return Ok(());
        };
        if row.state == ContainerState::Restarting {
            // Its exit was recorded and a start decided on (by a daemon killed since, or after
            // a reboot): it starts again, paced, whatever the shim's files say.
            drop(g);
            return self.start_when_allowed(id, true).await;
        }
        let paths = self.paths(id);
        let mut exit = supervisor::read_exit_record(&paths);
        if exit.is_none() {
            // The pipe ended without a record: the shim died. Make sure it is gone, then look
            // once more (it may have written the record just before dying).
            if let Some(rec) = rec {
                self.inner.launcher.wait_gone(rec).await;
            }
            exit = supervisor::read_exit_record(&paths);
        }
        let update = match exit {
            Some(x) => ExitUpdate {
                state: ContainerState::Exited,
                exit_code: Some(x.exit_code.into()),
                error: None,
                finished_at: x.finished_at,
                oom_killed: x.oom_killed,
            },
            None => ExitUpdate {
                state: ContainerState::Dead,
                exit_code: None,
                error: Some("the container's supervisor ended without recording an exit".into()),
                finished_at: Utc::now(),
                oom_killed: false,
            },
        };
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        // Before the row says so: a waiter woken by the exit may delete the container at once,
        // and its `destroy` must come after this `die`.
        let died = self.emit(
            self.container_event(EventType::ContainerDie, &row)
                .with("exit_code", update.exit_code)
                .with("oom_killed", update.oom_killed)
                .with("error", update.error.clone()),
        );
        let restart = update.state == ContainerState::Exited
            && cfg.restart.should_restart(
                update.exit_code.unwrap_or(-1),
                row.restart_count,
                row.stop_requested,
            );
        if !restart {
            // Recorded first, so waiters learn the exit at once; the shim finishes below.
            self.inner.store.mark_exited(id, &update).await?;
            self.inner.streaks.lock().expect("streaks").remove(id);
            self.changed(id);
        }
        died.await;
        if let Some(rec) = rec {
            let _ = tokio::time::timeout(SHIM_TEARDOWN, self.inner.launcher.wait_gone(rec)).await;
        }
        // Whatever the shim left behind (it was killed, say) goes now.
        let _ = self.cleanup_cgroups(id);
        if !restart {
            // Ended for good: its network goes (a restart keeps it: same address, same ports).
            self.net_down(id).await;
            drop(g);
            if cfg.auto_remove {
                self.auto_remove(id).await;
            }
            return Ok(());
        }
        let streak = {
            let mut s = self.inner.streaks.lock().expect("streaks");
            let e = s.entry(id.to_owned()).or_default();
            if ran_for >= STABLE_RUN {
                *e = 0;
            }
            let cur = *e;
            *e = e.saturating_add(1);
            cur
        };
        let delay = backoff(streak);
        self.inner
            .store
            .mark_exited(
                id,
                &ExitUpdate {
                    state: ContainerState::Restarting,
                    ..update
                },
            )
            .await?;
        self.changed(id);
        self.emit(
            self.container_event(EventType::ContainerRestart, &row)
                .with("reason", "policy")
                .with("restart_count", row.restart_count + 1)
                .with("delay_ms", delay.as_millis() as u64),
        )
        .await;
        drop(g);
        tracing::info!(container = %id, delay_ms = delay.as_millis() as u64, "restarting per policy");
        tokio::time::sleep(delay).await;
        self.start_when_allowed(id, true).await
    }

    /// [`Manager::start_again`] once one of the `restart_concurrency` permits is free.
    async fn start_when_allowed(&self, id: &str, count: bool) -> Result<()> {
        let Ok(_permit) = self.inner.starts.acquire().await else {
            return Ok(());
        };
        self.start_again(id, count).await.map(drop)
    }

    /// Brings SQL in line with reality after a (re)start of the daemon in the boot `node`.
    /// After a daemon restart: re-adopts containers whose shims live, records exits that
    /// happened meanwhile (and applies restart policies). After a reboot or a failover (another
    /// boot id recorded): nothing of that boot runs; see `boot.rs`. Either way, removes
    /// directories and cgroups that belong to no container, and records this boot.
    pub async fn reconcile(&self, node: &NodeBoot) -> Result<ReconcileReport> {
        // Volumes first: a container started below finds its volumes whole.
        self.reconcile_volumes().await?;
        let last = self.inner.store.last_boot().await?;
        let since = Since::of(last.as_ref(), node);
        let boot = BootRow {
            boot_id: node.boot_id.clone(),
            hostname: node.hostname.clone(),
            recorded_at: Utc::now(),
        };
        let mut report = ReconcileReport {
            since,
            ..Default::default()
        };
        if since.after_boot() {
            self.reconcile_after_boot(&boot, &mut report).await?;
        } else {
            self.reconcile_live(&mut report).await?;
            self.inner.store.record_boot(&boot, &[]).await?;
        }
        // Networks of containers that ended or vanished meanwhile go; live ones' ports are known.
        if let Err(e) = self.reconcile_networks().await {
            tracing::warn!(error = %e, "reconciling networks");
        }
        let rows = self.inner.store.list_containers(true).await?;
        let known: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(&self.inner.containers_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(name.as_str()) {
                    self.net_down(&name).await;
                    let _ = self.remove_files(&name);
                    report.removed_orphans += 1;
                }
            }
        }
        Ok(report)
    }

    /// Reconcile after a daemon restart in the same boot: adopt live shims, record the rest.
    async fn reconcile_live(&self, report: &mut ReconcileReport) -> Result<()> {
        let rows = self.inner.store.list_containers(true).await?;
        for row in &rows {
            match row.state {
                ContainerState::Running => {
                    let paths = self.paths(&row.id);
                    let rec = shim_record(row).or_else(|| supervisor::read_shim_record(&paths));
                    match rec {
                        Some(rec) if self.inner.launcher.is_alive(rec) => {
                            self.monitor(row.id.clone(), rec, None, Instant::now());
                            report.adopted += 1;
                        }
                        _ => {
                            self.on_exit_detached(&row.id);
                            report.exited += 1;
                        }
                    }
                }
                ContainerState::Restarting => {
                    self.on_exit_detached(&row.id);
                    report.restarted += 1;
                }
                ContainerState::Created | ContainerState::Exited | ContainerState::Dead => {
                    // A start the daemon was killed in the middle of: the shim came up (its
                    // record is written once the container runs) but the row was not marked
                    // running. The shim removes both records when it begins, so a record next
                    // to a live shim is this run's. Adopted like a running one; its exit, when
                    // it comes, is recorded as usual.
                    let paths = self.paths(&row.id);
                    let Some(rec) = supervisor::read_shim_record(&paths) else {
                        continue;
                    };
                    let live = self.inner.launcher.is_alive(rec);
                    let exited = supervisor::read_exit_record(&paths).is_some();
                    let never_started = row.state == ContainerState::Created;
                    // An exited row's exit record may be the one already recorded (its shim
                    // outlives the record by a moment): only a run without one is new there.
                    // A never-started row with an exit record ran and exited unseen.
                    let adopt = live && (never_started || !exited);
                    let ran = !live && never_started && exited;
                    if !adopt && !ran {
                        continue;
                    }
                    self.inner
                        .store
                        .mark_running(
                            &row.id,
                            rec.pid.into(),
                            rec.shim_pid.into(),
                            rec.shim_start as i64,
                        )
                        .await?;
                    if adopt {
                        self.monitor(row.id.clone(), rec, None, Instant::now());
                        report.adopted += 1;
                    } else {
                        self.on_exit_detached(&row.id);
                        report.exited += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes an `auto_remove` container after its exit was recorded (and its shim is gone).
    /// Its last row is remembered for a while ([`Manager::removed_container`]), so a waiter
    /// that wakes after the delete still learns how it ended. A container started again in
    /// between (by hand) is left alone.
    pub(super) async fn auto_remove(&self, id: &str) {
        let row = match self.inner.store.container(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "auto-remove: cannot read the container");
                return;
            }
        };
        if !matches!(row.state, ContainerState::Exited | ContainerState::Dead) {
            return;
        }
        self.remember_removed(row);
        match self.delete(id, false).await {
            Ok(()) => tracing::debug!(container = %id, "auto-removed after its exit"),
            Err(e) => tracing::warn!(container = %id, error = %e, "auto-remove failed"),
        }
    }

    fn on_exit_detached(&self, id: &str) {
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.on_exit(&id, Duration::ZERO, None).await {
                tracing::error!(container = %id, error = %e, "reconciling an exit failed");
            }
        });
    }
}

/// What [`Manager::reconcile`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// A daemon restart, or a reboot or failover since the last start.
    pub since: Since,
    pub adopted: usize,
    pub exited: usize,
    pub restarted: usize,
    pub removed_orphans: usize,
    /// After a reboot or a failover: the containers being started again (in the background).
    pub boot_starts: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(10), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }
}
