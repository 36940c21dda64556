//! `GET /v1/subscriptions/{name}/ws`: a subscription over a WebSocket (RFC 6455), written on the
//! connection hyper hands over after the upgrade — no WebSocket library.
//!
//! The server sends one text message per delivery, the JSON of a poll's answer
//! (`{"events": [...], "redelivery": bool}`); the client acknowledges with text messages
//! `{"ack": SEQ}` (answered `{"acked": SEQ}`, or `{"error": …}`). Pings are answered; a close ends
//! it. Client messages are at most 64 KiB and must not be fragmented. Delivery is the same
//! at-least-once loop as polling: what was sent and not acknowledged in time comes again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use inarray_events::Events;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::error::ApiError;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
pub const MAX_CLIENT_MESSAGE: u64 = 64 * 1024;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Checks a WebSocket handshake's headers; returns the `Sec-WebSocket-Accept` value.
pub fn handshake(h: &HeaderMap) -> Result<String, ApiError> {
    if !header_has(h, header::UPGRADE, "websocket") || !header_has(h, header::CONNECTION, "upgrade")
    {
        return Err(ApiError::bad_request(
            "this route needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::bad_request(
            "sec-websocket-version: only 13 is supported",
        ));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .is_ok_and(|b| b.len() == 16)
        })
        .ok_or_else(|| {
            ApiError::bad_request("sec-websocket-key: missing or not 16 bytes in base64")
        })?;
    Ok(accept_key(key))
}

/// Whether `token` is one of the comma-separated values of header `name`.
pub fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks the handshake and answers 101; the session runs on the upgraded connection.
pub async fn upgrade(
    events: Events,
    name: String,
    max: u32,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Refuse a bad name before anything else.
    events.subscription(&name)?;
    let key = handshake(req.headers())?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => session(events, name, max, TokioIo::new(up)).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, "websocket".to_owned()),
            (header::CONNECTION, "Upgrade".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, key),
        ],
    )
        .into_response())
}

/// One frame (unmasked, as a server sends them).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one client frame: (opcode, unmasked payload). Errors end the session.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    if h[0] & 0x80 == 0 || h[0] & 0x70 != 0 {
        return Err(bad("fragmented or extended frames are not accepted"));
    }
    if h[1] & 0x80 == 0 {
        return Err(bad("client frames must be masked"));
    }
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_CLIENT_MESSAGE {
        return Err(bad("client message larger than 64 KiB"));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((h[0] & 0x0f, payload))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckMessage {
    ack: i64,
}

async fn session<S: AsyncRead + AsyncWrite + Send + 'static>(
    events: Events,
    name: String,
    max: u32,
    io: S,
) {
    let (mut rd, wr) = tokio::io::split(io);
    let wr = Arc::new(Mutex::new(wr));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (events, name, wr, stop) = (events.clone(), name.clone(), wr.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (op, payload) = match read_frame(&mut rd).await {
                    Ok(f) => f,
                    Err(_) => break,
                };
                let reply = match op {
                    0x1 => {
                        let answer = match serde_json::from_slice::<AckMessage>(&payload) {
                            Ok(m) => match events.ack(&name, m.ack).await {
                                Ok(_) => serde_json::json!({"acked": m.ack}),
                                Err(e) => serde_json::json!({"error": e.to_string()}),
                            },
                            Err(e) => {
                                serde_json::json!({"error": format!("expected {{\"ack\": SEQ}}: {e}")})
                            }
                        };
                        frame(0x1, answer.to_string().as_bytes())
                    }
                    0x8 => {
                        let _ = wr
                            .lock()
                            .await
                            .write_all(&frame(0x8, &payload[..payload.len().min(2)]))
                            .await;
                        break;
                    }
                    0x9 => frame(0xA, &payload),
                    0xA => continue,
                    _ => break,
                };
                if wr.lock().await.write_all(&reply).await.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    while !stop.load(Ordering::SeqCst) {
        let d = match events.next(&name, Duration::from_secs(1), max).await {
            Ok(d) => d,
            Err(e) => {
                let msg = serde_json::json!({"error": e.to_string()}).to_string();
                let _ = wr.lock().await.write_all(&frame(0x1, msg.as_bytes())).await;
                break;
            }
        };
        if d.events.is_empty() {
            continue;
        }
        let text = serde_json::to_vec(&d).unwrap_or_default();
        if wr.lock().await.write_all(&frame(0x1, &text)).await.is_err() {
            break;
        }
    }
    reader.abort();
    let _ = wr.lock().await.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        assert_eq!(frame(0x1, b"hi"), vec![0x81, 2, b'h', b'i']);
        assert_eq!(&frame(0x1, &[0; 300])[..4], &[0x81, 126, 1, 44]);
        // A masked client frame.
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | 3];
        f.extend_from_slice(&mask);
        f.extend(b"abc".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let (op, p) = read_frame(&mut &f[..]).await.unwrap();
        assert_eq!((op, p.as_slice()), (1, &b"abc"[..]));
        // Unmasked, fragmented, oversized: refused.
        assert!(read_frame(&mut &[0x81u8, 0x01, b'a'][..]).await.is_err());
        assert!(read_frame(&mut &[0x01u8, 0x81, 0, 0, 0, 0, b'a'][..])
            .await
            .is_err());
        let mut huge = vec![0x81u8, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(read_frame(&mut &huge[..]).await.is_err());
    }
}
