//! The per-container supervisor: `inarray shim <container-dir>`.
//!
//! The daemon re-executes its own (sealed) binary as this small single-threaded program, once per
//! container start. It is the only code that calls libcontainer (which forks, so it must not run
//! inside the multi-threaded daemon). It detaches from the daemon (fork + setsid), so the container
//! survives a daemon stop, crash or upgrade, then:
//!
//! 1. enters a private mount namespace (slave of the host), so every mount it makes — the overlay
//!    root and the volume binds — exists only for it and the container, and disappears with them;
//! 2. mounts the overlay (read-only image layers, the container's private upper);
//! 3. resolves each volume source beneath the array root and bind-mounts it *through the opened fd*
//!    onto a target resolved beneath the rootfs without following symlinks;
//! 4. points stdio at /dev/null and the log file, creates and starts the container;
//! 5. reports `{pid, shim_pid, shim_start}` (or `{error}`) on its original stdout to the daemon;
//! 6. reaps the container and writes `exit.json` atomically, then deletes the runtime state
//!    (cgroups) and exits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, setsid, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::fsutil::{is_dir, open_beneath, open_or_create_dirs, proc_fd_path, write_atomic};
use crate::paths::ContainerPaths;
use crate::volumes::{validate_target, ArrayRoot, Volume};

/// What the daemon tells a shim (`shim.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub array_root: PathBuf,
    /// Daemon paths no volume may expose.
    pub protected: Vec<PathBuf>,
    pub volumes: Vec<Volume>,
    /// Unpacked image layers, bottom first.
    pub lowers: Vec<PathBuf>,
    /// libcontainer's state root (short: unix socket paths live under it).
    pub runtime_root: PathBuf,
    /// The container's cgroup path (for reading OOM kills after the exit).
    pub cgroup: String,
}

/// The shim's first (and only) message to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShimReport {
    Started(ShimRecord),
    Failed {
        error: String,
    },
    /// Sent after `exit.json` is written, before the runtime state is torn down.
    Exited(ExitRecord),
}

/// Who supervises a running container (also kept in `shim-pid.json` for reconcile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub pid: i32,
    pub shim_pid: i32,
    /// The shim's start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub shim_start: u64,
}

/// How the container ended (`exit.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// The memory cap killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
}

/// Entry point of `inarray shim DIR`; never returns.
pub fn main(dir: &Path) -> ! {
    // CVE-2019-5736: never run containers from a binary a container could overwrite.
    if !crate::sealed::running_sealed() {
        reexec_sealed();
    }
    // Detach: the daemon waits for this first process only; the supervisor is the grandchild.
    // SAFETY: the shim is single-threaded at this point (a fresh exec, no runtime started), so
    // the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(e) => {
            let _ = writeln!(std::io::stdout(), "{}", failed(format!("shim: fork: {e}")));
            std::process::exit(1);
        }
    }
    let _ = setsid();
    let paths = ContainerPaths {
        dir: dir.to_owned(),
    };
    let mut diag = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.shim_log())
        .ok();
    let mut log = |msg: &str| {
        if let Some(f) = diag.as_mut() {
            let _ = writeln!(f, "{} {msg}", chrono::Utc::now().to_rfc3339());
        }
    };
    // Our stdout is the report pipe; keep a private (close-on-exec) copy of it.
    let report = match nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        Ok(fd) => unsafe { File::from_raw_fd(fd) },
        Err(e) => std::process::exit(90 + (e as i32 % 10)),
    };
    let mut report = Some(report);
    // The pipe carries the start report, then stays open until the exit is recorded: the daemon
    // learns the exit from its end, before the runtime state is torn down.
    let mut send = |r: &ShimReport, keep_open: bool| {
        if let Some(f) = report.as_mut() {
            let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
        }
        if !keep_open {
            report = None;
        }
    };
    let (mut container, rec, cgroup) = match start(&paths) {
        Ok(x) => x,
        Err(e) => {
            log(&format!("start failed: {e}"));
            send(&ShimReport::Failed { error: e }, false);
            std::process::exit(1);
        }
    };
    if let Err(e) = write_atomic(
        &paths.shim_record(),
        serde_json::to_string(&rec).unwrap_or_default().as_bytes(),
    ) {
        log(&format!("cannot write shim record: {e}"));
    }
    send(&ShimReport::Started(rec), true);
    log(&format!("container started, pid {}", rec.pid));
    let (exit_code, signal) = reap(Pid::from_raw(rec.pid));
    // Read before the runtime deletes the cgroup.
    let oom_killed =
        crate::cgroups::oom_kills(Path::new(crate::cgroups::MOUNT_ROOT), &cgroup).unwrap_or(0) > 0;
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at: chrono::Utc::now(),
        oom_killed,
    };
    if let Err(e) = write_atomic(
        &paths.exit_record(),
        serde_json::to_string(&record)
            .unwrap_or_default()
            .as_bytes(),
    ) {
        log(&format!("cannot write exit record: {e}"));
    }
    send(&ShimReport::Exited(record), false);
    log(&format!(
        "container exited: code {exit_code}, signal {signal:?}"
    ));
    if let Err(e) = container.delete(true) {
        log(&format!("runtime delete failed: {e}"));
    }
    std::process::exit(0)
}

/// Re-executes this program from a sealed in-memory copy (for shims started by hand).
fn reexec_sealed() -> ! {
    let fail = |e: String| -> ! {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            failed(format!("shim: cannot re-exec from a sealed copy: {e}"))
        );
        std::process::exit(1)
    };
    let sealed = crate::sealed::SealedExe::new().unwrap_or_else(|e| fail(e.to_string()));
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| {
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()))
                .unwrap_or_default()
        })
        .collect();
    let path = std::ffi::CString::new(sealed.path().into_os_string().into_encoded_bytes())
        .unwrap_or_default();
    let e = nix::unistd::execv(&path, &args).unwrap_err();
    fail(e.to_string())
}

fn failed(error: String) -> String {
    serde_json::to_string(&ShimReport::Failed { error }).unwrap_or_default()
}

/// Waits for the container's init (and reaps anything else reparented to us).
fn reap(init: Pid) -> (i32, Option<i32>) {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => return (code, None),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                return (128 + sig as i32, Some(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            // No children left: the init was reaped elsewhere (should not happen).
            Err(_) => return (255, None),
        }
    }
}

/// Everything up to a running container; errors are reported to the daemon verbatim.
fn start(
    paths: &ContainerPaths,
) -> Result<(libcontainer::container::Container, ShimRecord, String), String> {
    let cfg: ShimConfig = std::fs::read(paths.shim_config())
        .map_err(|e| format!("cannot read {}: {e}", paths.shim_config().display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("bad shim config: {e}")))?;
    let _ = std::fs::remove_file(paths.exit_record());
    let _ = std::fs::remove_file(paths.shim_record());
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot create a mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make / a slave mount: {e}"))?;
    mount_overlay(paths, &cfg)?;
    let rootfs = nix::fcntl::open(
        &paths.rootfs(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(crate::fsutil::owned)
    .map_err(|e| format!("cannot open the rootfs: {e}"))?;
    check_rootfs(&rootfs)?;
    mount_volumes(&cfg, &rootfs)?;
    drop(rootfs);
    redirect_stdio(paths)?;
    let _ = nix::sys::prctl::set_child_subreaper(true);
    std::fs::create_dir_all(&cfg.runtime_root)
        .map_err(|e| format!("cannot create {}: {e}", cfg.runtime_root.display()))?;
    let stale = cfg.runtime_root.join(&cfg.id);
    if stale.exists() {
        // A previous run of this container that was not cleaned up (shim killed): start afresh.
        if let Ok(mut old) = libcontainer::container::Container::load(stale.clone()) {
            let _ = old.delete(true);
        }
        let _ = std::fs::remove_dir_all(&stale);
    }
    let mut container = libcontainer::container::builder::ContainerBuilder::new(
        cfg.id.clone(),
        libcontainer::syscall::syscall::SyscallType::default(),
    )
    .with_root_path(&cfg.runtime_root)
    .and_then(|b| b.validate_id())
    .map_err(|e| format!("runtime: {e}"))?
    .as_init(paths.bundle())
    .with_systemd(false)
    .with_detach(true)
    .build()
    .map_err(|e| format!("cannot create the container: {e}"))?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(format!("cannot start the container: {e}"));
    }
    let pid = container
        .pid()
        .ok_or("the runtime reported no pid")?
        .as_raw();
    let shim_pid = std::process::id() as i32;
    let shim_start = crate::supervisor::process_start_time(shim_pid)
        .ok_or("cannot read the shim's own start time")?;
    Ok((
        container,
        ShimRecord {
            pid,
            shim_pid,
            shim_start,
        },
        cfg.cgroup,
    ))
}

fn mount_overlay(paths: &ContainerPaths, cfg: &ShimConfig) -> Result<(), String> {
    for d in [paths.rootfs(), paths.upper(), paths.work()] {
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let mut lowers: Vec<String> = cfg
        .lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if lowers.is_empty() {
        let empty = paths.dir.join("empty");
        std::fs::create_dir_all(&empty)
            .map_err(|e| format!("cannot create {}: {e}", empty.display()))?;
        lowers.push(empty.display().to_string());
    }
    if let Some(bad) = lowers.iter().find(|l| l.contains([',', ':'])) {
        return Err(format!(
            "layer path {bad} contains ',' or ':' and cannot be an overlay lower"
        ));
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        paths.upper().display(),
        paths.work().display()
    );
    mount(
        Some("overlay"),
        &paths.rootfs(),
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the overlay root ({} layers): {e}",
            lowers.len()
        )
    })
}

/// The runtime mounts kernel filesystems at these paths: an image that makes any of them a
/// symlink could redirect those mounts onto the host.
const RUNTIME_MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "dev/pts", "dev/shm", "dev/mqueue"];

fn check_rootfs(rootfs: &OwnedFd) -> Result<(), String> {
    for p in RUNTIME_MOUNT_POINTS {
        match open_beneath(
            rootfs,
            Path::new(p),
            OFlag::O_PATH,
            ResolveFlag::RESOLVE_NO_SYMLINKS,
        ) {
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(Errno::ELOOP) => {
                return Err(format!(
                    "image rootfs: /{p} is a symlink; refusing to run it"
                ))
            }
            Err(e) => return Err(format!("image rootfs: cannot check /{p}: {e}")),
        }
    }
    Ok(())
}

fn mount_volumes(cfg: &ShimConfig, rootfs: &OwnedFd) -> Result<(), String> {
    let array = ArrayRoot::open(&cfg.array_root, &cfg.protected).map_err(|e| e.to_string())?;
    let no_links = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS;
    for (i, v) in cfg.volumes.iter().enumerate() {
        let field = format!("volumes[{i}]");
        let src = array
            .resolve(&format!("{field}.source"), &v.source, v.create)
            .map_err(|e| e.to_string())?;
        let target =
            validate_target(&format!("{field}.target"), &v.target).map_err(|e| e.to_string())?;
        let rel = target.strip_prefix("/").unwrap_or(&target).to_owned();
        let src_dir = is_dir(&src).map_err(|e| format!("{field}.source: {e}"))?;
        let tgt = if src_dir {
            open_or_create_dirs(rootfs, &rel, no_links, true)
        } else {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let name = rel
                .file_name()
                .ok_or_else(|| format!("{field}.target: no file name"))?;
            open_or_create_dirs(rootfs, parent, no_links, true).and_then(|p| {
                nix::fcntl::openat(
                    Some(p.as_raw_fd()),
                    name,
                    OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map(crate::fsutil::owned)
            })
        }
        .map_err(|e| match e {
            Errno::ELOOP => format!(
                "{field}.target: {} is a symlink in the image; refusing to mount over it",
                v.target
            ),
            e => format!("{field}.target: cannot prepare {}: {e}", v.target),
        })?;
        if is_dir(&tgt).map_err(|e| format!("{field}.target: {e}"))? != src_dir {
            return Err(format!(
                "{field}: source and target {} are not both directories or both files",
                v.target
            ));
        }
        mount(
            Some(proc_fd_path(&src).as_str()),
            proc_fd_path(&tgt).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("{field}: cannot bind-mount {}: {e}", v.source))?;
        // Re-open the target: now the root of the new mount; remount it nosuid,nodev (and ro).
        let mounted = open_beneath(rootfs, &rel, OFlag::O_PATH, no_links)
            .map_err(|e| format!("{field}.target: cannot reopen {}: {e}", v.target))?;
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if v.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(
            None::<&str>,
            proc_fd_path(&mounted).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("{field}: cannot remount {} with its options: {e}", v.target))?;
    }
    Ok(())
}

/// stdin ← /dev/null, stdout and stderr → the container log (appending).
fn redirect_stdio(paths: &ContainerPaths) -> Result<(), String> {
    let null = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())
        .map_err(|e| format!("cannot open {}: {e}", paths.log().display()))?;
    for (fd, to) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        dup2(fd, to).map_err(|e| format!("cannot set up stdio: {e}"))?;
    }
    Ok(())
}
