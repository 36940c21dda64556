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
