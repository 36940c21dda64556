//! Section 4, the headline: work next to the data (a container in the array, through its bind
//! mount) against the same work by a remote client over the NFS gateway, on loopback and through a
//! delay proxy that adds a simulated 1 ms round trip.
//!
//! Three jobs, each on a tree of small files created for it in the array:
//! * **scan** (backup-style): stat and read every file. NFS: per directory LOOKUP + READDIR, per
//!   file LOOKUP, GETATTR, READ.
//! * **permission fix**: chmod every file. NFS: per file LOOKUP + SETATTR.
//! * **archive old data**: move every file older than 30 days (half of them) to another
//!   directory. NFS: per file LOOKUP (its attributes carry the mtime) and RENAME for the old ones.
//!
//! The container does each job twice over: with `inarray-walk` (`bench/walk/main.rs`), which does
//! the NFS client's per-file work through the bind mount — same walk, one file at a time, one
//! thread: the like-for-like comparison the targets are judged on — and with busybox shell tools
//! (`find … -exec cat|chmod|mv … {} +`), what an operator would type, shown beside it.
//!
//! Each run's result is checked (bytes read, modes set, files moved), off the clock.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::json;

use crate::daemon::Daemon;
use crate::nfsc::{Conn, DelayProxy};
use crate::stats::Samples;
use crate::{IMAGE, WALK_IMAGE};

/// Files older than this many days are archived.
pub const OLD_DAYS: u64 = 30;

#[derive(Clone, Copy, Debug)]
pub struct ScanPlan {
    /// The scan's tree: directories × files per directory.
    pub scan_dirs: usize,
    /// The chmod and archive jobs' tree.
    pub job_dirs: usize,
    pub files_per_dir: usize,
    /// Runs of each job by the container, over NFS on loopback, through the proxy.
    pub container_runs: usize,
    pub loop_runs: usize,
    pub delay_runs: usize,
    /// Added each way by the proxy.
    pub one_way: Duration,
}

pub const MODES: [&str; 3] = ["container (inarray-walk)", "NFS loopback", "NFS + 1 ms"];
/// The plot's bars: MODES, then the busybox shell tools in the container.
pub const PLOT_SERIES: [&str; 4] = [
    "container (inarray-walk)",
    "NFS loopback",
    "NFS + 1 ms",
    "container (busybox shell)",
];

#[derive(Default)]
pub struct Job {
    pub name: &'static str,
    pub files: usize,
    pub bytes: u64,
    /// Seconds per run, by mode (MODES).
    pub secs: [Samples; 3],
    /// Seconds of the container's own process (`started_at` to `finished_at`), start excluded.
    pub inside: Samples,
    /// The same job by busybox shell tools in the container: whole and process alone.
    pub shell: Samples,
    pub shell_inside: Samples,
    /// NFS calls per run (the last one).
    pub calls: u64,
    /// The container's commands: inarray-walk's arguments, and the shell line.
    pub walk_cmd: String,
    pub shell_cmd: String,
    pub nfs_ops: &'static str,
}

impl Job {
    /// NFS time / container time (medians), for mode 1 or 2.
    pub fn ratio(&self, mode: usize) -> f64 {
        self.secs[mode].p50() / self.secs[0].p50()
    }
}

#[derive(Default)]
pub struct Scan {
    pub plan: Option<ScanPlan>,
    pub jobs: Vec<Job>,
    /// NULL RPC round trips (ms): direct, through the proxy.
    pub rtt: [Samples; 2],
    pub load_start: String,
    pub load_end: String,
    pub error: Option<String>,
}

pub async fn bench(bin: &Path, work: &Path, plan: ScanPlan) -> Scan {
    let mut res = Scan {
        plan: Some(plan),
        load_start: loadavg(),
        ..Default::default()
    };
    if let Err(e) = bench_inner(bin, work, plan, &mut res).await {
        res.error = Some(format!("{e:#}"));
    }
    res.load_end = loadavg();
    res
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

struct Tree {
    root: PathBuf,
    files: usize,
    bytes: u64,
}

/// `dirs` × `per` files of 512 B to 4 KiB under `root`, every other one 60 days old; names are
/// unique across the tree (so archiving can put them all in one directory).
fn make_tree(root: &Path, dirs: usize, per: usize) -> Result<Tree> {
    let old = SystemTime::now() - Duration::from_secs(60 * 86400);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut bytes = 0;
    for d in 0..dirs {
        let dir = root.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..per {
            let i = d * per + f;
            let len = 512 + (i * 397) % 3585;
            let p = dir.join(format!("f{i:07}"));
            let file = std::fs::File::create(&p)?;
            std::io::Write::write_all(&mut &file, &data[..len])?;
            if i % 2 == 1 {
                file.set_modified(old)?;
            }
            bytes += len as u64;
        }
    }
    Ok(Tree {
        root: root.to_owned(),
        files: dirs * per,
        bytes,
    })
}

fn files_of(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root)? {
        let d = d?.path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d)? {
                out.push(f?.path());
            }
        } else {
            out.push(d);
        }
    }
    Ok(out)
}

async fn bench_inner(bin: &Path, work: &Path, plan: ScanPlan, res: &mut Scan) -> Result<()> {
    let dir = work.join("d4");
    if dir.join("state").exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let _fs = LoopFs::mount(&work.join("d4.img"), &dir.join("array"), 4)?;
    let port = free_port()?;
    let d = Daemon::start_with(
        bin,
        &dir,
        &["--nfs-listen".into(), format!("127.0.0.1:{port}")],
    )
    .await
    .context("the daemon with --nfs-listen")?;
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    d.import(&work.join("walk-oci.tar"), WALK_IMAGE).await?;
    let base = dir.join("array/scan");
    eprintln!(
        "4. creating the trees: {} × {} files, {} × {} files",
        plan.scan_dirs, plan.files_per_dir, plan.job_dirs, plan.files_per_dir
    );
    let scan_tree = make_tree(&base.join("scan"), plan.scan_dirs, plan.files_per_dir)?;
    let job_tree = make_tree(&base.join("jobs"), plan.job_dirs, plan.files_per_dir)?;
    std::fs::create_dir_all(base.join("archive"))?;
    let body = json!({
        "name": "scan",
        "path": "scan",
        "clients": [{"match": "127.0.0.1", "access": "rw"}],
        "squash": "none",
    });
    d.call(Method::POST, "/v1/exports", Some(&body)).await?;
    let direct: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let proxy = DelayProxy::start(direct, plan.one_way)?;
    for (i, addr) in [direct, proxy.addr].into_iter().enumerate() {
        let mut c = Conn::connect(addr)?;
        for _ in 0..200 {
            let t = Instant::now();
            c.null()?;
            res.rtt[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let addrs = [direct, proxy.addr];

    // ---- scan
    let mut job = Job {
        name: "scan (stat + read every file)",
        files: scan_tree.files,
        bytes: scan_tree.bytes,
        walk_cmd: "scan /s/scan /s/out".into(),
        shell_cmd: "find /s/scan -type f -exec cat {} + | wc -c >/s/out".into(),
        nfs_ops: "per directory LOOKUP + READDIR; per file LOOKUP, GETATTR, READ",
        ..Default::default()
    };
    let check_scan = || -> Result<()> {
        let out = std::fs::read_to_string(base.join("out"))?;
        std::fs::remove_file(base.join("out"))?;
        if out.trim().parse::<u64>().ok() != Some(scan_tree.bytes) {
            bail!(
                "the container's scan read {} bytes, not {}",
                out.trim(),
                scan_tree.bytes
            );
        }
        Ok(())
    };
    for r in 0..plan.container_runs {
        eprintln!("4. scan: container runs {}", r + 1);
        let (t, inside) = walk(&d, &job.walk_cmd).await?;
        check_scan()?;
        job.secs[0].push(t);
        job.inside.push(inside);
        let (t, inside) = shell(&d, &job.shell_cmd).await?;
        check_scan()?;
        job.shell.push(t);
        job.shell_inside.push(inside);
    }
    for (mode, runs) in [(1, plan.loop_runs), (2, plan.delay_runs)] {
        for r in 0..runs {
            eprintln!("4. scan: {} run {}", MODES[mode], r + 1);
            let t = Instant::now();
            let (bytes, calls) = nfs_scan(addrs[mode - 1], "scan")?;
            job.secs[mode].push(t.elapsed().as_secs_f64());
            job.calls = calls;
            if bytes != scan_tree.bytes {
                bail!("the NFS scan read {bytes} bytes, not {}", scan_tree.bytes);
            }
        }
    }
    res.jobs.push(job);

    // ---- permission fix
    let mut job = Job {
        name: "permission fix (chmod every file)",
        files: job_tree.files,
        bytes: job_tree.bytes,
        walk_cmd: "chmod /s/jobs MODE".into(),
        shell_cmd: "find /s/jobs -type f -exec chmod MODE {} +".into(),
        nfs_ops: "per directory LOOKUP + READDIR; per file LOOKUP, SETATTR (mode)",
        ..Default::default()
    };
    let mut mode_n = 0u32;
    let mut next_mode = || {
        mode_n += 1;
        [0o600, 0o640, 0o604][mode_n as usize % 3]
    };
    for r in 0..plan.container_runs {
        eprintln!("4. chmod: container runs {}", r + 1);
        let m = next_mode();
        let (t, inside) = walk(&d, &format!("chmod /s/jobs {m:o}")).await?;
        check_modes(&job_tree.root, m)?;
        job.secs[0].push(t);
        job.inside.push(inside);
        let m = next_mode();
        let cmd = format!("find /s/jobs -type f -exec chmod {m:o} {{}} +");
        let (t, inside) = shell(&d, &cmd).await?;
        check_modes(&job_tree.root, m)?;
        job.shell.push(t);
        job.shell_inside.push(inside);
    }
    for (mode, runs) in [(1, plan.loop_runs), (2, plan.delay_runs)] {
        for r in 0..runs {
            eprintln!("4. chmod: {} run {}", MODES[mode], r + 1);
            let m = next_mode();
            let t = Instant::now();
            job.calls = nfs_chmod(addrs[mode - 1], "jobs", m)?;
            job.secs[mode].push(t.elapsed().as_secs_f64());
            check_modes(&job_tree.root, m)?;
        }
    }
    res.jobs.push(job);

    // ---- archive old data
    let old = job_tree.files / 2;
    let archive = base.join("archive");
    let mut job = Job {
        name: "archive old data (move files older than 30 days)",
        files: job_tree.files,
        bytes: job_tree.bytes,
        walk_cmd: format!("archive /s/jobs /s/archive {OLD_DAYS}"),
        shell_cmd: format!(
            "find /s/jobs -type f -mtime +{OLD_DAYS} -exec mv -t /s/archive {{}} +"
        ),
        nfs_ops: "per directory LOOKUP + READDIR; per file LOOKUP (mtime from its attributes), RENAME when old",
        ..Default::default()
    };
    for r in 0..plan.container_runs {
        eprintln!("4. archive: container runs {}", r + 1);
        let (t, inside) = walk(&d, &job.walk_cmd).await?;
        put_back(&archive, &job_tree.root, old)?;
        job.secs[0].push(t);
        job.inside.push(inside);
        let (t, inside) = shell(&d, &job.shell_cmd).await?;
        put_back(&archive, &job_tree.root, old)?;
        job.shell.push(t);
        job.shell_inside.push(inside);
    }
    for (mode, runs) in [(1, plan.loop_runs), (2, plan.delay_runs)] {
        for r in 0..runs {
            eprintln!("4. archive: {} run {}", MODES[mode], r + 1);
            let t = Instant::now();
            job.calls = nfs_archive(addrs[mode - 1], "jobs", "archive")?;
            job.secs[mode].push(t.elapsed().as_secs_f64());
            put_back(&archive, &job_tree.root, old)?;
        }
    }
    res.jobs.push(job);
    drop(proxy);
    d.stop();
    Ok(())
}

/// `inarray-walk ARGS` (space-separated) in the walk image; see [`container`].
async fn walk(d: &Daemon, args: &str) -> Result<(f64, f64)> {
    let mut command = vec!["inarray-walk"];
    command.extend(args.split(' '));
    container(d, WALK_IMAGE, &command).await
}

/// `sh -c cmd` in the busybox image; see [`container`].
async fn shell(d: &Daemon, cmd: &str) -> Result<(f64, f64)> {
    container(d, IMAGE, &["sh", "-c", cmd]).await
}

/// Runs `command` in a container of `image` with the array's `scan/` at /s; the seconds from the
/// create request to the end of the wait (the container's start included), and those of its
/// process alone (from the container's `started_at` to its `finished_at`).
async fn container(d: &Daemon, image: &str, command: &[&str]) -> Result<(f64, f64)> {
    let cmd = command.join(" ");
    let body = json!({
        "image": image,
        "command": command,
        "volumes": [{"source": "scan", "target": "/s"}],
    });
    let t = Instant::now();
    let v = d.call(Method::POST, "/v1/containers", Some(&body)).await?;
    let id = v["id"].as_str().context("create: no id")?.to_owned();
    let w = d
        .call(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let info = d
        .call(Method::GET, &format!("/v1/containers/{id}"), None)
        .await?;
    let at = |k: &str| info[k].as_str().and_then(crate::parse_time);
    let inside = match (at("started_at"), at("finished_at")) {
        (Some(a), Some(b)) => b.duration_since(a).map_or(f64::NAN, |x| x.as_secs_f64()),
        _ => f64::NAN,
    };
    let mut logs = Vec::new();
    let _ = d
        .client()
        .stream(&format!("/v1/containers/{id}/logs"), |b| {
            logs.extend_from_slice(b)
        })
        .await;
    let logs = String::from_utf8_lossy(&logs);
    d.call(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await?;
    if w["exit_code"] != 0 {
        bail!("container `{cmd}`: {w}; logs: {}", logs.trim());
    }
    Ok((secs, inside))
}

fn check_modes(root: &Path, mode: u32) -> Result<()> {
    for f in files_of(root)? {
        let m = std::fs::metadata(&f)?.permissions().mode() & 0o7777;
        if m != mode {
            bail!("{} has mode {m:o}, not {mode:o}", f.display());
        }
    }
    Ok(())
}

/// Checks that `want` files were archived, and moves them back to their directories (the
/// directory is the file's index / files per directory, from the names `make_tree` gave).
fn put_back(archive: &Path, tree: &Path, want: usize) -> Result<()> {
    let moved = files_of(archive)?;
    if moved.len() != want {
        bail!("{} files archived, not {want}", moved.len());
    }
    let dirs: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(tree)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        v.sort();
        v
    };
    let per = (files_of(tree)?.len() + want) / dirs.len().max(1);
    for f in moved {
        let name = f
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        let i: usize = name.trim_start_matches('f').parse()?;
        std::fs::rename(&f, dirs[i / per].join(&name))?;
    }
    Ok(())
}

/// Mount, then LOOKUP the tree and READDIR it: (connection, tree handle, its directories).
fn walk_start(addr: SocketAddr, tree: &str) -> Result<(Conn, Vec<u8>, Vec<String>)> {
    let mut c = Conn::connect(addr)?;
    let root = c.mount("/scan")?;
    let (t, _) = c.lookup(&root, tree)?;
    let mut dirs = c.readdir(&t)?;
    dirs.sort();
    Ok((c, t, dirs))
}

/// The backup-style scan; returns (bytes read, calls).
fn nfs_scan(addr: SocketAddr, tree: &str) -> Result<(u64, u64)> {
    let (mut c, t, dirs) = walk_start(addr, tree)?;
    let mut bytes = 0;
    for dn in &dirs {
        let (dh, _) = c.lookup(&t, dn)?;
        for f in c.readdir(&dh)? {
            let (fh, _) = c.lookup(&dh, &f)?;
            let a = c.getattr(&fh)?;
            if a.ftype == 1 {
                let n = c.read_all(&fh)?;
                if n != a.size {
                    bail!("{dn}/{f}: read {n} bytes, GETATTR said {}", a.size);
                }
                bytes += n;
            }
        }
    }
    Ok((bytes, c.calls))
}

fn nfs_chmod(addr: SocketAddr, tree: &str, mode: u32) -> Result<u64> {
    let (mut c, t, dirs) = walk_start(addr, tree)?;
    for dn in &dirs {
        let (dh, _) = c.lookup(&t, dn)?;
        for f in c.readdir(&dh)? {
            let (fh, _) = c.lookup(&dh, &f)?;
            c.chmod(&fh, mode)?;
        }
    }
    Ok(c.calls)
}

fn nfs_archive(addr: SocketAddr, tree: &str, archive: &str) -> Result<u64> {
    let (mut c, t, dirs) = walk_start(addr, tree)?;
    let root = c.mount("/scan")?;
    let (ah, _) = c.lookup(&root, archive)?;
    let cutoff = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(OLD_DAYS * 86400);
    for dn in &dirs {
        let (dh, _) = c.lookup(&t, dn)?;
        for f in c.readdir(&dh)? {
            let (_, a) = c.lookup(&dh, &f)?;
            let a = a.context("lookup returned no attributes")?;
            if a.ftype == 1 && u64::from(a.mtime) < cutoff {
                c.rename(&dh, &f, &ah, &f)?;
            }
        }
    }
    Ok(c.calls)
}

// ------------------------------------------------------------------------------------ report

/// Targets: NFS time / container time.
pub const TARGET_LOOP: f64 = 20.0;
pub const TARGET_DELAY: f64 = 200.0;

fn secs(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.1}×")
    }
}

/// The section of docs/benchmarks.md; `plot` is the scan plot's path relative to docs/, if drawn.
pub fn render(s: &Scan, quick: bool, plot: Option<&str>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "## 4. Inside the array vs over NFS (the headline)\n");
    let Some(p) = s.plan else { return o };
    let _ = writeln!(
        o,
        "The same job done (a) by a container inside the array, through its bind mount \
         (the array's `scan/` at `/s`; the time runs from `POST /v1/containers` to the end of \
         `POST …/wait`, so the container's start is included), and (b) by a remote client over \
         inarray's NFS gateway: the bench's own NFSv3 client (`bench/src/nfsc.rs`; one TCP \
         connection, one call in flight, AUTH_SYS root, export squash none), doing per-file calls \
         like a backup tool on a mount without an attribute cache. (b) runs on loopback, and \
         through the bench's TCP delay proxy that holds every chunk {:.1} ms in each direction \
         (a simulated {:.0} ms round trip; this machine has no netem). The array is a scratch ext4 \
         on a loop device (in a file under /var/tmp); the trees are created just \
         before (warm page cache for every mode); each run's result is checked off the clock \
         (bytes read, every file's mode, the number of files moved — and those are moved back).\n\n\
         The container does each job twice. **inarray-walk** (`bench/walk/main.rs`, a static \
         std-only Rust program the bench builds and adds to the busybox image) does the NFS \
         client's per-file work through the bind mount — the same walk, one file at a time, one \
         thread (scan: open, fstat, read, close; permission fix: chmod; archive: lstat, rename) — \
         so that the two sides differ only in the data path: the targets are judged on it. \
         **busybox shell** tools (`find … -exec … {{}} +`, what an operator would type) are shown \
         beside it: they pay for process starts and, for the scan, a pipe of every byte to `wc`.\n",
        p.one_way.as_secs_f64() * 1e3,
        2.0 * p.one_way.as_secs_f64() * 1e3,
    );
    let _ = writeln!(
        o,
        "- **Trees:** scan {} directories × {} files; permission fix and archive {} × {} \
         (512 B – 4 KiB each, every other file 60 days old){}.",
        p.scan_dirs,
        p.files_per_dir,
        p.job_dirs,
        p.files_per_dir,
        if quick {
            " — `--quick` sizes; the full run (`bench/run`) uses the issue's 1000 × 100 for the scan and 200 × 100 for the others"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "- **Runs:** {} per job in the container, {} over NFS on loopback, {} through the proxy; \
         medians shown. Load average at start {}, at end {} (2 CPUs shared with other builds).",
        p.container_runs, p.loop_runs, p.delay_runs, s.load_start, s.load_end
    );
    let _ = writeln!(
        o,
        "- **Round trip** of an NFS NULL call (p50 / p99, ms): loopback {:.3} / {:.3}; through \
         the proxy {:.3} / {:.3}.\n",
        s.rtt[0].p50(),
        s.rtt[0].p99(),
        s.rtt[1].p50(),
        s.rtt[1].p99()
    );
    if let Some(e) = &s.error {
        let _ = writeln!(o, "**Failed:** `{}`\n", e.replace('`', "'"));
    }
    let _ = writeln!(
        o,
        "| job | files (MB) | container, inarray-walk (s) | its process alone (s) | NFS loopback (s) | ratio | target | NFS + 1 ms (s) | ratio | target | NFS calls per run |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|");
    for j in &s.jobs {
        let (r1, r2) = (j.ratio(1), j.ratio(2));
        let _ = writeln!(
            o,
            "| {} | {} ({:.0}) | {} | {} | {} | {} | ≥ {TARGET_LOOP:.0}× {} | {} | {} | ≥ {TARGET_DELAY:.0}× {} | {} |",
            j.name,
            j.files,
            j.bytes as f64 / 1e6,
            secs(j.secs[0].p50()),
            secs(j.inside.p50()),
            secs(j.secs[1].p50()),
            ratio(r1),
            verdict(r1 >= TARGET_LOOP),
            secs(j.secs[2].p50()),
            ratio(r2),
            verdict(r2 >= TARGET_DELAY),
            j.calls
        );
    }
    let _ = writeln!(
        o,
        "\nThe same jobs by busybox shell tools in the container (medians; ratio = the NFS \
         medians above ÷ this):\n\n\
         | job | container, busybox shell (s) | its process alone (s) | NFS loopback ratio | NFS + 1 ms ratio |\n\
         |---|---:|---:|---:|---:|"
    );
    for j in &s.jobs {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            j.name,
            secs(j.shell.p50()),
            secs(j.shell_inside.p50()),
            ratio(j.secs[1].p50() / j.shell.p50()),
            ratio(j.secs[2].p50() / j.shell.p50()),
        );
    }
    // Where the ratio comes from: per-file cost inside, per-call cost over NFS.
    if let Some(j) = s.jobs.first() {
        let n = j.files.max(1) as f64;
        let calls = j.calls.max(1) as f64;
        let _ = writeln!(
            o,
            "\nWhere the ratios come from (scan, computed from the medians above): inarray-walk \
             in the container spends {:.1} µs per file, its start included; over NFS each file costs {:.1} calls, \
             {:.1} µs per call on loopback (client, TCP and gateway together) and {:.0} µs per \
             call with the simulated round trip. On loopback the ratio is therefore about \
             (calls per file × per-call cost) / per-file cost inside, whatever the network; \
             every millisecond of round trip adds {:.1} ms per file.",
            j.secs[0].p50() / n * 1e6,
            calls / n,
            j.secs[1].p50() / calls * 1e6,
            j.secs[2].p50() / calls * 1e6,
            calls / n,
        );
    }
    let _ = writeln!(
        o,
        "\nThe ratios divide by the container's whole time, its start included (the \
         conservative choice; under heavy machine load the start alone can take a large share \
         of a small job). Ratios against inarray-walk's process alone (from the container's `started_at` \
         to its `finished_at`): {}.",
        s.jobs
            .iter()
            .map(|j| format!(
                "{} {} on loopback, {} at 1 ms",
                j.name.split(" (").next().unwrap_or(j.name),
                ratio(j.secs[1].p50() / j.inside.p50()),
                ratio(j.secs[2].p50() / j.inside.p50())
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(o, "\nCommands (what each figure ran):\n");
    for j in &s.jobs {
        let _ = writeln!(
            o,
            "- {}: container `inarray-walk {}` and `sh -c '{}'`; NFS: {} (all runs, s: inarray-walk {}; busybox shell {}; loopback {}; 1 ms {})",
            j.name,
            j.walk_cmd,
            j.shell_cmd,
            j.nfs_ops,
            list(&j.secs[0]),
            list(&j.shell),
            list(&j.secs[1]),
            list(&j.secs[2]),
        );
    }
    if let Some(plot) = plot {
        let _ = writeln!(o, "\n![scan comparison]({plot})");
    }
    let _ = writeln!(o);
    o
}

fn list(s: &Samples) -> String {
    s.ms.iter().map(|x| secs(*x)).collect::<Vec<_>>().join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// A scratch ext4 filesystem on a loop device, mounted at `dir` for a daemon's array, unmounted
/// (lazily) and its image removed when dropped. The machine's root filesystem is mounted with
/// `discard`, which makes every unlink wait for the disk: removing 100,000 files there takes
/// minutes, here it is one umount.
pub struct LoopFs {
    pub dir: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    pub fn mount(image: &Path, dir: &Path, gib: u64) -> Result<Self> {
        let run = |cmd: &mut std::process::Command| -> Result<()> {
            let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
            if !out.status.success() {
                bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        std::fs::create_dir_all(dir)?;
        let f = std::fs::File::create(image)?;
        f.set_len(gib << 30)?;
        drop(f);
        let fs = LoopFs {
            dir: dir.to_owned(),
            image: image.to_owned(),
        };
        // One inode per 4 KiB (the trees are small files); no discard, no lazy init.
        run(std::process::Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-i",
                "4096",
                "-E",
                "nodiscard,lazy_itable_init=1",
            ])
            .arg(image))?;
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir))?;
        Ok(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}
