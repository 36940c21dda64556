//! Back after a reboot, under NFS load (issue 20): N `always` containers run; the power goes (the
//! daemon, then every container and so every shim, SIGKILLed); the daemon starts again with
//! another boot id (`--boot-id`, the test-only way to simulate a reboot) and brings the N back,
//! paced (`restart_concurrency`), while an NFS client (libnfs' `nfs-cat`) reads a file of an
//! export of the array over and over. The figure: the client's read throughput while the N come
//! back, against the same client's throughput with the N running idle before the reboot.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::json;

use crate::daemon::Daemon;
use crate::IMAGE;

pub struct Opts {
    pub bin: std::path::PathBuf,
    pub work: std::path::PathBuf,
    pub containers: usize,
    pub file_mib: u64,
    pub idle_secs: u64,
}

/// One read of the whole file: when it started and ended (since the bench's start), its bytes.
#[derive(Clone, Copy, Debug)]
struct Read1 {
    start: Duration,
    end: Duration,
    bytes: u64,
}

/// Reads `url` with `nfs-cat` again and again until `stop`, recording each read.
fn reader(url: String, t0: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Read1>> {
    std::thread::spawn(move || {
        let mut reads = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let start = t0.elapsed();
            match nfs_count(&url) {
                Ok(bytes) => reads.push(Read1 {
                    start,
                    end: t0.elapsed(),
                    bytes,
                }),
                // The gateway is not up yet (the daemon is starting): try again shortly.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        reads
    })
}

fn nfs_count(url: &str) -> Result<u64> {
    let mut child = Command::new("nfs-cat")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    if !child.wait()?.success() {
        bail!("nfs-cat failed");
    }
    Ok(n)
}

/// MB/s of the reads that started in [from, to) and read the whole file (`want` bytes).
fn throughput(reads: &[Read1], from: Duration, to: Duration, want: u64) -> (f64, usize) {
    let within: Vec<&Read1> = reads
        .iter()
        .filter(|r| r.start >= from && r.start < to && r.bytes == want)
        .collect();
    let bytes: u64 = within.iter().map(|r| r.bytes).sum();
    let secs: f64 = within.iter().map(|r| (r.end - r.start).as_secs_f64()).sum();
    if secs == 0.0 {
        return (0.0, 0);
    }
    (bytes as f64 / secs / 1e6, within.len())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn running(d: &Daemon) -> Result<usize> {
    let all = d.call(Method::GET, "/v1/containers?all=true", None).await?;
    Ok(all
        .as_array()
        .map(|a| a.iter().filter(|c| c["state"] == "running").count())
        .unwrap_or(0))
}

/// Runs the benchmark; returns its markdown section.
pub async fn bench(o: &Opts) -> Result<String> {
    let dir = o.work.join("d-reboot");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("array/nfs"))?;
    let file = dir.join("array/nfs/big");
    let want = o.file_mib << 20;
    {
        let mut f = std::fs::File::create(&file)?;
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..o.file_mib {
            std::io::Write::write_all(&mut f, &block)?;
        }
        f.sync_all()?;
    }
    let port = free_port()?;
    let args = |boot: &str| {
        vec![
            "--nfs-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--boot-id".to_owned(),
            boot.to_owned(),
        ]
    };
    let d = Daemon::start_with(&o.bin, &dir, &args("bench-boot-1")).await?;
    d.import(&o.work.join("busybox-oci.tar"), IMAGE).await?;
    let export = json!({"name": "bench", "path": "nfs",
        "clients": [{"match": "127.0.0.1", "access": "ro"}]});
    d.call(Method::POST, "/v1/exports", Some(&export)).await?;
    let url = format!("nfs://127.0.0.1/bench/big?nfsport={port}&mountport={port}");
    let n = nfs_count(&url).with_context(|| format!("reading {url}"))?;
    if n != want {
        bail!("{url}: {n} bytes, not {want}");
    }
    eprintln!("reboot: creating {} always containers", o.containers);
    for i in 0..o.containers {
        let body = json!({"image": IMAGE, "name": format!("always-{i}"),
            "command": ["sleep", "1000000"], "restart": "always"});
        d.call(Method::POST, "/v1/containers", Some(&body)).await?;
    }
    if running(&d).await? != o.containers {
        bail!("not all {} containers run", o.containers);
    }

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Idle: the N run, nothing else happens.
    let idle = reader(url.clone(), t0, stop.clone());
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    stop.store(true, Ordering::SeqCst);
    let idle_reads = idle.join().expect("reader");
    let (idle_mbs, idle_n) = throughput(&idle_reads, Duration::ZERO, t0.elapsed(), want);

    // The power goes: the daemon, then every container (their shims follow).
    let shims: Vec<i32> = d
        .container_ids()
        .iter()
        .filter_map(|id| {
            let rec = std::fs::read(d.container_dir(id).join("shim-pid.json")).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&rec).ok()?;
            v["shim_pid"].as_i64().map(|p| p as i32)
        })
        .collect();
    drop(d);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shims
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        if Instant::now() > deadline {
            bail!("shims still alive 60 s after their containers were killed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The node is back: the daemon starts with another boot id; the client reads all along.
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = t0.elapsed();
    let during = reader(url.clone(), t0, stop.clone());
    let d = Daemon::start_with(&o.bin, &dir, &args("bench-boot-2")).await?;
    let up = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while running(&d).await? < o.containers {
        if Instant::now() > deadline {
            bail!("not all {} containers came back in 10 min", o.containers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_back = t0.elapsed();
    // After: the same client, the N running again.
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    stop.store(true, Ordering::SeqCst);
    let reads = during.join().expect("reader");
    let (during_mbs, during_n) = throughput(&reads, spawned, all_back, want);
    let (after_mbs, after_n) = throughput(&reads, all_back, t0.elapsed(), want);
    let ratio = if idle_mbs > 0.0 {
        during_mbs / idle_mbs
    } else {
        0.0
    };
    let boot_log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let done_line = boot_log
        .lines()
        .rev()
        .find(|l| l.contains("boot starts done"))
        .unwrap_or("")
        .to_owned();
    let _ = d.call(Method::GET, "/v1/health", None).await;
    drop(d);
    let cmd = format!(
        "inarray-bench reboot --bin {} --work {} --containers {} --file-mib {} --idle-secs {}",
        o.bin.display(),
        o.work.display(),
        o.containers,
        o.file_mib,
        o.idle_secs
    );
    Ok(format!(
        "<!-- reboot:begin (inarray-bench reboot rewrites this block) -->\n\
         ### Back after a reboot, under NFS reads (issue 20)\n\n\
         `{cmd}`\n\n\
         {n} `always` containers (`sleep`), then a simulated power loss (the daemon, every container \
         and shim SIGKILLed) and the daemon started again with another boot id: it brings the {n} \
         back, `restart_concurrency` (8) at a time, while libnfs' `nfs-cat` reads a {mib} MiB file of \
         an export of the array through the daemon's NFS gateway over and over (127.0.0.1).\n\n\
         | | reads | MB/s |\n|---|---:|---:|\n\
         | idle (the {n} running, before the reboot) | {idle_n} | {idle_mbs:.0} |\n\
         | while the {n} come back | {during_n} | {during_mbs:.0} |\n\
         | after (the {n} running again) | {after_n} | {after_mbs:.0} |\n\n\
         **While the {n} come back, NFS reads keep {pct:.0} % of their idle throughput** \
         (the issue asks ≥ 80 %). All {n} running {back:.1} s after the daemon was started \
         ({api:.1} s after its API answered). Daemon: `{done}`\n\
         <!-- reboot:end -->\n",
        n = o.containers,
        mib = o.file_mib,
        pct = ratio * 100.0,
        back = (all_back - spawned).as_secs_f64(),
        api = (all_back - up).as_secs_f64(),
        done = fields_of(&done_line),
    ))
}

/// The `key=value` fields of a daemon log line, without terminal colours.
fn fields_of(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .filter(|w| w.contains('='))
        .collect::<Vec<_>>()
        .join(" ")
}
