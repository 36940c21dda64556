//! CLI: commands with a live connection to a process — `inarray exec`, `inarray attach`, and the
//! attached part of `inarray run -i/-t` (the copying is `session.rs`, the local terminal
//! `terminal.rs`; the API: docs/api.md, "Exec and attach", and docs/design/exec.md).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

use super::containers::exit_code;
use super::enc;
use super::session::{check_tty, Session};

#[derive(Debug, clap::Args)]
pub struct ExecOpts {
    /// Keep standard input open and send it to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the command a terminal (with -i, the local terminal goes raw).
    #[arg(short = 't', long)]
    tty: bool,
    /// uid[:gid] or a user name from the container's /etc/passwd (default: the container's).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// KEY=VALUE, added to the container's environment.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The `ExecConfig` body of `POST /v1/containers/{id}/exec`.
fn exec_config(o: &ExecOpts) -> Value {
    json!({
        "command": o.command, "env": o.env, "workdir": o.workdir, "user": o.user,
        "tty": o.tty, "stdin": o.interactive,
    })
}

/// `inarray exec [-i] [-t] [-u USER] [-w DIR] [-e K=V]... CONTAINER CMD...`: exits with the
/// command's exit code (125 when it has none).
pub async fn exec(c: &Client, o: ExecOpts) -> Result<ExitCode> {
    check_tty(o.tty, o.interactive)?;
    let path = format!("/v1/containers/{}/exec", enc(&o.container));
    let created = c.json(Method::POST, &path, Some(&exec_config(&o))).await?;
    let id = enc(created["id"]
        .as_str()
        .context("the daemon returned no exec id")?);
    let session = Session::new(o.tty, o.interactive, format!("/v1/execs/{id}/resize"));
    session.run(c, &format!("/v1/execs/{id}/start")).await?;
    let info = c
        .json(Method::GET, &format!("/v1/execs/{id}"), None)
        .await
        .with_context(|| format!("the stream ended, but exec {id}'s exit code is unknown"))?;
    if info["exit_code"].is_null() {
        let why = match (info["error"].as_str(), info["running"] == true) {
            (Some(e), _) => e,
            (None, true) => "it is still running",
            (None, false) => "the daemon recorded none",
        };
        eprintln!("inarray: exec {id} ended without an exit code: {why}");
    }
    Ok(exit_code(&info))
}

/// `inarray run -i/-t` once the container is created (not started): attaches with `start=true`
/// (the daemon starts it and holds its output until this attach is connected), then waits for
/// its exit. With `--rm` the container is removed also when the attach fails.
pub async fn run_attached(
    c: &Client,
    id: &str,
    tty: bool,
    stdin: bool,
    rm: bool,
) -> Result<ExitCode> {
    let session = Session::new(tty, stdin, format!("/v1/containers/{id}/resize"));
    let attach = format!("/v1/containers/{id}/attach?stdin={stdin}&start=true");
    if let Err(e) = session.run(c, &attach).await {
        if rm {
            let path = format!("/v1/containers/{id}?force=true");
            if let Err(rm_err) = c.json(Method::DELETE, &path, None).await {
                eprintln!("inarray: cannot remove container {id}: {rm_err}");
            }
        }
        return Err(e);
    }
    super::containers::finish_run(c, id, rm).await
}

/// How long `attach` waits, once its stream has ended, for the daemon to record an exit: the
/// stream also ends on a detach (ctrl-p ctrl-q), when the container goes on running.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// `inarray attach CONTAINER`: its terminal (or output), with its input when it has `open_stdin`;
/// exits with the container's exit code if it exited, else 0 (detached).
pub async fn attach(c: &Client, container: &str) -> Result<ExitCode> {
    let v = c
        .json(
            Method::GET,
            &format!("/v1/containers/{}", enc(container)),
            None,
        )
        .await?;
    let (tty, stdin) = (v["tty"] == true, v["open_stdin"] == true);
    check_tty(tty, stdin)?;
    let id = enc(v["id"].as_str().context("the daemon returned no id")?);
    let session = Session::new(tty, stdin, format!("/v1/containers/{id}/resize"));
    session
        .run(c, &format!("/v1/containers/{id}/attach?stdin={stdin}"))
        .await?;
    let wait = format!("/v1/containers/{id}/wait");
    match tokio::time::timeout(EXIT_GRACE, c.json(Method::POST, &wait, None)).await {
        Ok(v) => {
            let v = v.with_context(|| {
                format!("the stream ended, but container {id}'s exit code is unknown")
            })?;
            Ok(exit_code(&v))
        }
        Err(_) => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Args, Command};

    fn exec_opts(args: &[&str]) -> ExecOpts {
        let all = [&["inarray", "exec"], args].concat();
        match Args::try_parse_from(all).unwrap().command {
            Command::Exec(o) => o,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn exec_flags_and_the_command_after_the_container() {
        let o = exec_opts(&[
            "-it",
            "-u",
            "1000:1000",
            "-w",
            "/srv",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "web",
            "sh",
            "-c",
            "echo hi; exit 7",
        ]);
        assert_eq!(o.container, "web");
        assert_eq!(
            exec_config(&o),
            json!({
                "command": ["sh", "-c", "echo hi; exit 7"], "env": ["A=1", "B=2"],
                "workdir": "/srv", "user": "1000:1000", "tty": true, "stdin": true,
            })
        );
        // Flags after the container belong to the command.
        let o = exec_opts(&["web", "ls", "-t", "-i"]);
        assert_eq!(
            exec_config(&o),
            json!({
                "command": ["ls", "-t", "-i"], "env": [], "workdir": null, "user": null,
                "tty": false, "stdin": false,
            })
        );
    }

    #[test]
    fn exec_needs_a_command() {
        let e = Args::try_parse_from(["inarray", "exec", "-it", "web"]).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{e}"
        );
    }

    #[test]
    fn attach_takes_one_container() {
        match Args::try_parse_from(["inarray", "attach", "web"])
            .unwrap()
            .command
        {
            Command::Attach { container } => assert_eq!(container, "web"),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Args::try_parse_from(["inarray", "attach"]).is_err());
    }
}
