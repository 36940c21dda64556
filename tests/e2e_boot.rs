//! Boot and failover (issue 20): a simulated power loss — the daemon, then every shim, then every
//! container (through its cgroups) SIGKILLed — and the daemon started again with another kernel
//! boot id (the test-only `--boot-id`): the restart policies decide what runs again, and the
//! starts are paced.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use inarray_api::client::Method;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The daemon's log without terminal colours (`\x1b[…m`).
fn plain_log(d: &TestDaemon) -> String {
    let raw = d.log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether the process runs (a zombie, not yet reaped by whoever inherited it, does not).
fn alive(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which ends with the last ')'.
    let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
    pid > 0 && !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn containers(d: &TestDaemon) -> Vec<Value> {
    d.ok(Method::GET, "/v1/containers?all=true", None)
        .await
        .as_array()
        .cloned()
        .unwrap()
}

/// The shim pid of every running container, from its `shim-pid.json`.
async fn shim_pids(d: &TestDaemon) -> Vec<i64> {
    let mut pids = Vec::new();
    for c in containers(d).await {
        if c["state"] != "running" {
            continue;
        }
        let id = c["id"].as_str().unwrap();
        let rec: Value = serde_json::from_slice(
            &std::fs::read(d.state.join("containers").join(id).join("shim-pid.json")).unwrap(),
        )
        .unwrap();
        pids.push(rec["shim_pid"].as_i64().unwrap());
    }
    pids
}

/// The power goes: every shim (`shims`, the daemon already killed), then every process left in
/// this daemon's container cgroups, SIGKILLed.
async fn power_loss(d: &TestDaemon, shims: &[i64]) {
    assert!(d.child.is_none(), "the daemon goes first");
    for &pid in shims {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    until("the shims are gone", 10, || {
        shims.iter().all(|p| !alive(*p))
    })
    .await;
    inarray_runtime::cgroups::cleanup(
        Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
        &format!("/{}", d.cgroup_root),
    )
    .unwrap();
}

/// Starts the daemon again as on a node that booted anew (`boot`: its boot id).
async fn boot(d: &mut TestDaemon, boot: &str) {
    d.extra_args = vec!["--boot-id".into(), boot.into()];
    d.launch().await;
}

async fn sleeper(d: &TestDaemon, name: &str, restart: &str) -> Value {
    d.run(
        json!({"name": name, "image": "busybox", "command": ["sleep", "100000"],
                 "restart": restart}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_the_restart_policies_decide_what_runs_again() {
    let mut d = TestDaemon::start_with(vec!["--boot-id".into(), "boot-1".into()]).await;
    d.with_busybox().await;
    let always = sleeper(&d, "always", "always").await;
    let no = sleeper(&d, "no", "no").await;
    let unless = sleeper(&d, "unless", "unless-stopped").await;
    let unless_stopped = sleeper(&d, "unless-stopped", "unless-stopped").await;
    let failing = sleeper(&d, "failing", "on-failure").await;
    let killed = sleeper(&d, "killed", "on-failure:2").await;
    // Exits 0 on SIGTERM.
    let clean = d
        .run(
            json!({"name": "clean", "image": "busybox", "restart": "on-failure",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}),
        )
        .await;
    d.ok(
        Method::POST,
        "/v1/containers/unless-stopped/stop?timeout=1",
        None,
    )
    .await;
    let shims = shim_pids(&d).await;
    assert_eq!(shims.len(), 6);
    let old_pids: Vec<i64> = containers(&d)
        .await
        .iter()
        .filter_map(|c| c["pid"].as_i64())
        .collect();

    // The daemon dies first; as the node goes down, two containers exit under their shims
    // (which record it): one killed (137), one cleanly (0). Then the power goes.
    d.kill9();
    let exit_record = |c: &Value| {
        d.state
            .join("containers")
            .join(c["id"].as_str().unwrap())
            .join("exit.json")
    };
    kill(
        Pid::from_raw(killed["pid"].as_i64().unwrap() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    kill(
        Pid::from_raw(clean["pid"].as_i64().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    until("both shims recorded their container's exit", 15, || {
        exit_record(&killed).exists() && exit_record(&clean).exists()
    })
    .await;
    power_loss(&d, &shims).await;
    let survivors: Vec<&i64> = old_pids.iter().filter(|p| alive(**p)).collect();
    assert!(survivors.is_empty(), "nothing survives: {survivors:?}");

    boot(&mut d, "boot-2").await;
    for c in [&always, &unless, &failing, &killed] {
        let id = c["id"].as_str().unwrap();
        let now = d
            .wait_for(id, 30, |c| c["state"] == "running" && c["pid"].is_i64())
            .await;
        assert!(alive(now["pid"].as_i64().unwrap()), "{now}");
        assert_eq!(now["restart_count"], 0, "a fresh start: {now}");
    }
    let row = d.container(no["id"].as_str().unwrap()).await;
    assert_eq!(row["state"], "exited", "{row}");
    assert_eq!(row["error"], "the node rebooted", "{row}");
    assert!(row["exit_code"].is_null(), "the power went: {row}");
    let row = d.container(clean["id"].as_str().unwrap()).await;
    assert_eq!(
        (&row["state"], &row["exit_code"], &row["error"]),
        (&json!("exited"), &json!(0), &json!("the node rebooted")),
        "a clean exit asks on-failure for nothing: {row}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = d.container(unless_stopped["id"].as_str().unwrap()).await;
    assert_eq!(row["state"], "exited", "the operator's stop holds: {row}");
    let log = plain_log(&d);
    assert!(
        log.contains("after=\"reboot\"") || log.contains("after=reboot"),
        "{log}"
    );
    assert!(log.contains("boot starts done"), "{log}");

    // The operator starts the stopped one; a daemon restart in the same boot then adopts
    // everything that runs (nothing is started twice).
    d.ok(Method::POST, "/v1/containers/unless-stopped/start", None)
        .await;
    let running: Vec<(String, i64)> = containers(&d)
        .await
        .iter()
        .filter(|c| c["state"] == "running")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["pid"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(running.len(), 5);
    d.kill9();
    boot(&mut d, "boot-2").await;
    for (id, pid) in &running {
        let c = d.container(id).await;
        assert_eq!(
            (&c["state"], c["pid"].as_i64()),
            (&json!("running"), Some(*pid))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_always_containers_come_back_paced() {
    const N: usize = 50;
    let mut d = TestDaemon::start_with(vec!["--boot-id".into(), "boot-1".into()]).await;
    d.with_busybox().await;
    let t0 = Instant::now();
    for i in 0..N {
        sleeper(&d, &format!("svc-{i:02}"), "always").await;
    }
    let created = t0.elapsed();
    let shims = shim_pids(&d).await;
    assert_eq!(shims.len(), N);
    d.kill9();
    power_loss(&d, &shims).await;

    let t0 = Instant::now();
    boot(&mut d, "boot-2").await;
    let serving = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = containers(&d).await;
        let up = list
            .iter()
            .filter(|c| c["state"] == "running" && c["pid"].as_i64().is_some_and(alive))
            .count();
        if up == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{up} of {N} running after 120 s\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = t0.elapsed();
    let log = plain_log(&d);
    let starts = log.lines().filter(|l| l.contains("boot start ")).count();
    let done = log
        .lines()
        .find(|l| l.contains("boot starts done"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "{N} always containers: created one by one in {created:.2?}; after the power loss the \
         daemon served in {serving:.2?}, all {N} ran again {back:.2?} after its start; {done}"
    );
    assert_eq!(starts, N, "one logged start each:\n{log}");
    assert!(
        done.contains("started=50") && done.contains("at_once=8"),
        "{done}"
    );
}
