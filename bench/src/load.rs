//! Section 5, the seed's load, compressed: `concurrency` containers at a time (a new one started as
//! soon as one finishes), `total` in all, each reading one input file of 1–100 MB from the array
//! and writing `files` output files back, then living a little (lifetimes scaled down to seconds),
//! while an NFS client reads a file from the array over and over; NFS throughput is measured idle
//! first, for comparison. A file-events subscriber follows the output tree when the daemon has file
//! events (`GET /v1/watches`); otherwise that figure is "not measured".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::json;

use crate::daemon::{call, Daemon};
use crate::nfsc::Conn;
use crate::procs::{self, Mem};
use crate::stats::Samples;
use crate::IMAGE;

#[derive(Clone, Copy, Debug)]
pub struct LoadPlan {
    pub concurrency: usize,
    pub total: usize,
    /// Output files per container.
    pub files: usize,
    /// Input files, sizes spread evenly from 1 to 100 MB.
    pub inputs: usize,
    /// Each container sleeps 0..=max_sleep s after its work (by its index).
    pub max_sleep: usize,
    /// The NFS client's idle measurement.
    pub idle_secs: f64,
}

pub struct Load {
    pub plan: Option<LoadPlan>,
    pub wall: Duration,
    pub started: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    /// `POST /v1/containers` (create and start) latency, ms.
    pub start: Samples,
    pub input_bytes: Vec<u64>,
    pub files_written: u64,
    pub files_expected: u64,
    /// MiB/s read over NFS: idle, during the load.
    pub nfs_idle: f64,
    pub nfs_load: f64,
    pub nfs_error: Option<String>,
    /// Events: Ok(distinct output files named by a delivered `close_write` event) or Err(why not
    /// measured).
    pub events: Result<u64, String>,
    /// Events delivered in all (a file may be named more than once: at-least-once delivery, and
    /// a file found by a new directory's scan and then closed).
    pub events_delivered: u64,
    /// From the end of the load until the subscriber had them all (or gave up).
    pub events_catch_up: Duration,
    /// Memory at the sample with the most containers (shims) running.
    pub peak_running: usize,
    pub daemon: Mem,
    pub shims: Mem,
    pub load_start: String,
    pub load_end: String,
    pub error: Option<String>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            plan: None,
            wall: Duration::ZERO,
            started: 0,
            failed: 0,
            failures: Vec::new(),
            start: Samples::default(),
            input_bytes: Vec::new(),
            files_written: 0,
            files_expected: 0,
            nfs_idle: 0.0,
            nfs_load: 0.0,
            nfs_error: None,
            events: Err("not tried".into()),
            events_delivered: 0,
            events_catch_up: Duration::ZERO,
            peak_running: 0,
            daemon: Mem::default(),
            shims: Mem::default(),
            load_start: String::new(),
            load_end: String::new(),
            error: None,
        }
    }
}

/// The file-events subscriber: long-polls subscription `load` (`GET …/events?wait=1&max=10000`)
/// over its own connection, acks every batch, and keeps the distinct paths of `close_write`
/// events. Once told how many files were written (`want`), it stops when it has seen them all,
/// or after 60 s without a new event.
#[derive(Clone, Default)]
struct Follower {
    seen: std::rc::Rc<std::cell::RefCell<std::collections::HashSet<String>>>,
    delivered: std::rc::Rc<std::cell::Cell<u64>>,
    want: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl Follower {
    async fn run(self, socket: PathBuf) -> Result<()> {
        let c = inarray_api::client::Client::new(inarray_api::serve::Listen::Unix(socket));
        let mut last_new = Instant::now();
        loop {
            let v = call(
                &c,
                Method::GET,
                "/v1/subscriptions/load/events?wait=1&max=10000",
                None,
            )
            .await?;
            let evs = v["events"].as_array().context("no events array")?;
            if let Some(last) = evs.last() {
                for e in evs {
                    self.delivered.set(self.delivered.get() + 1);
                    if e["kind"] == "close_write" && e["is_dir"] == false {
                        if let Some(p) = e["path"].as_str() {
                            if self.seen.borrow_mut().insert(p.to_owned()) {
                                last_new = Instant::now();
                            }
                        }
                    }
                }
                let ack = json!({"seq": last["seq"]});
                call(&c, Method::POST, "/v1/subscriptions/load/ack", Some(&ack)).await?;
            }
            if let Some(want) = self.want.get() {
                if self.seen.borrow().len() as u64 >= want
                    || last_new.elapsed() > Duration::from_secs(60)
                {
                    return Ok(());
                }
            }
        }
    }
}

pub async fn bench(bin: &Path, work: &Path, plan: LoadPlan) -> Load {
    let mut res = Load {
        plan: Some(plan),
        load_start: crate::scan::loadavg(),
        ..Default::default()
    };
    if let Err(e) = inner(bin, work, plan, &mut res).await {
        res.error = Some(format!("{e:#}"));
    }
    res.load_end = crate::scan::loadavg();
    res
}

/// Reads `file` (a handle on the export) in 1 MiB calls until `stop`; adds the bytes to `bytes`.
fn nfs_reader(addr: SocketAddr, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) -> Result<()> {
    let mut c = Conn::connect(addr)?;
    let root = c.mount("/load")?;
    let (fh, _) = c.lookup(&root, "nfs.bin")?;
    while !stop.load(Ordering::Relaxed) {
        let mut off = 0;
        loop {
            let (n, eof) = c.read(&fh, off, 1 << 20)?;
            off += n as u64;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            if eof || n == 0 || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    Ok(())
}

/// MiB/s the NFS reader gets over `secs` (a thread; this task sleeps meanwhile).
struct Reader {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    t0: Instant,
    h: std::thread::JoinHandle<Result<()>>,
}

impl Reader {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        Reader {
            stop,
            bytes,
            t0: Instant::now(),
            h: std::thread::spawn(move || nfs_reader(addr, s, b)),
        }
    }
    fn finish(self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.t0.elapsed().as_secs_f64();
        self.h
            .join()
            .map_err(|_| anyhow::anyhow!("nfs reader panicked"))??;
        Ok(self.bytes.load(Ordering::Relaxed) as f64 / 1048576.0 / secs)
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn write_file(p: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// The script every container runs: read its input, write its files, live a little.
pub fn script(files: usize) -> String {
    format!(
        "set -e; dd if=\"/s/in/$IN\" of=/dev/null bs=1M 2>/dev/null; d=/s/out/$NAME; mkdir -p $d; i=0; \
         while [ $i -lt {files} ]; do echo \"$NAME $i\" > $d/f$i; i=$((i+1)); done; sleep $LIFE"
    )
}

async fn inner(bin: &Path, work: &Path, plan: LoadPlan, res: &mut Load) -> Result<()> {
    let dir = work.join("d5");
    if dir.join("state").exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let _fs = crate::scan::LoopFs::mount(&work.join("d5.img"), &dir.join("array"), 8)?;
    let port = free_port()?;
    let d = Daemon::start_with(
        bin,
        &dir,
        &["--nfs-listen".into(), format!("127.0.0.1:{port}")],
    )
    .await?;
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    // File events: present when the API knows /v1/watches.
    res.events = match d.call(Method::GET, "/v1/watches", None).await {
        Ok(_) => Ok(0),
        Err(e)
            if format!("{e:#}").contains("404") || format!("{e:#}").contains("no such route") =>
        {
            Err("this build has no file events (`GET /v1/watches` answers 404)".into())
        }
        Err(e) => Err(format!("`GET /v1/watches` failed: {e:#}")),
    };
    let base = dir.join("array/load");
    std::fs::create_dir_all(base.join("in"))?;
    std::fs::create_dir_all(base.join("out"))?;
    // The subscriber's watch and subscription: every finished file of the output tree.
    let events_on = res.events.is_ok();
    if events_on {
        let w = json!({"name": "out", "path": "load/out", "events": ["close_write"]});
        d.call(Method::POST, "/v1/watches", Some(&w)).await?;
        let s = json!({"name": "load", "watches": ["out"]});
        d.call(Method::POST, "/v1/subscriptions", Some(&s)).await?;
    }
    eprintln!("5. writing {} input files (1–100 MB)", plan.inputs);
    for k in 0..plan.inputs {
        let mb = if plan.inputs > 1 {
            1 + 99 * k as u64 / (plan.inputs as u64 - 1)
        } else {
            100
        };
        let bytes = mb * 1_000_000;
        write_file(&base.join(format!("in/in-{k}.bin")), bytes)?;
        res.input_bytes.push(bytes);
    }
    write_file(&base.join("nfs.bin"), 64 << 20)?;
    // The inputs' writeback out of the way of the idle measurement.
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    let body = json!({
        "name": "load",
        "path": "load",
        "clients": [{"match": "127.0.0.1", "access": "ro"}],
    });
    d.call(Method::POST, "/v1/exports", Some(&body)).await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;

    eprintln!("5. NFS reads, idle, {:.0} s", plan.idle_secs);
    let r = Reader::start(addr);
    tokio::time::sleep(Duration::from_secs_f64(plan.idle_secs)).await;
    match r.finish() {
        Ok(x) => res.nfs_idle = x,
        Err(e) => res.nfs_error = Some(format!("idle: {e:#}")),
    }

    eprintln!(
        "5. the load: {} containers, {} at a time, {} files each",
        plan.total, plan.concurrency, plan.files
    );
    let reader = Reader::start(addr);
    let script = std::rc::Rc::new(script(plan.files));
    let socket = d.socket.clone();
    let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let local = tokio::task::LocalSet::new();
    let follower = Follower::default();
    let following = events_on.then(|| local.spawn_local(follower.clone().run(socket.clone())));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..plan.concurrency.min(plan.total) {
        let (next, script, socket) = (next.clone(), script.clone(), socket.clone());
        handles.push(local.spawn_local(async move {
            let mut out: Vec<(usize, Result<f64>)> = Vec::new();
            loop {
                let i = next.get();
                if i >= plan.total {
                    break;
                }
                next.set(i + 1);
                let c = inarray_api::client::Client::new(inarray_api::serve::Listen::Unix(
                    socket.clone(),
                ));
                let name = format!("load-{i}");
                let body = json!({
                    "image": IMAGE,
                    "name": name,
                    "command": ["sh", "-c", &*script],
                    "env": [
                        format!("IN=in-{}.bin", i % plan.inputs),
                        format!("NAME={name}"),
                        format!("LIFE={}", i % (plan.max_sleep + 1)),
                    ],
                    "volumes": [{"source": "load", "target": "/s"}],
                });
                let r = async {
                    let t = Instant::now();
                    let v = call(&c, Method::POST, "/v1/containers", Some(&body)).await?;
                    let start_ms = t.elapsed().as_secs_f64() * 1e3;
                    let id = v["id"].as_str().context("create: no id")?.to_owned();
                    let w =
                        call(&c, Method::POST, &format!("/v1/containers/{id}/wait"), None).await;
                    let w = w?;
                    call(
                        &c,
                        Method::DELETE,
                        &format!("/v1/containers/{id}?force=true"),
                        None,
                    )
                    .await?;
                    if w["exit_code"] != 0 {
                        bail!("{name}: {w}");
                    }
                    Ok(start_ms)
                }
                .await;
                out.push((i, r));
            }
            out
        }));
    }
    // Samples memory while the load runs, keeping the one with the most containers running.
    let state = d.state.clone();
    let pid = d.pid;
    let peak = std::rc::Rc::new(std::cell::RefCell::new((
        0usize,
        Mem::default(),
        Mem::default(),
    )));
    let done = std::rc::Rc::new(std::cell::Cell::new(false));
    let sampler = {
        let (peak, done, state) = (peak.clone(), done.clone(), state);
        local.spawn_local(async move {
            while !done.get() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Every container has a shim from its start to its end, whatever the API
                // calls about it are doing: the shims are the containers to divide by.
                let shims = procs::mem_sum(&procs::shims_of(&state));
                if shims.procs > peak.borrow().0 {
                    let daemon = procs::mem(pid).unwrap_or_default();
                    *peak.borrow_mut() = (shims.procs, daemon, shims);
                }
            }
        })
    };
    let results = local
        .run_until(async move {
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.unwrap_or_default());
            }
            done.set(true);
            let _ = sampler.await;
            all
        })
        .await;
    res.wall = t0.elapsed();
    match reader.finish() {
        Ok(x) => res.nfs_load = x,
        Err(e) => res.nfs_error = Some(format!("during the load: {e:#}")),
    }
    for (_, r) in results {
        res.started += 1;
        match r {
            Ok(ms) => res.start.push(ms),
            Err(e) => {
                res.failed += 1;
                if res.failures.len() < 3 {
                    res.failures.push(format!("{e:#}"));
                }
            }
        }
    }
    (res.peak_running, res.daemon, res.shims) = *peak.borrow();
    eprintln!("5. counting the output files");
    res.files_expected = (plan.total * plan.files) as u64;
    for e in std::fs::read_dir(base.join("out"))? {
        res.files_written += std::fs::read_dir(e?.path())?.count() as u64;
    }
    if let Some(h) = following {
        eprintln!("5. waiting for the subscriber to catch up");
        follower.want.set(Some(res.files_written));
        let t = Instant::now();
        res.events = match local.run_until(h).await {
            Ok(Ok(())) => Ok(follower.seen.borrow().len() as u64),
            Ok(Err(e)) => Err(format!("the subscriber failed: {e:#}")),
            Err(e) => Err(format!("the subscriber panicked: {e}")),
        };
        res.events_delivered = follower.delivered.get();
        res.events_catch_up = t.elapsed();
    }
    d.stop();
    Ok(())
}

// ------------------------------------------------------------------------------------ report

pub fn render(l: &Load, quick: bool, plot: Option<&str>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "## 5. The seed's load, compressed\n");
    let Some(p) = l.plan else { return o };
    let _ = writeln!(
        o,
        "{} containers in all, {} at a time (a new one started as soon as one ends), on a fresh \
         daemon with its NFS gateway, its array a scratch ext4 on a loop device. Each runs `sh -c '{}'` in the busybox image with the \
         array's `load/` at `/s`: it reads one of {} input files (1–100 MB: {} MB), writes {} \
         output files, then sleeps 0–{} s (lifetimes scaled down from hours). Meanwhile the \
         bench's NFS client reads a 64 MiB file of the array over and over (READ of 1 MiB, one \
         call in flight), first {:.0} s with the daemon idle, then during the whole load; and a \
         file-events subscriber follows the output tree (a watch on `load/out` for \
         `close_write`, a subscription long-polled with `wait=1&max=10000` and acked, over its \
         own connection), counting the distinct files its events name. \
         Memory is sampled every 2 s; the sample with the most containers running (counted by their shims) is shown{}.\n",
        p.total,
        p.concurrency,
        script(p.files),
        p.inputs,
        l.input_bytes
            .iter()
            .map(|b| (b / 1_000_000).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        p.files,
        p.max_sleep,
        p.idle_secs,
        if quick {
            ". `--quick` sizes; the full run uses 250 at a time and 3000 in all"
        } else {
            ""
        }
    );
    if let Some(e) = &l.error {
        let _ = writeln!(o, "**Failed:** `{}`\n", e.replace('`', "'"));
    }
    let per = |m: &Mem, f: fn(&Mem) -> u64| f(m) as f64 / 1024.0 / l.peak_running.max(1) as f64;
    let dm = Mem {
        rss: l.daemon.rss + l.shims.rss,
        pss: l.daemon.pss + l.shims.pss,
        ..Default::default()
    };
    let _ = writeln!(o, "| | figure | target | |\n|---|---|---|---|");
    let _ = writeln!(
        o,
        "| containers run | {} in {:.1} s: **{:.1} containers/s** | ≥ 3000 in all | {} |",
        l.started,
        l.wall.as_secs_f64(),
        l.started as f64 / l.wall.as_secs_f64().max(1e-9),
        verdict(l.started >= 3000)
    );
    let _ = writeln!(
        o,
        "| start latency (`POST /v1/containers`, create + start), p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | | |",
        l.start.p50(),
        l.start.p99(),
        l.start.max()
    );
    let _ = writeln!(
        o,
        "| failed containers | {} | 0 | {} |",
        l.failed,
        verdict(l.failed == 0 && l.error.is_none())
    );
    let _ = writeln!(
        o,
        "| output files written / expected | {} / {} | equal | {} |",
        l.files_written,
        l.files_expected,
        verdict(l.files_written == l.files_expected)
    );
    match &l.events {
        Ok(n) => {
            let _ = writeln!(
                o,
                "| file events: output files named by a delivered `close_write` / files written | {n} / {} ({} events delivered; the subscriber had them {:.1} s after the last container ended) | equal | {} |",
                l.files_written,
                l.events_delivered,
                l.events_catch_up.as_secs_f64(),
                verdict(*n == l.files_written)
            );
        }
        Err(why) => {
            let _ = writeln!(
                o,
                "| file events delivered / files written | not measured: {why} | equal | |"
            );
        }
    }
    let _ = writeln!(
        o,
        "| NFS read throughput, idle / during the load | {:.0} / {:.0} MiB/s ({:.0} %){} | | |",
        l.nfs_idle,
        l.nfs_load,
        100.0 * l.nfs_load / l.nfs_idle,
        l.nfs_error
            .as_ref()
            .map(|e| format!("; error {e}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "| daemon + shims memory per running container ({} shims at the peak sample; daemon RSS {:.1} MiB) | RSS {:.1} MiB, PSS {:.1} MiB | | |",
        l.peak_running,
        l.daemon.rss as f64 / 1024.0,
        per(&dm, |m| m.rss),
        per(&dm, |m| m.pss)
    );
    let _ = writeln!(
        o,
        "\nLoad average at start {}, at end {}.",
        l.load_start, l.load_end
    );
    for f in &l.failures {
        let _ = writeln!(o, "- failure: `{}`", f.replace('`', "'"));
    }
    if let Some(plot) = plot {
        let _ = writeln!(o, "\n![start latency under load]({plot})");
    }
    let _ = writeln!(o);
    o
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}
