//! One interactive session over an upgraded stream (`exec`, `run -i/-t`, `attach`; the API:
//! docs/api.md, "Exec and attach"): the stream to standard output (a terminal's raw bytes, or
//! stdcopy frames split to stdout and stderr), standard input to the stream with `-i` (its end
//! half-closes the stream), and the terminal's size to the resize endpoint with `-t`.

use std::cell::RefCell;
use std::convert::Infallible;

use anyhow::{bail, Context, Result};
use inarray_api::client::stdcopy::{Decoder, Stream};
use inarray_api::client::{Client, ClientError, Method, Upgraded};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::terminal::{self, RawMode};

/// Refuses a terminal with input when standard input is no terminal (as docker does, before
/// anything is created): raw mode and the keys typed need one.
pub(super) fn check_tty(tty: bool, stdin: bool) -> Result<()> {
    refuse_without_tty(tty, stdin, terminal::stdin_is_tty())
}

fn refuse_without_tty(tty: bool, stdin: bool, stdin_is_tty: bool) -> Result<()> {
    if tty && stdin && !stdin_is_tty {
        bail!("the input device is not a TTY");
    }
    Ok(())
}

pub(super) struct Session {
    /// The stream carries a terminal's raw bytes (else stdcopy frames).
    tty: bool,
    /// Standard input is copied to the stream.
    stdin: bool,
    /// Where the terminal's size goes (`POST …/resize`), with `tty`.
    resize_path: String,
    /// The first resize the daemon refused for another reason than a lost race with the exit:
    /// told once the terminal is back to normal.
    resize_failed: RefCell<Option<ClientError>>,
}

impl Session {
    pub fn new(tty: bool, stdin: bool, resize_path: String) -> Self {
        Self {
            tty,
            stdin,
            resize_path,
            resize_failed: RefCell::new(None),
        }
    }

    /// `POST path` upgraded, then copies until the daemon closes the stream. The local terminal
    /// is raw meanwhile when the session has a terminal and input (restored on every way out);
    /// SIGINT, SIGTERM and SIGHUP end the process at once (130, 143, 129).
    pub async fn run(&self, c: &Client, path: &str) -> Result<()> {
        // The signals are caught first, then the terminal goes raw: no moment in between where
        // a signal would end the process with the terminal left raw.
        let r = terminal::or_exit_on_signal(async {
            let _raw = if self.tty && self.stdin {
                Some(RawMode::stdin()?)
            } else {
                None
            };
            self.connected(c, path).await
        })
        .await?;
        if let Some(e) = self.resize_failed.take() {
            eprintln!("inarray: warning: the terminal's size could not be sent: {e}");
        }
        r
    }

    async fn connected(&self, c: &Client, path: &str) -> Result<()> {
        // Watched before the first size is read, so that no change falls in between.
        let winch = if self.tty {
            Some(terminal::resizes()?)
        } else {
            None
        };
        let stream = c.upgrade(Method::POST, path, None).await?;
        if self.tty {
            self.send_size(c).await;
        }
        let (mut rd, mut wr) = tokio::io::split(stream);
        let input = async {
            if self.stdin {
                copy_input(&mut wr).await;
            }
            std::future::pending::<Infallible>().await
        };
        let resizes = async {
            if let Some(mut winch) = winch {
                while winch.recv().await.is_some() {
                    self.send_size(c).await;
                }
            }
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            r = copy_output(&mut rd, self.tty) => r,
            never = input => match never {},
            never = resizes => match never {},
        }
    }

    /// Sends the local terminal's size, if it has one. Refusals do not end the session: a 409 is
    /// the process's exit winning the race (nothing to tell), anything else is told at the end.
    async fn send_size(&self, c: &Client) {
        let Some((rows, cols)) = terminal::size() else {
            return;
        };
        let body = json!({"rows": rows, "cols": cols});
        match c.json(Method::POST, &self.resize_path, Some(&body)).await {
            Ok(_) => {}
            Err(ClientError::Api { status, .. }) if status.as_u16() == 409 => {}
            Err(e) => {
                self.resize_failed.borrow_mut().get_or_insert(e);
            }
        }
    }
}

/// Copies the daemon's side of the stream to standard output (and standard error) until it ends.
async fn copy_output<R: AsyncRead + Unpin>(rd: &mut R, tty: bool) -> Result<()> {
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let mut frames = (!tty).then(Decoder::new);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .context("the connection to the daemon was lost")?;
        if n == 0 {
            break;
        }
        let Some(decoder) = frames.as_mut() else {
            write_now(&mut out, &buf[..n]).await?;
            continue;
        };
        let pieces = decoder
            .feed(&buf[..n])
            .context("the daemon sent malformed output")?;
        for (stream, piece) in pieces {
            match stream {
                Stream::Stdout => write_now(&mut out, piece).await?,
                Stream::Stderr => write_now(&mut err, piece).await?,
            }
        }
    }
    if let Some(d) = frames {
        d.finish().context("the daemon sent malformed output")?;
    }
    Ok(())
}

/// Writes to standard output or error at once. When its reader has gone (`| head`), the command
/// ends quietly with the status SIGPIPE would have given it, the terminal restored (SIGPIPE
/// itself is caught during a session: see [`terminal::ExitSignals`]).
async fn write_now<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<()> {
    let r = match w.write_all(data).await {
        Ok(()) => w.flush().await,
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => terminal::exit_on_signal(141),
        Err(e) => Err(e).context("cannot write the output"),
    }
}

/// Copies standard input to the stream; at its end, half-closes the stream (the process's input
/// ends, its output still comes). Returns early when the daemon no longer reads: the output side
/// then sees the stream end.
async fn copy_input(wr: &mut tokio::io::WriteHalf<Upgraded>) {
    let mut chunks = stdin_chunks();
    while let Some(chunk) = chunks.recv().await {
        if wr.write_all(&chunk).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Standard input as chunks, read by a thread of its own: a blocking read cannot be cancelled,
/// and on tokio's blocking pool it would hold up the runtime's end until the user typed a key.
/// The thread ends at end-of-file or a read error (a terminal that went away) or when the
/// receiver is gone, and otherwise with the process.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(8);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("inarray: cannot read standard input: {e}");
    }
    rx
}

#[cfg(test)]
mod tests {
    use inarray_api::client::stdcopy::header;

    use super::*;

    #[tokio::test]
    async fn output_ends_with_the_stream() {
        // A tty stream is copied as it is: here an empty one ends the copy at once.
        let mut empty: &[u8] = &[];
        copy_output(&mut empty, true).await.unwrap();
        let mut frames = header(Stream::Stdout, 0).to_vec();
        frames.extend(header(Stream::Stderr, 0));
        copy_output(&mut frames.as_slice(), false).await.unwrap();
    }

    #[tokio::test]
    async fn malformed_or_cut_frames_are_errors() {
        let mut bad: &[u8] = b"\x05\0\0\0\0\0\0\0";
        let e = copy_output(&mut bad, false).await.unwrap_err();
        assert!(format!("{e:#}").contains("malformed output"), "{e:#}");
        assert!(format!("{e:#}").contains("unknown stream 5"), "{e:#}");
        let mut cut = &header(Stream::Stdout, 10)[..5];
        let e = copy_output(&mut cut, false).await.unwrap_err();
        assert!(format!("{e:#}").contains("ended inside a frame"), "{e:#}");
    }

    #[test]
    fn only_a_terminal_with_input_needs_a_local_terminal() {
        let e = refuse_without_tty(true, true, false).unwrap_err();
        assert_eq!(e.to_string(), "the input device is not a TTY");
        refuse_without_tty(true, true, true).unwrap();
        for is_tty in [false, true] {
            refuse_without_tty(true, false, is_tty).unwrap();
            refuse_without_tty(false, true, is_tty).unwrap();
            refuse_without_tty(false, false, is_tty).unwrap();
        }
    }
}
