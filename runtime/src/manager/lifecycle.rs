//! Container lifecycle: create, start, stop, kill, restart, wait, delete.
//!
//! A start is planned once (the OCI spec and the shim's instructions, derived from the stored
//! request, its image and its engine), written to the container's directory and handed to the
//! [`Launcher`](crate::launcher::Launcher); the outcome is recorded in SQL before the reply.

use std::time::{Duration, Instant};

use chrono::Utc;
use inarray_store::{ContainerRow, ContainerState, ExitUpdate, ImageRow, NewContainer, StoreError};
use nix::sys::signal::Signal;
use tokio::sync::broadcast;

use super::{
    in_background, internal, new_id, recv_for, remove_logged, shim_record, Manager, ManagerError,
    Result,
};
use crate::config::{ContainerConfig, InvalidField};
use crate::engines;
use crate::events::EventType;
use crate::resources::Resources;
use crate::spec::{self, ImageDefaults, SpecContext};
use inarray_shim::protocol::{ShimConfig, StdioConfig};
use inarray_shim::ContainerPaths;

/// What a start hands the shim: the runtime spec and the shim's own instructions. Derived from
/// SQL at every start, never stored as a source of truth.
pub(super) struct Plan {
    spec: oci_spec::runtime::Spec,
    shim: ShimConfig,
}

impl Manager {
    /// Validates and records a container, and starts it unless `start: false`.
    pub async fn create(&self, mut cfg: ContainerConfig) -> Result<ContainerRow> {
        cfg.validate()?;
        // The network exists, the ports are free; ephemeral ports are chosen (and stored).
        self.check_network(&mut cfg).await?;
        self.pull_for(&cfg.image, cfg.pull).await?;
        // Held until the row exists: a prune cannot remove the image in between.
        let gc_shared = self.inner.gc_lock.read().await;
        let image = self.find_image(&cfg.image).await?;
        for (i, v) in cfg.volumes.iter().enumerate() {
            // Resolved here for a clear 400; resolved again (fd-based) by the shim at each start.
            let source = match &v.volume {
                Some(name) => {
                    self.volume_source(&format!("volumes[{i}].volume"), name)
                        .await?
                }
                None => v.source.clone(),
            };
            self.inner.array.resolve_sub(
                &format!("volumes[{i}]"),
                &source,
                v.subpath.as_deref(),
                v.create,
            )?;
        }
        let engine = cfg
            .engine
            .clone()
            .unwrap_or_else(|| engines::DEFAULT.to_owned());
        let def = self.engine(&engine).await?;
        if let Some(excess) = cfg.resources.excess_over(&def.resources) {
            return Err(ManagerError::Conflict(format!(
                "resources: {excess} (engine {engine})"
            )));
        }
        let id = new_id()?;
        let name = cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("c-{}", &id[..12]));
        // Refuses what cannot run (user, command) before anything is recorded; the same plan
        // serves the first start.
        let plan = self.plan(&id, &cfg, &image, &def.resources)?;
        let cfg_json = serde_json::to_string(&cfg).map_err(|e| internal("spec json", e))?;
        let row = self
            .inner
            .store
            .insert_container(NewContainer {
                id: &id,
                name: &name,
                image_id: &image.id,
                image_ref: &cfg.image,
                spec: &cfg_json,
                engine: &engine,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("a container named {name} already exists"))
                }
                e => e.into(),
            })?;
        drop(gc_shared);
        self.emit(
            self.container_event(EventType::ContainerCreate, &row)
                .with("engine", engine),
        )
        .await;
        if !cfg.start {
            return Ok(row);
        }
        let lock = self.lock_for(&id);
        let g = lock.lock().await;
        let launched = self.launch(&row, Ok(plan)).await;
        drop(g);
        if launched.is_err() && cfg.auto_remove {
            self.auto_remove(&id).await;
            return launched;
        }
        launched.map_err(|e| match e {
            ManagerError::Start { message, source } => ManagerError::Start {
                message: format!(
                    "{message} (the container {name}, id {id}, is kept in state dead: inspect or delete it)"
                ),
                source,
            },
            e => e,
        })
    }

    /// The limits a container's own cgroup gets: its own, and on cgroup v1 its engine's I/O limits
    /// where it has none (v1 block-I/O throttling is flat).
    pub(super) fn container_limits(&self, own: &Resources, engine: &Resources) -> Resources {
        if self.inner.cgroups.is_v2() {
            return own.clone();
        }
        own.merged(&own.io_limits_within(engine))
    }

    /// The runtime spec and the shim's instructions for a container, derived from its request and
    /// its image. `engine_limits`: the limits of the engine it runs in (on cgroup v1 the
    /// container's cgroup carries the engine's I/O throttles too, see
    /// [`Resources::io_limits_within`]).
    fn plan(
        &self,
        id: &str,
        cfg: &ContainerConfig,
        image: &ImageRow,
        engine_limits: &Resources,
    ) -> Result<Plan> {
        let engine = cfg.engine.as_deref().unwrap_or(engines::DEFAULT);
        let defaults: ImageDefaults = image.config_as()?;
        let layers: Vec<inarray_images::Layer> = image.layers_as()?;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let lowers = self.inner.images.layer_dirs(&diff_ids)?;
        let user = cfg
            .user
            .clone()
            .or_else(|| defaults.user.clone())
            .unwrap_or_default();
        let identity = crate::user::resolve(&user, &lowers).map_err(|reason| InvalidField {
            field: "user".into(),
            reason,
        })?;
        let spec = spec::build(
            cfg,
            &defaults,
            &SpecContext {
                hostname: cfg.hostname.as_deref().unwrap_or(&id[..12]),
                cgroups_path: &self.inner.opts.cgroups.container(engine, id),
                identity,
                resources: self
                    .container_limits(&cfg.resources, engine_limits)
                    .to_oci(self.inner.cgroups.device(), self.inner.cgroups.is_v2()),
                netns: crate::network::on_bridge(cfg)
                    .then(|| self.netns_path(id).to_string_lossy().into_owned()),
            },
        )
        .map_err(|e| match e {
            spec::SpecError::NoCommand(reason) => ManagerError::Invalid(InvalidField {
                field: "command".into(),
                reason,
            }),
            e => internal("spec", e),
        })?;
        let shim = ShimConfig {
            id: id.to_owned(),
            array_root: self.inner.opts.array_dir.clone(),
            protected: self.inner.opts.protected.clone(),
            volumes: cfg
                .volumes
                .iter()
                .map(|v| match &v.volume {
                    // A named volume is its directory beneath the array root.
                    Some(name) => crate::volumes::Volume {
                        source: super::volumes::volume_path(name),
                        volume: None,
                        ..v.clone()
                    },
                    None => v.clone(),
                })
                .collect(),
            lowers,
            runtime_root: self.inner.runtime_root.clone(),
            cgroup: self.inner.opts.cgroups.container(engine, id),
            stdio: StdioConfig {
                tty: cfg.tty,
                stdin: cfg.open_stdin,
                hold: false,
            },
            max_execs: 0,
            log: cfg.log.unwrap_or(self.inner.opts.container_log),
            files: if crate::network::on_bridge(cfg) {
                self.etc_files(id)
            } else {
                Vec::new()
            },
        };
        Ok(Plan { spec, shim })
    }

    /// The image a recorded container was created from.
    pub(super) async fn image_of(&self, row: &ContainerRow) -> Result<ImageRow> {
        self.inner
            .store
            .image_by_id(&row.image_id)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "image",
                key: row.image_id.clone(),
            })
    }

    /// The plan of a recorded container: its stored request, its image and its engine now.
    async fn plan_row(&self, row: &ContainerRow) -> Result<Plan> {
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let image = self.image_of(row).await?;
        let engine = self.engine(&row.engine).await?;
        self.plan(&row.id, &cfg, &image, &engine.resources)
    }

    /// Writes the bundle and the shim's instructions for a start. Not fsynced: they are derived
    /// state, written again at every start, and read by a shim started right after.
    fn write_plan(&self, id: &str, plan: &Plan) -> Result<ContainerPaths> {
        let paths = self.paths(id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(paths.bundle())?;
            let spec_json = serde_json::to_vec_pretty(&plan.spec).map_err(std::io::Error::other)?;
            inarray_sys::write_replace(&paths.bundle().join("config.json"), &spec_json)?;
            let shim_json = serde_json::to_vec_pretty(&plan.shim).map_err(std::io::Error::other)?;
            inarray_sys::write_replace(&paths.shim_config(), &shim_json)
        };
        write().map_err(|e| internal(&format!("cannot prepare {}", paths.dir.display()), e))?;
        Ok(paths)
    }

    /// Finds a container by id, name or unique id prefix.
    pub async fn get(&self, key: &str) -> Result<ContainerRow> {
        self.inner
            .store
            .find_container(key)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "container",
                key: key.to_owned(),
            })
    }

    /// The container named exactly `name` (not an id or a prefix), if there is one.
    pub async fn find_by_name(&self, name: &str) -> Result<Option<ContainerRow>> {
        Ok(self
            .inner
            .store
            .find_container(name)
            .await?
            .filter(|r| r.name == name))
    }

    pub async fn list(&self, all: bool) -> Result<Vec<ContainerRow>> {
        Ok(self.inner.store.list_containers(all).await?)
    }

    /// Starts a created or exited container. Allowed in: created, exited, dead.
    pub async fn start(&self, key: &str) -> Result<ContainerRow> {
        self.start_with(key, false).await
    }

    /// Starts a container; with `hold`, its shim relays its stdio and holds the output until
    /// the first client attaches (a start-and-attach misses nothing).
    pub async fn start_with(&self, key: &str, hold: bool) -> Result<ContainerRow> {
        let id = self.get(key).await?.id;
        let lock = self.lock_for(&id);
        let g = lock.lock().await;
        let row = self.get(&id).await?;
        if matches!(
            row.state,
            ContainerState::Running | ContainerState::Restarting
        ) {
            return Err(ManagerError::Conflict(format!(
                "container {} is already {}",
                row.name, row.state
            )));
        }
        if let Ok(cfg) = serde_json::from_str::<ContainerConfig>(&row.spec) {
            self.check_ports_free(&row.id, &cfg)?;
        }
        if row.stop_requested {
            self.inner.store.set_stop_requested(&row.id, false).await?;
        }
        let mut plan = self.plan_row(&row).await;
        if let Ok(p) = plan.as_mut() {
            p.shim.stdio.hold = hold;
        }
        let launched = self.launch(&row, plan).await;
        drop(g);
        let auto_remove =
            serde_json::from_str::<ContainerConfig>(&row.spec).is_ok_and(|c| c.auto_remove);
        if launched.is_err() && auto_remove {
            // As Docker does: a container that is to be removed when it stops is removed when
            // it cannot start.
            self.auto_remove(&id).await;
        }
        launched
    }

    /// Plans and launches a start of `row`. The caller holds the container's lock.
    pub(super) async fn spawn(&self, row: &ContainerRow) -> Result<ContainerRow> {
        let plan = self.plan_row(row).await;
        self.launch(row, plan).await
    }

    /// Writes `plan`, hands it to the launcher and records the outcome: running, or dead with
    /// the reason (a plan that failed is recorded the same way). The caller holds the lock.
    async fn launch(&self, row: &ContainerRow, plan: Result<Plan>) -> Result<ContainerRow> {
        let id = row.id.as_str();
        // A port taken meanwhile (a race with another start) stays a 409.
        let mut conflict = None;
        let plan = match plan {
            Ok(p) => match serde_json::from_str::<ContainerConfig>(&row.spec) {
                Ok(cfg) => match self.net_up(row, &cfg).await {
                    Ok(()) => Ok(p),
                    Err(ManagerError::Conflict(m)) => {
                        conflict = Some(m.clone());
                        Err(ManagerError::Conflict(m))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(internal("stored spec", e)),
            },
            Err(e) => Err(e),
        };
        let paths = plan.and_then(|p| self.write_plan(id, &p));
        let launched = match paths {
            Ok(paths) => self
                .inner
                .launcher
                .spawn(&paths)
                .await
                .map_err(|e| (e.to_string(), Some(e.into()))),
            Err(e) => Err((e.to_string(), Some(e.into()))),
        };
        match launched {
            Ok(l) => {
                let rec = l.record;
                self.inner
                    .store
                    .mark_running(
                        id,
                        rec.pid.into(),
                        rec.shim_pid.into(),
                        rec.shim_start as i64,
                    )
                    .await?;
                // Before the monitor exists: its `die` comes after this `start`.
                let durable = self.emit(
                    self.container_event(EventType::ContainerStart, row)
                        .with("pid", rec.pid),
                );
                self.changed(id);
                self.monitor(id.to_owned(), rec, Some(l.exited), Instant::now());
                durable.await;
                self.get(id).await
            }
            Err((message, source)) => {
                let _ = self.cleanup_cgroups(id);
                self.net_down(id).await;
                self.inner
                    .store
                    .mark_exited(
                        id,
                        &ExitUpdate {
                            state: ContainerState::Dead,
                            exit_code: None,
                            error: Some(message.clone()),
                            finished_at: Utc::now(),
                            oom_killed: false,
                        },
                    )
                    .await?;
                let durable = self.emit(
                    self.container_event(EventType::ContainerDie, row)
                        .with("error", format!("cannot start: {message}")),
                );
                self.changed(id);
                durable.await;
                match conflict {
                    Some(m) => Err(ManagerError::Conflict(m)),
                    None => Err(ManagerError::Start { message, source }),
                }
            }
        }
    }

    /// Sends SIGTERM, then SIGKILL after `timeout`; no restart policy applies afterwards.
    /// Allowed in any state: stopping a stopped container is a no-op.
    pub async fn stop(&self, key: &str, timeout: Duration) -> Result<ContainerRow> {
        let id = self.get(key).await?.id;
        self.inner.store.set_stop_requested(&id, true).await?;
        // A restart that was under way when the request arrived may still bring the container
        // up once: stop that run too (the request now prevents any further restart).
        for _ in 0..3 {
            let row = self.settle_stopped(&id).await?;
            if row.state != ContainerState::Running {
                return Ok(row);
            }
            let mut rx = self.subscribe();
            let rec = shim_record(&row);
            if let Some(rec) = rec {
                let _ = self.inner.launcher.signal(rec, Signal::SIGTERM);
            }
            if !self.wait_until_not_running(&id, &mut rx, timeout).await? {
                if let Some(rec) = rec {
                    let _ = self.inner.launcher.signal(rec, Signal::SIGKILL);
                }
                self.wait_until_not_running(&id, &mut rx, Duration::from_secs(30))
                    .await?;
            }
        }
        self.settle_stopped(&id).await
    }

    /// After a stop request: a container the restart policy had already scheduled to start again
    /// (its exit was recorded before the request) stays exited instead.
    async fn settle_stopped(&self, id: &str) -> Result<ContainerRow> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.get(id).await?;
        if row.state == ContainerState::Restarting {
            self.inner
                .store
                .set_state(id, ContainerState::Exited)
                .await?;
            self.changed(id);
            return self.get(id).await;
        }
        Ok(row)
    }

    /// Sends a signal to the container's init. Allowed in: running.
    pub async fn kill(&self, key: &str, sig: Signal) -> Result<ContainerRow> {
        let row = self.get(key).await?;
        let rec = match (row.state, shim_record(&row)) {
            (ContainerState::Running, Some(rec)) => rec,
            _ => {
                return Err(ManagerError::Conflict(format!(
                    "container {} is not running",
                    row.name
                )))
            }
        };
        self.inner.launcher.signal(rec, sig).map_err(|e| {
            ManagerError::Conflict(format!("cannot signal container {}: {e}", row.name))
        })?;
        self.get(&row.id).await
    }

    /// Stops (if running) and starts again.
    pub async fn restart(&self, key: &str, timeout: Duration) -> Result<ContainerRow> {
        self.restart_because(key, timeout, "api").await
    }

    /// [`Manager::restart`], its `container.restart` event saying why (`api`, `unhealthy`).
    pub(super) async fn restart_because(
        &self,
        key: &str,
        timeout: Duration,
        reason: &str,
    ) -> Result<ContainerRow> {
        let row = self.stop(key, timeout).await?;
        self.emit(
            self.container_event(EventType::ContainerRestart, &row)
                .with("reason", reason),
        )
        .await;
        self.start(&row.id).await
    }

    /// Blocks until the container is exited or dead (not restarting); returns the row.
    pub async fn wait(&self, key: &str) -> Result<ContainerRow> {
        let mut rx = self.subscribe();
        let id = self.get(key).await?.id;
        loop {
            let row = self.get(&id).await?;
            if matches!(row.state, ContainerState::Exited | ContainerState::Dead) {
                return Ok(row);
            }
            if row.state == ContainerState::Created {
                return Err(ManagerError::Conflict(format!(
                    "container {} has not been started",
                    row.name
                )));
            }
            recv_for(&mut rx, &id, Duration::from_secs(5)).await;
        }
    }

    /// Returns true once not running (exited, dead or restarting), false on timeout.
    async fn wait_until_not_running(
        &self,
        id: &str,
        rx: &mut broadcast::Receiver<String>,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.get(id).await?;
            if row.state != ContainerState::Running {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            recv_for(rx, id, left.min(Duration::from_millis(500))).await;
        }
    }

    /// Removes a container: its row, private upper layer, logs and runtime leftovers.
    /// Allowed in: created, exited, dead; running/restarting only with `force` (killed first).
    pub async fn delete(&self, key: &str, force: bool) -> Result<()> {
        let row = self.get(key).await?;
        if matches!(
            row.state,
            ContainerState::Running | ContainerState::Restarting
        ) {
            if !force {
                return Err(ManagerError::Conflict(format!(
                    "container {} is {}; stop it first or delete with force=true",
                    row.name, row.state
                )));
            }
            self.stop(&row.id, Duration::ZERO).await?;
        }
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let t0 = Instant::now();
        self.net_down(&row.id).await;
        self.remove_files(&row.id)?;
        let t1 = Instant::now();
        self.inner.store.delete_container(&row.id).await?;
        self.emit(self.container_event(EventType::ContainerDestroy, &row))
            .await;
        tracing::debug!(
            container = %row.id,
            files_ms = (t1 - t0).as_secs_f64() * 1e3,
            sql_ms = t1.elapsed().as_secs_f64() * 1e3,
            "deleted"
        );
        self.inner.locks.lock().expect("locks").remove(&row.id);
        self.changed(&row.id);
        Ok(())
    }

    pub(super) fn remove_files(&self, id: &str) -> Result<()> {
        self.cleanup_cgroups(id)
            .map_err(|e| internal("cgroup cleanup", e))?;
        let rt = self.inner.runtime_root.join(id);
        if rt.exists() {
            std::fs::remove_dir_all(&rt)
                .map_err(|e| internal(&format!("cannot remove {}", rt.display()), e))?;
        }
        // Moved aside at once (one rename), removed in the background: a delete does not wait
        // for the disk to unlink (and discard) a container's upper layer file by file.
        let dir = self.paths(id).dir;
        let trash = self.inner.opts.state_dir.join("trash");
        let aside = trash.join(format!("{id}-{}", new_id()?));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {
                in_background(move || remove_logged(&aside));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(&format!("cannot remove {}", dir.display()), e)),
        }
    }
}
