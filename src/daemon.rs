//! `inarray serve`: start-up checks and the wiring of the crates (configuration in `config.rs`,
//! SIGHUP reload in `reload.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use inarray_api::serve::{bind, serve_each, Listen};

use crate::config::{settings, ServeOpts, Settings};
use crate::reload::Reloader;

/// The shim executable: the configured one, or `inarray-shim` in the directory of the running
/// executable (`/proc/self/exe`), where it is installed beside `inarray`.
fn shim_exe(configured: Option<&Path>) -> Result<PathBuf> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => {
            let me = std::env::current_exe().context("cannot read /proc/self/exe")?;
            me.parent()
                .unwrap_or(Path::new("/"))
                .join(inarray_shim::EXE_NAME)
        }
    };
    if !path.is_file() {
        bail!(
            "shim executable {} not found: install {} beside inarray, or set `shim` in the config file (--shim)",
            path.display(),
            inarray_shim::EXE_NAME
        );
    }
    Ok(path)
}

fn check_dirs(s: &Settings) -> Result<(PathBuf, PathBuf)> {
    let array = s
        .array
        .canonicalize()
        .with_context(|| format!("array directory {}", s.array.display()))?;
    if !array.is_dir() {
        bail!("array directory {}: not a directory", array.display());
    }
    std::fs::create_dir_all(&s.state_dir)
        .with_context(|| format!("state directory {}", s.state_dir.display()))?;
    let state = s
        .state_dir
        .canonicalize()
        .with_context(|| format!("state directory {}", s.state_dir.display()))?;
    let probe = state.join(".write-probe");
    std::fs::write(&probe, b"")
        .with_context(|| format!("state directory {}: not writable", state.display()))?;
    let _ = std::fs::remove_file(probe);
    if state.starts_with(&array) {
        bail!(
            "state directory {} is inside the array {}: containers could reach it; put it elsewhere",
            state.display(),
            array.display()
        );
    }
    for l in s.listen.iter().chain(&s.docker_listen).cloned() {
        if let Listen::Unix(p) = l {
            if let Some(dir) = p.parent() {
                if dir
                    .canonicalize()
                    .map(|d| d.starts_with(&array))
                    .unwrap_or(false)
                {
                    bail!(
                        "socket {} is inside the array: containers could reach it",
                        p.display()
                    );
                }
            }
        }
    }
    Ok((array, state))
}

pub async fn run(opts: ServeOpts) -> Result<()> {
    let s = settings(opts.clone())?;
    let filter = std::env::var("INARRAY_LOG").unwrap_or_else(|_| s.log.clone());
    let log_handle = crate::logging::init(
        tracing_subscriber::EnvFilter::try_new(&filter)
            .with_context(|| format!("log filter {filter:?}"))?,
        s.log_format,
    );
    let (array, state) = check_dirs(&s)?;
    let shim = shim_exe(s.shim.as_deref())?;
    let sealed = inarray_shim::SealedExe::copy_of(&shim)
        .with_context(|| format!("cannot make a sealed copy of the shim {}", shim.display()))?;
    let store = inarray_store::Store::open(&state.join("state.db"))
        .await
        .context("state database")?;
    let images =
        inarray_images::ImageStore::open(&state.join("images"), inarray_images::Limits::default())
            .context("image store")?;
    let mut protected = vec![state.clone()];
    protected.extend(s.listen.iter().filter_map(|l| match l {
        Listen::Unix(p) => p.parent().map(Path::to_path_buf),
        Listen::Tcp(_) => None,
    }));
    protected.extend(s.docker_listen.iter().filter_map(|l| match l {
        Listen::Unix(p) => p.parent().map(Path::to_path_buf),
        Listen::Tcp(_) => None,
    }));
    let cgroup_root = Path::new(inarray_runtime::cgroups::MOUNT_ROOT);
    let cgroups = inarray_runtime::engines::LibcgroupsDriver::new(cgroup_root, &array)
        .map_err(anyhow::Error::msg)?;
    if s.favor_dynmods {
        // Deliberate and documented (docs/operator-guide.md): a machine-wide kernel switch.
        match inarray_runtime::cgroups::favor_dynmods(cgroup_root) {
            Ok(true) => tracing::info!(
                "set the kernel's cgroup favordynmods (container starts no longer wait for an RCU grace period per cgroup move; until reboot; cgroup_favordynmods = false leaves it alone)"
            ),
            Ok(false) => tracing::debug!("cgroup favordynmods already set"),
            Err(e) => tracing::warn!(error = %e, "cannot set the kernel's cgroup favordynmods: container starts wait for an RCU grace period per cgroup move"),
        }
    }
    let manager = inarray_runtime::Manager::new(
        store.clone(),
        Arc::new(images),
        Arc::new(cgroups),
        inarray_runtime::ManagerOptions {
            state_dir: state.clone(),
            array_dir: array.clone(),
            protected: protected.clone(),
            shim_exe: sealed.path(),
            container_memory: s.container_memory,
            cgroups: s.cgroups.clone(),
            container_log: s.container_log,
            restart_concurrency: s.restart_concurrency,
            networks: s.networks.clone(),
        },
    )
    .context("container manager")?;
    let limits = s.limits;
    let tls = s.api.tls().map_err(anyhow::Error::msg)?;
    if tls.is_none() && s.listen.iter().any(|l| matches!(l, Listen::Tcp(_))) {
        tracing::warn!("tcp listeners without tls: tokens travel in clear text; set api.tls_cert and api.tls_key");
    }
    let bound = bind(&s.listen, s.socket_mode, s.socket_group, tls.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    // The Docker API: a unix socket with the native sockets' mode and group, or TCP with the
    // native TLS setup (and the same bearer tokens); never TCP in clear text.
    let docker_listen: Vec<Listen> = s.docker_listen.iter().cloned().collect();
    if tls.is_none() && docker_listen.iter().any(|l| matches!(l, Listen::Tcp(_))) {
        bail!(
            "docker_listen: tcp only with TLS: set api.tls_cert and api.tls_key (Docker clients send their token in every request)"
        );
    }
    let docker_bound = bind(&docker_listen, s.socket_mode, s.socket_group, tls)
        .await
        .map_err(|e| anyhow::anyhow!("docker_listen: {e}"))?;
    manager.init_engines(&s.engines).await.context("engines")?;
    io_weights(&s, &array, &manager).await?;
    manager
        .configure_registries(s.registries.clone(), s.registry_credentials.clone())
        .await
        .context("registries")?;
    if let Some(every) = s.image_prune_interval {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                // An image younger than one interval is kept: its user may not exist yet.
                if let Err(e) = manager.prune_images_older_than(every).await {
                    tracing::warn!(error = %e, "periodic image prune failed");
                }
            }
        });
    }
    // Lifecycle events: into the events log from reconcile on (what it records is reported).
    let lifecycle = inarray_events::LifecycleLog::start(store.clone())
        .await
        .context("lifecycle events")?;
    manager.set_event_sink(Arc::new(lifecycle.clone()));
    let node = node_boot(s.boot_id.as_deref())?;
    let report = manager.reconcile(&node).await.context("reconcile")?;
    match report.since {
        inarray_runtime::Since::Reboot | inarray_runtime::Since::Failover => tracing::info!(
            after = report.since.as_str(),
            boot_id = %node.boot_id,
            ended = report.exited,
            to_start = report.boot_starts,
            "nothing of the previous boot runs (another boot id than the last start's): runs recorded ended, restart policies applied"
        ),
        inarray_runtime::Since::Unknown => tracing::info!(
            boot_id = %node.boot_id,
            "no boot recorded by an earlier start: reconciled as after a daemon restart"
        ),
        inarray_runtime::Since::Restart => {}
    }
    {
        let manager = manager.clone();
        let cfg = s.io_guard.clone();
        tokio::spawn(async move { manager.run_io_guard(cfg).await });
    }
    // After reconcile: the scheduler re-adopts runs through the containers' reconciled rows.
    let jobs = inarray_jobs::Jobs::new(
        store.clone(),
        Arc::new(manager.clone()),
        Arc::new(inarray_jobs::SystemClock),
        inarray_jobs::JobsOptions::default(),
    );
    jobs.set_event_sink(Arc::new(lifecycle.clone()));
    jobs.start().await.context("job scheduler")?;
    // File events: watches restored from SQL; triggers start containers through the manager.
    let array_root = inarray_runtime::volumes::ArrayRoot::open(&array, &protected)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let events = inarray_events::Events::start_with(
        store.clone(),
        Arc::new(array_root),
        Some(manager.clone()),
        s.events.clone(),
        lifecycle.clone(),
    )
    .await
    .context("file events")?;
    if let Some(n) = s.nats.clone() {
        events.start_nats(n).await.context("events.nats")?;
    }
    // One exports service for the API, the gateway and SIGHUP reload.
    let exports = inarray_nfs::Exports::new(store.clone());
    exports.on_change(export_events(lifecycle.clone()));
    let nfs = inarray_nfs::start(&exports, &s.exports, s.nfs_listen, &array)
        .await
        .context("nfs gateway")?;
    let access = inarray_api::access::Access::new(
        store.clone(),
        s.limits,
        inarray_api::access::DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            array: array.clone(),
            state_dir: state.clone(),
            cgroup_mode: manager.cgroup_mode().as_str().into(),
            listen: s.listen.iter().map(ToString::to_string).collect(),
            nfs_listen: nfs.as_ref().map(|n| n.addr.to_string()),
            docker_listen: docker_listen.first().map(ToString::to_string),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("api tokens: {}", e.message))?;
    spawn_audit_retention(access.clone(), s.api.retention()).await;
    tracing::info!(
        array = %array.display(),
        state = %state.display(),
        listen = ?s.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        docker_listen = ?docker_listen.first().map(ToString::to_string),
        adopted = report.adopted,
        exited_meanwhile = report.exited,
        orphans_removed = report.removed_orphans,
        "inarray serving"
    );
    crate::notify::notify("READY=1");
    if let Some(every) = crate::notify::watchdog_interval() {
        // The watchdog is fed only while the daemon can still answer: a health check of the
        // database each half interval.
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                if store.ping().await.is_ok() {
                    crate::notify::notify("WATCHDOG=1");
                }
            }
        });
    }
    let state = inarray_api::AppState {
        manager: manager.clone(),
        jobs: jobs.clone(),
        events: events.clone(),
        exports: exports.clone(),
        nfs_metrics: nfs.as_ref().map(|n| n.metrics.clone()),
        access: access.clone(),
    };
    let docker_app = inarray_api::docker::router(&state);
    let app = inarray_api::router(state);
    let mut listeners: Vec<_> = bound.into_iter().map(|b| (b, app.clone())).collect();
    listeners.extend(docker_bound.into_iter().map(|b| (b, docker_app.clone())));
    if let Some(path) = opts.config.clone() {
        let reloader = Reloader {
            opts,
            path,
            manager,
            exports,
            access,
            log: log_handle,
            current: s,
        };
        tokio::spawn(reloader.run());
    }
    let closing = events.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Long-polls, SSE and WebSocket streams end, so in-flight requests can finish.
        closing.begin_shutdown();
    };
    serve_each(listeners, limits, shutdown)
        .await
        .context("serving the API")?;
    jobs.stop();
    events.stop().await;
    lifecycle.flush().await;
    store.close().await;
    tracing::info!("stopped; containers keep running under their shims");
    drop(sealed);
    Ok(())
}

/// Export changes as lifecycle events (`export.create|update|delete`).
fn export_events(log: inarray_events::LifecycleLog) -> inarray_nfs::ChangeHook {
    use inarray_runtime::events::{EventSink, EventType, LifecycleEvent};
    Arc::new(move |c: inarray_nfs::ExportChange| {
        let kind = match c.action {
            "create" => EventType::ExportCreate,
            "update" => EventType::ExportUpdate,
            _ => EventType::ExportDelete,
        };
        log.record(
            LifecycleEvent::new(kind, &c.name, &c.name)
                .with("path", c.path)
                .with("origin", c.origin),
        )
    })
}

/// The node and kernel boot this daemon runs in (`test_boot_id`: the test-only override).
fn node_boot(test_boot_id: Option<&str>) -> Result<inarray_runtime::NodeBoot> {
    const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
    let boot_id = match test_boot_id {
        Some(id) => id.to_owned(),
        None => std::fs::read_to_string(BOOT_ID)
            .with_context(|| format!("cannot read the kernel's boot id ({BOOT_ID})"))?
            .trim()
            .to_owned(),
    };
    if boot_id.is_empty() {
        bail!("the kernel's boot id ({BOOT_ID}) is empty");
    }
    let hostname = nix::unistd::gethostname()
        .context("cannot read the host name")?
        .to_string_lossy()
        .into_owned();
    Ok(inarray_runtime::NodeBoot { boot_id, hostname })
}

/// Prunes the audit log now (before the API serves) and then every hour.
async fn spawn_audit_retention(
    access: inarray_api::access::Access,
    r: inarray_api::access::Retention,
) {
    async fn prune(access: &inarray_api::access::Access, r: inarray_api::access::Retention) {
        match access.prune_audit(r).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit log pruned"),
            Err(e) => tracing::warn!(error = %e.message, "cannot prune the audit log"),
        }
    }
    prune(&access, r).await;
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs(3600);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            prune(&access, r).await;
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    crate::notify::notify("STOPPING=1");
}

/// Sets the array disk's I/O scheduler when the config asks for one, and says at start when
/// engines' `io_weight` cannot be enforced (the weights are accepted and stored either way).
async fn io_weights(s: &Settings, array: &Path, manager: &inarray_runtime::Manager) -> Result<()> {
    use inarray_runtime::engines;
    let dev = engines::block_device_of(array);
    if let Some(want) = &s.io_scheduler {
        let dev = dev.with_context(|| {
            format!(
                "io_scheduler: the array {} is on no single block device",
                array.display()
            )
        })?;
        let before = engines::set_io_scheduler(dev, want).map_err(anyhow::Error::msg)?;
        if &before != want {
            tracing::info!(device = %format!("{}:{}", dev.0, dev.1), from = %before, to = %want, "set the array disk's I/O scheduler");
        }
    }
    let weighted: Vec<String> = manager
        .engines()
        .await
        .context("engines")?
        .into_iter()
        .filter(|e| e.resources.io_weight.is_some())
        .map(|e| e.name)
        .collect();
    if weighted.is_empty() {
        return Ok(());
    }
    if let Some(why) = manager.io_weight_ineffective() {
        if s.io_guard.enabled && dev.is_some() {
            tracing::info!(
                engines = %weighted.join(", "),
                "io_weight is not enforced by the kernel between container engines: {why}; the I/O guard holds the containers to their weighted share while the daemon uses the disk"
            );
        } else {
            tracing::warn!(
                engines = %weighted.join(", "),
                "io_weight is not enforced: {why}; set io_scheduler = \"bfq\" in the config, enable the I/O guard, or cap containers with read_bps/write_bps"
            );
        }
    }
    Ok(())
}
