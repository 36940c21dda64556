//! Execs over the native ones: `POST /containers/{id}/exec` records, `POST /exec/{id}/start`
//! starts (an upgraded stream, or detached), `GET /exec/{id}/json` reports (the exit copied
//! from the shim's record), `POST /exec/{id}/resize` sizes its terminal.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inarray_runtime::ExecConfig;
use serde_json::json;

use super::containers::size;
use super::errors::{DockerError, Result};
use super::fields;
use super::types::{ExecCreateBody, ExecInspect, ExecStartBody};
use super::{json_body, typed, DockerQuery, DockerState};
use crate::attach::{requested, respond_later, Source};
use crate::extract::Path;

pub fn routes() -> Router<DockerState> {
    Router::new()
        .route("/containers/{id}/exec", post(create))
        .route("/exec/{id}/start", post(start))
        .route("/exec/{id}/json", get(inspect))
        .route("/exec/{id}/resize", post(resize))
}

async fn create(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let v = json_body(body, &st.access.limits()).await?;
    fields::check(&v, "", fields::EXEC_CREATE)?;
    let b: ExecCreateBody = typed(v)?;
    if !b.detach_keys.is_empty() && b.detach_keys != "ctrl-p,ctrl-q" {
        return Err(DockerError::bad_request(
            "DetachKeys: not supported by inarray: the detach keys are ctrl-p,ctrl-q",
        ));
    }
    let command = b.cmd.0.filter(|c| !c.is_empty()).ok_or_else(|| {
        DockerError::bad_request("Cmd: required (the command to run in the container)")
    })?;
    let mut env = b.env;
    if b.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As Docker does for an exec with a terminal.
        env.push("TERM=xterm".into());
    }
    let cfg = ExecConfig {
        command,
        env,
        workdir: Some(b.working_dir).filter(|w| !w.is_empty()),
        user: Some(b.user).filter(|u| !u.is_empty()),
        tty: b.tty,
        stdin: b.attach_stdin,
    };
    let e = st.manager.create_exec(&id, cfg).await.map_err(|e| {
        let mut d = DockerError::from(e);
        for (native, docker) in [
            ("command", "Cmd"),
            ("env", "Env"),
            ("workdir", "WorkingDir"),
            ("user", "User"),
        ] {
            if let Some(rest) = d.message.strip_prefix(native) {
                if rest.starts_with([':', '[']) {
                    d.message = format!("{docker}{rest}");
                    break;
                }
            }
        }
        d
    })?;
    Ok((StatusCode::CREATED, Json(json!({"Id": e.id}))).into_response())
}

async fn start(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let v = json_body(body, &st.access.limits()).await?;
    fields::check(&v, "", fields::EXEC_START)?;
    let b: ExecStartBody = typed(v)?;
    let mut req = Request::from_parts(parts, Body::empty());
    if b.detach {
        st.manager.start_exec(&id, false).await?;
        return Ok(StatusCode::OK.into_response());
    }
    let Some(up) = requested(&mut req)? else {
        return Err(DockerError::bad_request(
            "exec start needs an upgraded connection (Connection: Upgrade, Upgrade: tcp) unless Detach is true",
        ));
    };
    // Refusals while an HTTP answer is still possible; the process itself starts only once the
    // 101 is written, as dockerd does: a client that reads the 101 through a buffered reader
    // (the Python SDK) would otherwise swallow the first output along with the headers.
    let info = st.manager.exec_info(&id).await?;
    if info.state != "created" {
        return Err(DockerError::from(inarray_runtime::ManagerError::Conflict(
            format!("exec {id} was already started"),
        )));
    }
    let row = st.manager.get(&info.container_id).await?;
    if row.state != inarray_store::ContainerState::Running {
        return Err(DockerError::from(inarray_runtime::ManagerError::Conflict(
            format!("container {} is not running", row.name),
        )));
    }
    let m = st.manager.clone();
    let exec = id.clone();
    let source = async move {
        match m.start_exec(&exec, true).await {
            Ok((info, Some(a))) => Some(Source::Shim {
                stream: a.stream,
                stdin: info.stdin,
            }),
            Ok((_, None)) => None,
            Err(e) => {
                tracing::info!(exec = %exec, error = %e, "docker exec start failed after the upgrade");
                None
            }
        }
    };
    let m = st.manager.clone();
    let done = async move {
        // Records the exit as soon as the stream has ended.
        let _ = m.exec_info(&id).await;
    };
    Ok(respond_later(up, info.tty, source, done))
}

async fn inspect(
    State(st): State<DockerState>,
    Path(id): Path<String>,
) -> Result<Json<ExecInspect>> {
    let e = st.manager.exec_info(&id).await?;
    let mut args = e.command.clone();
    let entrypoint = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    Ok(Json(ExecInspect {
        id: e.id,
        running: e.running,
        exit_code: e.exit_code,
        process_config: json!({"tty": e.tty, "entrypoint": entrypoint, "arguments": args, "privileged": false}),
        open_stdin: e.stdin,
        open_stderr: true,
        open_stdout: true,
        can_remove: !e.running,
        container_id: e.container_id,
        detach_keys: String::new(),
        pid: e.pid.unwrap_or(0),
    }))
}

async fn resize(
    State(st): State<DockerState>,
    Path(id): Path<String>,
    q: DockerQuery,
) -> Result<StatusCode> {
    let (h, w) = size(&q)?;
    st.manager.resize_exec(&id, h, w).await?;
    Ok(StatusCode::CREATED)
}
