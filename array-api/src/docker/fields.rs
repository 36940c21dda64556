//! Which fields of Docker's request bodies exist (the moby API's `container.Config`,
//! `HostConfig` with its `Resources`, `mount.Mount`, exec options, API 1.24 to 1.51) and what
//! inarray does with each: every body is checked against these tables before it is read, so
//! that nothing a caller asks for is silently dropped.
//!
//! - a field not in Docker's schema: 400, naming it (a typo is an error, as on the native API);
//! - `Honoured`: translated (the translation checks its values);
//! - `Ignored`: has no effect here by nature (client-side, Windows-only, image-build metadata);
//! - `Unsupported`: 400 naming it when it asks for anything (a non-neutral value), with why;
//! - `Forbidden`: 403 naming it when it asks for anything: it would weaken the array's
//!   protection.
//!
//! Neutral is what the Docker CLI sends when a flag is not given: `null`, `false`, `0`, `""`,
//! and arrays or objects of only such values (`[0, 0]`, `{"Type": "", "Config": {}}`).

use serde_json::Value;

use super::errors::DockerError;

#[derive(Clone, Copy, Debug)]
pub enum Rule {
    Honoured,
    Ignored,
    Unsupported(&'static str),
    Forbidden(&'static str),
}

use Rule::{Forbidden, Honoured, Ignored, Unsupported};

pub type Table = &'static [(&'static str, Rule)];

const NETWORKS: &str =
    "networks and published ports are not available yet (issue #18); use NetworkMode none or host";
const VOLUMES: &str = "named and anonymous volumes are not available yet (issue #19); bind a directory inside the array";
const NO_KNOB: &str = "inarray has no such setting";
const DEVICES: &str = "host devices are never given to containers: a container with a device node can read or write the array's disks beneath the file system";
const WINDOWS: &str = "a Windows-only setting";

/// `container.Config` (the create body's top level, with `HostConfig` and `NetworkingConfig`).
pub const CONFIG: Table = &[
    (
        "Hostname",
        Unsupported("the hostname is the first 12 digits of the container's id"),
    ),
    ("Domainname", Unsupported(NO_KNOB)),
    ("User", Honoured),
    ("AttachStdin", Ignored),
    ("AttachStdout", Ignored),
    ("AttachStderr", Ignored),
    ("ExposedPorts", Unsupported(NETWORKS)),
    ("Tty", Honoured),
    ("OpenStdin", Honoured),
    // Stdin closes when the attached client half-closes, which is what StdinOnce asks for.
    ("StdinOnce", Ignored),
    ("Env", Honoured),
    ("Cmd", Honoured),
    ("Healthcheck", Honoured),
    ("ArgsEscaped", Ignored),
    ("Image", Honoured),
    ("Volumes", Unsupported(VOLUMES)),
    ("WorkingDir", Honoured),
    ("Entrypoint", Honoured),
    ("NetworkDisabled", Honoured),
    ("MacAddress", Unsupported(NETWORKS)),
    ("OnBuild", Ignored),
    ("Labels", Honoured),
    ("StopSignal", Honoured),
    (
        "StopTimeout",
        Unsupported("the stop timeout is given with each stop (t=)"),
    ),
    ("Shell", Ignored),
    ("Secrets", Unsupported(NO_KNOB)),
    ("HostConfig", Honoured),
    ("NetworkingConfig", Honoured),
];

/// `HostConfig` with its embedded `Resources`.
pub const HOST_CONFIG: Table = &[
    ("Binds", Honoured),
    // The CLI writes the file itself.
    ("ContainerIDFile", Ignored),
    ("LogConfig", Honoured),
    ("NetworkMode", Honoured),
    ("PortBindings", Unsupported(NETWORKS)),
    ("RestartPolicy", Honoured),
    ("AutoRemove", Honoured),
    ("VolumeDriver", Unsupported(VOLUMES)),
    ("VolumesFrom", Unsupported(VOLUMES)),
    // The CLI sizes the terminal itself once the container runs.
    ("ConsoleSize", Ignored),
    ("Annotations", Unsupported(NO_KNOB)),
    ("CapAdd", Forbidden("extra capabilities are refused: containers get Docker's default set, never more")),
    ("CapDrop", Unsupported("containers get Docker's default capabilities; dropping some is not available yet")),
    ("CgroupnsMode", Unsupported(NO_KNOB)),
    ("Dns", Unsupported(NETWORKS)),
    ("DnsOptions", Unsupported(NETWORKS)),
    ("DnsSearch", Unsupported(NETWORKS)),
    ("ExtraHosts", Unsupported(NETWORKS)),
    ("GroupAdd", Unsupported(NO_KNOB)),
    ("IpcMode", Honoured),
    ("Cgroup", Unsupported(NO_KNOB)),
    ("Links", Unsupported(NETWORKS)),
    ("OomScoreAdj", Unsupported(NO_KNOB)),
    ("PidMode", Honoured),
    ("Privileged", Forbidden("privileged containers are refused: they could reach the host's devices and the array's disks beneath the file system")),
    ("PublishAllPorts", Unsupported(NETWORKS)),
    ("ReadonlyRootfs", Unsupported(NO_KNOB)),
    ("SecurityOpt", Honoured),
    ("StorageOpt", Unsupported(NO_KNOB)),
    ("Tmpfs", Unsupported("tmpfs mounts are not available yet")),
    ("UTSMode", Unsupported(NO_KNOB)),
    ("UsernsMode", Honoured),
    ("ShmSize", Unsupported(NO_KNOB)),
    ("Sysctls", Unsupported(NO_KNOB)),
    ("Runtime", Unsupported("inarray is the only runtime")),
    ("Isolation", Honoured),
    ("Mounts", Honoured),
    ("MaskedPaths", Forbidden("the masked paths cannot be changed: they keep the host's kernel interfaces out of reach")),
    ("ReadonlyPaths", Forbidden("the read-only paths cannot be changed: they keep the host's kernel interfaces out of reach")),
    ("Init", Unsupported("no init process is injected")),
    // Resources.
    ("CpuShares", Honoured),
    ("Memory", Honoured),
    ("NanoCpus", Honoured),
    ("CgroupParent", Unsupported("a container's cgroup is in its engine (label inarray.engine)")),
    ("BlkioWeight", Honoured),
    ("BlkioWeightDevice", Unsupported("per-device weights: use BlkioWeight (the array's disk)")),
    ("BlkioDeviceReadBps", Unsupported("per-device limits are not available here; engines limit the array's disk")),
    ("BlkioDeviceWriteBps", Unsupported("per-device limits are not available here; engines limit the array's disk")),
    ("BlkioDeviceReadIOps", Unsupported("per-device limits are not available here; engines limit the array's disk")),
    ("BlkioDeviceWriteIOps", Unsupported("per-device limits are not available here; engines limit the array's disk")),
    ("CpuPeriod", Honoured),
    ("CpuQuota", Honoured),
    ("CpuRealtimePeriod", Unsupported(NO_KNOB)),
    ("CpuRealtimeRuntime", Unsupported(NO_KNOB)),
    ("CpusetCpus", Honoured),
    ("CpusetMems", Unsupported(NO_KNOB)),
    ("Devices", Forbidden(DEVICES)),
    ("DeviceCgroupRules", Forbidden(DEVICES)),
    ("DeviceRequests", Forbidden(DEVICES)),
    ("DiskQuota", Unsupported(NO_KNOB)),
    ("KernelMemory", Unsupported(NO_KNOB)),
    ("KernelMemoryTCP", Unsupported(NO_KNOB)),
    ("MemoryReservation", Honoured),
    ("MemorySwap", Unsupported("swap is not configurable per container")),
    ("MemorySwappiness", Honoured),
    ("OomKillDisable", Unsupported(NO_KNOB)),
    ("PidsLimit", Honoured),
    ("Ulimits", Unsupported(NO_KNOB)),
    ("CpuCount", Unsupported(WINDOWS)),
    ("CpuPercent", Unsupported(WINDOWS)),
    ("IOMaximumIOps", Unsupported(WINDOWS)),
    ("IOMaximumBandwidth", Unsupported(WINDOWS)),
];

pub const RESTART_POLICY: Table = &[("Name", Honoured), ("MaximumRetryCount", Honoured)];

pub const LOG_CONFIG: Table = &[("Type", Honoured), ("Config", Honoured)];

/// `HealthConfig` (durations in nanoseconds).
pub const HEALTHCHECK: Table = &[
    ("Test", Honoured),
    ("Interval", Honoured),
    ("Timeout", Honoured),
    ("StartPeriod", Honoured),
    (
        "StartInterval",
        Unsupported("probes run every Interval, also during the start period"),
    ),
    ("Retries", Honoured),
];

pub const NETWORKING_CONFIG: Table = &[("EndpointsConfig", Honoured)];

/// `mount.Mount`.
pub const MOUNT: Table = &[
    ("Type", Honoured),
    ("Source", Honoured),
    ("Target", Honoured),
    ("ReadOnly", Honoured),
    ("Consistency", Ignored),
    ("BindOptions", Honoured),
    ("VolumeOptions", Unsupported(VOLUMES)),
    ("ImageOptions", Unsupported(VOLUMES)),
    (
        "TmpfsOptions",
        Unsupported("tmpfs mounts are not available yet"),
    ),
    ("ClusterOptions", Unsupported(NO_KNOB)),
];

pub const BIND_OPTIONS: Table = &[
    ("Propagation", Honoured),
    ("NonRecursive", Unsupported("binds are always recursive")),
    ("CreateMountpoint", Honoured),
    (
        "ReadOnlyNonRecursive",
        Unsupported("read-only binds are always recursive"),
    ),
    ("ReadOnlyForceRecursive", Ignored),
];

/// `ExecOptions` (`POST /containers/{id}/exec`).
pub const EXEC_CREATE: Table = &[
    ("User", Honoured),
    (
        "Privileged",
        Forbidden(
            "privileged execs are refused: an exec gets its container's privileges, never more",
        ),
    ),
    ("Tty", Honoured),
    ("ConsoleSize", Ignored),
    ("AttachStdin", Honoured),
    ("AttachStderr", Ignored),
    ("AttachStdout", Ignored),
    ("Detach", Ignored),
    ("DetachKeys", Honoured),
    ("Env", Honoured),
    ("WorkingDir", Honoured),
    ("Cmd", Honoured),
    // The container's id, repeated in the body by older clients (the Python SDK); the path
    // names the container.
    ("Container", Ignored),
];

/// `ExecStartOptions` (`POST /exec/{id}/start`).
pub const EXEC_START: Table = &[
    ("Detach", Honoured),
    ("Tty", Ignored),
    ("ConsoleSize", Ignored),
];

/// Fields whose value is a map (its keys are data, not field names): they ask for something as
/// soon as they have an entry (`"ExposedPorts": {"80/tcp": {}}`).
const MAPS: [&str; 7] = [
    "ExposedPorts",
    "Volumes",
    "PortBindings",
    "StorageOpt",
    "Tmpfs",
    "Sysctls",
    "Annotations",
];

/// Whether the field `name` with value `v` asks for something.
fn asks(name: &str, v: &Value) -> bool {
    if MAPS.contains(&name) {
        return !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty()));
    }
    !neutral(v)
}

/// Whether `v` asks for nothing (what a client sends for a setting it leaves alone).
pub fn neutral(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(neutral),
        Value::Object(o) => o.values().all(neutral),
    }
}

/// Checks the fields of the object `v` (null counts as empty) at `path` (`HostConfig`, …)
/// against `table`: 400 for a field Docker does not have or one asked for that inarray does not
/// support, 403 for one that is refused for safety. The message names the field.
pub fn check(v: &Value, path: &str, table: Table) -> Result<(), DockerError> {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    let obj = match v {
        Value::Null => return Ok(()),
        Value::Object(o) => o,
        _ => {
            return Err(DockerError::bad_request(format!(
                "{}: expected an object",
                if path.is_empty() { "body" } else { path }
            )))
        }
    };
    for (k, val) in obj {
        match table.iter().find(|(name, _)| name == k) {
            None => {
                return Err(DockerError::bad_request(format!(
                    "{}: unknown field (not in the Docker Engine API)",
                    at(k)
                )))
            }
            Some((_, Unsupported(why))) if asks(k, val) => {
                return Err(DockerError::bad_request(format!(
                    "{}: not supported by inarray: {why}",
                    at(k)
                )))
            }
            Some((_, Forbidden(why))) if asks(k, val) => {
                return Err(DockerError::forbidden(format!("{}: {why}", at(k))))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zero_values_pass_and_asking_for_something_names_the_field() {
        // What the Docker CLI 28.2 sends for `docker create busybox true` (captured).
        let body: Value =
            serde_json::from_str(include_str!("testdata/cli-28-create.json")).unwrap();
        check(&body, "", CONFIG).unwrap();
        let cli_defaults = &body["HostConfig"];
        check(cli_defaults, "HostConfig", HOST_CONFIG).unwrap();
        for (body, status, needle) in [
            (
                json!({"Privileged": true}),
                403,
                "HostConfig.Privileged: privileged",
            ),
            (
                json!({"Devices": [{"PathOnHost": "/dev/sda"}]}),
                403,
                "HostConfig.Devices: host devices",
            ),
            (json!({"CapAdd": ["SYS_ADMIN"]}), 403, "HostConfig.CapAdd"),
            (
                json!({"ShmSize": 67108864}),
                400,
                "HostConfig.ShmSize: not supported by inarray",
            ),
            (
                json!({"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}),
                400,
                "issue #18",
            ),
            (json!({"Bogus": 1}), 400, "HostConfig.Bogus: unknown field"),
            (
                json!({"Tmpfs": {"/run": ""}}),
                400,
                "HostConfig.Tmpfs: not supported",
            ),
            (
                json!({"privileged": true}),
                400,
                "HostConfig.privileged: unknown field",
            ),
        ] {
            let e = check(&body, "HostConfig", HOST_CONFIG).unwrap_err();
            assert_eq!(e.status.as_u16(), status, "{body}: {}", e.message);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        assert!(check(&json!([1]), "HostConfig", HOST_CONFIG).is_err());
        assert!(check(&Value::Null, "HostConfig", HOST_CONFIG).is_ok());
    }

    #[test]
    fn tables_have_no_duplicates() {
        for t in [
            CONFIG,
            HOST_CONFIG,
            MOUNT,
            BIND_OPTIONS,
            EXEC_CREATE,
            EXEC_START,
        ] {
            let mut names: Vec<&str> = t.iter().map(|(n, _)| *n).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(n, names.len());
        }
    }
}
