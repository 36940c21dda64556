//! Processes started in a running container (exec). An exec joins the init's cgroups and
//! namespaces and takes the container's own process rules from its runtime spec — rlimits,
//! no_new_privileges, the user switch, capabilities, an AppArmor profile, the seccomp profile —
//! in the order libcontainer's init applies them, through libcontainer's public helpers.
//!
//! Not libcontainer's tenant builder: in libcontainer 0.7 it rebuilds the spec's `linux`
//! section from the namespaces and cgroup path only, so an exec would run *without* the
//! container's seccomp profile; it also forks twice more and round-trips through notify
//! sockets. See docs/design/exec.md.
//!
//! The shim forks an intermediate child that joins the cgroups (every hierarchy the init is in)
//! and the namespaces (through a pidfd of the init, all at once); the intermediate forks the
//! process itself — the first process forked inside the container's pid namespace — reports its
//! pid and exits, so the shim (a child subreaper) adopts and reaps it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use inarray_sys::{open_beneath, OFlag, ResolveFlag};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{dup2, fork, pipe2, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

use crate::paths::ContainerPaths;
use crate::protocol::ExecProcess;

/// How long an exec may take from fork to its `execve`.
const START_LIMIT_MS: u16 = 10_000;

/// What an exec joins: the container's init, its namespaces and cgroups, and its process rules.
pub(crate) struct Sandbox {
    init: i32,
    pidfd: OwnedFd,
    namespaces: CloneFlags,
    cgroup_procs: Vec<PathBuf>,
    process: Process,
    seccomp: Option<LinuxSeccomp>,
}

/// The shim's ends of a started process's stdio.
pub(crate) struct ProcessIo {
    /// Where input goes: the pipe to its stdin, or the terminal's master.
    pub stdin: Option<OwnedFd>,
    /// Output sources with their stream number (1 stdout, 2 stderr); a terminal has one.
    pub outputs: Vec<(OwnedFd, u8)>,
    /// The terminal's master, for resizing.
    pub tty: Option<OwnedFd>,
}

impl Sandbox {
    /// Reads what an exec in the container whose init is `init` joins.
    pub fn new(paths: &ContainerPaths, init: i32) -> Result<Self, String> {
        let spec = Spec::load(paths.bundle().join("config.json"))
            .map_err(|e| format!("cannot read the container's runtime spec: {e}"))?;
        let process = spec
            .process()
            .clone()
            .ok_or("the runtime spec has no process")?;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let pidfd = inarray_sys::pidfd_open(init)
            .map_err(|e| format!("the container's init is gone: {e}"))?;
        Ok(Self {
            init,
            pidfd,
            namespaces: namespaces_to_join(init)?,
            cgroup_procs: cgroup_procs_files(init)?,
            process,
            seccomp,
        })
    }

    /// Starts `p` in the container; returns its pid and the shim's ends of its stdio.
    pub fn spawn(&self, p: &ExecProcess) -> Result<(i32, ProcessIo), String> {
        if p.args.is_empty() {
            return Err("command: must not be empty".into());
        }
        let env = self.environment(p);
        let cwd = p
            .cwd
            .clone()
            .unwrap_or_else(|| self.process.cwd().display().to_string());
        if !cwd.starts_with('/') {
            return Err(format!("workdir: {cwd} is not absolute"));
        }
        let (child_io, io) = if p.tty {
            let master = self.open_terminal()?;
            let slave = inarray_sys::pty_peer(&master)
                .map_err(|e| format!("cannot open the terminal's peer: {e}"))?;
            // Until the client sends its size: the classic terminal, not 0x0.
            let _ = inarray_sys::set_window_size(&master, 24, 80);
            let dup = |fd: &OwnedFd| inarray_sys::dup(fd).map_err(|e| format!("dup: {e}"));
            let io = ProcessIo {
                stdin: if p.stdin { Some(dup(&master)?) } else { None },
                outputs: vec![(dup(&master)?, crate::protocol::STDOUT)],
                tty: Some(master),
            };
            ([dup(&slave)?, dup(&slave)?, slave], io)
        } else {
            let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
            let (in_r, in_w) = if p.stdin {
                let (r, w) = pipe()?;
                (r, Some(w))
            } else {
                let null = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
                (OwnedFd::from(null), None)
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let io = ProcessIo {
                stdin: in_w,
                outputs: vec![
                    (out_r, crate::protocol::STDOUT),
                    (err_r, crate::protocol::STDERR),
                ],
                tty: None,
            };
            ([in_r, out_w, err_w], io)
        };
        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: the shim is single-threaded, so the child may run arbitrary code after fork.
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(status_r);
                let mut status = File::from(status_w);
                let err = self.intermediate(p, &env, &cwd, &child_io, &mut status);
                let _ = write!(status, "E{err}");
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(1) }
            }
            ForkResult::Parent { child } => {
                drop(status_w);
                drop(child_io);
                let answer = read_status(status_r);
                let _ = waitpid(child, None);
                parse_status(&answer).map(|pid| (pid, io))
            }
        }
    }

    /// The container's environment with the exec's entries over it, and HOME when unset.
    fn environment(&self, p: &ExecProcess) -> Vec<String> {
        let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_owned();
        let mut env: Vec<String> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        let base = self.process.env().clone().unwrap_or_default();
        for kv in base.iter().chain(p.env.iter()) {
            match at.get(&key(kv)) {
                Some(&i) => env[i] = kv.clone(),
                None => {
                    at.insert(key(kv), env.len());
                    env.push(kv.clone());
                }
            }
        }
        if !at.contains_key("HOME") {
            env.push(if p.uid == 0 { "HOME=/root" } else { "HOME=/" }.into());
        }
        env
    }

    /// A new pseudo-terminal of the container's own devpts instance, so that the process sees
    /// its terminal as a `/dev/pts/N` of the container. Looked up in the container's root
    /// (symlinks resolved inside it), and checked to be a pty multiplexer.
    fn open_terminal(&self) -> Result<OwnedFd, String> {
        let root = inarray_sys::open(
            Path::new(&format!("/proc/{}/root", self.init)),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open the container's root: {e}"))?;
        let master = open_beneath(
            &root,
            Path::new("dev/pts/ptmx"),
            OFlag::O_RDWR | OFlag::O_NONBLOCK,
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| format!("cannot open the container's /dev/pts/ptmx: {e}"))?;
        let meta = File::from(inarray_sys::dup(&master).map_err(|e| format!("dup: {e}"))?)
            .metadata()
            .map_err(|e| format!("fstat: {e}"))?;
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        if meta.mode() & libc::S_IFMT != libc::S_IFCHR || (major, minor) != (5, 2) {
            return Err("the container's /dev/pts/ptmx is not a terminal multiplexer".into());
        }
        Ok(master)
    }

    /// In the intermediate child: join the cgroups and namespaces, fork the process itself,
    /// report its pid. Returns only on failure.
    fn intermediate(
        &self,
        p: &ExecProcess,
        env: &[String],
        cwd: &str,
        stdio: &[OwnedFd; 3],
        status: &mut File,
    ) -> String {
        let me = std::process::id().to_string();
        for f in &self.cgroup_procs {
            if let Err(e) = std::fs::write(f, &me) {
                return format!("cannot join the cgroup {}: {e}", f.display());
            }
        }
        if let Err(e) = nix::sched::setns(self.pidfd.as_fd(), self.namespaces) {
            return format!("cannot join the container's namespaces: {e}");
        }
        // SAFETY: this child is single-threaded (forked from the single-threaded shim).
        match unsafe { fork() } {
            Err(e) => format!("fork in the container: {e}"),
            Ok(ForkResult::Parent { child }) => {
                let _ = writeln!(status, "P{child}");
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Child) => {
                let err = self.become_process(p, env, cwd, stdio);
                let _ = write!(status, "E{err}");
                // SAFETY: as above.
                unsafe { libc::_exit(1) }
            }
        }
    }

    /// In the process, inside the container: set up stdio, the user and the container's rules,
    /// then exec. Returns only on a failure before the program is looked up; a program that
    /// cannot be found or run ends the process with 127 or 126 and a message on its stderr.
    fn become_process(
        &self,
        p: &ExecProcess,
        env: &[String],
        cwd: &str,
        io: &[OwnedFd; 3],
    ) -> String {
        let sys = libcontainer::syscall::syscall::create_syscall();
        if let Err(e) = nix::unistd::setsid() {
            return format!("setsid: {e}");
        }
        if p.tty {
            if let Err(e) = inarray_sys::set_controlling_tty(&io[0]) {
                return format!("cannot make the terminal the controlling one: {e}");
            }
        }
        for (fd, to) in io.iter().zip(0..) {
            if let Err(e) = dup2(fd.as_raw_fd(), to) {
                return format!("cannot set up stdio: {e}");
            }
        }
        // Nothing of the shim's reaches the program (descriptors 3 and up close at exec).
        if let Err(e) = sys.close_range(0) {
            return format!("cannot mark descriptors close-on-exec: {e}");
        }
        for r in self.process.rlimits().iter().flatten() {
            if let Err(e) = sys.set_rlimit(r) {
                return format!("cannot set {:?}: {e}", r.typ());
            }
        }
        if self.process.no_new_privileges() == Some(true) {
            if let Err(e) = nix::sys::prctl::set_no_new_privs() {
                return format!("cannot set no_new_privs: {e}");
            }
        }
        let groups: Vec<Gid> = p
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        if let Err(e) = sys.set_groups(&groups) {
            return format!("cannot set the supplementary groups: {e}");
        }
        if let Err(e) = sys.set_id(Uid::from_raw(p.uid), Gid::from_raw(p.gid)) {
            return format!("cannot switch to user {}:{}: {e}", p.uid, p.gid);
        }
        if let Err(e) = nix::unistd::chdir(cwd) {
            return format!("workdir {cwd}: {e}");
        }
        if let Some(profile) = self.process.apparmor_profile() {
            if let Err(e) = libcontainer::apparmor::apply_profile(profile) {
                return format!("cannot apply the AppArmor profile {profile}: {e}");
            }
        }
        if let Err(e) = libcontainer::capabilities::reset_effective(sys.as_ref()) {
            return format!("cannot reset the capabilities: {e}");
        }
        if let Some(caps) = self.process.capabilities() {
            if let Err(e) = libcontainer::capabilities::drop_privileges(caps, sys.as_ref()) {
                return format!("cannot drop capabilities: {e}");
            }
        }
        // As close to the exec as possible: from here on the profile filters every call.
        if let Some(profile) = &self.seccomp {
            if let Err(e) = libcontainer::seccomp::initialize_seccomp(profile) {
                return format!("cannot apply the seccomp profile: {e}");
            }
        }
        exec_program(&p.args, env)
    }
}

/// `execve` of `args[0]`, looked up in the environment's PATH when it has no `/` (as a shell
/// would). Only returns if nothing could be executed: then the process ends with 127 (not
/// found) or 126 (found, not executable) and a message on its stderr, as a shell does.
fn exec_program(args: &[String], env: &[String]) -> ! {
    use std::ffi::CString;
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = env.iter().map(|e| cstr(e)).collect();
    let prog = &args[0];
    let candidates: Vec<String> = if prog.contains('/') {
        vec![prog.clone()]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{prog}"))
            .collect()
    };
    let mut denied = false;
    for c in &candidates {
        match nix::unistd::execve(&cstr(c), &argv, &envp) {
            Err(Errno::EACCES) => denied = true,
            Err(_) => {}
            Ok(never) => match never {},
        }
    }
    let (code, why) = if denied {
        (126, "permission denied")
    } else if prog.contains('/') {
        (127, "no such file or directory")
    } else {
        (127, "executable file not found in $PATH")
    };
    let _ = writeln!(std::io::stderr(), "exec: {prog:?}: {why}");
    // SAFETY: _exit ends the forked process without running the shim's destructors.
    unsafe { libc::_exit(code) }
}

/// Reads the status pipe until it closes (the process has exec'd, or failed) or the limit.
fn read_status(fd: OwnedFd) -> String {
    let mut file = File::from(fd);
    let mut out = Vec::new();
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(START_LIMIT_MS.into());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                out.extend_from_slice(b"Etimed out starting the process");
                break;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                out.extend_from_slice(format!("Epoll: {e}").as_bytes());
                break;
            }
            Ok(_) => {}
        }
        let mut buf = [0u8; 4096];
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.extend_from_slice(format!("Eread: {e}").as_bytes());
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `P<pid>\n` then nothing (exec'd), or `E<message>` (after a `P` line when the process itself
/// failed, which is then killed).
fn parse_status(s: &str) -> Result<i32, String> {
    let (pid_line, rest) = s.split_once('\n').unwrap_or(("", s));
    let pid = pid_line
        .strip_prefix('P')
        .and_then(|p| p.parse::<i32>().ok());
    match (pid, rest.strip_prefix('E').or_else(|| s.strip_prefix('E'))) {
        (Some(pid), None) if rest.is_empty() => Ok(pid),
        (pid, err) => {
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Err(err.unwrap_or("the process did not start").to_owned())
        }
    }
}

/// The namespaces of `init` that differ from the shim's own (a container on the host network
/// shares the shim's).
fn namespaces_to_join(init: i32) -> Result<CloneFlags, String> {
    let kinds = [
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("net", CloneFlags::CLONE_NEWNET),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ];
    let mut flags = CloneFlags::empty();
    for (name, flag) in kinds {
        let theirs = std::fs::metadata(format!("/proc/{init}/ns/{name}"))
            .map_err(|e| format!("cannot read the init's {name} namespace: {e}"))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(|e| format!("cannot read the shim's {name} namespace: {e}"))?;
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            flags |= flag;
        }
    }
    Ok(flags)
}

/// The `cgroup.procs` files of every cgroup `init` is in, one per hierarchy.
fn cgroup_procs_files(init: i32) -> Result<Vec<PathBuf>, String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup"))
        .map_err(|e| format!("cannot read the init's cgroups: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read the mount table: {e}"))?;
    Ok(cgroup_procs_in(&cgroups, &mountinfo))
}

/// Pure part of [`cgroup_procs_files`]: `/proc/PID/cgroup` lines matched with the cgroup mounts
/// of a mountinfo table.
fn cgroup_procs_in(cgroups: &str, mountinfo: &str) -> Vec<PathBuf> {
    // (fs type, super options, mount root, mount point)
    let mounts: Vec<(&str, Vec<&str>, &str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (fstype, opts) = (*post.first()?, post.get(2)?.split(',').collect());
            Some((fstype, opts, *pre.get(3)?, *pre.get(4)?))
        })
        .filter(|(t, ..)| *t == "cgroup" || *t == "cgroup2")
        .collect();
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(c), Some(p)) => (id, c, p),
            _ => continue,
        };
        let found = mounts.iter().find(|(t, opts, root, _)| {
            let kind = if controllers.is_empty() {
                *t == "cgroup2"
            } else {
                *t == "cgroup" && controllers.split(',').all(|c| opts.contains(&c))
            };
            kind && (path == *root || path.starts_with(&format!("{}/", root.trim_end_matches('/'))))
        });
        if let Some((_, _, root, point)) = found {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .trim_start_matches('/');
            let dir = Path::new(point.replace("\\040", " ").as_str()).join(rel);
            out.push(dir.join("cgroup.procs"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_of_a_hybrid_host() {
        let mountinfo = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
40 30 0:50 / /tmp/x rw - ext4 /dev/sda1 rw";
        let cgroups = "\
12:pids:/inarray/default/abc
4:cpu,cpuacct:/inarray/default/abc
1:name=systemd:/system.slice/x.service
0::/system.slice/x.service
9:rdma:/";
        let files = cgroup_procs_in(cgroups, mountinfo);
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/pids/inarray/default/abc/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/inarray/default/abc/cgroup.procs",
                "/sys/fs/cgroup/systemd/system.slice/x.service/cgroup.procs",
                "/sys/fs/cgroup/unified/system.slice/x.service/cgroup.procs",
            ],
            "rdma is not mounted: skipped"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("P42\n"), Ok(42));
        assert_eq!(
            parse_status("Ecannot join the cgroup x: EACCES"),
            Err("cannot join the cgroup x: EACCES".into())
        );
        assert_eq!(parse_status(""), Err("the process did not start".into()));
        // The process itself failed after its pid was reported (pid 0 is never killed here:
        // a pid the kernel would read as "the process group" must not reach kill).
        assert!(parse_status("P2147483647\nEworkdir /x: ENOENT").is_err());
    }
}
