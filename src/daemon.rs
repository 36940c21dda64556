//! `inarray serve`: configuration, start-up checks, and wiring of the crates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use inarray_api::serve::{bind, serve, Listen};
use serde::Deserialize;

/// The config file (TOML); every key can also be given as a flag, and flags win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub array: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    /// Mode of the API's unix sockets, octal string (default "0660").
    pub socket_mode: Option<String>,
    /// Group of the API's unix sockets (default "inarray" when that group exists, else root's).
    pub socket_group: Option<String>,
    /// Tracing filter, e.g. "info" or "inarray=debug".
    pub log: Option<String>,
    /// Memory the node allots to containers ("20g"); engines' memory limits must fit in it.
    /// Default: 90 % of the node's memory.
    pub container_memory: Option<String>,
    /// Engines besides the built-in `storage` and `default` (or new limits for those).
    pub engines: Option<Vec<inarray_runtime::engines::EngineDef>>,
    /// HOST:PORT of the NFSv3 gateway (MOUNT on the same port), e.g. "0.0.0.0:2049"; no gateway
    /// when unset.
    pub nfs_listen: Option<String>,
    /// NFS exports made true in SQL at start (see docs/operator-guide.md).
    pub exports: Option<Vec<inarray_nfs::ExportSpec>>,
    /// "text" (default) or "json" (one object a line).
    pub log_format: Option<String>,
    /// API limits and audit retention (docs/operations.md lists the keys and defaults).
    pub api: Option<inarray_api::access::ApiConfig>,
    /// The cgroup holding the containers' engines (default "inarray"); the daemon's own engine,
    /// `storage`, is its sibling "<cgroup_root>-storage". One per daemon on a machine.
    pub cgroup_root: Option<String>,
    /// An I/O scheduler to set on the array's disk at start, e.g. "bfq" (the only one that
    /// enforces engines' io_weight on cgroup v1). Unset: the disk's scheduler is left alone.
    pub io_scheduler: Option<String>,
    /// Set the kernel's `favordynmods` on a cgroup hierarchy at start (default true): a container
    /// start then no longer waits for an RCU grace period when its processes move into their
    /// cgroups (≈ 6 ms a move on a node in its boot state), at the cost of slightly dearer forks
    /// and exits machine-wide. It stays until reboot; false leaves the kernel's setting alone.
    pub cgroup_favordynmods: Option<bool>,
    /// Registries by `host[:port]` (`docker.io` for Docker Hub): insecure, mirrors, credentials.
    pub registries: Option<std::collections::HashMap<String, RegistryConfig>>,
    /// Prune unused images every this many seconds (none when unset or 0).
    pub image_prune_interval_seconds: Option<u64>,
    /// File events: coalescing and retention of the event log.
    pub events: Option<EventsConfig>,
    /// The I/O guard: the containers' share of the array disk while the daemon uses it.
    pub io_guard: Option<IoGuardConfig>,
    /// The shim executable (default: `inarray-shim` in the directory of the daemon's own
    /// executable).
    pub shim: Option<PathBuf>,
}

/// `[io_guard]` in the config file (docs/operator-guide.md, "Engines"; the defaults in
/// `inarray_runtime::GuardConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoGuardConfig {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub hold_ms: Option<u64>,
    pub busy_bps: Option<inarray_runtime::resources::Bytes>,
    pub busy_iops: Option<u64>,
    pub floor_bps: Option<inarray_runtime::resources::Bytes>,
}

impl IoGuardConfig {
    fn options(&self) -> Result<inarray_runtime::GuardConfig> {
        let d = inarray_runtime::GuardConfig::default();
        let ms = std::time::Duration::from_millis;
        let g = inarray_runtime::GuardConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            interval: self.interval_ms.map_or(d.interval, ms),
            hold: self.hold_ms.map_or(d.hold, ms),
            busy_bps: self.busy_bps.map_or(d.busy_bps, |b| b.0),
            busy_iops: self.busy_iops.unwrap_or(d.busy_iops),
            floor_bps: self.floor_bps.map_or(d.floor_bps, |b| b.0),
        };
        g.validate("io_guard").map_err(anyhow::Error::msg)?;
        Ok(g)
    }
}

/// One `[registries."host:port"]` table of the config file. Its Debug hides the password.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub mirrors: Vec<String>,
    pub username: Option<String>,
    /// The password inline (the config file should then be root-only) …
    pub password: Option<String>,
    /// … or in a file of its own (its first line; trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for this registry besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("mirrors", &self.mirrors)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `[events]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Repeated close_write/attrib of one file within this many milliseconds become one event
    /// (default 0: off; at most 10000).
    pub coalesce_ms: Option<u64>,
    /// Events older than this many hours are removed (default 168 = 7 days; 0 = no age limit).
    pub retention_hours: Option<u64>,
    /// At most this many events are kept, the oldest removed first (default 10000000; 0 = no
    /// limit).
    pub retention_max_events: Option<u64>,
    /// Publish the events to NATS JetStream: `url`, `subject`, `stream`, `subscription`,
    /// `watches` (docs/operator-guide.md, "File events").
    pub nats: Option<inarray_events::nats::NatsConfig>,
    /// PEM file of CA certificates that HTTPS webhooks trust besides the node's trust store
    /// (for receivers whose certificates a private CA signed). Checked at start.
    pub webhook_ca_file: Option<PathBuf>,
}

impl EventsConfig {
    fn options(&self) -> Result<inarray_events::EventsOptions> {
        let mut o = inarray_events::EventsOptions::default();
        if let Some(c) = self.coalesce_ms {
            if c > 10_000 {
                bail!("events.coalesce_ms: {c} is more than 10000");
            }
            o.coalesce = std::time::Duration::from_millis(c);
        }
        match self.retention_hours {
            Some(0) => o.retention_age = None,
            Some(h) => {
                o.retention_age = Some(std::time::Duration::from_secs(h.saturating_mul(3600)))
            }
            None => {}
        }
        match self.retention_max_events {
            Some(0) => o.retention_max_events = None,
            Some(n) => {
                o.retention_max_events =
                    Some(i64::try_from(n).context("events.retention_max_events")?)
            }
            None => {}
        }
        if let Some(ca) = &self.webhook_ca_file {
            inarray_images::http::check_ca_file(ca)
                .map_err(|e| anyhow::anyhow!("events.webhook_ca_file: {e}"))?;
            o.webhook_ca_file = Some(ca.clone());
        }
        Ok(o)
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/inarray";
pub const DEFAULT_SOCKET: &str = "/run/inarray/inarray.sock";

#[derive(Clone, Debug, clap::Args)]
pub struct ServeOpts {
    /// The array: the directory all volume sources are relative to.
    #[arg(long)]
    pub array: Option<PathBuf>,
    /// Where the daemon keeps its database, images and container state.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// unix:/PATH or tcp:HOST:PORT (repeatable). Default: unix:/run/inarray/inarray.sock.
    #[arg(long)]
    pub listen: Vec<String>,
    /// A TOML file with the same keys (array, state_dir, listen, socket_mode, log).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve the NFS exports over NFSv3 on HOST:PORT (MOUNT on the same port), e.g. 0.0.0.0:2049.
    #[arg(long, value_name = "HOST:PORT")]
    pub nfs_listen: Option<String>,
    /// The cgroup holding the containers' engines (default inarray; storage is NAME-storage).
    #[arg(long, value_name = "NAME")]
    pub cgroup_root: Option<String>,
    /// The shim executable (default: inarray-shim beside this executable).
    #[arg(long, value_name = "FILE")]
    pub shim: Option<PathBuf>,
}

struct Settings {
    array: PathBuf,
    state_dir: PathBuf,
    listen: Vec<Listen>,
    socket_mode: u32,
    socket_group: Option<u32>,
    log: String,
    container_memory: u64,
    engines: Vec<inarray_runtime::engines::EngineDef>,
    nfs_listen: Option<std::net::SocketAddr>,
    exports: Vec<inarray_nfs::ExportSpec>,
    log_format: crate::logging::Format,
    api: inarray_api::access::ApiConfig,
    limits: inarray_api::access::Limits,
    cgroups: inarray_runtime::engines::CgroupLayout,
    io_scheduler: Option<String>,
    favor_dynmods: bool,
    registries: std::collections::HashMap<String, inarray_images::RegistrySettings>,
    registry_credentials: std::collections::HashMap<String, inarray_images::Credentials>,
    image_prune_interval: Option<std::time::Duration>,
    events: inarray_events::EventsOptions,
    nats: Option<inarray_events::nats::NatsConfig>,
    io_guard: inarray_runtime::GuardConfig,
    shim: Option<PathBuf>,
}

type RegistryMaps = (
    std::collections::HashMap<String, inarray_images::RegistrySettings>,
    std::collections::HashMap<String, inarray_images::Credentials>,
);

fn registry_settings(
    file: Option<std::collections::HashMap<String, RegistryConfig>>,
) -> Result<RegistryMaps> {
    let mut settings = std::collections::HashMap::new();
    let mut creds = std::collections::HashMap::new();
    let is_host = |h: &str| {
        inarray_images::Reference::parse(&format!("{h}/x"))
            .is_ok_and(|r| inarray_images::registry::split_name(&r.name).0 == h)
    };
    for (host, r) in file.unwrap_or_default() {
        if !is_host(&host) {
            bail!(
                "registries.{host:?}: not a registry host[:port] (e.g. \"registry.example:5000\")"
            );
        }
        if let Some(ca) = &r.ca_file {
            if !ca.is_file() {
                bail!("registries.{host:?}.ca_file {}: no such file", ca.display());
            }
        }
        if let Some(m) = r.mirrors.iter().find(|m| !is_host(m)) {
            bail!("registries.{host:?}.mirrors: {m:?} is not a registry host[:port]");
        }
        let password = match (&r.password, &r.password_file) {
            (Some(_), Some(_)) => {
                bail!("registries.{host:?}: set password or password_file, not both")
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("registries.{host:?}.password_file {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            (None, None) => None,
        };
        match (r.username, password) {
            (Some(username), Some(password)) => {
                creds.insert(
                    host.clone(),
                    inarray_images::Credentials { username, password },
                );
            }
            (None, None) => {}
            _ => bail!("registries.{host:?}: username and a password go together"),
        }
        settings.insert(
            host,
            inarray_images::RegistrySettings {
                insecure: r.insecure,
                mirrors: r.mirrors,
                ca_file: r.ca_file,
            },
        );
    }
    Ok((settings, creds))
}

fn settings(opts: ServeOpts) -> Result<Settings> {
    let file: FileConfig = match &opts.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let (registries, registry_credentials) = registry_settings(file.registries)?;
    let Some(array) = opts.array.or(file.array) else {
        bail!("no array directory: pass --array DIR or set `array` in the config file");
    };
    let state_dir = opts
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let listen_raw = if !opts.listen.is_empty() {
        opts.listen
    } else {
        file.listen
            .unwrap_or_else(|| vec![format!("unix:{DEFAULT_SOCKET}")])
    };
    let listen = listen_raw
        .iter()
        .map(|l| l.parse::<Listen>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let mode = file.socket_mode.as_deref().unwrap_or("0660");
    let socket_mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("socket_mode {mode:?} is not an octal mode like \"0660\""))?;
    let socket_group = match file.socket_group.as_deref() {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .with_context(|| format!("socket_group {name:?}: no such group"))?
                .gid
                .as_raw(),
        ),
        None => nix::unistd::Group::from_name("inarray")
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    };
    Ok(Settings {
        array,
        state_dir,
        listen,
        socket_mode,
        socket_group,
        // libcgroups warns about every controller a hierarchy lacks, at every use: quiet it.
        log: file.log.unwrap_or_else(|| "info,libcgroups=error".into()),
        container_memory: match file.container_memory.as_deref() {
            Some(m) => inarray_runtime::resources::parse_bytes(m)
                .map_err(|e| anyhow::anyhow!("container_memory: {e}"))?,
            None => inarray_runtime::engines::default_container_memory(),
        },
        engines: file.engines.unwrap_or_default(),
        nfs_listen: match opts.nfs_listen.or(file.nfs_listen) {
            Some(a) => Some(
                a.parse()
                    .with_context(|| format!("nfs_listen {a:?} is not HOST:PORT"))?,
            ),
            None => None,
        },
        exports: file.exports.unwrap_or_default(),
        log_format: file
            .log_format
            .as_deref()
            .unwrap_or("text")
            .parse()
            .map_err(anyhow::Error::msg)?,
        limits: file
            .api
            .clone()
            .unwrap_or_default()
            .limits()
            .map_err(anyhow::Error::msg)?,
        api: file.api.unwrap_or_default(),
        cgroups: match opts.cgroup_root.or(file.cgroup_root) {
            Some(r) => {
                inarray_runtime::engines::CgroupLayout::new(&r).map_err(anyhow::Error::msg)?
            }
            None => inarray_runtime::engines::CgroupLayout::default(),
        },
        io_scheduler: file.io_scheduler,
        favor_dynmods: file.cgroup_favordynmods.unwrap_or(true),
        image_prune_interval: file
            .image_prune_interval_seconds
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs),
        registries,
        registry_credentials,
        nats: match file.events.as_ref().and_then(|e| e.nats.clone()) {
            Some(n) => {
                n.validate()
                    .map_err(|e| anyhow::anyhow!("events.nats: {e}"))?;
                Some(n)
            }
            None => None,
        },
        events: file.events.unwrap_or_default().options()?,
        io_guard: file.io_guard.unwrap_or_default().options()?,
        shim: opts.shim.or(file.shim),
    })
}

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
    for l in &s.listen {
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
        },
    )
    .context("container manager")?;
    let limits = s.limits;
    let tls = s.api.tls().map_err(anyhow::Error::msg)?;
    if tls.is_none() && s.listen.iter().any(|l| matches!(l, Listen::Tcp(_))) {
        tracing::warn!("tcp listeners without tls: tokens travel in clear text; set api.tls_cert and api.tls_key");
    }
    let bound = bind(&s.listen, s.socket_mode, s.socket_group, tls)
        .await
        .map_err(anyhow::Error::msg)?;
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
    let report = manager.reconcile().await.context("reconcile")?;
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
    jobs.start().await.context("job scheduler")?;
    // File events: watches restored from SQL; triggers start containers through the manager.
    let array_root = inarray_runtime::volumes::ArrayRoot::open(&array, &protected)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let events = inarray_events::Events::start(
        store.clone(),
        Arc::new(array_root),
        Some(manager.clone()),
        s.events.clone(),
    )
    .await
    .context("file events")?;
    if let Some(n) = s.nats.clone() {
        events.start_nats(n).await.context("events.nats")?;
    }
    // One exports service for the API, the gateway and SIGHUP reload.
    let exports = inarray_nfs::Exports::new(store.clone());
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
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("api tokens: {}", e.message))?;
    spawn_audit_retention(access.clone(), s.api.retention()).await;
    tracing::info!(
        array = %array.display(),
        state = %state.display(),
        listen = ?s.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
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
    let app = inarray_api::router(inarray_api::AppState {
        manager: manager.clone(),
        jobs: jobs.clone(),
        events: events.clone(),
        exports: exports.clone(),
        nfs_metrics: nfs.as_ref().map(|n| n.metrics.clone()),
        access: access.clone(),
    });
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
    serve(app, bound, limits, shutdown)
        .await
        .context("serving the API")?;
    jobs.stop();
    events.stop().await;
    store.close().await;
    tracing::info!("stopped; containers keep running under their shims");
    drop(sealed);
    Ok(())
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

/// SIGHUP: re-reads the config file and applies what can change while serving (log filter,
/// engines, exports, tokens). A file that does not parse or validate changes nothing.
struct Reloader {
    opts: ServeOpts,
    path: PathBuf,
    manager: inarray_runtime::Manager,
    exports: inarray_nfs::Exports,
    access: inarray_api::access::Access,
    log: crate::logging::FilterHandle,
    current: Settings,
}

impl Reloader {
    async fn run(mut self) {
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
            registries: new.registries,
            registry_credentials: new.registry_credentials,
            log: new.log,
            engines: new.engines,
            exports: new.exports,
        };
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(config: Option<PathBuf>, array: Option<&str>, listen: &[&str]) -> ServeOpts {
        ServeOpts {
            array: array.map(PathBuf::from),
            state_dir: None,
            listen: listen.iter().map(|s| s.to_string()).collect(),
            config,
            nfs_listen: None,
            cgroup_root: None,
            shim: None,
        }
    }

    #[test]
    fn api_limits_and_log_format() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(
            &cfg,
            "array = \"/a\"\nlog_format = \"json\"\n[api]\nmax_in_flight = 7\nheader_timeout_secs = 2.5\naudit_retention_days = 3\n",
        )
        .unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.log_format, crate::logging::Format::Json);
        assert_eq!(s.limits.max_in_flight, 7);
        assert_eq!(
            s.limits.header_timeout,
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(s.api.retention().days, 3);
        std::fs::write(&cfg, "array = \"/a\"\nlog_format = \"xml\"\n").unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("log_format"), "{e}");
        std::fs::write(&cfg, "array = \"/a\"\n[api]\nmax_body_bytes = 0\n").unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("api.max_body_bytes"), "{e}");
        std::fs::write(&cfg, "array = \"/a\"\n[api]\nbogus = 1\n").unwrap();
        let e = format!("{:#}", settings(opts(Some(cfg), None, &[])).err().unwrap());
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn favordynmods_is_on_unless_the_file_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(&cfg, "array = \"/a\"\n").unwrap();
        assert!(
            settings(opts(Some(cfg.clone()), None, &[]))
                .unwrap()
                .favor_dynmods
        );
        std::fs::write(&cfg, "array = \"/a\"\ncgroup_favordynmods = false\n").unwrap();
        assert!(
            !settings(opts(Some(cfg.clone()), None, &[]))
                .unwrap()
                .favor_dynmods
        );
        std::fs::write(&cfg, "array = \"/a\"\ncgroup_favordynmods = \"no\"\n").unwrap();
        let e = format!("{:#}", settings(opts(Some(cfg), None, &[])).err().unwrap());
        assert!(e.contains("cgroup_favordynmods"), "{e}");
    }

    #[test]
    fn cgroup_root_and_io_scheduler_come_from_the_file_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(&cfg, "cgroup_root = \"node-a\"\nio_scheduler = \"bfq\"\n").unwrap();
        let s = settings(opts(Some(cfg.clone()), Some("/a"), &[])).unwrap();
        assert_eq!(s.cgroups.engine("storage"), "/node-a-storage");
        assert_eq!(s.io_scheduler.as_deref(), Some("bfq"));
        let mut o = opts(Some(cfg.clone()), Some("/a"), &[]);
        o.cgroup_root = Some("node-b".into());
        assert_eq!(
            settings(o).unwrap().cgroups.engine("default"),
            "/node-b/default"
        );
        std::fs::write(&cfg, "cgroup_root = \"../etc\"\n").unwrap();
        let e = settings(opts(Some(cfg), Some("/a"), &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("cgroup_root: "), "{e}");
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(
            &cfg,
            "array = \"/srv/array\"\nstate_dir = \"/srv/state\"\nlisten = [\"unix:/run/x.sock\", \"tcp:127.0.0.1:7070\"]\nsocket_mode = \"0600\"\n",
        )
        .unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.array, PathBuf::from("/srv/array"));
        assert_eq!(s.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.socket_mode, 0o600);
        let s = settings(opts(Some(cfg), Some("/other"), &["unix:/run/y.sock"])).unwrap();
        assert_eq!(s.array, PathBuf::from("/other"));
        assert_eq!(s.listen, vec![Listen::Unix("/run/y.sock".into())]);
    }

    #[test]
    fn defaults_and_errors() {
        let s = settings(opts(None, Some("/a"), &[])).unwrap();
        assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(s.listen, vec![Listen::Unix(DEFAULT_SOCKET.into())]);
        assert_eq!(s.socket_mode, 0o660);
        let e = settings(opts(None, None, &[])).err().unwrap().to_string();
        assert!(e.contains("--array"), "{e}");
        let e = settings(opts(None, Some("/a"), &["udp:1.2.3.4:5"]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unix:/PATH or tcp:HOST:PORT"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, "array = \"/a\"\nbogus = 1\n").unwrap();
        let e = format!(
            "{:#}",
            settings(opts(Some(cfg.clone()), None, &[])).err().unwrap()
        );
        assert!(e.contains("bad.toml") && e.contains("bogus"), "{e}");
        std::fs::write(&cfg, "array = \"/a\"\nsocket_group = \"no-such-group-x\"\n").unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no such group"), "{e}");
        std::fs::write(&cfg, "array = \"/a\"\n[events]\ncoalesce_ms = 20000\n").unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("events.coalesce_ms"), "{e}");
        std::fs::write(
            &cfg,
            "array = \"/a\"\n[events]\ncoalesce_ms = 50\nretention_hours = 0\nretention_max_events = 1000\n",
        )
        .unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.events.coalesce, std::time::Duration::from_millis(50));
        assert_eq!(s.events.retention_age, None);
        assert_eq!(s.events.retention_max_events, Some(1000));
        assert_eq!(s.events.webhook_ca_file, None);
        let ca = dir.path().join("no-such-ca.pem");
        std::fs::write(
            &cfg,
            format!(
                "array = \"/a\"\n[events]\nwebhook_ca_file = \"{}\"\n",
                ca.display()
            ),
        )
        .unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("events.webhook_ca_file") && e.contains("no-such-ca.pem"),
            "{e}"
        );
        std::fs::write(&cfg, "array = \"/a\"\n[io_guard]\nhold_ms = 20\n").unwrap();
        let e = settings(opts(Some(cfg.clone()), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("io_guard.hold_ms"), "{e}");
        std::fs::write(
            &cfg,
            "array = \"/a\"\n[io_guard]\ninterval_ms = 100\nhold_ms = 3000\nfloor_bps = \"64m\"\n",
        )
        .unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.io_guard.interval, std::time::Duration::from_millis(100));
        assert_eq!(s.io_guard.hold, std::time::Duration::from_secs(3));
        assert_eq!(s.io_guard.floor_bps, 64 << 20);
        assert!(s.io_guard.enabled, "on unless the file says otherwise");
        std::fs::write(&cfg, "array = \"/a\"\nsocket_mode = \"rw\"\n").unwrap();
        let e = settings(opts(Some(cfg), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("socket_mode"), "{e}");
    }
}
