//! The Docker API's day-two commands with real docker CLIs (see tests/e2e_docker.rs for the
//! clients): `top`, `stats --no-stream`, `update`, `rename`, `container prune`, `image prune`
//! and `system df`, each checked against what the native API and the kernel say.
//!
//! Run as root: `cargo test --test e2e_docker_ops`.

mod common;

use std::time::Duration;

use common::daemon::Method;
use common::docker::{clients, daemon, native_containers, raw, Docker};
use serde_json::{json, Value};

/// `docker top` lists the container's processes (ps -ef columns, host pids); `docker stats
/// --no-stream` shows its memory and limit; the native `top` agrees.
#[tokio::test]
async fn top_and_stats_show_the_containers_processes_and_usage() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        docker.ok(&[
            "run",
            "-d",
            "--name",
            "busy",
            "--memory",
            "64m",
            "busybox",
            "sh",
            "-c",
            "sleep 301 & exec sleep 302",
        ]);
        // The shell forks its child and execs: two sleeps, whichever order they show in.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let top = loop {
            let t = docker.ok(&["top", "busy"]);
            if t.contains("sleep 301") && t.contains("sleep 302") {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "top: {t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut lines = top.lines();
        let titles: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            titles,
            ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        );
        let pids: Vec<i64> = lines
            .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{top}");
        let native = d.ok(Method::GET, "/v1/containers/busy/top", None).await;
        let mut native_pids: Vec<i64> = native["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_i64().unwrap())
            .collect();
        native_pids.sort();
        let mut sorted = pids.clone();
        sorted.sort();
        assert_eq!(
            native_pids, sorted,
            "the native list has the same processes"
        );
        for p in &pids {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap();
            assert!(cmdline.starts_with(b"sleep\0"), "host pid {p} is a sleep");
        }
        assert!(
            docker.fails(&["top", "busy", "aux"]).contains("ps_args"),
            "other ps options are refused, naming the parameter"
        );

        let stats = docker.ok(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}} {{.PIDs}}",
            "busy",
        ]);
        let f: Vec<&str> = stats.split_whitespace().collect();
        assert_eq!(f[0], "busy", "{stats}");
        assert_eq!(f[3], "64MiB", "the memory limit: {stats}");
        assert_eq!(f[4], "2", "the pids: {stats}");
        docker.ok(&["rm", "-f", "busy"]);
        assert!(docker.fails(&["top", "busy"]).contains("No such container"));
    }
}

/// `docker update` changes limits live (the kernel's files say so) and the restart policy;
/// `docker rename` renames a running container; nothing changes on a refusal.
#[tokio::test]
async fn update_and_rename_change_a_running_container() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let id = docker.ok(&[
            "run", "-d", "--name", "svc", "--memory", "64m", "busybox", "sleep", "300",
        ]);
        let id = id.trim().to_owned();
        docker.ok(&[
            "update",
            "--memory",
            "96m",
            "--pids-limit",
            "50",
            "--restart",
            "on-failure:2",
            "svc",
        ]);
        let v = d.ok(Method::GET, "/v1/containers/svc", None).await;
        assert_eq!(v["resources"]["memory"], json!(96 << 20), "{v}");
        assert_eq!(v["resources"]["pids"], json!(50));
        assert_eq!(v["restart"], "on-failure:2", "{v}");
        let cg = format!("{}/default/{id}", d.cgroup_root);
        let limit =
            std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/{cg}/memory.max")))
                .unwrap();
        assert_eq!(
            limit.trim(),
            (96u64 << 20).to_string(),
            "live in the kernel"
        );
        let inspect = docker.ok(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}}",
            "svc",
        ]);
        assert_eq!(inspect.trim(), format!("{} on-failure", 96u64 << 20));

        // A field that cannot change is named; nothing else changed with it.
        let err = docker.fails(&["update", "--kernel-memory", "10m", "svc"]);
        assert!(
            err.contains("KernelMemory") || err.contains("kernel"),
            "{err}"
        );
        let v = d.ok(Method::GET, "/v1/containers/svc", None).await;
        assert_eq!(v["resources"]["memory"], json!(96 << 20));

        docker.ok(&["rename", "svc", "svc2"]);
        let names = docker.ok(&["ps", "--format", "{{.Names}} {{.State}}"]);
        assert_eq!(names.trim(), "svc2 running", "still running, renamed");
        docker.ok(&["run", "-d", "--name", "other", "busybox", "sleep", "300"]);
        let err = docker.fails(&["rename", "other", "svc2"]);
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(
            d.ok(Method::GET, "/v1/containers/other", None).await["name"],
            "other"
        );
        docker.ok(&["rm", "-f", "svc2", "other"]);
    }
}

/// `container prune` removes what does not run (and honours a label filter); `image prune`
/// removes a dangling image, and `-a` an unused one; `system df` counts what is there.
#[tokio::test]
async fn prune_and_system_df() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        docker.ok(&["run", "-d", "--name", "keep", "busybox", "sleep", "300"]);
        docker.ok(&["run", "--name", "done1", "busybox", "true"]);
        docker.ok(&[
            "run",
            "--name",
            "done2",
            "--label",
            "tier=batch",
            "busybox",
            "true",
        ]);
        docker.ok(&["create", "--name", "made", "busybox", "true"]);

        let df = docker.ok(&[
            "system",
            "df",
            "--format",
            "{{.Type}} {{.TotalCount}} {{.Active}}",
        ]);
        assert!(df.contains("Images 1 1"), "{df}");
        assert!(df.contains("Containers 4 1"), "{df}");

        let out = docker.ok(&["container", "prune", "-f", "--filter", "label=tier=batch"]);
        assert!(out.contains("Deleted Containers"), "{out}");
        let left: Vec<String> = native_containers(&d)
            .await
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(left.len(), 3, "only the labelled one went: {left:?}");
        assert!(!left.contains(&"done2".to_owned()));
        docker.ok(&["container", "prune", "-f"]);
        let left: Vec<String> = native_containers(&d)
            .await
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(left, ["keep"], "the running one stays");

        // A tag moved to another image leaves the first one dangling (no name).
        docker.ok(&["tag", "busybox", "spare:1"]);
        let (status, _, body) = raw(&d, "POST", "/images/prune", None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["ImagesDeleted"].is_null(), "nothing dangling yet: {v}");
        let out = docker.ok(&["image", "prune", "-a", "-f"]);
        assert!(out.contains("Total reclaimed space"), "{out}");
        let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(
            images.contains("busybox:latest") && images.contains("spare:1"),
            "the image in use stays with both its names: {images}"
        );
        docker.ok(&["rm", "-f", "keep"]);
        docker.ok(&["image", "prune", "-a", "-f"]);
        assert_eq!(docker.ok(&["images", "-q"]), "", "unused now: pruned");
        d.with_busybox().await;
    }
}

/// The native side: `PATCH /v1/containers/{id}` with a name and a restart policy, refused
/// whole when one part is wrong.
#[tokio::test]
async fn the_native_patch_renames_and_sets_the_policy_or_changes_nothing() {
    let d = daemon().await;
    let c = d
        .ok(
            Method::POST,
            "/v1/containers",
            Some(json!({"image": "busybox", "name": "a", "command": ["sleep", "300"]})),
        )
        .await;
    d.ok(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "name": "b", "command": ["sleep", "300"]})),
    )
    .await;
    let id = c["id"].as_str().unwrap();
    let v = d
        .ok(
            Method::PATCH,
            &format!("/v1/containers/{id}"),
            Some(json!({"name": "a2", "restart": "always"})),
        )
        .await;
    assert_eq!(
        (v["name"].as_str(), v["restart"].as_str()),
        (Some("a2"), Some("always"))
    );
    let m = d
        .fails(
            Method::PATCH,
            "/v1/containers/a2",
            Some(json!({"name": "b", "resources": {"memory": "32m"}})),
            409,
        )
        .await;
    assert!(m.contains("already exists"), "{m}");
    let v = d.ok(Method::GET, "/v1/containers/a2", None).await;
    assert!(
        v["resources"].get("memory").is_none(),
        "nothing changed: {v}"
    );
    // Refused values are 400; JSON of the wrong shape (an unknown policy, a misspelt key) 422.
    for (bad, status) in [
        (json!({"name": "../x"}), 400),
        (json!({"name": "x".repeat(300)}), 400),
        (json!({}), 400),
        (json!({"restart": "sometimes"}), 422),
        (json!({"nme": "typo"}), 422),
    ] {
        d.fails(Method::PATCH, "/v1/containers/a2", Some(bad), status)
            .await;
    }
    assert_eq!(
        d.ok(Method::GET, &format!("/v1/containers/{id}"), None)
            .await["name"],
        "a2"
    );
    // The CLI: rename, a policy, top.
    let (ok, _, err) = d.cli(&["rename", "a2", "a3"]);
    assert!(ok, "{err}");
    let (ok, out, err) = d.cli(&["update", "--restart", "unless-stopped", "a3"]);
    assert!(ok && out.contains("unless-stopped"), "{out} {err}");
    let (ok, _, err) = d.cli(&["update", "a3"]);
    assert!(!ok && err.contains("nothing to update"), "{err}");
    let (ok, out, err) = d.cli(&["top", "b"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("PID") && lines[0].ends_with("CMD"),
        "{out}"
    );
    assert!(lines.len() == 2 && lines[1].ends_with("sleep 300"), "{out}");
    for n in ["a3", "b"] {
        d.ok(
            Method::DELETE,
            &format!("/v1/containers/{n}?force=true"),
            None,
        )
        .await;
    }
}

/// `--docker-listen tcp:…` serves the Docker API over the native TLS setup, and every request
/// needs a bearer token (the docker CLI sends it from its config's `HttpHeaders`) with the scope
/// the action needs; without TLS the daemon refuses to start.
#[tokio::test]
async fn docker_over_tcp_needs_tls_and_a_token_of_the_right_scope() {
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    common::certs::make_certs(c);
    let p = |f: &str| c.join(f).to_str().unwrap().to_owned();
    let cfg = c.join("inarray.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p("server.pem"),
            p("server.key")
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = common::daemon::TestDaemon::start_with(vec![
        "--config".into(),
        cfg.to_str().unwrap().into(),
        "--docker-listen".into(),
        format!("tcp:127.0.0.1:{port}"),
    ])
    .await;
    d.with_busybox().await;
    let token = |scope: &str| {
        let (ok, out, err) = d.cli(&["token", "add", &format!("dock-{scope}"), "--scope", scope]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    let (operate, read) = (token("operate"), token("read"));
    let ca = p("ca.pem");
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let run = |secret: Option<&str>, args: &[&str]| {
            match secret {
                Some(t) => std::fs::write(
                    docker.config.join("config.json"),
                    json!({"HttpHeaders": {"Authorization": format!("Bearer {t}")}}).to_string(),
                ),
                None => std::fs::write(docker.config.join("config.json"), "{}"),
            }
            .unwrap();
            let mut all = vec!["--tlsverify", "--tlscacert", &ca];
            all.extend_from_slice(args);
            let out = docker
                .command(&all)
                .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, out, err) = run(
            Some(&operate),
            &["run", "--rm", "busybox", "echo", "over tls"],
        );
        assert_eq!((code, out.as_str()), (0, "over tls\n"), "{err}");
        let (code, _, err) = run(None, &["ps"]);
        assert_ne!(code, 0);
        assert!(err.to_lowercase().contains("token"), "no token: {err}");
        let (code, out, err) = run(Some(&read), &["ps", "-a"]);
        assert_eq!(code, 0, "a read token lists: {err}");
        assert!(out.starts_with("CONTAINER ID"), "{out}");
        let (code, _, err) = run(Some(&read), &["create", "busybox", "true"]);
        assert_ne!(code, 0);
        assert!(err.contains("operate"), "a read token cannot create: {err}");
    }
    assert!(
        native_containers(&d).await.is_empty(),
        "nothing was made by the refused calls"
    );

    // Plain TCP is refused at start, naming the key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("array")).unwrap();
    let out = std::process::Command::new(common::daemon::TestDaemon::bin())
        .args(["serve", "--array"])
        .arg(dir.path().join("array"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("api.sock").display()))
        .args(["--docker-listen", &format!("tcp:127.0.0.1:{port}")])
        .args([
            "--cgroup-root",
            &format!("inarray-e2e-plain{}", std::process::id()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("docker_listen") && err.contains("TLS"),
        "{err}"
    );
}
