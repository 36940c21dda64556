//! Everything up to a running container, in the shim's own mount namespace: the overlay root,
//! the volume binds made through opened fds, stdio, and libcontainer's create and start. The only
//! code that calls libcontainer.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use inarray_sys::{is_dir, open_beneath, open_or_create_dirs, proc_fd_path};
use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::dup2;

use crate::exec::ProcessIo;
use crate::logfile::LogWriter;
use crate::paths::ContainerPaths;
use crate::protocol::{process_start_time, ShimConfig, ShimRecord, StdioConfig};
use crate::volumes::{validate_target, ArrayRoot};

/// The container libcontainer created and started, and what the shim needs after its exit.
pub(crate) struct Started {
    pub container: libcontainer::container::Container,
    pub record: ShimRecord,
    /// The container's cgroup path (OOM kills are read there after the exit).
    pub cgroup: String,
    /// The shim's ends of the init's stdio.
    pub io: ProcessIo,
    /// The container log.
    pub log: LogWriter,
    /// The shim's instructions.
    pub config: ShimConfig,
}

/// Why a start failed: the operator's text, and the errno of the system call that failed where
/// one did (so the daemon classifies a full disk by kind, not by words).
#[derive(Debug)]
pub(crate) struct StartError {
    pub message: String,
    pub errno: Option<i32>,
}

impl StartError {
    /// `what` failed with the I/O error `e`.
    fn io(what: String, e: &std::io::Error) -> Self {
        Self {
            message: format!("{what}: {e}"),
            errno: e.raw_os_error(),
        }
    }
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        Self {
            message,
            errno: None,
        }
    }
}

impl From<&str> for StartError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Everything up to a running container; errors are reported to the daemon verbatim.
pub(crate) fn start(paths: &ContainerPaths) -> Result<Started, StartError> {
    let raw = std::fs::read(paths.shim_config()).map_err(|e| {
        StartError::io(format!("cannot read {}", paths.shim_config().display()), &e)
    })?;
    let cfg: ShimConfig =
        serde_json::from_slice(&raw).map_err(|e| format!("bad shim config: {e}"))?;
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
    let rootfs = inarray_sys::open(
        &paths.rootfs(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the rootfs: {e}"))?;
    check_rootfs(&rootfs)?;
    mount_volumes(&cfg, &rootfs)?;
    mount_files(&cfg, &rootfs)?;
    drop(rootfs);
    redirect_stdio()?;
    // Opened before the container exists: a full disk or a bad limit is a start error.
    cfg.log
        .validate()
        .map_err(|e| StartError::from(format!("bad shim config: {e}")))?;
    let log = LogWriter::open(&paths.log(), cfg.log)
        .map_err(|e| StartError::io(format!("cannot open {}", paths.log().display()), &e))?;
    let _ = nix::sys::prctl::set_child_subreaper(true);
    std::fs::create_dir_all(&cfg.runtime_root)
        .map_err(|e| StartError::io(format!("cannot create {}", cfg.runtime_root.display()), &e))?;
    let stale = cfg.runtime_root.join(&cfg.id);
    if stale.exists() {
        // A previous run of this container that was not cleaned up (shim killed): start afresh.
        if let Ok(mut old) = libcontainer::container::Container::load(stale.clone()) {
            let _ = old.delete(true);
        }
        let _ = std::fs::remove_dir_all(&stale);
    }
    let mut builder = libcontainer::container::builder::ContainerBuilder::new(
        cfg.id.clone(),
        libcontainer::syscall::syscall::SyscallType::default(),
    )
    .with_root_path(&cfg.runtime_root)
    .and_then(|b| b.validate_id())
    .map_err(|e| format!("runtime: {e}"))?;
    let mut stdio = InitStdio::new(&cfg)?;
    builder = stdio.wire(builder)?;
    // The shim ignores SIGPIPE (it handles EPIPE); an ignored disposition would survive into
    // the container's processes, which expect the default.
    let pipe_default = ignore_sigpipe(false);
    let built = builder
        .as_init(paths.bundle())
        .with_systemd(false)
        .with_detach(true)
        .build();
    ignore_sigpipe(pipe_default);
    let mut container = built.map_err(|e| format!("cannot create the container: {e}"))?;
    let io = match stdio.finish() {
        Ok(io) => io,
        Err(e) => {
            let _ = container.delete(true);
            return Err(e);
        }
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(format!("cannot start the container: {e}").into());
    }
    let pid = container
        .pid()
        .ok_or("the runtime reported no pid")?
        .as_raw();
    let shim_pid = std::process::id() as i32;
    let shim_start = process_start_time(shim_pid).ok_or("cannot read the shim's own start time")?;
    Ok(Started {
        container,
        record: ShimRecord {
            pid,
            shim_pid,
            shim_start,
        },
        cgroup: cfg.cgroup.clone(),
        io,
        log,
        config: cfg,
    })
}

/// Sets SIGPIPE to ignored (`true`) or the default; returns whether it was ignored.
pub(crate) fn ignore_sigpipe(ignore: bool) -> bool {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let to = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: installs SIG_IGN or SIG_DFL, not a handler function: no code runs on delivery.
    let old = unsafe { signal(Signal::SIGPIPE, to) };
    matches!(old, Ok(SigHandler::SigIgn))
}

/// The init's stdio when the shim relays it: pipes, or a terminal whose master the runtime
/// sends over a console socket.
enum InitStdio {
    Pipes {
        child: Vec<OwnedFd>,
        io: Option<ProcessIo>,
    },
    Tty {
        path: std::path::PathBuf,
        listener: std::os::unix::net::UnixListener,
        stdin: bool,
    },
}

impl InitStdio {
    fn new(cfg: &ShimConfig) -> Result<Self, StartError> {
        let StdioConfig { tty, stdin, .. } = cfg.stdio;
        if tty {
            let path = cfg.runtime_root.join(format!("{}-tty.sock", cfg.id));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| StartError::io(format!("console socket {}", path.display()), &e))?;
            return Ok(Self::Tty {
                path,
                listener,
                stdin,
            });
        }
        let pipe = || {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StartError::from(format!("pipe: {e}")))
        };
        let (in_r, in_w) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null")
                .map_err(|e| StartError::io("cannot open /dev/null".into(), &e))?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(Self::Pipes {
            child: vec![in_r, out_w, err_w],
            io: Some(ProcessIo {
                stdin: in_w,
                outputs: vec![
                    (out_r, crate::protocol::STDOUT),
                    (err_r, crate::protocol::STDERR),
                ],
                tty: None,
            }),
        })
    }

    fn wire(
        &mut self,
        b: libcontainer::container::builder::ContainerBuilder,
    ) -> Result<libcontainer::container::builder::ContainerBuilder, StartError> {
        Ok(match self {
            Self::Pipes { child, .. } => {
                let dup = |fd: &OwnedFd| {
                    inarray_sys::dup(fd).map_err(|e| StartError::from(format!("dup: {e}")))
                };
                b.with_stdin(dup(&child[0])?)
                    .with_stdout(dup(&child[1])?)
                    .with_stderr(dup(&child[2])?)
            }
            Self::Tty { path, .. } => b.with_console_socket(Some(path.clone())),
        })
    }

    /// After the runtime created the container: the shim's ends.
    fn finish(self) -> Result<ProcessIo, StartError> {
        match self {
            Self::Pipes { io, .. } => io.ok_or_else(|| "the init's pipes are gone".into()),
            Self::Tty {
                path,
                listener,
                stdin,
            } => {
                let master = receive_console(&listener);
                let _ = std::fs::remove_file(&path);
                let master = master?;
                let _ = inarray_sys::set_window_size(&master, 24, 80);
                let dup = |fd: &OwnedFd| {
                    inarray_sys::dup(fd).map_err(|e| StartError::from(format!("dup: {e}")))
                };
                Ok(ProcessIo {
                    stdin: if stdin { Some(dup(&master)?) } else { None },
                    outputs: vec![(dup(&master)?, crate::protocol::STDOUT)],
                    tty: Some(master),
                })
            }
        }
    }
}

/// Receives the terminal master the container's init sent on the console socket.
fn receive_console(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, StartError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::io("console socket".into(), &e))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err("the runtime sent no terminal".into());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(StartError::io("console socket".into(), &e)),
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("cannot receive the terminal: {e}"))?;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("cannot receive the terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table just now; nothing
                // else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("the runtime sent no terminal".into())
}

fn mount_overlay(paths: &ContainerPaths, cfg: &ShimConfig) -> Result<(), StartError> {
    for d in [paths.rootfs(), paths.upper(), paths.work()] {
        std::fs::create_dir_all(&d)
            .map_err(|e| StartError::io(format!("cannot create {}", d.display()), &e))?;
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
            .map_err(|e| StartError::io(format!("cannot create {}", empty.display()), &e))?;
        lowers.push(empty.display().to_string());
    }
    if let Some(bad) = lowers.iter().find(|l| l.contains([',', ':'])) {
        return Err(
            format!("layer path {bad} contains ',' or ':' and cannot be an overlay lower").into(),
        );
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
    .map_err(|e| StartError {
        message: format!(
            "cannot mount the overlay root ({} layers): {e}",
            lowers.len()
        ),
        errno: Some(e as i32),
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
            .resolve_sub(&field, &v.source, v.subpath.as_deref(), v.create)
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
                inarray_sys::openat(
                    &p,
                    name,
                    OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
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

/// Binds the daemon's files (hosts, resolv.conf, hostname) over the container's: the target's
/// directories are opened without following symlinks, and a symlink at the target itself is
/// replaced by a file (in the container's upper layer), never followed.
fn mount_files(cfg: &ShimConfig, rootfs: &OwnedFd) -> Result<(), String> {
    let no_links = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS;
    for f in &cfg.files {
        let rel = Path::new(f.target.trim_start_matches('/'));
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(format!("bad file target {}", f.target));
        };
        let dir = open_or_create_dirs(rootfs, parent, no_links, true)
            .map_err(|e| format!("cannot prepare {}: {e}", f.target))?;
        let open = || {
            inarray_sys::openat(
                &dir,
                name,
                OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
        };
        let tgt = match open() {
            Err(Errno::ELOOP) => {
                nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .map_err(|e| format!("cannot replace the symlink {}: {e}", f.target))?;
                open()
            }
            other => other,
        }
        .map_err(|e| format!("cannot prepare {}: {e}", f.target))?;
        let src = inarray_sys::open(
            &f.source,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", f.source.display()))?;
        mount(
            Some(proc_fd_path(&src).as_str()),
            proc_fd_path(&tgt).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot bind {} over {}: {e}", f.source.display(), f.target))?;
    }
    Ok(())
}

/// The shim's own stdin and stdout ← /dev/null (its stderr stays the diagnostics file the daemon
/// gave it): the container's stdio are pipes or a terminal the shim relays to the log.
fn redirect_stdio() -> Result<(), StartError> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| StartError::io("cannot open /dev/null".into(), &e))?;
    for to in [0, 1] {
        dup2(null.as_raw_fd(), to).map_err(|e| format!("cannot set up stdio: {e}"))?;
    }
    Ok(())
}
