//! Our own serde types for the part of the Docker Engine API we serve (why not
//! `bollard-stubs`: docs/design/docker-api.md). Requests are read leniently here — `null` for
//! any field, a string or a list for `Cmd`/`Entrypoint` — because [`super::fields`] has already
//! refused every field that is unknown or asks for what inarray does not do. Replies carry the
//! fields the Docker CLI, compose and the SDKs read; Docker clients ignore fields they do not
//! know and take missing ones as zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `null` → the default (Go clients send `null` for empty lists and maps).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `StrSlice`: a string or a list of strings (`null`: unset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrSlice(pub Option<Vec<String>>);

impl<'de> Deserialize<'de> for StrSlice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(Self(Option::<Raw>::deserialize(d)?.map(|r| match r {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        })))
    }
}

/// `POST /containers/create`: `container.Config` with `HostConfig` and `NetworkingConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    #[serde(deserialize_with = "nullable")]
    pub user: String,
    #[serde(deserialize_with = "nullable")]
    pub tty: bool,
    #[serde(deserialize_with = "nullable")]
    pub open_stdin: bool,
    #[serde(deserialize_with = "nullable")]
    pub env: Vec<String>,
    pub cmd: StrSlice,
    #[serde(deserialize_with = "nullable")]
    pub image: String,
    #[serde(deserialize_with = "nullable")]
    pub working_dir: String,
    pub entrypoint: StrSlice,
    #[serde(deserialize_with = "nullable")]
    pub network_disabled: bool,
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub stop_signal: String,
    pub healthcheck: Option<HealthConfig>,
    #[serde(deserialize_with = "nullable")]
    pub host_config: HostConfig,
    #[serde(deserialize_with = "nullable")]
    pub networking_config: NetworkingConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    #[serde(deserialize_with = "nullable")]
    pub binds: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub log_config: LogConfig,
    #[serde(deserialize_with = "nullable")]
    pub network_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub restart_policy: RestartPolicy,
    #[serde(deserialize_with = "nullable")]
    pub auto_remove: bool,
    #[serde(deserialize_with = "nullable")]
    pub ipc_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub pid_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub security_opt: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub userns_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub isolation: String,
    #[serde(deserialize_with = "nullable")]
    pub mounts: Vec<Mount>,
    #[serde(deserialize_with = "nullable")]
    pub cpu_shares: i64,
    #[serde(deserialize_with = "nullable")]
    pub memory: i64,
    #[serde(deserialize_with = "nullable")]
    pub nano_cpus: i64,
    #[serde(deserialize_with = "nullable")]
    pub blkio_weight: u16,
    #[serde(deserialize_with = "nullable")]
    pub cpu_period: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_quota: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpuset_cpus: String,
    #[serde(deserialize_with = "nullable")]
    pub memory_reservation: i64,
    pub memory_swappiness: Option<i64>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
}

/// `Healthcheck` (durations in nanoseconds; 0 inherits).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    #[serde(deserialize_with = "nullable")]
    pub test: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub interval: i64,
    #[serde(deserialize_with = "nullable")]
    pub timeout: i64,
    #[serde(deserialize_with = "nullable")]
    pub start_period: i64,
    #[serde(deserialize_with = "nullable")]
    pub retries: i64,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub maximum_retry_count: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    #[serde(deserialize_with = "nullable")]
    pub endpoints_config: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    #[serde(rename = "Type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub source: String,
    #[serde(deserialize_with = "nullable")]
    pub target: String,
    #[serde(deserialize_with = "nullable")]
    pub read_only: bool,
    #[serde(deserialize_with = "nullable")]
    pub bind_options: BindOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    #[serde(deserialize_with = "nullable")]
    pub propagation: String,
    #[serde(deserialize_with = "nullable")]
    pub create_mountpoint: bool,
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecCreateBody {
    #[serde(deserialize_with = "nullable")]
    pub user: String,
    #[serde(deserialize_with = "nullable")]
    pub tty: bool,
    #[serde(deserialize_with = "nullable")]
    pub attach_stdin: bool,
    #[serde(deserialize_with = "nullable")]
    pub detach_keys: String,
    #[serde(deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub working_dir: String,
    pub cmd: StrSlice,
}

/// `POST /exec/{id}/start`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecStartBody {
    #[serde(deserialize_with = "nullable")]
    pub detach: bool,
}

/// An entry of `GET /containers/json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    pub created: i64,
    pub ports: Vec<Value>,
    pub labels: BTreeMap<String, String>,
    pub state: &'static str,
    pub status: String,
    pub host_config: SummaryHostConfig,
    pub network_settings: Value,
    pub mounts: Vec<MountPoint>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryHostConfig {
    pub network_mode: String,
}

/// A mount as inspect and list show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub source: String,
    pub destination: String,
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    pub propagation: &'static str,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub image: String,
    pub log_path: String,
    pub name: String,
    pub restart_count: i64,
    pub driver: &'static str,
    pub platform: &'static str,
    #[serde(rename = "ExecIDs")]
    pub exec_ids: Option<Vec<String>>,
    pub host_config: InspectHostConfig,
    pub mounts: Vec<MountPoint>,
    pub config: InspectConfig,
    pub network_settings: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: &'static str,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    /// While running with a health check: `{Status, FailingStreak, Log}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectHostConfig {
    pub binds: Vec<String>,
    pub network_mode: String,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub privileged: bool,
    pub memory: i64,
    pub memory_reservation: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpuset_cpus: String,
    pub pids_limit: Option<i64>,
    pub blkio_weight: u16,
    pub log_config: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    pub hostname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
}

/// An entry of `GET /images/json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: i64,
    pub size: i64,
    pub shared_size: i64,
    pub virtual_size: i64,
    pub labels: BTreeMap<String, String>,
    pub containers: i64,
}

/// `GET /images/{name}/json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    pub created: String,
    pub config: Value,
    pub architecture: &'static str,
    pub os: &'static str,
    pub size: i64,
    pub virtual_size: i64,
    #[serde(rename = "RootFS")]
    pub root_fs: Value,
    pub metadata: Value,
}

/// `GET /exec/{id}/json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub process_config: Value,
    pub open_stdin: bool,
    pub open_stderr: bool,
    pub open_stdout: bool,
    pub can_remove: bool,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub detach_keys: String,
    pub pid: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nulls_and_both_forms_of_cmd_read() {
        let b: CreateBody = serde_json::from_value(json!({
            "Image": "busybox", "Cmd": "sh", "Entrypoint": null, "Env": null, "Labels": null,
            "HostConfig": {"Binds": null, "RestartPolicy": null, "PidsLimit": null, "Memory": 0},
            "NetworkingConfig": null
        }))
        .unwrap();
        assert_eq!(b.cmd, StrSlice(Some(vec!["sh".into()])));
        assert_eq!(b.entrypoint, StrSlice(None));
        assert!(b.env.is_empty() && b.host_config.binds.is_empty());
        assert_eq!(b.host_config.pids_limit, None);
        let b: CreateBody =
            serde_json::from_value(json!({"Image": "b", "Cmd": ["a", "b"]})).unwrap();
        assert_eq!(b.cmd, StrSlice(Some(vec!["a".into(), "b".into()])));
    }
}
