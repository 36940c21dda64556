//! A Docker create body → a native [`ContainerConfig`]. Every field is first checked against
//! [`fields`](super::fields) (unknown → 400, unsupported → 400, unsafe → 403, each naming the
//! field); then the honoured ones are translated here, and the native validation's field names
//! are put back into Docker's (`volumes[0].source` → `HostConfig.Binds[0]`).
//!
//! Bind sources: an absolute host path inside the array becomes the native volume source
//! relative to the array root (lexically: no `..`, the array's canonical path as its prefix);
//! anything else is a 400 naming the field. The native create then resolves it beneath the
//! array root (openat2) as for any container.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use inarray_runtime::health::HealthCheck;
use inarray_runtime::resources::{Bytes, Resources};
use inarray_runtime::{ContainerConfig, LogLimits, Network, PullPolicy, RestartPolicy, Volume};
use serde_json::Value;

use super::errors::{DockerError, Result};
use super::fields::{self, neutral};
use super::types::{CreateBody, HealthConfig, HostConfig, StrSlice};

/// The label that picks a container's engine.
pub const ENGINE_LABEL: &str = "inarray.engine";

/// A translated create: the native request, the Docker field each native volume came from (for
/// error messages) and warnings for the client.
pub struct Translated {
    pub config: ContainerConfig,
    pub origins: Vec<String>,
    pub warnings: Vec<String>,
    /// `Entrypoint: [""]` without a `Cmd`: Docker then runs the image's Cmd alone.
    pub image_cmd_alone: bool,
}

/// Checks `body` against Docker's schema and translates it. `array` is the array's canonical
/// path (bind sources must be inside it).
pub fn translate(
    body: &Value,
    name: Option<String>,
    array: &Path,
    default_log: LogLimits,
) -> Result<Translated> {
    check_fields(body)?;
    let b: CreateBody = super::typed(body.clone())?;
    if b.image.is_empty() {
        return Err(DockerError::bad_request(
            "Image: required (the image to run)",
        ));
    }
    let h = &b.host_config;
    let mut warnings = Vec::new();
    check_namespaces(h)?;
    check_stop_signal(&b.stop_signal)?;
    let log = log_limits(h, default_log)?;
    let healthcheck = b
        .healthcheck
        .as_ref()
        .map(healthcheck)
        .transpose()?
        .flatten();
    let network = network(&b, &mut warnings)?;
    let restart = restart_policy(h)?;
    if h.auto_remove && restart != RestartPolicy::No {
        return Err(DockerError::bad_request(format!(
            "HostConfig.AutoRemove: conflicting options: cannot remove a container when it exits and restart it ({restart})"
        )));
    }
    let (volumes, origins) = volumes(h, array)?;
    let entrypoint = match b.entrypoint {
        StrSlice(Some(e)) if e.is_empty() || e == [""] => Some(Vec::new()),
        StrSlice(e) => e,
    };
    let command = b.cmd.0.filter(|c| !c.is_empty());
    let image_cmd_alone = entrypoint.as_ref().is_some_and(Vec::is_empty) && command.is_none();
    let engine = b.labels.get(ENGINE_LABEL).cloned();
    let mut env = b.env;
    if b.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As Docker does for a container with a terminal.
        env.push("TERM=xterm".into());
    }
    let config = ContainerConfig {
        name,
        image: b.image,
        command,
        entrypoint,
        env,
        workdir: Some(b.working_dir).filter(|w| !w.is_empty()),
        user: Some(b.user).filter(|u| !u.is_empty()),
        volumes,
        restart,
        network,
        // Published ports, aliases, hostname, DNS and extra hosts of the Docker API are not
        // mapped yet (issue #18 left the Docker mapping to the Docker API's issue).
        ports: Vec::new(),
        aliases: Vec::new(),
        hostname: None,
        dns: Vec::new(),
        extra_hosts: Vec::new(),
        engine,
        resources: resources(h)?,
        // Started by `POST /containers/{id}/start`, as Docker does.
        start: false,
        // A missing image is the client's to pull (404 `No such image`): the CLI does so.
        pull: PullPolicy::Never,
        tty: b.tty,
        open_stdin: b.open_stdin,
        auto_remove: h.auto_remove,
        labels: b.labels,
        log,
        healthcheck,
    };
    config.validate().map_err(|e| {
        DockerError::bad_request(format!(
            "{}: {}",
            docker_field(&e.field, &origins),
            e.reason
        ))
    })?;
    Ok(Translated {
        config,
        origins,
        warnings,
        image_cmd_alone,
    })
}

/// `LogConfig` → the native log limits. The log is inarray's own rotated file (what json-file
/// and local are to dockerd); `max-size` and `max-file` size it, the other one of the pair from
/// the daemon's default.
fn log_limits(h: &HostConfig, default: LogLimits) -> Result<Option<LogLimits>> {
    let c = &h.log_config;
    if !matches!(c.kind.as_str(), "" | "json-file" | "local") {
        return Err(DockerError::bad_request(format!(
            "HostConfig.LogConfig.Type: {:?} is not supported by inarray: a container's output goes to its own rotated log file (json-file or local; read with docker logs)",
            c.kind
        )));
    }
    if c.config.is_empty() {
        return Ok(None);
    }
    let mut limits = default;
    for (k, v) in &c.config {
        let field = format!("HostConfig.LogConfig.Config.{k}");
        match k.as_str() {
            "max-size" => {
                limits.max_size = inarray_runtime::resources::parse_bytes(v)
                    .map_err(|e| DockerError::bad_request(format!("{field}: {e}")))?;
            }
            "max-file" => {
                limits.max_files = v.parse().map_err(|_| {
                    DockerError::bad_request(format!("{field}: {v:?} is not a number of files"))
                })?;
            }
            _ => {
                return Err(DockerError::bad_request(format!(
                    "{field}: not supported by inarray (only max-size and max-file)"
                )))
            }
        }
    }
    limits
        .validate()
        .map_err(|e| DockerError::bad_request(format!("HostConfig.LogConfig.Config: {e}")))?;
    Ok(Some(limits))
}

/// `Healthcheck` → the native health check (nanoseconds → seconds). Empty (or only zeros):
/// the image's check, as Docker does.
fn healthcheck(h: &HealthConfig) -> Result<Option<HealthCheck>> {
    let secs = |field: &str, ns: i64| -> Result<Option<f64>> {
        match ns {
            0 => Ok(None),
            n if n > 0 => Ok(Some(n as f64 / 1e9)),
            n => Err(DockerError::bad_request(format!(
                "Healthcheck.{field}: {n} is negative"
            ))),
        }
    };
    let check = HealthCheck {
        test: h.test.clone(),
        interval: secs("Interval", h.interval)?,
        timeout: secs("Timeout", h.timeout)?,
        start_period: secs("StartPeriod", h.start_period)?,
        retries: match h.retries {
            0 => None,
            n => Some(u32::try_from(n).map_err(|_| {
                DockerError::bad_request(format!("Healthcheck.Retries: {n} is out of range"))
            })?),
        },
        restart_on_unhealthy: false,
    };
    if check.test.is_empty() {
        if check.interval.is_some()
            || check.timeout.is_some()
            || check.start_period.is_some()
            || check.retries.is_some()
        {
            return Err(DockerError::bad_request(
                "Healthcheck.Test: required with the other Healthcheck settings (the image's test with other timings is not available)",
            ));
        }
        return Ok(None);
    }
    Ok(Some(check))
}

fn check_fields(body: &Value) -> Result<()> {
    if !body.is_object() {
        return Err(DockerError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    // Clients (the Python SDK among them) declare each bind's target in `Volumes` too: those
    // entries ask for no volume of their own.
    let declared_binds_only;
    let body = if bind_targets_only(body) {
        let mut b = body.clone();
        if let Some(o) = b.as_object_mut() {
            o.remove("Volumes");
        }
        declared_binds_only = b;
        &declared_binds_only
    } else {
        body
    };
    fields::check(body, "", fields::CONFIG)?;
    let h = &body["HostConfig"];
    fields::check(h, "HostConfig", fields::HOST_CONFIG)?;
    fields::check(
        &h["RestartPolicy"],
        "HostConfig.RestartPolicy",
        fields::RESTART_POLICY,
    )?;
    fields::check(&h["LogConfig"], "HostConfig.LogConfig", fields::LOG_CONFIG)?;
    fields::check(&body["Healthcheck"], "Healthcheck", fields::HEALTHCHECK)?;
    if let Some(mounts) = h["Mounts"].as_array() {
        for (i, m) in mounts.iter().enumerate() {
            let at = format!("HostConfig.Mounts[{i}]");
            fields::check(m, &at, fields::MOUNT)?;
            fields::check(
                &m["BindOptions"],
                &format!("{at}.BindOptions"),
                fields::BIND_OPTIONS,
            )?;
        }
    }
    fields::check(
        &body["NetworkingConfig"],
        "NetworkingConfig",
        fields::NETWORKING_CONFIG,
    )
}

/// Whether every entry of `Volumes` is the target of a bind in `HostConfig.Binds` or `Mounts`.
fn bind_targets_only(body: &Value) -> bool {
    let Some(declared) = body["Volumes"].as_object().filter(|v| !v.is_empty()) else {
        return false;
    };
    let h = &body["HostConfig"];
    let mut targets: Vec<&str> = h["Binds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str()?.split(':').nth(1))
        .collect();
    targets.extend(
        h["Mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["Type"].as_str().is_none_or(|t| t == "bind"))
            .filter_map(|m| m["Target"].as_str()),
    );
    let norm = |p: &str| p.trim_end_matches('/').to_owned();
    declared
        .keys()
        .all(|k| targets.iter().any(|t| norm(t) == norm(k)))
}

/// Host namespaces and confinement options: 403 for what would open the host, 400 for what
/// is not available.
fn check_namespaces(h: &HostConfig) -> Result<()> {
    let host_ns = |field: &str, what: &str| {
        DockerError::forbidden(format!(
            "HostConfig.{field}: the host's {what} namespace is refused: a container in it could see and signal (or share memory with) the node's own processes, the storage daemon among them"
        ))
    };
    match h.pid_mode.as_str() {
        "" | "private" => {}
        "host" => return Err(host_ns("PidMode", "PID")),
        other => {
            return Err(unsupported(
                "PidMode",
                other,
                "only a private PID namespace",
            ))
        }
    }
    match h.ipc_mode.as_str() {
        "" | "private" | "shareable" => {}
        "host" => return Err(host_ns("IpcMode", "IPC")),
        other => {
            return Err(unsupported(
                "IpcMode",
                other,
                "only a private IPC namespace",
            ))
        }
    }
    if !matches!(h.userns_mode.as_str(), "" | "host") {
        return Err(unsupported(
            "UsernsMode",
            &h.userns_mode,
            "user namespaces are not used",
        ));
    }
    if !matches!(h.isolation.as_str(), "" | "default") {
        return Err(unsupported("Isolation", &h.isolation, "a Windows setting"));
    }
    if let Some(s) = h.memory_swappiness.filter(|s| *s != -1) {
        return Err(unsupported(
            "MemorySwappiness",
            &s.to_string(),
            "swap is not configurable per container",
        ));
    }
    for (i, opt) in h.security_opt.iter().enumerate() {
        let o = opt.replace('=', ":");
        if o == "no-new-privileges" || o == "no-new-privileges:true" {
            // Every container has it already.
            continue;
        }
        if o.contains("unconfined")
            || o.starts_with("label:disable")
            || o == "no-new-privileges:false"
        {
            return Err(DockerError::forbidden(format!(
                "HostConfig.SecurityOpt[{i}]: {opt:?} is refused: containers always run with their seccomp profile, masked kernel paths and no-new-privileges"
            )));
        }
        return Err(unsupported(
            &format!("SecurityOpt[{i}]"),
            opt,
            "only no-new-privileges (always on)",
        ));
    }
    Ok(())
}

fn unsupported(field: &str, value: &str, why: &str) -> DockerError {
    DockerError::bad_request(format!(
        "HostConfig.{field}: {value:?} is not supported by inarray: {why}"
    ))
}

fn check_stop_signal(s: &str) -> Result<()> {
    if matches!(s, "" | "SIGTERM" | "TERM" | "15") {
        return Ok(());
    }
    Err(DockerError::bad_request(format!(
        "StopSignal: {s:?} is not supported by inarray: a stop sends SIGTERM, then SIGKILL after the timeout"
    )))
}

/// `NetworkMode` (and `NetworkDisabled`, `NetworkingConfig`) → the native network.
fn network(b: &CreateBody, warnings: &mut Vec<String>) -> Result<Network> {
    let mode = b.host_config.network_mode.as_str();
    let net = match mode {
        _ if b.network_disabled => Network::None,
        "none" => Network::None,
        "host" => Network::Host,
        "" | "default" => {
            warnings.push(
                "NetworkMode default: the container gets a network namespace of its own with only loopback (as --network none); bridge networks are not available yet (issue #18), --network host shares the node's".into(),
            );
            Network::None
        }
        other => {
            return Err(DockerError::bad_request(format!(
                "HostConfig.NetworkMode: {other:?} is not supported by inarray: bridge and user-defined networks are not available yet (issue #18); use none or host"
            )))
        }
    };
    for (k, v) in &b.networking_config.endpoints_config {
        let named = k == mode || matches!(k.as_str(), "default" | "none" | "host");
        if !named || !neutral(v) {
            return Err(DockerError::bad_request(format!(
                "NetworkingConfig.EndpointsConfig.{k}: not supported by inarray: networks, aliases and addresses are not available yet (issue #18)"
            )));
        }
    }
    Ok(net)
}

pub(super) fn restart_policy(h: &HostConfig) -> Result<RestartPolicy> {
    let p = &h.restart_policy;
    let n = p.maximum_retry_count;
    if n < 0 {
        return Err(DockerError::bad_request(
            "HostConfig.RestartPolicy.MaximumRetryCount: must not be negative",
        ));
    }
    if n != 0 && p.name != "on-failure" {
        return Err(DockerError::bad_request(
            "HostConfig.RestartPolicy.MaximumRetryCount: only with the on-failure policy",
        ));
    }
    Ok(match p.name.as_str() {
        "" | "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure {
            max: (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX)),
        },
        other => {
            return Err(DockerError::bad_request(format!(
                "HostConfig.RestartPolicy.Name: {other:?} is not one of no, always, unless-stopped, on-failure"
            )))
        }
    })
}

/// Docker's resource fields → the native `Resources` (a nested cgroup inside the engine).
pub(super) fn resources(h: &HostConfig) -> Result<Resources> {
    let positive = |field: &str, v: i64| -> Result<Option<u64>> {
        match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => Err(DockerError::bad_request(format!(
                "HostConfig.{field}: {v} is negative"
            ))),
        }
    };
    let mut r = Resources {
        memory: positive("Memory", h.memory)?.map(Bytes),
        memory_reservation: positive("MemoryReservation", h.memory_reservation)?.map(Bytes),
        ..Resources::default()
    };
    let nano = positive("NanoCpus", h.nano_cpus)?;
    let quota = match h.cpu_quota {
        -1 | 0 => None,
        q => positive("CpuQuota", q)?,
    };
    let period = positive("CpuPeriod", h.cpu_period)?;
    r.cpus = match (nano, quota) {
        (Some(_), Some(_)) => return Err(DockerError::bad_request(
            "HostConfig.NanoCpus: conflicting options: NanoCpus and CpuQuota cannot both be set",
        )),
        (Some(n), None) => Some(n as f64 / 1e9),
        (None, Some(q)) => Some(q as f64 / period.unwrap_or(100_000) as f64),
        (None, None) if period.is_some() => {
            return Err(DockerError::bad_request(
                "HostConfig.CpuPeriod: only with CpuQuota (or use NanoCpus)",
            ))
        }
        (None, None) => None,
    };
    // Docker's own conversion of cgroup v1 shares to a cgroup v2 weight.
    r.cpu_weight = positive("CpuShares", h.cpu_shares)?
        .map(|s| (1 + (s.max(2) - 2) * 9999 / 262_142).clamp(1, 10_000));
    r.cpuset = Some(h.cpuset_cpus.clone()).filter(|c| !c.is_empty());
    r.pids = match h.pids_limit {
        None | Some(0) | Some(-1) => None,
        Some(n) if n > 0 => Some(n),
        Some(n) => {
            return Err(DockerError::bad_request(format!(
                "HostConfig.PidsLimit: {n} (use -1 or 0 for no limit)"
            )))
        }
    };
    r.io_weight = (h.blkio_weight > 0).then_some(h.blkio_weight);
    Ok(r)
}

/// `Binds` and bind `Mounts` → native volumes, with the Docker field each came from.
fn volumes(h: &HostConfig, array: &Path) -> Result<(Vec<Volume>, Vec<String>)> {
    let mut out = Vec::new();
    let mut origins = Vec::new();
    for (i, bind) in h.binds.iter().enumerate() {
        let field = format!("HostConfig.Binds[{i}]");
        let parts: Vec<&str> = bind.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, m] => (*s, *d, *m),
            _ => {
                return Err(DockerError::bad_request(format!(
                    "{field}: {bind:?} is not SOURCE:TARGET[:OPTIONS]"
                )))
            }
        };
        if !src.starts_with('/') {
            return Err(DockerError::bad_request(format!(
                "{field}: {src:?} names a volume: named volumes are not available yet (issue #19); bind an absolute path inside the array ({})",
                array.display()
            )));
        }
        let mut read_only = false;
        for opt in mode.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => read_only = true,
                "rw" | "private" | "rprivate" | "nocopy" | "consistent" | "cached" | "delegated" => {}
                other => {
                    return Err(DockerError::bad_request(format!(
                        "{field}: option {other:?} is not supported by inarray (binds are private; SELinux relabelling and shared propagation are not available)"
                    )))
                }
            }
        }
        out.push(Volume {
            source: in_array(&field, src, array)?,
            target: dst.to_owned(),
            read_only,
            // Docker creates a missing bind source directory.
            create: true,
            volume: None,
            subpath: None,
        });
        origins.push(field);
    }
    for (i, m) in h.mounts.iter().enumerate() {
        let field = format!("HostConfig.Mounts[{i}]");
        if m.kind != "bind" {
            return Err(DockerError::bad_request(format!(
                "{field}.Type: {:?} is not supported by inarray: only bind mounts of directories inside the array (named volumes: issue #19)",
                m.kind
            )));
        }
        if !matches!(
            m.bind_options.propagation.as_str(),
            "" | "private" | "rprivate"
        ) {
            return Err(DockerError::bad_request(format!(
                "{field}.BindOptions.Propagation: {:?} is not supported by inarray (binds are private)",
                m.bind_options.propagation
            )));
        }
        if !m.source.starts_with('/') {
            return Err(DockerError::bad_request(format!(
                "{field}.Source: {:?} must be an absolute path inside the array ({})",
                m.source,
                array.display()
            )));
        }
        out.push(Volume {
            source: in_array(&format!("{field}.Source"), &m.source, array)?,
            target: m.target.clone(),
            read_only: m.read_only,
            create: m.bind_options.create_mountpoint,
            volume: None,
            subpath: None,
        });
        origins.push(field);
    }
    Ok((out, origins))
}

/// An absolute host path inside the array → its path relative to the array root.
fn in_array(field: &str, src: &str, array: &Path) -> Result<String> {
    let outside = || {
        DockerError::bad_request(format!(
            "{field}: source {src:?} is outside the array ({}): only paths inside the array can be bound into a container",
            array.display()
        ))
    };
    if src.contains('\0') {
        return Err(DockerError::bad_request(format!(
            "{field}: source contains a NUL byte"
        )));
    }
    let mut parts = Vec::new();
    for c in Path::new(src).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => parts.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(DockerError::bad_request(format!(
                    "{field}: source {src:?} contains \"..\""
                )))
            }
        }
    }
    let root: Vec<_> = array
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if parts.len() < root.len() || parts[..root.len()] != root[..] {
        return Err(outside());
    }
    let rel: Vec<String> = parts[root.len()..]
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Ok(if rel.is_empty() {
        ".".into()
    } else {
        rel.join("/")
    })
}

/// A native field name (from the native validation) as the Docker field it came from.
pub fn docker_field(native: &str, origins: &[String]) -> String {
    if let Some(rest) = native.strip_prefix("volumes[") {
        if let Some((i, tail)) = rest.split_once(']') {
            if let Some(o) = i.parse::<usize>().ok().and_then(|i| origins.get(i)) {
                return format!(
                    "{o}{}",
                    if tail == ".source" && o.contains("Binds") {
                        ""
                    } else {
                        tail
                    }
                );
            }
        }
    }
    let map: BTreeMap<&str, &str> = [
        ("name", "name"),
        ("image", "Image"),
        ("command", "Cmd"),
        ("entrypoint", "Entrypoint"),
        ("env", "Env"),
        ("workdir", "WorkingDir"),
        ("user", "User"),
        ("engine", "Labels.inarray.engine"),
        ("labels", "Labels"),
        ("auto_remove", "HostConfig.AutoRemove"),
        ("healthcheck", "Healthcheck"),
        ("log", "HostConfig.LogConfig.Config"),
        ("resources.memory", "HostConfig.Memory"),
        (
            "resources.memory_reservation",
            "HostConfig.MemoryReservation",
        ),
        ("resources.cpus", "HostConfig.NanoCpus"),
        ("resources.cpu_weight", "HostConfig.CpuShares"),
        ("resources.cpuset", "HostConfig.CpusetCpus"),
        ("resources.pids", "HostConfig.PidsLimit"),
        ("resources.io_weight", "HostConfig.BlkioWeight"),
    ]
    .into_iter()
    .collect();
    let (head, tail) = native
        .find(['[', '.'])
        .filter(|_| !native.starts_with("resources."))
        .map_or((native, ""), |i| native.split_at(i));
    match map.get(head) {
        Some(d) => format!("{d}{tail}"),
        None => native.to_owned(),
    }
}

/// A native error message about a request translated from Docker, with Docker's field names.
pub fn docker_message(message: &str, origins: &[String]) -> String {
    let (field, rest) = match message.split_once(": ") {
        Some(x) => x,
        None => return message.to_owned(),
    };
    let rest = rest.replace(
        " (set create: true to create it)",
        " (a Mounts bind source must exist; a Binds source is created)",
    );
    format!("{}: {rest}", docker_field(field, origins))
}

#[cfg(test)]
#[path = "create_tests.rs"]
mod tests;
