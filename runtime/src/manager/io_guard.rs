//! The manager's side of the I/O guard ([`crate::ioguard`]): the list of running containers it
//! holds, refreshed as containers start and end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inarray_store::ContainerState;

use super::{Manager, Result};
use crate::config::ContainerConfig;
use crate::engines;
use crate::resources::Resources;

impl Manager {
    pub fn io_guard_status(&self) -> crate::ioguard::GuardStatus {
        self.inner.io_guard.lock().expect("lock").clone()
    }

    /// Runs the I/O guard ([`crate::ioguard`]) until the daemon stops: its sampling loop on a
    /// thread of its own (never in the way of the API's runtime), and here, the list of running
    /// containers it works on, refreshed when a container starts or ends and every 2 s. Returns at
    /// once when it is disabled or the array is on no block device.
    pub async fn run_io_guard(&self, cfg: crate::ioguard::GuardConfig) {
        use crate::ioguard as g;
        let Some(dev) = self.inner.cgroups.device() else {
            tracing::warn!("the I/O guard is off: the array is on no block device");
            return;
        };
        if !cfg.enabled {
            tracing::info!("the I/O guard is off (io_guard.enabled = false)");
            return;
        }
        let v2 = self.inner.cgroups.is_v2();
        let root = self.inner.cgroups.mount_root();
        let layout = &self.inner.opts.cgroups;
        let dirs = g::Dirs {
            storage: g::io_dir(root, &layout.engine(engines::STORAGE), v2),
            containers: g::io_dir(root, layout.root(), v2),
            root: root.to_path_buf(),
        };
        let targets = Arc::new(Mutex::new(g::Targets::default()));
        let mut changes = self.subscribe();
        let mut started = false;
        loop {
            match self.guard_targets().await {
                Ok((list, share)) => {
                    let mut t = targets.lock().expect("lock");
                    if t.list != list || t.share != share {
                        t.list = list;
                        t.share = share;
                        t.generation += 1;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the I/O guard cannot list the containers"),
            }
            if !started {
                started = true;
                let (targets, status) = (targets.clone(), self.inner.io_guard.clone());
                let cfg = cfg.clone();
                let dirs = dirs.clone();
                let spawned = std::thread::Builder::new()
                    .name("io-guard".into())
                    .spawn(move || g::run(cfg, dev, v2, dirs, targets, status));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "the I/O guard's thread did not start");
                    return;
                }
            }
            // Until a container starts or ends, or 2 s pass; a burst of starts is one refresh
            // (at most five a second, each a store query and every running container's spec).
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), changes.recv()).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            while changes.try_recv().is_ok() {}
        }
    }

    /// The running containers (id, cgroup path, the I/O limits they have without the guard) and
    /// their share of the disk against `storage` (by the I/O weights of the engines they run in).
    async fn guard_targets(&self) -> Result<(Vec<crate::ioguard::Target>, f64)> {
        let engines: HashMap<String, Resources> = self
            .engines()
            .await?
            .into_iter()
            .map(|e| (e.name, e.resources))
            .collect();
        let mut out = Vec::new();
        let mut used: Vec<&str> = Vec::new();
        let rows = self.inner.store.list_containers(true).await?;
        for row in &rows {
            if row.state != ContainerState::Running {
                continue;
            }
            let Ok(cfg) = serde_json::from_str::<ContainerConfig>(&row.spec) else {
                continue;
            };
            let engine = engines.get(&row.engine).cloned().unwrap_or_default();
            if !used.contains(&row.engine.as_str()) {
                used.push(&row.engine);
            }
            out.push(crate::ioguard::Target {
                id: row.id.clone(),
                cgroup: self.inner.opts.cgroups.container(&row.engine, &row.id),
                limits: cfg.resources.io_limits_within(&engine),
            });
        }
        let storage = engines.get(engines::STORAGE).cloned().unwrap_or_default();
        let used: Vec<&Resources> = used.iter().filter_map(|n| engines.get(*n)).collect();
        Ok((out, crate::ioguard::share(&storage, &used)))
    }
}
