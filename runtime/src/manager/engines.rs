//! Engines (cgroup subtrees with caps) and live limits of containers; the cgroup files are
//! written only through the [`CgroupDriver`](crate::engines::CgroupDriver) seam.

use inarray_store::{ContainerRow, ContainerState, StoreError};

use super::{internal, Manager, ManagerError, Result};
use crate::config::{ContainerConfig, InvalidField};
use crate::engines::{self, EngineDef, Usage};
use crate::resources::{Limit, Resources, ResourcesUpdate};

impl Manager {
    /// Where this daemon's engines and containers live in the cgroup hierarchies.
    pub fn cgroup_layout(&self) -> &engines::CgroupLayout {
        &self.inner.opts.cgroups
    }

    /// An engine's definition; 404 when unknown.
    pub async fn engine(&self, name: &str) -> Result<EngineDef> {
        let row = self
            .inner
            .store
            .engine(name)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "engine",
                key: name.to_owned(),
            })?;
        let resources: Resources =
            serde_json::from_str(&row.resources).map_err(|e| internal("stored engine", e))?;
        Ok(EngineDef {
            name: row.name,
            resources,
        })
    }

    pub async fn engines(&self) -> Result<Vec<EngineDef>> {
        let mut out = Vec::new();
        for row in self.inner.store.list_engines().await? {
            let resources: Resources =
                serde_json::from_str(&row.resources).map_err(|e| internal("stored engine", e))?;
            out.push(EngineDef {
                name: row.name,
                resources,
            });
        }
        Ok(out)
    }

    /// The cgroup layout of the host (v2, hybrid or v1), for the operator's view.
    pub fn cgroup_mode(&self) -> crate::cgroups::CgroupMode {
        crate::cgroups::CgroupMode::detect(self.inner.cgroups.mount_root())
    }

    /// Why engines' `io_weight` is not enforced between container engines on this node (the
    /// array's disk and the kernel's configuration), or None when it is.
    pub fn io_weight_ineffective(&self) -> Option<String> {
        engines::io_weight_ineffective(
            self.inner.cgroups.device(),
            self.inner.cgroups.is_v2(),
            self.inner.cgroups.mount_root(),
        )
    }

    /// Whether containers' cgroups are on the unified (v2) hierarchy.
    /// The array's block device (major, minor), which per-device I/O limits and counters name.
    pub fn array_device(&self) -> Option<(u64, u64)> {
        self.inner.cgroups.device()
    }

    pub fn cgroups_v2(&self) -> bool {
        self.inner.cgroups.is_v2()
    }

    /// Checks engines from the config file before anything is applied (at start, and on SIGHUP
    /// reload): valid names and limits, and with the engines already recorded, memory limits
    /// that fit in what the node allots to containers. Errors name the engine.
    pub async fn check_configured_engines(&self, configured: &[EngineDef]) -> Result<()> {
        for e in configured {
            engines::validate_name(&e.name).map_err(|m| invalid_config(format!("engines: {m}")))?;
            engines::validate_engine(&e.name, &e.resources, &format!("engines.{}", e.name))
                .map_err(invalid_config)?;
        }
        let mut all = self.engines().await?;
        for e in engines::builtin().iter().chain(configured) {
            match all.iter_mut().find(|a| a.name == e.name) {
                Some(a) if configured.iter().any(|c| c.name == a.name) => *a = e.clone(),
                Some(_) => {}
                None => all.push(e.clone()),
            }
        }
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(|m| invalid_config(format!("engines: {m}")))
    }

    /// At start: records the built-in engines and those of the config file (the config's limits
    /// win for the engines it names), applies every engine's limits to its cgroup, and moves the
    /// daemon itself into `storage`.
    pub async fn init_engines(&self, configured: &[EngineDef]) -> Result<()> {
        self.check_configured_engines(configured).await?;
        for e in &engines::builtin() {
            let json = serde_json::to_string(&e.resources).map_err(|e| internal("engine", e))?;
            self.inner.store.ensure_engine(&e.name, &json).await?;
        }
        for e in configured {
            let json = serde_json::to_string(&e.resources).map_err(|e| internal("engine", e))?;
            if !self.inner.store.ensure_engine(&e.name, &json).await? {
                self.inner.store.update_engine(&e.name, &json).await?;
            }
        }
        let all = self.engines().await?;
        for e in &all {
            self.inner
                .cgroups
                .apply(&self.inner.opts.cgroups.engine(&e.name), &e.resources)
                .map_err(|m| internal("engine cgroup", m))?;
            // Containers that ran on across the restart get what the config says now.
            if e.resources.has_io_limits() {
                self.push_io_limits(e, &[]).await?;
            }
        }
        self.inner
            .cgroups
            .add_process(
                &self.inner.opts.cgroups.engine(engines::STORAGE),
                std::process::id() as i32,
            )
            .map_err(|m| internal("moving the daemon into the storage engine", m))?;
        // Up to 0.1, `storage` was `/<root>/storage`, inside the containers' root; the daemon has
        // just left it: remove it (the kernel refuses while anything is still in it).
        self.inner
            .cgroups
            .remove_if_empty(&format!("/{}/storage", self.inner.opts.cgroups.root()));
        Ok(())
    }

    /// Adds an engine. 409 when the name is taken or the memory limits would over-commit.
    pub async fn create_engine(&self, def: EngineDef) -> Result<EngineDef> {
        engines::validate_name(&def.name).map_err(|m| InvalidField {
            field: "name".into(),
            reason: m.trim_start_matches("name: ").into(),
        })?;
        validate_engine_resources(&def.name, &def.resources)?;
        let mut all = self.engines().await?;
        if all.iter().any(|e| e.name == def.name) {
            return Err(ManagerError::Conflict(format!(
                "engine {} already exists",
                def.name
            )));
        }
        all.push(def.clone());
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(ManagerError::Conflict)?;
        self.inner
            .cgroups
            .apply(&self.inner.opts.cgroups.engine(&def.name), &def.resources)
            .map_err(|m| internal("engine cgroup", m))?;
        let json = serde_json::to_string(&def.resources).map_err(|e| internal("engine", e))?;
        self.inner
            .store
            .insert_engine(&def.name, &json)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("engine {} already exists", def.name))
                }
                e => e.into(),
            })?;
        Ok(def)
    }

    /// Changes an engine's limits live (values in `patch` replace the current ones, `null`s
    /// remove them). 409 when the memory limits would over-commit, or a container in it asks
    /// for more than the new limits.
    pub async fn update_engine(&self, name: &str, patch: &ResourcesUpdate) -> Result<EngineDef> {
        validate_resources(&patch.values())?;
        let current = self.engine(name).await?;
        let updated = EngineDef {
            name: name.to_owned(),
            resources: patch.applied_to(&current.resources),
        };
        validate_engine_resources(name, &updated.resources)?;
        let mut all: Vec<EngineDef> = self
            .engines()
            .await?
            .into_iter()
            .filter(|e| e.name != name)
            .collect();
        all.push(updated.clone());
        engines::check_memory_allotment(&all, self.inner.opts.container_memory)
            .map_err(ManagerError::Conflict)?;
        for row in self.inner.store.list_containers(true).await? {
            if row.engine != name {
                continue;
            }
            let cfg: ContainerConfig =
                serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
            if let Some(excess) = cfg.resources.excess_over(&updated.resources) {
                return Err(ManagerError::Conflict(format!(
                    "container {} in engine {name} asks for more: {excess}",
                    row.name
                )));
            }
        }
        let path = self.inner.opts.cgroups.engine(name);
        let refused = |m| ManagerError::Conflict(format!("the kernel refused the new limits: {m}"));
        self.inner
            .cgroups
            .apply(&path, &updated.resources)
            .map_err(refused)?;
        let cleared = patch.cleared();
        if !cleared.is_empty() {
            self.inner.cgroups.clear(&path, &cleared).map_err(refused)?;
        }
        let json = serde_json::to_string(&updated.resources).map_err(|e| internal("engine", e))?;
        self.inner.store.update_engine(name, &json).await?;
        let io_cleared: Vec<Limit> = cleared.into_iter().filter(|l| l.is_io()).collect();
        if patch.values().has_io_limits() || !io_cleared.is_empty() {
            self.push_io_limits(&updated, &io_cleared).await?;
        }
        Ok(updated)
    }

    /// cgroup v1 throttles each cgroup on its own: the running containers' cgroups carry their
    /// engine's I/O limits (where they have none of their own) and get the engine's current ones
    /// here — the `cleared` ones removed where the container has none of its own. Nothing to do
    /// on v2, where the engine's io.max binds its containers.
    async fn push_io_limits(&self, engine: &EngineDef, cleared: &[Limit]) -> Result<()> {
        if self.inner.cgroups.is_v2() {
            return Ok(());
        }
        for row in self.inner.store.list_containers(true).await? {
            if row.engine != engine.name || row.state != ContainerState::Running {
                continue;
            }
            let cfg: ContainerConfig =
                serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
            let io = cfg.resources.io_limits_within(&engine.resources);
            let path = self.inner.opts.cgroups.container(&engine.name, &row.id);
            // Never made here (apply creates a missing cgroup): one that is gone has exited.
            if !self.inner.cgroups.exists(&path) {
                continue;
            }
            let gone: Vec<Limit> = cleared.iter().copied().filter(|l| !io.has(*l)).collect();
            let done = self.inner.cgroups.apply(&path, &io).and_then(|()| {
                if gone.is_empty() {
                    Ok(())
                } else {
                    self.inner.cgroups.clear(&path, &gone)
                }
            });
            if let Err(m) = done {
                // It may have exited meanwhile (its cgroup gone); its next start applies them.
                tracing::warn!(container = %row.id, engine = %engine.name, "the engine's I/O limits were not applied to the container: {m}");
            }
        }
        Ok(())
    }

    /// The I/O guard's state now.
    /// Removes an engine: not a built-in one, nor one with containers (409).
    pub async fn delete_engine(&self, name: &str) -> Result<()> {
        self.engine(name).await?;
        if engines::is_builtin(name) {
            return Err(ManagerError::Conflict(format!("engine {name} is built in")));
        }
        let users = self.inner.store.engine_users(name).await?;
        if !users.is_empty() {
            return Err(ManagerError::Conflict(format!(
                "engine {name} has container(s) {}; remove them first",
                users.join(", ")
            )));
        }
        self.inner
            .cgroups
            .remove(&self.inner.opts.cgroups.engine(name))
            .map_err(|e| internal("engine cgroup", e))?;
        self.inner.store.delete_engine(name).await?;
        Ok(())
    }

    pub async fn engine_usage(&self, name: &str) -> Result<Usage> {
        self.engine(name).await?;
        self.inner
            .cgroups
            .usage(&self.inner.opts.cgroups.engine(name))
            .map_err(|m| internal("engine stats", m))
    }

    /// Usage of a running container. 409 when it is not running (it has no cgroup then).
    pub async fn container_usage(&self, key: &str) -> Result<Usage> {
        let row = self.get(key).await?;
        if row.state != ContainerState::Running {
            return Err(ManagerError::Conflict(format!(
                "container {} is not running",
                row.name
            )));
        }
        let mut usage = self
            .inner
            .cgroups
            .usage(&self.inner.opts.cgroups.container(&row.engine, &row.id))
            .map_err(|m| internal("container stats", m))?;
        let on_bridge = serde_json::from_str::<crate::config::ContainerConfig>(&row.spec)
            .is_ok_and(|c| crate::network::on_bridge(&c));
        if let (true, Some(pid)) = (on_bridge, row.pid) {
            usage.network = crate::network::net_usage(pid);
        }
        Ok(usage)
    }

    /// The processes of a running container (host pids), read from `/proc`. 409 when it is not
    /// running.
    pub async fn processes(&self, key: &str) -> Result<Vec<crate::procs::Process>> {
        let row = self.get(key).await?;
        if row.state != ContainerState::Running {
            return Err(ManagerError::Conflict(format!(
                "container {} is not running",
                row.name
            )));
        }
        let pids = self
            .inner
            .cgroups
            .pids(&self.inner.opts.cgroups.container(&row.engine, &row.id))
            .map_err(|m| internal("container processes", m))?;
        Ok(crate::procs::list(std::path::Path::new("/proc"), &pids))
    }

    /// Changes a container's limits (values in `patch` replace the current ones, `null`s remove
    /// them), live when it runs, and for every later start. Allowed in any state; 409 beyond its
    /// engine.
    pub async fn update_resources(
        &self,
        key: &str,
        patch: &ResourcesUpdate,
    ) -> Result<ContainerRow> {
        validate_resources(&patch.values())?;
        let row = self.get(key).await?;
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let row = self.get(&row.id).await?;
        let mut cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let merged = patch.applied_to(&cfg.resources);
        validate_resources(&merged)?;
        let engine = self.engine(&row.engine).await?;
        if let Some(excess) = merged.excess_over(&engine.resources) {
            return Err(ManagerError::Conflict(format!(
                "resources: {excess} (engine {})",
                row.engine
            )));
        }
        if row.state == ContainerState::Running {
            // v2: what changed; v1: everything, with the engine's I/O limits where the
            // container has none of its own.
            let live = if self.inner.cgroups.is_v2() {
                patch.values()
            } else {
                self.container_limits(&merged, &engine.resources)
            };
            // On v1 a cleared I/O limit may fall back to its engine's (then in `live`).
            let cleared: Vec<Limit> = patch
                .cleared()
                .into_iter()
                .filter(|l| !live.has(*l))
                .collect();
            let path = self.inner.opts.cgroups.container(&row.engine, &row.id);
            let refused =
                |m| ManagerError::Conflict(format!("the kernel refused the new limits: {m}"));
            self.inner.cgroups.apply(&path, &live).map_err(refused)?;
            if !cleared.is_empty() {
                self.inner.cgroups.clear(&path, &cleared).map_err(refused)?;
            }
        }
        cfg.resources = merged;
        let json = serde_json::to_string(&cfg).map_err(|e| internal("spec json", e))?;
        self.inner.store.set_spec(&row.id, &json).await?;
        self.get(&row.id).await
    }
}

fn validate_resources(r: &Resources) -> Result<()> {
    invalid_resources(r.validate("resources"))
}

fn validate_engine_resources(name: &str, r: &Resources) -> Result<()> {
    invalid_resources(engines::validate_engine(name, r, "resources"))
}

/// "resources.FIELD: reason" → 400 naming the field.
fn invalid_resources(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(|m| {
        let (field, reason) = m.split_once(": ").unwrap_or(("resources", &m));
        ManagerError::Invalid(InvalidField {
            field: field.into(),
            reason: reason.into(),
        })
    })
}

/// A config file's engine that cannot be applied: the message names the key.
fn invalid_config(message: String) -> ManagerError {
    let (field, reason) = message
        .split_once(": ")
        .map(|(f, r)| (f.to_owned(), r.to_owned()))
        .unwrap_or_else(|| ("engines".to_owned(), message.clone()));
    ManagerError::Invalid(InvalidField { field, reason })
}
