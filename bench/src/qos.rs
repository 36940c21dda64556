//! 3. QoS: does the `storage` engine keep the daemon's service level when a container is noisy?
//!
//! One daemon with the NFS gateway (when the binary has one), four phases measured in the same
//! run, interleaved in many short rounds so that the shared machine's drift hits all alike:
//!
//! 1. **quiet**: the noise frozen (its containers' freezer cgroups), so nothing of it runs;
//! 2. **noise, QoS on**: the noise running in `default`, the engines as built in (`storage`: CPU
//!    and I/O weight 1000 against `default`'s 100);
//! 3. **noise, QoS off**: the same noise, `storage` patched live to weight 100 (no more share than
//!    the noisy engine), restored right after;
//! 4. *what-if*: QoS on with the array disk switched to the other I/O scheduler for the stint.
//!
//! The noise: containers in `default`, started once, each spinning one busy `sh` loop per CPU and
//! reading a 1 GiB file of the array with `dd … iflag=direct` in a loop. Each stint measures, one
//! after the other: `GET /v1/containers` paced every 10 ms; back-to-back run-to-exit of `/bin/true`
//! (create+start, wait, delete); 200 MiB reads of a file of an NFS export with libnfs' `nfs-cat`,
//! alternately cold (the file's page cache dropped first) and warm.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::daemon::{call, Daemon};
use crate::stats::Samples;
use crate::{body_true, ms, procs, rest_once, Plan, IMAGE};

pub const PHASES: [&str; 4] = [
    "quiet",
    "noise, QoS on",
    "noise, QoS off",
    "*what-if: noise, QoS on, the array's disk switched to the other I/O scheduler*",
];
pub const QUIET: usize = 0;
pub const ON: usize = 1;
pub const OFF: usize = 2;
/// QoS on, and the array's disk switched for the stint from its own I/O scheduler to BFQ (or, when
/// it already runs BFQ, to mq-deadline): what enforcing the engines' I/O weights costs or saves.
pub const WHATIF: usize = 3;
/// The bench daemon's `cgroup_root` (its own, so that no other daemon on the machine shares its
/// engines), and so its `storage` engine's cgroup.
const ROOT_CG: &str = "inarray-bench";
const STORAGE_CG: &str = "inarray-bench-storage";
/// The I/O scheduler that enforces the engines' I/O weights on cgroup v1, switched on for the
/// what-if stints (the daemon itself runs with the disk's own scheduler, as it does by default).
pub const WEIGHT_SCHEDULER: &str = "bfq";

/// The weights `storage` gets for the QoS-off phase: those of a default engine.
const OFF_WEIGHT: u64 = 100;
pub const NOISE_FILE_MIB: u64 = 1024;
pub const NFS_FILE_MIB: u64 = 200;
/// Share of a phase's time given to each measurement (GET loop, run-to-exit loop, NFS reads).
pub const SPLIT: [f64; 3] = [0.3, 0.4, 0.3];
const GET_EVERY: Duration = Duration::from_millis(10);
const MAX_GETS: usize = 3000;
const MAX_RUNS: usize = 1500;
/// After the noise is thawed: time for it to be back at full speed before the next stint.
pub const SETTLE: Duration = Duration::from_millis(300);

/// One phase measured once (in one round).
#[derive(Default, Clone)]
pub struct Stint {
    pub round: usize,
    pub phase: usize,
    pub secs: f64,
    /// `GET /v1/containers`, ms.
    pub get: Samples,
    /// create+start+wait+delete of `/bin/true`, ms; and its three requests.
    pub run: Samples,
    pub run_create: Samples,
    pub run_wait: Samples,
    pub run_delete: Samples,
    /// 200 MiB NFS reads, MiB/s: the file's page cache dropped before (cold), or not (warm).
    pub nfs_cold: Samples,
    pub nfs_warm: Samples,
    /// CPU used (cores) and bytes read from the disk (MiB/s) over the stint: by the `default`
    /// engine (its cgroup files, containers included), and by the daemon process (/proc/PID).
    pub noise_cpu: f64,
    pub noise_read: f64,
    pub daemon_cpu: f64,
    pub daemon_read: f64,
    /// fsync of a 4 KiB append and unlink in the daemon's state directory, 5 of each at the
    /// end of the stint (ms; from the bench client).
    pub fsync: Samples,
    pub unlink: Samples,
    /// PSI some avg10 at the end (%).
    pub cpu_psi: f64,
    pub io_psi: f64,
    /// `storage`'s weights as the kernel had them at the start and at the end.
    pub weights_start: String,
    pub weights_end: String,
}

pub struct Qos {
    pub rounds: usize,
    pub phase_secs: f64,
    pub noise: usize,
    pub stints: Vec<Stint>,
    /// Where the NFS figures come from, or why there are none.
    pub nfs: std::result::Result<String, String>,
    /// What the kernel's set-up looks like: cgroup hierarchy, I/O scheduler, weight files.
    pub facts: Vec<(String, String)>,
    /// How `storage` was put back after the QoS-off stints.
    pub restored: String,
    pub env_start: String,
    pub env_end: String,
    pub errors: Vec<String>,
    /// The client's cgroup.
    pub facts_client: String,
    /// What the what-if stints did.
    pub whatif: String,
    /// The array disk's I/O scheduler: what the daemon set, what it was.
    pub scheduler: String,
    /// How the quiet stints stop the noise (its freezer files).
    pub quiet_how: String,
    /// What the noise does (`Plan::noise_kind`).
    pub noise_kind: &'static str,
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            rounds: 0,
            phase_secs: 0.0,
            noise: 0,
            stints: Vec::new(),
            nfs: Err("not tried".into()),
            facts: Vec::new(),
            restored: String::new(),
            env_start: String::new(),
            env_end: String::new(),
            errors: Vec::new(),
            facts_client: String::new(),
            whatif: String::new(),
            scheduler: String::new(),
            quiet_how: String::new(),
            noise_kind: "both",
        }
    }
}

impl Qos {
    /// All valid stints of one phase merged.
    pub fn phase(&self, p: usize) -> Stint {
        let mut out = Stint {
            phase: p,
            ..Default::default()
        };
        let mut n = 0.0;
        for s in self.stints.iter().filter(|s| s.phase == p && s.valid()) {
            merge(&mut out.get, &s.get);
            merge(&mut out.run, &s.run);
            merge(&mut out.run_create, &s.run_create);
            merge(&mut out.run_wait, &s.run_wait);
            merge(&mut out.run_delete, &s.run_delete);
            merge(&mut out.nfs_cold, &s.nfs_cold);
            merge(&mut out.nfs_warm, &s.nfs_warm);
            merge(&mut out.fsync, &s.fsync);
            merge(&mut out.unlink, &s.unlink);
            out.secs += s.secs;
            // Time-weighted means of the rates.
            out.noise_cpu += s.noise_cpu * s.secs;
            out.noise_read += s.noise_read * s.secs;
            out.daemon_cpu += s.daemon_cpu * s.secs;
            out.daemon_read += s.daemon_read * s.secs;
            out.cpu_psi += s.cpu_psi;
            out.io_psi += s.io_psi;
            n += 1.0;
        }
        if out.secs > 0.0 {
            out.noise_cpu /= out.secs;
            out.noise_read /= out.secs;
            out.daemon_cpu /= out.secs;
            out.daemon_read /= out.secs;
        }
        if n > 0.0 {
            out.cpu_psi /= n;
            out.io_psi /= n;
        }
        out
    }
}

impl Stint {
    /// False when `storage`'s weights changed during the stint: the engines' cgroups are shared
    /// by every daemon on the machine, and a daemon that starts re-applies its engines' limits.
    pub fn valid(&self) -> bool {
        self.weights_start == self.weights_end
    }
}

fn merge(into: &mut Samples, from: &Samples) {
    into.ms.extend_from_slice(&from.ms);
    into.errors += from.errors;
    for e in &from.error_examples {
        if into.error_examples.len() < 3 {
            into.error_examples.push(e.clone());
        }
    }
}

/// What a stint needs.
struct Ctx<'a> {
    d: &'a Daemon,
    nfs_url: Option<String>,
    nfs_file: PathBuf,
    /// The array disk's `queue/scheduler` file and the scheduler it runs.
    sched_file: PathBuf,
    sched_active: Option<String>,
}

pub async fn bench(bin: &Path, work: &Path, plan: &Plan) -> Result<Qos> {
    let mut res = Qos {
        rounds: plan.qos_rounds,
        phase_secs: plan.qos_secs,
        noise: plan.noise,
        noise_kind: plan.noise_kind,
        nfs: Err("not tried".into()),
        ..Default::default()
    };
    let dir = work.join("d3");
    // A fresh daemon: nothing left from an earlier `inarray-bench qos` in the same WORK.
    if dir.join("state").exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;

    // The NFS gateway, if this binary has one (`--nfs-listen`).
    let has_nfs = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("--nfs-listen"))
        .unwrap_or(false);
    let mut port = None;
    // The array disk's I/O scheduler, put back at the end (bench/run's trap does it if we die).
    let (_, sched_file) = scheduler_of(&dir);
    let before = read_trim(&sched_file);
    let active = before
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned());
    let sched_restore = work.join("qos-sched-restore");
    if let Some(a) = &active {
        std::fs::write(&sched_restore, format!("{}\t{a}\n", sched_file.display()))?;
    }
    let config = dir.join("bench.toml");
    std::fs::write(&config, format!("cgroup_root = \"{ROOT_CG}\"\n"))?;
    let config_args = ["--config".to_owned(), config.display().to_string()];
    let d = if has_nfs {
        let p = free_port()?;
        let mut args = config_args.to_vec();
        args.extend(["--nfs-listen".into(), format!("127.0.0.1:{p}")]);
        match Daemon::start_with(bin, &dir, &args).await {
            Ok(d) => {
                port = Some(p);
                d
            }
            Err(e) => {
                res.nfs = Err(format!(
                    "the daemon did not start with `--nfs-listen`: {}",
                    one_line(&format!("{e:#}"))
                ));
                Daemon::start_with(bin, &dir, &config_args).await?
            }
        }
    } else {
        res.nfs =
            Err("this build of `inarray serve` has no `--nfs-listen` (no NFS gateway)".into());
        Daemon::start_with(bin, &dir, &config_args).await?
    };
    res.scheduler = format!(
        "no `io_scheduler` in the daemon's config (the default): the array's disk keeps its own, `{}`",
        read_trim(&sched_file),
    );
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;

    // The files: the noise reads `noise/big` (direct I/O), NFS clients read `nfs/f200`.
    let array = dir.join("array");
    let noise_file = array.join("noise/big");
    let nfs_file = array.join("nfs/f200");
    eprintln!(
        "3. QoS: writing the noise file ({NOISE_FILE_MIB} MiB) and the NFS file ({NFS_FILE_MIB} MiB) in the array"
    );
    write_file(&noise_file, NOISE_FILE_MIB)?;
    write_file(&nfs_file, NFS_FILE_MIB)?;

    let nfs_url = match port {
        Some(p) => match setup_nfs(&d, p, &nfs_file).await {
            Ok(url) => {
                res.nfs = Ok(format!(
                    "`nfs-cat '{url}' > /dev/null` ({}), an export of `nfs/` for 127.0.0.1, read-only, root squashed",
                    first_line_of("dpkg-query", &["-W", "-f=libnfs-utils ${Version}", "libnfs-utils"])
                ));
                Some(url)
            }
            Err(e) => {
                res.nfs = Err(format!(
                    "the NFS gateway is there but could not be used: {}",
                    one_line(&format!("{e:#}"))
                ));
                None
            }
        },
        None => None,
    };
    let cx = Ctx {
        d: &d,
        nfs_url,
        nfs_file: nfs_file.clone(),
        sched_file: sched_file.clone(),
        sched_active: active.clone(),
    };

    // The bench client and nfs-cat stand in for clients on other machines: in a cpu cgroup of
    // their own with a large weight, so that the noise does not slow the client itself.
    let client_cg = TopCgroup::create(
        &format!("inarray-bench-client-{}", std::process::id()),
        1000,
    )
    .context("a cpu cgroup for the bench client")?;
    client_cg.add(std::process::id() as i32)?;
    res.facts_client = format!(
        "`{}` (cpu weight 1000, i.e. cpu.shares 10240 on v1)",
        client_cg.name()
    );

    // What `storage` has now, to put back after the QoS-off stints.
    let storage = d.call(Method::GET, "/v1/engines/storage", None).await?;
    let orig = json!({
        "cpu_weight": storage["resources"]["cpu_weight"],
        "io_weight": storage["resources"]["io_weight"],
    });
    let restore_file = work.join("qos-restore");
    let mut noise_ids: Vec<String> = Vec::new();
    res.env_start = procs::pressure();
    let outcome = rounds(&cx, plan, &mut res, &mut noise_ids, &orig, &restore_file).await;
    drop(client_cg);

    // Whatever happened: storage's weights back, noise gone.
    if restore_file.exists() {
        restore(&d, &orig, &restore_file, &mut res).await;
    }
    for id in noise_ids.drain(..) {
        let _ = d
            .call(
                Method::DELETE,
                &format!("/v1/containers/{id}?force=true"),
                None,
            )
            .await;
    }
    res.env_end = procs::pressure();
    let left = d.container_ids();
    if !left.is_empty() {
        res.errors.push(format!(
            "{} container(s) left after the QoS bench",
            left.len()
        ));
    }
    d.stop();
    if let Some(a) = &active {
        if std::fs::write(&sched_file, a).is_ok() {
            let _ = std::fs::remove_file(&sched_restore);
        }
    }
    let _ = std::fs::remove_file(&noise_file);
    let _ = std::fs::remove_file(&nfs_file);
    outcome?;
    Ok(res)
}

async fn rounds(
    cx: &Ctx<'_>,
    plan: &Plan,
    res: &mut Qos,
    noise_ids: &mut Vec<String>,
    orig: &Value,
    restore_file: &Path,
) -> Result<()> {
    let d = cx.d;
    // Warm-up: one of each measurement, not counted.
    rest_once(&d.client(), &body_true())
        .await
        .context("warm-up run")?;
    if let Some(url) = &cx.nfs_url {
        nfs_read(url).context("warm-up NFS read")?;
    }
    // The noise runs from here to the end; the quiet stints freeze it (the freezer cgroup), so
    // that all four phases can alternate every few seconds: the machine's drift (its neighbours
    // come and go over tens of seconds) then falls on every phase alike.
    for i in 0..plan.noise {
        let body = json!({
            "image": IMAGE,
            "name": format!("bench-noise-{i}"),
            "command": ["sh", "-c", noise_script(plan.noise_kind)],
            "volumes": [{"source": "noise", "target": "/d", "read_only": true}],
        });
        let v = call(&d.client(), Method::POST, "/v1/containers", Some(&body))
            .await
            .context("starting a noise container")?;
        noise_ids.push(v["id"].as_str().context("no id")?.to_owned());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pids = Vec::new();
    for id in noise_ids.iter() {
        let v = d
            .call(Method::GET, &format!("/v1/containers/{id}"), None)
            .await?;
        if v["state"] != "running" {
            bail!("noise container {id} is not running: {v}");
        }
        pids.push(v["pid"].as_i64().unwrap_or(0) as i32);
    }
    res.facts = facts(d, pids[0], &cx.nfs_file);
    let freezer = Freezer::of(&pids)?;
    res.quiet_how = freezer.describe();
    for r in 0..plan.qos_rounds {
        // Rotate the order of the phases from round to round.
        let mut order = [QUIET, ON, OFF, WHATIF];
        order.rotate_left(r % 4);
        for p in order {
            eprintln!("3. QoS: round {}/{}: {}", r + 1, plan.qos_rounds, PHASES[p]);
            if p == QUIET {
                freezer.freeze(true)?;
            }
            if p == OFF {
                save_weights(restore_file)?;
                let body =
                    json!({"resources": {"cpu_weight": OFF_WEIGHT, "io_weight": OFF_WEIGHT}});
                d.call(Method::PATCH, "/v1/engines/storage", Some(&body))
                    .await
                    .context("PATCH /v1/engines/storage (QoS off)")?;
            }
            // The what-if: the other scheduler for the stint (the file bench/run's trap reads
            // puts the disk's own back if we die meanwhile).
            let switched = if p == WHATIF {
                let own = cx.sched_active.as_deref().context("the disk's scheduler")?;
                let other = if own == WEIGHT_SCHEDULER {
                    "mq-deadline"
                } else {
                    WEIGHT_SCHEDULER
                };
                std::fs::write(&cx.sched_file, other)
                    .with_context(|| format!("switching {} to {other}", cx.sched_file.display()))?;
                Some((own, other))
            } else {
                None
            };
            let s = stint(cx, r, p, plan.qos_secs).await;
            if p == QUIET {
                freezer.freeze(false)?;
                // The noise back at full speed before the next stint.
                tokio::time::sleep(SETTLE).await;
            }
            if p == OFF {
                restore(d, orig, restore_file, res).await;
            }
            if let Some((own, other)) = switched {
                std::fs::write(&cx.sched_file, own).with_context(|| {
                    format!("switching {} back to {own}", cx.sched_file.display())
                })?;
                res.whatif = format!(
                    "`echo {other} > {}` for the stint (storage's weights as the kernel had them are in the table above), then back to `{own}`",
                    cx.sched_file.display()
                );
            }
            res.stints.push(s);
        }
    }
    drop(freezer);
    for id in noise_ids.drain(..) {
        d.call(
            Method::DELETE,
            &format!("/v1/containers/{id}?force=true"),
            None,
        )
        .await
        .context("deleting a noise container")?;
    }
    Ok(())
}

/// One busy loop per CPU, and direct-I/O reads of the 1 GiB file over and over.
const NOISE_SCRIPT: &str =
    "n=$(nproc); i=0; while [ $i -lt $n ]; do (while :; do :; done) & i=$((i+1)); done; \
     while :; do dd if=/d/big of=/dev/null bs=1M iflag=direct 2>/dev/null; done";
/// For taking the noise apart by hand (`inarray-bench qos --noise-kind`): only the CPU part, or
/// only the I/O part.
const NOISE_CPU: &str =
    "n=$(nproc); i=1; while [ $i -lt $n ]; do (while :; do :; done) & i=$((i+1)); done; \
     while :; do :; done";
const NOISE_IO: &str = "while :; do dd if=/d/big of=/dev/null bs=1M iflag=direct 2>/dev/null; done";
/// Eight direct-I/O readers at once, each over its eighth of the file: a queue depth of 8 where
/// `dd` alone keeps one request in flight.
const NOISE_DEEP_IO: &str =
    "for j in 0 1 2 3 4 5 6 7; do (while :; do dd if=/d/big of=/dev/null bs=1M \
     iflag=direct skip=$((j*128)) count=128 2>/dev/null; done) & done; wait";

pub fn noise_script(kind: &str) -> &'static str {
    match kind {
        "cpu" => NOISE_CPU,
        "io" => NOISE_IO,
        "deep-io" => NOISE_DEEP_IO,
        _ => NOISE_SCRIPT,
    }
}

/// One phase, once: GET loop, run-to-exit loop, NFS reads, each for its share of `secs`.
async fn stint(cx: &Ctx<'_>, round: usize, phase: usize, secs: f64) -> Stint {
    let d = cx.d;
    let c = d.client();
    let mut s = Stint {
        round,
        phase,
        weights_start: weights_text(),
        ..Default::default()
    };
    let u0 = usage(d.pid);
    let t0 = Instant::now();

    // GET /v1/containers, paced.
    let until = Instant::now() + Duration::from_secs_f64(secs * SPLIT[0]);
    let mut tick = tokio::time::interval(GET_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until && s.get.n() + s.get.errors < MAX_GETS {
        tick.tick().await;
        let t = Instant::now();
        match call(&c, Method::GET, "/v1/containers", None).await {
            Ok(_) => s.get.push(ms(t.elapsed())),
            Err(e) => s.get.error(e),
        }
    }

    // Run-to-exit of /bin/true, back to back.
    let body = body_true();
    let until = Instant::now() + Duration::from_secs_f64(secs * SPLIT[1]);
    while Instant::now() < until && s.run.n() + s.run.errors < MAX_RUNS {
        match rest_once(&c, &body).await {
            Ok([a, b, cc]) => {
                s.run.push(ms(a + b + cc));
                s.run_create.push(ms(a));
                s.run_wait.push(ms(b));
                s.run_delete.push(ms(cc));
            }
            Err(e) => s.run.error(e),
        }
    }

    // NFS reads, cold and warm alternately; at least one of each.
    if let Some(url) = &cx.nfs_url {
        let until = Instant::now() + Duration::from_secs_f64(secs * SPLIT[2]);
        let mut cold = true;
        while Instant::now() < until
            || s.nfs_cold.n() + s.nfs_cold.errors == 0
            || s.nfs_warm.n() + s.nfs_warm.errors == 0
        {
            let out = if cold {
                &mut s.nfs_cold
            } else {
                &mut s.nfs_warm
            };
            if cold {
                if let Err(e) = drop_cache(&cx.nfs_file) {
                    out.error(format!("dropping the page cache: {e}"));
                    break;
                }
            }
            match nfs_read(url) {
                Ok(t) => out.push(NFS_FILE_MIB as f64 / t.as_secs_f64()),
                Err(e) => {
                    out.error(e);
                    if out.errors > 3 {
                        break;
                    }
                }
            }
            cold = !cold;
        }
    }

    s.secs = t0.elapsed().as_secs_f64();
    let u1 = usage(d.pid);
    match procs::disk_probe(&d.state, 5) {
        Ok((a, b)) => {
            a.into_iter().for_each(|x| s.fsync.push(x));
            b.into_iter().for_each(|x| s.unlink.push(x));
        }
        Err(e) => s.fsync.error(e),
    }
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / s.secs;
    s.noise_cpu = per_s(u0[0], u1[0]) / 1e9;
    s.noise_read = per_s(u0[1], u1[1]) / 1048576.0;
    s.daemon_cpu = per_s(u0[2], u1[2]) / 1e9;
    s.daemon_read = per_s(u0[3], u1[3]) / 1048576.0;
    s.cpu_psi = procs::psi10("cpu");
    s.io_psi = procs::psi10("io");
    s.weights_end = weights_text();
    s
}

/// [default engine's CPU ns, its bytes read from disks, the daemon's CPU ns, its bytes read].
/// The engine's from its cgroup files, recursively; the daemon's from /proc.
fn usage(daemon: i32) -> [u64; 4] {
    let root = Path::new("/sys/fs/cgroup");
    let num = |p: PathBuf| read_trim(&p).parse::<u64>().unwrap_or(0);
    let (cpu, read) = if root.join("cgroup.controllers").exists() {
        let e = root.join(ROOT_CG).join("default");
        let cpu = std::fs::read_to_string(e.join("cpu.stat"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1000;
        let read = std::fs::read_to_string(e.join("io.stat"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("rbytes="))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        (cpu, read)
    } else {
        let cpu = num(root.join(format!("cpuacct/{ROOT_CG}/default/cpuacct.usage")));
        let read = std::fs::read_to_string(root.join(format!(
            "blkio/{ROOT_CG}/default/blkio.throttle.io_service_bytes_recursive"
        )))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1] == "Read").then(|| f[2].parse::<u64>().ok())?
        })
        .sum();
        (cpu, read)
    };
    // utime + stime (fields 14, 15) in clock ticks.
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rfind(')')
        .map(|i| {
            stat[i + 1..]
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf takes an integer and returns one.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let dread = std::fs::read_to_string(format!("/proc/{daemon}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    [cpu, read, ticks * 1_000_000_000 / hz, dread]
}

/// A cgroup at the top of the cpu hierarchy (v1: `cpu` and, when it is a separate hierarchy,
/// `cpuacct`; v2: the unified one) with a CPU weight; on drop, whatever is still in it moves to
/// the top and the directory goes.
struct TopCgroup {
    dirs: Vec<PathBuf>,
}

impl TopCgroup {
    fn create(name: &str, weight: u64) -> Result<Self> {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = Vec::new();
        if root.join("cgroup.controllers").exists() {
            let d = root.join(name);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("cpu.weight"), weight.to_string())
                .with_context(|| format!("{}/cpu.weight", d.display()))?;
            dirs.push(d);
        } else {
            let cpu = root.join("cpu");
            let d = cpu.join(name);
            std::fs::create_dir_all(&d)?;
            std::fs::write(
                d.join("cpu.shares"),
                inarray_weight_to_shares(weight).to_string(),
            )
            .with_context(|| format!("{}/cpu.shares", d.display()))?;
            dirs.push(d);
            let acct = root.join("cpuacct");
            if acct.is_dir() && acct.canonicalize().ok() != cpu.canonicalize().ok() {
                let d = acct.join(name);
                std::fs::create_dir_all(&d)?;
                dirs.push(d);
            }
        }
        Ok(Self { dirs })
    }

    fn name(&self) -> String {
        let root = Path::new("/sys/fs/cgroup");
        self.dirs
            .iter()
            .map(|d| d.strip_prefix(root).unwrap_or(d).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Moves process `pid` (all its threads) in.
    fn add(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} to {}", d.display()))?;
        }
        Ok(())
    }
}

impl Drop for TopCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let top = d.parent().unwrap_or(Path::new("/sys/fs/cgroup"));
            for _ in 0..50 {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = std::fs::write(top.join("cgroup.procs"), pid.trim());
                }
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The noise containers' freezer cgroups: the quiet stints freeze them (v1 `freezer.state`, v2
/// `cgroup.freeze`), and thaw them after. Thawed again on drop, whatever happened: a frozen
/// container cannot be killed.
struct Freezer {
    /// (the cgroup's directory, v2)
    cgroups: Vec<(PathBuf, bool)>,
}

impl Freezer {
    fn of(pids: &[i32]) -> Result<Self> {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let mut cgroups = Vec::new();
        for &pid in pids {
            let rel = cgroup_of(pid, "freezer");
            let rel = rel.trim_start_matches('/');
            let dir = if v2 {
                root.join(rel)
            } else {
                root.join("freezer").join(rel)
            };
            let file = dir.join(if v2 { "cgroup.freeze" } else { "freezer.state" });
            if rel.is_empty() || rel == "?" || !file.exists() {
                bail!(
                    "no freezer cgroup for noise process {pid} ({})",
                    file.display()
                );
            }
            cgroups.push((dir, v2));
        }
        Ok(Self { cgroups })
    }

    fn describe(&self) -> String {
        let files: Vec<String> = self
            .cgroups
            .iter()
            .map(|(d, v2)| {
                d.join(if *v2 {
                    "cgroup.freeze"
                } else {
                    "freezer.state"
                })
                .display()
                .to_string()
            })
            .collect();
        format!("`{}`", files.join("`, `"))
    }

    /// Freezes (or thaws) every noise container and waits until the kernel says it is done.
    fn freeze(&self, on: bool) -> Result<()> {
        for (d, v2) in &self.cgroups {
            let (file, value) = match (v2, on) {
                (true, true) => ("cgroup.freeze", "1"),
                (true, false) => ("cgroup.freeze", "0"),
                (false, true) => ("freezer.state", "FROZEN"),
                (false, false) => ("freezer.state", "THAWED"),
            };
            std::fs::write(d.join(file), value)
                .with_context(|| format!("{value} > {}", d.join(file).display()))?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (d, v2) in &self.cgroups {
            loop {
                let done = if *v2 {
                    let want = if on { "frozen 1" } else { "frozen 0" };
                    std::fs::read_to_string(d.join("cgroup.events"))
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.trim() == want)
                } else {
                    read_trim(&d.join("freezer.state")) == if on { "FROZEN" } else { "THAWED" }
                };
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not become {} in 10 s",
                        d.display(),
                        if on { "frozen" } else { "thawed" }
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.freeze(false);
    }
}

/// cgroup v2 weight → v1 shares, as the daemon maps them (100 → 1024).
fn inarray_weight_to_shares(w: u64) -> u64 {
    w * 1024 / 100
}

/// `storage` back to what it had, through the API; if that fails, the kernel files directly
/// (from what `save_weights` recorded). Removes the record once done.
async fn restore(d: &Daemon, orig: &Value, restore_file: &Path, res: &mut Qos) {
    let body = json!({ "resources": orig });
    match d
        .call(Method::PATCH, "/v1/engines/storage", Some(&body))
        .await
    {
        Ok(_) => {
            res.restored = format!(
                "`PATCH /v1/engines/storage {body}` after each QoS-off stint; the kernel then showed {}",
                weights_text()
            );
        }
        Err(e) => {
            let n = restore_files(restore_file);
            res.restored =
                format!("the PATCH back failed ({e}); {n} cgroup file(s) rewritten directly");
            res.errors.push(res.restored.clone());
        }
    }
    let _ = std::fs::remove_file(restore_file);
}

/// The files that hold `storage`'s CPU and I/O weights, on whichever hierarchy has them.
fn weight_files() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    [
        "cpu/{s}/cpu.shares",
        "blkio/{s}/blkio.weight",
        "blkio/{s}/blkio.bfq.weight",
        "{s}/cpu.weight",
        "{s}/io.weight",
        "{s}/io.bfq.weight",
    ]
    .iter()
    .map(|p| root.join(p.replace("{s}", STORAGE_CG)))
    .filter(|p| p.exists())
    .collect()
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// "cpu.shares 10240, blkio.bfq.weight 1000".
pub fn weights_text() -> String {
    weight_files()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                read_trim(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes "PATH\tVALUE" lines of the weight files before the QoS-off patch: bench/run's trap
/// writes them back if this program dies before restoring.
fn save_weights(to: &Path) -> Result<()> {
    let mut text = String::new();
    for p in weight_files() {
        let v = std::fs::read_to_string(&p)?;
        // blkio.bfq.weight reads "default 1000" on some kernels; the value is the last word.
        let v = v.split_whitespace().last().unwrap_or("").to_owned();
        text.push_str(&format!("{}\t{v}\n", p.display()));
    }
    std::fs::write(to, text)?;
    Ok(())
}

fn restore_files(from: &Path) -> usize {
    let text = std::fs::read_to_string(from).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(p, v)| std::fs::write(p, v).is_ok())
        .count()
}

// ------------------------------------------------------------------------------------- NFS

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Exports `nfs/` to 127.0.0.1 and reads the file once through it, checking its size; returns
/// the URL that worked.
async fn setup_nfs(d: &Daemon, port: u16, file: &Path) -> Result<String> {
    let body = json!({
        "name": "bench",
        "path": "nfs",
        "clients": [{"match": "127.0.0.1", "access": "ro"}],
    });
    d.call(Method::POST, "/v1/exports", Some(&body)).await?;
    let name = file.file_name().context("file name")?.to_string_lossy();
    let want = std::fs::metadata(file)?.len();
    let mut tried = Vec::new();
    // The operator guide's form first, then libnfs' form for files at an export's root.
    for url in [
        format!("nfs://127.0.0.1/bench/{name}?nfsport={port}&mountport={port}"),
        format!("nfs://127.0.0.1/bench//{name}?nfsport={port}&mountport={port}"),
    ] {
        match nfs_count(&url) {
            Ok(n) if n == want => return Ok(url),
            Ok(n) => tried.push(format!("{url}: {n} bytes, not {want}")),
            Err(e) => tried.push(format!("{url}: {e:#}")),
        }
    }
    bail!("{}", tried.join("; "))
}

/// Reads the URL with `nfs-cat`, counting the bytes.
fn nfs_count(url: &str) -> Result<u64> {
    let mut child = Command::new("nfs-cat")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("nfs-cat (package libnfs-utils)")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = out.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "nfs-cat: {}: {}",
            o.status,
            one_line(&String::from_utf8_lossy(&o.stderr))
        );
    }
    Ok(n)
}

/// Reads the URL with `nfs-cat` into /dev/null; the wall time.
fn nfs_read(url: &str) -> Result<Duration> {
    let t = Instant::now();
    let o = Command::new("nfs-cat")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("nfs-cat")?;
    let el = t.elapsed();
    if !o.status.success() {
        bail!(
            "nfs-cat: {}: {}",
            o.status,
            one_line(&String::from_utf8_lossy(&o.stderr))
        );
    }
    Ok(el)
}

// ------------------------------------------------------------------------------------- files

/// `mib` MiB of non-zero data (so that nothing is sparse or unwritten), synced, readable by all,
/// and out of the page cache.
fn write_file(path: &Path, mib: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("no parent")?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, b) in buf.iter_mut().enumerate() {
            *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8 | 1;
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    drop(f);
    drop_cache(path)?;
    Ok(())
}

/// Drops the file's pages from the page cache (POSIX_FADV_DONTNEED; the file is clean).
fn drop_cache(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: posix_fadvise on an fd we own, over the whole file; no memory involved.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------- facts

/// The cgroup of `pid` in the hierarchy with controller `ctl` (v1), or the v2 one.
fn cgroup_of(pid: i32, ctl: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctls.split(',').any(|c| c == ctl) {
            return path.to_owned();
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?")
        .to_owned()
}

/// The whole disk holding `path` and its I/O scheduler file (`queue/scheduler`).
fn scheduler_of(path: &Path) -> (String, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let none = PathBuf::from("/nonexistent");
    let Ok(m) = std::fs::metadata(path) else {
        return ("?".into(), none);
    };
    let dev = m.dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let Ok(mut sys) = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")) else {
        return (format!("{maj}:{min} (no block device)"), none);
    };
    if sys.join("partition").exists() {
        sys.pop();
    }
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (format!("{name} ({maj}:{min})"), sys.join("queue/scheduler"))
}

fn facts(d: &Daemon, noise_pid: i32, array_file: &Path) -> Vec<(String, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let dcpu = cgroup_of(d.pid, "cpu");
    let ncpu = cgroup_of(noise_pid, "cpu");
    let parent = |p: &str| Path::new(p).parent().map(|x| x.display().to_string());
    let engine_of_noise = parent(&ncpu);
    // `storage` at the top: the daemon's cgroup is a sibling of the containers' root.
    let siblings = parent(&dcpu).is_some()
        && parent(&dcpu)
            == engine_of_noise
                .as_deref()
                .and_then(parent)
                .as_deref()
                .and_then(parent);
    out.push((
        "cgroups (cpu; blkio)".into(),
        format!(
            "daemon `{dcpu}`; `{}` — noise container `{ncpu}`; `{}` — bench client and `nfs-cat` `{}`. \
             `storage` is a sibling of the containers' root `{}` (both at the top): **{}**",
            cgroup_of(d.pid, "blkio"),
            cgroup_of(noise_pid, "blkio"),
            cgroup_of(me, "cpu"),
            engine_of_noise.as_deref().and_then(parent).unwrap_or_default(),
            if siblings { "yes" } else { "no" }
        ),
    ));
    let root = Path::new("/sys/fs/cgroup");
    let sh = |p: &str| read_trim(&root.join(p));
    if root.join("cpu").join(ROOT_CG).is_dir() {
        out.push((
            "cpu.shares".into(),
            format!(
                "/{STORAGE_CG} {}, /{ROOT_CG} {}, /{ROOT_CG}/default {}, the noise container {}",
                sh(&format!("cpu/{STORAGE_CG}/cpu.shares")),
                sh(&format!("cpu/{ROOT_CG}/cpu.shares")),
                sh(&format!("cpu/{ROOT_CG}/default/cpu.shares")),
                sh(&format!("cpu{ncpu}/cpu.shares"))
            ),
        ));
        let b = root.join("blkio").join(STORAGE_CG);
        let files: Vec<String> = [
            "blkio.weight",
            "blkio.bfq.weight",
            "blkio.weight_device",
            "blkio.bfq.weight_device",
        ]
        .iter()
        .map(|f| {
            if b.join(f).exists() {
                format!("`{f}` = {}", read_trim(&b.join(f)))
            } else {
                format!("`{f}` absent")
            }
        })
        .collect();
        out.push(("storage's blkio weight files".into(), files.join(", ")));
    } else {
        out.push(("cgroup v2 weights".into(), weights_text()));
    }
    // The CPU scheduler's tick and autogroups: what a wakeup that does not preempt waits for, and
    // how processes outside any cgroup compete.
    let hz = std::fs::File::open("/proc/config.gz").ok().and_then(|f| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ="))
            .and_then(|v| v.parse::<u64>().ok())
    });
    out.push((
        "CPU scheduler".into(),
        format!(
            "tick {}; `kernel.sched_autogroup_enabled` = {} (processes in the root cgroup are \
             grouped per session, each group one entity of weight 1024 next to `/{ROOT_CG}` and `/{STORAGE_CG}`)",
            hz.map_or("unknown (no /proc/config.gz)".into(), |h| format!(
                "CONFIG_HZ={h} ({:.0} ms)",
                1000.0 / h as f64
            )),
            read_trim(Path::new("/proc/sys/kernel/sched_autogroup_enabled"))
        ),
    ));
    let (disk, sched) = scheduler_of(array_file);
    out.push((
        "array's disk, I/O scheduler".into(),
        format!(
            "{disk}: `{}` (the one in brackets is active)",
            read_trim(&sched)
        ),
    ));
    out
}

fn one_line(s: &str) -> String {
    let mut s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.truncate(300);
    s
}

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}
