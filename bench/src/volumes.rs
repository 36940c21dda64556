//! Array volumes (issue #19): on a loop-mounted btrfs this makes (quotas enabled), the same
//! work in a quota'd volume and in a plain array directory of the same filesystem — a
//! sequential write and a small-file create — then snapshot and restore of a volume holding
//! those files through the API, and the quota's overshoot under 8 concurrent writers.
//! Prints a markdown section for docs/benchmarks.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::json;

use crate::daemon::Daemon;

pub struct Opts {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub files: usize,
    pub mib: usize,
    pub rounds: usize,
    pub command: String,
}

/// The loop filesystem, unmounted (its loop device freed by autoclear) when dropped.
struct Loop {
    mnt: PathBuf,
    image: PathBuf,
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| cmd.to_owned())?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Loop {
    fn btrfs(work: &Path, gib: u64) -> Result<Self> {
        let image = work.join("volumes.img");
        let mnt = work.join("dv/array");
        std::fs::create_dir_all(&mnt)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(gib << 30)?;
        drop(f);
        sh("mkfs.btrfs", &["-q", "-f", image.to_str().unwrap()])?;
        sh(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
        )?;
        let l = Self { mnt, image };
        sh("btrfs", &["quota", "enable", l.mnt.to_str().unwrap()])?;
        Ok(l)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let m = self.mnt.to_str().unwrap();
        if Command::new("umount")
            .arg(m)
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        bail!("syncfs: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `mib` MiB in 1 MiB writes and fsyncs: MiB/s.
fn seq_write(dir: &Path, mib: usize) -> Result<f64> {
    let p = dir.join("seq.bin");
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&p)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let s = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&p)?;
    syncfs(dir)?;
    Ok(mib as f64 / s)
}

/// Creates `n` files of 1 KiB in 100 directories under `dir/small`, then syncfs: files/s.
fn small_files(dir: &Path, n: usize, keep: bool) -> Result<f64> {
    let root = dir.join("small");
    let buf = vec![0xa5u8; 1024];
    let t = Instant::now();
    for d in 0..100 {
        std::fs::create_dir_all(root.join(format!("d{d}")))?;
    }
    for i in 0..n {
        std::fs::write(root.join(format!("d{}/f{i}", i % 100)), &buf)?;
    }
    syncfs(dir)?;
    let s = t.elapsed().as_secs_f64();
    if !keep {
        std::fs::remove_dir_all(&root)?;
        syncfs(dir)?;
    }
    Ok(n as f64 / s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 8 writers, 1 MiB writes each to its own file until EDQUOT: (bytes on disk after sync,
/// writes refused).
fn overshoot(dir: &Path) -> Result<u64> {
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let p = dir.join(format!("w{i}"));
            std::thread::spawn(move || -> std::io::Result<()> {
                let buf = vec![0x11u8; 1 << 20];
                let mut f = std::fs::File::create(&p)?;
                loop {
                    if let Err(e) = f.write_all(&buf) {
                        if e.raw_os_error() == Some(libc::EDQUOT) {
                            return Ok(());
                        }
                        return Err(e);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer").context("writer")?;
    }
    syncfs(dir)?;
    let mut total = 0;
    for i in 0..8 {
        total += std::fs::metadata(dir.join(format!("w{i}")))?.len();
    }
    Ok(total)
}

pub async fn bench(o: &Opts) -> Result<String> {
    std::fs::create_dir_all(&o.work)?;
    // A fresh daemon state each run (the registry of an earlier run's volumes).
    let _ = std::fs::remove_dir_all(o.work.join("dv"));
    let fs = Loop::btrfs(&o.work, 8)?;
    let d = Daemon::start(&o.bin, &o.work.join("dv")).await?;
    let vol = |n: &str| fs.mnt.join(".inarray-volumes/volumes").join(n);
    d.call(
        Method::POST,
        "/v1/volumes",
        Some(&json!({"name": "q", "size": 6u64 << 30})),
    )
    .await?;
    let plain = fs.mnt.join("plain");
    std::fs::create_dir_all(&plain)?;
    let (mut sw_v, mut sw_p, mut sf_v, mut sf_p) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.rounds {
        sw_v.push(seq_write(&vol("q"), o.mib)?);
        sw_p.push(seq_write(&plain, o.mib)?);
        sf_p.push(small_files(&plain, o.files, false)?);
        sf_v.push(small_files(&vol("q"), o.files, false)?);
    }
    // Snapshot and restore of a volume holding the files.
    small_files(&vol("q"), o.files, true)?;
    let t = Instant::now();
    d.call(
        Method::POST,
        "/v1/volumes/q/snapshots",
        Some(&json!({"name": "s"})),
    )
    .await?;
    let snap = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(vol("q").join("small/d0"))?;
    let t = Instant::now();
    d.call(Method::POST, "/v1/volumes/q/snapshots/s/restore", None)
        .await?;
    let restore = t.elapsed().as_secs_f64();
    let back = std::fs::read_dir(vol("q").join("small/d0"))?.count();
    if back != o.files / 100 {
        bail!(
            "restore gave back {back} files of d0, not {}",
            o.files / 100
        );
    }
    // Overshoot under 8 writers.
    let limit: u64 = 256 << 20;
    d.call(
        Method::POST,
        "/v1/volumes",
        Some(&json!({"name": "o", "size": limit})),
    )
    .await?;
    let written = overshoot(&vol("o"))?;
    let over = written as f64 / (1u64 << 20) as f64 - 256.0;
    let over = if over.abs() < 0.05 { 0.0 } else { over };
    d.stop();
    drop(fs);

    let (swv, swp, sfv, sfp) = (median(sw_v), median(sw_p), median(sf_v), median(sf_p));
    Ok(format!(
        "## Array volumes (issue #19)\n\n\
         `{cmd}` — a {gib} GiB loop-mounted btrfs made by the run (qgroups enabled), the daemon's \
         array on it; the writes are the bench process's own, into the volume's directory \
         (`.inarray-volumes/volumes/q`, a subvolume with a 6 GiB qgroup limit) and into a plain \
         directory of the same filesystem; medians of {rounds} alternating rounds.\n\n\
         | work | quota'd btrfs volume | plain array directory | ratio |\n\
         |---|---|---|---|\n\
         | sequential write, {mib} MiB (1 MiB writes + fsync) | {swv:.0} MiB/s | {swp:.0} MiB/s | {r1:.2}× |\n\
         | create {files} files of 1 KiB in 100 dirs (+ syncfs) | {sfv:.0} files/s | {sfp:.0} files/s | {r2:.2}× |\n\n\
         | operation on a volume holding {files} files | time |\n\
         |---|---|\n\
         | snapshot (API call, read-only btrfs snapshot) | {snap_ms:.1} ms |\n\
         | restore (API call: writable snapshot of the snapshot, qgroup limit, RENAME_EXCHANGE, old subvolume deleted) | {restore_ms:.1} ms |\n\n\
         Quota enforcement: 8 concurrent writers (1 MiB writes, each to its own file, until EDQUOT) \
         in a volume limited to 256 MiB wrote {written_mib:.1} MiB: overshoot {over:.1} MiB.\n",
        cmd = o.command,
        gib = 8,
        rounds = o.rounds,
        mib = o.mib,
        files = o.files,
        r1 = swv / swp,
        r2 = sfv / sfp,
        snap_ms = snap * 1e3,
        restore_ms = restore * 1e3,
        written_mib = written as f64 / (1u64 << 20) as f64,
    ))
}
