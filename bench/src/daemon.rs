//! A real `inarray serve` on a temporary array, state directory and socket, killed (with every
//! container it started) when dropped, whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use inarray_api::client::Client;
use inarray_api::serve::Listen;
use serde_json::Value;

/// No single API call of the benchmarks may take longer than this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Daemon {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub pid: i32,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `bin serve` with everything under `dir` (created), and waits until it answers.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        Self::start_with(bin, dir, &[]).await
    }

    /// The same with more arguments to `serve` (e.g. `--nfs-listen HOST:PORT`).
    pub async fn start_with(bin: &Path, dir: &Path, extra: &[String]) -> Result<Self> {
        let array = dir.join("array");
        let state = dir.join("state");
        std::fs::create_dir_all(&array).with_context(|| format!("{}", array.display()))?;
        std::fs::create_dir_all(&state).with_context(|| format!("{}", state.display()))?;
        let state = state.canonicalize()?;
        let socket = dir.join("run/api.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--array")
            .arg(&array)
            .arg("--state-dir")
            .arg(&state)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra)
            .env("INARRAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} serve", bin.display()))?;
        let pid = child.id() as i32;
        // bench/run's trap reads this to clean up if this program itself is killed.
        std::fs::write(dir.join("daemon.pid"), pid.to_string())?;
        let mut d = Daemon {
            dir: dir.to_owned(),
            state,
            socket,
            pid,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = d.call(Method::GET, "/v1/health", None).await {
                if v["status"] == "ok" {
                    return Ok(d);
                }
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                bail!("the daemon exited with {status}: {}", d.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not come up in 30 s: {}", d.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(Listen::Unix(self.socket.clone()))
    }

    /// One API call, bounded by [`CALL_TIMEOUT`].
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        call(&self.client(), method, path, body).await
    }

    /// Imports an image archive under `name`.
    pub async fn import(&self, archive: &Path, name: &str) -> Result<()> {
        let c = self.client();
        tokio::time::timeout(
            CALL_TIMEOUT,
            c.upload(&format!("/v1/images/import?name={name}"), archive),
        )
        .await
        .context("image import timed out")?
        .with_context(|| format!("import {}", archive.display()))?;
        Ok(())
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// Ids of every container this daemon has files for.
    pub fn container_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.state.join("containers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 10 s; then the same clean-up as on drop.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet; no memory involved.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    /// Leaves nothing behind: kills the daemon, then every process in the cgroups of every
    /// container it has files for (which makes their shims exit), and removes those cgroups.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for id in self.container_ids() {
            for dir in crate::procs::cgroup_dirs(&id) {
                crate::procs::kill_cgroup(&dir);
            }
        }
        let _ = std::fs::remove_file(self.dir.join("daemon.pid"));
    }
}

pub async fn call(c: &Client, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
    match tokio::time::timeout(CALL_TIMEOUT, c.json(method.clone(), path, body)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => bail!("{method} {path}: {e}"),
        Err(_) => bail!("{method} {path}: no answer in {CALL_TIMEOUT:?}"),
    }
}
