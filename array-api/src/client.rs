//! A small HTTP/1 client for the CLI: talks to the daemon over its unix socket (or TCP, by IP
//! address or DNS name; over TLS the server's certificate is checked for that name).
//!
//! [`Client::upgrade`] turns a request into a raw byte stream (exec, attach); [`stdcopy`] decodes
//! the framed output such a stream carries when there is no terminal.

pub mod stdcopy;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::serve::Listen;

/// The request methods [`Client::json`] takes (re-exported so that callers need no HTTP crate).
pub use hyper::Method;

/// The raw byte stream of a connection the daemon switched to (`101 Switching Protocols`): what
/// [`Client::upgrade`] returns, a tokio `AsyncRead + AsyncWrite`. `shutdown()` half-closes it
/// (the other side reads end-of-file, the stream stays readable).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

mod bytes_body {
    pub type Body = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::io::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {host}: {source} (is `inarray serve` running?)")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed: most often a certificate not signed by the CA given, or not
    /// made out to the host name or address connected to.
    #[error("tls with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected reply: {0}")]
    Reply(String),
}

/// Where the daemon is: its unix socket, or a TCP host by IP address or DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    /// `name`: an IP address or a DNS name, resolved when connecting; over TLS the server's
    /// certificate must be made out to it (an IP address SAN for an address, a DNS name SAN
    /// for a name).
    Tcp {
        name: String,
        port: u16,
    },
}

impl FromStr for Host {
    type Err = String;
    /// `unix:/PATH`, `tcp:HOST:PORT` or `tcp://HOST:PORT`; HOST is a DNS name, an IPv4 address
    /// or a bracketed IPv6 one (`[::1]`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if !p.starts_with('/') {
                return Err(format!("host {s:?}: the socket path must be absolute"));
            }
            return Ok(Self::Unix(p.into()));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(format!(
                "host {s:?}: expected unix:/PATH or tcp://HOST:PORT"
            ));
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let bad = |why: &str| format!("host {s:?}: {why} (expected tcp://HOST:PORT)");
        let (name, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        let name = match name.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6.strip_suffix(']').ok_or_else(|| bad("an unclosed ["))?;
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address between [ ]"))?;
                v6
            }
            None => name,
        };
        let dns = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if name.parse::<std::net::IpAddr>().is_err() && !dns(name) {
            return Err(bad("not an IP address or a DNS name"));
        }
        Ok(Self::Tcp {
            name: name.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp { name, port } if name.contains(':') => write!(f, "tcp://[{name}]:{port}"),
            Self::Tcp { name, port } => write!(f, "tcp://{name}:{port}"),
        }
    }
}

impl From<Listen> for Host {
    fn from(l: Listen) -> Self {
        match l {
            Listen::Unix(p) => Self::Unix(p),
            Listen::Tcp(a) => Self::Tcp {
                name: a.ip().to_string(),
                port: a.port(),
            },
        }
    }
}

pub struct Client {
    host: Host,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// How the client speaks TLS to a TCP host: the CA that signed the server's certificate, and
/// optionally a client certificate and key (mutual TLS). PEM files.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    fn connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let roots = crate::serve::load_roots(&self.ca, "tls ca")?;
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(c), Some(k)) => {
                let certs = CertificateDer::pem_file_iter(c)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("tls cert {}: {e}", c.display()))?;
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| format!("tls key {}: {e}", k.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("tls cert/key: {e}"))?
            }
            _ => return Err("a tls client certificate and its key go together".into()),
        };
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }
}

impl Client {
    pub fn new(host: impl Into<Host>) -> Self {
        Self {
            host: host.into(),
            token: None,
            tls: None,
        }
    }

    /// Speaks TLS to TCP hosts (the unix socket is never TLS).
    pub fn with_tls(mut self, tls: Option<&TlsOptions>) -> Result<Self, ClientError> {
        self.tls = tls
            .map(TlsOptions::connector)
            .transpose()
            .map_err(ClientError::Reply)?;
        Ok(self)
    }

    /// Sends `Authorization: Bearer <token>` with every request (TCP listeners need it).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        if let Some(t) = &self.token {
            let v = hyper::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                ClientError::Reply("the token holds characters a header cannot".into())
            })?;
            req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
        }
        let conn_err = |source| ClientError::Connect {
            host: self.host.to_string(),
            source,
        };
        macro_rules! go {
            ($stream:expr) => {{
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new($stream)).await?;
                // `with_upgrades`: after a 101 the connection hands its socket to
                // `hyper::upgrade::on` instead of closing it; every other reply is served the same.
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(sender.send_request(req).await?)
            }};
        }
        match &self.host {
            Host::Unix(p) => go!(tokio::net::UnixStream::connect(p).await.map_err(conn_err)?),
            Host::Tcp { name, port } => {
                // A name is resolved here; each of its addresses is tried in turn.
                let tcp = tokio::net::TcpStream::connect((name.as_str(), *port))
                    .await
                    .map_err(conn_err)?;
                match &self.tls {
                    None => go!(tcp),
                    Some(tls) => {
                        // An address is checked against the certificate's IP SANs, a name
                        // against its DNS SANs.
                        let server =
                            tokio_rustls::rustls::pki_types::ServerName::try_from(name.clone())
                                .map_err(|e| {
                                    ClientError::Reply(format!(
                                        "{name}: not a TLS server name: {e}"
                                    ))
                                })?;
                        let stream =
                            tls.connect(server, tcp)
                                .await
                                .map_err(|source| ClientError::Tls {
                                    host: self.host.to_string(),
                                    source,
                                })?;
                        go!(stream)
                    }
                }
            }
        }
    }

    fn request(method: Method, path: &str, body: Body, content_type: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "inarray")
            .header("content-type", content_type)
            .body(body)
            .expect("valid request")
    }

    /// Sends a request with an optional JSON body; returns the decoded JSON reply (Null for 204).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let body = http_body_util::Full::new(hyper::body::Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed();
        let resp = self
            .send(Self::request(method, path, body, "application/json"))
            .await?;
        decode(resp).await
    }

    /// Streams a file as the request body (image import).
    pub async fn upload(&self, path: &str, file: &Path) -> Result<serde_json::Value, ClientError> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::File {
                path: file.to_owned(),
                source,
            })?;
        let stream = tokio_util::io::ReaderStream::new(f);
        let body = http_body_util::StreamBody::new(futures_util::TryStreamExt::map_ok(
            stream,
            hyper::body::Frame::data,
        ))
        .boxed();
        let resp = self
            .send(Self::request(
                Method::POST,
                path,
                body,
                "application/octet-stream",
            ))
            .await?;
        decode(resp).await
    }

    /// POSTs a JSON body and hands every line of a JSON-lines answer to `sink` as it arrives
    /// (image pulls). A non-2xx answer is an error as with [`Client::json`].
    pub async fn post_lines(
        &self,
        path: &str,
        body: &serde_json::Value,
        mut sink: impl FnMut(serde_json::Value),
    ) -> Result<(), ClientError> {
        let bytes = serde_json::to_vec(body).expect("json");
        let body = http_body_util::Full::new(hyper::body::Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed();
        let resp = self
            .send(Self::request(Method::POST, path, body, "application/json"))
            .await?;
        if !resp.status().is_success() {
            return decode(resp).await.map(|_| ());
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                buf.extend_from_slice(d);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let v = serde_json::from_slice(&line)
                        .map_err(|e| ClientError::Reply(e.to_string()))?;
                    sink(v);
                }
            }
        }
        Ok(())
    }

    /// Sends a request asking to switch the connection to a raw byte stream (`Connection: Upgrade`,
    /// `Upgrade: tcp`) and returns that stream once the daemon answers `101 Switching Protocols`.
    /// Any other answer is an error: a non-2xx one decoded as with [`Client::json`] (so the
    /// daemon's message reaches the user), a 2xx one as [`ClientError::Reply`].
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Upgraded, ClientError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let body = http_body_util::Full::new(hyper::body::Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed();
        let mut req = Self::request(method, path, body, "application/json");
        let h = req.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("tcp"),
        );
        let resp = self.send(req).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            decode(resp).await?;
            return Err(ClientError::Reply(format!(
                "the daemon answered {status} instead of switching to a stream"
            )));
        }
        Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
    }

    /// GETs `path` and hands every chunk of the body to `sink` as it arrives (log following).
    pub async fn stream(&self, path: &str, mut sink: impl FnMut(&[u8])) -> Result<(), ClientError> {
        let body = http_body_util::Empty::new().map_err(|e| match e {}).boxed();
        let resp = self
            .send(Self::request(Method::GET, path, body, "application/json"))
            .await?;
        if !resp.status().is_success() {
            return decode(resp).await.map(|_| ());
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                sink(d);
            }
        }
        Ok(())
    }
}

async fn decode(resp: Response<Incoming>) -> Result<serde_json::Value, ClientError> {
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if status.is_success() {
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Reply(e.to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Err(ClientError::Api {
        status,
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
        message: v["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&bytes))),
    })
}
