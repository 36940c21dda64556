//! What /proc and /sys/fs/cgroup say: memory of processes, shims, leftover cgroups, exit times.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Memory of one process or a sum of several, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub procs: usize,
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub pss: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            procs: self.procs + o.procs,
            rss: self.rss + o.rss,
            anon: self.anon + o.anon,
            file: self.file + o.file,
            shmem: self.shmem + o.shmem,
            pss: self.pss + o.pss,
        }
    }
}

fn kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// VmRSS (and its anon/file/shmem parts) from /proc/PID/status, Pss from smaps_rollup.
pub fn mem(pid: i32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(Mem {
        procs: 1,
        rss: kb(&status, "VmRSS")?,
        anon: kb(&status, "RssAnon").unwrap_or(0),
        file: kb(&status, "RssFile").unwrap_or(0),
        shmem: kb(&status, "RssShmem").unwrap_or(0),
        pss: kb(&rollup, "Pss")?,
    })
}

pub fn mem_sum(pids: &[i32]) -> Mem {
    pids.iter()
        .filter_map(|p| mem(*p))
        .fold(Mem::default(), |a, b| a + b)
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Shim processes of the daemon whose state directory is `state`: their command line contains
/// "shim" and a container directory under `state` (other daemons' shims are not counted).
pub fn shims_of(state: &Path) -> Vec<i32> {
    let state = state.display().to_string();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(args) = cmdline(pid) {
            if args.iter().any(|a| a.contains("shim")) && args.iter().any(|a| a.starts_with(&state))
            {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Directories of container `id`'s cgroups that exist: `inarray/<id>` or `inarray/<group>/<id>`
/// (both layouts the daemon has used) in every hierarchy (v1, hybrid) or in the v2 root.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join("inarray")];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                parents.push(e.path().join("inarray"));
            }
        }
    }
    let mut out = Vec::new();
    for p in parents {
        if p.join(id).is_dir() {
            out.push(p.join(id));
        }
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && e.path().join(id).is_dir()
                {
                    out.push(e.path().join(id));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Kills every process in the cgroup directory `dir` (and its children) and removes them.
pub fn kill_cgroup(dir: &Path) {
    let mut dirs = vec![dir.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a pid read from the cgroup; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Total size of the memfds process `pid` holds open (the daemon's sealed copy of the shim:
/// RAM that no process's RSS or PSS shows).
pub fn memfd_bytes(pid: i32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("/memfd:"))
                .unwrap_or(false)
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.len())
        .sum()
}

/// Load average and pressure (PSI) right now: how busy the shared machine is.
pub fn pressure() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let psi = |what: &str| -> String {
        std::fs::read_to_string(format!("/proc/pressure/{what}"))
            .ok()
            .and_then(|t| {
                let l = t.lines().next()?.to_owned();
                let avg60 = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("avg60="))?;
                Some(format!("{what} {avg60} %"))
            })
            .unwrap_or_else(|| format!("{what} ?"))
    };
    format!("load {load}; PSI some avg60: {}, {}", psi("cpu"), psi("io"))
}

/// PSI "some avg10" of `what` (cpu, io, memory), percent; NaN when unavailable.
pub fn psi10(what: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/pressure/{what}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()?
                .split_whitespace()
                .find_map(|w| w.strip_prefix("avg10="))?
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

/// Latency (ms) of the two synchronous disk operations a container's life does on the state
/// filesystem: fsync of a 4 KiB append, and unlink of a file whose blocks are allocated (with the
/// `discard` mount option, ext4 may discard the freed blocks synchronously). `n` of each in `dir`.
pub fn disk_probe(dir: &Path, n: usize) -> std::io::Result<(Vec<f64>, Vec<f64>)> {
    use std::io::Write;
    let probe = dir.join(format!(".inarray-bench-disk-{}", std::process::id()));
    std::fs::create_dir_all(&probe)?;
    let (mut fsyncs, mut unlinks) = (Vec::new(), Vec::new());
    let res = (|| -> std::io::Result<()> {
        for i in 0..n {
            let p = probe.join(format!("f{i}"));
            let mut f = std::fs::File::create(&p)?;
            f.write_all(&[b'x'; 4096])?;
            let t = std::time::Instant::now();
            f.sync_all()?;
            fsyncs.push(t.elapsed().as_secs_f64() * 1e3);
            drop(f);
            let t = std::time::Instant::now();
            std::fs::remove_file(&p)?;
            unlinks.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&probe);
    res.map(|()| (fsyncs, unlinks))
}

/// Field 22 of /proc/PID/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Watches process `pid` (which started at `start`) with a pidfd from a thread; the thread returns
/// the wall-clock time at which the process was seen gone. None when it is already gone.
pub fn watch_exit(pid: i32, start: u64) -> Option<std::thread::JoinHandle<Option<SystemTime>>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return None;
    }
    if start_time(pid) != Some(start) {
        // SAFETY: `fd` is the pidfd opened above and not used after this.
        unsafe { libc::close(fd) };
        return None;
    }
    Some(std::thread::spawn(move || {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut p, 1, Duration::from_secs(60).as_millis() as i32) };
        let t = SystemTime::now();
        // SAFETY: `fd` is owned by this thread and not used after this.
        unsafe { libc::close(fd) };
        (r > 0).then_some(t)
    }))
}

/// Kernel, memory, CPU and cgroup layout of this machine.
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kb: u64,
    pub kernel: String,
    pub cgroups: String,
    pub cpu: String,
    pub loadavg: String,
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    let cgroups = if root.join("cgroup.controllers").exists() {
        "v2 (unified)".to_string()
    } else if root.join("unified").is_dir() {
        "v1 hybrid (v1 controllers, empty cgroup2 at /sys/fs/cgroup/unified)".to_string()
    } else {
        "v1".to_string()
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_kb: kb(&meminfo, "MemTotal").unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cgroups,
        cpu: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// How long moving one process into a cgroup takes right now (writing its pid to `cgroup.procs`
/// of a fresh probe cgroup, ms), `n` times with `gap` between moves. Every container start does
/// this; on this kernel the write waits for an RCU grace period unless one just passed.
pub fn cgroup_move_probe(n: usize, gap: Duration) -> std::io::Result<Vec<f64>> {
    use std::io::Write;
    let root = Path::new("/sys/fs/cgroup");
    let base = if root.join("cgroup.controllers").exists() {
        root.to_owned()
    } else {
        root.join("pids")
    };
    let probe = base.join(format!("inarray-bench-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe)?;
    let mut out = Vec::new();
    let mut result = Ok(());
    for _ in 0..n {
        let mut child = match std::process::Command::new("sleep").arg("10").spawn() {
            Ok(c) => c,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        std::thread::sleep(gap);
        let t = std::time::Instant::now();
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .and_then(|mut f| f.write_all(child.id().to_string().as_bytes()));
        let el = t.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        out.push(el.as_secs_f64() * 1e3);
    }
    for _ in 0..50 {
        if std::fs::remove_dir(&probe).is_ok() || !probe.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result.map(|()| out)
}

/// Spawn-to-exit time (ms) of `bin --version`: from the file itself, from a memfd copy of it (as
/// the daemon spawns shims), and of `/bin/true --version` for scale. `n` runs each, interleaved.
pub fn spawn_probe(bin: &Path, n: usize) -> std::io::Result<[Vec<f64>; 3]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new("inarray-bench-sealed").expect("no NUL");
    // SAFETY: a valid C string and flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut std::fs::File::open(bin)?, &mut dst)?;
    let sealed = format!("/proc/self/fd/{}", dst.as_raw_fd());
    let time = |p: &str| -> std::io::Result<f64> {
        let t = std::time::Instant::now();
        let st = std::process::Command::new(p)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            return Err(std::io::Error::other(format!("{p} --version: {st}")));
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (mut disk, mut memfd, mut small) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        disk.push(time(&bin.display().to_string())?);
        memfd.push(time(&sealed)?);
        small.push(time("/bin/true")?);
    }
    Ok([disk, memfd, small])
}

/// "fstype (options)" of the filesystem holding `path`, from /proc/self/mounts.
pub fn fs_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({})", f[2], f[3])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "?".into())
}
