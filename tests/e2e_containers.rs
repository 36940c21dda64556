//! End-to-end: the real daemon, as root, over its unix socket; containers from a busybox image
//! built by the test; checks from inside the container and on the host.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::daemon::{mounts_mentioning, Method, TestDaemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_array_data_through_a_bind_mount() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("proj/in")).unwrap();
    std::fs::write(d.array.join("proj/in/input.txt"), "payload-123\n").unwrap();
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "cat /data/in/input.txt && echo written-inside > /data/out.txt && id -u"],
            "volumes": [{"source": "proj", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("payload-123"), "{logs}");
    let out = d.array.join("proj/out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "written-inside\n");
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), 0);

    // As another user: the file on the host is owned by that uid/gid.
    std::fs::set_permissions(
        d.array.join("proj"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox", "user": "1234:2345",
            "command": ["sh", "-c", "echo mine > /data/user.txt; id"],
            "volumes": [{"source": "proj", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    let md = std::fs::metadata(d.array.join("proj/user.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 2345));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_volume_refuses_writes_and_exit_codes_pass_through() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("ro")).unwrap();
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "echo x > /r/file; echo rc=$?; exit 42"],
            "volumes": [{"source": "ro", "target": "/r", "read_only": true}],
        }))
        .await;
    assert_eq!(code, 42);
    assert!(logs.contains("Read-only file system"), "{logs}");
    assert!(logs.contains("rc=1"), "{logs}");
    assert!(!d.array.join("ro/file").exists());
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "command": ["false"]}))
        .await;
    assert_eq!(code, 1);
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "command": ["sh", "-c", "exit 255"]}))
        .await;
    assert_eq!(code, 255);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_sees_only_stdio_and_safe_defaults() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    // A probe run inside: its own fds, capabilities, no_new_privs, seccomp, namespaces.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "ls /proc/1/fd; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; hostname; ip link 2>/dev/null | grep -c '^[0-9]'; cat /proc/kcore 2>&1 | head -c 80; echo; mount 2>&1 | grep -c ' / '"],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines[0], "0",
        "pid 1 (the probe's sh) has only stdio open: {logs}"
    );
    assert_eq!(lines[1], "1");
    assert_eq!(lines[2], "2");
    let field = |k: &str| {
        logs.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} in {logs}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
    assert_eq!(
        cap_eff & (CAP_SYS_ADMIN | CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH),
        0,
        "{logs}"
    );
    assert_eq!(cap_eff.count_ones(), 14, "Docker's default set: {logs}");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "a seccomp filter is installed");
    assert!(
        logs.contains("/proc/kcore") && !logs.contains("ELF"),
        "kcore is masked: {logs}"
    );

    // Seccomp refuses what the profile denies even to root in the container.
    let (code, logs) = d
        .run_to_exit(
            json!({"image": "busybox", "command": ["sh", "-c", "unshare -m true; echo rc=$?"]}),
        )
        .await;
    assert_eq!(code, 0);
    assert!(logs.contains("rc=1"), "{logs}");
    // Network: none by default (only lo), the host's on request.
    let (_, none) = d
        .run_to_exit(json!({"image": "busybox", "command": ["sh", "-c", "ls /sys/class/net"]}))
        .await;
    assert_eq!(none.trim(), "lo", "{none}");
    let (_, host) = d.run_to_exit(json!({"image": "busybox", "network": "host", "command": ["sh", "-c", "ls /sys/class/net | wc -l"]})).await;
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(host.trim().parse::<usize>().unwrap(), host_ifaces, "{host}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_stop_and_kill() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d.run(json!({"image": "busybox", "command": ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    let t0 = Instant::now();
    d.client()
        .stream(&format!("/v1/containers/{id}/logs?follow=true"), |b| {
            got.extend_from_slice(b)
        })
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text, "line1\nline2\nline3\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "follow streamed until the exit"
    );

    // stop: SIGTERM is honoured by a trap.
    let c = d.run(json!({"image": "busybox", "command": ["sh", "-c", "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    d.wait_for(&id, 10, |c| c["state"] == "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{id}/stop?timeout=5"),
            None,
        )
        .await;
    assert_eq!(stopped["state"], "exited");
    assert_eq!(stopped["exit_code"], 0);
    assert!(d.logs(&id).await.contains("got-term"));

    // stop: a process ignoring SIGTERM is killed after the timeout.
    let c = d.run(json!({"image": "busybox", "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let stopped = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{id}/stop?timeout=1"),
            None,
        )
        .await;
    assert_eq!(stopped["exit_code"], 137);
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // kill with a chosen signal (the container's pid 1 only gets signals it handles, as with
    // any init; SIGKILL always).
    let c = d.run(json!({"image": "busybox", "command": ["sh", "-c", "trap 'echo usr1; exit 10' USR1; while true; do sleep 0.1; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.ok(
        Method::POST,
        &format!("/v1/containers/{id}/kill?signal=SIGUSR1"),
        None,
    )
    .await;
    let w = d
        .ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await;
    assert_eq!(w["exit_code"], 10);
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "1000"]}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    d.ok(Method::POST, &format!("/v1/containers/{id}/kill"), None)
        .await;
    let w = d
        .ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await;
    assert_eq!(w["exit_code"], 137, "SIGKILL by default");
    d.fails(
        Method::POST,
        &format!("/v1/containers/{id}/kill"),
        None,
        409,
    )
    .await;
    d.fails(
        Method::POST,
        &format!("/v1/containers/{id}/kill?signal=NOPE"),
        None,
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_counts_and_backs_off() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let t0 = Instant::now();
    let c = d.run(json!({"image": "busybox", "restart": "on-failure:3", "command": ["sh", "-c", "echo run; exit 3"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let w = d
        .ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await;
    let elapsed = t0.elapsed();
    assert_eq!(w["exit_code"], 3);
    let c = d.container(&id).await;
    assert_eq!(c["restart_count"], 3, "{c}");
    assert_eq!(c["state"], "exited");
    assert_eq!(d.logs(&id).await.matches("run").count(), 4);
    // Backoff 100 + 200 + 400 ms between the four runs.
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");

    // A successful exit is not restarted by on-failure; `always` restarts until stopped.
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "restart": "on-failure", "command": ["true"]}))
        .await;
    assert_eq!(code, 0);
    let c = d
        .run(json!({"image": "busybox", "restart": "always", "command": ["true"]}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    d.wait_for(&id, 20, |c| c["restart_count"].as_i64().unwrap_or(0) >= 2)
        .await;
    let stopped = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{id}/stop?timeout=1"),
            None,
        )
        .await;
    assert!(stopped["state"] == "exited", "{stopped}");
    let n = d.container(&id).await["restart_count"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        d.container(&id).await["restart_count"].as_i64().unwrap(),
        n,
        "no restart after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_overlay_cgroup_or_mount() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("v")).unwrap();
    let c = d.run(json!({"image": "busybox", "command": ["sleep", "1000"], "volumes": [{"source": "v", "target": "/v"}]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let dir = d.state.join("containers").join(&id);
    assert!(dir.join("upper").is_dir());
    assert!(
        !inarray_runtime::cgroups::find_container(
            std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
            &d.cgroup_root,
            &id
        )
        .is_empty(),
        "the container has cgroups while it runs"
    );
    // The overlay and binds live in the shim's private mount namespace, never the host's.
    assert!(mounts_mentioning(&id).is_empty());
    d.fails(Method::DELETE, &format!("/v1/containers/{id}"), None, 409)
        .await;
    d.fails(Method::DELETE, "/v1/images/busybox:latest", None, 409)
        .await;
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
    assert!(!dir.exists(), "container dir removed");
    assert!(!d.state.join("rt").join(&id).exists());
    assert!(
        inarray_runtime::cgroups::find_container(
            std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
            &d.cgroup_root,
            &id
        )
        .is_empty(),
        "cgroups removed"
    );
    let shims = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&id))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(shims, 0, "no shim left");
    d.fails(Method::GET, &format!("/v1/containers/{id}"), None, 404)
        .await;
    // Now the image can go, and its blobs and layers with it.
    d.ok(Method::DELETE, "/v1/images/busybox:latest", None)
        .await;
    let layers = std::fs::read_dir(d.state.join("images/layers/sha256"))
        .unwrap()
        .count();
    assert_eq!(layers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_a_daemon_crash_and_are_readopted() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let c = d.run(json!({"image": "busybox", "name": format!("long{i}"), "command": ["sleep", "1000"]})).await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    let short = d.run(json!({"image": "busybox", "name": "short", "command": ["sh", "-c", "sleep 1; exit 9"]})).await;
    let short = short["id"].as_str().unwrap().to_owned();
    let pids: Vec<i64> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(d.container(id).await["pid"].as_i64().unwrap());
        }
        v
    };
    d.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await; // `short` exits while the daemon is down
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container {pid} survived"
        );
    }
    d.launch().await;
    for (id, pid) in ids.iter().zip(&pids) {
        let c = d.container(id).await;
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["pid"].as_i64(), Some(*pid));
    }
    let s = d.wait_for(&short, 10, |c| c["state"] == "exited").await;
    assert_eq!(s["exit_code"], 9, "{s}");
    // Re-adopted containers are supervised again: their exits are seen.
    d.ok(
        Method::POST,
        &format!("/v1/containers/{}/kill?signal=KILL", ids[0]),
        None,
    )
    .await;
    let w = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{}/wait", ids[0]),
            None,
        )
        .await;
    assert_eq!(w["exit_code"], 137);
    let listed = d.ok(Method::GET, "/v1/containers", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_attached_streams_output_and_exits_with_the_code() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("cli")).unwrap();
    std::fs::write(d.array.join("cli/f.txt"), "via-cli").unwrap();
    let bin = TestDaemon::bin();
    let host = format!("unix:{}", d.socket.display());
    let out = tokio::process::Command::new(&bin)
        .args([
            "--host",
            &host,
            "run",
            "--rm",
            "-v",
            "cli:/c:ro",
            "-e",
            "GREETING=hi",
            "busybox",
            "sh",
            "-c",
            "cat /c/f.txt; echo \" $GREETING\"; exit 5",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli hi\n");
    let ps = tokio::process::Command::new(&bin)
        .args(["--host", &host, "--json", "ps", "-a"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "--rm removed it");
    let bad = tokio::process::Command::new(&bin)
        .args(["--host", &host, "run", "-v", "../etc:/x", "busybox", "true"])
        .output()
        .await
        .unwrap();
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("volumes[0].source"),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_marks_the_container_dead_and_cleans_up() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "1000"]}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let pid = c["pid"].as_i64().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.state.join("containers").join(&id).join("shim-pid.json")).unwrap(),
    )
    .unwrap();
    let shim = rec["shim_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let c = d.wait_for(&id, 20, |c| c["state"] == "dead").await;
    assert!(c["error"].as_str().unwrap().contains("supervisor"), "{c}");
    // The orphaned container was killed through its cgroup, and the cgroup removed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "container {pid} still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(inarray_runtime::cgroups::find_container(
        std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
        &d.cgroup_root,
        &id
    )
    .is_empty());
    // It can be started again, and deleted.
    let c = d
        .ok(Method::POST, &format!("/v1/containers/{id}/start"), None)
        .await;
    assert_eq!(c["state"], "running");
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_but_not_the_containers() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "1000"]}))
        .await;
    let pid = c["pid"].as_i64().unwrap();
    let mut child = d.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!d.socket.exists(), "socket removed");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container still running"
    );
    d.launch().await;
    assert_eq!(
        d.container(c["id"].as_str().unwrap()).await["state"],
        "running"
    );
}
