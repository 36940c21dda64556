//! Webhook delivery: a subscription with a webhook is pushed instead of polled. Each batch is one
//! `POST` of a JSON array of events; a 2xx answer acknowledges it, anything else (or no answer in
//! 10 s) is retried with a backoff of 100 ms doubling up to 30 s — the same batch, until it is
//! taken. With a secret, `X-Inarray-Signature: sha256=<hex HMAC-SHA256 of the body>` signs it.
//!
//! The POST goes through the images crate's HTTP client ([`inarray_images::http`]), the daemon's
//! only one: `http://` or `https://`; HTTPS trusts the node's trust store and the CA file the
//! operator configured (`[events] webhook_ca_file`, [`crate::EventsOptions::webhook_ca_file`]).

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use inarray_images::http::{Bytes, Client, HeaderName, Timeouts, Url};
use sha2::Sha256;

use crate::service::Events;
use crate::spec::WebhookSpec;
use crate::EventsError;

const TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The receiver's answer body is read (and dropped) up to this size.
const ANSWER_LIMIT: u64 = 64 * 1024;

/// Checks a webhook URL: `http(s)://HOST[:PORT][/PATH]`, at most 2048 bytes, no user info.
pub fn parse_url(url: &str) -> Result<Url, String> {
    if url.len() > 2048 {
        return Err("longer than 2048 bytes".into());
    }
    Url::parse(url)
}

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(
    client: &Client,
    spec: &WebhookSpec,
    ca_file: Option<&Path>,
    sub: &str,
    range: &str,
    body: Bytes,
) -> Result<u16, String> {
    let url = parse_url(&spec.url)?;
    let mut headers = vec![
        (
            HeaderName::from_static("content-type"),
            "application/json".to_owned(),
        ),
        (
            HeaderName::from_static("x-inarray-subscription"),
            sub.to_owned(),
        ),
        (
            HeaderName::from_static("x-inarray-seq-range"),
            range.to_owned(),
        ),
    ];
    if let Some(secret) = &spec.secret {
        headers.push((
            HeaderName::from_static("x-inarray-signature"),
            signature(secret, &body),
        ));
    }
    let resp = client
        .post(&url, &headers, body, ca_file)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status;
    // The answer's body means nothing here; it is read so that the receiver can finish writing.
    let _ = resp.bytes(ANSWER_LIMIT).await;
    Ok(status)
}

/// Pushes a subscription's events to its webhook until the subscription is deleted.
pub(crate) async fn run(ev: Events, name: String, spec: WebhookSpec) {
    let client = Client::new(Timeouts::all(TIMEOUT));
    let ca_file = ev.inner.opts.webhook_ca_file.clone();
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
        let range = format!("{}-{}", first.seq(), last.seq());
        let last = last.seq();
        let body = Bytes::from(serde_json::to_vec(&d.events).unwrap_or_default());
        let mut backoff = BACKOFF_START;
        loop {
            let sent = post(
                &client,
                &spec,
                ca_file.as_deref(),
                &name,
                &range,
                body.clone(),
            );
            match tokio::time::timeout(TIMEOUT, sent).await {
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
mod tests;
