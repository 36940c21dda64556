//! The web console's benchmark (run by `bench/console/run`; see its header).
//!
//! A release daemon with the seed's load — engines with caps, 250 running containers (some busy),
//! 1000 jobs, an NFS export read in a loop — and a headless Chromium (the e2e tests' CDP client)
//! signed in to its console: the time until each page shows its data (cold cache and warm, in the
//! page's own clock), the DOM size, screenshots for docs/console/, then the browser's memory
//! (PSS of all its processes, and the page's JS heap after a GC) every 30 s while the home page's
//! live charts run for `--minutes`. The results replace the "## Web console" section of
//! docs/benchmarks.md.

#[allow(dead_code)]
#[path = "../../../tests/common/browser.rs"]
mod browser;
#[allow(dead_code)]
#[path = "../../../tests/common/image_builder.rs"]
mod image_builder;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use browser::Browser;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "inarray's web console in headless Chromium")]
struct Opts {
    /// The release binary of inarray.
    #[arg(long)]
    bin: PathBuf,
    /// A scratch directory (the daemon's array and state).
    #[arg(long)]
    work: PathBuf,
    /// docs/benchmarks.md, whose "## Web console" section is replaced.
    #[arg(long)]
    out: PathBuf,
    /// Where the screenshots go (docs/console).
    #[arg(long)]
    shots: PathBuf,
    #[arg(long, default_value_t = 250)]
    containers: usize,
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// How long the home page's live charts run while memory is sampled.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Page loads measured per page and cache state.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The command line to record in the report.
    #[arg(long, default_value = "bench/console/run")]
    command: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// One request over the unix socket (admin); the reply's body (chunks joined) on 2xx.
    fn raw(&self, method: &str, path: &str, ct: &str, body: &[u8]) -> Result<Vec<u8>> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: inarray\r\nConnection: close\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no reply head")?;
        let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
        let mut body = out[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let mut plain = Vec::new();
            let mut rest = &body[..];
            loop {
                let eol = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .context("chunk")?;
                let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol])?.trim(), 16)?;
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
                rest = &rest[eol + 2 + n + 2..];
            }
            body = plain;
        }
        let status = head.split(' ').nth(1).unwrap_or("0");
        if !status.starts_with('2') {
            bail!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let out = self.raw(method, path, "application/json", &bytes)?;
        Ok(if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out)?
        })
    }
}

fn start(o: &Opts, port: u16, nfs_port: u16) -> Result<Daemon> {
    let dir = &o.work;
    std::fs::create_dir_all(dir.join("array/data"))?;
    std::fs::create_dir_all(dir.join("state"))?;
    let socket = dir.join("run/api.sock");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))?;
    let child = Command::new(&o.bin)
        .arg("serve")
        .arg("--array")
        .arg(dir.join("array"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("--nfs-listen")
        .arg(format!("127.0.0.1:{nfs_port}"))
        .arg("--cgroup-root")
        .arg("inarray-bench-console")
        .env("INARRAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", o.bin.display()))?;
    std::fs::write(dir.join("daemon.pid"), child.id().to_string())?;
    let d = Daemon { child, socket };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(v) = d.call("GET", "/v1/health", None) {
            if v["status"] == "ok" {
                return Ok(d);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not come up; see {}/daemon.log",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seed's load: engines with caps, containers (every 25th busy), jobs, an export.
fn seed(o: &Opts, d: &Daemon) -> Result<()> {
    let archive = o.work.join("busybox-oci.tar");
    image_builder::write_oci_archive(&archive, "busybox:latest");
    d.raw(
        "POST",
        "/v1/images/import?name=busybox:latest",
        "application/octet-stream",
        &std::fs::read(&archive)?,
    )?;
    d.call(
        "POST",
        "/v1/engines",
        Some(json!({"name": "analytics", "resources": {"cpu_weight": 200, "io_weight": 200, "memory": "4G"}})),
    )?;
    d.call(
        "POST",
        "/v1/engines",
        Some(json!({"name": "backup", "resources": {"cpus": 1.0, "write_bps": "50M", "io_weight": 50}})),
    )?;
    let engines = ["default", "analytics", "backup"];
    let t = Instant::now();
    // Eight creators at once.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= o.containers {
                            return Ok(());
                        }
                        let command = if i % 25 == 0 {
                            json!(["sh", "-c", "while true; do dd if=/dev/zero of=/tmp/x bs=1M count=32 2>/dev/null; rm -f /tmp/x; echo pass; sleep 2; done"])
                        } else {
                            json!(["sleep", "86400"])
                        };
                        d.call(
                            "POST",
                            "/v1/containers",
                            Some(json!({
                                "name": format!("app-{i:03}"),
                                "image": "busybox",
                                "engine": engines[i % engines.len()],
                                "command": command,
                            })),
                        )?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("creator")?;
        }
        Ok(())
    })?;
    eprintln!(
        "{} containers running in {:.1} s",
        o.containers,
        t.elapsed().as_secs_f64()
    );
    for i in 0..o.jobs {
        d.call(
            "POST",
            "/v1/jobs",
            Some(json!({
                "name": format!("job-{i:04}"),
                "schedule": format!("{} {} * * *", i % 60, (i / 60) % 24),
                "container": {"image": "busybox", "command": ["true"]},
            })),
        )?;
    }
    d.call(
        "POST",
        "/v1/exports",
        Some(json!({"name": "data", "path": "data", "clients": [{"match": "127.0.0.1/32", "access": "rw"}]})),
    )?;
    std::fs::write(o.work.join("array/data/big.bin"), vec![7u8; 32 << 20])?;
    Ok(())
}

/// A page-side wait: resolves with `performance.now()` (ms since the navigation began) once
/// `cond` holds, checked at every animation frame.
fn page_time(b: &mut Browser, cond: &str) -> f64 {
    let expr = format!(
        "new Promise((ok, fail) => {{ const t0 = Date.now(); const f = () => {{ \
           try {{ if ({cond}) return ok(performance.now()); }} catch (_) {{}} \
           if (Date.now() - t0 > 120000) return fail(new Error('timeout')); \
           requestAnimationFrame(f); }}; f(); }})"
    );
    b.eval(&expr).as_f64().unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Load {
    page: &'static str,
    cold: Vec<f64>,
    warm: Vec<f64>,
    nodes: u64,
}

fn measure(
    b: &mut Browser,
    base: &str,
    rounds: usize,
    page: &'static str,
    hash: &str,
    cond: &str,
) -> Load {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..rounds * 2 {
        let is_cold = round % 2 == 0;
        if is_cold {
            b.call("Network.clearBrowserCache", json!({}));
        }
        b.call("Page.navigate", json!({"url": "about:blank"}));
        std::thread::sleep(Duration::from_millis(300));
        b.call("Page.navigate", json!({"url": format!("{base}{hash}")}));
        std::thread::sleep(Duration::from_millis(50));
        let ms = page_time(b, cond);
        if is_cold {
            cold.push(ms);
        } else {
            warm.push(ms);
        }
    }
    let nodes = b
        .eval("document.getElementsByTagName('*').length")
        .as_u64()
        .unwrap_or(0);
    Load {
        page,
        cold,
        warm,
        nodes,
    }
}

struct Sample {
    at_s: u64,
    pss_kib: u64,
    heap_bytes: u64,
    nodes: u64,
}

fn main() -> Result<()> {
    let o = Opts::parse();
    let port = free_port()?;
    let nfs_port = free_port()?;
    let d = start(&o, port, nfs_port)?;
    seed(&o, &d)?;
    let token = d.call(
        "POST",
        "/v1/tokens",
        Some(json!({"name": "bench", "scope": "operate"})),
    )?["token"]
        .as_str()
        .context("token")?
        .to_owned();

    // NFS reads in a loop, so the gateway's chart has something to draw.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        // The export `data` is mounted as /data.
        let url = format!("nfs://127.0.0.1/data/big.bin?nfsport={nfs_port}&mountport={nfs_port}");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("nfs-cat")
                    .arg(&url)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // What the pages fetch, by size: the lists are whole (no server-side paging), /metrics is
    // scraped every 2 s.
    let mut sizes = Vec::new();
    for path in ["/v1/containers?all=true", "/v1/jobs", "/metrics"] {
        let t = Instant::now();
        let len = d.raw("GET", path, "application/json", b"")?.len();
        sizes.push((path, len, t.elapsed().as_secs_f64() * 1000.0));
    }

    let base = format!("http://127.0.0.1:{port}/ui/");
    let mut b = Browser::launch();
    b.navigate(&base);
    b.wait_for(
        "the sign-in form",
        "!document.getElementById('signin').hidden",
        60,
    );
    b.eval("document.getElementById('token').focus()");
    b.type_text(&token);
    b.eval("document.getElementById('signin').requestSubmit()");
    b.wait_for("signed in", "document.body.dataset.signedIn === 'yes'", 60);

    let n = o.containers;
    let home_ready = format!(
        "document.querySelectorAll('.vbody .vrow').length > 0 && \
         (document.querySelector('.counts') || {{}}).textContent && \
         document.querySelector('.counts').textContent.startsWith('{n} running')"
    );
    let loads = vec![
        measure(
            &mut b,
            &base,
            o.rounds,
            "home (engines, NFS, 250 containers)",
            "#/",
            &home_ready,
        ),
        measure(
            &mut b,
            &base,
            o.rounds,
            "containers",
            "#/containers",
            &format!("(document.querySelector('.count') || {{}}).textContent === '{n} of {n}'"),
        ),
        measure(
            &mut b,
            &base,
            o.rounds,
            "jobs",
            "#/jobs",
            &format!(
                "(document.querySelector('.count') || {{}}).textContent === '{j} of {j}' && \
                 document.querySelectorAll('.vbody .vrow').length > 0",
                j = o.jobs
            ),
        ),
    ];

    // Screenshots once the charts have a minute of data.
    std::fs::create_dir_all(&o.shots)?;
    b.navigate(&format!("{base}#/"));
    std::thread::sleep(Duration::from_secs(60));
    b.screenshot(&o.shots.join("home.png"));
    b.navigate(&format!("{base}#/jobs"));
    std::thread::sleep(Duration::from_secs(3));
    b.screenshot(&o.shots.join("jobs.png"));
    let busy = d.call("GET", "/v1/containers/app-000", None)?;
    b.navigate(&format!(
        "{base}#/containers/{}",
        busy["id"].as_str().unwrap_or("")
    ));
    std::thread::sleep(Duration::from_secs(30));
    b.screenshot(&o.shots.join("container.png"));

    // Memory while the home page's live charts run.
    b.navigate(&format!("{base}#/"));
    let t0 = Instant::now();
    let mut samples = Vec::new();
    loop {
        let at = t0.elapsed().as_secs();
        b.call("HeapProfiler.collectGarbage", json!({}));
        let heap = b.call("Runtime.getHeapUsage", json!({}))["usedSize"]
            .as_f64()
            .unwrap_or(0.0) as u64;
        let nodes = b
            .eval("document.getElementsByTagName('*').length")
            .as_u64()
            .unwrap_or(0);
        let s = Sample {
            at_s: at,
            pss_kib: b.memory_kib(),
            heap_bytes: heap,
            nodes,
        };
        eprintln!(
            "t={:>4}s browser PSS {:.1} MiB, JS heap {:.2} MiB, {} elements",
            s.at_s,
            s.pss_kib as f64 / 1024.0,
            s.heap_bytes as f64 / 1048576.0,
            s.nodes
        );
        samples.push(s);
        if at >= o.minutes * 60 {
            break;
        }
        std::thread::sleep(Duration::from_secs(30));
    }
    drop(b);
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();

    let section = report(&o, &loads, &samples, &sizes);
    println!("{section}");
    write_section(&o.out, &section)?;
    // Leave nothing running: every container removed (the run script's trap is the fallback).
    if let Ok(list) = d.call("GET", "/v1/containers?all=true", None) {
        for c in list.as_array().into_iter().flatten() {
            let id = c["id"].as_str().unwrap_or_default();
            let _ = d.call("DELETE", &format!("/v1/containers/{id}?force=true"), None);
        }
    }
    Ok(())
}

fn report(o: &Opts, loads: &[Load], samples: &[Sample], sizes: &[(&str, usize, f64)]) -> String {
    let mut s = String::from("## Web console\n\n");
    s += &format!(
        "`{}` (bench/console: a release daemon with {} running containers over three engines, \
         every 25th busy, {} jobs, an NFS export read in a loop by `nfs-cat`; Debian's headless \
         Chromium driven over CDP, 1400×1000). Times are the page's own clock \
         (`performance.now()` from the navigation's start) until the page shows its data: the \
         home page its engines and the container count, the lists their full count and first \
         rows. Cold: the browser's cache cleared first; warm: assets revalidated by ETag (304). \
         Median of {} loads each.\n\n",
        o.command, o.containers, o.jobs, o.rounds
    );
    s += "| page | cold (ms) | warm (ms) | DOM elements |\n|---|---:|---:|---:|\n";
    for l in loads {
        s += &format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            l.page,
            median(l.cold.clone()),
            median(l.warm.clone()),
            l.nodes
        );
    }
    s += "\nWhat the pages fetch (one request each, over the unix socket, before the browser \
          starts):\n\n| request | bytes | ms |\n|---|---:|---:|\n";
    for (path, len, ms) in sizes {
        s += &format!("| `GET {path}` | {len} | {ms:.1} |\n");
    }
    s += &format!(
        "\nBrowser memory while the home page's live charts run (a scrape of `/metrics` every \
         2 s, the container list every 6 s) for {} min: PSS of all the browser's processes, and \
         the page's JS heap after a forced GC (`Runtime.getHeapUsage`).\n\n",
        o.minutes
    );
    s += "| t (s) | browser PSS (MiB) | JS heap (MiB) | DOM elements |\n|---:|---:|---:|---:|\n";
    for x in samples {
        s += &format!(
            "| {} | {:.1} | {:.2} | {} |\n",
            x.at_s,
            x.pss_kib as f64 / 1024.0,
            x.heap_bytes as f64 / 1048576.0,
            x.nodes
        );
    }
    if let (Some(first), Some(last)) = (
        samples.get(samples.len().min(2).saturating_sub(1)),
        samples.last(),
    ) {
        s += &format!(
            "\nJS heap from t={} s to t={} s: {:+.2} MiB; browser PSS: {:+.1} MiB.\n",
            first.at_s,
            last.at_s,
            (last.heap_bytes as f64 - first.heap_bytes as f64) / 1048576.0,
            (last.pss_kib as f64 - first.pss_kib as f64) / 1024.0
        );
    }
    s += "\nScreenshots: docs/console/home.png, jobs.png, container.png.\n";
    s
}

/// Replaces the "## Web console" section (up to the next "## " heading) or appends it.
fn write_section(out: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let lines: Vec<&str> = text.lines().collect();
    let mut result = String::new();
    match lines.iter().position(|l| *l == "## Web console") {
        Some(i) => {
            let end = lines[i + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map(|j| i + 1 + j)
                .unwrap_or(lines.len());
            for l in &lines[..i] {
                result.push_str(l);
                result.push('\n');
            }
            result.push_str(section);
            if end < lines.len() {
                result.push('\n');
                for l in &lines[end..] {
                    result.push_str(l);
                    result.push('\n');
                }
            }
        }
        None => {
            result.push_str(text.trim_end());
            result.push_str("\n\n");
            result.push_str(section);
        }
    }
    let tmp = out.with_extension("md.tmp");
    std::fs::write(&tmp, result)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
