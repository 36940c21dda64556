//! The local terminal of an interactive command (`exec -it`, `run -it`, `attach`): raw mode and
//! its restoration on every way out, the window size, and the signals that end the command.
//!
//! Raw mode is `cfmakeraw` on standard input's terminal. The settings saved before are put back
//! when the [`RawMode`] guard drops (the normal end, an error, a dropped connection), by the panic
//! hook installed with it, and by [`exit_on_signal`] before the process exits on SIGINT, SIGTERM
//! or SIGHUP (130, 143, 129). In raw mode Ctrl-C is no signal: it reaches the container as the
//! byte 0x03, as intended. All the CLI's `unsafe` for terminals is in this file.

use std::future::Future;
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, Once, PoisonError};

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The terminal raw mode is on (a duplicate of its descriptor) and its settings from before.
static SAVED: Mutex<Option<(OwnedFd, Termios)>> = Mutex::new(None);

/// Raw mode on a terminal; dropping the guard restores the terminal as it was.
#[must_use = "raw mode ends when the guard is dropped"]
pub struct RawMode(());

impl RawMode {
    /// Puts standard input's terminal into raw mode.
    pub fn stdin() -> Result<Self> {
        Self::on(std::io::stdin().as_fd())
    }

    /// Puts the terminal `fd` into raw mode (one at a time).
    fn on(fd: BorrowedFd<'_>) -> Result<Self> {
        let saved = termios::tcgetattr(fd).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let keep = fd
            .try_clone_to_owned()
            .context("cannot duplicate the terminal's descriptor")?;
        {
            let mut slot = SAVED.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_some() {
                bail!("the terminal is already in raw mode");
            }
            *slot = Some((keep, saved));
        }
        install_panic_hook();
        if let Err(e) = termios::tcsetattr(fd, SetArg::TCSANOW, &raw) {
            restore();
            return Err(e).context("cannot put the terminal into raw mode");
        }
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the terminal settings [`RawMode`] saved, once; nothing when raw mode is off.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((fd, settings)) = saved {
        let _ = termios::tcsetattr(&fd, SetArg::TCSANOW, &settings);
    }
}

/// A panic restores the terminal before its message is printed (then the previous hook runs).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Whether standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The local terminal's size as (rows, columns): standard output's, else standard input's; `None`
/// when neither is a terminal or it has no size.
pub fn size() -> Option<(u16, u16)> {
    let (out, inp) = (std::io::stdout(), std::io::stdin());
    size_of(out.as_fd()).or_else(|| size_of(inp.as_fd()))
}

fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is open for the duration of the call (borrowed), and `ws` is a live, writable
    // `struct winsize`, the one object TIOCGWINSZ writes; on a descriptor that is no terminal
    // the kernel writes nothing and returns ENOTTY.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// SIGWINCH, from now on: each one is a change of the local terminal's size.
pub fn resizes() -> Result<Signal> {
    signal(SignalKind::window_change()).context("cannot watch SIGWINCH")
}

/// SIGINT, SIGTERM and SIGHUP, caught from when this is made on. SIGPIPE is caught too, and
/// never reported: a write to a stream the daemon closed (a unix socket raises it) or to a
/// closed standard output then fails with EPIPE, which the session handles, instead of killing
/// the process with the terminal left raw. (Once caught, a signal stays caught until the
/// process exits: tokio never gives the default back.)
pub struct ExitSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
    _pipe: Signal,
}

impl ExitSignals {
    pub fn new() -> Result<Self> {
        let catch = |k: SignalKind| signal(k).context("cannot catch a signal");
        Ok(Self {
            int: catch(SignalKind::interrupt())?,
            term: catch(SignalKind::terminate())?,
            hup: catch(SignalKind::hangup())?,
            _pipe: catch(SignalKind::pipe())?,
        })
    }

    /// The next one, as the exit status the shells give a process it ends (128 + its number).
    pub async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
            _ = self.hup.recv() => 129,
        }
    }
}

/// Restores the terminal and ends the process at once with `status` (a signal ended the command,
/// 128 + its number).
pub fn exit_on_signal(status: u8) -> ! {
    restore();
    std::process::exit(status.into())
}

/// Runs `fut` to its end, unless SIGINT, SIGTERM or SIGHUP comes first: then the terminal is
/// restored and the process exits (130, 143, 129).
pub async fn or_exit_on_signal<T>(fut: impl Future<Output = T>) -> Result<T> {
    let mut signals = ExitSignals::new()?;
    tokio::select! {
        v = fut => Ok(v),
        status = signals.recv() => exit_on_signal(status),
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::termios::{LocalFlags, OutputFlags};

    use super::*;

    fn flags(fd: BorrowedFd<'_>) -> (LocalFlags, OutputFlags, String) {
        let t = termios::tcgetattr(fd).unwrap();
        let all = format!(
            "{:?} {:?} {:?} {:?}",
            t.input_flags, t.output_flags, t.control_flags, t.local_flags
        );
        (t.local_flags, t.output_flags, all)
    }

    /// One test for everything that uses the process-wide saved state (tests run in parallel).
    #[test]
    fn raw_mode_is_undone_by_drop_restore_and_a_panic() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let fd = pty.slave.as_fd();
        let (lflags, oflags, before) = flags(fd);
        assert!(lflags.contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG));
        assert!(oflags.contains(OutputFlags::OPOST));

        // The guard: raw while it lives, as before once dropped.
        let guard = RawMode::on(fd).unwrap();
        let (l, o, _) = flags(fd);
        assert!(!l.intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG));
        assert!(!o.contains(OutputFlags::OPOST));
        let again = RawMode::on(fd).err().expect("one raw mode at a time");
        assert!(again.to_string().contains("already in raw mode"), "{again}");
        drop(guard);
        assert_eq!(flags(fd).2, before);
        restore(); // Once is enough: a second restore does nothing.
        assert_eq!(flags(fd).2, before);

        // An early exit restores without the guard (the signal path calls this, then exits).
        let guard = RawMode::on(fd).unwrap();
        restore();
        assert_eq!(flags(fd).2, before);
        drop(guard);

        // A panic restores even when the guard is never dropped (e.g. `panic = "abort"`).
        let guard = RawMode::on(fd).unwrap();
        std::mem::forget(guard);
        assert_ne!(flags(fd).2, before);
        let r = std::panic::catch_unwind(|| panic!("a bug while the terminal is raw"));
        assert!(r.is_err());
        assert_eq!(flags(fd).2, before);
    }

    #[test]
    fn the_size_comes_from_the_terminal() {
        let ws = nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        assert_eq!(size_of(pty.slave.as_fd()), Some((30, 100)));
        // Not a terminal: no size.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(size_of(r.as_fd()), None);
        // A terminal that was never given a size.
        let pty = nix::pty::openpty(None, None).unwrap();
        assert_eq!(size_of(pty.slave.as_fd()), None);
    }

    #[tokio::test]
    async fn exit_signals_map_to_the_shells_statuses() {
        let mut s = ExitSignals::new().unwrap();
        for (sig, status) in [
            (nix::sys::signal::Signal::SIGHUP, 129),
            (nix::sys::signal::Signal::SIGTERM, 143),
            (nix::sys::signal::Signal::SIGINT, 130),
        ] {
            nix::sys::signal::kill(nix::unistd::getpid(), sig).unwrap();
            assert_eq!(s.recv().await, status, "{sig}");
        }
    }
}
