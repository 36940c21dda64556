//! `inarray serve`'s configuration: the TOML file, the flags, and the validated `Settings` the
//! daemon runs with (every error names the key).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use inarray_api::serve::Listen;
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
    /// Serve the Docker Engine API too: "unix" (its socket at /run/inarray/docker.sock), a
    /// socket path ("/PATH" or "unix:/PATH"), "tcp:HOST:PORT" (only with `api.tls_cert`; a
    /// bearer token in every request), or "off" (the default).
    pub docker_listen: Option<String>,
    /// Containers' logs by default (a container's `log` overrides): bytes per file ("10m") and
    /// files kept; the log never takes more than their product.
    pub container_log_max_size: Option<String>,
    pub container_log_max_files: Option<u32>,
    /// Containers the daemon starts on its own at once, at most: restarts by policy and the
    /// starts after a reboot or a failover (default 8, 1 to 256).
    pub restart_concurrency: Option<usize>,
    /// Bridge networks: netavark and aardvark-dns, the built-in network's subnet, the pool of
    /// subnets for networks created without one.
    pub networks: Option<NetworksConfig>,
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
    /// Plain HTTP (`true`) or TLS only (`false`); unset: plain HTTP for loopback registries.
    #[serde(default)]
    pub insecure: Option<bool>,
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
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/inarray/docker.sock";

/// `docker_listen`: where the Docker API listens, or none — a unix socket (its permissions are its
/// access control) or `tcp:HOST:PORT`, which the daemon serves only with TLS (`api.tls_cert`) and
/// where every request needs a bearer token, as on the native API's TCP listeners.
fn docker_listen(v: &str) -> Result<Option<Listen>> {
    match v {
        "" | "off" | "none" => return Ok(None),
        "unix" => return Ok(Some(Listen::Unix(DEFAULT_DOCKER_SOCKET.into()))),
        _ => {}
    }
    if v.starts_with('/') {
        return Ok(Some(Listen::Unix(v.into())));
    }
    if v.starts_with("unix:") || v.starts_with("tcp:") {
        return v
            .parse::<Listen>()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("docker_{e}"));
    }
    bail!("docker_listen {v:?}: expected \"unix\", an absolute socket path (or unix:/PATH), tcp:HOST:PORT (with TLS), or \"off\"")
}

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
    /// Serve the Docker Engine API too: "unix" (/run/inarray/docker.sock), a socket path,
    /// "tcp:HOST:PORT" (only with TLS: api.tls_cert, api.tls_key), or "off". Default: off.
    #[arg(long, value_name = "unix|PATH|tcp:HOST:PORT|off")]
    pub docker_listen: Option<String>,
    /// For tests only: take this for the kernel's boot id (a different one than the last start's
    /// makes the daemon reconcile as after a reboot).
    #[arg(long, value_name = "ID", hide = true)]
    pub boot_id: Option<String>,
}

pub(crate) struct Settings {
    pub(crate) array: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) listen: Vec<Listen>,
    pub(crate) socket_mode: u32,
    pub(crate) socket_group: Option<u32>,
    pub(crate) log: String,
    pub(crate) container_memory: u64,
    pub(crate) engines: Vec<inarray_runtime::engines::EngineDef>,
    pub(crate) nfs_listen: Option<std::net::SocketAddr>,
    pub(crate) exports: Vec<inarray_nfs::ExportSpec>,
    pub(crate) log_format: crate::logging::Format,
    pub(crate) api: inarray_api::access::ApiConfig,
    pub(crate) limits: inarray_api::access::Limits,
    pub(crate) cgroups: inarray_runtime::engines::CgroupLayout,
    pub(crate) io_scheduler: Option<String>,
    pub(crate) favor_dynmods: bool,
    pub(crate) registries: std::collections::HashMap<String, inarray_images::RegistrySettings>,
    pub(crate) registry_credentials: std::collections::HashMap<String, inarray_images::Credentials>,
    pub(crate) image_prune_interval: Option<std::time::Duration>,
    pub(crate) events: inarray_events::EventsOptions,
    pub(crate) nats: Option<inarray_events::nats::NatsConfig>,
    pub(crate) io_guard: inarray_runtime::GuardConfig,
    pub(crate) shim: Option<PathBuf>,
    /// The Docker API's unix socket, when it is served.
    pub(crate) docker_listen: Option<Listen>,
    pub(crate) container_log: inarray_runtime::LogLimits,
    pub(crate) restart_concurrency: usize,
    pub(crate) networks: inarray_runtime::network::NetworkOptions,
    /// Test-only: the boot id to use instead of the kernel's.
    pub(crate) boot_id: Option<String>,
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

pub(crate) fn settings(opts: ServeOpts) -> Result<Settings> {
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
        container_log: {
            let d = inarray_runtime::LogLimits::default();
            let l = inarray_runtime::LogLimits {
                max_size: match file.container_log_max_size.as_deref() {
                    Some(m) => inarray_runtime::resources::parse_bytes(m)
                        .map_err(|e| anyhow::anyhow!("container_log_max_size: {e}"))?,
                    None => d.max_size,
                },
                max_files: file.container_log_max_files.unwrap_or(d.max_files),
            };
            l.validate()
                .map_err(|e| anyhow::anyhow!("container_{}", e.replace("log.", "log_")))?;
            l
        },
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
        docker_listen: match opts.docker_listen.or(file.docker_listen) {
            Some(v) => docker_listen(&v)?,
            None => None,
        },
        restart_concurrency: match file.restart_concurrency {
            None => inarray_runtime::RESTART_CONCURRENCY,
            Some(n) if (1..=256).contains(&n) => n,
            Some(n) => bail!("restart_concurrency: {n} is not between 1 and 256"),
        },
        boot_id: opts.boot_id,
        networks: file.networks.unwrap_or_default().options()?,
    })
}

/// The `[networks]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworksConfig {
    /// Default /usr/lib/podman/netavark.
    pub netavark: Option<PathBuf>,
    /// Default /usr/lib/podman/aardvark-dns.
    pub aardvark_dns: Option<PathBuf>,
    /// The built-in `bridge` network's IPv4 subnet (default 10.91.0.0/24).
    pub bridge_subnet: Option<String>,
    /// /24s for networks created without a subnet (default 10.91.0.0/16).
    pub pool: Option<String>,
}

impl NetworksConfig {
    fn options(self) -> anyhow::Result<inarray_runtime::network::NetworkOptions> {
        use inarray_runtime::network::Cidr;
        let mut o = inarray_runtime::network::NetworkOptions::default();
        let v4 = |key: &str, s: &str, max: u8| -> anyhow::Result<Cidr> {
            let c: Cidr = s
                .parse()
                .map_err(|e| anyhow::anyhow!("networks.{key}: {e}"))?;
            if !c.is_v4() || !(8..=max).contains(&c.prefix) {
                bail!("networks.{key}: {s} must be an IPv4 subnet /8 to /{max}");
            }
            Ok(c)
        };
        if let Some(p) = self.netavark {
            o.netavark = p;
        }
        if let Some(p) = self.aardvark_dns {
            o.aardvark = p;
        }
        if let Some(s) = self.bridge_subnet {
            o.bridge_subnet = v4("bridge_subnet", &s, 30)?;
        }
        if let Some(s) = self.pool {
            o.pool = v4("pool", &s, 24)?;
        }
        Ok(o)
    }
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
            docker_listen: None,
            boot_id: None,
        }
    }

    #[test]
    fn docker_listen_is_off_by_default_a_unix_socket_or_tcp_when_on() {
        assert_eq!(
            settings(opts(None, Some("/a"), &[])).unwrap().docker_listen,
            None
        );
        let on = |v: &str| {
            let mut o = opts(None, Some("/a"), &[]);
            o.docker_listen = Some(v.into());
            settings(o).map(|s| s.docker_listen)
        };
        let unix = |p: &str| Some(Listen::Unix(PathBuf::from(p)));
        assert_eq!(on("unix").unwrap(), unix(DEFAULT_DOCKER_SOCKET));
        assert_eq!(on("/run/d.sock").unwrap(), unix("/run/d.sock"));
        assert_eq!(on("unix:/run/d.sock").unwrap(), unix("/run/d.sock"));
        assert_eq!(on("off").unwrap(), None);
        assert_eq!(
            on("tcp:0.0.0.0:2376").unwrap(),
            Some(Listen::Tcp("0.0.0.0:2376".parse().unwrap()))
        );
        let e = on("tcp:nowhere").unwrap_err().to_string();
        assert!(e.starts_with("docker_listen"), "{e}");
        let e = on("unix:relative.sock").unwrap_err().to_string();
        assert!(e.starts_with("docker_listen"), "{e}");
        let e = on("docker.sock").unwrap_err().to_string();
        assert!(e.starts_with("docker_listen"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(&cfg, "array = \"/a\"\ndocker_listen = \"unix\"\n").unwrap();
        assert_eq!(
            settings(opts(Some(cfg.clone()), None, &[]))
                .unwrap()
                .docker_listen,
            unix(DEFAULT_DOCKER_SOCKET)
        );
        // The flag wins over the file.
        let mut o = opts(Some(cfg), None, &[]);
        o.docker_listen = Some("off".into());
        assert_eq!(settings(o).unwrap().docker_listen, None);
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
    fn restart_concurrency_has_a_default_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inarray.toml");
        std::fs::write(&cfg, "array = \"/a\"\n").unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.restart_concurrency, inarray_runtime::RESTART_CONCURRENCY);
        std::fs::write(&cfg, "array = \"/a\"\nrestart_concurrency = 2\n").unwrap();
        let s = settings(opts(Some(cfg.clone()), None, &[])).unwrap();
        assert_eq!(s.restart_concurrency, 2);
        std::fs::write(&cfg, "array = \"/a\"\nrestart_concurrency = 0\n").unwrap();
        let e = format!("{:#}", settings(opts(Some(cfg), None, &[])).err().unwrap());
        assert!(e.starts_with("restart_concurrency: 0"), "{e}");
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
