//! Command-line parsing and the client commands (they talk to the daemon over its socket).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use inarray_api::client::Client;
use inarray_api::serve::Listen;
use serde_json::{json, Value};

use crate::daemon::{ServeOpts, DEFAULT_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "inarray",
    version,
    about = "Containers inside the storage array"
)]
pub struct Args {
    /// The daemon to talk to: unix:/PATH or tcp:HOST:PORT.
    #[arg(long, global = true, env = "INARRAY_HOST", default_value_t = format!("unix:{DEFAULT_SOCKET}"))]
    pub host: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token for a tcp: host (not needed on the unix socket). Prefer the environment
    /// variable: command lines are visible to every user of the node.
    #[arg(long, global = true, env = "INARRAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Speak TLS to a tcp: host, trusting the server certificate this PEM CA signed.
    #[arg(long, global = true, env = "INARRAY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a host that requires one; with --tls-key.
    #[arg(long, global = true, env = "INARRAY_TLS_CERT", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, global = true, env = "INARRAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeOpts),
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage registry credentials.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Create and start a container; attached by default (streams its output, exits with its code).
    Run(Box<RunOpts>),
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Print a container's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Start a created or stopped container.
    Start { container: String },
    /// Stop: SIGTERM, then SIGKILL after the timeout.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        container: String,
    },
    /// Send a signal.
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        container: String,
    },
    /// Wait for a container to exit; exits with its code.
    Wait { container: String },
    /// Remove a container.
    Rm {
        #[arg(short, long)]
        force: bool,
        container: String,
    },
    /// Show a container as JSON.
    Inspect { container: String },
    /// Manage IO engines.
    #[command(subcommand)]
    Engine(crate::cli_engines::EngineCmd),
    /// Manage NFS exports.
    #[command(subcommand)]
    Export(crate::cli_exports::ExportCmd),
    /// Manage scheduled jobs.
    #[command(subcommand)]
    Job(crate::cli_jobs::JobCmd),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(crate::cli_tokens::TokenCmd),
    /// Show the daemon's version, array, cgroup mode, engines and exports.
    Info,
    /// Show the audit log of mutating API calls (admin), newest first.
    Audit {
        /// Entries to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Only entries older than this id (the `next` of a previous page).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Manage file watches.
    #[command(subcommand)]
    Watch(crate::cli_events::WatchCmd),
    /// Follow file events.
    #[command(subcommand)]
    Events(crate::cli_events::EventsCmd),
    /// Change a container's limits live.
    Update {
        #[command(flatten)]
        limits: crate::cli_engines::LimitFlags,
        container: String,
    },
    /// What a running container uses.
    Stats { container: String },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import an OCI archive, a docker archive, or an OCI layout directory (tarred on the fly).
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    Ls,
    /// Remove an image.
    Rm { reference: String },
    /// Pull an image from its registry, showing progress.
    Pull { reference: String },
    /// Remove every image no container or job uses, and their layers.
    Prune,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Store credentials for a registry (the password is read from standard input).
    Login {
        /// host[:port], or docker.io
        registry: String,
        #[arg(long, short)]
        username: String,
    },
    /// Forget the credentials stored for a registry.
    Logout { registry: String },
    /// List registries with credentials (never the passwords).
    Ls,
}

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
    /// none | host
    #[arg(long, default_value = "none")]
    network: String,
    /// The engine to run in (default: default).
    #[arg(long)]
    engine: Option<String>,
    #[command(flatten)]
    limits: crate::cli_engines::LimitFlags,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Print the id and return instead of attaching.
    #[arg(short = 'd', long)]
    detach: bool,
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

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let Args {
        host,
        json: as_json,
        token,
        tls_ca,
        tls_cert,
        tls_key,
        command,
    } = args;
    let host: Listen = host.parse().map_err(anyhow::Error::msg)?;
    let tls = tls_ca.map(|ca| inarray_api::client::TlsOptions {
        ca,
        cert: tls_cert,
        key: tls_key,
    });
    let c = Client::new(host).with_token(token).with_tls(tls.as_ref())?;
    use hyper::Method;
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        Command::Serve(_) => unreachable!("dispatched in main"),
        Command::Image(ImageCmd::Import { file, name }) => {
            let path = match &name {
                Some(n) => format!("/v1/images/import?name={}", enc(n)),
                None => "/v1/images/import".into(),
            };
            let file = if file.is_dir() { tar_dir(&file)? } else { file };
            let v = c.upload(&path, &file).await?;
            if as_json {
                print(&v);
            } else {
                println!("{} {}", v["id"].as_str().unwrap_or(""), names(&v["names"]));
            }
        }
        Command::Image(ImageCmd::Ls) => {
            let v = c.json(Method::GET, "/v1/images", None).await?;
            if as_json {
                print(&v);
            } else {
                println!("{:<20} {:<40} {:>12}", "ID", "NAMES", "SIZE");
                for i in v.as_array().into_iter().flatten() {
                    let id = i["id"].as_str().unwrap_or("").trim_start_matches("sha256:");
                    println!(
                        "{:<20} {:<40} {:>12}",
                        &id[..id.len().min(12)],
                        names(&i["names"]),
                        i["size"]
                    );
                }
            }
        }
        Command::Image(ImageCmd::Pull { reference }) => {
            return crate::cli_pull::pull(&c, &reference, as_json).await;
        }
        Command::Image(ImageCmd::Prune) => {
            let v = c.json(Method::POST, "/v1/images/prune", None).await?;
            if as_json {
                print(&v);
            } else {
                for i in v["images"].as_array().into_iter().flatten() {
                    println!(
                        "deleted {} {}",
                        i["id"].as_str().unwrap_or(""),
                        names(&i["names"])
                    );
                }
                println!(
                    "{} image(s), {} blob(s), {} layer(s) removed; {} freed",
                    v["images"].as_array().map_or(0, Vec::len),
                    v["blobs_removed"],
                    v["layers_removed"],
                    crate::cli_pull::human(v["bytes_freed"].as_u64().unwrap_or(0))
                );
            }
        }
        Command::Registry(cmd) => return crate::cli_pull::registry(&c, cmd, as_json).await,
        Command::Image(ImageCmd::Rm { reference }) => {
            let v = c
                .json(Method::DELETE, &format!("/v1/images/{reference}"), None)
                .await?;
            println!("{}", v["deleted"].as_str().unwrap_or(""));
        }
        Command::Run(o) => return run_container(&c, *o).await,
        Command::Ps { all } => {
            let v = c
                .json(Method::GET, &format!("/v1/containers?all={all}"), None)
                .await?;
            if as_json {
                print(&v);
            } else {
                println!(
                    "{:<14} {:<20} {:<20} {:<11} {:>5}",
                    "ID", "NAME", "IMAGE", "STATE", "EXIT"
                );
                for x in v.as_array().into_iter().flatten() {
                    let id = x["id"].as_str().unwrap_or("");
                    println!(
                        "{:<14} {:<20} {:<20} {:<11} {:>5}",
                        &id[..id.len().min(12)],
                        x["name"].as_str().unwrap_or(""),
                        x["image"].as_str().unwrap_or(""),
                        x["state"].as_str().unwrap_or(""),
                        x["exit_code"]
                            .as_i64()
                            .map(|c| c.to_string())
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Logs { follow, container } => {
            use std::io::Write;
            let path = format!("/v1/containers/{}/logs?follow={follow}", enc(&container));
            c.stream(&path, |d| {
                let _ = std::io::stdout().write_all(d);
                let _ = std::io::stdout().flush();
            })
            .await?;
        }
        Command::Start { container } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/v1/containers/{}/start", enc(&container)),
                    None,
                )
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        Command::Stop { time, container } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/v1/containers/{}/stop?timeout={time}", enc(&container)),
                    None,
                )
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        Command::Kill { signal, container } => {
            let v = c
                .json(
                    Method::POST,
                    &format!(
                        "/v1/containers/{}/kill?signal={}",
                        enc(&container),
                        enc(&signal)
                    ),
                    None,
                )
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        Command::Wait { container } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/v1/containers/{}/wait", enc(&container)),
                    None,
                )
                .await?;
            println!("{}", v["exit_code"]);
            return Ok(exit_code(&v));
        }
        Command::Rm { force, container } => {
            c.json(
                Method::DELETE,
                &format!("/v1/containers/{}?force={force}", enc(&container)),
                None,
            )
            .await?;
            println!("{container}");
        }
        Command::Engine(cmd) => return crate::cli_engines::engine(&c, as_json, cmd).await,
        Command::Export(cmd) => return crate::cli_exports::export(&c, as_json, cmd).await,
        Command::Token(cmd) => return crate::cli_tokens::token(&c, as_json, cmd).await,
        Command::Info => print(&c.json(Method::GET, "/v1/info", None).await?),
        Command::Audit { limit, before } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let v = c.json(Method::GET, &path, None).await?;
            if as_json {
                print(&v);
            } else {
                println!(
                    "{:<8} {:<24} {:<24} {:<7} {:<6} TARGET",
                    "ID", "AT", "WHO", "METHOD", "STATUS"
                );
                for e in v["entries"].as_array().into_iter().flatten() {
                    println!(
                        "{:<8} {:<24} {:<24} {:<7} {:<6} {}",
                        e["id"],
                        e["at"].as_str().unwrap_or("").get(..23).unwrap_or(""),
                        e["who"].as_str().unwrap_or(""),
                        e["method"].as_str().unwrap_or(""),
                        e["status"],
                        e["target"].as_str().unwrap_or("")
                    );
                }
                if let Some(n) = v["next"].as_i64() {
                    println!("(more: --before {n})");
                }
            }
        }
        Command::Job(cmd) => return crate::cli_jobs::job(&c, as_json, cmd).await,
        Command::Watch(cmd) => return crate::cli_events::watch(&c, as_json, cmd).await,
        Command::Events(cmd) => return crate::cli_events::events(&c, cmd).await,
        Command::Update { limits, container } => {
            return crate::cli_engines::update(&c, &container, &limits).await
        }
        Command::Stats { container } => return crate::cli_engines::stats(&c, &container).await,
        Command::Inspect { container } => {
            print(
                &c.json(
                    Method::GET,
                    &format!("/v1/containers/{}", enc(&container)),
                    None,
                )
                .await?,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn exit_code(v: &Value) -> ExitCode {
    match v["exit_code"].as_i64() {
        Some(c) => ExitCode::from(u8::try_from(c.clamp(0, 255)).unwrap_or(255)),
        None => ExitCode::from(125),
    }
}

async fn run_container(c: &Client, o: RunOpts) -> Result<ExitCode> {
    use hyper::Method;
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
    let created = c.json(Method::POST, "/v1/containers", Some(&body)).await?;
    let id = created["id"]
        .as_str()
        .context("the daemon returned no id")?
        .to_owned();
    if o.detach {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    {
        use std::io::Write;
        c.stream(&format!("/v1/containers/{id}/logs?follow=true"), |d| {
            let _ = std::io::stdout().write_all(d);
            let _ = std::io::stdout().flush();
        })
        .await?;
    }
    let v = c
        .json(Method::POST, &format!("/v1/containers/{id}/wait"), None)
        .await?;
    if o.rm {
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

/// Tars an OCI layout directory into a temporary file for upload.
fn tar_dir(dir: &std::path::Path) -> Result<PathBuf> {
    let out = std::env::temp_dir().join(format!("inarray-import-{}.tar", std::process::id()));
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&out)
        .arg(".")
        .status()
        .context("running tar")?;
    anyhow::ensure!(status.success(), "tar of {} failed", dir.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn url_encoding() {
        assert_eq!(enc("reg:5000/a b"), "reg%3A5000%2Fa%20b");
    }
}
