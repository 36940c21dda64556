//! The typed container request: what a caller may ask for, validated before anything is created.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::volumes::{self, Volume};

/// A request to create a container (the body of `POST /v1/containers`, and a job's `container`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub image: String,
    /// Replaces the image's Cmd (the image's Entrypoint stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries, added to (and overriding) the image's Env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `uid[:gid]` or a user name from the image's /etc/passwd; default: the image's User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub network: Network,
    /// Ports of the container published on the node (bridge networks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::network::PortMapping>,
    /// More names other containers on its network resolve to it (bridge networks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The container's host name (default: the first 12 digits of its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Name servers for its /etc/resolv.conf (default: the network's, or the node's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// More lines of its /etc/hosts, each `name:address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// The engine to run in (default "default").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Limits inside the engine (a nested cgroup): never above the engine's own.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Start right away (default true).
    #[serde(default = "yes")]
    pub start: bool,
    /// When to pull the image from its registry (default `missing`).
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// Give the process a terminal (the shim keeps its master; attach to use it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Keep stdin open for attached clients (otherwise it reads /dev/null).
    #[serde(default, skip_serializing_if = "is_false")]
    pub open_stdin: bool,
    /// Delete the container once it has exited (its exit is recorded first; not with a restart
    /// policy). Done by the daemon's monitor, so it also happens for an exit seen at reconcile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_remove: bool,
    /// Free-form `key: value` metadata (the Docker API's labels; `inarray.engine` there picks
    /// the engine).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How big its log may grow (default: the daemon's `container_log_*` settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::LogLimits>,
    /// A health check (default: the image's `HEALTHCHECK`, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::HealthCheck>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// When `create` pulls the container's image from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when no image of that name is in the store.
    #[default]
    Missing,
    /// Every time (a tag may have moved); the store's copy is used only if the pull succeeds.
    Always,
    /// Never: the image must already be in the store.
    Never,
}

impl PullPolicy {
    fn is_default(&self) -> bool {
        *self == PullPolicy::Missing
    }
}

fn yes() -> bool {
    true
}

pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_VOLUMES: usize = 256;
pub const MAX_LABELS: usize = 256;
const MAX_LABEL_KEY: usize = 1024;
const MAX_LABEL_VALUE: usize = 16 * 1024;
const MAX_STRING: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Container names: [`inarray_store::names::CONTAINER`].
pub fn validate_name(name: &str) -> Result<(), InvalidField> {
    inarray_store::names::CONTAINER
        .check(name)
        .map_err(|reason| bad("name", reason))
}

fn check_strings(field: &str, items: &[String], max: usize) -> Result<(), InvalidField> {
    if items.len() > max {
        return Err(bad(
            field,
            format!("has {} entries, at most {max} allowed", items.len()),
        ));
    }
    for (i, s) in items.iter().enumerate() {
        if s.contains('\0') {
            return Err(bad(format!("{field}[{i}]"), "contains a NUL byte"));
        }
        if s.len() > MAX_STRING {
            return Err(bad(
                format!("{field}[{i}]"),
                format!("is longer than {MAX_STRING} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if labels.len() > MAX_LABELS {
        return Err(bad(
            "labels",
            format!("has {} entries, at most {MAX_LABELS} allowed", labels.len()),
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY || k.contains('\0') {
            return Err(bad(
                format!("labels[{k:?}]"),
                format!("a key must be 1 to {MAX_LABEL_KEY} bytes without NUL"),
            ));
        }
        if v.len() > MAX_LABEL_VALUE || v.contains('\0') {
            return Err(bad(
                format!("labels[{k:?}]"),
                format!("a value must be at most {MAX_LABEL_VALUE} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

impl ContainerConfig {
    /// Checks everything that can be checked without the image or the array.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if let Some(h) = &self.healthcheck {
            h.validate()?;
        }
        if let Some(l) = &self.log {
            l.validate().map_err(|reason| {
                let (field, reason) = reason.split_once(": ").unwrap_or(("log", &reason));
                bad(field, reason)
            })?;
        }
        if self.image.is_empty() || self.image.len() > 512 {
            return Err(bad("image", "must be an image reference of 1 to 512 bytes"));
        }
        if self.image.contains('\0') {
            return Err(bad("image", "contains a NUL byte"));
        }
        if let Some(c) = &self.command {
            check_strings("command", c, MAX_ARGS)?;
        }
        if let Some(e) = &self.entrypoint {
            check_strings("entrypoint", e, MAX_ARGS)?;
        }
        check_strings("env", &self.env, MAX_ENV)?;
        for (i, e) in self.env.iter().enumerate() {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(bad(format!("env[{i}]"), format!("{e:?} is not KEY=VALUE"))),
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') || w.contains('\0') || w.split('/').any(|c| c == "..") {
                return Err(bad(
                    "workdir",
                    format!("{w:?} must be an absolute path without \"..\""),
                ));
            }
            // cwd=/proc/self/fd/N is how CVE-2024-21626 reached host files through a leaked fd.
            if ["/proc", "/sys", "/dev"]
                .iter()
                .any(|k| w == k || w.starts_with(&format!("{k}/")))
            {
                return Err(bad(
                    "workdir",
                    format!("{w:?} is inside /proc, /sys or /dev"),
                ));
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.contains('\0') || u.len() > 256 {
                return Err(bad("user", "must be uid[:gid] or a user name"));
            }
        }
        if self.auto_remove && self.restart != RestartPolicy::No {
            return Err(bad(
                "auto_remove",
                format!(
                    "cannot be combined with a restart policy (restart is {})",
                    self.restart
                ),
            ));
        }
        check_labels(&self.labels)?;
        crate::network::validate_container(self)?;
        if self.volumes.len() > MAX_VOLUMES {
            return Err(bad("volumes", format!("at most {MAX_VOLUMES} volumes")));
        }
        if let Some(e) = &self.engine {
            crate::engines::validate_name(e)
                .map_err(|m| bad("engine", m.trim_start_matches("name: ").to_owned()))?;
            if e == crate::engines::STORAGE {
                return Err(bad(
                    "engine",
                    "storage is the daemon's own engine (API and NFS gateway); run containers in default or an engine of their own",
                ));
            }
        }
        self.resources.validate("resources").map_err(|m| {
            let (field, reason) = m.split_once(": ").unwrap_or(("resources", &m));
            bad(field, reason)
        })?;
        volumes::validate_all(&self.volumes).map_err(|e| match e {
            volumes::VolumeError::Invalid { field, reason } => InvalidField { field, reason },
            other => bad("volumes", other.to_string()),
        })?;
        for (i, v) in self.volumes.iter().enumerate() {
            if let Some(name) = &v.volume {
                inarray_store::names::VOLUME
                    .check(name)
                    .map_err(|m| bad(format!("volumes[{i}].volume"), m))?;
            }
        }
        Ok(())
    }
}

/// When the daemon starts a container again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    /// Restart on a non-zero exit, at most `max` times (unlimited when `None`).
    OnFailure {
        max: Option<u32>,
    },
    UnlessStopped,
}

impl RestartPolicy {
    /// Whether an exit with `exit_code` after `restarts` restarts calls for another start.
    /// A stop an operator asked for never restarts.
    pub fn should_restart(self, exit_code: i64, restarts: i64, stop_requested: bool) -> bool {
        if stop_requested {
            return false;
        }
        match self {
            Self::No => false,
            Self::Always | Self::UnlessStopped => true,
            Self::OnFailure { max } => {
                exit_code != 0 && max.is_none_or(|m| restarts < i64::from(m))
            }
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::No => f.write_str("no"),
            Self::Always => f.write_str("always"),
            Self::OnFailure { max: None } => f.write_str("on-failure"),
            Self::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
            Self::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "no" | "" => Self::No,
            "always" => Self::Always,
            "unless-stopped" => Self::UnlessStopped,
            "on-failure" => Self::OnFailure { max: None },
            other => match other.strip_prefix("on-failure:") {
                Some(n) => Self::OnFailure {
                    max: Some(n.parse().map_err(|_| format!("bad retry count in {s:?}"))?),
                },
                None => {
                    return Err(format!(
                        "{s:?} is not one of no, always, on-failure[:N], unless-stopped"
                    ))
                }
            },
        })
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which network a container is on: `none`, `host`, or the name of a bridge network (`bridge`
/// is the built-in one). Written as that one string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A private network namespace with only loopback.
    #[default]
    None,
    /// The node's network namespace.
    Host,
    /// A namespace of its own attached to a bridge network (by name) through netavark.
    Bridge(String),
}

impl Network {
    /// The bridge network's name, if it is on one.
    pub fn bridge(&self) -> Option<&str> {
        match self {
            Self::Bridge(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Host => f.write_str("host"),
            Self::Bridge(n) => f.write_str(n),
        }
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "none" => Self::None,
            "host" => Self::Host,
            other => Self::Bridge(other.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<ContainerConfig, String> {
        let c: ContainerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn parses_and_defaults() {
        let c = cfg(r#"{"image":"busybox","command":["true"]}"#).unwrap();
        assert!(c.start);
        assert_eq!(c.restart, RestartPolicy::No);
        assert_eq!(c.network, Network::None);
        let c = cfg(r#"{"image":"b","restart":"on-failure:3","network":"host","start":false}"#)
            .unwrap();
        assert_eq!(c.restart, RestartPolicy::OnFailure { max: Some(3) });
        assert!(!c.start);
        assert!(!c.auto_remove && c.labels.is_empty());
        // Both left out of the stored form when unset: rows written before they existed and
        // rows written now read the same.
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            !json.contains("auto_remove") && !json.contains("labels"),
            "{json}"
        );
        let c = cfg(r#"{"image":"b","auto_remove":true,"labels":{"a.b":"c"}}"#).unwrap();
        assert!(c.auto_remove);
        assert_eq!(c.labels["a.b"], "c");
    }

    #[test]
    fn refuses_bad_input_naming_the_field() {
        let cases = [
            (r#"{"image":"b","bogus":1}"#, "unknown field"),
            (r#"{"image":"b","restart":"sometimes"}"#, "is not one of"),
            (r#"{"image":"b","env":["NOEQUALS"]}"#, "env[0]"),
            (r#"{"image":"b","env":["=x"]}"#, "env[0]"),
            (r#"{"image":"b","name":"../x"}"#, "name"),
            (r#"{"image":"b","workdir":"rel"}"#, "workdir"),
            (r#"{"image":"b","workdir":"/proc/self/fd/7"}"#, "workdir"),
            (r#"{"image":"b","command":["a\u0000b"]}"#, "command[0]"),
            (
                r#"{"image":"b","volumes":[{"source":"../../etc","target":"/x"}]}"#,
                "volumes[0].source",
            ),
            (
                r#"{"image":"b","volumes":[{"source":"/etc","target":"/x"}]}"#,
                "volumes[0].source",
            ),
            (
                r#"{"image":"b","volumes":[{"source":"a","target":"x"}]}"#,
                "volumes[0].target",
            ),
            (r#"{"image":"","command":[]}"#, "image"),
            (r#"{"image":5}"#, "invalid type"),
            (
                r#"{"image":"b","auto_remove":true,"restart":"always"}"#,
                "auto_remove: cannot be combined",
            ),
            (r#"{"image":"b","labels":{"":"x"}}"#, "labels[\"\"]"),
            (r#"{"image":"b","labels":{"k":"a\u0000"}}"#, "labels[\"k\"]"),
        ];
        for (json, want) in cases {
            let e = cfg(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn restart_policy_rules() {
        use RestartPolicy::*;
        assert!(!No.should_restart(1, 0, false));
        assert!(Always.should_restart(0, 100, false));
        assert!(!Always.should_restart(0, 0, true));
        assert!(OnFailure { max: Some(2) }.should_restart(1, 1, false));
        assert!(!OnFailure { max: Some(2) }.should_restart(1, 2, false));
        assert!(!OnFailure { max: None }.should_restart(0, 0, false));
        for p in [
            "no",
            "always",
            "on-failure",
            "on-failure:5",
            "unless-stopped",
        ] {
            assert_eq!(p.parse::<RestartPolicy>().unwrap().to_string(), p);
        }
    }
}
