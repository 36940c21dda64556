//! A container's processes as the host's `/proc` shows them (`GET /v1/containers/{id}/top`, the
//! Docker API's `top` and `stats`): pids come from the container's cgroup, everything else from
//! `/proc/<pid>/{stat,status,cmdline}`. Read-only, no process is entered or signalled; one that
//! ends while it is read is left out.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One process of a container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Process {
    /// The host's pid.
    pub pid: i32,
    pub ppid: i32,
    /// The real uid (on the host: containers run without a user namespace).
    pub uid: u32,
    /// `R`, `S`, `D`, `Z`, … as `ps` shows it.
    pub state: String,
    /// `pts/N` for a terminal of the container's devpts; none without one.
    pub tty: Option<String>,
    /// CPU time used, user and system.
    pub cpu_ns: u64,
    pub started_at: DateTime<Utc>,
    /// The command line; `[name]` for a process without one (a zombie).
    pub command: Vec<String>,
}

/// The processes of `pids` (sorted by pid), each read from `proc` (normally `/proc`).
pub fn list(proc: &Path, pids: &[i32]) -> Vec<Process> {
    let clock = Clock::now(proc);
    let mut out: Vec<Process> = pids.iter().filter_map(|&p| read(proc, p, &clock)).collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The host's CPU time in all (every CPU, every mode) since boot, as `/proc/stat` counts it:
/// the denominator of Docker's CPU percentage.
pub fn system_cpu_ns(proc: &Path) -> u64 {
    std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("cpu "))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum(),
            )
        })
        .map_or(0, |ticks: u64| ticks.saturating_mul(ns_per_tick()))
}

/// Nanoseconds of one clock tick of `/proc` (USER_HZ).
fn ns_per_tick() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    let hz = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as u64;
    1_000_000_000 / hz
}

/// What turns a process's start (ticks after boot) into a time.
struct Clock {
    boot: i64,
    ns_per_tick: u64,
}

impl Clock {
    fn now(proc: &Path) -> Self {
        let boot = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        Self {
            boot,
            ns_per_tick: ns_per_tick(),
        }
    }
}

fn read(proc: &Path, pid: i32, clock: &Clock) -> Option<Process> {
    let dir = proc.join(pid.to_string());
    let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_uid(&s))
        .unwrap_or(0);
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let mut command: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if command.is_empty() {
        command.push(format!("[{}]", stat.name));
    }
    let start_ns = stat.start_ticks.saturating_mul(clock.ns_per_tick);
    let started_at = DateTime::from_timestamp(
        clock.boot + (start_ns / 1_000_000_000) as i64,
        (start_ns % 1_000_000_000) as u32,
    )
    .unwrap_or_default();
    Some(Process {
        pid,
        ppid: stat.ppid,
        uid,
        state: stat.state.to_string(),
        tty: tty_name(stat.tty_nr),
        cpu_ns: stat.cpu_ticks.saturating_mul(clock.ns_per_tick),
        started_at,
        command,
    })
}

/// The fields of `/proc/<pid>/stat` that `top` shows.
#[derive(Debug, PartialEq)]
struct Stat {
    name: String,
    state: char,
    ppid: i32,
    tty_nr: u64,
    /// utime + stime.
    cpu_ticks: u64,
    /// Start after boot.
    start_ticks: u64,
}

/// `pid (comm) state ppid pgrp session tty_nr … utime(14) stime(15) … starttime(22) …`; the
/// name may hold spaces and parentheses, so the fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let f: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        name,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        tty_nr: num(7)?,
        cpu_ticks: num(14)? + num(15)?,
        start_ticks: num(22)?,
    })
}

fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A controlling terminal's name from `tty_nr` (pseudo-terminals: major 136–143).
fn tty_name(tty_nr: u64) -> Option<String> {
    if tty_nr == 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    Some(match major {
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        _ => format!("{major}:{minor}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_name_of_spaces_and_parentheses() {
        let line = "4242 (my (odd) name) S 4200 4242 4242 34817 4242 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 123456 4000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                name: "my (odd) name".into(),
                state: 'S',
                ppid: 4200,
                tty_nr: 34817,
                cpu_ticks: 300,
                start_ticks: 123456,
            }
        );
        assert_eq!(tty_name(34817).as_deref(), Some("pts/1"));
        assert_eq!(tty_name(0), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn the_uid_is_the_real_one() {
        assert_eq!(
            parse_uid("Name:\tsh\nUid:\t1000\t0\t0\t0\nGid:\t0\n"),
            Some(1000)
        );
        assert_eq!(parse_uid("Name:\tsh\n"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id() as i32;
        let procs = list(Path::new("/proc"), &[me, i32::MAX]);
        assert_eq!(procs.len(), 1, "a pid that does not exist is left out");
        let p = &procs[0];
        assert_eq!(p.pid, me);
        assert_eq!(p.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert!(p.started_at <= Utc::now() && p.started_at.timestamp() > 1_600_000_000);
        assert!(!p.command.is_empty());
        assert!(system_cpu_ns(Path::new("/proc")) > p.cpu_ns);
    }
}
