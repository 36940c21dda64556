//! The shim's life after it has been spawned: detach from the daemon, start the container
//! ([`crate::container`]), report, reap it, record how it ended, tear the runtime state down.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use inarray_sys::write_atomic;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setsid, ForkResult, Pid};

use crate::paths::ContainerPaths;
use crate::protocol::{ExitRecord, ShimReport};

/// Entry point of `inarray-shim DIR`; never returns.
pub fn main(dir: &Path) -> ! {
    // CVE-2019-5736: never run containers from an executable a container could overwrite.
    if !crate::sealed::running_sealed() {
        let e = crate::sealed::reexec_sealed();
        report_failure(&format!("shim: cannot re-exec from a sealed copy: {e}"));
        std::process::exit(1);
    }
    // Detach: the daemon waits for this first process only; the supervisor is the grandchild.
    // SAFETY: the shim is single-threaded at this point (a fresh exec, no thread started), so
    // the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report_failure(&format!("shim: fork: {e}"));
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
        Ok(fd) => File::from(unsafe { OwnedFd::from_raw_fd(fd) }),
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
    // The shim handles EPIPE itself (a daemon gone, a client gone).
    crate::container::ignore_sigpipe(true);
    let crate::container::Started {
        mut container,
        record: rec,
        cgroup,
        io,
        log: container_log,
        config,
    } = match crate::container::start(&paths) {
        Ok(x) => x,
        Err(e) => {
            log(&format!("start failed: {e}"));
            send(
                &ShimReport::Failed {
                    error: e.message,
                    errno: e.errno,
                },
                false,
            );
            std::process::exit(1);
        }
    };
    // The control socket exists before the daemon hears that the container runs.
    let ctl_path = crate::paths::control_socket(&config.runtime_root, &config.id);
    let _ = std::fs::remove_file(&ctl_path);
    let listener = match std::os::unix::net::UnixListener::bind(&ctl_path) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot bind {}: {e}", ctl_path.display()));
            let _ = container.kill(nix::sys::signal::Signal::SIGKILL, true);
            let _ = container.delete(true);
            send(
                &ShimReport::Failed {
                    error: format!(
                        "cannot create the control socket {}: {e}",
                        ctl_path.display()
                    ),
                    errno: e.raw_os_error(),
                },
                false,
            );
            std::process::exit(1);
        }
    };
    let relay = crate::relay::Relay::new(io, Some(container_log));
    if let Err(e) = write_atomic(
        &paths.shim_record(),
        serde_json::to_string(&rec).unwrap_or_default().as_bytes(),
    ) {
        log(&format!("cannot write shim record: {e}"));
    }
    send(&ShimReport::Started(rec), true);
    log(&format!("container started, pid {}", rec.pid));
    // From here on the shim only waits: let go of the pages starting the container touched.
    crate::memory::drop_clean_file_pages();
    let (exit_code, signal) = match crate::serve::Supervisor::new(
        &paths,
        Pid::from_raw(rec.pid),
        listener,
        Some(relay),
        config.stdio.hold,
        config.max_execs,
        &mut log,
    ) {
        Ok(s) => s.run(),
        Err(e) => {
            log(&format!(
                "cannot serve the control socket ({e}); only waiting"
            ));
            reap(Pid::from_raw(rec.pid))
        }
    };
    let _ = std::fs::remove_file(&ctl_path);
    // Read before the runtime deletes the cgroup.
    let oom_killed =
        crate::cgroup::oom_kills(Path::new(crate::cgroup::MOUNT_ROOT), &cgroup).unwrap_or(0) > 0;
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

/// Sends `{error}` on stdout, the report pipe (before the supervisor has detached).
fn report_failure(error: &str) {
    let line = serde_json::to_string(&ShimReport::Failed {
        error: error.to_owned(),
        errno: None,
    })
    .unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{line}");
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
