//! The shim's event loop while its container runs: the control socket (exec, attach, resize),
//! the relays of the init's and the execs' stdio, and reaping (SIGCHLD through a signalfd).
//! Single-threaded, non-blocking; one `poll(2)` per turn.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::exec::Sandbox;
use crate::paths::ContainerPaths;
use crate::protocol::{CtlReply, CtlRequest, ExitRecord, DEFAULT_MAX_EXECS};
use crate::relay::{Relay, Slot};

/// The longest request line a client may send.
const MAX_REQUEST: usize = 64 * 1024;
/// After this long without an exec, the pages that starting execs touched are let go again
/// (see `memory.rs`); not after every exec, so that a burst of execs does not fault them back
/// in each time.
const IDLE_TRIM: Duration = Duration::from_secs(30);

/// How long the output of an exited init may take to reach attached clients, and its execs
/// (killed by the kernel with it) to be reaped.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

struct Exec {
    id: String,
    relay: Relay,
}

/// A connection that has not sent its request line yet.
struct Pending {
    sock: UnixStream,
    buf: Vec<u8>,
}

pub(crate) struct Supervisor<'a> {
    paths: &'a ContainerPaths,
    init: Pid,
    listener: UnixListener,
    sigchld: SignalFd,
    sandbox: Option<Sandbox>,
    init_relay: Option<Relay>,
    hold_until: Option<Instant>,
    execs: HashMap<i32, Exec>,
    pending: Vec<Pending>,
    max_execs: usize,
    init_exit: Option<(i32, Option<i32>)>,
    /// When to drop the clean file pages again (set when the last exec has ended).
    trim_at: Option<Instant>,
    log: &'a mut dyn FnMut(&str),
}

#[derive(Clone, Copy)]
enum Token {
    Listener,
    Signal,
    Pending(usize),
    Init(Slot),
    Exec(i32, Slot),
}

impl<'a> Supervisor<'a> {
    /// Blocks SIGCHLD (read from a signalfd from now on) and takes over the control socket.
    pub fn new(
        paths: &'a ContainerPaths,
        init: Pid,
        listener: UnixListener,
        init_relay: Option<Relay>,
        hold: bool,
        max_execs: u32,
        log: &'a mut dyn FnMut(&str),
    ) -> Result<Self, String> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| format!("sigprocmask: {e}"))?;
        let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
        let _ = std::fs::create_dir_all(paths.execs());
        let max = if max_execs == 0 {
            DEFAULT_MAX_EXECS
        } else {
            max_execs
        };
        Ok(Self {
            paths,
            init,
            listener,
            sigchld,
            sandbox: None,
            hold_until: (hold && init_relay.is_some())
                .then(|| Instant::now() + Duration::from_millis(crate::protocol::HOLD_LIMIT_MS)),
            init_relay: init_relay.map(|mut r| {
                r.hold = hold;
                r
            }),
            execs: HashMap::new(),
            pending: Vec::new(),
            max_execs: max as usize,
            init_exit: None,
            trim_at: None,
            log,
        })
    }

    /// Runs until the init has exited and everything attached is done; returns its exit code
    /// and signal.
    pub fn run(mut self) -> (i32, Option<i32>) {
        self.reap();
        let mut final_deadline: Option<Instant> = None;
        loop {
            if let Some((code, signal)) = self.init_exit.filter(|_| self.hold_until.is_none()) {
                let deadline = *final_deadline.get_or_insert_with(|| Instant::now() + FINAL_FLUSH);
                let init_done = self.init_relay.as_mut().is_none_or(|r| r.finished());
                self.finish_execs();
                if (init_done && self.execs.is_empty()) || Instant::now() >= deadline {
                    self.record_unreaped_execs();
                    return (code, signal);
                }
            } else {
                // Running, or ended while its output is held for the client a start-and-attach
                // promised (until it attaches, at most the hold limit): an init that exits at
                // once must not end before its first client has seen its output.
                self.finish_execs();
            }
            let (mut fds, tokens) = self.interest();
            let timeout = self.timeout(final_deadline);
            // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if Errno::last() != Errno::EINTR {
                    (self.log)(&format!("poll: {}", Errno::last()));
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if let Some(t) = self.hold_until {
                if Instant::now() >= t {
                    self.release_hold();
                }
            }
            if self.trim_at.is_some_and(|t| Instant::now() >= t) {
                self.trim_at = None;
                crate::memory::drop_clean_file_pages();
            }
            let mut accepted = false;
            let mut finished_pending = Vec::new();
            for (p, token) in fds.iter().zip(tokens) {
                if p.revents == 0 {
                    continue;
                }
                match token {
                    Token::Listener => accepted = true,
                    Token::Signal => {
                        while let Ok(Some(_)) = self.sigchld.read_signal() {}
                        self.reap();
                    }
                    Token::Pending(i) => finished_pending.push(i),
                    Token::Init(slot) => {
                        if let Some(r) = self.init_relay.as_mut() {
                            r.ready(slot, p.revents);
                        }
                    }
                    Token::Exec(pid, slot) => {
                        if let Some(e) = self.execs.get_mut(&pid) {
                            e.relay.ready(slot, p.revents);
                        }
                    }
                }
            }
            for i in finished_pending.into_iter().rev() {
                self.read_request(i);
            }
            if accepted {
                self.accept();
            }
        }
    }

    fn timeout(&self, final_deadline: Option<Instant>) -> libc::c_int {
        let next = [self.hold_until, final_deadline, self.trim_at]
            .into_iter()
            .flatten()
            .min();
        match next {
            None => -1,
            Some(t) => {
                let mut ms = t.saturating_duration_since(Instant::now()).as_millis();
                if final_deadline.is_some() {
                    // Re-check every 50 ms while finishing (clients flushing).
                    ms = ms.min(50);
                }
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        }
    }

    fn interest(&self) -> (Vec<libc::pollfd>, Vec<Token>) {
        let mut want: Vec<(RawFd, i16, Token)> = vec![
            (self.listener.as_raw_fd(), libc::POLLIN, Token::Listener),
            (self.sigchld.as_raw_fd(), libc::POLLIN, Token::Signal),
        ];
        for (i, p) in self.pending.iter().enumerate() {
            want.push((p.sock.as_raw_fd(), libc::POLLIN, Token::Pending(i)));
        }
        let mut slots = Vec::new();
        if let Some(r) = &self.init_relay {
            r.interest(&mut slots);
            want.extend(slots.drain(..).map(|(fd, ev, s)| (fd, ev, Token::Init(s))));
        }
        for (pid, e) in &self.execs {
            e.relay.interest(&mut slots);
            want.extend(
                slots
                    .drain(..)
                    .map(|(fd, ev, s)| (fd, ev, Token::Exec(*pid, s))),
            );
        }
        want.into_iter()
            .map(|(fd, events, t)| {
                (
                    libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    },
                    t,
                )
            })
            .unzip()
    }

    fn release_hold(&mut self) {
        self.hold_until = None;
        if let Some(r) = self.init_relay.as_mut() {
            r.hold = false;
        }
    }

    /// Reaps every child that has ended: the init, execs, and anything else adopted.
    fn reap(&mut self) {
        loop {
            let (pid, code, signal) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            if pid == self.init {
                self.init_exit = Some((code, signal));
                if let Some(r) = self.init_relay.as_mut() {
                    // A held output stays held: see `run`.
                    r.exited = true;
                }
            } else if let Some(e) = self.execs.get_mut(&pid.as_raw()) {
                e.relay.exited = true;
                write_exec_exit(self.paths, &e.id, code, signal, &mut *self.log);
            }
        }
    }

    /// Drops the execs whose process has ended and whose output has reached their client.
    fn finish_execs(&mut self) {
        let before = self.execs.len();
        self.execs.retain(|_, e| !e.relay.finished());
        if before > 0 && self.execs.is_empty() {
            self.trim_at = Some(Instant::now() + IDLE_TRIM);
        }
    }

    /// After the init's exit: execs the kernel has killed but we could not reap in time are
    /// recorded as killed, so that no exec is left "running" for ever.
    fn record_unreaped_execs(&mut self) {
        for (_, e) in self.execs.drain() {
            if !e.relay.exited {
                write_exec_exit(self.paths, &e.id, 137, Some(9), &mut *self.log);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nonblocking(true);
                    self.pending.push(Pending {
                        sock,
                        buf: Vec::new(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads what pending connection `i` has sent; handles its request once a line is in.
    fn read_request(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        let p = &mut self.pending[i];
        match (&p.sock).read(&mut buf) {
            Ok(0) => {
                self.pending.swap_remove(i);
                return;
            }
            Ok(n) => p.buf.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {
                self.pending.swap_remove(i);
                return;
            }
        }
        let Some(end) = p.buf.iter().position(|&b| b == b'\n') else {
            if p.buf.len() > MAX_REQUEST {
                let p = self.pending.swap_remove(i);
                reply(
                    &p.sock,
                    &CtlReply::refused("invalid", "request line too long"),
                );
            }
            return;
        };
        let p = self.pending.swap_remove(i);
        let extra = p.buf[end + 1..].to_vec();
        match serde_json::from_slice::<CtlRequest>(&p.buf[..end]) {
            Ok(req) => self.handle(req, p.sock, extra),
            Err(e) => reply(
                &p.sock,
                &CtlReply::refused("invalid", format!("bad request: {e}")),
            ),
        }
    }

    fn handle(&mut self, req: CtlRequest, sock: UnixStream, extra: Vec<u8>) {
        match req {
            CtlRequest::Exec {
                id,
                process,
                attach,
            } => {
                if self.init_exit.is_some() {
                    return reply(
                        &sock,
                        &CtlReply::refused("not_running", "the container has exited"),
                    );
                }
                if self.execs.len() >= self.max_execs {
                    let msg = format!(
                        "{} execs already run in this container (the limit)",
                        self.max_execs
                    );
                    return reply(&sock, &CtlReply::refused("too_many", msg));
                }
                if self.execs.values().any(|e| e.id == id) {
                    return reply(&sock, &CtlReply::refused("invalid", "exec already started"));
                }
                if self.sandbox.is_none() {
                    match Sandbox::new(self.paths, self.init.as_raw()) {
                        Ok(s) => self.sandbox = Some(s),
                        Err(e) => return reply(&sock, &CtlReply::refused("not_running", e)),
                    }
                }
                let Some(sandbox) = self.sandbox.as_ref() else {
                    return;
                };
                match sandbox.spawn(&process) {
                    Ok((pid, io)) => {
                        let mut relay = Relay::new(io, None);
                        reply(
                            &sock,
                            &CtlReply {
                                pid: Some(pid),
                                ..Default::default()
                            },
                        );
                        if attach {
                            relay.attach(sock, process.stdin);
                            relay.clients[0].input = extra;
                        }
                        self.execs.insert(pid, Exec { id, relay });
                        self.trim_at = None;
                        // It may have ended already (its SIGCHLD is then pending).
                        self.reap();
                    }
                    Err(e) => {
                        (self.log)(&format!("exec {id} failed: {e}"));
                        reply(&sock, &CtlReply::refused("invalid", e));
                    }
                }
            }
            CtlRequest::Attach { stdin } => match self.init_relay.as_mut() {
                // After the init's exit only the client a held output waits for.
                Some(r) if self.init_exit.is_none() || self.hold_until.is_some() => {
                    reply(&sock, &CtlReply::default());
                    r.attach(sock, stdin);
                    self.hold_until = None;
                }
                Some(_) => reply(
                    &sock,
                    &CtlReply::refused("not_running", "the container has exited"),
                ),
                None => reply(
                    &sock,
                    &CtlReply::refused("not_relayed", "the container's output goes to its log"),
                ),
            },
            CtlRequest::Kill { exec, signal } => {
                let target = self
                    .execs
                    .iter()
                    .find(|(_, e)| e.id == exec && !e.relay.exited);
                let answer = match target {
                    None => CtlReply::refused("not_found", "no such running exec"),
                    Some((pid, _)) => match Signal::try_from(signal) {
                        Err(_) => CtlReply::refused("invalid", format!("bad signal {signal}")),
                        Ok(sig) => match nix::sys::signal::kill(Pid::from_raw(*pid), sig) {
                            Ok(()) => CtlReply::default(),
                            Err(e) => CtlReply::refused("not_found", format!("kill: {e}")),
                        },
                    },
                };
                reply(&sock, &answer);
            }
            CtlRequest::Resize { exec, rows, cols } => {
                let relay = match &exec {
                    None => self.init_relay.as_ref(),
                    Some(id) => self.execs.values().find(|e| &e.id == id).map(|e| &e.relay),
                };
                let answer = match relay {
                    None => CtlReply::refused("not_found", "no such running process"),
                    Some(r) => match r.resize(rows, cols) {
                        Ok(()) => CtlReply::default(),
                        Err(e) => CtlReply::refused("not_tty", e),
                    },
                };
                reply(&sock, &answer);
            }
        }
    }
}

/// Writes a reply line (small: it fits in the socket buffer of a fresh connection).
fn reply(sock: &UnixStream, r: &CtlReply) {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = (&*sock).write_all(&line);
    let _ = sock.set_nonblocking(true);
}

fn write_exec_exit(
    paths: &ContainerPaths,
    id: &str,
    exit_code: i32,
    signal: Option<i32>,
    log: &mut dyn FnMut(&str),
) {
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at: chrono::Utc::now(),
        oom_killed: false,
    };
    let json = serde_json::to_vec(&record).unwrap_or_default();
    if let Err(e) = inarray_sys::write_atomic(&paths.exec_exit(id), &json) {
        log(&format!("cannot write the exit record of exec {id}: {e}"));
    }
}
