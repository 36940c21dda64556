//! Network namespaces kept alive by a bind mount of their nsfs file (as `ip netns add` does), so
//! that a namespace outlives the process that made it and can be named by a path.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

fn io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Makes `dir` a mount point of its own with shared propagation (a bind of itself, once), so
/// that a namespace file unmounted here is unmounted too in the mount namespaces copied from
/// this one as slaves (the shims'), and no copy keeps a torn-down namespace alive.
pub fn make_shared_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !is_mount_point(dir)? {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io)?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(io)
}

/// Whether `path` is the root of a mount (its mount id differs from its parent's, or it is a
/// mount point listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let canon = std::fs::canonicalize(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = canon.to_string_lossy();
    Ok(info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|p| unescape_mountinfo(p) == want)
    }))
}

fn unescape_mountinfo(p: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates a new network namespace (only a loopback device, down) and binds it to `path` (a
/// regular file, created). Done on a thread of its own that exits afterwards: the caller's
/// threads never change namespace.
pub fn create_netns(path: &Path) -> std::io::Result<()> {
    create_netns_with(path, || Ok(()))
}

/// [`create_netns`], running `inside` on the thread that is in the new namespace before it is
/// bound (processes it spawns start in that namespace).
pub fn create_netns_with<F>(path: &Path, inside: F) -> std::io::Result<()>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io)?;
        inside()?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io)
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Whether `path` is a bound network namespace (an nsfs mount), not just the file it is bound to.
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unbinds and removes a namespace file made by [`create_netns`]; the namespace itself goes away
/// once no process is in it. A missing file is not an error.
pub fn remove_netns(path: &Path) -> std::io::Result<()> {
    while is_netns(path) {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => break,
            Err(e) => return Err(io(e)),
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
