//! The cgroup file system itself, below a mount root (normally `/sys/fs/cgroup`): which layout it
//! has (the one "is this cgroup v2" test of the code base), where a cgroup's directories are, and
//! removing what a container leaves when its shim could not.
//!
//! libcontainer creates and deletes a container's cgroups; the shim deletes them after the exit.
//! When a shim was killed, the daemon's reconcile removes them through the cgroup driver
//! ([`crate::engines::CgroupDriver::remove_container`]), which calls [`cleanup`] here: every
//! process still in the container's cgroups is killed, then the directories are removed (deepest
//! first). Works on v1 (one hierarchy per controller), v2 and hybrid layouts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the cgroup hierarchies under a mount root are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// One unified (cgroup2) hierarchy at the root.
    V2,
    /// v1 controllers, and an (empty) cgroup2 hierarchy at `unified`.
    Hybrid,
    /// v1 controllers only.
    V1,
}

impl CgroupMode {
    /// Detects the layout under `root` by the file system type of the mounts.
    pub fn detect(root: &Path) -> Self {
        if is_v2(root) {
            Self::V2
        } else if is_v2(&root.join("unified")) {
            Self::Hybrid
        } else {
            Self::V1
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
        }
    }
}

/// The hierarchies under `root` a cgroup path lives in: the root itself on v2, each v1
/// controller's directory otherwise (not the symlinks kept for combined controllers).
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if is_v2(root) {
        return vec![root.to_owned()];
    }
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Every directory for cgroup path `rel` (e.g. `inarray/<id>`) across the mounted hierarchies.
pub fn locations(root: &Path, rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    hierarchies(root).into_iter().map(|h| h.join(rel)).collect()
}

/// Whether any hierarchy still has the cgroup `rel`.
pub fn exists(root: &Path, rel: &str) -> bool {
    locations(root, rel).iter().any(|p| p.exists())
}

/// Kills every process left in cgroup `rel` and removes its directories. Best effort, bounded.
pub fn cleanup(root: &Path, rel: &str) -> std::io::Result<()> {
    let mut last_err = None;
    for dir in locations(root, rel) {
        if !dir.exists() {
            continue;
        }
        if let Err(e) = remove_tree(&dir) {
            last_err = Some(e);
        }
    }
    last_err.map_or(Ok(()), Err)
}

/// Removes cgroup `rel`'s directories if they are empty (an rmdir, which the kernel refuses while
/// a process or a child cgroup is in it). Best effort.
pub fn remove_if_empty(root: &Path, rel: &str) {
    for dir in locations(root, rel) {
        let _ = std::fs::remove_dir(dir);
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub use inarray_shim::{is_v2, oom_kills, MOUNT_ROOT};

/// Sets `limits` of cgroup `rel` back to none: caps to unlimited, shares to the kernel's default
/// (what a `null` in a `PATCH` of limits asks for). `v2`: the unified hierarchy at `root`, else
/// one v1 hierarchy per controller; `device`: the array's block device, which I/O limits are set
/// on. A controller that is not there has nothing to clear.
pub fn clear_limits(
    root: &Path,
    v2: bool,
    rel: &str,
    limits: &[crate::resources::Limit],
    device: Option<(u64, u64)>,
) -> Result<(), String> {
    use crate::resources::Limit::*;
    let rel = rel.trim_start_matches('/');
    let dev = device.map(|(major, minor)| format!("{major}:{minor}"));
    for &limit in limits {
        // (controller's hierarchy on v1, file, value); alternatives in order, the first whose
        // file exists is written.
        let writes: Vec<(&str, &str, String)> = match (v2, limit) {
            (true, Memory) => vec![("", "memory.max", "max".into())],
            (true, MemoryReservation) => vec![("", "memory.low", "0".into())],
            (true, Cpus) => vec![("", "cpu.max", "max".into())],
            (true, CpuWeight) => vec![("", "cpu.weight", "100".into())],
            // Empty: the parent's CPUs.
            (true, Cpuset) => vec![("", "cpuset.cpus", String::new())],
            (true, Pids) => vec![("", "pids.max", "max".into())],
            (true, IoWeight) => vec![
                ("", "io.weight", "default 100".into()),
                ("", "io.bfq.weight", "100".into()),
            ],
            (true, l) => {
                let key = match l {
                    ReadBps => "rbps",
                    WriteBps => "wbps",
                    ReadIops => "riops",
                    _ => "wiops",
                };
                dev.iter()
                    .map(|d| ("", "io.max", format!("{d} {key}=max")))
                    .collect()
            }
            (false, Memory) => vec![("memory", "memory.limit_in_bytes", "-1".into())],
            (false, MemoryReservation) => {
                vec![("memory", "memory.soft_limit_in_bytes", "-1".into())]
            }
            (false, Cpus) => vec![("cpu", "cpu.cfs_quota_us", "-1".into())],
            (false, CpuWeight) => vec![("cpu", "cpu.shares", "1024".into())],
            (false, Cpuset) => {
                let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
                let cpus = std::fs::read_to_string(
                    root.join("cpuset").join(parent).join("cpuset.cpus"),
                )
                .map_err(|e| format!("cannot read the cpuset of {}: {e}", parent.display()))?;
                vec![("cpuset", "cpuset.cpus", cpus.trim().to_owned())]
            }
            (false, Pids) => vec![("pids", "pids.max", "max".into())],
            (false, IoWeight) => vec![
                ("blkio", "blkio.bfq.weight", "100".into()),
                ("blkio", "blkio.weight", "500".into()),
            ],
            (false, l) => {
                let file = match l {
                    ReadBps => "blkio.throttle.read_bps_device",
                    WriteBps => "blkio.throttle.write_bps_device",
                    ReadIops => "blkio.throttle.read_iops_device",
                    _ => "blkio.throttle.write_iops_device",
                };
                // A rate of 0 deletes the device's rule.
                dev.iter()
                    .map(|d| ("blkio", file, format!("{d} 0")))
                    .collect()
            }
        };
        let Some((dir, file, value)) = writes
            .iter()
            .map(|(ctl, file, value)| (root.join(ctl).join(rel), *file, value))
            .find(|(dir, file, _)| dir.join(file).exists())
        else {
            continue;
        };
        std::fs::write(dir.join(file), value).map_err(|e| {
            format!(
                "cannot clear {} ({} = {value:?}): {e}",
                limit.as_str(),
                dir.join(file).display()
            )
        })?;
    }
    Ok(())
}

/// The cgroup paths (relative, e.g. `/inarray/default/<id>`) of any container `id` under
/// `parent`, whatever its engine: for cleaning up after a crash without trusting the database.
pub fn find_container(root: &Path, parent: &str, id: &str) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let parent = parent.trim_matches('/');
    for h in hierarchies(root) {
        if let Ok(engines) = std::fs::read_dir(h.join(parent)) {
            for e in engines.flatten() {
                if e.path().join(id).is_dir() {
                    found.insert(format!(
                        "/{parent}/{}/{id}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    found.into_iter().collect()
}

/// The kernel's `favordynmods` switch, set on one cgroup hierarchy under `root`.
///
/// By default every move of a process between cgroups (each container start does one) waits for
/// an RCU grace period, ≈ 6–9 ms on the nodes measured; with `favordynmods` on any hierarchy the
/// kernel keeps its cgroup lock in the mode where moves do not wait, at the cost of slightly
/// dearer forks and exits, until it is switched off or the node reboots. The effect is
/// machine-wide (the lock is global), so one hierarchy is enough: the cgroup2 one (the root on
/// v2, `unified` on a hybrid host), else the `pids` (or the first) v1 controller's. Returns whether the mount was changed (false when already set). The mount's
/// own flags (nosuid, nodev, …) and its other options are kept.
pub fn favor_dynmods(root: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounts: Vec<MountLine> = info.lines().filter_map(MountLine::parse).collect();
    let under = |m: &&MountLine| m.point.starts_with(root) && m.fstype.starts_with("cgroup");
    // A cgroup2 mount takes the option on remount everywhere (the root on v2, `unified` on a
    // hybrid host); a v1 hierarchy only where the kernel has the v1 option too.
    let target = mounts
        .iter()
        .filter(under)
        .find(|m| m.fstype == "cgroup2")
        .or_else(|| {
            let v1: Vec<&MountLine> = mounts
                .iter()
                .filter(under)
                .filter(|m| m.fstype == "cgroup")
                .collect();
            v1.iter()
                .find(|m| m.super_opts.split(',').any(|o| o == "pids"))
                .or(v1.first())
                .copied()
        });
    let Some(m) = target else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no cgroup hierarchy is mounted under {}", root.display()),
        ));
    };
    if m.super_opts.split(',').any(|o| o == "favordynmods") {
        return Ok(false);
    }
    let data: Vec<&str> = m
        .super_opts
        .split(',')
        .filter(|o| !matches!(*o, "rw" | "ro"))
        .chain(["favordynmods"])
        .collect();
    let flags = m.mount_flags() | nix::mount::MsFlags::MS_REMOUNT;
    nix::mount::mount(
        None::<&str>,
        m.point.as_path(),
        None::<&str>,
        flags,
        Some(data.join(",").as_str()),
    )
    .map_err(|e| {
        std::io::Error::other(format!(
            "remount {} with favordynmods: {e}",
            m.point.display()
        ))
    })?;
    Ok(true)
}

/// One line of `/proc/self/mountinfo`, the fields the remount needs.
struct MountLine {
    point: PathBuf,
    mount_opts: String,
    fstype: String,
    super_opts: String,
}

impl MountLine {
    fn parse(line: &str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        Some(Self {
            point: PathBuf::from(unescape(l.get(4)?)),
            mount_opts: (*l.get(5)?).to_owned(),
            fstype: (*r.first()?).to_owned(),
            super_opts: (*r.get(2)?).to_owned(),
        })
    }

    /// The per-mount flags a remount must pass again to keep them.
    fn mount_flags(&self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags as F;
        self.mount_opts
            .split(',')
            .fold(F::empty(), |acc, o| match o {
                "ro" => acc | F::MS_RDONLY,
                "nosuid" => acc | F::MS_NOSUID,
                "nodev" => acc | F::MS_NODEV,
                "noexec" => acc | F::MS_NOEXEC,
                "noatime" => acc | F::MS_NOATIME,
                "nodiratime" => acc | F::MS_NODIRATIME,
                "relatime" => acc | F::MS_RELATIME,
                _ => acc,
            })
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_keep_flags_and_options() {
        let m = MountLine::parse(
            "32 31 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,pids",
        )
        .unwrap();
        assert_eq!(m.point, Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(m.fstype, "cgroup");
        assert_eq!(m.super_opts, "rw,pids");
        use nix::mount::MsFlags as F;
        assert_eq!(
            m.mount_flags(),
            F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC | F::MS_RELATIME
        );
        let v2 = MountLine::parse(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot",
        )
        .unwrap();
        assert_eq!(v2.super_opts, "rw,nsdelegate,memory_recursiveprot");
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert!(MountLine::parse("garbage").is_none());
    }

    /// A cgroup's files as plain files in a temporary directory: `(dir, file, content)`.
    fn tree(files: &[(&str, &str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (dir, file, content) in files {
            std::fs::create_dir_all(t.path().join(dir)).unwrap();
            std::fs::write(t.path().join(dir).join(file), content).unwrap();
        }
        t
    }

    fn read(t: &tempfile::TempDir, path: &str) -> String {
        std::fs::read_to_string(t.path().join(path)).unwrap()
    }

    #[test]
    fn cleared_limits_go_back_to_none_on_v2() {
        use crate::resources::Limit::*;
        let c = "inarray/default/c1";
        let t = tree(&[
            (c, "memory.max", "1048576"),
            (c, "cpu.max", "50000 100000"),
            (c, "pids.max", "20"),
            (c, "io.max", ""),
            (c, "io.weight", "default 300"),
        ]);
        let all = [
            Memory,
            Cpus,
            Pids,
            ReadBps,
            WriteIops,
            IoWeight,
            MemoryReservation,
        ];
        clear_limits(t.path(), true, c, &all, Some((254, 0))).unwrap();
        assert_eq!(read(&t, &format!("{c}/memory.max")), "max");
        assert_eq!(read(&t, &format!("{c}/cpu.max")), "max");
        assert_eq!(read(&t, &format!("{c}/pids.max")), "max");
        // A plain file keeps the last write: the kernel's io.max takes one key per write.
        assert_eq!(read(&t, &format!("{c}/io.max")), "254:0 wiops=max");
        assert_eq!(read(&t, &format!("{c}/io.weight")), "default 100");
        assert!(
            !t.path().join(c).join("memory.low").exists(),
            "a file the kernel does not have is not made"
        );
    }

    #[test]
    fn cleared_limits_go_back_to_none_on_v1() {
        use crate::resources::Limit::*;
        let t = tree(&[
            ("memory/inarray/e/c1", "memory.limit_in_bytes", "1048576"),
            ("cpu/inarray/e/c1", "cpu.cfs_quota_us", "50000"),
            ("cpu/inarray/e/c1", "cpu.shares", "2048"),
            ("cpuset/inarray/e", "cpuset.cpus", "0-1\n"),
            ("cpuset/inarray/e/c1", "cpuset.cpus", "0"),
            ("pids/inarray/e/c1", "pids.max", "20"),
            ("blkio/inarray/e/c1", "blkio.throttle.read_bps_device", ""),
        ]);
        let rel = "/inarray/e/c1";
        clear_limits(
            t.path(),
            false,
            rel,
            &[Memory, Cpus, CpuWeight, Cpuset, Pids, ReadBps],
            Some((8, 0)),
        )
        .unwrap();
        assert_eq!(read(&t, "memory/inarray/e/c1/memory.limit_in_bytes"), "-1");
        assert_eq!(read(&t, "cpu/inarray/e/c1/cpu.cfs_quota_us"), "-1");
        assert_eq!(read(&t, "cpu/inarray/e/c1/cpu.shares"), "1024");
        assert_eq!(read(&t, "cpuset/inarray/e/c1/cpuset.cpus"), "0-1");
        assert_eq!(read(&t, "pids/inarray/e/c1/pids.max"), "max");
        assert_eq!(
            read(&t, "blkio/inarray/e/c1/blkio.throttle.read_bps_device"),
            "8:0 0"
        );
        // Without the array's device there is no I/O rule to delete.
        clear_limits(t.path(), false, rel, &[WriteBps], None).unwrap();
    }
}
