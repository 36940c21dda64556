//! `_ping` (GET and HEAD), `/version` and `/info`: what clients ask first, to negotiate the API
//! version and show the daemon.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use inarray_store::ContainerState;
use serde_json::{json, Value};

use super::errors::Result;
use super::{DockerState, API_VERSION_TEXT, MIN_API_VERSION_TEXT};

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/_ping", get(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/system/df", get(disk_usage))
}

/// "OK"; the version headers are added to every reply (`errors::docker_shaped`).
async fn ping() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
        ],
        "OK",
    )
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn version() -> Json<Value> {
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "inarray"},
        "Components": [{
            "Name": "Engine",
            "Version": v,
            "Details": {
                "ApiVersion": API_VERSION_TEXT,
                "MinAPIVersion": MIN_API_VERSION_TEXT,
                "Os": "linux",
                "Arch": arch(),
                "KernelVersion": kernel(),
            },
        }],
        "Version": v,
        "ApiVersion": API_VERSION_TEXT,
        "MinAPIVersion": MIN_API_VERSION_TEXT,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": kernel(),
        "BuildTime": "",
    }))
}

/// Total memory from /proc/meminfo (bytes; 0 if unreadable).
pub(super) fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into())
}

async fn info(State(st): State<DockerState>) -> Result<Json<Value>> {
    let rows = st.manager.list(true).await?;
    let count = |s: ContainerState| rows.iter().filter(|r| r.state == s).count();
    let running = count(ContainerState::Running);
    let images = st.manager.list_images().await?.len();
    let d = st.access.info();
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v = json!({
        "ID": host,
        "Containers": rows.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": rows.len() - running,
        "Images": images,
        "Driver": "overlay",
        "DriverStatus": [["Array", d.array.display().to_string()]],
        "DockerRootDir": d.state_dir.display().to_string(),
        "Plugins": {"Volume": [], "Network": ["host", "none"], "Authorization": null, "Log": ["json-file"]},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "OomKillDisable": false,
        "IPv4Forwarding": false,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    });
    let more = json!({
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if d.cgroup_mode == "v2" { "2" } else { "1" },
        "KernelVersion": kernel(),
        "OperatingSystem": os_name(),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem_total(),
        "Name": host,
        "Labels": [format!("inarray.array={}", d.array.display())],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"inarray": {"path": "inarray-shim"}},
        "DefaultRuntime": "inarray",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"],
        "Warnings": [],
    });
    if let (Some(a), Value::Object(b)) = (v.as_object_mut(), more) {
        a.extend(b);
    }
    Ok(Json(v))
}

/// `GET /system/df` (`docker system df`): the images with how many containers use each, the
/// layers' size counted once each (compressed blobs, as stored), the containers. Containers'
/// writable layers are not measured (walking 250 upper directories per call is the cost dockerd
/// pays; `SizeRw` is left out, which clients show as 0); volumes and build cache are none.
async fn disk_usage(State(st): State<DockerState>) -> Result<Json<Value>> {
    let rows = st.manager.list(true).await?;
    let mut users: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for r in &rows {
        *users.entry(r.image_id.clone()).or_default() += 1;
    }
    let mut layers: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut images = Vec::new();
    for img in st.manager.list_images().await? {
        for l in img
            .layers_as::<Vec<inarray_images::Layer>>()
            .unwrap_or_default()
        {
            layers.insert(l.diff_id, l.size);
        }
        let n = users.get(&img.id).copied().unwrap_or(0);
        let mut s = super::images::summary(img);
        s.containers = n;
        images.push(s);
    }
    let array = st.access.info().array.clone();
    let now = chrono::Utc::now();
    let mut containers = Vec::new();
    for r in rows {
        let image = super::views::image_defaults(&st.manager, &r).await;
        containers.push(super::views::summary(&st.manager, r, &image, &array, now)?);
    }
    Ok(Json(json!({
        "LayersSize": layers.values().sum::<u64>(),
        "Images": images,
        "Containers": containers,
        "Volumes": [],
        "BuildCache": [],
    })))
}
