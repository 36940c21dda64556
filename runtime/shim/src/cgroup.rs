//! The cgroup file system as both sides read it: the one "is this cgroup v2" test of the code
//! base, and the OOM counter the shim reads after its container's exit (libcontainer creates and
//! deletes the cgroup; the daemon's side is `inarray_runtime::cgroups`, which re-exports these).

use std::path::Path;

/// Where the kernel's cgroup hierarchies are mounted on a standard host.
pub const MOUNT_ROOT: &str = "/sys/fs/cgroup";

/// Whether `path` is a cgroup2 (unified) mount, by its file system type.
pub fn is_v2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// OOM kills recorded for cgroup `rel` under `root` (v1 `memory.oom_control`, v2
/// `memory.events`).
pub fn oom_kills(root: &Path, rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    let file = if is_v2(root) {
        root.join(rel).join("memory.events")
    } else {
        root.join("memory").join(rel).join("memory.oom_control")
    };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}
