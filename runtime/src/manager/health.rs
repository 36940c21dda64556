//! The health runner: one task per running container that has a check (its own `healthcheck`
//! or its image's `HEALTHCHECK`). Each probe is a process started in the container through its
//! shim like an exec, but not recorded as one (no SQL row per probe): the shim's exit record is
//! read and removed. The status lives in memory (`starting` again after a daemon restart) and is
//! shown in the container view and `/metrics`; `restart_on_unhealthy` restarts the container.

use std::time::{Duration, Instant};

use chrono::Utc;
use inarray_shim::protocol::{CtlRequest, ExecProcess, ExitRecord, STDERR, STDOUT};
use inarray_store::ContainerState;
use tokio::io::AsyncReadExt;

use super::{new_id, Manager};
use crate::config::ContainerConfig;
use crate::events::EventType;
use crate::health::{self, Health, HealthStatus, Probe, ProbeResult, MAX_OUTPUT};
use crate::spec::ImageDefaults;

impl Manager {
    /// The health of a running container with a check.
    pub fn health(&self, id: &str) -> Option<Health> {
        self.inner.health.lock().expect("health").get(id).cloned()
    }

    /// Starts the health runner of `id`'s current run, if it has a check.
    pub(super) fn watch_health(&self, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some((probe, run_started)) = this.health_probe(&id).await else {
                return;
            };
            // The probe's user, resolved once per run (not at every probe).
            let identity = match this.inner.store.container(&id).await {
                Ok(Some(row)) => this
                    .exec_identity(&row, None)
                    .await
                    .map_err(|e| e.to_string()),
                _ => return,
            };
            // The status this run had before a daemon restart, if it was recorded.
            let mut health = Health::new();
            if let Some(status) = this.saved_health(&id, run_started).await {
                health.status = status;
            }
            this.inner
                .health
                .lock()
                .expect("health")
                .insert(id.clone(), health);
            let started = Instant::now();
            loop {
                tokio::time::sleep(probe.interval).await;
                let row = match this.inner.store.container(&id).await {
                    Ok(Some(r)) if r.state == ContainerState::Running => r,
                    _ => break,
                };
                if row.started_at != run_started {
                    // Another run has its own runner.
                    return;
                }
                let result = this.probe_once(&row, &probe, &identity).await;
                let changed = {
                    let mut map = this.inner.health.lock().expect("health");
                    let h = map.entry(id.clone()).or_default();
                    h.record(result, started.elapsed(), &probe)
                };
                if let Some(status) = changed {
                    tracing::info!(container = %row.name, status = status.as_str(), "health");
                    this.save_health(&id, run_started, status).await;
                    let streak = this.health(&id).map_or(0, |h| h.failing_streak);
                    this.emit(
                        this.container_event(EventType::ContainerHealthStatus, &row)
                            .with("status", status.as_str())
                            .with("failing_streak", streak),
                    )
                    .await;
                    this.changed(&id);
                    if status == HealthStatus::Unhealthy && probe.restart_on_unhealthy {
                        tracing::warn!(container = %row.name, "unhealthy: restarting it");
                        let restarted = this
                            .restart_because(&id, Duration::from_secs(10), "unhealthy")
                            .await;
                        if let Err(e) = restarted {
                            tracing::error!(container = %row.name, error = %e, "restart failed");
                        }
                        return;
                    }
                }
            }
            this.inner.health.lock().expect("health").remove(&id);
        });
    }

    /// The health status recorded for the run that started at `run` (None: another run's, or
    /// none recorded).
    async fn saved_health(
        &self,
        id: &str,
        run: Option<chrono::DateTime<Utc>>,
    ) -> Option<HealthStatus> {
        let json = self.inner.store.container_health(id).await.ok()??;
        let saved: SavedHealth = serde_json::from_str(&json).ok()?;
        (saved.run == run).then_some(saved.status)
    }

    /// Records a run's health status, so that a daemon restart keeps it.
    async fn save_health(
        &self,
        id: &str,
        run: Option<chrono::DateTime<Utc>>,
        status: HealthStatus,
    ) {
        let json = serde_json::to_string(&SavedHealth { status, run }).unwrap_or_default();
        if let Err(e) = self.inner.store.set_container_health(id, Some(&json)).await {
            tracing::warn!(container = %id, error = %e, "cannot record the health status");
        }
    }

    /// The probe of a container (None without one) and the start time of its current run.
    async fn health_probe(&self, id: &str) -> Option<(Probe, Option<chrono::DateTime<Utc>>)> {
        let row = self.inner.store.container(id).await.ok()??;
        let cfg: ContainerConfig = serde_json::from_str(&row.spec).ok()?;
        let image = self.image_of(&row).await.ok()?;
        let defaults: ImageDefaults = image.config_as().ok()?;
        let probe = health::probe(cfg.healthcheck.as_ref(), defaults.healthcheck.as_ref())?;
        Some((probe, row.started_at))
    }

    /// Runs the probe once in the container: its exit code and the start of its output.
    async fn probe_once(
        &self,
        row: &inarray_store::ContainerRow,
        p: &Probe,
        identity: &std::result::Result<crate::spec::Identity, String>,
    ) -> ProbeResult {
        let start = Utc::now();
        let fail = |output: String| ProbeResult {
            start,
            end: Utc::now(),
            exit_code: -1,
            output,
        };
        let identity = match identity {
            Ok(i) => *i,
            Err(e) => return fail(e.clone()),
        };
        let Ok(exec_id) = new_id().map(|id| format!("health-{id}")) else {
            return fail("no random id".into());
        };
        let req = CtlRequest::Exec {
            id: exec_id.clone(),
            process: ExecProcess {
                args: p.argv.clone(),
                uid: identity.uid,
                gid: identity.gid,
                ..Default::default()
            },
            attach: true,
        };
        let mut c = match self.control(row, req).await {
            Ok(c) if c.reply.error.is_none() => c,
            Ok(c) => return fail(c.reply.error.unwrap_or_default()),
            Err(e) => return fail(e.to_string()),
        };
        let mut output = Vec::new();
        let read = async {
            let mut h = [0u8; 8];
            while c.stream.read_exact(&mut h).await.is_ok() {
                let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
                let mut data = vec![0u8; len];
                if c.stream.read_exact(&mut data).await.is_err() {
                    break;
                }
                if matches!(h[0], STDOUT | STDERR) && output.len() < MAX_OUTPUT {
                    let room = MAX_OUTPUT - output.len();
                    output.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        };
        let timed_out = tokio::time::timeout(p.timeout, read).await.is_err();
        let exit_file = self.paths(&row.id).exec_exit(&exec_id);
        if timed_out {
            let kill = CtlRequest::Kill {
                exec: exec_id.clone(),
                signal: libc::SIGKILL,
            };
            let _ = self.control(row, kill).await;
            // Its record comes once the shim has reaped it.
            for _ in 0..50 {
                if exit_file.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = std::fs::remove_file(&exit_file);
            return fail(format!("timed out after {:.1} s", p.timeout.as_secs_f64()));
        }
        let rec: Option<ExitRecord> = std::fs::read(&exit_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(&exit_file);
        ProbeResult {
            start,
            end: Utc::now(),
            exit_code: rec.map_or(-1, |r| r.exit_code.into()),
            output: String::from_utf8_lossy(&output).into_owned(),
        }
    }
}

/// A run's health status as recorded in its container's row.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedHealth {
    status: HealthStatus,
    /// When the run started (the row's `started_at`).
    run: Option<chrono::DateTime<Utc>>,
}
