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
    /// File events: coalescing and retention of the event log.
    pub events: Option<EventsConfig>,
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
        Ok(o)
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/inarray";
pub const DEFAULT_SOCKET: &str = "/run/inarray/inarray.sock";

#[derive(Debug, clap::Args)]
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
    events: inarray_events::EventsOptions,
    nats: Option<inarray_events::nats::NatsConfig>,
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
        nats: match file.events.as_ref().and_then(|e| e.nats.clone()) {
            Some(n) => {
                n.validate()
                    .map_err(|e| anyhow::anyhow!("events.nats: {e}"))?;
                Some(n)
            }
            None => None,
        },
        events: file.events.unwrap_or_default().options()?,
    })
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
    let s = settings(opts)?;
    let filter = std::env::var("INARRAY_LOG").unwrap_or_else(|_| s.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .with_context(|| format!("log filter {filter:?}"))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let (array, state) = check_dirs(&s)?;
    let sealed = inarray_runtime::sealed::SealedExe::new()
        .context("cannot make a sealed copy of the binary")?;
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
    let cgroups =
        inarray_runtime::engines::LibcgroupsDriver::new(Path::new("/sys/fs/cgroup"), &array)
            .map_err(anyhow::Error::msg)?;
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
        },
    )
    .context("container manager")?;
    let bound = bind(&s.listen, s.socket_mode, s.socket_group)
        .await
        .map_err(anyhow::Error::msg)?;
    manager.init_engines(&s.engines).await.context("engines")?;
    let report = manager.reconcile().await.context("reconcile")?;
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
    inarray_nfs::start(&s.exports, s.nfs_listen, &array, &store)
        .await
        .context("nfs gateway")?;
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
    let app = inarray_api::events::attach(
        inarray_api::jobs::attach(inarray_api::router(manager), jobs.clone()),
        events.clone(),
    );
    let closing = events.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Long-polls, SSE and WebSocket streams end, so in-flight requests can finish.
        closing.begin_shutdown();
    };
    serve(app, bound, shutdown)
        .await
        .context("serving the API")?;
    jobs.stop();
    events.stop().await;
    store.close().await;
    tracing::info!("stopped; containers keep running under their shims");
    drop(sealed);
    Ok(())
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
        }
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
        std::fs::write(&cfg, "array = \"/a\"\nsocket_mode = \"rw\"\n").unwrap();
        let e = settings(opts(Some(cfg), None, &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("socket_mode"), "{e}");
    }
}
