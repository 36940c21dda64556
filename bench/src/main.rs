//! `inarray-bench`: the driver behind `bench/run`.
//!
//! * `prepare --work DIR`: the busybox test image (built by the e2e tests' own image builder) as an
//!   OCI archive (for inarray) and a docker archive (for `podman load`), and a runc bundle with the
//!   same rootfs.
//! * `run …`: the benchmarks, each against a fresh real `inarray serve`, then the report
//!   (docs/benchmarks.md).
//!
//! 1. Run-to-exit of `/bin/true`: create+start, wait, delete over the REST API, side by side with
//!    `runc run` and `podman run --rm`, interleaved in rounds so the machine's noise hits all
//!    three alike; then a shorter profiled pass that timestamps each step.
//! 2. Many sleeping containers: start them with some concurrency, check they run, measure the
//!    daemon's and the shims' memory, delete them all with force and check nothing is left.
//! 3. QoS (`qos.rs`): the API's latency and the NFS gateway's throughput with no noise, next to
//!    noisy containers in `default` with the engines as built in, and with `storage`'s weights
//!    lowered to a default engine's.
//! 4. Inside the array vs over NFS (`scan.rs`); 5. the seed's load (`load.rs`); 6. file events
//!    (`evidence.rs`, measured by bench/events/run).
//! 7. Exec round trip (`exec.rs`, issue #16): `exec /bin/true` in a running container through the
//!    REST API and `inarray exec`, side by side with `runc exec` and `podman exec`.
//! 8. The docker CLI (`docker.rs`, issue #17): `docker run --rm` and `docker ps` with DOCKER_HOST
//!    at inarray's Docker API and at Podman's compat service.

#[path = "../../tests/common/image_builder.rs"]
mod image_builder;

mod compare;
mod daemon;
mod docker;
mod evidence;
mod exec;
mod load;
mod many;
mod meta;
mod nfsc;
mod plot;
mod prepare;
mod procs;
mod qos;
mod reboot;
mod report;
mod run_to_exit;
mod scan;
mod stats;
mod volumes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hyper::Method;
use inarray_api::client::Client;
use serde_json::{json, Value};

use daemon::{call, Daemon};
use stats::{share, Samples};

pub(crate) use many::*;
pub(crate) use meta::{first_line, git_describe, ms};
use prepare::prepare;
pub(crate) use run_to_exit::*;

/// The name inarray knows the image by.
pub const IMAGE: &str = "busybox:latest";
/// The busybox image with `inarray-walk` added (section 4).
pub const WALK_IMAGE: &str = "walk:latest";
/// Noisy containers in the QoS bench.
const NOISE: usize = 2;

#[derive(Parser)]
#[command(
    name = "inarray-bench",
    about = "Benchmarks of inarray (see bench/run)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Writes WORK/busybox-oci.tar, WORK/busybox-docker.tar and the runc bundle WORK/bundle.
    Prepare {
        #[arg(long)]
        work: PathBuf,
        /// The tag of the docker archive (what podman will call the image).
        #[arg(long)]
        podman_image: String,
    },
    /// Runs the benchmarks and writes the report.
    Run(RunOpts),
    /// For profiling by hand: N run-to-exit cycles of /bin/true against a running daemon's
    /// socket (image busybox:latest imported); prints each run's create/wait/delete times (ms).
    Loop {
        #[arg(long)]
        socket: PathBuf,
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
    /// Two binaries (before and after a change) side by side with runc and podman, after
    /// `prepare` in the same WORK: run-to-exit through REST and the CLI, and the memory of N
    /// sleeping containers with podman's conmon beside them; prints a markdown section.
    Compare {
        /// The binary after the change.
        #[arg(long)]
        bin: PathBuf,
        /// The binary before the change.
        #[arg(long)]
        old_bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        podman_image: String,
        #[arg(long, default_value_t = 300)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        podman_runs: usize,
        #[arg(long, default_value_t = 250)]
        containers: usize,
        #[arg(long, default_value_t = 50)]
        podman_containers: usize,
    },
    /// Only the inside-vs-NFS benchmark (after `prepare` in the same WORK); prints its section.
    Scan {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        scan_dirs: Option<usize>,
        #[arg(long)]
        job_dirs: Option<usize>,
    },
    /// Array volumes (issue #19) on a loop btrfs it makes in WORK: a quota'd volume vs a
    /// plain directory (sequential write, small files), snapshot and restore time, the quota's
    /// overshoot under 8 writers; prints its section.
    Volumes {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Only the seed's load (after `prepare` in the same WORK); prints its section.
    Load {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        load_total: Option<usize>,
        #[arg(long)]
        load_concurrency: Option<usize>,
    },
    /// The docker CLI against inarray's Docker API and Podman's compat service (section 8, issue
    /// #17; after `prepare` in the same WORK, the podman image loaded): `docker run --rm IMAGE
    /// true` interleaved, then `docker ps` with --ps-containers running on each.
    Docker {
        #[arg(long)]
        bin: PathBuf,
        /// The docker CLI.
        #[arg(long, default_value = "/usr/bin/docker")]
        docker: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value = "localhost/inarray-bench-busybox:latest")]
        podman_image: String,
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 100)]
        ps_containers: usize,
    },
    /// Only the exec round trip (section 7, issue #16; after `prepare` in the same WORK, the
    /// podman image loaded): `exec /bin/true` in a running `sleep 3600` container through
    /// inarray's REST API and `inarray exec`, beside `runc exec` and `podman exec`; prints its
    /// section. Without --bin, only runc and podman.
    Exec {
        /// The inarray binary (a fresh daemon of it in WORK/d7).
        #[arg(long)]
        bin: Option<PathBuf>,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value = "localhost/inarray-bench-busybox:latest")]
        podman_image: String,
        #[arg(long, default_value_t = 500)]
        runs: usize,
        /// podman's runs (default: --runs).
        #[arg(long)]
        podman_runs: Option<usize>,
    },
    /// Only the QoS benchmark (after `prepare` in the same WORK); prints its report section.
    Qos {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        qos_rounds: Option<usize>,
        #[arg(long)]
        qos_secs: Option<f64>,
        #[arg(long)]
        noise: Option<usize>,
        /// What the noise does: both (CPU and I/O, as in `run`), cpu, io, deep-io (eight direct-I/O
        /// readers at once in each container, no spinning).
        #[arg(long, default_value = "both")]
        noise_kind: String,
    },
    /// Back after a reboot under NFS reads (issue 20; after `prepare` in the same WORK): N
    /// `always` containers, a simulated power loss, the daemon started with another boot id;
    /// nfs-cat's throughput while the N come back against idle. Prints its section.
    Reboot {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 250)]
        containers: usize,
        /// The size of the file the NFS client reads again and again.
        #[arg(long, default_value_t = 64)]
        file_mib: u64,
        /// Seconds of reading before the reboot (idle) and after all came back.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
}

#[derive(clap::Args, Clone)]
pub struct RunOpts {
    /// The inarray binary to benchmark.
    #[arg(long)]
    bin: PathBuf,
    /// The directory `prepare` wrote; daemons get subdirectories of it.
    #[arg(long)]
    work: PathBuf,
    /// Smaller counts (100/100/20 runs, 50 containers, one QoS round instead of three).
    #[arg(long)]
    quick: bool,
    /// podman's name for the image (loaded by bench/run).
    #[arg(long)]
    podman_image: String,
    /// Where to write the report.
    #[arg(long)]
    out: PathBuf,
    /// The command line to print in the report.
    #[arg(long)]
    command: String,
    /// A hand-written analysis appended to the report, if the file exists.
    #[arg(long)]
    notes: Option<PathBuf>,
    #[arg(long)]
    runs: Option<usize>,
    #[arg(long)]
    runc_runs: Option<usize>,
    #[arg(long)]
    podman_runs: Option<usize>,
    #[arg(long)]
    profile_runs: Option<usize>,
    #[arg(long)]
    rounds: Option<usize>,
    #[arg(long)]
    containers: Option<usize>,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// QoS bench: rounds of the three phases (quiet, noise with QoS on, noise with QoS off).
    #[arg(long)]
    qos_rounds: Option<usize>,
    /// QoS bench: seconds per phase and round.
    #[arg(long)]
    qos_secs: Option<f64>,
    /// QoS bench: noisy containers (each spins every CPU and reads the array with direct I/O).
    #[arg(long)]
    noise: Option<usize>,
    /// The README whose headline block (between `<!-- headline:begin` and `<!-- headline:end -->`)
    /// is rewritten from this run's figures.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// The seed's load: containers in all (full 3000, quick 120).
    #[arg(long)]
    load_total: Option<usize>,
    /// The seed's load: containers at a time (full 250, quick 30).
    #[arg(long)]
    load_concurrency: Option<usize>,
    /// Inside-vs-NFS: directories of 100 files in the scan's tree (full 1000, quick 50).
    #[arg(long)]
    scan_dirs: Option<usize>,
    /// Inside-vs-NFS: directories of 100 files for the chmod and archive jobs (full 200, quick 20).
    #[arg(long)]
    job_dirs: Option<usize>,
    /// Exec round trip: runs per runtime (full 500, quick 100).
    #[arg(long)]
    exec_runs: Option<usize>,
}

/// How much of everything, after presets and overrides.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub runs: usize,
    pub runc_runs: usize,
    pub podman_runs: usize,
    pub profile_runs: usize,
    pub rounds: usize,
    pub warmup: usize,
    pub containers: usize,
    pub concurrency: usize,
    pub qos_rounds: usize,
    pub qos_secs: f64,
    pub noise: usize,
    /// "both" (what `run` measures), "cpu" or "io" (by hand, to take the noise apart).
    pub noise_kind: &'static str,
}

impl RunOpts {
    /// Defaults for the single-benchmark subcommands.
    fn bare(bin: PathBuf, work: PathBuf, quick: bool) -> Self {
        RunOpts {
            bin,
            work,
            quick,
            podman_image: String::new(),
            out: PathBuf::new(),
            command: String::new(),
            notes: None,
            runs: None,
            runc_runs: None,
            podman_runs: None,
            profile_runs: None,
            rounds: None,
            containers: None,
            concurrency: 8,
            qos_rounds: None,
            qos_secs: None,
            noise: None,
            scan_dirs: None,
            job_dirs: None,
            readme: None,
            load_total: None,
            load_concurrency: None,
            exec_runs: None,
        }
    }

    fn exec_opts(&self) -> exec::ExecOpts {
        let runs = self.exec_runs.unwrap_or(if self.quick { 100 } else { 500 });
        exec::ExecOpts {
            bin: Some(self.bin.clone()),
            work: self.work.clone(),
            podman_image: self.podman_image.clone(),
            runs,
            podman_runs: runs,
            warmup: 3,
            // The other sections' figures are still worth writing when the daemon has no exec.
            inarray_required: false,
            command: format!("{} (its section 7)", self.command),
        }
    }

    fn load_plan(&self) -> load::LoadPlan {
        let (total, conc, inputs, idle) = if self.quick {
            (120, 30, 4, 5.0)
        } else {
            (3000, 250, 8, 10.0)
        };
        load::LoadPlan {
            concurrency: self.load_concurrency.unwrap_or(conc).max(1),
            total: self.load_total.unwrap_or(total),
            files: 200,
            inputs,
            max_sleep: 2,
            idle_secs: idle,
        }
    }

    fn scan_plan(&self) -> scan::ScanPlan {
        let (scan_dirs, job_dirs, loop_runs) = if self.quick {
            (50, 20, 1)
        } else {
            (1000, 200, 3)
        };
        scan::ScanPlan {
            scan_dirs: self.scan_dirs.unwrap_or(scan_dirs).max(1),
            job_dirs: self.job_dirs.unwrap_or(job_dirs).max(1),
            files_per_dir: 100,
            container_runs: 3,
            loop_runs,
            delay_runs: 1,
            one_way: Duration::from_micros(500),
        }
    }

    fn plan(&self) -> Plan {
        let (runs, podman, profile, rounds, containers) = if self.quick {
            (100, 20, 20, 5, 50)
        } else {
            (1000, 100, 100, 10, 250)
        };
        // QoS: each round measures the four phases once, in an order rotating from round to
        // round; short stints, many rounds, so that the machine's drift falls on all phases
        // alike; full: 12 × 2.5 s = 30 s per phase.
        let (qos_rounds, qos_secs) = if self.quick { (4, 2.5) } else { (12, 2.5) };
        let runs = self.runs.unwrap_or(runs);
        Plan {
            runs,
            runc_runs: self.runc_runs.unwrap_or(runs),
            podman_runs: self.podman_runs.unwrap_or(podman),
            profile_runs: self.profile_runs.unwrap_or(profile),
            rounds: self.rounds.unwrap_or(rounds).max(1),
            warmup: 3,
            containers: self.containers.unwrap_or(containers),
            concurrency: self.concurrency.max(1),
            qos_rounds: self.qos_rounds.unwrap_or(qos_rounds).max(1),
            qos_secs: self.qos_secs.unwrap_or(qos_secs).max(1.0),
            noise: self.noise.unwrap_or(NOISE).max(1),
            noise_kind: "both",
        }
    }
}

/// The driver's runtime: one thread (the benchmarks measure the daemon, not the driver).
fn current_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Prepare { work, podman_image } => prepare(&work, &podman_image),
        Cmd::Run(o) => {
            let rt = current_thread()?;
            rt.block_on(run(o))
        }
        Cmd::Scan {
            bin,
            work,
            quick,
            scan_dirs,
            job_dirs,
        } => {
            let o = RunOpts {
                scan_dirs,
                job_dirs,
                ..RunOpts::bare(bin, work, quick)
            };
            let rt = current_thread()?;
            rt.block_on(async {
                let work = o.work.canonicalize()?;
                let s = scan::bench(&o.bin, &work, o.scan_plan()).await;
                println!("{}", scan::render(&s, o.quick, None));
                Ok(())
            })
        }
        Cmd::Load {
            bin,
            work,
            quick,
            load_total,
            load_concurrency,
        } => {
            let o = RunOpts {
                load_total,
                load_concurrency,
                ..RunOpts::bare(bin, work, quick)
            };
            let rt = current_thread()?;
            rt.block_on(async {
                let work = o.work.canonicalize()?;
                let l = load::bench(&o.bin, &work, o.load_plan()).await;
                println!("{}", load::render(&l, o.quick, None));
                println!("{}", evidence::render_events(&l));
                Ok(())
            })
        }
        Cmd::Qos {
            bin,
            work,
            quick,
            qos_rounds,
            qos_secs,
            noise,
            noise_kind,
        } => {
            let o = RunOpts {
                qos_rounds,
                qos_secs,
                noise,
                ..RunOpts::bare(bin, work, quick)
            };
            let rt = current_thread()?;
            rt.block_on(async {
                let work = o.work.canonicalize()?;
                let plan = Plan {
                    noise_kind: match noise_kind.as_str() {
                        "cpu" => "cpu",
                        "io" => "io",
                        "deep-io" => "deep-io",
                        _ => "both",
                    },
                    ..o.plan()
                };
                let q = qos::bench(&o.bin, &work, &plan).await?;
                let mut s = String::new();
                let heading = if plan.noise_kind == "deep-io" {
                    report::QOS_DEEP_HEADING
                } else {
                    report::QOS_HEADING
                };
                report::render_qos(&mut s, &q, heading);
                println!("{s}");
                Ok(())
            })
        }
        Cmd::Exec {
            bin,
            work,
            podman_image,
            runs,
            podman_runs,
        } => {
            let o = exec::ExecOpts {
                bin,
                work,
                podman_image,
                runs,
                podman_runs: podman_runs.unwrap_or(runs),
                warmup: 3,
                inarray_required: true,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let rt = current_thread()?;
            let r = rt.block_on(exec::bench(&o))?;
            println!("{}", exec::render(&r));
            Ok(())
        }
        Cmd::Docker {
            bin,
            docker,
            work,
            podman_image,
            runs,
            ps_containers,
        } => {
            let o = docker::DockerOpts {
                bin,
                docker,
                work,
                podman_image,
                runs,
                ps_containers,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let rt = current_thread()?;
            println!("{}", docker::render(&rt.block_on(docker::bench(&o))?));
            Ok(())
        }
        Cmd::Compare {
            bin,
            old_bin,
            work,
            podman_image,
            runs,
            podman_runs,
            containers,
            podman_containers,
        } => {
            let o = compare::Opts {
                new_bin: bin,
                old_bin,
                work,
                podman_image,
                runs,
                podman_runs,
                containers,
                podman_containers,
            };
            let rt = current_thread()?;
            println!("{}", rt.block_on(compare::bench(&o))?);
            Ok(())
        }
        Cmd::Reboot {
            bin,
            work,
            containers,
            file_mib,
            idle_secs,
        } => {
            let o = reboot::Opts {
                bin,
                work,
                containers,
                file_mib,
                idle_secs,
            };
            let rt = current_thread()?;
            println!("{}", rt.block_on(reboot::bench(&o))?);
            Ok(())
        }
        Cmd::Volumes {
            bin,
            work,
            files,
            mib,
            rounds,
        } => {
            let o = volumes::Opts {
                bin,
                work,
                files,
                mib,
                rounds,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let rt = current_thread()?;
            println!("{}", rt.block_on(volumes::bench(&o))?);
            Ok(())
        }
        Cmd::Loop { socket, n } => {
            let rt = current_thread()?;
            rt.block_on(async {
                let c = Client::new(inarray_api::serve::Listen::Unix(socket));
                let mut all = Samples::default();
                for _ in 0..n {
                    let [a, b, d] = rest_once(&c, &body_true()).await?;
                    println!("{:.1} {:.1} {:.1}", ms(a), ms(b), ms(d));
                    all.push(ms(a + b + d));
                }
                println!("p50 {:.1} ms, mean {:.1} ms", all.p50(), all.mean());
                Ok(())
            })
        }
    }
}

// ----------------------------------------------------------------------------------------- run

async fn run(o: RunOpts) -> Result<()> {
    let plan = o.plan();
    let work = o.work.canonicalize()?;
    let machine = procs::machine();
    let started = chrono::Utc::now();
    let wall = Instant::now();
    eprintln!("plan: {plan:?}");

    let b1 = bench_run_to_exit(&o, &work, &plan).await?;
    let b2 = bench_many(&o, &work, &plan).await?;
    let b3 = qos::bench(&o.bin, &work, &plan).await?;
    // The same with eight direct readers in each noise container: what the I/O guard is for.
    let deep = Plan {
        noise_kind: "deep-io",
        ..plan
    };
    let b3d = qos::bench(&o.bin, &work, &deep).await?;
    let b4 = scan::bench(&o.bin, &work, o.scan_plan()).await;
    if let Some(e) = &b4.error {
        eprintln!("4. failed: {e}");
    }
    let b5 = load::bench(&o.bin, &work, o.load_plan()).await;
    if let Some(e) = &b5.error {
        eprintln!("5. failed: {e}");
    }
    let b7 = exec::bench(&o.exec_opts())
        .await
        .unwrap_or_else(exec::ExecBench::failed);
    if let Some(e) = &b7.error {
        eprintln!("7. failed: {e}");
    }
    let docs = o
        .out
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let [p_scan, p_rte, p_load] = evidence::plots(&docs, &b1, &b4, &b5);
    let mut extra = String::new();
    report::render_qos(&mut extra, &b3d, report::QOS_DEEP_HEADING);
    extra.push_str(&scan::render(&b4, o.quick, p_scan.as_deref()));
    extra.push_str(&load::render(&b5, o.quick, p_load.as_deref()));
    extra.push_str(&evidence::render_events(&b5));
    if let Some(p) = &p_rte {
        extra.push_str(&format!(
            "The run-to-exit distributions of section 1: ![run-to-exit]({p})\n"
        ));
    }
    extra.push_str(&exec::render(&b7));

    let meta = report::Meta {
        command: o.command.clone(),
        date: started,
        duration: wall.elapsed(),
        git: git_describe(),
        bin: o.bin.clone(),
        bin_size: std::fs::metadata(&o.bin).map(|m| m.len()).unwrap_or(0),
        runc: first_line("runc", &["--version"]),
        podman: first_line("podman", &["--version"]),
        busybox: first_line(image_builder::BUSYBOX, &["--help"]),
        plan,
        // SAFETY: getpriority(2) takes two integers and returns one; no memory involved.
        nice: unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
    };
    let notes = o
        .notes
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let mut md = report::render(&machine, &meta, &b1, &b2, &b3, &extra, notes.as_deref());
    // Other generators (bench/nfs/run, …) keep their sections in the same file, between
    // markers: carry them over.
    let old = std::fs::read_to_string(&o.out).unwrap_or_default();
    for section in report::marked_sections(&old) {
        md = format!("{}\n\n{section}\n", md.trim_end());
    }
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.out, &md).with_context(|| format!("{}", o.out.display()))?;
    if let Some(readme) = &o.readme {
        let block = evidence::headline(
            &o.command,
            &started.format("%Y-%m-%d %H:%M UTC").to_string(),
            &format!(
                "{} when the scan started, {} at the end",
                b4.load_start,
                scan::loadavg()
            ),
            &b1,
            &b4,
            &b5,
        );
        match evidence::update_readme(readme, &block) {
            Ok(true) => println!("updated the headline of {}", readme.display()),
            Ok(false) => eprintln!("{}: no headline markers, left alone", readme.display()),
            Err(e) => eprintln!("{}: {e}", readme.display()),
        }
    }
    println!("{}", report::summary(&b1, &b2, &b3));
    println!("wrote {}", o.out.display());
    Ok(())
}
