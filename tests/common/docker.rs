//! The docker CLIs and raw requests against a daemon's Docker socket (`--docker-listen`), shared
//! by the Docker API's end-to-end tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::daemon::{Method, TestDaemon};

/// Where the docker CLIs are looked for: the current one, then Debian's.
const CLIENTS: [&str; 2] = ["/usr/local/bin/docker", "/usr/bin/docker"];

/// The docker CLIs on this machine; at least one is required.
pub fn clients() -> Vec<PathBuf> {
    let found: Vec<PathBuf> = CLIENTS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    assert!(
        !found.is_empty(),
        "no docker CLI at {CLIENTS:?}: ./dev test installs Debian's docker.io (the client only)"
    );
    found
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One docker CLI pointed at one daemon's Docker socket, with a config directory of its own
/// (no user's contexts or credentials).
pub struct Docker<'a> {
    pub bin: PathBuf,
    pub daemon: &'a TestDaemon,
    pub config: PathBuf,
}

impl<'a> Docker<'a> {
    pub fn new(bin: &Path, daemon: &'a TestDaemon) -> Self {
        let config = daemon
            .tmp
            .path()
            .join(format!("docker-config-{}", bin.display()).replace('/', "_"));
        std::fs::create_dir_all(&config).unwrap();
        Self {
            bin: bin.to_owned(),
            daemon,
            config,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", docker_socket(self.daemon).display()),
            )
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        c
    }

    pub fn run_with(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, b"")
    }

    /// A command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.code,
            0,
            "{} {args:?} failed: {}\n--- daemon log:\n{}",
            self.bin.display(),
            o.stderr,
            self.daemon.log()
        );
        o.stdout
    }

    /// A command that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_ne!(
            o.code,
            0,
            "{} {args:?} succeeded: {}",
            self.bin.display(),
            o.stdout
        );
        o.stderr
    }
}

pub fn docker_socket(d: &TestDaemon) -> PathBuf {
    d.tmp.path().join("run/docker.sock")
}

/// A daemon serving the Docker API too, with `busybox:latest` imported.
pub async fn daemon() -> TestDaemon {
    let d = TestDaemon::start_with(vec![
        "--docker-listen".into(),
        "{tmp}/run/docker.sock".into(),
    ])
    .await;
    d.with_busybox().await;
    d
}

/// The containers the native API knows (all states).
pub async fn native_containers(d: &TestDaemon) -> Vec<Value> {
    d.ok(Method::GET, "/v1/containers?all=true", None)
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// One raw HTTP/1.1 request to the Docker socket: (status, headers, body).
pub fn raw(d: &TestDaemon, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String, String) {
    let mut s = UnixStream::connect(docker_socket(d)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let len = body.map_or(0, <[u8]>::len);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // A server that refuses early may close before all is sent.
        let _ = s.write_all(b);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

pub fn message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "Docker-shaped: {v}"
    );
    v["message"].as_str().unwrap().to_owned()
}
