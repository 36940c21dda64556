//! A process's stdio as the shim holds it, and the clients attached to it.
//!
//! Output is read only when every attached client has room for it (each client buffers at most
//! [`CLIENT_BUFFER`] bytes): a client that does not read holds the process back instead of
//! growing a buffer. Input from a client is read only once its previous input has been written
//! to the process. Everything is non-blocking; the event loop (`serve.rs`) polls the
//! descriptors [`Relay::interest`] names and calls back with what is ready.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::logfile::LogWriter;
use crate::protocol::frame_header;

/// Bytes buffered for one client before the output is held back.
pub(crate) const CLIENT_BUFFER: usize = 64 * 1024;
/// Bytes read from an output at once.
const READ_CHUNK: usize = 16 * 1024;

pub(crate) struct Output {
    pub fd: OwnedFd,
    pub stream: u8,
    pub eof: bool,
}

pub(crate) struct Client {
    pub sock: UnixStream,
    /// Frames not yet written to the client.
    pub out: Vec<u8>,
    /// Input read from the client, not yet written to the process.
    pub input: Vec<u8>,
    /// The client's input goes to the process.
    pub stdin: bool,
    pub read_eof: bool,
    pub gone: bool,
}

impl Client {
    pub fn new(sock: UnixStream, stdin: bool) -> Self {
        Self {
            sock,
            out: Vec::new(),
            input: Vec::new(),
            stdin,
            read_eof: false,
            gone: false,
        }
    }
}

/// What a descriptor of a relay is polled for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    Output(usize),
    Stdin,
    Client(usize),
}

pub(crate) struct Relay {
    pub stdin: Option<OwnedFd>,
    pub outputs: Vec<Output>,
    pub tty: Option<OwnedFd>,
    pub clients: Vec<Client>,
    /// The container's log gets a copy of the output (the init's relay).
    pub log: Option<LogWriter>,
    /// The process has been reaped.
    pub exited: bool,
    /// Output is held (until the first client attaches).
    pub hold: bool,
    /// A client half-closed: close the process's stdin once its input is written.
    close_stdin_when_fed: bool,
}

pub(crate) enum Pump {
    Data,
    Eof,
    WouldBlock,
    Full,
}

impl Relay {
    pub fn new(io: crate::exec::ProcessIo, log: Option<LogWriter>) -> Self {
        let set_nonblocking = |fd: &OwnedFd| {
            let _ = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        };
        io.stdin.iter().for_each(set_nonblocking);
        io.outputs.iter().for_each(|(fd, _)| set_nonblocking(fd));
        Self {
            stdin: io.stdin,
            outputs: io
                .outputs
                .into_iter()
                .map(|(fd, stream)| Output {
                    fd,
                    stream,
                    eof: false,
                })
                .collect(),
            tty: io.tty,
            clients: Vec::new(),
            log,
            exited: false,
            hold: false,
            close_stdin_when_fed: false,
        }
    }

    pub fn attach(&mut self, sock: UnixStream, stdin: bool) {
        let _ = sock.set_nonblocking(true);
        self.clients.push(Client::new(sock, stdin));
        self.hold = false;
    }

    fn room(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.gone || c.out.len() < CLIENT_BUFFER)
    }

    /// The descriptors to poll and for what (`POLLIN`/`POLLOUT`).
    pub fn interest(&self, out: &mut Vec<(RawFd, i16, Slot)>) {
        let (rd, wr) = (libc::POLLIN, libc::POLLOUT);
        if !self.hold && self.room() {
            for (i, o) in self.outputs.iter().enumerate().filter(|(_, o)| !o.eof) {
                out.push((o.fd.as_raw_fd(), rd, Slot::Output(i)));
            }
        }
        if let Some(fd) = &self.stdin {
            if self.clients.iter().any(|c| !c.input.is_empty()) {
                out.push((fd.as_raw_fd(), wr, Slot::Stdin));
            }
        }
        for (i, c) in self.clients.iter().enumerate().filter(|(_, c)| !c.gone) {
            let mut ev = 0;
            if !c.out.is_empty() {
                ev |= wr;
            }
            if !c.read_eof && c.input.is_empty() {
                ev |= rd;
            }
            if ev != 0 {
                out.push((c.sock.as_raw_fd(), ev, Slot::Client(i)));
            }
        }
    }

    /// Handles readiness `revents` of `slot`.
    pub fn ready(&mut self, slot: Slot, revents: i16) {
        match slot {
            Slot::Output(i) => {
                let _ = self.pump(i);
            }
            Slot::Stdin => self.feed(),
            Slot::Client(i) => {
                if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
                    self.flush(i);
                }
                if revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                    self.read_client(i);
                }
            }
        }
    }

    /// Reads once from output `i` and hands it to the log and every client.
    pub fn pump(&mut self, i: usize) -> Pump {
        if !self.room() {
            return Pump::Full;
        }
        let mut buf = [0u8; READ_CHUNK];
        let o = &mut self.outputs[i];
        let n = match nix::unistd::read(o.fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => {
                o.eof = true;
                return Pump::Eof;
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                return Pump::WouldBlock
            }
            Err(_) => {
                o.eof = true;
                return Pump::Eof;
            }
        };
        let stream = o.stream;
        if let Some(log) = self.log.as_mut() {
            log.write(stream, &buf[..n]);
        }
        for c in self.clients.iter_mut().filter(|c| !c.gone) {
            c.out.extend_from_slice(&frame_header(stream, n));
            c.out.extend_from_slice(&buf[..n]);
        }
        for i in 0..self.clients.len() {
            self.flush(i);
        }
        Pump::Data
    }

    /// Writes what client `i` has pending; a client that fails is gone.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while !c.gone && !c.out.is_empty() {
            match (&c.sock).write(&c.out) {
                Ok(0) => c.gone = true,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => c.gone = true,
            }
        }
        if c.gone {
            c.out = Vec::new();
            c.input = Vec::new();
        }
    }

    fn read_client(&mut self, i: usize) {
        let tty = self.tty.is_some();
        let c = &mut self.clients[i];
        let mut buf = [0u8; READ_CHUNK];
        match (&c.sock).read(&mut buf) {
            Ok(0) => {
                c.read_eof = true;
                // A half-close ends a pipe's input; a terminal stays (its session lives on).
                if c.stdin && !tty {
                    self.close_stdin_when_fed = true;
                }
            }
            Ok(n) if c.stdin && self.stdin.is_some() => c.input.extend_from_slice(&buf[..n]),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                c.read_eof = true;
                c.gone = true;
            }
        }
        self.feed();
    }

    /// Writes clients' pending input to the process; closes its stdin when a client has
    /// half-closed (pipes) or the process has closed it.
    fn feed(&mut self) {
        if let Some(fd) = self.stdin.as_ref() {
            let mut broken = false;
            'clients: for c in self.clients.iter_mut() {
                while !c.input.is_empty() {
                    match nix::unistd::write(fd, &c.input) {
                        Ok(n) => {
                            c.input.drain(..n);
                        }
                        // Still pending: polled for POLLOUT.
                        Err(nix::errno::Errno::EAGAIN) => return,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => {
                            broken = true;
                            break 'clients;
                        }
                    }
                }
            }
            if !broken && !self.close_stdin_when_fed {
                return;
            }
        }
        self.stdin = None;
        self.clients.iter_mut().for_each(|c| c.input.clear());
    }

    /// Whether everything is done: the process was reaped, its output read to the end (or to
    /// what was there when it ended) and written to every client still there.
    pub fn finished(&mut self) -> bool {
        if !self.exited {
            return false;
        }
        for i in 0..self.outputs.len() {
            while !self.outputs[i].eof {
                match self.pump(i) {
                    Pump::Data => {}
                    // Whatever a left-behind background process writes later is not waited for.
                    Pump::WouldBlock => self.outputs[i].eof = true,
                    Pump::Eof => {}
                    Pump::Full => return false,
                }
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.flush();
        }
        self.clients.iter().all(|c| c.gone || c.out.is_empty())
    }

    /// Sets the terminal size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let tty = self.tty.as_ref().ok_or("not a terminal")?;
        inarray_sys::set_window_size(tty, rows, cols).map_err(|e| format!("resize: {e}"))
    }
}
