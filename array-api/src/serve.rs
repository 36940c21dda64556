//! Listening on unix sockets and TCP, and serving the router until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::access::{Limits, Peer};

/// Where the API listens: `unix:/run/inarray/inarray.sock` or `tcp:127.0.0.1:7070`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("listen {s:?}: the socket path must be absolute"));
            }
            return Ok(Self::Unix(p.into()));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            return a
                .parse()
                .map(Self::Tcp)
                .map_err(|e| format!("listen {s:?}: {e}"));
        }
        Err(format!(
            "listen {s:?}: expected unix:/PATH or tcp:HOST:PORT"
        ))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

pub enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    /// A TCP listener, speaking TLS when it has an acceptor.
    Tcp(tokio::net::TcpListener, Option<TlsAcceptor>),
}

/// The certificates of a PEM CA bundle; errors name `what` and the file.
pub(crate) fn load_roots(
    path: &std::path::Path,
    what: &str,
) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let err = |e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| err(&e))? {
        roots.add(c.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    if roots.is_empty() {
        return Err(err(&"no certificate in it"));
    }
    Ok(roots)
}

/// The TLS setup of the TCP listeners: a PEM certificate chain and key, and optionally a PEM CA
/// bundle whose signature every client must present (mutual TLS). TLS 1.2 and 1.3 (rustls, ring).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("api.tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "api.tls_cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("api.tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca, "api.tls_client_ca")?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("api.tls_client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("api.tls_cert/tls_key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds every listener up front so that a bad address fails start-up with a one-line error.
/// Unix sockets get mode `mode` (0660 by default) and group `group`; a stale socket file nobody answers on is
/// replaced, a live one is an error (another daemon).
pub async fn bind(
    listens: &[Listen],
    mode: u32,
    group: Option<u32>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for l in listens {
        match l {
            Listen::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("socket directory {}: {e}", dir.display()))?;
                }
                if path.exists() {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(format!(
                            "socket {}: another daemon is listening on it",
                            path.display()
                        ));
                    }
                    std::fs::remove_file(path).map_err(|e| {
                        format!(
                            "socket {}: cannot remove the stale file: {e}",
                            path.display()
                        )
                    })?;
                }
                let ul = tokio::net::UnixListener::bind(path)
                    .map_err(|e| format!("socket {}: {e}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("socket {}: cannot set its mode: {e}", path.display()))?;
                if let Some(gid) = group {
                    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                        format!("socket {}: cannot set its group: {e}", path.display())
                    })?;
                }
                out.push(Bound::Unix(ul, path.clone()));
            }
            Listen::Tcp(addr) => {
                // Every TCP request needs a bearer token (access::guard), so any address may be bound.
                let tl = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("listen tcp:{addr}: {e}"))?;
                out.push(Bound::Tcp(tl, tls.clone().map(TlsAcceptor::from)));
            }
        }
    }
    Ok(out)
}

/// Serves `router` on every bound listener until `shutdown` resolves. Then no connection is
/// accepted any more, idle ones are closed, and requests in flight get `limits.shutdown_timeout`
/// to finish before their connections are closed too.
///
/// Each connection is HTTP/1 with `limits.header_timeout` to send each request's headers (which
/// also closes idle keep-alive connections), at most `limits.max_connections` per listener, and
/// every request carries the connection's [`Peer`] (SO_PEERCRED on unix sockets).
pub async fn serve<F>(
    router: Router,
    bound: Vec<Bound>,
    limits: Limits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_each(
        bound.into_iter().map(|b| (b, router.clone())).collect(),
        limits,
        shutdown,
    )
    .await
}

/// [`serve`] with a router per listener (the native API on some, the Docker API on another),
/// under one shutdown.
pub async fn serve_each<F>(
    listeners_and_routers: Vec<(Bound, Router)>,
    limits: Limits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, _) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();
    let conns = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
    for (b, r) in listeners_and_routers {
        let rx = tx.subscribe();
        let conns = conns.clone();
        listeners.push(tokio::spawn(accept_loop(b, r, limits, rx, conns)));
    }
    shutdown.await;
    let _ = tx.send(true);
    for l in listeners {
        l.await.map_err(std::io::Error::other)?;
    }
    let mut set = std::mem::take(&mut *conns.lock().unwrap_or_else(|p| p.into_inner()));
    let open = set.len();
    if open > 0 {
        tracing::info!(connections = open, "waiting for requests in flight");
    }
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = set.len(),
            timeout = ?limits.shutdown_timeout,
            "closing connections whose requests did not finish in time"
        );
        set.shutdown().await;
    }
    Ok(())
}

async fn accept_loop(
    b: Bound,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    conns: Arc<Mutex<tokio::task::JoinSet<()>>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let unix_path = match &b {
        Bound::Unix(_, p) => Some(p.clone()),
        Bound::Tcp(..) => None,
    };
    // Refusals are logged at most every 10 s (a flood must not flood the log too).
    let mut refused = 0u64;
    let mut last_warn: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|v| *v) => break,
            a = accept(&b) => a,
        };
        let (io, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                use nix::errno::Errno;
                let exhausted = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(*n as i32));
                tracing::debug!(error = %e, "accept failed");
                if exhausted {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    last_peer = ?peer,
                    refused,
                    max = limits.max_connections,
                    "too many connections: closing new ones"
                );
                last_warn = Some(std::time::Instant::now());
                refused = 0;
            }
            continue;
        };
        let r = router.clone();
        let stop = stop.clone();
        let mut set = conns.lock().unwrap_or_else(|p| p.into_inner());
        // Finished connections are reaped here so the set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            serve_connection(io, peer, r, limits, stop).await;
            drop(slot);
        });
    }
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
}

/// An accepted stream (a TCP one not yet through its TLS handshake).
enum Io {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream, Option<TlsAcceptor>),
}

async fn accept(b: &Bound) -> std::io::Result<(Io, Peer)> {
    match b {
        Bound::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            let cred = s.peer_cred()?;
            let peer = Peer::Unix {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            };
            Ok((Io::Unix(s), peer))
        }
        Bound::Tcp(l, tls) => {
            let (s, addr) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((
                Io::Tcp(s, tls.clone()),
                Peer::Tcp {
                    addr,
                    client_cert: None,
                },
            ))
        }
    }
}

async fn serve_connection(
    io: Io,
    peer: Peer,
    router: Router,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    match io {
        Io::Unix(s) => drive(TokioIo::new(s), peer, false, router, limits, stop).await,
        Io::Tcp(s, None) => drive(TokioIo::new(s), peer, false, router, limits, stop).await,
        Io::Tcp(s, Some(acceptor)) => {
            // The handshake gets the header timeout too (a silent client is cut off).
            let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(s)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(peer = ?peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = ?peer, "tls handshake timed out");
                    return;
                }
            };
            let peer = match peer {
                Peer::Tcp { addr, .. } => Peer::Tcp {
                    addr,
                    client_cert: tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| fingerprint(c)),
                },
                p => p,
            };
            drive(TokioIo::new(tls), peer, true, router, limits, stop).await
        }
    }
}

/// `sha256:<hex>` of a DER certificate.
fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(der);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

async fn drive<I>(
    io: I,
    peer: Peer,
    tls: bool,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        if tls {
            req.extensions_mut().insert(crate::access::TlsConnection);
        }
        tower::ServiceExt::oneshot(router.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(32 * 1024)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        // WebSocket subscriptions (GET /v1/subscriptions/{name}/ws) take the connection over.
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection closed with an error");
    }
}
