//! API access against the real daemon: the socket's mode and group, bearer tokens on TCP (made
//! and revoked with the CLI), hostile clients (slowloris, idle connections, huge and deep bodies,
//! connection floods), the audit log, JSON logs, SIGHUP reloads and SIGTERM with requests in flight.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::certs::make_certs;
use common::daemon::{Method, TestDaemon};
use inarray_api::client::{Client, ClientError};
use inarray_api::serve::Listen;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the CLI against the daemon; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    TestDaemon::cli_raw(args)
}

/// One raw HTTP/1.1 exchange; returns the status code and the body.
fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Reads until the server closes the connection; returns how long that took.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the server did not close the connection within {limit:?}")
            }
            Err(_) => return t.elapsed(),
        }
    }
}

fn daemon_rss_kib(d: &TestDaemon) -> u64 {
    let pid = d.child.as_ref().unwrap().id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn start_tcp(config: &str) -> (TestDaemon, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("inarray.toml");
    std::fs::write(&cfg, config).unwrap();
    // The config file must outlive the temp dir above: copy it into the daemon's own.
    let d = TestDaemon::start_with(vec![
        "--listen".into(),
        // Any address may be bound now that TCP needs tokens.
        format!("tcp:0.0.0.0:{port}"),
        "--config".into(),
        cfg.to_str().unwrap().into(),
    ])
    .await;
    std::mem::forget(dir);
    (d, port)
}

fn tcp_client(port: u16, token: Option<&str>) -> Client {
    Client::new(Listen::Tcp(format!("127.0.0.1:{port}").parse().unwrap()))
        .with_token(token.map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_tcp_made_and_revoked_with_the_cli() {
    let group = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup");
    let (d, port) = start_tcp("socket_group = \"nogroup\"\n").await;
    // The unix socket: 0660 and the configured group.
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group.gid.as_raw());

    // No token: 401 in the error shape, over a plain HTTP client too.
    let e = tcp_client(port, None)
        .json(Method::GET, "/v1/containers", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status, code, .. } if status.as_u16() == 401 && code == "unauthorized"),
        "{e:?}"
    );
    let (status, body) = raw(
        port,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))["error"]
            ["code"],
        "unauthorized"
    );

    // `inarray token add` over the unix socket prints the secret once.
    let unix = format!("unix:{}", d.socket.display());
    let tcp = format!("tcp:127.0.0.1:{port}");
    let (ok, secret, err) = cli(&["--host", &unix, "token", "add", "ci", "--scope", "read"]);
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("inarray_"), "{secret}");
    let (ok, list, _) = cli(&["--host", &unix, "token", "ls"]);
    assert!(ok && list.contains("ci") && list.contains("read") && !list.contains(&secret));
    // The secret is stored hashed: it is nowhere in the database files.
    for f in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(d.state.join(f)) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{f} holds the secret"
            );
        }
    }

    // With it: reads work over TCP, writes are 403; the CLI takes it from the environment.
    let v = tcp_client(port, Some(&secret))
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap();
    assert!(
        v["version"].is_string() && v["cgroup_mode"].is_string(),
        "{v}"
    );
    let out = std::process::Command::new(TestDaemon::bin())
        .args(["--host", &tcp, "ps"])
        .env("INARRAY_TOKEN", &secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (ok, _, err) = cli(&["--host", &tcp, "--token", &secret, "token", "add", "x"]);
    assert!(!ok && err.contains("needs admin"), "{err}");
    let (ok, _, err) = cli(&["--host", &tcp, "ps"]);
    assert!(!ok && err.contains("bearer token is required"), "{err}");

    // Revoked: refused at once.
    let (ok, _, err) = cli(&["--host", &unix, "token", "rm", "ci"]);
    assert!(ok, "{err}");
    let e = tcp_client(port, Some(&secret))
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status, .. } if status.as_u16() == 401),
        "{e:?}"
    );

    // `token create --ttl`: served until it expires, then 401 "token expired".
    let (ok, brief, err) = cli(&[
        "--host", &unix, "token", "create", "brief", "--scope", "read", "--ttl", "2s",
    ]);
    assert!(ok && err.contains("expires"), "{err}");
    let brief = brief.trim().to_owned();
    tcp_client(port, Some(&brief))
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let e = tcp_client(port, Some(&brief))
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status, message, .. } if status.as_u16() == 401 && message == "token expired"),
        "{e:?}"
    );
    let (ok, list, _) = cli(&["--host", &unix, "token", "ls"]);
    assert!(ok && list.contains("expired 20"), "{list}");

    // The audit log names the unix caller by uid and the refused TCP caller by address.
    let (ok, audit, err) = cli(&["--host", &unix, "--json", "audit"]);
    assert!(ok, "{err}");
    let a: Value = serde_json::from_str(&audit).unwrap();
    let entries = a["entries"].as_array().unwrap();
    let has = |who: &str, route: &str, status: i64| {
        entries
            .iter()
            .any(|e| e["who"] == who && e["route"] == route && e["status"] == status)
    };
    assert!(has("unix:0", "/v1/tokens", 201), "{a}");
    assert!(has("unix:0", "/v1/tokens/{name}", 204), "{a}");
    assert!(has("token:1:ci", "/v1/tokens", 403), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_cut_off_and_others_still_served() {
    let (d, port) = start_tcp(
        "[api]\nheader_timeout_secs = 1.0\nmax_connections = 20\nmax_body_bytes = 262144\n",
    )
    .await;
    let (ok, secret, err) = cli(&[
        "--host",
        &format!("unix:{}", d.socket.display()),
        "token",
        "add",
        "op",
        "--scope",
        "operate",
    ]);
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();

    // Slowloris: a header byte every 200 ms never completes the request: closed after ~1 s.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let trickle = {
        let mut s = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..50 {
                if s.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Meanwhile others are served.
    tcp_client(port, Some(&secret))
        .json(Method::GET, "/v1/health", None)
        .await
        .unwrap();
    let took = time_to_close(&mut slow, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "slowloris held {took:?}");
    trickle.join().unwrap();

    // An idle connection (nothing sent) and an idle keep-alive one are closed too.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(time_to_close(&mut idle, Duration::from_secs(5)) < Duration::from_secs(3));
    let mut ka = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ka.write_all(
        format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let took = time_to_close(&mut ka, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "keep-alive held {took:?}");

    // A 100 MB body is refused (413) without being buffered.
    let rss_before = daemon_rss_kib(&d);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        format!(
            "POST /v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..100 {
        if s.write_all(&chunk).is_err() {
            break; // the server answered and closed
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("length limit of 262144 bytes"), "{reply}");
    let rss_after = daemon_rss_kib(&d);
    assert!(
        rss_after < rss_before + 20 * 1024,
        "daemon grew from {rss_before} to {rss_after} KiB"
    );

    // Deeply nested JSON and a 20k-entry array: 400 before any parsing.
    let deep = format!("{{\"image\":{}{}}}", "[".repeat(50_000), "]".repeat(50_000));
    let long = format!(
        "{{\"image\":\"x\",\"env\":[{}]}}",
        vec!["\"A=1\""; 20_000].join(",")
    );
    for (body, needle) in [(deep, "nested deeper"), (long, "more than 16384 entries")] {
        let (status, reply) = raw(
            port,
            format!(
                "POST /v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(status, 400, "{reply}");
        assert!(reply.contains(needle), "{reply}");
    }
    // 100 KiB of headers: refused (431) or cut off, never buffered without bound.
    let (status, _) = raw(
        port,
        format!(
            "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 << 10)
        )
        .as_bytes(),
    );
    assert!(status == 431 || status == 0, "{status}");
    // Both Content-Length and Transfer-Encoding (request smuggling): 400, never two requests.
    let (status, _) = raw(
        port,
        format!(
            "POST /v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/tokens HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 400);
    // Garbage instead of HTTP: the connection is closed, the daemon serves on.
    let (status, _) = raw(
        port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(status == 0 || status == 400, "{status}");

    // A connection flood: beyond max_connections new ones are closed at once; the unix socket
    // (its own listener) is still served.
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(time_to_close(&mut extra, Duration::from_secs(5)) < Duration::from_millis(900));
    d.ok(Method::GET, "/v1/health", None).await;
    drop(held);
    // Once they are gone (header timeout), TCP is served again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tcp_client(port, Some(&secret))
        .json(Method::GET, "/v1/health", None)
        .await
        .unwrap();
    // Latency histograms saw the requests, by route and status.
    let m = d.metrics_text().await;
    assert!(
        m.contains(
            "inarray_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/containers\",status=\"413\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_sighup_reload_and_sigterm_with_a_request_in_flight() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    d.kill9();
    std::fs::create_dir_all(d.array.join("pub")).unwrap();
    let cfg = d.tmp.path().join("inarray.toml");
    std::fs::write(&cfg, "log = \"info\"\nlog_format = \"json\"\n").unwrap();
    let log_path = d.tmp.path().join("json.log");
    let spawn = |d: &TestDaemon| {
        let log = std::fs::File::create(&log_path).unwrap();
        d.serve_command()
            .arg("--config")
            .arg(&cfg)
            .env_remove("INARRAY_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    d.child = Some(spawn(&d));
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.call(Method::GET, "/v1/health", None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.fails(Method::DELETE, "/v1/containers/nope", None, 404)
        .await;
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let req = lines()
        .into_iter()
        .find(|l| l["message"] == "request")
        .expect("a request line");
    assert_eq!(req["level"], "INFO");
    assert_eq!(req["status"], 404);
    let span = &req["spans"][0];
    assert_eq!(span["name"], "request");
    assert_eq!(span["route"], "/v1/containers/{id}");
    assert_eq!(span["method"], "DELETE");
    assert_eq!(span["who"], "unix:0");

    let pid = nix::unistd::Pid::from_raw(d.child.as_ref().unwrap().id() as i32);
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let wait_line = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = lines()
                .into_iter()
                .find(|l| l["message"].as_str().unwrap_or("").contains(needle))
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the log");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A bad file changes nothing.
    std::fs::write(
        &cfg,
        "log = \"debug\"\nlog_format = \"json\"\n[[exports]]\nname = \"pub\"\npath = \"../etc\"\nclients = [{match = \"*\", access = \"ro\"}]\n",
    )
    .unwrap();
    hup();
    let l = wait_line("configuration not reloaded");
    assert!(l["error"].as_str().unwrap().contains("exports.pub"), "{l}");
    let v = d.ok(Method::GET, "/v1/exports", None).await;
    assert_eq!(v, json!([]));
    std::fs::write(&cfg, "log = [\"not a string\"]\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.ok(Method::GET, "/v1/health", None).await;
    // A good one: exports, engines and the log filter change; other keys wait for a restart.
    let engine = format!("rl{}", std::process::id());
    std::fs::write(
        &cfg,
        format!("log = \"debug,libcgroups=error\"\nlog_format = \"text\"\n[[exports]]\nname = \"pub\"\npath = \"pub\"\nclients = [{{match = \"*\", access = \"ro\"}}]\n[[engines]]\nname = \"{engine}\"\nresources = {{ cpu_weight = 50 }}\n"),
    )
    .unwrap();
    hup();
    wait_line("configuration reloaded");
    assert!(lines().iter().any(|l| l["message"] == "log filter changed"));
    assert!(lines().iter().any(
        |l| l["message"].as_str().unwrap_or("").contains("next start") && l["key"] == "log_format"
    ));
    let v = d.ok(Method::GET, "/v1/exports", None).await;
    assert_eq!(v[0]["name"], "pub", "{v}");
    let e = d
        .ok(Method::GET, &format!("/v1/engines/{engine}"), None)
        .await;
    assert_eq!(e["name"], engine.as_str(), "{e}");
    // The debug filter is live: GETs are now logged.
    d.ok(Method::GET, "/v1/containers", None).await;
    assert!(lines()
        .iter()
        .any(|l| l["level"] == "DEBUG" && l["spans"][0]["route"] == "/v1/containers"));

    // SIGTERM with a request in flight: it is answered, then the daemon exits; the container
    // that was waited on ran to its end under its shim.
    let c = d
        .run(json!({"image": "busybox", "command": ["sh", "-c", "sleep 2; exit 3"]}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let waiter = {
        let client = d.client();
        let id = id.clone();
        tokio::spawn(async move {
            client
                .json(Method::POST, &format!("/v1/containers/{id}/wait"), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = d.sigterm();
    assert!(status.success(), "{status}");
    let w = waiter
        .await
        .unwrap()
        .expect("the in-flight wait was answered");
    assert_eq!(w["exit_code"], 3, "{w}");
    assert!(!d.socket.exists());
    // Cleanup of the reloaded engine's cgroup: start again and delete it.
    d.launch().await;
    d.ok(Method::DELETE, &format!("/v1/engines/{engine}"), None)
        .await;
    let _ = std::fs::remove_file(&cfg);
}

/// curl over HTTPS; returns (curl succeeded, HTTP status, body).
fn curl(port: u16, path: &str, token: Option<&str>, extra: &[&str]) -> (bool, u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.success(),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certs(c);
    let p = |f: &str| c.join(f).to_str().unwrap().to_owned();
    let tls = format!(
        "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        p("server.pem"),
        p("server.key")
    );
    let (mut d, port) = start_tcp(&tls).await;
    let (ok, secret, err) = cli(&[
        "--host",
        &format!("unix:{}", d.socket.display()),
        "token",
        "add",
        "tls",
    ]);
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    let ca = p("ca.pem");
    let (ok, status, body) = curl(port, "/v1/info", Some(&secret), &["--cacert", &ca]);
    assert!(ok && status == 200, "{status} {body}");
    assert!(body.contains("\"cgroup_mode\""), "{body}");
    let tcp = format!("tcp:127.0.0.1:{port}");
    let (ok, out, err) = cli(&["--host", &tcp, "--token", &secret, "--tls-ca", &ca, "ps"]);
    assert!(ok, "{out} {err}");
    let (ok, _, err) = cli(&[
        "--host",
        &tcp,
        "--token",
        &secret,
        "--tls-ca",
        &p("other-ca.pem"),
        "ps",
    ]);
    assert!(
        !ok && err.contains("tls with") && err.contains("certificate"),
        "an untrusted server certificate: {err}"
    );
    // By name: the certificate is checked for the DNS name (it has localhost), not the address.
    let by_name = format!("tcp://localhost:{port}");
    let (ok, out, err) = cli(&[
        "--host", &by_name, "--token", &secret, "--tls-ca", &ca, "ps",
    ]);
    assert!(ok, "{out} {err}");
    let (_, status, body) = curl(port, "/v1/info", None, &["--cacert", &ca]);
    assert_eq!(status, 401, "{body}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (status, _) = raw(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 0);
    // A server certificate the client does not trust: curl refuses.
    let (ok, _, _) = curl(
        port,
        "/v1/info",
        Some(&secret),
        &["--cacert", &p("other-ca.pem")],
    );
    assert!(!ok);

    // Mutual TLS: only clients with a certificate from the configured CA get through (and
    // they still need a token).
    d.kill9();
    let cfg = d.extra_args.last().unwrap().clone();
    std::fs::write(&cfg, format!("{tls}tls_client_ca = \"{}\"\n", p("ca.pem"))).unwrap();
    d.launch().await;
    let (ok, status, _) = curl(port, "/v1/info", Some(&secret), &["--cacert", &ca]);
    assert!(
        !ok && status == 0,
        "no client certificate: refused in the handshake"
    );
    let rogue = [
        "--cacert",
        &ca,
        "--cert",
        &p("rogue.pem"),
        "--key",
        &p("rogue.key"),
    ];
    let (ok, status, _) = curl(port, "/v1/info", Some(&secret), &rogue);
    assert!(
        !ok && status == 0,
        "a certificate from another CA is refused"
    );
    let good = [
        "--cacert",
        &ca,
        "--cert",
        &p("client.pem"),
        "--key",
        &p("client.key"),
    ];
    let (ok, status, body) = curl(port, "/v1/info", Some(&secret), &good);
    assert!(ok && status == 200, "{status} {body}");
    let (_, status, _) = curl(port, "/v1/info", None, &good);
    assert_eq!(status, 401, "a certificate does not replace the token");
    // The CLI speaks TLS too, with its client certificate.
    let tcp = format!("tcp:127.0.0.1:{port}");
    let (ok, out, err) = cli(&[
        "--host",
        &tcp,
        "--token",
        &secret,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &p("client.pem"),
        "--tls-key",
        &p("client.key"),
        "info",
    ]);
    assert!(ok && out.contains("cgroup_mode"), "{err}");
    let (ok, _, err) = cli(&["--host", &tcp, "--token", &secret, "--tls-ca", &ca, "info"]);
    assert!(!ok, "no client certificate: {err}");
    // A TLS client that never finishes its handshake is cut off by the header timeout (10 s
    // by default); the unix socket is served meanwhile.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    d.ok(Method::GET, "/v1/health", None).await;
    assert!(time_to_close(&mut silent, Duration::from_secs(15)) < Duration::from_secs(12));

    // A key that does not match, or a missing file: the daemon refuses to start, naming it.
    d.kill9();
    std::fs::write(
        &cfg,
        format!(
            "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p("server.pem"),
            p("nope.key")
        ),
    )
    .unwrap();
    let out = d.serve_command().output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api.tls_key"),
        "{out:?}"
    );
    std::fs::write(&cfg, format!("[api]\ntls_cert = \"{}\"\n", p("server.pem"))).unwrap();
    let out = d.serve_command().output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("go together"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_keeps_the_newest_entries() {
    let (mut d, _port) = start_tcp("[api]\naudit_max_entries = 5\n").await;
    for i in 0..12 {
        d.fails(
            Method::POST,
            &format!("/v1/containers/gone{i}/start"),
            None,
            404,
        )
        .await;
    }
    let a = d.ok(Method::GET, "/v1/audit?limit=100", None).await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 12);
    // Retention runs at start (and hourly).
    d.kill9();
    d.launch().await;
    let a = d.ok(Method::GET, "/v1/audit?limit=100", None).await;
    let targets: Vec<&str> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "/v1/containers/gone11/start",
            "/v1/containers/gone10/start",
            "/v1/containers/gone9/start",
            "/v1/containers/gone8/start",
            "/v1/containers/gone7/start"
        ]
    );
}
