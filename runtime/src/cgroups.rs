//! Removing what a container leaves in the cgroup hierarchies when its shim could not.
//!
//! libcontainer creates and deletes a container's cgroups; the shim deletes them after the exit.
//! When a shim was killed, the daemon's reconcile calls [`cleanup`]: every process still in the
//! container's cgroups is killed, then the directories are removed (deepest first). Works on v1
//! (one hierarchy per controller under /sys/fs/cgroup), v2 and hybrid layouts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Every directory for cgroup path `rel` (e.g. `inarray/<id>`) across the mounted hierarchies.
pub fn locations(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let mut out = Vec::new();
    if root.join("cgroup.controllers").exists() {
        out.push(root.join(rel)); // pure v2
        return out;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            // Skip the symlinks v1 hosts keep for combined controllers (cpu -> cpu,cpuacct).
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(p.join(rel));
            }
        }
    }
    out
}

/// Whether any hierarchy still has the cgroup `rel`.
pub fn exists(rel: &str) -> bool {
    locations(rel).iter().any(|p| p.exists())
}

/// Kills every process left in cgroup `rel` and removes its directories. Best effort, bounded.
pub fn cleanup(rel: &str) -> std::io::Result<()> {
    let mut last_err = None;
    for dir in locations(rel) {
        if !dir.exists() {
            continue;
        }
        if let Err(e) = remove_tree(&dir) {
            last_err = Some(e);
        }
    }
    last_err.map_or(Ok(()), Err)
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

/// OOM kills recorded for cgroup `rel` (the shim reads them after its container's exit).
pub use inarray_shim::oom_kills;

/// The cgroup paths (relative, e.g. `/inarray/default/<id>`) of any container `id` under
/// `parent`, whatever its engine: for cleaning up after a crash without trusting the database.
pub fn find_container(parent: &str, id: &str) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let parent = parent.trim_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_owned()]
    } else {
        std::fs::read_dir(root)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for h in hierarchies {
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
