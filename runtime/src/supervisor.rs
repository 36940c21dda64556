//! The daemon's side of the shim protocol: spawn a shim, read its report, learn when it is gone.
//!
//! The daemon never parents containers. It spawns `inarray-shim DIR` (from the sealed copy of the
//! shim executable), reads one JSON line from the shim's stdout, and from then on watches the shim
//! with a pidfd. The shim's `exit.json` is the durable record of how the container ended, so an exit is
//! never lost, whether the daemon was watching at that moment or not.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use inarray_shim::protocol::is_same_process;
/// How long a shim may take to answer a control request (an exec's start included).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request on a shim's control socket and reads its one-line answer; the connection
/// is returned as it is after that line (it carries a process's stdio after an attach).
pub async fn control(
    socket: &Path,
    req: &CtlRequest,
) -> io::Result<(CtlReply, tokio::net::UnixStream)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let read = async {
        // Byte by byte: nothing after the line may be consumed (the stream follows it).
        let mut answer = Vec::with_capacity(128);
        loop {
            let b = stream.read_u8().await?;
            if b == b'\n' {
                break;
            }
            if answer.len() >= 64 * 1024 {
                return Err(io::Error::other("the shim's answer is too long"));
            }
            answer.push(b);
        }
        serde_json::from_slice::<CtlReply>(&answer).map_err(io::Error::other)
    };
    let reply = tokio::time::timeout(CONTROL_TIMEOUT, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the shim did not answer"))??;
    Ok((reply, stream))
}

#[cfg(test)]
use inarray_shim::protocol::process_start_time;
use inarray_shim::protocol::{CtlReply, CtlRequest, ExitRecord, ShimRecord, ShimReport};
use inarray_shim::ContainerPaths;

/// How long a shim may take to report that its container runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot spawn the shim: {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("the shim did not report within {0:?}")]
    Timeout(Duration),
    #[error("the shim exited without a report (see shim.log in the container's state directory)")]
    NoReport(String),
    /// The shim's own report; `cause` is the errno of the failing system call, where it sent one.
    #[error("{message}")]
    StartFailed {
        message: String,
        #[source]
        cause: Option<io::Error>,
    },
}

/// The rest of a shim's report pipe: it carries one more line, or ends, when the container has
/// exited (the exit record is written by then). Lets the daemon learn an exit before the shim
/// has finished tearing the runtime state down.
pub struct ExitPipe(BufReader<tokio::process::ChildStdout>);

impl ExitPipe {
    /// Resolves when the container has exited or the shim has died.
    pub async fn exited(mut self) {
        let mut line = String::new();
        let _ = self.0.read_line(&mut line).await;
    }
}

/// Spawns a shim for the container in `paths` and waits for its report.
pub async fn spawn_shim(
    exe: &Path,
    paths: &ContainerPaths,
) -> Result<(ShimRecord, ExitPipe), SupervisorError> {
    let diag = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.shim_log());
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg0(inarray_shim::EXE_NAME)
        .arg(&paths.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(diag.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
        exe: exe.display().to_string(),
        source,
    })?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
    // The first process exits right after forking the supervisor: reap it.
    let _ = child.wait().await;
    match read {
        Err(_) => Err(SupervisorError::Timeout(START_TIMEOUT)),
        Ok(Err(_)) | Ok(Ok(0)) => Err(SupervisorError::NoReport(
            paths.shim_log().display().to_string(),
        )),
        Ok(Ok(_)) => match serde_json::from_str::<ShimReport>(line.trim()) {
            Ok(ShimReport::Started(rec)) => Ok((rec, ExitPipe(stdout))),
            Ok(ShimReport::Failed { error, errno }) => Err(SupervisorError::StartFailed {
                message: error,
                cause: errno.map(std::io::Error::from_raw_os_error),
            }),
            Ok(ShimReport::Exited(_)) => Err(SupervisorError::NoReport(
                paths.shim_log().display().to_string(),
            )),
            Err(_) => Err(SupervisorError::NoReport(
                paths.shim_log().display().to_string(),
            )),
        },
    }
}

/// Resolves once the shim `rec` describes has exited (at once if it is already gone).
pub async fn wait_shim_gone(rec: ShimRecord) {
    let Ok(fd) = inarray_sys::pidfd_open(rec.shim_pid) else {
        return;
    };
    // Checked after opening the pidfd: if the pid had been reused, the start time differs.
    if !is_same_process(rec.shim_pid, rec.shim_start) {
        return;
    }
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and refers to the same
    // pidfd for the AsyncFd's whole lifetime, and OwnedFd::as_raw_fd always returns that fd.
    match unsafe { AsyncFd::register(fd) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            // No reactor support for this fd: poll instead.
            while is_same_process(rec.shim_pid, rec.shim_start) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub fn read_exit_record(paths: &ContainerPaths) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(paths.exit_record()).ok()?).ok()
}

pub fn read_shim_record(paths: &ContainerPaths) -> Option<ShimRecord> {
    serde_json::from_slice(&std::fs::read(paths.shim_record()).ok()?).ok()
}

/// Sends `sig` to the container's init, if the shim that supervises it is still alive (a dead shim
/// means the pid may already belong to someone else).
pub fn signal(rec: ShimRecord, sig: nix::sys::signal::Signal) -> nix::Result<()> {
    if !is_same_process(rec.shim_pid, rec.shim_start) {
        return Err(nix::errno::Errno::ESRCH);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.pid), sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pidfd_wait_sees_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let rec = ShimRecord {
            pid,
            shim_pid: pid,
            shim_start: process_start_time(pid).unwrap(),
        };
        let waiter = tokio::spawn(wait_shim_gone(rec));
        // The child is ours: reap it so the pidfd reports the exit.
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
