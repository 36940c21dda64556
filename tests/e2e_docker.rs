//! The Docker Engine API (issue #17) driven by real docker CLIs against a real daemon started
//! with `--docker-listen`: the current CLI (28.x, API 1.50) at /usr/local/bin/docker where the
//! machine has one, and Debian's `docker.io` client (20.10, API 1.41) at /usr/bin/docker, which
//! `./dev test` installs (only the client is used; no dockerd is ever started). Every test runs
//! with each client found. Images come from tests/common/image_builder.rs: nothing is
//! downloaded.
//!
//! Run as root: `cargo test --test e2e_docker`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::TestDaemon;
use common::docker::{clients, daemon, docker_socket, message, native_containers, raw, Docker};
use common::image_builder;
use common::registry::Registry;
use common::tmux::{wait_file, Tmux};
use serde_json::Value;

#[tokio::test]
async fn version_ping_and_the_supported_range() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let server = docker.ok(&[
            "version",
            "--format",
            "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}",
        ]);
        assert_eq!(server.trim(), "1.51 1.24 linux", "{}", bin.display());
        let client = docker.ok(&["version", "--format", "{{.Client.APIVersion}}"]);
        assert!(
            ["1.50", "1.41"].contains(&client.trim()),
            "{}: negotiated {client}",
            bin.display()
        );
        let info = docker.ok(&["info", "--format", "{{.OSType}} {{.Images}}"]);
        assert_eq!(info.trim(), "linux 1", "{}", bin.display());
    }
    for method in ["GET", "HEAD"] {
        let (status, head, body) = raw(&d, method, "/_ping", None);
        assert_eq!(status, 200, "{method}");
        assert!(head.contains("api-version: 1.51"), "{head}");
        assert!(head.contains("ostype: linux"), "{head}");
        assert!(head.contains("docker-experimental: false"), "{head}");
        if method == "GET" {
            assert_eq!(body, "OK");
        }
    }
    let (status, _, body) = raw(&d, "GET", "/v1.41/_ping", None);
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, _, body) = raw(&d, "GET", "/v1.12/version", None);
    assert_eq!(status, 400);
    let m = message(&body);
    assert!(m.contains("1.12 is too old") && m.contains("1.24"), "{m}");
    let (status, _, body) = raw(&d, "GET", "/v1.99/containers/json", None);
    assert_eq!(status, 400);
    assert!(message(&body).contains("too new"));
    // A route of the Docker API this layer does not serve says so.
    for (method, path) in [
        ("GET", "/v1.50/volumes"),
        ("POST", "/v1.50/build"),
        ("POST", "/v1.50/images/busybox/push"),
        ("GET", "/events"),
    ] {
        let (status, _, body) = raw(&d, method, path, None);
        assert_eq!(status, 501, "{method} {path}");
        assert!(message(&body).contains("not implemented"), "{body}");
    }
}

#[tokio::test]
async fn run_rm_with_a_bind_inside_the_array() {
    let d = daemon().await;
    for (i, bin) in clients().into_iter().enumerate() {
        let docker = Docker::new(&bin, &d);
        let dir = d.array.join(format!("x{i}"));
        let bind = format!("{}:/data", dir.display());
        let o = docker.run(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "echo hi > /data/f; echo out; echo err >&2; exit 3",
        ]);
        assert_eq!(o.code, 3, "{}: {}\n{}", bin.display(), o.stderr, d.log());
        assert_eq!(o.stdout, "out\n", "{}", bin.display());
        assert!(o.stderr.contains("err\n"), "stderr apart: {}", o.stderr);
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "hi\n");
        assert_eq!(docker.ok(&["ps", "-aq"]), "", "--rm: the container is gone");
        assert!(native_containers(&d).await.is_empty());
        // Stdin reaches a container run with -i.
        let o = docker.run_with(
            &["run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done"],
            b"from stdin\n",
        );
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (0, "from stdin\ndone\n"),
            "{}",
            o.stderr
        );
    }
}

#[tokio::test]
async fn detached_containers_ps_exec_logs_stop_kill_rm_inspect() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let id = docker.ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo started; exec sleep 300",
        ]);
        let id = id.trim();
        assert!(id.len() >= 12, "{id}");
        let ps = docker.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
        assert!(ps.starts_with("web Up"), "{ps}");
        let o = docker.run(&["exec", "web", "sh", "-c", "echo in-exec; exit 7"]);
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (7, "in-exec\n"),
            "{}",
            o.stderr
        );
        assert_eq!(docker.ok(&["logs", "web"]), "started\n");
        docker.ok(&["stop", "-t", "1", "web"]);
        let exited = docker.ok(&[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(exited.trim(), "web");
        assert_eq!(docker.ok(&["ps", "-q"]), "", "nothing runs");
        docker.ok(&["start", "web"]);
        docker.ok(&["kill", "web"]);
        let v: Value = serde_json::from_str(&docker.ok(&["inspect", "web"])).unwrap();
        let c = &v[0];
        assert_eq!(c["Id"].as_str().unwrap(), id);
        assert_eq!(c["Name"], "/web");
        assert_eq!(c["State"]["Status"], "exited");
        assert_eq!(c["State"]["Running"], false);
        assert_eq!(c["State"]["ExitCode"], 137);
        assert_eq!(c["Config"]["Cmd"][2], "echo started; exec sleep 300");
        assert_eq!(c["Config"]["Image"], "busybox");
        assert_eq!(c["HostConfig"]["NetworkMode"], "none");
        let status = docker.ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.OOMKilled}}",
            "web",
        ]);
        assert_eq!(status.trim(), "exited false");
        assert_eq!(docker.ok(&["wait", "web"]).trim(), "137");
        docker.ok(&["start", "web"]);
        docker.ok(&["rm", "-f", "web"]);
        assert_eq!(docker.ok(&["ps", "-aq"]), "");
        assert!(docker.fails(&["inspect", "web"]).contains("No such"));
        assert!(native_containers(&d).await.is_empty());
    }
}

#[tokio::test]
async fn quick_exits_logs_tail_and_follow() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let o = docker.run(&[
            "run",
            "--name",
            "q",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two; echo three >&2; exit 1",
        ]);
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert_eq!(o.stdout, "one\ntwo\n");
        // The log keeps each line's stream and time.
        let o = docker.run(&["logs", "q"]);
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (0, "one\ntwo\n", "three\n")
        );
        let o = docker.run(&["logs", "--tail", "1", "q"]);
        assert_eq!(
            o.stdout.lines().count() + o.stderr.lines().count(),
            1,
            "{}{}",
            o.stdout,
            o.stderr
        );
        let stamped = docker.ok(&["logs", "-t", "q"]);
        let first = stamped.lines().next().unwrap_or_default();
        let (time, text) = first.split_once(' ').unwrap_or_default();
        assert_eq!(text, "one", "{stamped}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "a timestamp first: {stamped}"
        );
        assert_eq!(
            docker.ok(&["logs", "--since", "2100-01-01T00:00:00Z", "q"]),
            ""
        );
        docker.ok(&[
            "run",
            "-d",
            "--name",
            "f",
            "busybox",
            "sh",
            "-c",
            "echo a; sleep 1; echo b",
        ]);
        assert_eq!(
            docker.ok(&["logs", "-f", "f"]),
            "a\nb\n",
            "follow runs to the exit"
        );
        docker.ok(&["rm", "q", "f"]);
    }
}

#[tokio::test]
async fn images_save_gzip_load_round_trip_and_tag() {
    let d = daemon().await;
    for (i, bin) in clients().into_iter().enumerate() {
        let docker = Docker::new(&bin, &d);
        let list = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert_eq!(list.trim(), "busybox:latest");
        let archive = d.tmp.path().join(format!("saved-{i}.tar.gz"));
        let sh = format!(
            "{} save busybox | gzip > {}",
            bin.display(),
            archive.display()
        );
        let o = Command::new("sh")
            .args(["-c", &sh])
            .env(
                "DOCKER_HOST",
                format!("unix://{}", docker_socket(&d).display()),
            )
            .env("DOCKER_CONFIG", &docker.config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::metadata(&archive).unwrap().len() > 100_000);
        docker.ok(&["rmi", "busybox"]);
        assert_eq!(docker.ok(&["images", "-q"]), "");
        let data = std::fs::read(&archive).unwrap();
        let o = docker.run_with(&["load"], &data);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stdout.contains("Loaded image: busybox:latest"),
            "{}",
            o.stdout
        );
        docker.ok(&["tag", "busybox", "mine/bb:1"]);
        let list = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(
            list.contains("mine/bb:1") && list.contains("busybox:latest"),
            "{list}"
        );
        let o = docker.run(&["run", "--rm", "mine/bb:1", "echo", "tagged"]);
        assert_eq!((o.code, o.stdout.as_str()), (0, "tagged\n"), "{}", o.stderr);
        assert!(docker
            .ok(&["rmi", "mine/bb:1"])
            .contains("Untagged: mine/bb:1"));
        // An image that is not here is a 404 the CLI understands (it then tries to pull).
        let e = docker.fails(&["inspect", "--type", "image", "nothere:1"]);
        assert!(e.contains("No such image"), "{e}");
    }
}

#[tokio::test]
async fn hostile_requests_are_refused_naming_the_field_and_create_nothing() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        for (args, needles) in [
            (
                vec!["-v", "/etc:/x"],
                vec!["HostConfig.Binds[0]", "\"/etc\" is outside the array"],
            ),
            (
                vec!["-v", "/:/x"],
                vec!["HostConfig.Binds[0]", "\"/\" is outside the array"],
            ),
            (
                vec!["--privileged"],
                vec!["HostConfig.Privileged", "refused"],
            ),
            (vec!["--pid", "host"], vec!["HostConfig.PidMode", "refused"]),
            (vec!["--device", "/dev/null"], vec!["HostConfig.Devices"]),
            (vec!["--cap-add", "SYS_ADMIN"], vec!["HostConfig.CapAdd"]),
            (vec!["-p", "8080:80"], vec!["issue #18"]),
        ] {
            let mut all = vec!["run", "--rm"];
            all.extend(&args);
            all.extend(["busybox", "true"]);
            let e = docker.fails(&all);
            for n in needles {
                assert!(e.contains(n), "{} {args:?}: {e}", bin.display());
            }
        }
    }
    // The same over raw HTTP: statuses and Docker's error shape.
    let create = |host_config: Value| {
        let body =
            serde_json::json!({"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config});
        raw(
            &d,
            "POST",
            "/v1.50/containers/create",
            Some(body.to_string().as_bytes()),
        )
    };
    let (status, _, body) = create(serde_json::json!({"Binds": ["/etc:/x"]}));
    assert_eq!(status, 400);
    assert!(message(&body).starts_with("HostConfig.Binds[0]: source \"/etc\""));
    let (status, _, body) = create(serde_json::json!({"Privileged": true}));
    assert_eq!(status, 403);
    assert!(message(&body).starts_with("HostConfig.Privileged: "));
    let (status, _, body) = create(serde_json::json!({"NoSuchField": 1}));
    assert_eq!(status, 400);
    assert_eq!(
        message(&body),
        "HostConfig.NoSuchField: unknown field (not in the Docker Engine API)"
    );
    let (status, _, body) = create(serde_json::json!({"ShmSize": 1 << 30}));
    assert_eq!(status, 400);
    assert!(message(&body).contains("HostConfig.ShmSize: not supported by inarray"));
    // A 100 MB body: refused at the body limit, Docker-shaped.
    let big = vec![b' '; 100 << 20];
    let (status, _, body) = raw(&d, "POST", "/containers/create", Some(&big));
    assert_eq!(status, 413);
    assert!(!message(&body).is_empty());
    let (status, _, body) = raw(&d, "POST", "/v1.12/containers/create", Some(b"{}"));
    assert_eq!(status, 400);
    assert!(message(&body).contains("too old"));
    assert!(
        native_containers(&d).await.is_empty(),
        "nothing was created"
    );
    assert!(!d.array.join("x").exists());
}

/// `docker pull` from a registry on loopback (listed insecure in the daemon's config), and a
/// `docker run` of an image that is not here: the create's 404 `No such image` makes the CLI
/// pull it and try again.
#[tokio::test]
async fn pull_and_run_a_missing_image_from_a_registry() {
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(&scratch.path().join("registry"), None);
    let layout = scratch.path().join("layout");
    image_builder::write_oci_layout(&layout, "1");
    reg.push(&layout, "team/bb:1", None);
    let config = scratch.path().join("inarray.toml");
    std::fs::write(
        &config,
        format!("[registries.\"{}\"]\ninsecure = true\n", reg.host()),
    )
    .unwrap();
    let d = TestDaemon::start_with(vec![
        "--docker-listen".into(),
        "{tmp}/run/docker.sock".into(),
        "--config".into(),
        config.display().to_string(),
    ])
    .await;
    let image = format!("{}/team/bb:1", reg.host());
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        let out = docker.ok(&["pull", &image]);
        assert!(out.contains("Digest: sha256:"), "{}: {out}", bin.display());
        let list = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert_eq!(list.trim(), image);
        docker.ok(&["rmi", &image]);
        let o = docker.run(&["run", "--rm", &image, "echo", "pulled"]);
        assert_eq!(o.code, 0, "{}: {}\n{}", bin.display(), o.stderr, d.log());
        assert_eq!(o.stdout, "pulled\n");
        assert!(o.stderr.contains("Unable to find image"), "{}", o.stderr);
        docker.ok(&["rmi", &image]);
        let e = docker.fails(&["pull", &format!("{}/team/none:1", reg.host())]);
        assert!(!e.is_empty());
    }
}

/// `docker exec -it` and `docker run -it` in a real terminal (a tmux pane): a prompt, the
/// container's terminal, keys typed, the exit status.
#[tokio::test]
async fn exec_it_and_run_it_in_a_terminal() {
    let d = daemon().await;
    for (i, bin) in clients().into_iter().enumerate() {
        let docker = Docker::new(&bin, &d);
        docker.ok(&["run", "-d", "--name", "t", "busybox", "sleep", "300"]);
        for (what, args) in [
            ("exec", "exec -it t sh"),
            ("run", "run -it --rm busybox sh"),
        ] {
            let rc = d.tmp.path().join(format!("rc-{what}-{i}"));
            let stderr = d.tmp.path().join(format!("stderr-{what}-{i}"));
            let script = format!(
                "DOCKER_HOST=unix://{} DOCKER_CONFIG={} {} {args} 2>{}; echo $? > {}",
                docker_socket(&d).display(),
                docker.config.display(),
                bin.display(),
                stderr.display(),
                rc.display()
            );
            let t = Tmux::start(&script, stderr, 100, 30);
            t.wait_prompt(&d).await;
            t.line("tty; echo $((6*7)) $TERM");
            t.wait_line(&d, "42 xterm").await;
            let screen = t.screen().unwrap_or_default();
            assert!(screen.contains("/dev/pts/"), "{what}: {screen}");
            t.line("exit 9");
            assert_eq!(wait_file(&d, &t, &rc).await.trim(), "9", "{what}");
        }
        docker.ok(&["rm", "-f", "t"]);
    }
}

/// A health check set with the docker CLI runs: inspect and ps show the status.
#[tokio::test]
async fn health_checks_from_the_cli() {
    let d = daemon().await;
    for bin in clients() {
        let docker = Docker::new(&bin, &d);
        docker.ok(&[
            "run",
            "-d",
            "--name",
            "h",
            "--health-cmd",
            "test -e /tmp",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "300",
        ]);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = docker.ok(&["inspect", "--format", "{{.State.Health.Status}}", "h"]);
            if s.trim() == "healthy" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: still {s}",
                bin.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ps = docker.ok(&["ps", "--format", "{{.Status}}"]);
        assert!(ps.contains("(healthy)"), "{ps}");
        docker.ok(&["rm", "-f", "h"]);
    }
}
