//! End-to-end: health checks run inside the container, turn it healthy then unhealthy on the
//! policy's schedule, show in the view and in `/metrics`, and can restart it.

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use serde_json::{json, Value};

async fn until(
    d: &TestDaemon,
    id: &str,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let t0 = Instant::now();
    let c = d.wait_for(id, secs, pred).await;
    (c, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_turns_the_container_unhealthy_on_schedule() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({
            "image": "busybox", "name": "svc",
            "command": ["sh", "-c", "touch /tmp/ok; sleep 3; rm /tmp/ok; sleep 600"],
            "healthcheck": {"test": ["CMD-SHELL", "test -f /tmp/ok && echo fine"],
                            "interval": 0.5, "timeout": 2, "retries": 2},
        }))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let (c, _) = until(&d, &id, 20, |c| c["health"]["status"] == "healthy").await;
    assert_eq!(c["health"]["log"][0]["output"], "fine\n", "{c}");
    let (ps_ok, ps, _) = d.cli(&["ps"]);
    assert!(ps_ok && ps.contains("running (healthy)"), "{ps}");
    // The file goes 3 s after the start; two failures 0.5 s apart make it unhealthy.
    let (c, took) = until(&d, &id, 20, |c| c["health"]["status"] == "unhealthy").await;
    assert!(took < Duration::from_secs(8), "unhealthy after {took:?}");
    assert!(c["health"]["failing_streak"].as_u64().unwrap() >= 2, "{c}");
    let m = d.metrics().await;
    let key =
        format!("inarray_container_health{{container=\"svc\",id=\"{id}\",status=\"unhealthy\"}}");
    assert_eq!(m.get(&key), Some(&1.0), "{key} in {m:?}");
    let key =
        format!("inarray_container_health{{container=\"svc\",id=\"{id}\",status=\"healthy\"}}");
    assert_eq!(m.get(&key), Some(&0.0));
    // A probe that outlives its timeout fails and is killed.
    let c = d
        .run(json!({
            "image": "busybox", "name": "slow", "command": ["sleep", "600"],
            "healthcheck": {"test": ["CMD", "sleep", "30"], "interval": 0.3, "timeout": 0.5,
                            "retries": 1},
        }))
        .await;
    let slow = c["id"].as_str().unwrap().to_owned();
    let (c, _) = until(&d, &slow, 20, |c| c["health"]["status"] == "unhealthy").await;
    assert!(
        c["health"]["log"][0]["output"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{c}"
    );
    assert_eq!(c["health"]["log"][0]["exit_code"], -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_unhealthy_restarts_it_and_none_means_no_check() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({
            "image": "busybox", "command": ["sleep", "600"],
            "healthcheck": {"test": ["CMD", "false"], "interval": 0.3, "retries": 1,
                            "restart_on_unhealthy": true},
        }))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let first = c["started_at"].clone();
    let (c, _) = until(&d, &id, 30, |c| {
        c["state"] == "running" && c["started_at"] != first
    })
    .await;
    assert_eq!(c["state"], "running", "restarted: {c}");
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "600"],
                    "healthcheck": {"test": ["NONE"]}}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = d.container(c["id"].as_str().unwrap()).await;
    assert!(c["health"].is_null(), "{c}");
    let msg = d
        .fails(
            common::daemon::Method::POST,
            "/v1/containers",
            Some(json!({"image": "busybox", "healthcheck": {"test": ["true"]}})),
            400,
        )
        .await;
    assert!(msg.contains("healthcheck.test"), "{msg}");
}
