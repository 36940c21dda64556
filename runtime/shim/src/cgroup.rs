//! What the shim reads of its container's cgroup after the exit (libcontainer creates and
//! deletes the cgroup; the daemon's side is `inarray_runtime::cgroups`).

use std::path::Path;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// OOM kills recorded for cgroup `rel` (v1 `memory.oom_control`, v2 `memory.events`).
pub fn oom_kills(rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let (file, key) = if root.join("cgroup.controllers").exists() {
        (root.join(rel).join("memory.events"), "oom_kill")
    } else {
        (
            root.join("memory").join(rel).join("memory.oom_control"),
            "oom_kill",
        )
    };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
