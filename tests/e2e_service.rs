//! The daemon as a systemd service: the units verify, and the notify protocol (READY, WATCHDOG,
//! STOPPING) is spoken.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::daemon::TestDaemon;

#[test]
fn the_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/inarray.service"
    ))
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary cargo built.
    let unit = unit.replace(
        "/usr/local/bin/inarray",
        TestDaemon::bin().to_str().unwrap(),
    );
    std::fs::write(dir.path().join("inarray.service"), unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("inarray.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed to verify the unit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("inarray.service"),
        "{err}"
    );
    for f in [
        "inarray.sysusers",
        "inarray.tmpfiles",
        "inarray.toml.example",
    ] {
        assert!(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd"))
                .join(f)
                .exists(),
            "{f}"
        );
    }
    // The example configuration parses, with the keys the daemon knows.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/inarray.toml.example"
    ))
    .unwrap();
    let v: toml::Table = toml::from_str(&example).unwrap();
    // The [api] table is the one the daemon takes, with valid values.
    let api: inarray_api::access::ApiConfig = v["api"].clone().try_into().unwrap();
    assert_eq!(
        api.limits().unwrap(),
        inarray_api::access::Limits::default()
    );
    for k in v.keys() {
        assert!(
            [
                "array",
                "state_dir",
                "listen",
                "socket_mode",
                "socket_group",
                "log",
                "log_format",
                "restart_concurrency",
                "api"
            ]
            .contains(&k.as_str()),
            "{k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_the_notify_protocol() {
    common::daemon::require_root();
    let mut d = TestDaemon::start().await;
    d.kill9();
    let sock_path = d.tmp.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = d.serve_command();
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !(got.iter().any(|m: &String| m == "READY=1")
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = rx.recv(&mut buf).expect("a notification within 20 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1", "{got:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        let n = rx.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}

/// Live restore at scale: 50 running containers survive a SIGTERM restart and a `kill -9`
/// restart; all are re-adopted with the same pids, and the ones killed while the daemon was down
/// are recorded as exited (137) at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_survive_restarts_and_exits_meanwhile_are_recorded() {
    use common::daemon::Method;
    use serde_json::json;
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    let mut running: Vec<(String, i64)> = Vec::new();
    for i in 0..50 {
        let c = d
            .run(json!({"image": "busybox", "name": format!("live{i}"), "command": ["sleep", "1000"]}))
            .await;
        assert_eq!(c["state"], "running", "{c}");
        running.push((
            c["id"].as_str().unwrap().to_owned(),
            c["pid"].as_i64().unwrap(),
        ));
    }
    let mut exited: Vec<String> = Vec::new();
    for round in ["sigterm", "kill -9"] {
        if round == "sigterm" {
            let st = d.sigterm();
            assert!(st.success(), "{st}");
        } else {
            d.kill9();
        }
        // While the daemon is down: five containers die, the others keep running.
        for _ in 0..5 {
            let (id, pid) = running.pop().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            exited.push(id);
        }
        for (_, pid) in &running {
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{round}: container {pid} died with the daemon"
            );
        }
        d.launch().await;
        let all = d.ok(Method::GET, "/v1/containers?all=true", None).await;
        assert_eq!(all.as_array().unwrap().len(), 50, "{round}: none lost");
        for (id, pid) in &running {
            let c = d.container(id).await;
            assert_eq!(c["state"], "running", "{round}: {c}");
            assert_eq!(
                c["pid"].as_i64(),
                Some(*pid),
                "{round}: re-adopted, not restarted"
            );
        }
        for id in &exited {
            let c = d.wait_for(id, 20, |c| c["state"] == "exited").await;
            assert_eq!(c["exit_code"], 137, "{round}: {c}");
        }
    }
    // Re-adopted containers are supervised: a stop is seen through.
    let (id, _) = &running[0];
    let c = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{id}/stop?timeout=1"),
            None,
        )
        .await;
    assert_eq!(c["state"], "exited", "{c}");
}

/// docs/operations.md's backup procedure works while the daemon serves: `VACUUM INTO` and
/// sqlite3's `.backup` make consistent copies, and a daemon started on a restored copy knows the
/// containers and tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_and_restore() {
    use common::daemon::Method;
    use serde_json::json;
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({"image": "busybox", "name": "kept", "command": ["sleep", "1000"]}))
        .await;
    d.ok(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "backup-test", "scope": "read"})),
    )
    .await;
    let db = d.state.join("state.db");
    let into = d.tmp.path().join("vacuum.db");
    let dot = d.tmp.path().join("dot.db");
    // Writes go on meanwhile.
    let writer = {
        let client = d.client();
        tokio::spawn(async move {
            for i in 0..50 {
                let _ = client
                    .json(Method::POST, &format!("/v1/containers/nope{i}/stop"), None)
                    .await;
            }
        })
    };
    let sqlite = |args: &[&str]| {
        let out = std::process::Command::new("sqlite3")
            .args(args)
            .output()
            .expect("sqlite3 (Debian package sqlite3) is needed for the backup test");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    sqlite(&[
        db.to_str().unwrap(),
        &format!("VACUUM INTO '{}'", into.display()),
    ]);
    sqlite(&[
        db.to_str().unwrap(),
        &format!(".backup '{}'", dot.display()),
    ]);
    writer.await.unwrap();
    for copy in [&into, &dot] {
        let p = copy.to_str().unwrap();
        assert_eq!(sqlite(&[p, "PRAGMA integrity_check"]), "ok");
        assert_eq!(
            sqlite(&[p, "SELECT name FROM containers"]),
            "kept",
            "{}",
            copy.display()
        );
        assert_eq!(sqlite(&[p, "SELECT name FROM api_tokens"]), "backup-test");
    }
    // Restore: stop the daemon (the container keeps running), put the copy in place, start.
    assert!(d.sigterm().success());
    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(d.state.join(f));
    }
    std::fs::copy(&dot, &db).unwrap();
    d.launch().await;
    let k = d.container(c["id"].as_str().unwrap()).await;
    assert_eq!(k["state"], "running", "{k}");
    assert_eq!(k["pid"], c["pid"]);
    let t = d.ok(Method::GET, "/v1/tokens", None).await;
    assert_eq!(t[0]["name"], "backup-test");
}

/// The daemon sets the kernel's cgroup `favordynmods` at start (docs/operator-guide.md): a cgroup
/// hierarchy carries the option afterwards, and containers run as before. (That the remount keeps
/// the mount's flags is a unit test of `cgroups::favor_dynmods`'s mountinfo parsing: the switch
/// stays until reboot, so the state before cannot be compared here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sets_cgroup_favordynmods() {
    common::daemon::require_root();
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let marked: Vec<&str> = info
        .lines()
        .filter(|l| l.contains(" - cgroup") && l.contains("favordynmods"))
        .collect();
    assert!(
        !marked.is_empty(),
        "no cgroup hierarchy has favordynmods after a start:\n{info}"
    );
    let (ok, out, err) = d.cli(&["run", "--rm", "busybox", "sh", "-c", "echo ok"]);
    assert!(ok && out.contains("ok"), "{out} {err}");
}
