//! `inarray-bench compare`: two inarray binaries (before and after a change) side by side in one
//! run, with runc and podman beside them — run-to-exit of `/bin/true` through REST and through
//! the CLI as users run it (`inarray run --rm`), and the memory of N sleeping containers with
//! podman's per-container monitor (conmon) measured in the same run. Prints a markdown section.
//!
//! Everything is interleaved round by round (each runtime gets the same share of the shared
//! machine's drift). The node's cgroup state is reported: whether any hierarchy is mounted with
//! `favordynmods` (which stays until reboot and removes the RCU wait of a cgroup move), and a
//! probe of that move itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::json;

use crate::daemon::{call, Daemon};
use crate::stats::Samples;
use crate::{ms, podman_once, procs, rest_once, runc_once, IMAGE};

pub struct Opts {
    pub new_bin: PathBuf,
    pub old_bin: PathBuf,
    pub work: PathBuf,
    pub podman_image: String,
    pub runs: usize,
    pub podman_runs: usize,
    pub containers: usize,
    pub podman_containers: usize,
}

/// One binary's figures.
#[derive(Default)]
struct Side {
    rest: Samples,
    cli: Samples,
    many: Option<Memory>,
}

#[derive(Default)]
struct Memory {
    n: usize,
    running: usize,
    start_all: Duration,
    daemon: procs::Mem,
    shims: procs::Mem,
    memfd: u64,
}

/// Which cgroup hierarchies carry `favordynmods` now (empty: the node's boot state).
pub fn favordynmods_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - cgroup") && l.contains("favordynmods"))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

fn cli_once(bin: &Path, socket: &Path) -> Result<Duration> {
    crate::run_cmd(
        Command::new(bin)
            .arg("--host")
            .arg(format!("unix:{}", socket.display()))
            .args(["run", "--rm", IMAGE, "/bin/true"]),
    )
}

async fn memory(bin: &Path, dir: &Path, archive: &Path, n: usize) -> Result<Memory> {
    let d = Daemon::start(bin, dir).await?;
    d.import(archive, IMAGE).await?;
    let t0 = Instant::now();
    // Eight in flight, as section 2 of bench/run.
    let started = crate::fan_out(&d.socket, n, 8, |c, i| async move {
        let body =
            json!({"image": IMAGE, "command": ["sleep", "3600"], "name": format!("cmp-sleep-{i}")});
        call(&c, Method::POST, "/v1/containers", Some(&body)).await
    })
    .await;
    let mut ids = Vec::new();
    for (_, _, r) in started {
        if let Some(id) = r?["id"].as_str() {
            ids.push(id.to_owned());
        }
    }
    let start_all = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let list = d.call(Method::GET, "/v1/containers", None).await?;
    let running = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["state"] == "running")
        .count();
    let m = Memory {
        n,
        running,
        start_all,
        daemon: procs::mem(d.pid).unwrap_or_default(),
        shims: procs::mem_sum(&procs::shims_of(&d.state)),
        memfd: procs::memfd_bytes(d.pid),
    };
    for id in &ids {
        let _ = call(
            &d.client(),
            Method::DELETE,
            &format!("/v1/containers/{id}?force=true"),
            None,
        )
        .await;
    }
    d.stop();
    Ok(m)
}

/// podman with `n` detached `sleep` containers: the conmon processes' memory.
fn podman_memory(image: &str, n: usize) -> Result<(usize, procs::Mem)> {
    let names: Vec<String> = (0..n).map(|i| format!("inarray-cmp-{i}")).collect();
    let result = (|| {
        for name in &names {
            crate::run_cmd(&mut crate::podman_run(
                "-d",
                name,
                image,
                &["sleep", "3600"],
            ))?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let conmons = conmon_pids(&names);
        Ok((conmons.len(), procs::mem_sum(&conmons)))
    })();
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0"])
        .args(&names)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    result
}

/// conmon processes whose command line names one of `names` (`-n NAME`).
fn conmon_pids(names: &[String]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_conmon = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("conmon"));
        if is_conmon && args.iter().any(|a| names.contains(a)) {
            out.push(pid);
        }
    }
    out
}

pub async fn bench(o: &Opts) -> Result<String> {
    let work = o.work.canonicalize()?;
    let archive = work.join("busybox-oci.tar");
    let mut report = String::new();
    // ---------------------------------------------------------------- run-to-exit
    let d_new = Daemon::start(&o.new_bin, &work.join("cmp-new")).await?;
    d_new.import(&archive, IMAGE).await?;
    let d_old = Daemon::start(&o.old_bin, &work.join("cmp-old")).await?;
    d_old.import(&archive, IMAGE).await?;
    // The node's state as the measurements find it (a daemon may have just set favordynmods).
    let fdm = favordynmods_mounts();
    let probe = procs::cgroup_move_probe(20, Duration::from_millis(30)).unwrap_or_default();
    let probe = Samples {
        ms: probe,
        ..Default::default()
    };

    let (mut new, mut old) = (Side::default(), Side::default());
    let (mut runc, mut podman) = (Samples::default(), Samples::default());
    let body = json!({"image": IMAGE, "command": ["/bin/true"]});
    let bundle = work.join("bundle");
    // Warm-up, not counted.
    for d in [&d_new, &d_old] {
        for _ in 0..3 {
            rest_once(&d.client(), &body).await?;
        }
    }
    let _ = runc_once(&bundle, "inarray-cmp-warm");
    let rounds = 10usize;
    let per = o.runs.div_ceil(rounds);
    let podman_per = o.podman_runs.div_ceil(rounds);
    eprintln!("compare: run-to-exit, {rounds} rounds of {per} (podman {podman_per})");
    for round in 0..rounds {
        for i in 0..per {
            for (d, side, bin) in [
                (&d_new, &mut new, &o.new_bin),
                (&d_old, &mut old, &o.old_bin),
            ] {
                match rest_once(&d.client(), &body).await {
                    Ok(t) => side.rest.push(ms(t[0] + t[1] + t[2])),
                    Err(e) => side.rest.error(e),
                }
                match cli_once(bin, &d.socket) {
                    Ok(t) => side.cli.push(ms(t)),
                    Err(e) => side.cli.error(e),
                }
            }
            match runc_once(&bundle, &format!("inarray-cmp-{round}-{i}")) {
                Ok(t) => runc.push(ms(t)),
                Err(e) => runc.error(e),
            }
            if i < podman_per {
                match podman_once(&o.podman_image, &format!("inarray-cmp-{round}-{i}")) {
                    Ok(t) => podman.push(ms(t)),
                    Err(e) => podman.error(e),
                }
            }
        }
    }
    d_new.stop();
    d_old.stop();

    // ---------------------------------------------------------------- memory
    eprintln!("compare: {} sleeping containers per binary", o.containers);
    new.many = Some(
        memory(
            &o.new_bin,
            &work.join("cmp-mem-new"),
            &archive,
            o.containers,
        )
        .await?,
    );
    old.many = Some(
        memory(
            &o.old_bin,
            &work.join("cmp-mem-old"),
            &archive,
            o.containers,
        )
        .await?,
    );
    eprintln!("compare: {} podman containers", o.podman_containers);
    let conmon = podman_memory(&o.podman_image, o.podman_containers);

    // ---------------------------------------------------------------- report
    let w = &mut report;
    writeln!(
        w,
        "## Before and after: run-to-exit and supervision memory\n"
    )?;
    writeln!(
        w,
        "`inarray-bench compare`: the binary before the change (**old**) and after it (**new**), each on a fresh daemon of its own, side by side in one run with runc and podman; {rounds} rounds, every runtime in every round. REST = `POST /v1/containers` + `POST …/wait` + `DELETE …` over the unix socket; CLI = the whole `inarray run --rm busybox /bin/true` process, as a user runs it; podman = `podman run --rm --network none --runtime runc …` on the same image.\n"
    )?;
    writeln!(
        w,
        "Node state: cgroup hierarchies mounted with `favordynmods`: {}; moving a process into a fresh cgroup p50 / p90 {:.2} / {:.2} ms (≈ 6–9 ms is the RCU grace period a boot-state node pays; ≈ 0.05 ms with `favordynmods`).\n",
        if fdm.is_empty() {
            "none (the node's boot state)".to_owned()
        } else {
            fdm.join(", ")
        },
        probe.p50(),
        probe.pct(90.0)
    )?;
    writeln!(w, "| ms | runs | errors | p50 | p90 | p99 | mean |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|")?;
    let row = |w: &mut String, name: &str, s: &Samples| {
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.n(),
            s.errors,
            s.p50(),
            s.pct(90.0),
            s.p99(),
            s.mean()
        );
    };
    row(w, "new, REST", &new.rest);
    row(w, "new, CLI `inarray run --rm`", &new.cli);
    row(w, "old, REST", &old.rest);
    row(w, "old, CLI `inarray run --rm`", &old.cli);
    row(w, "runc run", &runc);
    row(w, "podman run --rm", &podman);
    writeln!(w)?;
    writeln!(
        w,
        "podman / inarray at p50: new REST **{:.1}×**, new CLI **{:.1}×**; old REST {:.1}×, old CLI {:.1}×. inarray / runc at p50: new REST {:.2}×, old REST {:.2}×.\n",
        podman.p50() / new.rest.p50(),
        podman.p50() / new.cli.p50(),
        podman.p50() / old.rest.p50(),
        podman.p50() / old.cli.p50(),
        new.rest.p50() / runc.p50(),
        old.rest.p50() / runc.p50()
    )?;
    for s in [&new.rest, &new.cli, &old.rest, &old.cli, &runc, &podman] {
        for e in &s.error_examples {
            writeln!(w, "- error: {e}")?;
        }
    }
    writeln!(w, "Memory with {} sleeping containers (MiB; daemon + supervisors, RSS and PSS from `/proc/PID/smaps_rollup`):\n", o.containers)?;
    writeln!(
        w,
        "| | running | start all | daemon RSS | supervisors RSS | per container RSS | per container PSS | daemon's sealed memfd |"
    )?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mib = |kb: u64| kb as f64 / 1024.0;
    for (name, side) in [("new", &new), ("old", &old)] {
        let m = side.many.as_ref().context("memory figures")?;
        let n = m.n.max(1) as f64;
        writeln!(
            w,
            "| {name} | {} of {} | {:.1} s | {:.1} | {:.1} | **{:.2}** | {:.2} | {:.1} |",
            m.running,
            m.n,
            m.start_all.as_secs_f64(),
            mib(m.daemon.rss),
            mib(m.shims.rss),
            mib(m.daemon.rss + m.shims.rss) / n,
            mib(m.daemon.pss + m.shims.pss) / n,
            m.memfd as f64 / (1024.0 * 1024.0)
        )?;
    }
    match conmon {
        Ok((k, mem)) => {
            let n = k.max(1) as f64;
            writeln!(
                w,
                "| podman's conmon ({} containers, {k} conmon processes; podman has no daemon) | {k} of {} | | | {:.1} | **{:.2}** | {:.2} | |",
                o.podman_containers,
                o.podman_containers,
                mib(mem.rss),
                mib(mem.rss) / n,
                mib(mem.pss) / n
            )?;
        }
        Err(e) => writeln!(w, "\npodman's conmon: not measured: {e:#}")?,
    }
    writeln!(w)?;
    Ok(report)
}
