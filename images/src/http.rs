//! The one HTTP client the daemon has (registry pulls, webhooks): HTTP/1.1 GETs and POSTs over
//! hyper's connection API, on plain TCP or rustls (the system's trust store plus an optional CA
//! file per request), one connection per request, every wait bounded by a timeout and every body
//! read bounded by a byte limit the caller gives. It follows no redirects and applies no policy
//! (which hosts may be reached over plain HTTP, where credentials may go): that is the caller's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bodies and header names as the client takes them (re-exported: callers need no HTTP crate).
pub use bytes::Bytes;
pub use hyper::header::HeaderName;

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the request sent to the response headers received.
    pub headers: Duration,
    /// Longest silence while reading a body.
    pub idle: Duration,
    /// Longest time to read a whole small document (manifest, token, error body): a server
    /// dripping a byte now and then is cut off.
    pub document: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(15),
            headers: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            document: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// The same limit for every wait.
    pub fn all(limit: Duration) -> Self {
        Timeouts {
            connect: limit,
            headers: limit,
            idle: limit,
            document: limit,
        }
    }
}

/// An absolute `http(s)://host[:port]/path?query` URL (no user info, no fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let bad = |why: &str| {
            format!(
                "invalid URL {:?}: {why}",
                s.chars().take(200).collect::<String>()
            )
        };
        if s.len() > 8192 {
            return Err(bad("too long"));
        }
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("only http and https URLs are followed"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(bad("user information in URLs is refused"));
        }
        let (host, port) = split_authority(authority).map_err(|e| bad(&e))?;
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("control characters in the path"));
        }
        Ok(Url {
            https,
            host,
            port: port.unwrap_or(if https { 443 } else { 80 }),
            path,
        })
    }

    /// Resolves a `Location` header against this URL (absolute URLs and absolute paths).
    pub fn join(&self, location: &str) -> Result<Url, String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Url::parse(location);
        }
        if location.starts_with("//") {
            let scheme = if self.https { "https:" } else { "http:" };
            return Url::parse(&format!("{scheme}{location}"));
        }
        if location.starts_with('/') {
            let mut u = self.clone();
            u.path = location.to_string();
            return Url::parse(&u.to_string());
        }
        Err(format!("unsupported redirect location {location:?}"))
    }

    /// `host[:port]`, the port left out when it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Splits `host[:port]` (IPv6 in brackets).
pub(crate) fn split_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unterminated IPv6 address")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("junk after an IPv6 address")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid port {p:?}"))?,
        ),
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Why a request failed before a response arrived (names the host and what failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Why reading a body failed.
#[derive(Debug)]
pub enum BodyError {
    TooLarge(u64),
    Failed(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "the response is larger than {limit} bytes"),
            BodyError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BodyError {}

/// A response whose headers have arrived; the body is read with [`Response::chunk`] or
/// [`Response::bytes`].
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    idle: Duration,
    document: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| {
                    BodyError::Failed(format!(
                        "no data for {} s while reading the response",
                        self.idle.as_secs()
                    ))
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(BodyError::Failed(format!("reading the response: {e}")))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, refused past `limit` bytes (checked against Content-Length first).
    pub async fn bytes(mut self, limit: u64) -> Result<Vec<u8>, BodyError> {
        if let Some(len) = self.content_length() {
            if len > limit {
                return Err(BodyError::TooLarge(limit));
            }
        }
        let deadline = self.document;
        let read = async {
            let mut out = Vec::new();
            while let Some(chunk) = self.chunk().await? {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        };
        tokio::time::timeout(deadline, read).await.map_err(|_| {
            BodyError::Failed(format!(
                "the response took over {} s to arrive",
                deadline.as_secs()
            ))
        })?
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// Sends requests.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub timeouts: Timeouts,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    pub fn new(timeouts: Timeouts) -> Self {
        Client { timeouts }
    }

    /// One GET, no redirects followed; HTTPS trusts the system's CAs and those of `ca_file`.
    pub async fn get(
        &self,
        url: &Url,
        headers: &[(HeaderName, String)],
        ca_file: Option<&Path>,
    ) -> Result<Response, TransportError> {
        self.send(Method::GET, url, headers, Bytes::new(), ca_file)
            .await
    }

    /// One POST of `body` (sent with its Content-Length), no redirects followed; HTTPS trusts
    /// the system's CAs and those of `ca_file`.
    pub async fn post(
        &self,
        url: &Url,
        headers: &[(HeaderName, String)],
        body: Bytes,
        ca_file: Option<&Path>,
    ) -> Result<Response, TransportError> {
        self.send(Method::POST, url, headers, body, ca_file).await
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(HeaderName, String)],
        body: Bytes,
        ca_file: Option<&Path>,
    ) -> Result<Response, TransportError> {
        let t = self.timeouts;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            TransportError(format!("{what} {}: {e}", url.authority()))
        };
        let tcp =
            tokio::time::timeout(t.connect, TcpStream::connect((url.host.as_str(), url.port)))
                .await
                .map_err(|_| {
                    fail(
                        "timed out connecting to",
                        &format!("{} s", t.connect.as_secs()),
                    )
                })?
                .map_err(|e| fail("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if url.https {
            let config = tls_config(ca_file).map_err(|e| fail("cannot set up TLS for", &e))?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| fail("invalid TLS server name", &e))?;
            let tls = tokio_rustls::TlsConnector::from(config);
            let stream = tokio::time::timeout(t.connect, tls.connect(name, tcp))
                .await
                .map_err(|_| fail("timed out in the TLS handshake with", &"".to_string()))?
                .map_err(|e| fail("TLS handshake failed with", &e))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(256 * 1024)
            .handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| fail("HTTP handshake failed with", &e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(url.path.as_str())
            .header(hyper::header::HOST, url.authority())
            .header(
                hyper::header::USER_AGENT,
                concat!("inarray/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|e| fail("bad header for", &e))?;
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| fail("cannot build a request for", &e))?;
        let resp = tokio::time::timeout(t.headers, sender.send_request(req))
            .await
            .map_err(|_| {
                fail(
                    "no response within the time limit from",
                    &format!("{} s", t.headers.as_secs()),
                )
            })?
            .map_err(|e| fail("request failed:", &e))?;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            idle: t.idle,
            document: t.document,
        })
    }
}

/// The system's trust store (`/etc/ssl/certs`), loaded once.
fn system_roots() -> &'static Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    static ROOTS: OnceLock<Result<Vec<rustls::pki_types::CertificateDer<'static>>, String>> =
        OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(format!(
                "no trusted CA certificates found on this node ({:?})",
                found.errors.first().map(|e| e.to_string())
            ));
        }
        Ok(found.certs)
    })
}

/// Checks that `ca_file` holds PEM certificates the client can trust (for a check at start, so
/// that a bad file is reported then rather than at the first request).
pub fn check_ca_file(ca_file: &Path) -> Result<(), String> {
    tls_config(Some(ca_file)).map(|_| ())
}

/// The TLS client configuration (TLS 1.2 and 1.3): the system's CAs plus, for a request with a
/// `ca_file`, that file's certificates. Cached per CA file.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIGS: OnceLock<Mutex<HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>>> =
        OnceLock::new();
    let key = ca_file.map(Path::to_path_buf);
    let configs = CONFIGS.get_or_init(Mutex::default);
    if let Some(c) = configs.lock().expect("tls configs").get(&key) {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    match system_roots() {
        Ok(certs) => {
            for cert in certs {
                let _ = roots.add(cert.clone());
            }
        }
        Err(e) if ca_file.is_none() => return Err(e.clone()),
        Err(_) => {}
    }
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("ca_file {}: no certificate in it", path.display()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);
    configs
        .lock()
        .expect("tls configs")
        .insert(key, config.clone());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers one request on a loopback port with `201` and `done`; hands back what came in.
    async fn one_request() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the head and (for the POST) its 5-byte body are in.
            while !(got.windows(4).any(|w| w == b"\r\n\r\n")
                && (got.starts_with(b"GET") || got.ends_with(b"hello")))
            {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
                .await
                .unwrap();
            got
        });
        (port, task)
    }

    #[tokio::test]
    async fn posts_a_body_with_its_length_and_gets_carry_none() {
        let client = Client::new(Timeouts::all(Duration::from_secs(5)));
        let (port, seen) = one_request().await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/in?x=1")).unwrap();
        let header = (HeaderName::from_static("x-test"), "1".to_owned());
        let resp = client
            .post(&url, &[header], Bytes::from_static(b"hello"), None)
            .await
            .unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.bytes(100).await.unwrap(), b"done");
        let req = String::from_utf8(seen.await.unwrap())
            .unwrap()
            .to_lowercase();
        assert!(req.starts_with("post /in?x=1 http/1.1\r\n"), "{req}");
        for h in ["content-length: 5", "x-test: 1", "host: 127.0.0.1:"] {
            assert!(req.contains(h), "{h} missing: {req}");
        }
        assert!(req.ends_with("\r\n\r\nhello"), "{req}");

        let (port, seen) = one_request().await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/v2/")).unwrap();
        let resp = client.get(&url, &[], None).await.unwrap();
        assert_eq!(resp.status, 201);
        let req = String::from_utf8(seen.await.unwrap())
            .unwrap()
            .to_lowercase();
        assert!(req.starts_with("get /v2/ http/1.1\r\n"), "{req}");
        assert!(!req.contains("content-length"), "a GET has no body: {req}");
        assert!(req.ends_with("\r\n\r\n"), "{req}");
    }

    #[test]
    fn parses_and_joins_urls() {
        let u = Url::parse("https://Reg.Example:5000/v2/x/manifests/1?a=b#frag").unwrap();
        assert_eq!(
            u,
            Url {
                https: true,
                host: "reg.example".into(),
                port: 5000,
                path: "/v2/x/manifests/1?a=b".into()
            }
        );
        assert_eq!(
            u.to_string(),
            "https://reg.example:5000/v2/x/manifests/1?a=b"
        );
        assert_eq!(Url::parse("http://h").unwrap().to_string(), "http://h/");
        assert_eq!(Url::parse("http://h?x=1").unwrap().path, "/?x=1");
        assert_eq!(
            Url::parse("http://[::1]:8080/x").unwrap().to_string(),
            "http://[::1]:8080/x"
        );
        assert_eq!(
            u.join("/v2/y").unwrap().to_string(),
            "https://reg.example:5000/v2/y"
        );
        assert_eq!(
            u.join("//cdn.example/blob").unwrap().to_string(),
            "https://cdn.example/blob"
        );
        assert_eq!(
            u.join("http://other:81/z").unwrap().to_string(),
            "http://other:81/z"
        );
        for bad in [
            "ftp://h/x",
            "https://user:pw@h/x",
            "https://h:99999/",
            "https://h:0/",
            "https:///x",
            "https://h/a b",
            "https://h/\r\nX-Injected: 1",
            "h/x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(u.join("relative/path").is_err());
    }
}
