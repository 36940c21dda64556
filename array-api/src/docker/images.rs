//! Images: list, inspect, pull (`POST /images/create`, JSON progress lines through the native
//! pull), load (the native import; gzip- and zstd-compressed archives too), tag, remove.
//! Names in paths may contain `/` (`registry:5000/team/app`), so `/images/{name}/json`,
//! `/tag` and `DELETE /images/{name}` share one catch-all route and are told apart here.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inarray_images::{PullEvent, Reference};
use inarray_runtime::{ImageRemoval, ManagerError};
use inarray_store::ImageRow;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::errors::{DockerError, Result};
use super::types::{ImageInspect, ImageSummary};
use super::{DockerQuery, DockerState};
use crate::extract::Path;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/images/json", get(list))
        .route("/images/create", post(pull))
        .route("/images/load", post(load))
        .route("/images/get", get(save_many))
        .route(
            "/images/{*rest}",
            get(by_name).post(by_name).delete(by_name),
        )
}

/// `busybox:latest` → `busybox@sha256:…` (the manifest digest the image was imported with).
fn repo_digests(r: &ImageRow) -> Vec<String> {
    let mut out: Vec<String> = r
        .names
        .iter()
        .filter_map(|n| Reference::parse(n).ok())
        .map(|n| format!("{}@{}", n.name, r.manifest_digest))
        .collect();
    out.dedup();
    out
}

pub(super) fn summary(r: ImageRow) -> ImageSummary {
    ImageSummary {
        parent_id: String::new(),
        repo_digests: repo_digests(&r),
        created: r.created_at.timestamp(),
        size: r.size,
        shared_size: -1,
        virtual_size: r.size,
        labels: BTreeMap::new(),
        containers: -1,
        repo_tags: r.names,
        id: r.id,
    }
}

/// `GET /images/json` with the `reference` and `dangling` filters.
async fn list(State(st): State<DockerState>, q: DockerQuery) -> Result<Json<Vec<ImageSummary>>> {
    let mut references = Vec::new();
    let mut dangling = None;
    if let Some(raw) = q.str("filters") {
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| DockerError::bad_request(format!("filters: not JSON: {e}")))?;
        for (k, vals) in v.as_object().into_iter().flatten() {
            // Lenient here, as before: a value that is not a list selects nothing.
            let list = super::filter_values(k, vals).unwrap_or_default();
            match k.as_str() {
                "reference" => references = list,
                "dangling" => dangling = list.first().map(|d| d == "true" || d == "1"),
                other => {
                    return Err(DockerError::bad_request(format!(
                        "invalid filter '{other}' (inarray serves reference and dangling)"
                    )))
                }
            }
        }
    }
    let mut rows = st.manager.list_images().await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let wanted = |r: &ImageRow| {
        let refs_ok = references.is_empty()
            || references.iter().any(|want| {
                r.names.iter().any(|n| {
                    let (name, tag) = n.rsplit_once(':').unwrap_or((n, ""));
                    n == want
                        || name == want
                        || glob(want, name)
                        || glob(want, &format!("{name}:{tag}"))
                })
            });
        let dangling_ok = dangling.is_none_or(|d| d == r.names.is_empty());
        refs_ok && dangling_ok
    };
    Ok(Json(rows.into_iter().filter(wanted).map(summary).collect()))
}

/// `*` matches any run of characters but `/` (Docker's reference filter patterns).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .take_while(|i| !rest[..*i].contains('/'))
                .any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// `/images/{name}/json` (GET), `/images/{name}/tag` (POST), `/images/{name}` (DELETE).
async fn by_name(
    State(st): State<DockerState>,
    method: Method,
    Path(rest): Path<String>,
    q: DockerQuery,
) -> Result<Response> {
    match method {
        Method::GET | Method::HEAD => match rest.strip_suffix("/json") {
            Some(name) => inspect(&st, name).await,
            None => match rest.strip_suffix("/get") {
                Some(name) => save(&st, vec![name.to_owned()]).await,
                None if rest.ends_with("/history") || rest == "search" => {
                    Err(DockerError::not_implemented(format!(
                        "GET /images/{rest} is not implemented by inarray's Docker API"
                    )))
                }
                None => Err(DockerError::not_found("page not found")),
            },
        },
        Method::POST => match rest.strip_suffix("/tag") {
            Some(name) => tag(&st, name, &q).await,
            None if rest == "prune" => prune(&st, &q).await,
            None if rest.ends_with("/push") => Err(DockerError::not_implemented(format!(
                "POST /images/{rest} is not implemented by inarray's Docker API"
            ))),
            None => Err(DockerError::not_found("page not found")),
        },
        Method::DELETE => remove(&st, &rest).await,
        _ => Err(DockerError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )),
    }
}

async fn inspect(st: &DockerState, name: &str) -> Result<Response> {
    let r = st.manager.find_image(name).await?;
    let config: inarray_images::RuntimeConfig = r.config_as().unwrap_or_default();
    let layers: Vec<inarray_images::Layer> = r.layers_as().unwrap_or_default();
    let created = r
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    Ok(Json(ImageInspect {
        repo_digests: repo_digests(&r),
        parent: String::new(),
        comment: String::new(),
        created: created.clone(),
        config: json!({
            "Cmd": config.cmd, "Entrypoint": config.entrypoint, "Env": config.env,
            "WorkingDir": config.working_dir.unwrap_or_default(), "User": config.user.unwrap_or_default(),
            "Labels": null,
        }),
        architecture: match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        },
        os: "linux",
        size: r.size,
        virtual_size: r.size,
        root_fs: json!({"Type": "layers", "Layers": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()}),
        metadata: json!({"LastTagTime": created}),
        repo_tags: r.names,
        id: r.id,
    })
    .into_response())
}

async fn tag(st: &DockerState, name: &str, q: &DockerQuery) -> Result<Response> {
    let repo = q
        .str("repo")
        .ok_or_else(|| DockerError::bad_request("repo: required (the new name)"))?;
    let target = match q.str("tag") {
        Some(t) => format!("{repo}:{t}"),
        None => repo.to_owned(),
    };
    st.manager.tag_image(name, &target).await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn remove(st: &DockerState, name: &str) -> Result<Response> {
    let out = match st.manager.remove_image(name).await? {
        ImageRemoval::Untagged(n) => json!([{"Untagged": n}]),
        ImageRemoval::Deleted(id) => {
            let shown = Reference::parse(name)
                .map(|r| r.to_string())
                .ok()
                .filter(|n| *n != id);
            match shown {
                Some(n) if !name.starts_with("sha256:") => {
                    json!([{"Untagged": n}, {"Deleted": id}])
                }
                _ => json!([{"Deleted": id}]),
            }
        }
    };
    Ok(Json(out).into_response())
}

/// `POST /images/prune`: the unused images without a name (`dangling`, Docker's default), or
/// with `filters={"dangling":["false"]}` every unused image (`docker image prune -a`).
async fn prune(st: &DockerState, q: &DockerQuery) -> Result<Response> {
    let mut dangling_only = true;
    for (k, vals) in super::filters(q.str("filters"))? {
        match k.as_str() {
            "dangling" => {
                dangling_only = !vals.iter().any(|v| matches!(v.as_str(), "false" | "0"));
            }
            other => {
                return Err(DockerError::bad_request(format!(
                    "filters: {other}: not supported by inarray's image prune (dangling only)"
                )))
            }
        }
    }
    let report = if dangling_only {
        st.manager.prune_dangling_images().await?
    } else {
        st.manager.prune_images().await?
    };
    let mut deleted = Vec::new();
    for img in &report.images {
        for n in &img.names {
            deleted.push(json!({"Untagged": n}));
        }
        deleted.push(json!({"Deleted": img.id}));
    }
    Ok(Json(json!({
        "ImagesDeleted": if deleted.is_empty() { Value::Null } else { Value::Array(deleted) },
        "SpaceReclaimed": report.bytes_freed,
    }))
    .into_response())
}

/// `GET /images/get?names=A&names=B`.
async fn save_many(State(st): State<DockerState>, q: DockerQuery) -> Result<Response> {
    let names = q.all("names");
    if names.is_empty() {
        return Err(DockerError::bad_request(
            "names: at least one image to save",
        ));
    }
    save(&st, names).await
}

/// `docker save`: the images as one archive (an OCI layout with Docker's manifest.json),
/// streamed. A missing image is a 404 before anything is sent.
async fn save(st: &DockerState, names: Vec<String>) -> Result<Response> {
    let plan = st.manager.export_plan(&names).await?;
    let (w, r) = tokio::io::duplex(256 * 1024);
    let m = st.manager.clone();
    tokio::spawn(async move {
        let writer = tokio_util::io::SyncIoBridge::new(w);
        if let Err(e) = m.export_images(plan, writer).await {
            // The client sees the archive end short; the reason is here.
            tracing::warn!(error = %e, "docker save: the archive could not be written whole");
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(r, 64 * 1024)),
    )
        .into_response())
}

fn line(v: Value) -> String {
    format!("{v}\n")
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// A native pull event as Docker's JSON progress messages.
fn progress(ev: &PullEvent) -> Vec<Value> {
    match ev {
        PullEvent::Resolved {
            reference, layers, ..
        } => {
            let mut out = vec![json!({"status": format!("Pulling from {reference}")})];
            for l in layers {
                let status = if l.cached {
                    "Already exists"
                } else {
                    "Pulling fs layer"
                };
                out.push(json!({"status": status, "progressDetail": {}, "id": short(&l.digest)}));
            }
            out
        }
        PullEvent::Layer {
            digest,
            bytes,
            size,
            done,
        } => {
            let status = if *done {
                "Download complete"
            } else {
                "Downloading"
            };
            vec![
                json!({"status": status, "progressDetail": {"current": bytes, "total": size}, "id": short(digest)}),
            ]
        }
        PullEvent::Verifying => vec![json!({"status": "Verifying and unpacking the layers"})],
    }
}

/// `POST /images/create?fromImage=NAME&tag=TAG`: the native pull, its progress as Docker's
/// JSON messages; a failure after the first message is an `errorDetail` line, as Docker sends.
/// Registry credentials are the daemon's (configured or set through the native API); the
/// client's `X-Registry-Auth` is not used.
async fn pull(State(st): State<DockerState>, q: DockerQuery) -> Result<Response> {
    if q.str("fromSrc").is_some() {
        return Err(DockerError::bad_request(
            "fromSrc: importing a root file system is not supported by inarray; use docker load with an image archive",
        ));
    }
    let from = q
        .str("fromImage")
        .ok_or_else(|| DockerError::bad_request("fromImage: required (the image to pull)"))?;
    let reference = match q.str("tag") {
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.to_owned(),
    };
    if let Some(p) = q.str("platform") {
        if !p.starts_with("linux") {
            return Err(DockerError::bad_request(format!(
                "platform: {p:?}: this node runs linux images only"
            )));
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PullEvent>();
    let m = st.manager.clone();
    let r = reference.clone();
    // Its own task: the pull goes on (and is shared) if the client goes away.
    let task = tokio::spawn(async move { m.pull_image(&r, Some(tx)).await });
    let outcome = |j: std::result::Result<
        std::result::Result<ImageRow, ManagerError>,
        tokio::task::JoinError,
    >| { j.map_err(DockerError::internal)?.map_err(DockerError::from) };
    let first = match rx.recv().await {
        Some(ev) => ev,
        // Over before any progress: its own status (404 for an unknown image).
        None => {
            let row = outcome(task.await)?;
            let done =
                line(json!({"status": format!("Status: Image is up to date for {reference}")}))
                    + &line(json!({"status": format!("Digest: {}", row.manifest_digest)}));
            return Ok(json_lines(Body::from(done)));
        }
    };
    let stream = futures_util::stream::unfold(
        (Some(first), rx, Some(task), reference),
        move |(first, mut rx, task, reference)| async move {
            let ev = match first {
                Some(ev) => Some(ev),
                None => rx.recv().await,
            };
            if let Some(ev) = ev {
                let text: String = progress(&ev).into_iter().map(line).collect();
                return Some((Ok::<_, std::io::Error>(text), (None, rx, task, reference)));
            }
            let task = task?;
            let text = match outcome(task.await) {
                Ok(row) => {
                    line(json!({"status": format!("Digest: {}", row.manifest_digest)}))
                        + &line(
                            json!({"status": format!("Status: Downloaded newer image for {reference}")}),
                        )
                }
                Err(e) => line(json!({"errorDetail": {"message": e.message}, "error": e.message})),
            };
            Some((Ok(text), (None, rx, None, reference)))
        },
    );
    Ok(json_lines(Body::from_stream(stream)))
}

fn json_lines(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `POST /images/load`: the native import of the archive in the body (`docker save` output,
/// gzip- or zstd-compressed or not); answers `Loaded image: NAME` lines.
async fn load(State(st): State<DockerState>, body: Body) -> Result<Response> {
    let rows = crate::images::import_upload(&st.manager, &st.access.limits(), body, None).await?;
    let mut text = String::new();
    for r in rows {
        if r.names.is_empty() {
            text += &line(json!({"stream": format!("Loaded image ID: {}\n", r.id)}));
        }
        for n in &r.names {
            text += &line(json!({"stream": format!("Loaded image: {n}\n")}));
        }
    }
    Ok(json_lines(Body::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_patterns() {
        assert!(glob("busy*", "busybox"));
        assert!(glob("*box", "busybox"));
        assert!(!glob("busy*", "team/busybox"));
        assert!(!glob("a*", "a/b"));
        assert!(glob("busybox", "busybox"));
    }
}
