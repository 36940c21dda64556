//! The scheduled-jobs benchmarks (run by `bench/jobs/run`; see its header).
//!
//! 1. tokio-cron-scheduler, for the record: one every-second job, and N jobs due at one instant;
//!    lateness of each callback.
//! 2. inarray's scheduler in-process (its SQLite store on disk, the real clock, containers replaced
//!    by a runner that only records): the same two loads; lateness = `fired_at - scheduled_at` (the
//!    commit of the fire) and the moment the runner was asked to start the container.
//! 3. The real daemon: N jobs due at one instant, each running `/bin/true` in a real container;
//!    firing lateness, container-start lateness, time until all have started and ended.
//! 4. The real daemon with M jobs defined (none due): its memory, its idle CPU, its restart time.
//!
//! The results replace the "## Scheduled jobs" section of docs/benchmarks.md (the rest of the
//! file is left as it is).

#[path = "../../../tests/common/image_builder.rs"]
mod image_builder;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SubsecRound, Timelike, Utc};
use clap::Parser;
use hyper::Method;
use inarray_api::client::Client;
use inarray_api::serve::Listen;
use inarray_jobs::clock::BoxFuture;
use inarray_jobs::{Exit, JobSpec, Jobs, JobsError, JobsOptions, Runner, SystemClock};
use inarray_runtime::ContainerConfig;
use inarray_store::{ContainerState, RunState, Store};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "inarray's scheduled-jobs benchmarks")]
struct Opts {
    /// The release binary of inarray.
    #[arg(long)]
    bin: PathBuf,
    /// A scratch directory (on the disk the daemon's state would be on).
    #[arg(long)]
    work: PathBuf,
    /// docs/benchmarks.md: its "## Scheduled jobs" section is (re)written.
    #[arg(long)]
    out: PathBuf,
    /// Jobs due at the same instant.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Jobs defined for the memory and idle-CPU figures.
    #[arg(long, default_value_t = 10_000)]
    defined: usize,
    /// Seconds of the every-second runs (each scheduler).
    #[arg(long, default_value_t = 20)]
    every_secs: u64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// The command line to print in the report.
    #[arg(long, default_value = "bench/jobs/run")]
    command: String,
    /// Run only the in-process comparison (tokio-cron-scheduler and inarray's scheduler), print
    /// its figures and write nothing (for investigating; BENCH_LOG=inarray_jobs=debug shows each
    /// fire's timing).
    #[arg(long)]
    in_process_only: bool,
}

// ------------------------------------------------------------------------------- figures

#[derive(Clone, Debug, Default)]
struct Sample(Vec<f64>);

impl Sample {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
    fn max(&self) -> f64 {
        self.pct(100.0)
    }
    fn n(&self) -> usize {
        self.0.len()
    }
    /// "p50 / p99 / max" in ms.
    fn row(&self) -> String {
        format!(
            "{} / {} / {}",
            f(self.pct(50.0)),
            f(self.pct(99.0)),
            f(self.max())
        )
    }
}

fn f(ms: f64) -> String {
    if ms.is_nan() {
        "–".into()
    } else if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// A whole second at least `secs` from now.
fn whole_second_after(secs: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::seconds(secs + 1)).trunc_subsecs(0)
}

/// A 6-field cron expression that matches `t` (UTC) and nothing else this year.
fn at_instant(t: DateTime<Utc>) -> String {
    t.format("%-S %-M %-H %-d %-m *").to_string()
}

async fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

// ------------------------------------------------------------------ 1. tokio-cron-scheduler

struct Tcs {
    every: Sample,
    burst: Sample,
    burst_n: usize,
}

async fn tokio_cron_scheduler(every_secs: u64, burst: usize) -> Result<Tcs> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    // One job every second. Its lateness depends on where in the second the scheduler's 500 ms
    // loop happens to run, which is set when it starts: 10 schedulers, started at 50 ms steps
    // after a whole second, each for a tenth of the time, show the spread across starts.
    let mut every = Sample::default();
    for i in 0..10 {
        sleep_until(whole_second_after(0) + chrono::Duration::milliseconds(50 * i)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DateTime<Utc>>();
        let mut sched = JobScheduler::new().await?;
        sched
            .add(Job::new_async("* * * * * *", move |_, _| {
                let tx = tx.clone();
                Box::pin(async move {
                    let _ = tx.send(Utc::now());
                })
            })?)
            .await?;
        sched.start().await?;
        tokio::time::sleep(Duration::from_secs((every_secs / 10).max(2))).await;
        sched.shutdown().await?;
        while let Ok(now) = rx.try_recv() {
            // Late by the time past the second it belongs to (under 1 s with a 500 ms poll).
            every.0.push(ms(now - now.trunc_subsecs(0)));
        }
    }
    // `burst` jobs due at one instant; again from 5 starting phases (100 ms steps).
    let mut b = Sample::default();
    for i in 0..5 {
        sleep_until(whole_second_after(0) + chrono::Duration::milliseconds(100 * i)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DateTime<Utc>>();
        let mut sched = JobScheduler::new().await?;
        let at = whole_second_after(3 + (burst as i64) / 500);
        for _ in 0..burst {
            let tx = tx.clone();
            sched
                .add(Job::new_async(at_instant(at).as_str(), move |_, _| {
                    let tx = tx.clone();
                    Box::pin(async move {
                        let _ = tx.send(Utc::now());
                    })
                })?)
                .await?;
        }
        drop(tx);
        if Utc::now() > at - chrono::Duration::milliseconds(600) {
            bail!("adding {burst} jobs to tokio-cron-scheduler took past the instant");
        }
        sched.start().await?;
        sleep_until(at + chrono::Duration::seconds(5)).await;
        sched.shutdown().await?;
        while let Ok(now) = rx.try_recv() {
            b.0.push(ms(now - at));
        }
    }
    Ok(Tcs {
        every,
        burst: b,
        burst_n: burst,
    })
}

// ----------------------------------------------------------- 2. inarray's scheduler in-process

/// Starts nothing: records when each container start was asked for.
#[derive(Default)]
struct NullRunner {
    asked: Mutex<Vec<(String, DateTime<Utc>)>>,
}

impl Runner for NullRunner {
    fn check<'a>(&'a self, _: &'a ContainerConfig) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async { Ok(()) })
    }
    fn run(&self, cfg: ContainerConfig) -> BoxFuture<'_, Result<String, JobsError>> {
        let now = Utc::now();
        let name = cfg.name.unwrap_or_default();
        self.asked.lock().unwrap().push((name.clone(), now));
        Box::pin(async move { Ok(name) })
    }
    fn start<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async { Ok(()) })
    }
    fn wait<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Exit, JobsError>> {
        Box::pin(async {
            Ok(Exit {
                exit_code: Some(0),
                error: None,
            })
        })
    }
    fn stop<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), JobsError>> {
        Box::pin(async { Ok(()) })
    }
    fn find<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, ContainerState)>, JobsError>> {
        Box::pin(async { Ok(None) })
    }
}

fn job_spec(name: &str, schedule: &str, extra: Value) -> Result<JobSpec> {
    let mut v = json!({
        "name": name, "schedule": schedule, "concurrency": "allow",
        "container": {"image": "busybox", "command": ["true"]},
    });
    for (k, x) in extra.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    Ok(serde_json::from_value(v)?)
}

struct InProc {
    every_fired: Sample,
    every_asked: Sample,
    burst_fired: Sample,
    burst_asked: Sample,
    burst_all_asked: f64,
    burst_n: usize,
}

/// A scheduler over a fresh store in `work`, with the recording runner.
async fn scheduler(work: &Path) -> Result<(tempfile::TempDir, Jobs, Arc<NullRunner>)> {
    let dir = tempfile::Builder::new()
        .prefix("inproc-")
        .tempdir_in(work)?;
    let store = Store::open(&dir.path().join("state.db")).await?;
    let runner = Arc::new(NullRunner::default());
    let jobs = Jobs::new(
        store,
        runner.clone(),
        Arc::new(SystemClock),
        JobsOptions::default(),
    );
    jobs.start().await?;
    Ok((dir, jobs, runner))
}

fn asked(runner: &NullRunner) -> std::collections::HashMap<String, DateTime<Utc>> {
    runner.asked.lock().unwrap().iter().cloned().collect()
}

async fn in_process(work: &Path, every_secs: u64, burst: usize) -> Result<InProc> {
    let mut r = InProc {
        every_fired: Sample::default(),
        every_asked: Sample::default(),
        burst_fired: Sample::default(),
        burst_asked: Sample::default(),
        burst_all_asked: 0.0,
        burst_n: burst,
    };
    // One job every second.
    let (_dir, jobs, runner) = scheduler(work).await?;
    jobs.create(job_spec(
        "tick",
        "* * * * * *",
        json!({"history": {"successful": 1000}}),
    )?)
    .await?;
    tokio::time::sleep(Duration::from_secs(every_secs)).await;
    jobs.stop();
    let a = asked(&runner);
    for run in jobs.runs("tick", None).await? {
        r.every_fired.0.push(ms(run.fired_at - run.scheduled_at));
        if let Some(t) = a.get(&format!("tick.run-{}", run.id)) {
            r.every_asked.0.push(ms(*t - run.scheduled_at));
        }
    }
    // `burst` jobs due at one instant.
    let (_dir, jobs, runner) = scheduler(work).await?;
    let at = whole_second_after(5 + (burst as i64) / 100);
    let schedule = at_instant(at);
    for i in 0..burst {
        jobs.create(job_spec(&format!("b{i:05}"), &schedule, json!({}))?)
            .await?;
    }
    if Utc::now() > at - chrono::Duration::seconds(1) {
        bail!("creating {burst} jobs took too long for the burst instant");
    }
    sleep_until(at + chrono::Duration::seconds(5)).await;
    jobs.stop();
    let a = asked(&runner);
    for i in 0..burst {
        let name = format!("b{i:05}");
        for run in jobs.runs(&name, None).await? {
            if run.state != RunState::Succeeded {
                bail!("{name}: run {} is {}", run.id, run.state);
            }
            r.burst_fired.0.push(ms(run.fired_at - run.scheduled_at));
            if let Some(t) = a.get(&format!("{name}.run-{}", run.id)) {
                r.burst_asked.0.push(ms(*t - run.scheduled_at));
            }
        }
    }
    r.burst_all_asked = r.burst_asked.max();
    Ok(r)
}

// ------------------------------------------------------------------------- the real daemon

struct Daemon {
    dir: PathBuf,
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("array"))?;
        std::fs::create_dir_all(dir.join("state"))?;
        let socket = dir.join("run/api.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--array")
            .arg(dir.join("array"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("INARRAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        std::fs::write(dir.join("daemon.pid"), child.id().to_string())?;
        let d = Self {
            dir: dir.to_owned(),
            child,
            socket,
        };
        d.wait_healthy().await?;
        Ok(d)
    }

    async fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(v) = self.client().json(Method::GET, "/v1/health", None).await {
                if v["status"] == "ok" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not come up; see {}/daemon.log",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self) -> Client {
        Client::new(Listen::Unix(self.socket.clone()))
    }

    async fn call(&self, m: Method, path: &str, body: Option<Value>) -> Result<Value> {
        tokio::time::timeout(
            Duration::from_secs(120),
            self.client().json(m.clone(), path, body.as_ref()),
        )
        .await
        .with_context(|| format!("{m} {path}: no answer in 120 s"))?
        .with_context(|| format!("{m} {path}"))
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// CPU time of all the daemon's threads, in ns (`/proc/PID/task/*/schedstat`).
    fn cpu_ns(&self) -> Result<u64> {
        let mut total = 0;
        for t in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let text = std::fs::read_to_string(t?.path().join("schedstat")).unwrap_or_default();
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// (RSS in KiB, user+system CPU in clock ticks) of the daemon process.
    fn usage(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let after = &stat[stat.rfind(')').context("stat")? + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok((rss, ticks))
    }

    async fn import_busybox(&self) -> Result<()> {
        let archive = self.dir.join("busybox-oci.tar");
        image_builder::write_oci_archive(&archive, "busybox:latest");
        self.client()
            .upload("/v1/images/import?name=busybox:latest", &archive)
            .await?;
        Ok(())
    }

    /// SIGKILL; then kills what is left of its containers (by their cgroups).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("state/containers")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                for path in inarray_runtime::cgroups::find_container("inarray", &id) {
                    let _ = inarray_runtime::cgroups::cleanup(&path);
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Creates jobs through the API, `parallel` requests at a time.
async fn create_jobs(d: &Daemon, bodies: Vec<Value>, parallel: usize) -> Result<Duration> {
    let t0 = Instant::now();
    let bodies = Arc::new(Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let bodies = bodies.clone();
        let c = d.client();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(b) = bodies.lock().unwrap().pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                c.json(Method::POST, "/v1/jobs", Some(&b))
                    .await
                    .with_context(|| format!("creating {}", b["name"]))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t0.elapsed())
}

struct Burst {
    n: usize,
    create: Duration,
    fired: Sample,
    started: Sample,
    all_started: f64,
    all_finished: f64,
    failed: usize,
    cpu_secs: f64,
    rss_after_mib: f64,
}

async fn daemon_burst(bin: &Path, work: &Path, n: usize) -> Result<Burst> {
    let d = Daemon::start(bin, &work.join("burst")).await?;
    d.import_busybox().await?;
    // Time to create them: measured on a first few, with a wide margin.
    let at = whole_second_after(10 + (n as i64) / 25);
    let schedule = at_instant(at);
    let bodies = (0..n)
        .map(|i| {
            json!({"name": format!("b{i:05}"), "schedule": schedule,
                   "container": {"image": "busybox", "command": ["true"]}})
        })
        .collect();
    let create = create_jobs(&d, bodies, 8).await?;
    if Utc::now() > at - chrono::Duration::seconds(2) {
        bail!("creating {n} jobs took {create:?}: past the burst instant");
    }
    let (_, cpu0) = d.usage()?;
    sleep_until(at).await;
    // Until every job has a finished run.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending: Vec<usize> = (0..n).collect();
    let mut runs: Vec<Option<Value>> = vec![None; n];
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut left = Vec::new();
        for i in pending {
            let v = d
                .call(Method::GET, &format!("/v1/jobs/b{i:05}/runs"), None)
                .await?;
            match v.as_array().and_then(|a| a.first()) {
                Some(r) if r["state"] == "succeeded" || r["state"] == "failed" => {
                    runs[i] = Some(r.clone())
                }
                _ => left.push(i),
            }
        }
        pending = left;
        if Instant::now() > deadline {
            bail!("{} jobs did not finish in 10 min", pending.len());
        }
    }
    let (rss, cpu1) = d.usage()?;
    let t = |v: &Value| -> Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(v.as_str().context("a time")?)?.to_utc())
    };
    let mut b = Burst {
        n,
        create,
        fired: Sample::default(),
        started: Sample::default(),
        all_started: 0.0,
        all_finished: 0.0,
        failed: 0,
        cpu_secs: (cpu1 - cpu0) as f64 / clk_tck(),
        rss_after_mib: rss as f64 / 1024.0,
    };
    for r in runs.into_iter().flatten() {
        if t(&r["scheduled_at"])? != at {
            bail!("a run for another instant: {r}");
        }
        b.fired.0.push(ms(t(&r["fired_at"])? - at));
        if r["state"] != "succeeded" {
            b.failed += 1;
        }
        if !r["started_at"].is_null() {
            b.started.0.push(ms(t(&r["started_at"])? - at));
        }
        if !r["finished_at"].is_null() {
            b.all_finished = b.all_finished.max(ms(t(&r["finished_at"])? - at));
        }
    }
    b.all_started = b.started.max();
    Ok(b)
}

struct Idle {
    n: usize,
    create: Duration,
    rss0_mib: f64,
    rss_mib: f64,
    rss_restarted_mib: f64,
    cpu0_pct: f64,
    cpu_pct: f64,
    restart: Duration,
    secs: u64,
}

async fn daemon_idle(bin: &Path, work: &Path, n: usize, secs: u64) -> Result<Idle> {
    let dir = work.join("idle");
    let mut d = Daemon::start(bin, &dir).await?;
    d.import_busybox().await?;
    // Threads that ended meanwhile drop out of the sum: measure between two stable points.
    let pct = |ns0: u64, ns1: u64| ns1.saturating_sub(ns0) as f64 / 1e9 / secs as f64 * 100.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, _) = d.usage()?;
    let c0 = d.cpu_ns()?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu0_pct = pct(c0, d.cpu_ns()?);
    // Daily jobs spread over the hours that do not come within the measurement.
    let hour = Utc::now().hour();
    let bodies = (0..n)
        .map(|i| {
            let h = (hour + 2 + (i as u32 % 20)) % 24;
            json!({"name": format!("j{i:05}"), "schedule": format!("{} {h} * * *", i % 60),
                   "container": {"image": "busybox", "command": ["true"]}})
        })
        .collect();
    let create = create_jobs(&d, bodies, 8).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, _) = d.usage()?;
    let c0 = d.cpu_ns()?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu_pct = pct(c0, d.cpu_ns()?);
    // A restart loads all of them (and checks each for missed fires).
    d.kill();
    let t0 = Instant::now();
    let d2 = Daemon::start(bin, &dir).await?;
    let restart = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss2, _) = d2.usage()?;
    let listed = d2.call(Method::GET, "/v1/jobs", None).await?;
    if listed.as_array().map(Vec::len) != Some(n) {
        bail!(
            "the daemon lists {} jobs, not {n}",
            listed.as_array().map_or(0, Vec::len)
        );
    }
    Ok(Idle {
        n,
        create,
        rss0_mib: rss0 as f64 / 1024.0,
        rss_mib: rss as f64 / 1024.0,
        rss_restarted_mib: rss2 as f64 / 1024.0,
        cpu0_pct,
        cpu_pct,
        restart,
        secs,
    })
}

// ------------------------------------------------------------------------------- report

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), kernel {}; load average at start {}",
        kernel.trim(),
        load.join(" ")
    )
}

fn section(o: &Opts, tcs: &Tcs, ip: &InProc, b: &Burst, idle: &Idle, took: Duration) -> String {
    let mut s = String::new();
    let line = |s: &mut String, l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(&mut s, "## Scheduled jobs\n".into());
    line(
        &mut s,
        format!(
            "Written by `bench/jobs/run` (this section only; the design and the decision they \
             support are in [design/jobs.md](design/jobs.md)).\n\n\
             - **Command:** `{}`\n- **Date:** {} UTC (took {} s)\n- **Machine:** {}\n\
             - **Lateness** of a fire: the moment its run is committed to SQLite (`fired_at`, \
             WAL, `synchronous=FULL`) minus its scheduled instant. Figures are p50 / p99 / max in \
             ms.\n",
            o.command,
            Utc::now().format("%Y-%m-%d %H:%M"),
            took.as_secs(),
            machine()
        ),
    );
    line(
        &mut s,
        "### Firing lateness: inarray's timer against tokio-cron-scheduler\n".into(),
    );
    line(
        &mut s,
        "In-process, no containers: tokio-cron-scheduler 0.15 (in-memory store) calling a \
         callback, and inarray's scheduler (SQLite on disk, the real clock) calling a runner that \
         only records the start request. tokio-cron-scheduler checks for due jobs every 500 ms \
         from when it starts, so its lateness depends on that phase: it is started 10 times, at \
         50 ms steps after a whole second.\n"
            .into(),
    );
    line(&mut s, "| load | scheduler | fires | lateness p50 / p99 / max (ms) | start asked p50 / p99 / max (ms) |".into());
    line(&mut s, "|---|---|---:|---:|---:|".into());
    line(
        &mut s,
        format!(
            "| 1 job every second, 10 starts × {} s | tokio-cron-scheduler | {} | {} | (same) |",
            (o.every_secs / 10).max(2),
            tcs.every.n(),
            tcs.every.row()
        ),
    );
    line(
        &mut s,
        format!(
            "| 1 job every second, {} s | inarray | {} | {} | {} |",
            o.every_secs,
            ip.every_fired.n(),
            ip.every_fired.row(),
            ip.every_asked.row()
        ),
    );
    line(
        &mut s,
        format!(
            "| {} jobs due at one instant, 5 starts | tokio-cron-scheduler | {} of {} | {} | (same) |",
            tcs.burst_n,
            tcs.burst.n(),
            5 * tcs.burst_n,
            tcs.burst.row()
        ),
    );
    line(
        &mut s,
        format!(
            "| {} jobs due at one instant | inarray | {} | {} | {} |\n",
            ip.burst_n,
            ip.burst_fired.n(),
            ip.burst_fired.row(),
            ip.burst_asked.row()
        ),
    );
    line(
        &mut s,
        format!(
            "### {} jobs due at the same instant, real containers\n\n\
             The release daemon; {} jobs created through the API ({:.1} s, 8 requests in flight), \
             each running `/bin/true` of the busybox image, all due at one whole second. Runs \
             are started 16 at a time.\n",
            b.n,
            b.n,
            b.create.as_secs_f64()
        ),
    );
    line(&mut s, "| | figure |\n|---|---|".into());
    line(
        &mut s,
        format!("| firing lateness p50 / p99 / max | {} ms |", b.fired.row()),
    );
    line(
        &mut s,
        format!(
            "| container running, after the instant: p50 / p99 / max | {} ms |",
            b.started.row()
        ),
    );
    line(
        &mut s,
        format!(
            "| all {} started / all ended | {:.2} s / {:.2} s after the instant |",
            b.n,
            b.all_started / 1000.0,
            b.all_finished / 1000.0
        ),
    );
    line(&mut s, format!("| runs failed | {} |", b.failed));
    line(
        &mut s,
        format!(
            "| daemon CPU during the burst / RSS after | {:.1} s / {:.1} MiB |\n",
            b.cpu_secs, b.rss_after_mib
        ),
    );
    let per_job = (idle.rss_mib - idle.rss0_mib) * 1024.0 * 1024.0 / idle.n as f64;
    line(
        &mut s,
        format!(
            "### {} jobs defined, none due\n\n\
             The release daemon with {} daily jobs (created through the API in {:.1} s, 8 in \
             flight); idle CPU over {} s.\n",
            idle.n,
            idle.n,
            idle.create.as_secs_f64(),
            idle.secs
        ),
    );
    line(
        &mut s,
        "| | no jobs | with the jobs |\n|---|---:|---:|".into(),
    );
    line(
        &mut s,
        format!(
            "| daemon RSS | {:.1} MiB | {:.1} MiB after creating them; {:.1} MiB after a restart |",
            idle.rss0_mib, idle.rss_mib, idle.rss_restarted_mib
        ),
    );
    line(
        &mut s,
        format!(
            "| daemon idle CPU (all threads, `/proc/PID/task/*/schedstat`) | {:.4} % | {:.4} % |",
            idle.cpu0_pct, idle.cpu_pct
        ),
    );
    line(
        &mut s,
        format!(
            "| restart until the API answers (all jobs loaded, missed fires checked) | | {:.2} s |\n",
            idle.restart.as_secs_f64()
        ),
    );
    line(
        &mut s,
        format!(
            "Memory for {} jobs: {:.1} MiB of RSS once created, about {:.0} bytes per job (its \
             definition with the container request, its place in the timer queue and its two \
             next instants, and what SQLite caches of the tables; the parsed schedule is not \
             kept). A restart adds {:.1} MiB: the allocator keeps the peak of loading every \
             job's row at once.\n",
            idle.n,
            idle.rss_mib - idle.rss0_mib,
            per_job,
            idle.rss_restarted_mib - idle.rss_mib
        ),
    );
    s
}

/// Replaces the "## Scheduled jobs" section (up to the next "## " heading) or appends it.
fn write_section(out: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| *l == "## Scheduled jobs");
    let mut result = String::new();
    match start {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = Opts::parse();
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.work)?;
    eprintln!(
        "== tokio-cron-scheduler: every second for {} s, then {} at one instant",
        o.every_secs, o.burst
    );
    let tcs = tokio_cron_scheduler(o.every_secs, o.burst).await?;
    eprintln!("   every {} / burst {}", tcs.every.row(), tcs.burst.row());
    eprintln!("== inarray's scheduler in-process: the same");
    let ip = in_process(&o.work, o.every_secs, o.burst).await?;
    eprintln!(
        "   every {} / burst {}",
        ip.every_fired.row(),
        ip.burst_fired.row()
    );
    if o.in_process_only {
        return Ok(());
    }
    eprintln!(
        "== the daemon: {} jobs at one instant, real containers",
        o.burst
    );
    let b = daemon_burst(&o.bin, &o.work, o.burst).await?;
    eprintln!(
        "   fired {} started {} all {:.2} s",
        b.fired.row(),
        b.started.row(),
        b.all_started / 1000.0
    );
    eprintln!(
        "== the daemon: {} jobs defined, idle {} s",
        o.defined, o.idle_secs
    );
    let idle = daemon_idle(&o.bin, &o.work, o.defined, o.idle_secs).await?;
    eprintln!(
        "   rss {:.1} -> {:.1} MiB ({:.1} after a restart), cpu {:.4} -> {:.4} %",
        idle.rss0_mib, idle.rss_mib, idle.rss_restarted_mib, idle.cpu0_pct, idle.cpu_pct
    );
    let text = section(&o, &tcs, &ip, &b, &idle, t0.elapsed());
    write_section(&o.out, &text)?;
    println!("{text}");
    Ok(())
}
