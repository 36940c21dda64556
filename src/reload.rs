//! SIGHUP: re-reads the config file and applies what can change while serving.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::{settings, ServeOpts, Settings};

/// SIGHUP: re-reads the config file and applies what can change while serving (log filter,
/// engines, exports, tokens). A file that does not parse or validate changes nothing.
pub(crate) struct Reloader {
    pub(crate) opts: ServeOpts,
    pub(crate) path: PathBuf,
    pub(crate) manager: inarray_runtime::Manager,
    pub(crate) exports: inarray_nfs::Exports,
    pub(crate) access: inarray_api::access::Access,
    pub(crate) log: crate::logging::FilterHandle,
    pub(crate) current: Settings,
}

impl Reloader {
    pub(crate) async fn run(mut self) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot handle SIGHUP: reloading is off");
            return;
        };
        while hup.recv().await.is_some() {
            match self.reload().await {
                Ok(()) => tracing::info!(config = %self.path.display(), "configuration reloaded"),
                Err(e) => tracing::error!(
                    config = %self.path.display(),
                    error = %format!("{e:#}"),
                    "configuration not reloaded: nothing was changed"
                ),
            }
        }
    }

    async fn reload(&mut self) -> Result<()> {
        // Everything is parsed and checked before anything is applied.
        let new = settings(self.opts.clone())?;
        let filter = match std::env::var("INARRAY_LOG") {
            Ok(_) => None,
            Err(_) => Some(
                tracing_subscriber::EnvFilter::try_new(&new.log)
                    .with_context(|| format!("log {:?}", new.log))?,
            ),
        };
        self.manager
            .check_configured_engines(&new.engines)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for x in &new.exports {
            x.clone()
                .validate()
                .map_err(|e| anyhow::anyhow!("exports.{}: {e}", x.name))?;
        }
        // Apply.
        if let Some(f) = filter {
            if new.log != self.current.log {
                self.log.reload(f).context("log filter")?;
                tracing::info!(from = %self.current.log, to = %new.log, "log filter changed");
            }
        }
        if new.engines != self.current.engines {
            self.manager
                .init_engines(&new.engines)
                .await
                .context("engines")?;
            let names: Vec<&str> = new.engines.iter().map(|e| e.name.as_str()).collect();
            tracing::info!(engines = ?names, "engines applied");
        }
        if new.exports != self.current.exports {
            self.exports
                .apply_config(&new.exports)
                .await
                .context("exports")?;
            let names: Vec<&str> = new.exports.iter().map(|e| e.name.as_str()).collect();
            tracing::info!(exports = ?names, "exports applied");
        }
        let (added, removed) = self
            .access
            .reload_tokens()
            .await
            .map_err(|e| anyhow::anyhow!("tokens: {}", e.message))?;
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, ?removed, "tokens re-read");
        }
        if new.registries != self.current.registries
            || new.registry_credentials != self.current.registry_credentials
        {
            self.manager
                .configure_registries(new.registries.clone(), new.registry_credentials.clone())
                .await
                .context("registries")?;
            tracing::info!(registries = ?new.registries.keys().collect::<Vec<_>>(), "registries applied");
        }
        let c = &self.current;
        for (key, changed) in [
            ("array", new.array != c.array),
            ("state_dir", new.state_dir != c.state_dir),
            ("listen", new.listen != c.listen),
            ("socket_mode", new.socket_mode != c.socket_mode),
            ("socket_group", new.socket_group != c.socket_group),
            (
                "container_memory",
                new.container_memory != c.container_memory,
            ),
            ("nfs_listen", new.nfs_listen != c.nfs_listen),
            ("log_format", new.log_format != c.log_format),
            ("api", new.api != c.api),
            ("cgroup_root", new.cgroups != c.cgroups),
            ("io_scheduler", new.io_scheduler != c.io_scheduler),
            ("cgroup_favordynmods", new.favor_dynmods != c.favor_dynmods),
            (
                "image_prune_interval_seconds",
                new.image_prune_interval != c.image_prune_interval,
            ),
            ("io_guard", new.io_guard != c.io_guard),
            ("shim", new.shim != c.shim),
            ("docker_listen", new.docker_listen != c.docker_listen),
            ("container_log_*", new.container_log != c.container_log),
            (
                "restart_concurrency",
                new.restart_concurrency != c.restart_concurrency,
            ),
        ] {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the config file; takes effect at the next start"
                );
            }
        }
        self.current = Settings {
            // What was not applied stays as it runs.
            array: c.array.clone(),
            state_dir: c.state_dir.clone(),
            listen: c.listen.clone(),
            socket_mode: c.socket_mode,
            socket_group: c.socket_group,
            container_memory: c.container_memory,
            nfs_listen: c.nfs_listen,
            log_format: c.log_format,
            api: c.api.clone(),
            limits: c.limits,
            cgroups: c.cgroups.clone(),
            io_scheduler: c.io_scheduler.clone(),
            favor_dynmods: c.favor_dynmods,
            image_prune_interval: c.image_prune_interval,
            events: c.events.clone(),
            nats: c.nats.clone(),
            io_guard: c.io_guard.clone(),
            shim: c.shim.clone(),
            docker_listen: c.docker_listen.clone(),
            container_log: c.container_log,
            restart_concurrency: c.restart_concurrency,
            boot_id: c.boot_id.clone(),
            networks: c.networks.clone(),
            registries: new.registries,
            registry_credentials: new.registry_credentials,
            log: new.log,
            engines: new.engines,
            exports: new.exports,
        };
        Ok(())
    }
}
