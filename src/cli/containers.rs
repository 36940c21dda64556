//! CLI: containers (`inarray run`, `ps`, `logs`, `start`, `stop`, `kill`, `wait`, `rm`,
//! `inspect`, `update`, `stats`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

use super::engines::LimitFlags;
use super::session::check_tty;
use super::{enc, output, print_json};

#[derive(Debug, clap::Args)]
pub struct RunOpts {
    #[arg(long)]
    name: Option<String>,
    /// SRC:DST[:ro] — SRC relative to the array root.
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// KEY=VALUE
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// no | always | on-failure[:N] | unless-stopped
    #[arg(long, default_value = "no")]
    restart: String,
    /// none | host | bridge | a network's name
    #[arg(long, default_value = "none")]
    network: String,
    /// Publish a port: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] (HOST_PORT 0: any free one).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    publish: Vec<String>,
    /// The engine to run in (default: default).
    #[arg(long)]
    engine: Option<String>,
    #[command(flatten)]
    limits: LimitFlags,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Print the id and return instead of attaching.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep standard input open and send it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal (with -i, the local terminal goes raw).
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container once it has exited (attached runs only).
    #[arg(long)]
    rm: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Parses `SRC:DST[:ro|rw]`.
pub fn parse_volume(s: &str) -> Result<Value> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (src, dst, false),
        [src, dst, "ro"] => (src, dst, true),
        [src, dst, "rw"] => (src, dst, false),
        _ => anyhow::bail!("volume {s:?}: expected SRC:DST[:ro]"),
    };
    Ok(json!({"source": src, "target": dst, "read_only": ro}))
}

/// The process exit code for a `wait` answer: the container's, or 125 when it has none.
pub(super) fn exit_code(v: &Value) -> ExitCode {
    match v["exit_code"].as_i64() {
        Some(c) => ExitCode::from(u8::try_from(c.clamp(0, 255)).unwrap_or(255)),
        None => ExitCode::from(125),
    }
}

/// Copies a container's log stream to standard output as it comes.
async fn stream_logs(c: &Client, path: &str) -> Result<()> {
    c.stream(path, |d| {
        let _ = std::io::stdout().write_all(d);
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(())
}

/// `inarray run`: create, start, and unless detached follow the output and wait. With `-i`/`-t`
/// (not detached) the container is created stopped and attached to (`exec.rs`).
pub async fn run_container(c: &Client, o: RunOpts) -> Result<ExitCode> {
    let attach = (o.interactive || o.tty) && !o.detach;
    if attach {
        check_tty(o.tty, o.interactive)?;
    }
    let body = create_body(&o, attach)?;
    let created = c.json(Method::POST, "/v1/containers", Some(&body)).await?;
    let id = created["id"]
        .as_str()
        .context("the daemon returned no id")?
        .to_owned();
    if o.detach {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    if attach {
        return super::exec::run_attached(c, &id, o.tty, o.interactive, o.rm).await;
    }
    stream_logs(c, &format!("/v1/containers/{id}/logs?follow=true")).await?;
    finish_run(c, &id, o.rm).await
}

/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]` → a `ports` entry (the daemon checks the values).
fn parse_publish(p: &str) -> Result<Value> {
    let (spec, proto) = p.rsplit_once('/').unwrap_or((p, "tcp"));
    let bad = || anyhow::anyhow!("-p {p:?}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]");
    let (rest, container) = spec.rsplit_once(':').ok_or_else(bad)?;
    let (ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => (ip.trim_start_matches('[').trim_end_matches(']'), host),
        None => ("", rest),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    Ok(
        json!({"host_ip": ip, "host_port": num(host)?, "container_port": num(container)?,
              "protocol": proto}),
    )
}

/// The `POST /v1/containers` body of `inarray run`; created stopped when `attach` will start it.
fn create_body(o: &RunOpts, attach: bool) -> Result<Value> {
    let volumes: Vec<Value> = o
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<_>>()?;
    let mut body = json!({
        "image": o.image, "volumes": volumes, "env": o.env, "restart": o.restart, "network": o.network,
    });
    if let Some(n) = &o.name {
        body["name"] = json!(n);
    }
    if !o.publish.is_empty() {
        body["ports"] = o
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<Vec<Value>>>()?
            .into();
    }
    if let Some(e) = &o.engine {
        body["engine"] = json!(e);
    }
    let limits = o.limits.to_json();
    if limits.as_object().is_some_and(|m| !m.is_empty()) {
        body["resources"] = limits;
    }
    if !o.command.is_empty() {
        body["command"] = json!(o.command);
    }
    if let Some(w) = &o.workdir {
        body["workdir"] = json!(w);
    }
    if let Some(u) = &o.user {
        body["user"] = json!(u);
    }
    if o.tty {
        body["tty"] = json!(true);
    }
    if o.interactive {
        body["open_stdin"] = json!(true);
    }
    if attach {
        body["start"] = json!(false);
    }
    Ok(body)
}

/// The end of an attached `run`: waits for the exit, removes the container with `--rm`, and
/// exits with its code.
pub(super) async fn finish_run(c: &Client, id: &str, rm: bool) -> Result<ExitCode> {
    let v = c
        .json(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await?;
    if rm {
        c.json(
            Method::DELETE,
            &format!("/v1/containers/{id}?force=true"),
            None,
        )
        .await?;
    }
    if let Some(e) = v["error"].as_str() {
        eprintln!("inarray: {e}");
    }
    Ok(exit_code(&v))
}

/// `inarray ps [--all]`
pub async fn ps(c: &Client, as_json: bool, all: bool) -> Result<ExitCode> {
    let v = c
        .json(Method::GET, &format!("/v1/containers?all={all}"), None)
        .await?;
    output(as_json, &v, |v| {
        println!(
            "{:<14} {:<20} {:<20} {:<21} {:>5}",
            "ID", "NAME", "IMAGE", "STATE", "EXIT"
        );
        for x in v.as_array().into_iter().flatten() {
            let id = x["id"].as_str().unwrap_or("");
            let state = match x["health"]["status"].as_str() {
                Some(h) => format!("{} ({h})", x["state"].as_str().unwrap_or("")),
                None => x["state"].as_str().unwrap_or("").to_owned(),
            };
            println!(
                "{:<14} {:<20} {:<20} {:<21} {:>5}",
                &id[..id.len().min(12)],
                x["name"].as_str().unwrap_or(""),
                x["image"].as_str().unwrap_or(""),
                state,
                x["exit_code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            );
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `inarray logs [--follow] CONTAINER`
#[derive(Debug, clap::Args)]
pub struct LogsOpts {
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long)]
    tail: Option<usize>,
    /// Only output written at or after this time (RFC 3339, or seconds since the epoch).
    #[arg(long)]
    since: Option<String>,
    /// Only output written before this time.
    #[arg(long)]
    until: Option<String>,
    /// Start every line with the time it was written.
    #[arg(short, long)]
    timestamps: bool,
    container: String,
}

/// `inarray logs [-f] [-n N] [--since T] [--until T] [-t] CONTAINER`
pub async fn logs(c: &Client, o: LogsOpts) -> Result<ExitCode> {
    let mut path = format!(
        "/v1/containers/{}/logs?follow={}&timestamps={}",
        enc(&o.container),
        o.follow,
        o.timestamps
    );
    if let Some(n) = o.tail {
        path.push_str(&format!("&tail={n}"));
    }
    for (k, v) in [("since", &o.since), ("until", &o.until)] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    stream_logs(c, &path).await?;
    Ok(ExitCode::SUCCESS)
}

/// `POST /v1/containers/NAME/<tail>` (start, stop, kill); prints the container's id.
pub async fn action(c: &Client, container: &str, tail: &str) -> Result<ExitCode> {
    let v = c
        .json(
            Method::POST,
            &format!("/v1/containers/{}/{tail}", enc(container)),
            None,
        )
        .await?;
    println!("{}", v["id"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

/// `inarray wait CONTAINER`: prints the exit code and exits with it.
pub async fn wait(c: &Client, container: &str) -> Result<ExitCode> {
    let v = c
        .json(
            Method::POST,
            &format!("/v1/containers/{}/wait", enc(container)),
            None,
        )
        .await?;
    println!("{}", v["exit_code"]);
    Ok(exit_code(&v))
}

/// `inarray rm [--force] CONTAINER`
pub async fn rm(c: &Client, force: bool, container: &str) -> Result<ExitCode> {
    c.json(
        Method::DELETE,
        &format!("/v1/containers/{}?force={force}", enc(container)),
        None,
    )
    .await?;
    println!("{container}");
    Ok(ExitCode::SUCCESS)
}

/// `inarray inspect CONTAINER`
pub async fn inspect(c: &Client, container: &str) -> Result<ExitCode> {
    let path = format!("/v1/containers/{}", enc(container));
    print_json(&c.json(Method::GET, &path, None).await?);
    Ok(ExitCode::SUCCESS)
}

/// `inarray update [limits] [--restart POLICY] CONTAINER`
pub async fn update(
    c: &Client,
    container: &str,
    limits: &LimitFlags,
    restart: Option<&str>,
) -> Result<ExitCode> {
    let mut body = serde_json::Map::new();
    let resources = limits.to_json();
    if resources.as_object().is_some_and(|m| !m.is_empty()) {
        body.insert("resources".into(), resources);
    }
    if let Some(r) = restart {
        body.insert("restart".into(), json!(r));
    }
    if body.is_empty() {
        anyhow::bail!("nothing to update: give a limit (see --help) or --restart");
    }
    let v = c
        .json(
            Method::PATCH,
            &format!("/v1/containers/{}", enc(container)),
            Some(&Value::Object(body)),
        )
        .await?;
    print_json(&json!({"resources": v["resources"], "restart": v["restart"]}));
    Ok(ExitCode::SUCCESS)
}

/// `inarray rename CONTAINER NAME`
pub async fn rename(c: &Client, container: &str, name: &str) -> Result<ExitCode> {
    c.json(
        Method::PATCH,
        &format!("/v1/containers/{}", enc(container)),
        Some(&json!({ "name": name })),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `inarray top CONTAINER`: PID, PPID, UID, TIME and the command, one process a line.
pub async fn top(c: &Client, container: &str, as_json: bool) -> Result<ExitCode> {
    let path = format!("/v1/containers/{}/top", enc(container));
    let v = c.json(Method::GET, &path, None).await?;
    output(as_json, &v, |v| {
        println!("{:>8} {:>8} {:>6} {:>9} CMD", "PID", "PPID", "UID", "TIME");
        for p in v["processes"].as_array().into_iter().flatten() {
            let secs = p["cpu_ns"].as_u64().unwrap_or(0) / 1_000_000_000;
            let cmd: Vec<&str> = p["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "{:>8} {:>8} {:>6} {:>3}:{:02}:{:02} {}",
                p["pid"],
                p["ppid"],
                p["uid"],
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                cmd.join(" ")
            );
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `inarray stats CONTAINER`
pub async fn stats(c: &Client, container: &str) -> Result<ExitCode> {
    let path = format!("/v1/containers/{}/stats", enc(container));
    print_json(&c.json(Method::GET, &path, None).await?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_opts(args: &[&str]) -> RunOpts {
        use clap::Parser;
        let all = [&["inarray", "run"], args].concat();
        match crate::cli::Args::try_parse_from(all).unwrap().command {
            crate::cli::Command::Run(o) => *o,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn run_it_creates_stopped_with_a_terminal_and_input() {
        let o = run_opts(&["-it", "--rm", "busybox", "sh", "-c", "exit 3"]);
        assert!(o.interactive && o.tty && o.rm && !o.detach);
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        let b = create_body(&o, true).unwrap();
        assert_eq!((&b["tty"], &b["open_stdin"]), (&json!(true), &json!(true)));
        assert_eq!(b["start"], false);
        // Each on its own.
        let b = create_body(&run_opts(&["-t", "busybox"]), true).unwrap();
        assert_eq!((&b["tty"], &b.get("open_stdin")), (&json!(true), &None));
        let b = create_body(&run_opts(&["--interactive", "busybox"]), true).unwrap();
        assert_eq!((&b.get("tty"), &b["open_stdin"]), (&None, &json!(true)));
    }

    #[test]
    fn run_without_i_or_t_sends_what_it_always_did() {
        let b = create_body(&run_opts(&["--name", "w", "busybox", "true"]), false).unwrap();
        assert_eq!(
            b,
            json!({
                "image": "busybox", "volumes": [], "env": [], "restart": "no", "network": "none",
                "name": "w", "command": ["true"],
            })
        );
        // Detached with -it: the fields, started at once (no "start": false).
        let b = create_body(&run_opts(&["-d", "-it", "busybox"]), false).unwrap();
        assert_eq!((&b["tty"], &b["open_stdin"]), (&json!(true), &json!(true)));
        assert_eq!(b.get("start"), None);
    }

    #[test]
    fn publish_flags() {
        assert_eq!(
            parse_publish("127.0.0.1:8080:80").unwrap(),
            json!({"host_ip": "127.0.0.1", "host_port": 8080, "container_port": 80, "protocol": "tcp"})
        );
        assert_eq!(parse_publish("0:53/udp").unwrap()["protocol"], "udp");
        assert!(parse_publish("80").is_err() && parse_publish("a:b").is_err());
        let b = create_body(
            &run_opts(&["--network", "web", "-p", "9000:90", "busybox"]),
            false,
        )
        .unwrap();
        assert_eq!(b["network"], "web");
        assert_eq!(b["ports"][0]["host_port"], 9000);
    }

    #[test]
    fn volume_flags() {
        assert_eq!(
            parse_volume("data:/d").unwrap(),
            json!({"source": "data", "target": "/d", "read_only": false})
        );
        assert_eq!(parse_volume("a/b:/x:ro").unwrap()["read_only"], true);
        assert!(parse_volume("a").is_err());
        assert!(parse_volume("a:/b:rx").is_err());
    }
}
