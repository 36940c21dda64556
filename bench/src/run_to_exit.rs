//! Section 1, run-to-exit of `/bin/true`: inarray through REST beside runc and podman, the
//! profiled pass and the probes that explain the time; the runtimes' one-run helpers the other
//! benchmarks reuse.

use super::*;

#[derive(Default)]
pub struct RunToExit {
    pub rest: Samples,
    /// The same against a second daemon whose state directory is on tmpfs (a what-if).
    pub rest_tmpfs: Samples,
    pub tmpfs_create: Samples,
    pub tmpfs_wait: Samples,
    pub tmpfs_delete: Samples,
    pub rest_create: Samples,
    pub rest_wait: Samples,
    pub rest_delete: Samples,
    pub runc: Samples,
    pub podman: Samples,
    pub daemon_rss_before_kb: u64,
    pub daemon_rss_after_kb: u64,
    pub timeline: Timeline,
    pub probes: Probes,
    /// Load and pressure when the measured rounds started and ended.
    pub env_start: String,
    pub env_end: String,
    pub rounds: Vec<Round>,
}

/// One round's figures: how the machine's state moved the three runtimes.
#[derive(Default)]
pub struct Round {
    pub rest: Samples,
    pub rest_tmpfs: Samples,
    pub runc: Samples,
    pub podman: Samples,
    /// Disk probes in the daemon's state directory, taken during the round.
    pub fsync: Samples,
    pub unlink: Samples,
    /// PSI some avg10 at the end of the round (%).
    pub cpu_psi: f64,
    pub io_psi: f64,
}

/// Offsets (ms) from sending the create request, one row per profiled run.
#[derive(Default)]
pub struct Timeline {
    pub runs: usize,
    pub errors: usize,
    /// [shim logged "container started" (libcontainer's create+start done), create request
    /// returned, shim wrote exit.json (after reaping), shim process gone (seen through a pidfd;
    /// NaN when it was already gone when the create request returned), wait request returned,
    /// delete request returned].
    pub rows: Vec<[f64; 6]>,
    /// Runs whose shim was already gone when the create request returned.
    pub shim_gone_before_post: usize,
}

/// Figures about the machine and the binary that explain the run-to-exit time.
#[derive(Default)]
pub struct Probes {
    /// Moving a process into a fresh cgroup, 30 ms after the previous move (ms).
    pub cgroup_move: Samples,
    /// The same, back to back (5 ms apart).
    pub cgroup_move_fast: Samples,
    /// `inarray --version` spawned from the file, from a memfd copy, and `/bin/true --version`.
    pub spawn_disk: Samples,
    pub spawn_memfd: Samples,
    pub spawn_small: Samples,
    /// fsync of a 4 KiB append, and unlink of an fsynced file, in the daemon's state directory.
    pub disk_fsync: Samples,
    pub disk_unlink: Samples,
    /// The state directory's filesystem and mount options.
    pub state_fs: String,
}

pub(crate) fn body_true() -> Value {
    json!({"image": IMAGE, "command": ["/bin/true"]})
}

/// create+start, wait, delete; returns the three durations. On failure, removes what it made.
pub(crate) async fn rest_once(c: &Client, body: &Value) -> Result<[Duration; 3]> {
    let t0 = Instant::now();
    let v = call(c, Method::POST, "/v1/containers", Some(body)).await?;
    let id = v["id"].as_str().context("create: no id")?.to_owned();
    let t1 = Instant::now();
    let res = async {
        let w = call(c, Method::POST, &format!("/v1/containers/{id}/wait"), None).await?;
        if w["exit_code"] != 0 {
            bail!("wait: {w}");
        }
        let t2 = Instant::now();
        call(c, Method::DELETE, &format!("/v1/containers/{id}"), None).await?;
        Ok(t2)
    }
    .await;
    match res {
        Ok(t2) => Ok([t1 - t0, t2 - t1, t2.elapsed()]),
        Err(e) => {
            let _ = call(
                c,
                Method::DELETE,
                &format!("/v1/containers/{id}?force=true"),
                None,
            )
            .await;
            Err(e)
        }
    }
}

pub(crate) fn run_cmd(cmd: &mut Command) -> Result<Duration> {
    let t0 = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let el = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{:?}: {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(el)
}

pub(crate) fn runc_once(bundle: &Path, id: &str) -> Result<Duration> {
    let r = run_cmd(
        Command::new("runc")
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id),
    );
    if r.is_err() {
        let _ = Command::new("runc")
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
    }
    r
}

/// `podman run` as the benchmarks run it on this machine (runc, no network, the rlimits it can
/// set without CAP_SYS_RESOURCE), with `mode` (`--rm` or `-d`), then `image` and `cmd`.
pub fn podman_run(mode: &str, name: &str, image: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("podman");
    c.args(["run", mode, "--name", name])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(["--runtime", "runc", "--network", "none", image])
        .args(cmd);
    c
}

pub(crate) fn podman_once(image: &str, name: &str) -> Result<Duration> {
    let r = run_cmd(&mut podman_run("--rm", name, image, &["/bin/true"]));
    if r.is_err() {
        let _ = Command::new("podman")
            .args(["rm", "--force", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    r
}

pub(crate) async fn bench_run_to_exit(o: &RunOpts, work: &Path, plan: &Plan) -> Result<RunToExit> {
    let d = Daemon::start(&o.bin, &work.join("d1")).await?;
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    let c = d.client();
    // The what-if daemon: its state directory (database, images, containers, runtime state) is
    // on tmpfs, through a symlink so that bench/run's clean-up finds its containers as usual.
    let shm = Path::new("/dev/shm").join(format!(
        "{}-state",
        work.file_name()
            .map_or("inarray-bench".into(), |n| n.to_string_lossy())
    ));
    std::fs::create_dir_all(&shm)?;
    let dt_dir = work.join("d1-tmpfs");
    std::fs::create_dir_all(&dt_dir)?;
    if !dt_dir.join("state").exists() {
        std::os::unix::fs::symlink(&shm, dt_dir.join("state"))?;
    }
    let dt = Daemon::start(&o.bin, &dt_dir).await?;
    dt.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    let ct = dt.client();
    let body = body_true();
    let bundle = work.join("bundle");
    let tag = std::process::id();
    let mut res = RunToExit {
        daemon_rss_before_kb: procs::mem(d.pid).map_or(0, |m| m.rss),
        ..Default::default()
    };
    let mut seq = 0usize;
    let mut next_id = |kind: &str| {
        seq += 1;
        format!("inarray-bench-{kind}-{tag}-{seq}")
    };

    eprintln!("1. run-to-exit: warm-up");
    for _ in 0..plan.warmup {
        rest_once(&c, &body).await.context("warm-up run via REST")?;
        rest_once(&ct, &body)
            .await
            .context("warm-up run via REST, state on tmpfs")?;
        runc_once(&bundle, &next_id("runc")).context("warm-up run of runc")?;
    }
    if plan.podman_runs > 0 {
        podman_once(&o.podman_image, &next_id("podman")).context("warm-up run of podman")?;
    }

    res.env_start = procs::pressure();
    for r in 0..plan.rounds {
        let (n_rest, n_runc, n_podman) = (
            share(plan.runs, plan.rounds, r),
            share(plan.runc_runs, plan.rounds, r),
            share(plan.podman_runs, plan.rounds, r),
        );
        eprintln!(
            "1. run-to-exit: round {}/{}: {n_rest} inarray, {n_runc} runc, {n_podman} podman",
            r + 1,
            plan.rounds
        );
        let mut round = Round::default();
        for i in 0..n_rest {
            match rest_once(&c, &body).await {
                Ok([a, b, cc]) => {
                    res.rest.push(ms(a + b + cc));
                    round.rest.push(ms(a + b + cc));
                    res.rest_create.push(ms(a));
                    res.rest_wait.push(ms(b));
                    res.rest_delete.push(ms(cc));
                }
                Err(e) => res.rest.error(e),
            }
            // The disk's state while inarray runs: one probe every 10 runs.
            if i % 10 == 9 {
                if let Ok((a, b)) = procs::disk_probe(&d.state, 1) {
                    a.into_iter().for_each(|x| round.fsync.push(x));
                    b.into_iter().for_each(|x| round.unlink.push(x));
                }
            }
        }
        for _ in 0..n_rest {
            match rest_once(&ct, &body).await {
                Ok([a, b, cc]) => {
                    res.rest_tmpfs.push(ms(a + b + cc));
                    round.rest_tmpfs.push(ms(a + b + cc));
                    res.tmpfs_create.push(ms(a));
                    res.tmpfs_wait.push(ms(b));
                    res.tmpfs_delete.push(ms(cc));
                }
                Err(e) => res.rest_tmpfs.error(e),
            }
        }
        for _ in 0..n_runc {
            match runc_once(&bundle, &next_id("runc")) {
                Ok(t) => {
                    res.runc.push(ms(t));
                    round.runc.push(ms(t));
                }
                Err(e) => res.runc.error(e),
            }
        }
        for _ in 0..n_podman {
            match podman_once(&o.podman_image, &next_id("podman")) {
                Ok(t) => {
                    res.podman.push(ms(t));
                    round.podman.push(ms(t));
                }
                Err(e) => res.podman.error(e),
            }
        }
        round.cpu_psi = procs::psi10("cpu");
        round.io_psi = procs::psi10("io");
        res.rounds.push(round);
    }
    res.daemon_rss_after_kb = procs::mem(d.pid).map_or(0, |m| m.rss);
    res.env_end = procs::pressure();

    eprintln!("1. run-to-exit: profiled pass ({} runs)", plan.profile_runs);
    for _ in 0..plan.profile_runs {
        match rest_profiled(&d, &c, &body, &mut res.timeline).await {
            Ok(()) => {}
            Err(e) => {
                res.timeline.errors += 1;
                eprintln!("profiled run failed: {e:#}");
            }
        }
    }
    let left = d.container_ids();
    if !left.is_empty() {
        eprintln!("warning: {} container(s) left after bench 1", left.len());
    }
    let state = d.state.clone();
    d.stop();
    dt.stop();
    let _ = std::fs::remove_dir_all(&shm);

    eprintln!("1. probes: cgroup moves, process spawns, disk");
    let pr = &mut res.probes;
    pr.state_fs = procs::fs_of(&state);
    match procs::disk_probe(&state, 20) {
        Ok((a, b)) => {
            a.into_iter().for_each(|x| pr.disk_fsync.push(x));
            b.into_iter().for_each(|x| pr.disk_unlink.push(x));
        }
        Err(e) => pr.disk_fsync.error(e),
    }
    for (gap, out) in [(30, &mut pr.cgroup_move), (5, &mut pr.cgroup_move_fast)] {
        match procs::cgroup_move_probe(20, Duration::from_millis(gap)) {
            Ok(v) => v.into_iter().for_each(|x| out.push(x)),
            Err(e) => out.error(e),
        }
    }
    match procs::spawn_probe(&o.bin, 20) {
        Ok([a, b, c]) => {
            a.into_iter().for_each(|x| pr.spawn_disk.push(x));
            b.into_iter().for_each(|x| pr.spawn_memfd.push(x));
            c.into_iter().for_each(|x| pr.spawn_small.push(x));
        }
        Err(e) => pr.spawn_disk.error(e),
    }
    Ok(res)
}

pub(crate) fn since(t0: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(t0) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc).into())
}

/// One run-to-exit that also records when the shim started the container, when it wrote the exit
/// record and when it was gone, relative to sending the create request.
pub(crate) async fn rest_profiled(
    d: &Daemon,
    c: &Client,
    body: &Value,
    p: &mut Timeline,
) -> Result<()> {
    let t0 = SystemTime::now();
    let v = call(c, Method::POST, "/v1/containers", Some(body)).await?;
    let t_post = SystemTime::now();
    let id = v["id"].as_str().context("create: no id")?.to_owned();
    let dir = d.container_dir(&id);
    let watcher = std::fs::read(dir.join("shim-pid.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|r| procs::watch_exit(r["shim_pid"].as_i64()? as i32, r["shim_start"].as_u64()?));
    let w = call(c, Method::POST, &format!("/v1/containers/{id}/wait"), None).await;
    let t_wait = SystemTime::now();
    let shim_log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
    let exit_rec: Value = std::fs::read(dir.join("exit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let gone = watcher.map(|h| h.join().ok().flatten());
    let del = call(
        c,
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
    let t_del = SystemTime::now();
    let w = w?;
    del?;
    if w["exit_code"] != 0 {
        bail!("wait: {w}");
    }
    let started = shim_log
        .lines()
        .rfind(|l| l.contains("container started"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(parse_time)
        .context("no 'container started' line in shim.log")?;
    let exited = exit_rec["finished_at"]
        .as_str()
        .and_then(parse_time)
        .context("no finished_at in exit.json")?;
    let gone = match gone {
        Some(Some(t)) => since(t0, t),
        Some(None) => f64::NAN,
        None => {
            p.shim_gone_before_post += 1;
            f64::NAN
        }
    };
    p.runs += 1;
    p.rows.push([
        since(t0, started),
        since(t0, t_post),
        since(t0, exited),
        gone,
        since(t0, t_wait),
        since(t0, t_del),
    ]);
    Ok(())
}
