//! Attach and logs.
//!
//! **Attach before start** (what `docker run` does: create, attach, wait, start): an attach to
//! a container that is not running answers 101 at once and registers a *pending attach*; the
//! Docker start of that container takes the pending attaches, starts the container with its
//! output **held** (`Manager::start_with(id, hold = true)`: the shim relays its stdio and
//! keeps the output — even of a process that has already exited — until the first client is
//! attached, at most 5 s) and hands each pending attach its stream (`Manager::attach`). So the
//! first line of a container that prints and exits at once reaches the client. A start that
//! fails, and a removal, close the pending attaches. The stream is the native one
//! (`crate::attach`): stdcopy frames for a container without a terminal, raw bytes with one.
//!
//! **Logs**: the native log records each entry's stream and time (the shim writes it in the CRI
//! format, rotated by size), so `logs` frames stdout and stderr apart and honours `since`,
//! `until`, `tail` and `timestamps` through the native reader (`inarray_runtime::logs`).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use inarray_runtime::logs::{LogFollower, LogQuery};
use inarray_runtime::{Attachment, ContainerConfig, Manager};
use inarray_store::ContainerState;
use tokio::sync::oneshot;

use super::errors::{DockerError, Result};
use super::{DockerQuery, DockerState};
use crate::attach::{requested, respond, respond_later, Source};
use crate::containers::Follow;
use crate::extract::Path;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/logs", get(logs))
}

/// At most this many attaches may wait for one container's start.
const MAX_PENDING: usize = 16;

struct Waiter {
    stdin: bool,
    tx: oneshot::Sender<Attachment>,
}

/// Attaches waiting for their container's start, by container id.
#[derive(Default)]
pub struct PendingAttaches(Mutex<HashMap<String, Vec<Waiter>>>);

impl PendingAttaches {
    fn add(&self, id: &str, stdin: bool) -> Result<oneshot::Receiver<Attachment>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(id.to_owned()).or_default();
        // Those whose client is gone do not count.
        list.retain(|w| !w.tx.is_closed());
        if list.len() >= MAX_PENDING {
            return Err(DockerError::conflict(format!(
                "container {id} has {MAX_PENDING} attaches waiting for its start already"
            )));
        }
        let (tx, rx) = oneshot::channel();
        list.push(Waiter { stdin, tx });
        Ok(rx)
    }

    fn take(&self, id: &str) -> Vec<Waiter> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id).unwrap_or_default()
    }

    /// Drops the attaches waiting for `id` (it was removed): their streams close.
    pub fn forget(&self, id: &str) {
        drop(self.take(id));
    }
}

/// Starts a created or exited container; with attaches waiting, holds its output for them and
/// hands each its stream.
pub async fn start_with_pending(st: &DockerState, id: &str) -> Result<()> {
    let waiters = st.pending.take(id);
    let waiters: Vec<Waiter> = waiters.into_iter().filter(|w| !w.tx.is_closed()).collect();
    let row = st.manager.start_with(id, !waiters.is_empty()).await?;
    for w in waiters {
        match st.manager.attach(&row.id, w.stdin, false).await {
            Ok(a) => {
                let _ = w.tx.send(a);
            }
            Err(e) => {
                tracing::debug!(container = %row.id, error = %e, "a pending attach could not be connected")
            }
        }
    }
    Ok(())
}

async fn source(m: Manager, id: String, a: Attachment, stdin: bool) -> Source {
    match a {
        Attachment::Relayed(a) => Source::Shim {
            stream: a.stream,
            stdin,
        },
        Attachment::Log { .. } => {
            Source::Log(Box::new(Follow::from_end(m, id, LogQuery::default())))
        }
    }
}

async fn attach(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
    mut req: Request,
) -> Result<Response> {
    let row = st.manager.get(&id).await?;
    let cfg: ContainerConfig = serde_json::from_str(&row.spec).map_err(DockerError::internal)?;
    if !q.bool("stream") {
        return Err(DockerError::bad_request(
            "stream: only stream=1 is supported (read past output with GET /containers/{id}/logs)",
        ));
    }
    if q.str("detachKeys").is_some_and(|k| k != "ctrl-p,ctrl-q") {
        return Err(DockerError::bad_request(
            "detachKeys: not supported by inarray: the detach keys are ctrl-p,ctrl-q",
        ));
    }
    let stdin = q.bool("stdin");
    let Some(up) = requested(&mut req)? else {
        return Err(DockerError::bad_request(
            "attach needs an upgraded connection (Connection: Upgrade, Upgrade: tcp)",
        ));
    };
    let m = st.manager.clone();
    if matches!(
        row.state,
        ContainerState::Running | ContainerState::Restarting
    ) {
        let a = st.manager.attach(&row.id, stdin, false).await?;
        let src = source(m, row.id, a, stdin).await;
        return Ok(respond(up, src, cfg.tty, async {}));
    }
    let rx = st.pending.add(&row.id, stdin)?;
    let id = row.id;
    let later = async move {
        let a = rx.await.ok()?;
        Some(source(m, id, a, stdin).await)
    };
    Ok(respond_later(up, cfg.tty, later, async {}))
}

/// One stdcopy frame (or the bytes themselves on a terminal).
fn frame(stream: u8, data: &[u8], tty: bool) -> Vec<u8> {
    if tty {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `since`/`until`: seconds since the epoch (fractions allowed) or RFC 3339; 0 is no bound.
fn time(q: &DockerQuery, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    match q.str(key) {
        None | Some("0") => Ok(None),
        Some(v) => Ok(Some(crate::containers::parse_time(key, v)?)),
    }
}

/// The container log through the native reader (`inarray_runtime::logs`): each entry framed as
/// the stream it came from, filtered by `stdout`/`stderr`, `since`/`until`, `tail`, with
/// `timestamps`; with `follow`, what comes after until the container stops for good.
async fn logs(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<Response> {
    let (stdout, stderr) = (q.bool("stdout"), q.bool("stderr"));
    if !stdout && !stderr {
        return Err(DockerError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match q.str("tail") {
        None | Some("all") => None,
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            DockerError::bad_request(format!("tail: {t:?} is not \"all\" or a number of lines"))
        })?),
    };
    let query = LogQuery {
        stdout,
        stderr,
        since: time(&q, "since")?,
        until: time(&q, "until")?,
        tail,
        timestamps: q.bool("timestamps"),
    };
    let row = st.manager.get(&id).await?;
    let cfg: ContainerConfig = serde_json::from_str(&row.spec).map_err(DockerError::internal)?;
    let tty = cfg.tty;
    let path = st.manager.paths(&row.id).log();
    let (now, end) = {
        let (p, query) = (path.clone(), query.clone());
        tokio::task::spawn_blocking(move || inarray_runtime::logs::read(&p, &query))
            .await
            .map_err(DockerError::internal)?
            .map_err(|e| DockerError::internal(format!("{}: {e}", path.display())))?
    };
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let head: Vec<std::io::Result<Vec<u8>>> = now
        .into_iter()
        .map(|c| Ok(frame(c.stream, &c.data, tty)))
        .collect();
    let head = futures_util::stream::iter(head);
    if !q.bool("follow") {
        return Ok((
            [(header::CONTENT_TYPE, content_type)],
            Body::from_stream(head),
        )
            .into_response());
    }
    let follow = Follow::new(
        st.manager.clone(),
        row.id,
        LogFollower::from(&path, query, end),
    );
    let rest = futures_util::stream::unfold(follow, move |mut f| async move {
        let c = f.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(frame(c.stream, &c.data, tty)), f))
    });
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(futures_util::StreamExt::chain(head, rest)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_stdcopy() {
        assert_eq!(frame(2, b"hi", false), b"\x02\0\0\0\0\0\0\x02hi");
        assert_eq!(frame(1, b"hi", true), b"hi");
    }
}
