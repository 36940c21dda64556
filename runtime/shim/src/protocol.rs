//! What the daemon and a shim tell each other, and the records a shim leaves for the daemon.
//!
//! The daemon writes `shim.json` ([`ShimConfig`]) and spawns `inarray-shim DIR`; the shim answers
//! one JSON line on its stdout ([`ShimReport`]: started or failed), keeps the pipe open while the
//! container runs and sends one more line ([`ShimReport::Exited`]) when it has exited. The durable
//! truth about the process is in files the shim writes atomically: `shim-pid.json`
//! ([`ShimRecord`]) once the container runs and `exit.json` ([`ExitRecord`]) when it has ended.
//! These formats are read by daemons of later versions (live restore across an upgrade): fields
//! are only ever added, with defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::volumes::Volume;

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
    /// How the init's stdio is wired. Absent from the configs of older daemons: output straight
    /// to the log, stdin from /dev/null.
    #[serde(default)]
    pub stdio: StdioConfig,
    /// At most this many execs run in the container at once (0: the default).
    #[serde(default)]
    pub max_execs: u32,
    /// How big the container log may grow (rotated by size).
    #[serde(default)]
    pub log: crate::logfile::LogLimits,
    /// Files of the daemon's (in the container's directory) bound over files of the container
    /// (/etc/hosts, /etc/resolv.conf, /etc/hostname of a container on a bridge network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileBind>,
}

/// A daemon file bound over a file of the container (a symlink there is replaced, not followed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileBind {
    /// An absolute path on the node, written by the daemon.
    pub source: PathBuf,
    /// An absolute path in the container.
    pub target: String,
}

/// The init's stdio. The shim always holds the other ends — a terminal's master, or pipes —
/// writes the output to the log (`logfile.rs`) and to attached clients, and feeds attached
/// clients' input to it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StdioConfig {
    /// A terminal: the shim keeps the master side.
    #[serde(default)]
    pub tty: bool,
    /// Stdin stays open for attached clients.
    #[serde(default)]
    pub stdin: bool,
    /// Hold the output until the first client attaches (at most [`HOLD_LIMIT_MS`]), so that a
    /// start-and-attach misses nothing — also when the process has exited by then: the shim
    /// (and so the container's exit) waits for that client or the limit.
    #[serde(default)]
    pub hold: bool,
}

/// How long a held output waits for its first client.
pub const HOLD_LIMIT_MS: u64 = 5000;

/// The default cap on concurrent execs per container.
pub const DEFAULT_MAX_EXECS: u32 = 32;

/// A request on the shim's control socket: one JSON line; the shim answers one JSON line
/// ([`CtlReply`]). After a successful `exec` with `attach` or an `attach`, the connection carries
/// the process's stdio: from the daemon, raw stdin bytes (a half-close closes a non-terminal
/// stdin); from the shim, frames ([`FRAME_HEADER`]) of stdout (1) and stderr (2). The shim
/// closes it once the process has exited and its output is drained.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CtlRequest {
    /// Start a process in the running container.
    Exec {
        id: String,
        process: ExecProcess,
        attach: bool,
    },
    /// Attach to the init's stdio (relayed containers only).
    Attach { stdin: bool },
    /// Send `signal` to a running exec (a health probe past its timeout).
    Kill { exec: String, signal: i32 },
    /// Set the terminal size of the init (`exec: None`) or of an exec.
    Resize {
        #[serde(default)]
        exec: Option<String>,
        rows: u16,
        cols: u16,
    },
}

/// What an exec runs. Everything else about the process — capabilities, no_new_privileges,
/// rlimits, the seccomp profile, an AppArmor profile, the base environment — is the container's
/// own, read from its runtime spec, exactly as its init got it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecProcess {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries over the container's environment (same key: these win).
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute; the container's working directory when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
}

/// The shim's answer to a [`CtlRequest`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CtlReply {
    /// The exec's pid (in the daemon's pid namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of refusal: `not_running`, `too_many`, `not_found`, `not_tty`, `invalid`,
    /// `not_relayed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl CtlReply {
    pub fn refused(code: &str, error: impl Into<String>) -> Self {
        Self {
            pid: None,
            error: Some(error.into()),
            code: Some(code.to_owned()),
        }
    }
}

/// Output frames on an attached stream: `[stream, 0, 0, 0, len as u32 big-endian]` then `len`
/// bytes — Docker's "stdcopy" framing, so that the daemon passes non-terminal streams through.
pub const FRAME_HEADER: usize = 8;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// The header of a frame of `len` bytes of `stream`.
pub fn frame_header(stream: u8, len: usize) -> [u8; FRAME_HEADER] {
    let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [stream, 0, 0, 0, n[0], n[1], n[2], n[3]]
}

/// A line the shim sends the daemon on its report pipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShimReport {
    Started(ShimRecord),
    Failed {
        error: String,
        /// The errno of the system call that failed, where one did (ENOSPC: a full disk).
        /// Absent from the reports of shims older than this field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<i32>,
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

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` is alive and is the one that started at `start`.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    process_start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).unwrap();
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
        assert_eq!(process_start_time(-5), None);
    }

    #[test]
    fn records_of_earlier_shims_still_parse() {
        // As written by the shims of earlier daemons (live restore reads them after an upgrade).
        let rec: ShimRecord =
            serde_json::from_str(r#"{"pid":41,"shim_pid":40,"shim_start":123456}"#).unwrap();
        assert_eq!(
            rec,
            ShimRecord {
                pid: 41,
                shim_pid: 40,
                shim_start: 123456
            }
        );
        let exit: ExitRecord = serde_json::from_str(
            r#"{"exit_code":137,"signal":9,"finished_at":"2026-12-03T10:00:00.5+00:00"}"#,
        )
        .unwrap();
        assert_eq!(
            (exit.exit_code, exit.signal, exit.oom_killed),
            (137, Some(9), false)
        );
        let line = serde_json::to_string(&ShimReport::Started(rec)).unwrap();
        assert_eq!(line, r#"{"pid":41,"shim_pid":40,"shim_start":123456}"#);
        match serde_json::from_str::<ShimReport>(r#"{"error":"no such image"}"#).unwrap() {
            ShimReport::Failed { error, errno } => {
                assert_eq!(error, "no such image");
                assert_eq!(errno, None, "an old report without the field still parses");
            }
            other => panic!("{other:?}"),
        }
        match serde_json::from_str::<ShimReport>(&serde_json::to_string(&exit).unwrap()).unwrap() {
            ShimReport::Exited(e) => assert_eq!(e.exit_code, 137),
            other => panic!("{other:?}"),
        }
    }
}
