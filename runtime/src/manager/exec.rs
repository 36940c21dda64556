//! Execs (processes started in a running container) and attaching to a container's stdio.
//!
//! The manager records an exec (`created`), asks the container's shim to start it (`running`,
//! with its pid) and copies the shim's exit record into the row when asked about it: the shim
//! supervises the process and writes `execs/<id>.json` when it ends, so an exit is never lost
//! whether the daemon was there or not. The daemon never parents an exec; it only relays the
//! stream the shim hands it.

use chrono::{DateTime, Utc};
use inarray_store::{ContainerRow, ContainerState, ExecRow};
use serde::{Deserialize, Serialize};

use super::{internal, new_id, Manager, ManagerError, Result};
use crate::config::{ContainerConfig, InvalidField};
use crate::launcher::Controlled;
use crate::spec::ImageDefaults;
use inarray_shim::protocol::{CtlReply, CtlRequest, ExecProcess, ExitRecord};

/// Ended execs kept per container (the oldest are forgotten beyond this).
const KEEP_EXECS: u32 = 100;

/// A request to run a process in a running container (`POST /v1/containers/{id}/exec`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub command: Vec<String>,
    /// `KEY=VALUE` entries over the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Absolute; default the container's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `uid[:gid]` or a name in the container's /etc/passwd; default the container's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
}

/// What is stored for an exec: the request and the identity it resolved to.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredExec {
    #[serde(flatten)]
    config: ExecConfig,
    uid: u32,
    gid: u32,
}

/// An exec as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ExecInfo {
    pub id: String,
    pub container_id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    /// `created`, `running` or `exited`.
    pub state: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Why it did not run or how its end is known, when not from an exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pid: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A connection to a process's stdio, relayed by its shim.
pub struct Attached {
    pub stream: tokio::net::UnixStream,
    pub tty: bool,
}

/// How an attach reaches a container's output.
pub enum Attachment {
    /// The shim relays the stdio: a stream in the shim's framing.
    Relayed(Attached),
    /// The container writes its log itself: follow the log (output only).
    Log { tty: bool },
}

fn bad(field: &str, reason: impl Into<String>) -> ManagerError {
    ManagerError::Invalid(InvalidField {
        field: field.into(),
        reason: reason.into(),
    })
}

impl ExecConfig {
    fn validate(&self) -> Result<()> {
        if self.command.is_empty() {
            return Err(bad("command", "must not be empty"));
        }
        for (field, items) in [("command", &self.command), ("env", &self.env)] {
            if items.len() > crate::config::MAX_ARGS {
                return Err(bad(field, "too many entries"));
            }
            if let Some(i) = items.iter().position(|s| s.contains('\0')) {
                return Err(bad(&format!("{field}[{i}]"), "contains a NUL byte"));
            }
        }
        if let Some(i) = self
            .env
            .iter()
            .position(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(bad(&format!("env[{i}]"), "expected KEY=VALUE"));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') || w.contains('\0') {
                return Err(bad("workdir", "must be an absolute path"));
            }
        }
        Ok(())
    }
}

impl Manager {
    /// Records an exec in a running container (not started yet).
    pub async fn create_exec(&self, key: &str, cfg: ExecConfig) -> Result<ExecInfo> {
        cfg.validate()?;
        let row = self.get(key).await?;
        require_running(&row)?;
        let identity = self.exec_identity(&row, cfg.user.as_deref()).await?;
        let stored = StoredExec {
            config: cfg,
            uid: identity.uid,
            gid: identity.gid,
        };
        let json = serde_json::to_string(&stored).map_err(|e| internal("exec json", e))?;
        let id = new_id()?;
        let e = self
            .inner
            .store
            .insert_exec(&id, &row.id, &json, Utc::now(), KEEP_EXECS)
            .await?;
        info(e)
    }

    /// Resolves the exec's user against the container's files: its own changes over its image.
    pub(super) async fn exec_identity(
        &self,
        row: &ContainerRow,
        user: Option<&str>,
    ) -> Result<crate::spec::Identity> {
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        let image = self.image_of(row).await?;
        let defaults: ImageDefaults = image.config_as()?;
        let layers: Vec<inarray_images::Layer> = image.layers_as()?;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let mut dirs = self.inner.images.layer_dirs(&diff_ids)?;
        dirs.push(self.paths(&row.id).upper());
        let user = user
            .map(str::to_owned)
            .or(cfg.user)
            .or(defaults.user)
            .unwrap_or_default();
        crate::user::resolve(&user, &dirs).map_err(|reason| bad("user", reason))
    }

    /// Starts a created exec. With `attach`, returns the stream of its stdio.
    pub async fn start_exec(&self, id: &str, attach: bool) -> Result<(ExecInfo, Option<Attached>)> {
        let e = self.exec_row(id).await?;
        let row = self.get(&e.container_id).await?;
        require_running(&row)?;
        if !self.inner.store.claim_exec_start(&e.id, Utc::now()).await? {
            return Err(ManagerError::Conflict(format!(
                "exec {id} was already started"
            )));
        }
        let stored: StoredExec =
            serde_json::from_str(&e.config).map_err(|err| internal("stored exec", err))?;
        let process = ExecProcess {
            args: stored.config.command.clone(),
            env: stored.config.env.clone(),
            cwd: stored.config.workdir.clone(),
            uid: stored.uid,
            gid: stored.gid,
            additional_gids: Vec::new(),
            tty: stored.config.tty,
            stdin: stored.config.stdin,
        };
        let req = CtlRequest::Exec {
            id: e.id.clone(),
            process,
            attach,
        };
        let answer = self.control(&row, req).await;
        let exec_id = e.id.clone();
        let refused = |store_msg: String, err: ManagerError| async move {
            let _ = self
                .inner
                .store
                .mark_exec_exited(&exec_id, None, Some(&store_msg), Utc::now())
                .await;
            Err(err)
        };
        let Controlled { reply, stream } = match answer {
            Ok(c) => c,
            Err(err) => return refused(err.to_string(), err).await,
        };
        let pid = match reply_result(&reply) {
            Ok(pid) => pid,
            Err(err) => return refused(err.to_string(), err).await,
        };
        self.inner.store.set_exec_pid(&e.id, pid.into()).await?;
        let info = self.exec_info(&e.id).await?;
        let attached = attach.then_some(Attached {
            stream,
            tty: stored.config.tty,
        });
        Ok((info, attached))
    }

    /// An exec, its exit copied from the shim's record if it has ended.
    pub async fn exec_info(&self, id: &str) -> Result<ExecInfo> {
        let e = self.exec_row(id).await?;
        if e.state != "running" {
            return info(e);
        }
        let path = self.paths(&e.container_id).exec_exit(&e.id);
        match std::fs::read(&path) {
            Ok(raw) => {
                let rec: ExitRecord = serde_json::from_slice(&raw)
                    .map_err(|err| internal("exec exit record", err))?;
                self.inner
                    .store
                    .mark_exec_exited(&e.id, Some(rec.exit_code.into()), None, rec.finished_at)
                    .await?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // No record and no container process: the shim died with it unrecorded.
                let row = self.inner.store.container(&e.container_id).await?;
                let gone = row.is_none_or(|r| {
                    r.state != ContainerState::Running || r.started_at > e.started_at
                });
                if gone && !path.exists() {
                    self.inner
                        .store
                        .mark_exec_exited(
                            &e.id,
                            None,
                            Some("ended with its container (no exit record)"),
                            Utc::now(),
                        )
                        .await?;
                }
            }
            Err(err) => return Err(internal(&format!("cannot read {}", path.display()), err)),
        }
        info(self.exec_row(id).await?)
    }

    async fn exec_row(&self, id: &str) -> Result<ExecRow> {
        self.inner
            .store
            .exec(id)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "exec",
                key: id.to_owned(),
            })
    }

    /// Sets the terminal size of a running exec.
    pub async fn resize_exec(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let e = self.exec_row(id).await?;
        if e.state != "running" {
            return Err(ManagerError::Conflict(format!("exec {id} is not running")));
        }
        let row = self.get(&e.container_id).await?;
        let req = CtlRequest::Resize {
            exec: Some(e.id),
            rows,
            cols,
        };
        let c = self.control(&row, req).await?;
        reply_result(&c.reply).map(|_| ())
    }

    /// Sets the terminal size of a running container.
    pub async fn resize_container(&self, key: &str, rows: u16, cols: u16) -> Result<()> {
        let row = self.get(key).await?;
        require_running(&row)?;
        let req = CtlRequest::Resize {
            exec: None,
            rows,
            cols,
        };
        let c = self.control(&row, req).await?;
        reply_result(&c.reply).map(|_| ())
    }

    /// Attaches to a container's stdio; with `start`, starts a created or exited container
    /// first, its output held until this attach is connected.
    pub async fn attach(&self, key: &str, stdin: bool, start: bool) -> Result<Attachment> {
        let mut row = self.get(key).await?;
        let cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        if start && row.state != ContainerState::Running {
            row = self.start_with(&row.id, true).await?;
        }
        require_running(&row)?;
        let c = self.control(&row, CtlRequest::Attach { stdin }).await?;
        if c.reply.code.as_deref() == Some("not_relayed") {
            return Ok(Attachment::Log { tty: cfg.tty });
        }
        reply_result(&c.reply)?;
        Ok(Attachment::Relayed(Attached {
            stream: c.stream,
            tty: cfg.tty,
        }))
    }

    pub(super) async fn control(&self, row: &ContainerRow, req: CtlRequest) -> Result<Controlled> {
        let socket = inarray_shim::paths::control_socket(&self.inner.runtime_root, &row.id);
        self.inner
            .launcher
            .control(socket, req)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ManagerError::Conflict(format!(
                        "container {} is not running (its supervisor does not answer)",
                        row.name
                    ))
                }
                _ => internal("the container's supervisor", e),
            })
    }
}

fn require_running(row: &ContainerRow) -> Result<()> {
    if row.state != ContainerState::Running {
        return Err(ManagerError::Conflict(format!(
            "container {} is not running (it is {})",
            row.name, row.state
        )));
    }
    Ok(())
}

/// The shim's answer as a result: the pid, or its refusal as the manager's error.
fn reply_result(r: &CtlReply) -> Result<i32> {
    match (&r.error, r.code.as_deref()) {
        (None, _) => Ok(r.pid.unwrap_or(0)),
        (Some(m), Some("not_running")) => Err(ManagerError::Conflict(m.clone())),
        (Some(m), Some("too_many")) => Err(ManagerError::TooMany(m.clone())),
        (Some(m), Some("not_tty")) => Err(ManagerError::Conflict(m.clone())),
        (Some(m), Some("not_found")) => Err(ManagerError::Conflict(m.clone())),
        // The process could not be set up (e.g. its working directory does not exist).
        (Some(m), _) => Err(bad("exec", m.clone())),
    }
}

fn info(e: ExecRow) -> Result<ExecInfo> {
    let stored: StoredExec =
        serde_json::from_str(&e.config).map_err(|err| internal("stored exec", err))?;
    Ok(ExecInfo {
        running: e.state == "running",
        id: e.id,
        container_id: e.container_id,
        command: stored.config.command,
        tty: stored.config.tty,
        stdin: stored.config.stdin,
        state: e.state,
        exit_code: e.exit_code,
        error: e.error,
        pid: e.pid,
        created_at: e.created_at,
        started_at: e.started_at,
        finished_at: e.finished_at,
    })
}
