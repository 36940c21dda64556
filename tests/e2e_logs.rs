//! End-to-end: container logs are bounded by their size limits however much a container prints,
//! and read back by stream, time and tail across the rotated files.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::json;

async fn text(d: &TestDaemon, path: &str) -> String {
    let mut out = Vec::new();
    d.client()
        .stream(path, |b| out.extend_from_slice(b))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_printing_200_mb_keeps_at_most_its_log_limit() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let script = "L=$(head -c 1000 /dev/zero | tr '\\0' x); yes $L | head -c 200000000; \
                  for i in 1 2 3 4 5 6; do echo end-$i; done; echo on-stderr >&2";
    let c = d
        .run(json!({"image": "busybox", "command": ["sh", "-c", script],
                    "log": {"max_size": 1048576, "max_files": 3}}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let dir = d.state.join("containers").join(&id);
    let daemon = d.child.as_ref().unwrap().id();
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let rss_before = rss(daemon);
    let (mut samples, mut most) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let used = log_bytes(&dir);
        most = most.max(used);
        samples += 1;
        assert!(used <= 3 * 1024 * 1024, "{used} bytes of log on disk");
        if d.container(&id).await["state"] == "exited" {
            break;
        }
        assert!(Instant::now() < deadline, "still printing after 10 min");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        samples > 3 && most > 2 * 1024 * 1024,
        "{samples} samples, {most} bytes at most"
    );
    assert!(
        rss(daemon) < rss_before + 16 * 1024,
        "the daemon is not in the log's data path"
    );
    let tail = text(&d, &format!("/v1/containers/{id}/logs?tail=5&stderr=false")).await;
    assert_eq!(tail, "end-2\nend-3\nend-4\nend-5\nend-6\n");
    let err = text(&d, &format!("/v1/containers/{id}/logs?stdout=false")).await;
    assert_eq!(err, "on-stderr\n");
    // The CLI reads the same. (Which of stdout's last line and stderr's line comes last is not
    // promised: they are two pipes.)
    let api = text(&d, &format!("/v1/containers/{id}/logs?tail=2")).await;
    let (ok, out, _) = d.cli(&["logs", "--tail", "2", &id]);
    assert!(ok);
    assert_eq!(out, api);
    assert!(out.contains("end-6\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_by_time_with_timestamps_and_bad_parameters() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "name": "t",
                            "command": ["sh", "-c", "echo early; sleep 1.5; echo late"]}))
        .await;
    assert_eq!(code, 0);
    let all = text(&d, "/v1/containers/t/logs?timestamps=true").await;
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    let (t0, first) = lines[0].split_once(' ').unwrap();
    let (t1, second) = lines[1].split_once(' ').unwrap();
    assert_eq!((first, second), ("early", "late"));
    let t0 = chrono::DateTime::parse_from_rfc3339(t0).unwrap();
    let t1 = chrono::DateTime::parse_from_rfc3339(t1).unwrap();
    assert!(t1 - t0 >= chrono::Duration::milliseconds(1400), "{t0} {t1}");
    let middle = t0 + chrono::Duration::milliseconds(700);
    let since = middle.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let later = text(
        &d,
        &format!("/v1/containers/t/logs?since={}", since.replace('+', "%2B")),
    )
    .await;
    assert_eq!(later, "late\n");
    let secs = format!("{:.3}", middle.timestamp_millis() as f64 / 1000.0);
    assert_eq!(
        text(&d, &format!("/v1/containers/t/logs?until={secs}")).await,
        "early\n"
    );
    let msg = d
        .fails(
            Method::GET,
            "/v1/containers/t/logs?since=yesterday",
            None,
            400,
        )
        .await;
    assert!(msg.contains("since"), "{msg}");
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "log": {"max_size": 10, "max_files": 3}})),
        400,
    )
    .await;
}
