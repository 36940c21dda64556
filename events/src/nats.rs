//! Optional publishing to NATS JetStream (config `[events.nats]`), over the NATS text protocol
//! written here (CONNECT, SUB, HPUB, MSG/HMSG, PING/PONG) — no client library.
//!
//! The publisher is an ordinary durable subscription (default name `nats`, created from "now" at
//! the first start): it takes a batch, publishes each event to `<subject>.<watch>` with the
//! header `Nats-Msg-Id: inarray-<seq>` (JetStream drops duplicates within its window), waits
//! for every JetStream acknowledgement, and only then acks the batch. A failure (server down,
//! no stream, an error ack) is retried with a backoff of 100 ms doubling up to 30 s: the
//! subscription's at-least-once delivery and the message ids make it effectively once in the
//! stream.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::service::Events;
use crate::spec::{From, LogEvent, SubscriptionSpec};
use crate::EventsError;

/// `[events.nats]` in the daemon's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// File events go to `<subject>.<watch>` (default "inarray.events"), lifecycle events to
    /// `<subject>.<type>` (`inarray.events.container.die`).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A JetStream stream to create (subjects `<subject>.>`) when it does not exist.
    #[serde(default)]
    pub stream: Option<String>,
    /// The subscription that carries the cursor (default "nats").
    #[serde(default = "default_subscription")]
    pub subscription: String,
    /// Watches to publish (default: all); the subscription is made with them.
    #[serde(default)]
    pub watches: Vec<String>,
    /// Event types to publish (default: file events), as a subscription's `types`.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
}

fn default_types() -> Vec<String> {
    vec![inarray_store::FILE.to_owned()]
}

fn default_subject() -> String {
    "inarray.events".into()
}

fn default_subscription() -> String {
    "nats".into()
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl NatsConfig {
    pub fn validate(&self) -> Result<(), String> {
        parse_url(&self.url)?;
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
                })
        };
        if !token_ok(&self.subject) {
            return Err(format!(
                "subject {:?}: use dot-separated tokens of [A-Za-z0-9_-]",
                self.subject
            ));
        }
        crate::spec::parse_types("types", &self.types).map_err(|e| e.to_string())?;
        if let Some(s) = &self.stream {
            if !token_ok(s) || s.contains('.') {
                return Err(format!("stream {s:?}: use [A-Za-z0-9_-]"));
            }
        }
        crate::spec::validate_name(
            &inarray_store::names::SUBSCRIPTION,
            "subscription",
            &self.subscription,
        )
        .map_err(|e| e.to_string())
    }
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("nats://")
        .ok_or_else(|| format!("url {url:?} is not nats://HOST:PORT"))?;
    let (h, p) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("url {url:?} has no port"))?;
    let port = p
        .trim_end_matches('/')
        .parse::<u16>()
        .map_err(|_| format!("url {url:?} has a bad port"))?;
    Ok((h.to_owned(), port))
}

/// One connection to a NATS server.
pub struct Conn {
    rd: BufReader<tokio::io::ReadHalf<TcpStream>>,
    wr: tokio::io::WriteHalf<TcpStream>,
    inbox: String,
}

/// A message received on our inbox: (subject, status line of headers if any, payload).
struct Msg {
    subject: String,
    status: Option<String>,
    payload: Vec<u8>,
}

impl Conn {
    pub async fn connect(url: &str) -> Result<Self, String> {
        let (host, port) = parse_url(url)?;
        let s = tokio::time::timeout(TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let (r, w) = tokio::io::split(s);
        let mut c = Conn {
            rd: BufReader::new(r),
            wr: w,
            inbox: format!("_INBOX.inarray.{}", std::process::id()),
        };
        let info = c.line().await?;
        if !info.starts_with("INFO ") {
            return Err(format!("not a NATS server: {info:?}"));
        }
        let sub = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"name\":\"inarray\"}}\r\nSUB {}.* 1\r\nPING\r\n",
            c.inbox
        );
        c.write(sub.as_bytes()).await?;
        loop {
            match c.line().await?.as_str() {
                "PONG" => return Ok(c),
                "+OK" | "PING" => {}
                l if l.starts_with("-ERR") => return Err(format!("server refused: {l}")),
                l if l.starts_with("INFO ") => {}
                l => return Err(format!("unexpected {l:?}")),
            }
        }
    }

    async fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.wr
            .write_all(b)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.rd.read_line(&mut l))
            .await
            .map_err(|_| "no answer from the NATS server".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the NATS server closed the connection".into());
        }
        if l.len() > 64 * 1024 {
            return Err("protocol line too long".into());
        }
        Ok(l.trim_end().to_owned())
    }

    /// The next message for our inbox (answering PINGs meanwhile).
    async fn next_msg(&mut self) -> Result<Msg, String> {
        loop {
            let l = self.line().await?;
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[0] {
                "PING" => self.write(b"PONG\r\n").await?,
                "+OK" | "PONG" | "INFO" => {}
                "-ERR" => return Err(format!("server error: {l}")),
                "MSG" | "HMSG" => {
                    let hmsg = parts[0] == "HMSG";
                    let nums: Vec<usize> = parts
                        .iter()
                        .rev()
                        .take(if hmsg { 2 } else { 1 })
                        .filter_map(|p| p.parse().ok())
                        .collect();
                    let (total, hlen) = match (hmsg, nums.as_slice()) {
                        (false, [t]) => (*t, 0),
                        (true, [t, h]) => (*t, *h),
                        _ => return Err(format!("bad message line {l:?}")),
                    };
                    if total > 1 << 20 {
                        return Err("message too large".into());
                    }
                    let mut buf = vec![0; total + 2];
                    tokio::time::timeout(TIMEOUT, self.rd.read_exact(&mut buf))
                        .await
                        .map_err(|_| "message cut short".to_owned())?
                        .map_err(|e| format!("read: {e}"))?;
                    buf.truncate(total);
                    let status = hmsg.then(|| {
                        String::from_utf8_lossy(&buf[..hlen.min(buf.len())])
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    });
                    let payload = buf.split_off(hlen.min(buf.len()));
                    return Ok(Msg {
                        subject: parts[1].to_owned(),
                        status,
                        payload,
                    });
                }
                _ => return Err(format!("unexpected {l:?}")),
            }
        }
    }

    /// A request/reply (JetStream API); the reply's payload.
    pub async fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        let reply = format!("{}.r", self.inbox);
        let mut b = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.write(&b).await?;
        loop {
            let m = self.next_msg().await?;
            if m.subject == reply {
                if let Some(s) = m.status.filter(|s| s.contains("503")) {
                    return Err(format!(
                        "no responders for {subject} ({s}): is JetStream enabled?"
                    ));
                }
                return Ok(m.payload);
            }
        }
    }

    /// Publishes a batch with message ids and waits for every JetStream acknowledgement.
    pub async fn publish(&mut self, items: &[(String, String, Vec<u8>)]) -> Result<(), String> {
        let mut out = Vec::new();
        for (i, (subject, id, payload)) in items.iter().enumerate() {
            let headers = format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n");
            out.extend_from_slice(
                format!(
                    "HPUB {subject} {}.p{i} {} {}\r\n",
                    self.inbox,
                    headers.len(),
                    headers.len() + payload.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        self.write(&out).await?;
        let mut pending = items.len();
        while pending > 0 {
            let m = self.next_msg().await?;
            if !m.subject.starts_with(&format!("{}.p", self.inbox)) {
                continue;
            }
            if let Some(s) = m.status.filter(|s| s.contains("503")) {
                return Err(format!("no stream takes these subjects ({s})"));
            }
            let v: serde_json::Value = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("bad JetStream ack: {e}"))?;
            if let Some(e) = v.get("error") {
                return Err(format!("JetStream refused a message: {e}"));
            }
            pending -= 1;
        }
        Ok(())
    }
}

async fn ensure_stream(c: &mut Conn, cfg: &NatsConfig) -> Result<(), String> {
    let Some(stream) = &cfg.stream else {
        return Ok(());
    };
    let body = serde_json::json!({"name": stream, "subjects": [format!("{}.>", cfg.subject)], "storage": "file"});
    let r = c
        .request(
            &format!("$JS.API.STREAM.CREATE.{stream}"),
            body.to_string().as_bytes(),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&r).map_err(|e| e.to_string())?;
    match v.get("error") {
        // 10058: the stream exists (with another configuration: left as the operator made it).
        Some(e) if e["err_code"] == 10058 => Ok(()),
        Some(e) => Err(format!("cannot create stream {stream}: {e}")),
        None => Ok(()),
    }
}

/// Creates the publisher's subscription if needed and starts its task.
pub async fn start(
    ev: &Events,
    cfg: NatsConfig,
) -> Result<tokio::task::JoinHandle<()>, EventsError> {
    cfg.validate()
        .map_err(|e| crate::invalid("events.nats", e))?;
    if ev.subscription(&cfg.subscription).is_err() {
        ev.create_subscription(SubscriptionSpec {
            name: cfg.subscription.clone(),
            watches: cfg.watches.clone(),
            from: From::Now,
            ack_deadline_seconds: 60,
            webhook: None,
            types: cfg.types.clone(),
        })
        .await?;
    }
    Ok(tokio::spawn(run(ev.clone(), cfg)))
}

async fn run(ev: Events, cfg: NatsConfig) {
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(100);
    let mut batch: Vec<LogEvent> = Vec::new();
    loop {
        if batch.is_empty() {
            match ev
                .next(&cfg.subscription, Duration::from_secs(30), 500)
                .await
            {
                Ok(d) => {
                    batch = d.events;
                    if batch.is_empty() {
                        continue;
                    }
                }
                Err(EventsError::NotFound { .. }) => return,
                Err(e) => {
                    tracing::error!(error = %e, "nats: cannot read events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let result = async {
            if conn.is_none() {
                let mut c = Conn::connect(&cfg.url).await?;
                ensure_stream(&mut c, &cfg).await?;
                conn = Some(c);
            }
            let items: Vec<(String, String, Vec<u8>)> = batch
                .iter()
                .map(|e| {
                    let subject = match e {
                        LogEvent::File(f) => format!("{}.{}", cfg.subject, f.watch),
                        LogEvent::Lifecycle(l) => format!("{}.{}", cfg.subject, l.kind),
                    };
                    (
                        subject,
                        format!("inarray-{}", e.seq()),
                        serde_json::to_vec(e).unwrap_or_default(),
                    )
                })
                .collect();
            conn.as_mut().expect("connected").publish(&items).await
        }
        .await;
        match result {
            Ok(()) => {
                let last = batch.last().map_or(0, LogEvent::seq);
                if let Err(e) = ev.ack(&cfg.subscription, last).await {
                    tracing::error!(error = %e, "nats: cannot acknowledge");
                }
                batch.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "nats: publishing failed; retrying");
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            subject: "inarray.events".into(),
            stream: Some("INARRAY".into()),
            subscription: "nats".into(),
            watches: vec![],
            types: vec!["file".into()],
        };
        assert!(ok.validate().is_ok());
        for bad in [
            NatsConfig {
                url: "http://x:1".into(),
                ..ok.clone()
            },
            NatsConfig {
                url: "nats://x".into(),
                ..ok.clone()
            },
            NatsConfig {
                subject: "a..b".into(),
                ..ok.clone()
            },
            NatsConfig {
                subject: "a.*".into(),
                ..ok.clone()
            },
            NatsConfig {
                stream: Some("a.b".into()),
                ..ok.clone()
            },
            NatsConfig {
                subscription: "../x".into(),
                ..ok.clone()
            },
            NatsConfig {
                types: vec!["containers".into()],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
