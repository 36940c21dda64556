//! Listening on unix sockets and TCP, and serving the router until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use axum::Router;

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
    Tcp(tokio::net::TcpListener),
}

/// Binds every listener up front so that a bad address fails start-up with a one-line error.
/// Unix sockets get mode `mode` (0660 by default) and group `group`; a stale socket file nobody answers on is
/// replaced, a live one is an error (another daemon).
pub async fn bind(listens: &[Listen], mode: u32, group: Option<u32>) -> Result<Vec<Bound>, String> {
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
                if !addr.ip().is_loopback() {
                    return Err(format!(
                        "listen tcp:{addr}: only loopback addresses are allowed until token authentication is configured"
                    ));
                }
                let tl = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("listen tcp:{addr}: {e}"))?;
                out.push(Bound::Tcp(tl));
            }
        }
    }
    Ok(out)
}

/// Serves `router` on every bound listener until `shutdown` resolves; in-flight requests finish.
pub async fn serve<F>(router: Router, bound: Vec<Bound>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, _) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for b in bound {
        let mut rx = tx.subscribe();
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let r = router.clone();
        tasks.push(match b {
            Bound::Unix(l, path) => tokio::spawn(async move {
                let res = axum::serve(l, r).with_graceful_shutdown(stop).await;
                let _ = std::fs::remove_file(&path);
                res
            }),
            Bound::Tcp(l) => {
                tokio::spawn(async move { axum::serve(l, r).with_graceful_shutdown(stop).await })
            }
        });
    }
    shutdown.await;
    let _ = tx.send(true);
    for t in tasks {
        t.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}
