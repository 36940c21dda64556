//! Streams of a process's stdio over an upgraded connection (exec start, container attach).
//!
//! Two forms: `Upgrade: tcp` (Docker's raw stream: the connection carries bytes both ways after
//! the 101) and `Upgrade: websocket` (binary messages both ways, for browsers). From the client
//! come stdin bytes; to it go the terminal's bytes (tty) or Docker "stdcopy" frames (8-byte
//! header: stream 1 stdout / 2 stderr, 3 zero bytes, u32 big-endian length). The shim sends
//! frames in both cases; the daemon strips them for a terminal.
//!
//! Nothing is buffered without bound here: each direction copies through one fixed buffer, so a
//! client that does not read stops this task reading from the shim, which stops reading the
//! process (see the shim's relay). On a terminal with stdin, ctrl-p ctrl-q detach: the stream
//! ends, the process lives on.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::ApiError;
use crate::events_ws::{frame, handshake, header_has, read_frame};

/// ctrl-p ctrl-q, Docker's default detach keys.
const DETACH: [u8; 2] = [0x10, 0x11];
const CHUNK: usize = 32 * 1024;

/// How the client asked to take over the connection.
pub enum Upgrade {
    Raw(OnUpgrade),
    WebSocket(OnUpgrade, String),
}

/// The upgrade the request asks for, if any (`None`: a plain request).
pub fn requested(req: &mut axum::extract::Request) -> Result<Option<Upgrade>, ApiError> {
    let h = req.headers();
    if !header_has(h, header::CONNECTION, "upgrade") {
        return Ok(None);
    }
    let kind = if header_has(h, header::UPGRADE, "websocket") {
        Some(handshake(h)?)
    } else if header_has(h, header::UPGRADE, "tcp") {
        None
    } else {
        return Err(ApiError::bad_request(
            "upgrade: only `tcp` (a raw stream) and `websocket` are supported",
        ));
    };
    let on = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
    Ok(Some(match kind {
        Some(accept) => Upgrade::WebSocket(on, accept),
        None => Upgrade::Raw(on),
    }))
}

/// What the stream carries from the daemon's side.
pub enum Source {
    /// A shim connection (frames in, raw stdin out).
    Shim { stream: UnixStream, stdin: bool },
    /// A container log followed from its current end (output only).
    Log(Box<crate::containers::Follow>),
}

/// Answers 101 and runs the stream on the upgraded connection; `done` runs once it has ended.
pub fn respond(
    up: Upgrade,
    source: Source,
    tty: bool,
    done: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    respond_later(up, tty, async move { Some(source) }, done)
}

/// Answers 101 at once and runs the stream once `source` is there (the Docker API's attach to a
/// container that is not started yet: its start hands the stream over). Without a source (the
/// start failed, the container went away) the upgraded connection is closed.
pub fn respond_later(
    up: Upgrade,
    tty: bool,
    source: impl std::future::Future<Output = Option<Source>> + Send + 'static,
    done: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    let (on, headers) = match up {
        Upgrade::Raw(on) => {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, "Upgrade".parse().expect("header"));
            h.insert(header::UPGRADE, "tcp".parse().expect("header"));
            h.insert(
                header::CONTENT_TYPE,
                if tty {
                    "application/vnd.docker.raw-stream"
                } else {
                    "application/vnd.docker.multiplexed-stream"
                }
                .parse()
                .expect("header"),
            );
            (on, (h, false))
        }
        Upgrade::WebSocket(on, accept) => {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, "Upgrade".parse().expect("header"));
            h.insert(header::UPGRADE, "websocket".parse().expect("header"));
            if let Ok(v) = accept.parse() {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            (on, (h, true))
        }
    };
    let (headers, ws) = headers;
    tokio::spawn(async move {
        match on.await {
            Ok(up) => {
                let io = TokioIo::new(up);
                let r = match source.await {
                    Some(source) if ws => run_ws(io, source, tty).await,
                    Some(source) => run_raw(io, source, tty).await,
                    None => Ok(()),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "attach stream ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        done.await;
    });
    (StatusCode::SWITCHING_PROTOCOLS, headers).into_response()
}

/// Reads the next output frame from the shim: (stream, payload); None at the end.
async fn next_frame(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<u8>> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > 1024 * 1024 {
        return Err(std::io::Error::other("oversized frame from the shim"));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(Some(h[0]))
}

/// Output for the client: the payload alone on a terminal, else the frame as it came.
fn client_bytes(stream: u8, payload: &[u8], tty: bool) -> Vec<u8> {
    if tty {
        return payload.to_vec();
    }
    let n = (payload.len() as u32).to_be_bytes();
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[stream, 0, 0, 0, n[0], n[1], n[2], n[3]]);
    out.extend_from_slice(payload);
    out
}

/// Finds the detach keys in client input; `pending` carries a ctrl-p that ended the last chunk.
/// Returns the bytes to pass on, and whether the keys were seen.
fn scan_detach(input: &[u8], pending: &mut bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(input.len() + 1);
    for &b in input {
        if *pending {
            *pending = false;
            if b == DETACH[1] {
                return (out, true);
            }
            out.push(DETACH[0]);
        }
        if b == DETACH[0] {
            *pending = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

/// How the client's side ended.
enum Up {
    /// End of input (half-close): the output still runs to its end.
    Eof,
    /// Detach keys, a close message or an error: the stream ends now.
    Gone,
}

async fn run_raw<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    source: Source,
    tty: bool,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = tokio::io::split(client);
    match source {
        Source::Log(mut follow) => {
            // Output only; the client's input is read (and dropped) to notice it going.
            let down = async {
                while let Some(chunk) = follow.next_chunk().await {
                    cw.write_all(&client_bytes(chunk.stream, &chunk.data, tty))
                        .await?;
                }
                cw.shutdown().await
            };
            let up = async {
                let mut b = [0u8; 1024];
                while cr.read(&mut b).await? > 0 {}
                std::future::pending::<std::io::Result<()>>().await
            };
            tokio::select! { r = down => r, r = up => r }
        }
        Source::Shim { stream, stdin } => {
            let (mut sr, mut sw) = stream.into_split();
            let down = async {
                let mut buf = Vec::with_capacity(CHUNK);
                while let Some(s) = next_frame(&mut sr, &mut buf).await? {
                    cw.write_all(&client_bytes(s, &buf, tty)).await?;
                }
                cw.shutdown().await
            };
            let up = async {
                let mut b = vec![0u8; CHUNK];
                let mut pending = false;
                loop {
                    let n = match cr.read(&mut b).await {
                        Ok(n) => n,
                        Err(_) => return Up::Gone,
                    };
                    if n == 0 {
                        let _ = sw.shutdown().await;
                        return Up::Eof;
                    }
                    if !stdin {
                        continue;
                    }
                    let (pass, detach) = if tty {
                        scan_detach(&b[..n], &mut pending)
                    } else {
                        (b[..n].to_vec(), false)
                    };
                    if sw.write_all(&pass).await.is_err() {
                        return Up::Gone;
                    }
                    if detach {
                        return Up::Gone;
                    }
                }
            };
            tokio::pin!(down);
            tokio::select! {
                r = &mut down => r,
                u = up => match u {
                    Up::Eof => down.await,
                    Up::Gone => Ok(()),
                },
            }
        }
    }
}

async fn run_ws<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    source: Source,
    tty: bool,
) -> std::io::Result<()> {
    let (mut cr, cw) = tokio::io::split(client);
    let cw = tokio::sync::Mutex::new(cw);
    let send = |msg: Vec<u8>| {
        let cw = &cw;
        async move { cw.lock().await.write_all(&msg).await }
    };
    let (mut sr, mut sw, mut follow, stdin) = match source {
        Source::Shim { stream, stdin } => {
            let (r, w) = stream.into_split();
            (Some(r), Some(w), None, stdin)
        }
        Source::Log(f) => (None, None, Some(f), false),
    };
    let down = async {
        if let Some(sr) = sr.as_mut() {
            let mut buf = Vec::with_capacity(CHUNK);
            while let Some(s) = next_frame(sr, &mut buf).await? {
                send(frame(2, &client_bytes(s, &buf, tty))).await?;
            }
        } else if let Some(f) = follow.as_mut() {
            while let Some(chunk) = f.next_chunk().await {
                send(frame(2, &client_bytes(chunk.stream, &chunk.data, tty))).await?;
            }
        }
        send(frame(8, &1000u16.to_be_bytes())).await
    };
    let up = async {
        let mut pending = false;
        loop {
            let Ok((op, payload)) = read_frame(&mut cr).await else {
                return Up::Gone;
            };
            match op {
                8 => return Up::Gone,
                9 if send(frame(10, &payload)).await.is_err() => return Up::Gone,
                1 | 2 if stdin => {
                    let (pass, detach) = if tty {
                        scan_detach(&payload, &mut pending)
                    } else {
                        (payload, false)
                    };
                    if let Some(sw) = sw.as_mut() {
                        if sw.write_all(&pass).await.is_err() {
                            return Up::Gone;
                        }
                    }
                    if detach {
                        return Up::Gone;
                    }
                }
                _ => {}
            }
        }
    };
    tokio::pin!(down);
    tokio::select! {
        r = &mut down => r,
        u = up => match u {
            Up::Eof => down.await,
            Up::Gone => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_across_chunks() {
        let mut p = false;
        assert_eq!(scan_detach(b"ls\r", &mut p), (b"ls\r".to_vec(), false));
        assert_eq!(scan_detach(b"ab\x10", &mut p), (b"ab".to_vec(), false));
        assert!(p, "a ctrl-p at the end of a chunk waits for the next");
        assert_eq!(scan_detach(b"\x11rest", &mut p), (Vec::new(), true));
        let mut p = false;
        assert_eq!(
            scan_detach(b"\x10x\x10", &mut p),
            (b"\x10x".to_vec(), false),
            "a ctrl-p not followed by ctrl-q passes through"
        );
    }

    #[test]
    fn frames_are_stripped_only_for_terminals() {
        assert_eq!(client_bytes(2, b"hi", true), b"hi");
        assert_eq!(client_bytes(2, b"hi", false), b"\x02\0\0\0\0\0\0\x02hi");
    }
}
