//! Section 8, the docker CLI against the array (issue #17): the same docker CLI and the same
//! image, `DOCKER_HOST` at inarray's Docker socket (`--docker-listen`) and at Podman's compat
//! service (`podman system service`), side by side:
//!
//! * `docker run --rm IMAGE true`, the whole CLI process (create, attach, wait, start, remove),
//!   interleaved run by run so both get the same share of the shared machine's drift;
//! * `docker ps` with `--ps-containers` running `sleep` containers on each.
//!
//! The image is the one `prepare` made, under Podman's name (`localhost/inarray-bench-busybox`)
//! on both, so the command lines are identical.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::Daemon;
use crate::report::f;
use crate::stats::Samples;
use crate::{ms, procs};

pub struct DockerOpts {
    pub bin: PathBuf,
    /// The docker CLI (e.g. /usr/bin/docker, Debian's docker.io client).
    pub docker: PathBuf,
    pub work: PathBuf,
    pub podman_image: String,
    pub runs: usize,
    pub ps_containers: usize,
    pub command: String,
}

#[derive(Default)]
pub struct DockerBench {
    pub ps_containers: usize,
    pub inarray_run: Samples,
    pub podman_run: Samples,
    pub inarray_ps: Samples,
    pub podman_ps: Samples,
    pub date: String,
    pub software: String,
    pub command: String,
    pub favordynmods: Vec<String>,
    pub env_start: String,
    pub env_end: String,
}

/// One docker CLI pointed at one socket, with a config directory of its own.
struct Cli {
    docker: PathBuf,
    host: String,
    config: PathBuf,
}

impl Cli {
    fn new(docker: &Path, socket: &Path, config: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&config)?;
        Ok(Self {
            docker: docker.to_owned(),
            host: format!("unix://{}", socket.display()),
            config,
        })
    }

    /// Runs the CLI to its end; its wall time, or its stderr as the error.
    fn time(&self, args: &[&str]) -> Result<Duration> {
        let t = Instant::now();
        let out = Command::new(&self.docker)
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{}", self.docker.display()))?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!(
                "docker {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(d)
    }
}

/// `podman system service` on a socket of its own, stopped (with its containers) when dropped.
struct PodmanService {
    child: Child,
    socket: PathBuf,
    cli: Option<(PathBuf, PathBuf)>,
}

impl PodmanService {
    /// `conf`: a containers.conf written for the service. Its only setting is the containers'
    /// default rlimits: Podman's own (nofile 1048576) need CAP_SYS_RESOURCE, which a sandboxed
    /// root may not have (runc then fails every start with "error setting rlimits").
    fn start(socket: &Path, conf: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        std::fs::write(
            conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n",
        )?;
        let child = Command::new("podman")
            .env("CONTAINERS_CONF", conf)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("podman system service")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("podman system service: no socket after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            socket: socket.to_owned(),
            cli: None,
        })
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        if let Some((docker, config)) = &self.cli {
            if let Ok(c) = Cli::new(docker, &self.socket, config.clone()) {
                remove_all(&c);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Every container the CLI's daemon has, removed (ids from `ps -aq`).
fn remove_all(c: &Cli) {
    let out = Command::new(&c.docker)
        .args(["ps", "-aq", "--filter", "label=inarray-bench=docker"])
        .env("DOCKER_HOST", &c.host)
        .env("DOCKER_CONFIG", &c.config)
        .output();
    if let Ok(o) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = c.time(&args);
        }
    }
}

const LABEL: &str = "inarray-bench=docker";

pub async fn bench(o: &DockerOpts) -> Result<DockerBench> {
    let work = o.work.canonicalize()?;
    let mut res = DockerBench {
        ps_containers: o.ps_containers,
        command: o.command.clone(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        software: format!(
            "inarray `{}` (source tree {}); {}; {}",
            o.bin.display(),
            crate::git_describe(),
            crate::first_line(
                &o.docker.to_string_lossy(),
                &["version", "--format", "docker CLI {{.Client.Version}}"]
            ),
            crate::first_line("podman", &["--version"]),
        ),
        ..Default::default()
    };
    let dir = work.join("d8");
    let socket = dir.join("run/docker.sock");
    let d = Daemon::start_with(
        &o.bin,
        &dir,
        &[
            "--docker-listen".into(),
            format!("unix:{}", socket.display()),
        ],
    )
    .await?;
    d.import(&work.join("busybox-oci.tar"), &o.podman_image)
        .await?;
    let inarray = Cli::new(&o.docker, &socket, dir.join("docker-config"))?;
    let mut podman_service = PodmanService::start(
        &work.join("podman-compat.sock"),
        &work.join("podman-compat.conf"),
    )?;
    let podman = Cli::new(
        &o.docker,
        &podman_service.socket,
        work.join("podman-docker-config"),
    )?;
    podman_service.cli = Some((o.docker.clone(), podman.config.clone()));
    remove_all(&podman);

    let run = ["run", "--rm", "--label", LABEL, &o.podman_image, "true"];
    eprintln!("8. docker CLI: warm-up");
    for _ in 0..3 {
        inarray.time(&run).context("warm-up on inarray")?;
        podman.time(&run).context("warm-up on podman")?;
    }
    res.favordynmods = crate::compare::favordynmods_mounts();
    res.env_start = procs::pressure();
    for i in 0..o.runs {
        if i % 25 == 0 {
            eprintln!(
                "8. docker run --rm: runs {}–{} of {}",
                i + 1,
                (i + 25).min(o.runs),
                o.runs
            );
        }
        match inarray.time(&run) {
            Ok(t) => res.inarray_run.push(ms(t)),
            Err(e) => res.inarray_run.error(format!("{e:#}")),
        }
        match podman.time(&run) {
            Ok(t) => res.podman_run.push(ms(t)),
            Err(e) => res.podman_run.error(format!("{e:#}")),
        }
    }
    eprintln!(
        "8. docker ps: starting {} containers on each",
        o.ps_containers
    );
    let sleeper = [
        "run",
        "-d",
        "--label",
        LABEL,
        &o.podman_image,
        "sleep",
        "3600",
    ];
    for (name, cli) in [("inarray", &inarray), ("podman", &podman)] {
        for _ in 0..o.ps_containers {
            cli.time(&sleeper)
                .with_context(|| format!("a sleeper on {name}"))?;
        }
    }
    for _ in 0..20 {
        match inarray.time(&["ps"]) {
            Ok(t) => res.inarray_ps.push(ms(t)),
            Err(e) => res.inarray_ps.error(format!("{e:#}")),
        }
        match podman.time(&["ps"]) {
            Ok(t) => res.podman_ps.push(ms(t)),
            Err(e) => res.podman_ps.error(format!("{e:#}")),
        }
    }
    res.env_end = procs::pressure();
    remove_all(&inarray);
    drop(podman_service);
    d.stop();
    Ok(res)
}

pub fn render(r: &DockerBench) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## 8. The docker CLI: inarray's Docker API vs Podman's compat service\n"
    );
    let _ = writeln!(o, "- **Command:** `{}`", r.command);
    let _ = writeln!(o, "- **Date:** {}", r.date);
    let _ = writeln!(o, "- **Software:** {}", r.software);
    let _ = writeln!(
        o,
        "- **Node:** cgroup favordynmods {} (from /proc/self/mountinfo); pressure at start {}, at end {}",
        if r.favordynmods.is_empty() {
            "off on every hierarchy (the boot state)".to_owned()
        } else {
            format!("on for {}", r.favordynmods.join(", "))
        },
        r.env_start,
        r.env_end
    );
    let _ = writeln!(
        o,
        "\n| what | via | n | p50 ms | p99 ms | mean ms | errors | podman ÷ inarray (p50) |\n|---|---|---|---|---|---|---|---|"
    );
    let ratio = |a: &Samples, b: &Samples| f(b.p50() / a.p50());
    for (what, ia, pd) in [
        (
            "`docker run --rm IMAGE true`",
            &r.inarray_run,
            &r.podman_run,
        ),
        (
            &*format!("`docker ps`, {} running", r.ps_containers),
            &r.inarray_ps,
            &r.podman_ps,
        ),
    ] {
        for (via, s) in [("inarray", ia), ("podman", pd)] {
            let _ = writeln!(
                o,
                "| {what} | {via} | {} | {} | {} | {} | {} | {} |",
                s.n(),
                f(s.p50()),
                f(s.p99()),
                f(s.mean()),
                s.errors,
                if via == "inarray" {
                    ratio(ia, pd)
                } else {
                    String::new()
                }
            );
        }
    }
    for s in [&r.inarray_run, &r.podman_run, &r.inarray_ps, &r.podman_ps] {
        for e in &s.error_examples {
            let _ = writeln!(o, "\nError: {e}");
        }
    }
    o
}
