//! `GET /containers/{id}/stats` and `GET /containers/{id}/top`: the native usage (the container's
//! cgroup) and process list (`/proc`) shown as Docker shows them.
//!
//! Stats: one document a second while `stream` (Docker's default), each with the one before as
//! `precpu_stats`, so a client computes CPU % as `docker stats` does; `stream=false` waits for a
//! second sample (as dockerd does) unless `one-shot`.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Local, Utc};
use inarray_runtime::engines::Usage;
use inarray_runtime::procs::{self, Process};
use inarray_runtime::Manager;
use inarray_store::{ContainerRow, ContainerState};
use serde_json::{json, Value};

use super::errors::{DockerError, Result};
use super::{DockerQuery, DockerState};
use crate::extract::Path as UrlPath;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/containers/{id}/stats", get(stats))
        .route("/containers/{id}/top", get(top))
}

/// One sample: the usage, the host's CPU time, and when.
struct Sample {
    usage: Usage,
    system_ns: u64,
    at: DateTime<Utc>,
}

async fn sample(m: &Manager, id: &str) -> Option<Sample> {
    let usage = m.container_usage(id).await.ok()?;
    Some(Sample {
        usage,
        system_ns: procs::system_cpu_ns(Path::new("/proc")),
        at: Utc::now(),
    })
}

/// What a stats document says beside the samples.
struct Subject {
    id: String,
    name: String,
    device: (u64, u64),
    cpus: u64,
    mem_total: u64,
}

fn cpu_stats(s: Option<&Sample>, cpus: u64) -> Value {
    let Some(s) = s else {
        return json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                      "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}});
    };
    let c = &s.usage.cpu;
    json!({
        "cpu_usage": {
            "total_usage": c.usage_ns,
            "usage_in_kernelmode": c.system_ns,
            "usage_in_usermode": c.user_ns,
        },
        "system_cpu_usage": s.system_ns,
        "online_cpus": cpus,
        "throttling_data": {
            "periods": 0,
            "throttled_periods": c.throttled_periods,
            "throttled_time": c.throttled_ns,
        },
    })
}

/// A Docker stats document from a sample and the one before it.
fn document(who: &Subject, now: &Sample, pre: Option<&Sample>) -> Value {
    let u = &now.usage;
    let (major, minor) = who.device;
    let io =
        |op: &str, value: u64| json!({"major": major, "minor": minor, "op": op, "value": value});
    let mut pids = json!({"current": u.pids.current});
    if let Some(l) = u.pids.limit {
        pids["limit"] = json!(l);
    }
    json!({
        "id": who.id,
        "name": format!("/{}", who.name),
        "read": now.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "preread": pre.map_or_else(
            || "0001-01-01T00:00:00Z".to_owned(),
            |p| p.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        ),
        "pids_stats": pids,
        "blkio_stats": {
            "io_service_bytes_recursive": [io("read", u.io.read_bytes), io("write", u.io.write_bytes)],
            "io_serviced_recursive": [io("read", u.io.read_ops), io("write", u.io.write_ops)],
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_stats(Some(now), who.cpus),
        "precpu_stats": cpu_stats(pre, who.cpus),
        "memory_stats": {
            "usage": u.memory.current,
            "max_usage": u.memory.peak,
            "failcnt": u.memory.failcnt,
            "limit": u.memory.limit.unwrap_or(who.mem_total),
            "stats": {},
        },
    })
}

async fn stats(
    State(st): State<DockerState>,
    UrlPath(id): UrlPath<String>,
    q: DockerQuery,
) -> Result<Response> {
    let row = st.manager.get(&id).await?;
    let stream = q.raw_bool("stream").unwrap_or(true);
    let one_shot = q.bool("one-shot");
    if one_shot && stream {
        return Err(DockerError::bad_request("one-shot: only with stream=false"));
    }
    let who = Subject {
        id: row.id.clone(),
        name: row.name.clone(),
        device: st.manager.array_device().unwrap_or((0, 0)),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        mem_total: super::system::mem_total(),
    };
    if row.state != ContainerState::Running {
        // Docker answers a stopped container with one empty document (no usage to show).
        return Ok(Json(json!({
            "id": row.id, "name": format!("/{}", row.name),
            "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
            "pids_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {},
            "cpu_stats": cpu_stats(None, who.cpus), "precpu_stats": cpu_stats(None, who.cpus),
            "memory_stats": {},
        }))
        .into_response());
    }
    let first = sample(&st.manager, &row.id)
        .await
        .ok_or_else(|| DockerError::conflict(format!("Container {} is not running", row.id)))?;
    if !stream {
        if one_shot {
            return Ok(Json(document(&who, &first, None)).into_response());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let doc = match sample(&st.manager, &row.id).await {
            Some(second) => document(&who, &second, Some(&first)),
            None => document(&who, &first, None),
        };
        return Ok(Json(doc).into_response());
    }
    let m = st.manager.clone();
    let line = |v: Value| {
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, std::io::Error>(b)
    };
    let head = futures_util::stream::once(std::future::ready(line(document(&who, &first, None))));
    let tail = futures_util::stream::unfold((first, who), move |(pre, who)| {
        let m = m.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = sample(&m, &who.id).await?;
            let doc = document(&who, &now, Some(&pre));
            Some((line(doc), (now, who)))
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(head, tail));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `ps -ef`'s columns, the default of `docker top`.
const TITLES: [&str; 8] = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];

async fn top(
    State(st): State<DockerState>,
    UrlPath(id): UrlPath<String>,
    q: DockerQuery,
) -> Result<Json<Value>> {
    if let Some(args) = q.str("ps_args") {
        if !matches!(args.trim(), "-ef" | "ef" | "-e -f" | "-f") {
            return Err(DockerError::bad_request(format!(
                "ps_args: {args:?}: inarray reads the processes itself and shows ps -ef's columns only"
            )));
        }
    }
    let row: ContainerRow = st.manager.get(&id).await?;
    if row.state != ContainerState::Running {
        return Err(DockerError::conflict(format!(
            "Container {} is not running",
            row.id
        )));
    }
    let list = st.manager.processes(&row.id).await?;
    let now = Utc::now();
    let rows: Vec<Vec<String>> = list.iter().map(|p| ps_row(p, now)).collect();
    Ok(Json(json!({"Titles": TITLES, "Processes": rows})))
}

/// One line of `ps -ef`: the user's name where the host knows the uid, C the CPU percentage
/// over the process's life, STIME the start (HH:MM today, else the month and day).
fn ps_row(p: &Process, now: DateTime<Utc>) -> Vec<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(p.uid))
        .ok()
        .flatten()
        .map_or_else(|| p.uid.to_string(), |u| u.name);
    let life_ns = (now - p.started_at).num_nanoseconds().unwrap_or(0).max(1) as u128;
    let c = (p.cpu_ns as u128 * 100 / life_ns).min(999);
    let local = p.started_at.with_timezone(&Local);
    let stime = if local.date_naive() == now.with_timezone(&Local).date_naive() {
        local.format("%H:%M").to_string()
    } else {
        local.format("%b%d").to_string()
    };
    let secs = p.cpu_ns / 1_000_000_000;
    let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    vec![
        user,
        p.pid.to_string(),
        p.ppid.to_string(),
        c.to_string(),
        stime,
        p.tty.clone().unwrap_or_else(|| "?".into()),
        time,
        p.command.join(" "),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ns: u64) -> Usage {
        let mut u = Usage::default();
        u.cpu.usage_ns = cpu_ns;
        u.memory.current = 5 << 20;
        u.io.read_bytes = 7;
        u.pids.current = 2;
        u
    }

    #[test]
    fn a_document_carries_the_sample_before_it() {
        let who = Subject {
            id: "abc".into(),
            name: "web".into(),
            device: (254, 0),
            cpus: 2,
            mem_total: 1 << 30,
        };
        let t0 = Utc::now();
        let pre = Sample {
            usage: usage(1_000),
            system_ns: 10_000,
            at: t0,
        };
        let now = Sample {
            usage: usage(3_000),
            system_ns: 20_000,
            at: t0 + chrono::Duration::seconds(1),
        };
        let d = document(&who, &now, Some(&pre));
        assert_eq!(d["name"], "/web");
        assert_eq!(d["cpu_stats"]["cpu_usage"]["total_usage"], 3_000);
        assert_eq!(d["precpu_stats"]["cpu_usage"]["total_usage"], 1_000);
        assert_eq!(d["precpu_stats"]["system_cpu_usage"], 10_000);
        assert_eq!(d["cpu_stats"]["online_cpus"], 2);
        assert_eq!(
            d["memory_stats"]["limit"],
            1u64 << 30,
            "no limit: the host's memory"
        );
        assert_eq!(
            d["blkio_stats"]["io_service_bytes_recursive"][0],
            json!({"major": 254, "minor": 0, "op": "read", "value": 7})
        );
        assert_eq!(d["pids_stats"], json!({"current": 2}));
        let first = document(&who, &pre, None);
        assert_eq!(first["preread"], "0001-01-01T00:00:00Z");
        assert!(first["precpu_stats"].get("system_cpu_usage").is_none());
    }

    #[test]
    fn a_ps_row_has_ps_ef_columns() {
        let now = Utc::now();
        let p = Process {
            pid: 42,
            ppid: 1,
            uid: 0,
            state: "S".into(),
            tty: None,
            cpu_ns: 3_723_000_000_000,
            started_at: now - chrono::Duration::hours(2),
            command: vec!["sh".into(), "-c".into(), "sleep 1".into()],
        };
        let r = ps_row(&p, now);
        assert_eq!(r.len(), TITLES.len());
        assert_eq!(r[0], "root");
        assert_eq!(r[1], "42");
        assert_eq!(r[3], "51", "3723 s of CPU over 7200 s");
        assert_eq!(r[5], "?");
        assert_eq!(r[6], "01:02:03");
        assert_eq!(r[7], "sh -c sleep 1");
    }
}
