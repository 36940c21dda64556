//! Starts the real `inarray serve` (the binary cargo built) on a temporary array, state dir and
//! socket, and talks to it over that socket with the project's own client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inarray_api::client::{Client, ClientError};
use inarray_api::serve::Listen;
use serde_json::Value;

pub use inarray_api::client::Method;

const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails the test unless running as root: these are real end-to-end tests (namespaces, mounts,
/// cgroups) and must not silently pass without doing anything.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (namespaces, mounts, cgroups): run the README's test command as root"
    );
}

pub struct TestDaemon {
    pub tmp: tempfile::TempDir,
    pub array: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    /// More arguments for `inarray serve` (e.g. `--config FILE`, another `--listen`).
    pub extra_args: Vec<String>,
    /// This daemon's own cgroup root (`--cgroup-root`): concurrent test daemons never share an
    /// engine's cgroup, and dropping the daemon removes them all.
    pub cgroup_root: String,
    /// A config file passed with `--config` at the next launch.
    pub config: Option<PathBuf>,
}

impl TestDaemon {
    pub fn bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_inarray"))
    }

    /// A fresh daemon with an empty array and state.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// A fresh daemon started with more arguments; `{tmp}` in them is the test's temp dir.
    pub async fn start_with(extra_args: Vec<String>) -> Self {
        Self::start_on_array(None, extra_args).await
    }

    /// A fresh daemon whose array is `array` (e.g. a loop-mounted filesystem the test made;
    /// `None`: an empty directory in the test's temp dir).
    pub async fn start_on_array(array: Option<PathBuf>, extra_args: Vec<String>) -> Self {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("inarray-e2e-")
            .tempdir()
            .expect("tempdir");
        let array = array.unwrap_or_else(|| tmp.path().join("array"));
        std::fs::create_dir_all(&array).unwrap();
        let mut d = TestDaemon {
            array,
            state: tmp.path().join("state"),
            socket: tmp.path().join("run/api.sock"),
            child: None,
            extra_args: extra_args
                .iter()
                .map(|a| a.replace("{tmp}", tmp.path().to_str().unwrap()))
                .collect(),
            tmp,
            cgroup_root: unique_cgroup_root(),
            config: None,
        };
        d.launch().await;
        d
    }

    pub fn serve_command(&self) -> Command {
        let mut cmd = Command::new(Self::bin());
        cmd.arg("serve")
            .arg("--array")
            .arg(&self.array)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(format!("unix:{}", self.socket.display()))
            .args(&self.extra_args)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .env("INARRAY_LOG", "info");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd
    }

    /// SIGTERM the daemon and wait for it to exit.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running daemon");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    /// (Re)starts the daemon process and waits until it answers.
    pub async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("daemon.log"))
            .unwrap();
        let child = self
            .serve_command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn inarray serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = self.client().json(Method::GET, "/v1/health", None).await {
                if v["status"] == "ok" {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The network settings this daemon runs with (its config file's `[networks]`, if any).
    pub fn network_options(&self) -> inarray_runtime::network::NetworkOptions {
        inarray_runtime::network::NetworkOptions::default()
    }

    /// SIGKILL the daemon (containers must survive).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the `inarray` CLI with exactly `args` (no token from the environment):
    /// (success, stdout, stderr).
    pub fn cli_raw(args: &[&str]) -> (bool, String, String) {
        let out = Command::new(Self::bin())
            .args(args)
            .env_remove("INARRAY_TOKEN")
            .output()
            .expect("run the inarray CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The CLI against this daemon's unix socket (`--host unix:…` first).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let host = format!("unix:{}", self.socket.display());
        let mut all = vec!["--host", &host];
        all.extend_from_slice(args);
        Self::cli_raw(&all)
    }

    pub fn client(&self) -> Client {
        Client::new(Listen::Unix(self.socket.clone()))
    }

    /// One API call; a test fails (instead of hanging) when the daemon takes over two minutes.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.client().json(method.clone(), path, body.as_ref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => panic!(
                "{method} {path}: no answer in {CALL_TIMEOUT:?}\n--- daemon log:\n{}",
                self.log()
            ),
        }
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        match self.call(method.clone(), path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{method} {path}: {e}\n--- daemon log:\n{}", self.log()),
        }
    }

    /// A call that must fail with `status`; returns the error message.
    pub async fn fails(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> String {
        match self.call(method.clone(), path, body).await {
            Err(ClientError::Api {
                status: s,
                message,
                code,
            }) => {
                assert_eq!(s.as_u16(), status, "{method} {path}: {code}: {message}");
                assert!(!message.is_empty());
                message
            }
            other => panic!("{method} {path}: expected HTTP {status}, got {other:?}"),
        }
    }

    pub async fn import(&self, archive: &Path, name: &str) -> Value {
        match self
            .client()
            .upload(&format!("/v1/images/import?name={name}"), archive)
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("import {}: {e}\n{}", archive.display(), self.log()),
        }
    }

    /// Imports the standard busybox test image as `busybox:latest`.
    pub async fn with_busybox(&self) {
        let archive = self.tmp.path().join("busybox-oci.tar");
        super::image_builder::write_oci_archive(&archive, "busybox:latest");
        self.import(&archive, "busybox:latest").await;
    }

    /// Creates (and by default starts) a container; returns its object.
    pub async fn run(&self, body: Value) -> Value {
        self.ok(Method::POST, "/v1/containers", Some(body)).await
    }

    /// Runs to exit; returns (exit code, log text).
    pub async fn run_to_exit(&self, body: Value) -> (i64, String) {
        let c = self.run(body).await;
        let id = c["id"].as_str().unwrap().to_owned();
        let w = self
            .ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
            .await;
        let logs = self.logs(&id).await;
        (
            w["exit_code"]
                .as_i64()
                .unwrap_or_else(|| panic!("no exit code: {w}\n{logs}")),
            logs,
        )
    }

    pub async fn logs(&self, id: &str) -> String {
        let mut out = Vec::new();
        self.client()
            .stream(&format!("/v1/containers/{id}/logs"), |d| {
                out.extend_from_slice(d)
            })
            .await
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let mut out = Vec::new();
        self.client()
            .stream("/metrics", |b| out.extend_from_slice(b))
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// `GET /metrics` as `name{labels}` → value (comment lines left out).
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    pub async fn container(&self, id: &str) -> Value {
        self.ok(Method::GET, &format!("/v1/containers/{id}"), None)
            .await
    }

    /// Polls until `pred` holds for the container, or panics after `secs`.
    pub async fn wait_for(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.container(id).await;
            if pred(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on container {id}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestDaemon {
    /// Leaves nothing behind: kills the daemon and every container it started (through their
    /// cgroups, which also makes their shims exit and unmount).
    fn drop(&mut self) {
        self.kill9();
        // The containers first (their shims exit and unmount), then the daemon's own engine.
        let _ = inarray_runtime::cgroups::cleanup(
            std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
            &format!("/{}", self.cgroup_root),
        );
        let _ = inarray_runtime::cgroups::cleanup(
            std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
            &format!("/{}-storage", self.cgroup_root),
        );
        // Bridge networks: netavark's veths, rules and aardvark entries, the namespace files.
        inarray_runtime::network::cleanup_state(&self.state, &self.network_options());
    }
}

/// A cgroup root no other test daemon on this machine uses.
fn unique_cgroup_root() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("inarray-t{}-{n}", std::process::id())
}

/// Mount points (from /proc/self/mountinfo) whose path mentions `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}
