//! End-to-end: scheduled jobs on the real daemon, as root, over its socket; runs are real
//! containers of the busybox test image. Times come from the API (`scheduled_at`, `fired_at`,
//! `started_at`, `finished_at`, all UTC).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::daemon::{Method, TestDaemon};
use serde_json::{json, Value};

fn t(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .unwrap()
        .to_utc()
}

fn ms(d: chrono::Duration) -> i64 {
    d.num_milliseconds()
}

async fn add_job(d: &TestDaemon, body: Value) -> Value {
    d.ok(Method::POST, "/v1/jobs", Some(body)).await
}

/// A job's run attempts, oldest first.
async fn runs(d: &TestDaemon, job: &str) -> Vec<Value> {
    let v = d
        .ok(Method::GET, &format!("/v1/jobs/{job}/runs"), None)
        .await;
    let mut v = v.as_array().unwrap().clone();
    v.reverse();
    v
}

/// Polls the job's runs until `pred` holds, at most `secs`.
async fn until_runs(
    d: &TestDaemon,
    job: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = runs(d, job).await;
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: timed out waiting for {what}: {}\n--- daemon log:\n{}",
            serde_json::to_string_pretty(&r).unwrap(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(d) = (at - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

fn count(runs: &[Value], key: &str, value: &str) -> usize {
    runs.iter().filter(|r| r[key] == value).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_job_runs_each_second_then_suspends_resumes_and_prunes() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let job = add_job(
        &d,
        json!({
            "name": "tick",
            "schedule": "* * * * * *",
            "concurrency": "allow",
            "history": {"successful": 100},
            "container": {"image": "busybox", "command": ["sh", "-c", "echo tick $0", "x"]},
        }),
    )
    .await;
    let first = t(&job["next_fire"]);
    assert_eq!(first.nanosecond(), 0, "{job}");
    assert_eq!(
        job["next_fire_local"],
        job["next_fire"].as_str().unwrap().replace('Z', "+00:00")
    );
    const N: i64 = 5;
    let window: Vec<DateTime<Utc>> = (0..N)
        .map(|i| first + chrono::Duration::seconds(i))
        .collect();
    sleep_until(window[N as usize - 1]).await;
    let all = until_runs(&d, "tick", 20, "5 successful runs in the window", |r| {
        window.iter().all(|w| {
            r.iter()
                .any(|x| t(&x["scheduled_at"]) == *w && x["state"] == "succeeded")
        })
    })
    .await;
    let in_window: Vec<&Value> = all
        .iter()
        .filter(|r| window.contains(&t(&r["scheduled_at"])))
        .collect();
    assert_eq!(
        in_window.len(),
        N as usize,
        "exactly one run per second: {all:#?}"
    );
    let mut late = Vec::new();
    let mut start_late = Vec::new();
    for r in &in_window {
        assert_eq!(r["trigger"], "schedule");
        assert_eq!(r["attempt"], 0);
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["error"], Value::Null);
        let name = r["container_name"].as_str().unwrap();
        assert_eq!(name, format!("tick.run-{}", r["id"]));
        late.push(ms(t(&r["fired_at"]) - t(&r["scheduled_at"])));
        start_late.push(ms(t(&r["started_at"]) - t(&r["scheduled_at"])));
    }
    eprintln!(
        "every-second job: fired late by {late:?} ms, container running after {start_late:?} ms"
    );
    for l in &late {
        assert!((0..500).contains(l), "fired {l} ms late: {late:?}");
    }
    // Each run's output is reachable from its record.
    let logs_path = in_window[0]["logs"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    d.client()
        .stream(&logs_path, |b| out.extend_from_slice(b))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "tick x\n");

    // Suspended: nothing fires.
    let s = d.ok(Method::POST, "/v1/jobs/tick/suspend", None).await;
    assert_eq!(
        (&s["suspend"], &s["next_fire"]),
        (&json!(true), &Value::Null)
    );
    let suspended_at = Utc::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = runs(&d, "tick").await;
    let during: Vec<&Value> = r
        .iter()
        .filter(|x| t(&x["scheduled_at"]) > suspended_at)
        .collect();
    assert!(during.is_empty(), "fired while suspended: {during:?}");
    // Resumed: fires again from the next second on.
    let v = d.ok(Method::POST, "/v1/jobs/tick/resume", None).await;
    let resumed_at = Utc::now();
    assert!(
        t(&v["next_fire"]) > resumed_at - chrono::Duration::milliseconds(50),
        "{v}"
    );
    until_runs(&d, "tick", 10, "a run after resume", |r| {
        r.iter()
            .any(|x| t(&x["scheduled_at"]) > resumed_at && x["state"] == "succeeded")
    })
    .await;

    // History: keep 2 successful runs; the others go with their containers.
    let before = runs(&d, "tick").await;
    d.ok(
        Method::PATCH,
        "/v1/jobs/tick",
        Some(json!({"history": {"successful": 2}, "suspend": true})),
    )
    .await;
    let kept = until_runs(&d, "tick", 10, "history pruned to 2", |r| {
        r.len() == 2 && r.iter().all(|x| x["state"] == "succeeded")
    })
    .await;
    let kept_ids: HashSet<&str> = kept
        .iter()
        .map(|r| r["container_id"].as_str().unwrap())
        .collect();
    for r in &before {
        let id = r["container_id"].as_str().unwrap();
        if !kept_ids.contains(id) {
            d.fails(Method::GET, &format!("/v1/containers/{id}"), None, 404)
                .await;
        }
    }
    // Deleting the job removes the rest.
    d.call(Method::DELETE, "/v1/jobs/tick", None).await.unwrap();
    for id in kept_ids {
        d.fails(Method::GET, &format!("/v1/containers/{id}"), None, 404)
            .await;
    }
    d.fails(Method::GET, "/v1/jobs/tick", None, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_the_previous_run_runs_and_replace_kills_it() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let hist = json!({"successful": 20, "failed": 20});
    add_job(
        &d,
        json!({
            "name": "one", "schedule": "* * * * * *", "concurrency": "forbid", "history": hist,
            "container": {"image": "busybox", "command": ["sleep", "2"]},
        }),
    )
    .await;
    add_job(
        &d,
        json!({
            "name": "latest", "schedule": "* * * * * *", "concurrency": "replace", "history": hist,
            "container": {"image": "busybox", "command": ["sleep", "100"]},
        }),
    )
    .await;
    let one = until_runs(&d, "one", 20, "two runs and a skip", |r| {
        count(r, "state", "succeeded") >= 2 && count(r, "state", "skipped") >= 1
    })
    .await;
    for s in one.iter().filter(|r| r["state"] == "skipped") {
        assert_eq!(s["container_id"], Value::Null);
        assert!(
            s["error"].as_str().unwrap().contains("concurrency forbid"),
            "{s}"
        );
    }
    // Never two at once: each run started after the previous one ended.
    let started: Vec<&Value> = one.iter().filter(|r| !r["started_at"].is_null()).collect();
    for w in started.windows(2) {
        if w[0]["finished_at"].is_null() {
            panic!("a run started while another was running: {one:#?}");
        }
        assert!(
            t(&w[1]["started_at"]) >= t(&w[0]["finished_at"]),
            "{one:#?}"
        );
    }
    let latest = until_runs(&d, "latest", 20, "two replaced runs", |r| {
        r.iter()
            .filter(|x| {
                x["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("replaced by"))
            })
            .count()
            >= 2
    })
    .await;
    d.ok(Method::POST, "/v1/jobs/latest/suspend", None).await;
    d.ok(Method::POST, "/v1/jobs/one/suspend", None).await;
    for r in latest.iter().filter(|x| x["state"] == "failed") {
        // sleep as pid 1 ignores SIGTERM: it was killed.
        assert_eq!(r["exit_code"], 137, "{r}");
        let c = d.container(r["container_id"].as_str().unwrap()).await;
        assert_eq!(c["state"], "exited", "{c}");
    }
    let with_start: Vec<&Value> = latest
        .iter()
        .filter(|r| !r["started_at"].is_null())
        .collect();
    for w in with_start.windows(2) {
        if !w[0]["finished_at"].is_null() {
            assert!(
                t(&w[1]["started_at"]) >= t(&w[0]["finished_at"]),
                "{latest:#?}"
            );
        }
    }
    let running = latest.iter().filter(|r| r["state"] == "running").count();
    assert!(running <= 1, "{latest:#?}");
    // Deleting a job stops its running run.
    d.call(Method::DELETE, "/v1/jobs/latest", None)
        .await
        .unwrap();
    let ps = d.ok(Method::GET, "/v1/containers", None).await;
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|c| !c["name"].as_str().unwrap().starts_with("latest.")),
        "{ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runs_are_retried_and_hung_runs_timed_out() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    // Refused definitions name the field.
    let base = json!({"name": "x", "schedule": "* * * * *", "container": {"image": "busybox"}});
    for (patch, needle) in [
        (json!({"schedule": "61 * * * *"}), "schedule: "),
        (json!({"schedule": "0 9 * MON *"}), "schedule: "),
        (json!({"time_zone": "Europe/Atlantis"}), "time_zone: "),
        (json!({"name": "../etc"}), "name: "),
    ] {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let m = d.fails(Method::POST, "/v1/jobs", Some(body), 400).await;
        assert!(m.starts_with(needle), "{m}");
    }
    let m = d
        .fails(
            Method::POST,
            "/v1/jobs",
            Some(json!({"name": "x", "schedule": "@daily", "container": {"image": "nope", "pull": "never"}})),
            404,
        )
        .await;
    assert!(m.contains("no such image"), "{m}");

    add_job(
        &d,
        json!({
            "name": "flaky", "schedule": "@yearly", "retries": 2,
            "container": {"image": "busybox", "command": ["sh", "-c", "echo attempt; exit 3"]},
        }),
    )
    .await;
    add_job(
        &d,
        json!({
            "name": "hung", "schedule": "@yearly", "timeout_seconds": 1,
            "container": {"image": "busybox",
                          "command": ["sh", "-c", "trap 'exit 143' TERM; sleep 100 & wait"]},
        }),
    )
    .await;
    let run = d.ok(Method::POST, "/v1/jobs/flaky/run", None).await;
    assert_eq!(
        (&run["trigger"], &run["attempt"]),
        (&json!("manual"), &json!(0))
    );
    let hung = d.ok(Method::POST, "/v1/jobs/hung/run", None).await;
    assert_eq!(hung["state"], "running", "{hung}");
    let r = until_runs(&d, "flaky", 30, "three failed attempts", |r| {
        r.len() == 3 && r.iter().all(|x| x["state"] == "failed")
    })
    .await;
    for (i, a) in r.iter().enumerate() {
        assert_eq!(a["attempt"], i as i64);
        assert_eq!(
            a["scheduled_at"], run["scheduled_at"],
            "one run, three attempts"
        );
        assert_eq!(a["exit_code"], 3);
        assert_eq!(a["error"], "exited with code 3");
    }
    // Backoff: 1 s, then 2 s.
    for (i, min) in [(1, 1000), (2, 2000)] {
        let gap = ms(t(&r[i]["started_at"]) - t(&r[i - 1]["finished_at"]));
        assert!(
            gap >= min - 50,
            "attempt {i} started {gap} ms after the previous ended"
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        runs(&d, "flaky").await.len(),
        3,
        "retries: 2 means 3 attempts"
    );
    let h = until_runs(&d, "hung", 20, "the timeout", |r| r[0]["state"] == "failed").await;
    assert_eq!(h[0]["error"], "timed out after 1 s: stopped");
    assert_eq!(h[0]["exit_code"], 143);
    let took = ms(t(&h[0]["finished_at"]) - t(&h[0]["started_at"]));
    assert!((1000..4000).contains(&took), "stopped after {took} ms");

    // The CLI shows the same.
    let out = std::process::Command::new(TestDaemon::bin())
        .args([
            "--host",
            &format!("unix:{}", d.socket.display()),
            "job",
            "runs",
            "flaky",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 4, "{text}");
    assert_eq!(text.matches("exited with code 3").count(), 3, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_time_missed_while_the_daemon_was_killed_runs_once_or_not_at_all() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    // One fire time, 4 s from now (whole second, UTC), then none for a year.
    let fire = (Utc::now() + chrono::Duration::seconds(4))
        .with_nanosecond(0)
        .unwrap();
    let schedule = fire.format("%-S %-M %-H %-d %-m *").to_string();
    for (name, missed) in [("once", "run_once"), ("skip", "skip")] {
        let j = add_job(
            &d,
            json!({
                "name": name, "schedule": schedule, "missed": missed,
                "container": {"image": "busybox", "command": ["echo", "caught up"]},
            }),
        )
        .await;
        assert_eq!(t(&j["next_fire"]), fire, "{j}");
    }
    sleep_until(fire - chrono::Duration::seconds(2)).await;
    d.kill9();
    sleep_until(fire + chrono::Duration::milliseconds(1500)).await;
    d.launch().await;
    let once = until_runs(&d, "once", 20, "the catch-up run", |r| {
        r.len() == 1 && r[0]["state"] == "succeeded"
    })
    .await;
    assert_eq!(once[0]["trigger"], "catch_up");
    assert_eq!(t(&once[0]["scheduled_at"]), fire);
    let skip = runs(&d, "skip").await;
    assert_eq!(skip.len(), 1, "{skip:?}");
    assert_eq!(skip[0]["state"], "missed");
    assert_eq!(skip[0]["container_id"], Value::Null);
    assert_eq!(
        skip[0]["error"],
        "1 scheduled run missed while the daemon was down; policy skip"
    );
    // Killed and started again: the policy is not applied a second time.
    d.kill9();
    d.launch().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(runs(&d, "once").await.len(), 1);
    assert_eq!(runs(&d, "skip").await.len(), 1);
    let ps = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    let names: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("once.")).count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("skip.")), "{names:?}");
    let j = d.ok(Method::GET, "/v1/jobs/once", None).await;
    assert!(
        t(&j["next_fire"]) > Utc::now() + chrono::Duration::days(300),
        "{j}"
    );
}
