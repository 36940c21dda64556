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
}
