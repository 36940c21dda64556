//! Section 7, exec round trip (issue #16): `exec /bin/true` in a running busybox `sleep 3600`
//! container, one container per runtime started once, then N round trips side by side:
//!
//! * inarray REST: `POST /v1/containers/{id}/exec {"command": ["/bin/true"]}`, then
//!   `POST /v1/execs/{eid}/start` upgraded (`Connection: Upgrade`, `Upgrade: tcp`; 101, the raw
//!   stream read to EOF), then `GET /v1/execs/{eid}` with `exit_code` 0 (the contract in
//!   docs/design/exec-contract.md);
//! * inarray CLI: the whole `inarray exec NAME /bin/true` process;
//! * `runc exec ID /bin/true` in a container `runc run -d` started from the prepared bundle;
//! * `podman exec NAME /bin/true` in a container `podman run -d` started.
//!
//! Interleaved run by run (every runtime gets the same share of the shared machine's drift).
//! Without an inarray binary only runc and podman are measured (the reference half).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use inarray_api::client::{Client, ClientError};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::daemon::{call, Daemon, CALL_TIMEOUT};
use crate::report::{errors, f, row, HEADER};
use crate::stats::Samples;
use crate::{ms, procs, run_cmd, IMAGE};

/// The inarray container's name (what `inarray exec` is given).
const NAME: &str = "inarray-bench-exec";

pub struct ExecOpts {
    /// The inarray binary; None: only runc and podman.
    pub bin: Option<PathBuf>,
    /// The directory `prepare` wrote (its `bundle/` and `busybox-oci.tar`); the daemon gets `d7/`.
    pub work: PathBuf,
    pub podman_image: String,
    pub runs: usize,
    pub podman_runs: usize,
    pub warmup: usize,
    /// The inarray half failing (e.g. a daemon without the exec API) fails the whole benchmark;
    /// otherwise (the full run) it is reported and runc and podman are still measured.
    pub inarray_required: bool,
    /// How this was run, for the report.
    pub command: String,
}

#[derive(Default)]
pub struct ExecBench {
    pub runs: usize,
    pub podman_runs: usize,
    pub warmup: usize,
    /// Whole REST round trip, and its three requests.
    pub rest: Samples,
    pub rest_create: Samples,
    pub rest_start: Samples,
    pub rest_inspect: Samples,
    pub cli: Samples,
    pub runc: Samples,
    pub podman: Samples,
    /// Why inarray was not measured (no binary given, or its set-up or warm-up failed).
    pub inarray_skipped: Option<String>,
    /// Why nothing was measured.
    pub error: Option<String>,
    pub date: String,
    pub software: String,
    pub command: String,
    pub favordynmods: Vec<String>,
    pub env_start: String,
    pub env_end: String,
}

impl ExecBench {
    pub fn failed(e: anyhow::Error) -> Self {
        ExecBench {
            error: Some(format!("{e:#}")),
            ..Default::default()
        }
    }
}

// ------------------------------------------------------------------------------- the sleepers

/// A `runc run -d` container running `sleep 3600` from a copy of the prepared bundle's config;
/// deleted (with force) when dropped.
struct RuncSleeper {
    id: String,
}

impl RuncSleeper {
    fn start(work: &Path, id: &str) -> Result<Self> {
        let src = work.join("bundle/config.json");
        let mut spec: Value = serde_json::from_slice(
            &std::fs::read(&src).with_context(|| format!("{} (run `prepare`)", src.display()))?,
        )?;
        // The rootfs stays where `prepare` unpacked it (an absolute path in the spec).
        spec["process"]["args"] = json!(["sleep", "3600"]);
        let bundle = work.join("exec-bundle");
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )?;
        let s = RuncSleeper { id: id.to_owned() };
        // Detached: the container's stdio is runc's, so none of it may be a pipe we wait on.
        let st = Command::new("runc")
            .arg("run")
            .arg("-d")
            .arg("--bundle")
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("runc run -d")?;
        if !st.success() {
            bail!("runc run -d --bundle {} {id}: {st}", bundle.display());
        }
        Ok(s)
    }
}

impl Drop for RuncSleeper {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `podman run -d` container running `sleep 3600`; removed (with force) when dropped.
struct PodmanSleeper {
    name: String,
}

impl PodmanSleeper {
    fn start(image: &str, name: &str) -> Result<Self> {
        let s = PodmanSleeper {
            name: name.to_owned(),
        };
        run_cmd(&mut crate::podman_run(
            "-d",
            name,
            image,
            &["sleep", "3600"],
        ))?;
        Ok(s)
    }
}

impl Drop for PodmanSleeper {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ------------------------------------------------------------------------------- one run each

fn runc_exec_once(id: &str) -> Result<Duration> {
    run_cmd(Command::new("runc").args(["exec", id, "/bin/true"]))
}

fn podman_exec_once(name: &str) -> Result<Duration> {
    run_cmd(Command::new("podman").args(["exec", name, "/bin/true"]))
}

fn cli_exec_once(bin: &Path, socket: &Path) -> Result<Duration> {
    run_cmd(
        Command::new(bin)
            .arg("--host")
            .arg(format!("unix:{}", socket.display()))
            .args(["exec", NAME, "/bin/true"]),
    )
}

/// One REST round trip: create, start upgraded and read the stream to EOF, inspect; returns the
/// three durations.
pub(crate) async fn rest_exec_once(
    c: &Client,
    socket: &Path,
    container: &str,
) -> Result<[Duration; 3]> {
    let t0 = Instant::now();
    let path = format!("/v1/containers/{container}/exec");
    let body = json!({"command": ["/bin/true"]});
    let v = match tokio::time::timeout(CALL_TIMEOUT, c.json(Method::POST, &path, Some(&body))).await
    {
        Ok(Ok(v)) => v,
        Ok(Err(ClientError::Api {
            status: StatusCode::NOT_FOUND,
            message,
            ..
        })) => {
            // Either the route or the container is missing: the container is known to the
            // daemon if it answers for it.
            if call(c, Method::GET, &format!("/v1/containers/{container}"), None)
                .await
                .is_ok()
            {
                bail!(
                    "the daemon has no exec API: POST {path} answered 404 ({message}) although the \
                     container exists — this inarray binary predates issue #16's exec routes \
                     (docs/design/exec-contract.md); build one that has them"
                );
            }
            bail!("POST {path}: 404 ({message}): the container is gone");
        }
        Ok(Err(e)) => bail!("POST {path}: {e}"),
        Err(_) => bail!("POST {path}: no answer in {CALL_TIMEOUT:?}"),
    };
    let eid = v["id"].as_str().context("exec create: no id")?.to_owned();
    let t1 = Instant::now();
    let out = tokio::time::timeout(CALL_TIMEOUT, start_upgraded(socket, &eid))
        .await
        .map_err(|_| {
            anyhow::anyhow!("POST /v1/execs/{eid}/start: no end of stream in {CALL_TIMEOUT:?}")
        })??;
    let t2 = Instant::now();
    let info = call(c, Method::GET, &format!("/v1/execs/{eid}"), None).await?;
    let t3 = Instant::now();
    if info["exit_code"] != 0 || info["running"] != false {
        bail!(
            "exec {eid} after its stream ended: running {}, exit_code {} (stdout {} bytes, stderr {:?})",
            info["running"],
            info["exit_code"],
            out.stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok([t1 - t0, t2 - t1, t3 - t2])
}

/// What came out of an exec's stream.
#[derive(Debug, Default, PartialEq)]
struct Output {
    stdout: usize,
    stderr: Vec<u8>,
}

/// `POST /v1/execs/{eid}/start` on a connection of its own with `Connection: Upgrade` and
/// `Upgrade: tcp`: expects 101, then reads the raw stream (stdcopy frames, no tty) until the
/// daemon closes it.
async fn start_upgraded(socket: &Path, eid: &str) -> Result<Output> {
    let path = format!("/v1/execs/{eid}/start");
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task hands the socket over to the upgrade once the 101 is read.
    let conn = tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .method(Method::POST)
        .uri(&path)
        .header(header::HOST, "inarray")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let text = body
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if status == StatusCode::NOT_FOUND {
            bail!(
                "POST {path} answered 404 ({}) for an exec just created: the daemon has no \
                 exec start route (issue #16, docs/design/exec-contract.md)",
                text.trim()
            );
        }
        bail!("POST {path}: {status} instead of 101: {}", text.trim());
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .with_context(|| format!("POST {path}: the upgrade"))?;
    let mut io = TokioIo::new(upgraded);
    let mut raw = Vec::new();
    io.read_to_end(&mut raw)
        .await
        .with_context(|| format!("POST {path}: reading the stream"))?;
    let _ = conn.await;
    parse_stdcopy(&raw).with_context(|| format!("POST {path}: the stream"))
}

/// Docker's stdcopy framing: `[stream, 0, 0, 0, len (u32 BE)]` then `len` bytes; 1 = stdout,
/// 2 = stderr.
fn parse_stdcopy(mut b: &[u8]) -> Result<Output> {
    let mut out = Output::default();
    while !b.is_empty() {
        if b.len() < 8 {
            bail!("{} bytes left, less than a frame header", b.len());
        }
        let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let Some(data) = b.get(8..8 + len) else {
            bail!("a frame of {len} bytes with {} left", b.len() - 8);
        };
        match b[0] {
            1 => out.stdout += len,
            2 => out.stderr.extend_from_slice(data),
            s => bail!("a frame for stream {s}"),
        }
        b = &b[8 + len..];
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------- the bench

/// The inarray half's set-up: a fresh daemon, the image, the `sleep 3600` container (by name),
/// and the warm-up runs through REST and the CLI.
async fn inarray_setup(bin: &Path, work: &Path, warmup: usize) -> Result<(Daemon, String)> {
    let d = Daemon::start(bin, &work.join("d7")).await?;
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    // A work directory used before may still hold the container (its daemon's state is reused).
    let _ = d
        .call(
            Method::DELETE,
            &format!("/v1/containers/{NAME}?force=true"),
            None,
        )
        .await;
    let body = json!({"image": IMAGE, "command": ["sleep", "3600"], "name": NAME});
    let v = d.call(Method::POST, "/v1/containers", Some(&body)).await?;
    let id = v["id"].as_str().context("create: no id")?.to_owned();
    let v = d
        .call(Method::GET, &format!("/v1/containers/{id}"), None)
        .await?;
    if v["state"] != "running" {
        bail!("the inarray container is not running: {v}");
    }
    let c = d.client();
    for _ in 0..warmup {
        rest_exec_once(&c, &d.socket, &id)
            .await
            .context("warm-up exec via REST")?;
    }
    for _ in 0..warmup {
        cli_exec_once(bin, &d.socket).context("warm-up `inarray exec`")?;
    }
    Ok((d, id))
}

pub async fn bench(o: &ExecOpts) -> Result<ExecBench> {
    let work = o.work.canonicalize()?;
    let tag = std::process::id();
    let mut res = ExecBench {
        runs: o.runs,
        podman_runs: o.podman_runs.min(o.runs),
        warmup: o.warmup,
        command: o.command.clone(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        software: format!(
            "{} (source tree {}); {}; {}",
            o.bin.as_ref().map_or("no inarray".to_owned(), |b| format!(
                "inarray `{}`",
                b.display()
            )),
            crate::git_describe(),
            crate::first_line("runc", &["--version"]),
            crate::first_line("podman", &["--version"]),
        ),
        ..Default::default()
    };

    // inarray first: a daemon without the exec API fails here, before anything else is started.
    let inarray = match &o.bin {
        None => {
            res.inarray_skipped = Some("no inarray binary given (`--bin`)".into());
            None
        }
        Some(bin) => match inarray_setup(bin, &work, o.warmup).await {
            Ok((d, id)) => Some((bin, d, id)),
            Err(e) if o.inarray_required => return Err(e.context("inarray")),
            Err(e) => {
                eprintln!("7. inarray not measured: {e:#}");
                res.inarray_skipped = Some(format!("{e:#}"));
                None
            }
        },
    };
    // The runtimes' containers, each started once; one name for both (bench/run's clean-up
    // removes runc's and podman's `inarray-bench-*`).
    let name = format!("inarray-bench-exec-{tag}");
    let _runc = RuncSleeper::start(&work, &name)?;
    let _podman = PodmanSleeper::start(&o.podman_image, &name)?;
    eprintln!("7. exec round trip: warm-up");
    for _ in 0..o.warmup {
        runc_exec_once(&name).context("warm-up `runc exec`")?;
        podman_exec_once(&name).context("warm-up `podman exec`")?;
    }
    res.favordynmods = crate::compare::favordynmods_mounts();
    res.env_start = procs::pressure();
    let client = inarray.as_ref().map(|(_, d, _)| d.client());
    for i in 0..o.runs {
        if i % 100 == 0 {
            eprintln!(
                "7. exec round trip: runs {}–{} of {}",
                i + 1,
                (i + 100).min(o.runs),
                o.runs
            );
        }
        if let (Some((bin, d, id)), Some(c)) = (&inarray, &client) {
            match rest_exec_once(c, &d.socket, id).await {
                Ok([a, b, cc]) => {
                    res.rest.push(ms(a + b + cc));
                    res.rest_create.push(ms(a));
                    res.rest_start.push(ms(b));
                    res.rest_inspect.push(ms(cc));
                }
                Err(e) => res.rest.error(format!("{e:#}")),
            }
            match cli_exec_once(bin, &d.socket) {
                Ok(t) => res.cli.push(ms(t)),
                Err(e) => res.cli.error(format!("{e:#}")),
            }
        }
        match runc_exec_once(&name) {
            Ok(t) => res.runc.push(ms(t)),
            Err(e) => res.runc.error(format!("{e:#}")),
        }
        if i < res.podman_runs {
            match podman_exec_once(&name) {
                Ok(t) => res.podman.push(ms(t)),
                Err(e) => res.podman.error(format!("{e:#}")),
            }
        }
    }
    res.env_end = procs::pressure();
    if let Some((_, d, id)) = inarray {
        let path = format!("/v1/containers/{id}?force=true");
        if let Err(e) = d.call(Method::DELETE, &path, None).await {
            eprintln!("7. {e:#}");
        }
        d.stop();
    }
    Ok(res)
}

// ------------------------------------------------------------------------------------- report

pub fn render(r: &ExecBench) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## 7. Exec round trip: `exec /bin/true` in a running container\n"
    );
    if let Some(e) = &r.error {
        let _ = writeln!(o, "Not measured: {e}.\n");
        return o;
    }
    let _ = writeln!(o, "- **Command:** `{}`", r.command);
    let _ = writeln!(o, "- **Date:** {}", r.date);
    let _ = writeln!(o, "- **Software:** {}", r.software);
    let _ = writeln!(
        o,
        "- **Node:** cgroup hierarchies mounted with `favordynmods`: {}; at the start {}; at the \
         end {}\n",
        if r.favordynmods.is_empty() {
            "none (the node's boot state)".to_owned()
        } else {
            r.favordynmods.join(", ")
        },
        r.env_start,
        r.env_end
    );
    let _ = writeln!(
        o,
        "One busybox `sleep 3600` container per runtime, started once, then {} sequential round \
         trips of `exec /bin/true` in it (podman {}), wall-clock per run in ms, the runtimes \
         interleaved run by run; {} warm-up runs of each are not counted. **inarray REST**: \
         `POST /v1/containers/{{id}}/exec` `{{\"command\": [\"/bin/true\"]}}`, then \
         `POST /v1/execs/{{eid}}/start` with `Connection: Upgrade` + `Upgrade: tcp` (101, the \
         stream read until the daemon closes it), then `GET /v1/execs/{{eid}}` with `exit_code` \
         0 — each request on a new connection over the unix socket of a fresh `inarray serve`. \
         **inarray CLI**: the whole `inarray exec NAME /bin/true` process. **runc**: `runc exec \
         ID /bin/true` in a container `runc run -d` started from the same bundle as section 1. \
         **podman**: `podman exec NAME /bin/true` in a container started with `podman run -d \
         --network none --runtime runc …` on the same image.\n",
        r.runs, r.podman_runs, r.warmup
    );
    let _ = writeln!(o, "{HEADER}");
    let measured = r.inarray_skipped.is_none();
    if measured {
        row(
            &mut o,
            "inarray REST create + start (upgraded) + inspect",
            &r.rest,
        );
        row(&mut o, "inarray CLI `inarray exec`", &r.cli);
    }
    row(&mut o, "runc exec", &r.runc);
    row(&mut o, "podman exec", &r.podman);
    if measured {
        let _ = writeln!(
            o,
            "| *inarray REST: create / start to end of stream / inspect request* | | | {} / {} / {} | {} / {} / {} | | | | |",
            f(r.rest_create.p50()),
            f(r.rest_start.p50()),
            f(r.rest_inspect.p50()),
            f(r.rest_create.pct(90.0)),
            f(r.rest_start.pct(90.0)),
            f(r.rest_inspect.pct(90.0)),
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "| ratio (same run) | p50 | p90 | p99 |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let ratio = |o: &mut String, name: &str, a: &Samples, b: &Samples| {
        let q = |p: f64| format!("{:.2}×", a.pct(p) / b.pct(p));
        let _ = writeln!(o, "| {name} | {} | {} | {} |", q(50.0), q(90.0), q(99.0));
    };
    if measured {
        ratio(&mut o, "inarray REST / runc exec", &r.rest, &r.runc);
        ratio(&mut o, "inarray CLI / runc exec", &r.cli, &r.runc);
        ratio(&mut o, "podman exec / inarray REST", &r.podman, &r.rest);
        ratio(&mut o, "podman exec / inarray CLI", &r.podman, &r.cli);
    }
    ratio(&mut o, "podman exec / runc exec", &r.podman, &r.runc);
    let _ = writeln!(o);
    if let Some(why) = &r.inarray_skipped {
        let _ = writeln!(o, "inarray not measured: {why}.\n");
    }
    errors(&mut o, "inarray REST", &r.rest);
    errors(&mut o, "inarray CLI", &r.cli);
    errors(&mut o, "runc exec", &r.runc);
    errors(&mut o, "podman exec", &r.podman);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use inarray_api::serve::Listen;
    use tokio::io::AsyncWriteExt;

    /// A fake daemon on a unix socket: each connection's one request (request line and headers
    /// lowercased) is answered with `handler`'s bytes, then the connection is closed.
    fn fake_daemon(handler: fn(&str, &str) -> Vec<u8>) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "inarray-bench-exec-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let l = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = head.lines().next().unwrap_or_default().to_owned();
                let _ = s.write_all(&handler(&line, &head)).await;
                let _ = s.shutdown().await;
            }
        });
        socket
    }

    fn reply(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn no_route() -> Vec<u8> {
        reply(
            "404 Not Found",
            r#"{"error": {"code": "not_found", "message": "no such route"}}"#,
        )
    }

    /// The contract's exec: create, an upgraded start streaming "hi" on stdout, inspect.
    fn exec_api(line: &str, head: &str, exit_code: i32) -> Vec<u8> {
        match line {
            "post /v1/containers/c1/exec http/1.1" => reply("201 Created", r#"{"id": "e1"}"#),
            "post /v1/execs/e1/start http/1.1"
                if head.contains("connection: upgrade") && head.contains("upgrade: tcp") =>
            {
                let mut b = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                              upgrade: tcp\r\n\r\n"
                    .to_vec();
                b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 2]);
                b.extend_from_slice(b"hi");
                b
            }
            "get /v1/execs/e1 http/1.1" => reply(
                "200 OK",
                &format!(r#"{{"id": "e1", "running": false, "exit_code": {exit_code}}}"#),
            ),
            _ => no_route(),
        }
    }

    async fn once(socket: &Path) -> Result<[Duration; 3]> {
        let c = Client::new(Listen::Unix(socket.to_owned()));
        let r = rest_exec_once(&c, socket, "c1").await;
        let _ = std::fs::remove_dir_all(socket.parent().unwrap());
        r
    }

    #[tokio::test]
    async fn rest_round_trip_against_the_contract() {
        once(&fake_daemon(|l, h| exec_api(l, h, 0))).await.unwrap();
        let e = once(&fake_daemon(|l, h| exec_api(l, h, 1)))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("exit_code 1"), "{e:#}");
    }

    #[tokio::test]
    async fn a_daemon_without_exec_is_named() {
        let e = once(&fake_daemon(|line, _| {
            if line == "get /v1/containers/c1 http/1.1" {
                reply("200 OK", r#"{"id": "c1", "state": "running"}"#)
            } else {
                no_route()
            }
        }))
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("no exec API"), "{e:#}");
        // The exec created, but no start route.
        let e = once(&fake_daemon(|line, head| {
            if line.starts_with("post /v1/execs/") {
                no_route()
            } else {
                exec_api(line, head, 0)
            }
        }))
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("no exec start route"), "{e:#}");
    }

    #[test]
    fn render_every_row() {
        let s = |v: &[f64]| Samples {
            ms: v.to_vec(),
            ..Default::default()
        };
        let mut r = ExecBench {
            runs: 2,
            podman_runs: 2,
            rest: s(&[4.0, 6.0]),
            rest_create: s(&[1.0, 2.0]),
            rest_start: s(&[2.0, 3.0]),
            rest_inspect: s(&[1.0, 1.0]),
            cli: s(&[8.0, 9.0]),
            runc: s(&[10.0, 12.0]),
            podman: s(&[100.0, 120.0]),
            ..Default::default()
        };
        r.cli.error("boom");
        let md = render(&r);
        for want in [
            "| inarray REST create + start (upgraded) + inspect | 2 | 0 | 4.0 | 6.0 | 6.0 |",
            "| inarray CLI `inarray exec` | 2 | 1 |",
            "| runc exec | 2 | 0 | 10.0 |",
            "| inarray REST / runc exec | 0.40× | 0.50× | 0.50× |",
            "| podman exec / inarray CLI | 12.50× |",
            "- inarray CLI error: `boom`",
        ] {
            assert!(md.contains(want), "{want} not in\n{md}");
        }
        r.inarray_skipped = Some("no route".into());
        let md = render(&r);
        assert!(!md.contains("inarray REST /") && md.contains("inarray not measured: no route."));
    }

    #[test]
    fn stdcopy_frames() {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, 3];
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 2]);
        b.extend_from_slice(b"no");
        assert_eq!(
            parse_stdcopy(&b).unwrap(),
            Output {
                stdout: 3,
                stderr: b"no".to_vec()
            }
        );
        assert_eq!(parse_stdcopy(&[]).unwrap(), Output::default());
        assert!(parse_stdcopy(&b[..5]).is_err());
        assert!(parse_stdcopy(&b[..10]).is_err());
        assert!(parse_stdcopy(&[3, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
