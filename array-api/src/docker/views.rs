//! `GET /containers/json` (with `all`, `limit` and the common `filters`) and
//! `GET /containers/{id}/json`: native rows shown as Docker shows containers.

use std::collections::BTreeMap;
use std::path::Path;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use inarray_runtime::{ContainerConfig, Manager, Network};
use inarray_store::{ContainerRow, ContainerState as Native};
use serde_json::{json, Value};

use super::errors::{DockerError, Result};
use super::types::{
    ContainerInspect, ContainerState, ContainerSummary, InspectConfig, InspectHostConfig,
    MountPoint, RestartPolicy, SummaryHostConfig,
};
use super::{DockerQuery, DockerState};
use crate::extract::Path as UrlPath;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/containers/json", get(list))
        .route("/containers/{id}/json", get(inspect))
}

/// Docker's name for a native state.
pub fn status(s: Native) -> &'static str {
    match s {
        Native::Created => "created",
        Native::Running => "running",
        Native::Restarting => "restarting",
        Native::Exited => "exited",
        Native::Dead => "dead",
    }
}

/// Go's zero time, which Docker shows for "never".
const NEVER: &str = "0001-01-01T00:00:00Z";

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || NEVER.into(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    )
}

/// Like Docker's `units.HumanDuration`: "Less than a second", "3 seconds", "About a minute", ….
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (m, h, days) = (s / 60, s / 3600, s / 86400);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        _ if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if days < 14 => format!("{days} days"),
        _ if days < 90 => format!("{} weeks", days / 7),
        _ if days < 730 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    }
}

/// Docker's `State.Health` of a running container with a check.
fn health(m: &Manager, r: &ContainerRow) -> Option<Value> {
    if r.state != Native::Running {
        return None;
    }
    let h = m.health(&r.id)?;
    let log: Vec<Value> = h
        .log
        .iter()
        .map(|p| json!({"Start": time(Some(p.start)), "End": time(Some(p.end)), "ExitCode": p.exit_code, "Output": p.output}))
        .collect();
    Some(json!({"Status": h.status.as_str(), "FailingStreak": h.failing_streak, "Log": log}))
}

/// The `Status` column of `docker ps`.
fn status_text(m: &Manager, r: &ContainerRow, now: DateTime<Utc>) -> String {
    let ago = |t: Option<DateTime<Utc>>| human_duration(now - t.unwrap_or(now));
    match r.state {
        Native::Created => "Created".into(),
        Native::Running => match m.health(&r.id) {
            Some(h) => format!("Up {} ({})", ago(r.started_at), h.status.as_str()),
            None => format!("Up {}", ago(r.started_at)),
        },
        Native::Restarting => format!(
            "Restarting ({}) {} ago",
            r.exit_code.unwrap_or(-1),
            ago(r.finished_at)
        ),
        Native::Exited => format!(
            "Exited ({}) {} ago",
            r.exit_code.unwrap_or(-1),
            ago(r.finished_at)
        ),
        Native::Dead => "Dead".into(),
    }
}

fn stored(r: &ContainerRow) -> Result<ContainerConfig> {
    serde_json::from_str(&r.spec).map_err(DockerError::internal)
}

fn network_mode(n: &Network) -> String {
    n.to_string()
}

fn mounts(cfg: &ContainerConfig, array: &Path) -> Vec<MountPoint> {
    cfg.volumes
        .iter()
        .map(|v| MountPoint {
            kind: "bind",
            source: array.join(&v.source).display().to_string(),
            destination: v.target.clone(),
            mode: if v.read_only { "ro" } else { "" }.into(),
            rw: !v.read_only,
            propagation: "rprivate",
        })
        .collect()
}

/// The image's defaults, for what a container does not set itself.
pub(super) async fn image_defaults(m: &Manager, r: &ContainerRow) -> inarray_images::RuntimeConfig {
    match m.find_image(&r.image_id).await {
        Ok(img) => img.config_as().unwrap_or_default(),
        Err(_) => Default::default(),
    }
}

/// The process's argv as the runtime builds it (Entrypoint + Cmd with the request's overrides).
fn argv(
    cfg: &ContainerConfig,
    image: &inarray_images::RuntimeConfig,
) -> (Vec<String>, Vec<String>) {
    let entry = cfg
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&cfg.command, &cfg.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    (entry, cmd)
}

pub(super) fn summary(
    m: &Manager,
    r: ContainerRow,
    image: &inarray_images::RuntimeConfig,
    array: &Path,
    now: DateTime<Utc>,
) -> Result<ContainerSummary> {
    let cfg = stored(&r)?;
    let (entry, cmd) = argv(&cfg, image);
    Ok(ContainerSummary {
        names: vec![format!("/{}", r.name)],
        image: r.image_ref.clone(),
        image_id: r.image_id.clone(),
        command: entry.into_iter().chain(cmd).collect::<Vec<_>>().join(" "),
        created: r.created_at.timestamp(),
        ports: Vec::new(),
        state: status(r.state),
        status: status_text(m, &r, now),
        host_config: SummaryHostConfig {
            network_mode: network_mode(&cfg.network),
        },
        network_settings: json!({"Networks": {}}),
        mounts: mounts(&cfg, array),
        labels: cfg.labels,
        id: r.id,
    })
}

/// The `filters` of `GET /containers/json`: `{"status": ["exited"]}` or (older clients)
/// `{"status": {"exited": true}}`; status, name, id, label, ancestor, exited.
struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    fn parse(raw: Option<&str>) -> Result<Self> {
        let out = super::filters(raw)?;
        for (k, list) in &out {
            if !matches!(
                k.as_str(),
                "status" | "name" | "id" | "label" | "ancestor" | "exited"
            ) {
                return Err(DockerError::bad_request(format!(
                    "invalid filter '{k}' (inarray serves status, name, id, label, ancestor, exited)"
                )));
            }
            if k == "status" {
                if let Some(bad) = list.iter().find(|s| {
                    !matches!(
                        s.as_str(),
                        "created"
                            | "restarting"
                            | "running"
                            | "removing"
                            | "paused"
                            | "exited"
                            | "dead"
                    )
                }) {
                    return Err(DockerError::bad_request(format!(
                        "invalid filter 'status={bad}'"
                    )));
                }
            }
        }
        Ok(Self(out))
    }

    /// Every filter key matches (within a key, any value does).
    fn matches(&self, r: &ContainerRow, cfg: &ContainerConfig) -> bool {
        self.0.iter().all(|(k, vals)| {
            vals.iter().any(|v| match k.as_str() {
                "status" => status(r.state) == v,
                // Docker matches names as a regular expression; a substring covers the common use.
                "name" => r.name.contains(v.trim_start_matches('/')),
                "id" => r.id.starts_with(v.as_str()),
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => cfg.labels.get(lk).is_some_and(|x| x == lv),
                    None => cfg.labels.contains_key(v.as_str()),
                },
                "ancestor" => r.image_ref == *v || r.image_id.starts_with(v.as_str()),
                "exited" => {
                    r.state == Native::Exited
                        && r.exit_code.map(|c| c.to_string()).as_deref() == Some(v)
                }
                _ => false,
            })
        })
    }

    /// Whether the filters ask for containers that are not running (so `all` is implied).
    fn wants_stopped(&self) -> bool {
        self.0.contains_key("exited")
            || self
                .0
                .get("status")
                .is_some_and(|s| s.iter().any(|x| x != "running"))
    }
}

async fn list(
    State(st): State<DockerState>,
    q: DockerQuery,
) -> Result<Json<Vec<ContainerSummary>>> {
    let filters = Filters::parse(q.str("filters"))?;
    let limit = q.int("limit")?.filter(|l| *l > 0);
    let all = q.bool("all") || limit.is_some() || filters.wants_stopped();
    let mut rows = st.manager.list(all).await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let array = st.access.info().array.clone();
    let now = Utc::now();
    let mut out = Vec::new();
    for r in rows {
        let cfg = stored(&r)?;
        if !filters.matches(&r, &cfg) {
            continue;
        }
        let image = image_defaults(&st.manager, &r).await;
        out.push(summary(&st.manager, r, &image, &array, now)?);
        if limit.is_some_and(|l| out.len() as i64 >= l) {
            break;
        }
    }
    Ok(Json(out))
}

async fn inspect(
    State(st): State<DockerState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<ContainerInspect>> {
    let r = st.manager.get(&id).await?;
    Ok(Json(inspect_row(&st, r).await?))
}

pub async fn inspect_row(st: &DockerState, r: ContainerRow) -> Result<ContainerInspect> {
    let cfg = stored(&r)?;
    let image = image_defaults(&st.manager, &r).await;
    let array = st.access.info().array.clone();
    let (entry, cmd) = argv(&cfg, &image);
    let mut argv_all = entry.iter().chain(cmd.iter()).cloned();
    let path = argv_all.next().unwrap_or_default();
    let mut env = image.env.clone();
    for kv in &cfg.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    let mounts = mounts(&cfg, &array);
    let binds = mounts
        .iter()
        .map(|m| {
            format!(
                "{}:{}{}",
                m.source,
                m.destination,
                if m.rw { "" } else { ":ro" }
            )
        })
        .collect();
    let res = &cfg.resources;
    let (name, max) = match cfg.restart {
        inarray_runtime::RestartPolicy::No => ("no", 0),
        inarray_runtime::RestartPolicy::Always => ("always", 0),
        inarray_runtime::RestartPolicy::UnlessStopped => ("unless-stopped", 0),
        inarray_runtime::RestartPolicy::OnFailure { max } => ("on-failure", max.unwrap_or(0)),
    };
    Ok(ContainerInspect {
        created: time(Some(r.created_at)),
        path,
        args: argv_all.collect(),
        state: ContainerState {
            status: status(r.state),
            running: r.state == Native::Running,
            paused: false,
            restarting: r.state == Native::Restarting,
            oom_killed: r.oom_killed,
            dead: r.state == Native::Dead,
            pid: if r.state == Native::Running {
                r.pid.unwrap_or(0)
            } else {
                0
            },
            exit_code: r.exit_code.unwrap_or(0),
            error: r.error.clone().unwrap_or_default(),
            started_at: time(r.started_at),
            finished_at: time(r.finished_at),
            health: health(&st.manager, &r),
        },
        image: r.image_id.clone(),
        log_path: st.manager.paths(&r.id).log().display().to_string(),
        name: format!("/{}", r.name),
        restart_count: r.restart_count,
        driver: "overlay",
        platform: "linux",
        exec_ids: None,
        host_config: InspectHostConfig {
            binds,
            network_mode: network_mode(&cfg.network),
            restart_policy: RestartPolicy {
                name: name.into(),
                maximum_retry_count: max.into(),
            },
            auto_remove: cfg.auto_remove,
            privileged: false,
            memory: res.memory.map_or(0, |b| b.0 as i64),
            memory_reservation: res.memory_reservation.map_or(0, |b| b.0 as i64),
            nano_cpus: res.cpus.map_or(0, |c| (c * 1e9).round() as i64),
            cpu_shares: 0,
            cpuset_cpus: res.cpuset.clone().unwrap_or_default(),
            pids_limit: res.pids,
            blkio_weight: res.io_weight.unwrap_or(0),
            log_config: json!({"Type": "json-file", "Config": {}}),
        },
        mounts,
        config: InspectConfig {
            hostname: r.id.chars().take(12).collect(),
            user: cfg.user.clone().or(image.user.clone()).unwrap_or_default(),
            attach_stdin: false,
            attach_stdout: false,
            attach_stderr: false,
            tty: cfg.tty,
            open_stdin: cfg.open_stdin,
            stdin_once: false,
            env,
            cmd: Some(cmd),
            image: r.image_ref.clone(),
            working_dir: cfg
                .workdir
                .clone()
                .or(image.working_dir.clone())
                .unwrap_or_default(),
            entrypoint: (!entry.is_empty()).then_some(entry),
            labels: cfg.labels.clone(),
        },
        network_settings: json!({"Networks": {}, "Ports": {}}),
        id: r.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        let s = chrono::Duration::seconds;
        assert_eq!(human_duration(s(0)), "Less than a second");
        assert_eq!(human_duration(s(5)), "5 seconds");
        assert_eq!(human_duration(s(65)), "About a minute");
        assert_eq!(human_duration(s(600)), "10 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(5 * 86400)), "5 days");
    }

    #[test]
    fn filters_in_both_forms() {
        let f = Filters::parse(Some(r#"{"status":{"exited":true}}"#)).unwrap();
        assert!(f.wants_stopped());
        let f2 = Filters::parse(Some(r#"{"status":["exited"],"label":["a=b"]}"#)).unwrap();
        assert_eq!(f2.0["status"], vec!["exited".to_string()]);
        assert_eq!(f.0["status"], f2.0["status"]);
        assert!(Filters::parse(Some(r#"{"volume":["x"]}"#)).is_err());
        assert!(Filters::parse(Some(r#"{"status":["sleeping"]}"#)).is_err());
        assert!(!Filters::parse(Some(r#"{"status":["running"]}"#))
            .unwrap()
            .wants_stopped());
    }
}
