//! Webhook delivery: a subscription with a webhook is pushed instead of polled. Each batch is one
//! `POST` of a JSON array of events; a 2xx answer acknowledges it, anything else (or no answer in
//! 10 s) is retried with a backoff of 100 ms doubling up to 30 s — the same batch, until it is
//! taken. With a secret, `X-Inarray-Signature: sha256=<hex HMAC-SHA256 of the body>` signs it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::Sha256;

use crate::service::Events;
use crate::spec::WebhookSpec;
use crate::EventsError;

const TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// `http://HOST[:PORT][/PATH]` → (host, port, path).
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    if url.len() > 2048 {
        return Err("longer than 2048 bytes".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL (https is not supported yet)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no usable host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_owned(),
            p.parse::<u16>()
                .map_err(|_| format!("{url:?} has a bad port"))?,
        ),
        _ => (authority.to_owned(), 80),
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{url:?} has control characters or spaces in its path"
        ));
    }
    Ok((host, port, path.to_owned()))
}

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(spec: &WebhookSpec, sub: &str, range: &str, body: Bytes) -> Result<u16, String> {
    let (host, port, path) = parse_url(&spec.url)?;
    let host_only = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let stream = tokio::net::TcpStream::connect((host_only.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::post(path)
        .header("host", format!("{host}:{port}"))
        .header("content-type", "application/json")
        .header("x-inarray-subscription", sub)
        .header("x-inarray-seq-range", range);
    if let Some(secret) = &spec.secret {
        req = req.header("x-inarray-signature", signature(secret, &body));
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Pushes a subscription's events to its webhook until the subscription is deleted.
pub(crate) async fn run(ev: Events, name: String, spec: WebhookSpec) {
    loop {
        let d = match ev
            .next(&name, Duration::from_secs(30), spec.max_batch)
            .await
        {
            Ok(d) => d,
            Err(EventsError::NotFound { .. }) => return,
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "webhook: cannot read events");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (Some(first), Some(last)) = (d.events.first(), d.events.last()) else {
            continue;
        };
        let range = format!("{}-{}", first.seq, last.seq);
        let last = last.seq;
        let body = Bytes::from(serde_json::to_vec(&d.events).unwrap_or_default());
        let mut backoff = BACKOFF_START;
        loop {
            match tokio::time::timeout(TIMEOUT, post(&spec, &name, &range, body.clone())).await {
                Ok(Ok(s)) if (200..300).contains(&s) => break,
                Ok(Ok(s)) => {
                    tracing::warn!(subscription = %name, status = s, range, "webhook refused the batch; retrying")
                }
                Ok(Err(e)) => {
                    tracing::warn!(subscription = %name, error = %e, range, "webhook failed; retrying")
                }
                Err(_) => {
                    tracing::warn!(subscription = %name, range, "webhook timed out; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
            if ev.subscription(&name).is_err() {
                return;
            }
        }
        if let Err(e) = ev.ack(&name, last).await {
            tracing::error!(subscription = %name, error = %e, "webhook: cannot acknowledge");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/hook?x=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/hook?x=1".into())
        );
        assert_eq!(parse_url("http://h").unwrap(), ("h".into(), 80, "/".into()));
        for bad in [
            "https://h/",
            "ftp://h",
            "http://",
            "http://u@h/",
            "http://h:99999/",
            "http://h/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
