//! Command-line parsing and the client commands (they talk to the daemon over its socket).
//!
//! This file holds the clap structures and the dispatch; each command group has its own file
//! (`containers.rs`, `exec.rs` with `session.rs` and `terminal.rs`, `images.rs` with `pull.rs`,
//! `registries.rs`, `engines.rs`, `exports.rs`, `jobs.rs`, `events.rs`, `access.rs`), and the
//! helpers they share are here: [`enc`] for URL path segments, [`print_json`] and [`output`].

mod access;
mod containers;
mod engines;
mod events;
mod exec;
mod exports;
mod images;
mod jobs;
mod networks;
mod pull;
mod registries;
mod session;
mod terminal;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use inarray_api::client::{Client, Host, Method};
use serde_json::Value;

use crate::config::{ServeOpts, DEFAULT_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "inarray",
    version,
    about = "Containers inside the storage array"
)]
pub struct Args {
    /// The daemon to talk to: unix:/PATH or tcp://HOST:PORT (HOST: a DNS name or an IP address;
    /// with --tls-ca the server's certificate must be made out to it).
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
    Image(images::ImageCmd),
    /// Manage registry credentials.
    #[command(subcommand)]
    Registry(registries::RegistryCmd),
    /// Create and start a container; attached by default (streams its output, exits with its code).
    Run(Box<containers::RunOpts>),
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Print a container's output.
    Logs(containers::LogsOpts),
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
    /// Run a command in a running container; exits with its exit code.
    Exec(exec::ExecOpts),
    /// Connect to a running container's terminal or output (and its input if it has one).
    Attach { container: String },
    /// Manage IO engines.
    #[command(subcommand)]
    Engine(engines::EngineCmd),
    /// Manage NFS exports.
    #[command(subcommand)]
    Export(exports::ExportCmd),
    /// Manage bridge networks.
    #[command(subcommand)]
    Network(networks::NetworkCmd),
    /// Manage scheduled jobs.
    #[command(subcommand)]
    Job(jobs::JobCmd),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(access::TokenCmd),
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
    Watch(events::WatchCmd),
    /// Follow file events.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Change a container's limits live, or its restart policy.
    Update {
        #[command(flatten)]
        limits: engines::LimitFlags,
        /// A new restart policy: no, always, unless-stopped, on-failure[:N].
        #[arg(long)]
        restart: Option<String>,
        container: String,
    },
    /// What a running container uses.
    Stats { container: String },
    /// Give a container another name.
    Rename { container: String, name: String },
    /// The processes of a running container (host pids).
    Top {
        container: String,
        #[arg(long)]
        json: bool,
    },
    /// Manage array volumes (quotas, snapshots, clones).
    #[command(subcommand)]
    Volume(volumes::VolumeCmd),
}

/// Percent-encodes one URL path segment (or query value): everything but RFC 3986's unreserved
/// characters.
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

/// Prints a JSON value, indented.
fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints an answer of the daemon: as JSON with `--json`, else as `human` shows it.
fn output(as_json: bool, v: &Value, human: impl FnOnce(&Value)) {
    if as_json {
        print_json(v);
    } else {
        human(v);
    }
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
    let host: Host = host.parse().map_err(anyhow::Error::msg)?;
    let tls = tls_ca.map(|ca| inarray_api::client::TlsOptions {
        ca,
        cert: tls_cert,
        key: tls_key,
    });
    let c = Client::new(host).with_token(token).with_tls(tls.as_ref())?;
    match command {
        Command::Serve(_) => unreachable!("dispatched in main"),
        Command::Image(cmd) => images::image(&c, as_json, cmd).await,
        Command::Registry(cmd) => registries::registry(&c, cmd, as_json).await,
        Command::Run(o) => containers::run_container(&c, *o).await,
        Command::Ps { all } => containers::ps(&c, as_json, all).await,
        Command::Logs(o) => containers::logs(&c, o).await,
        Command::Start { container } => containers::action(&c, &container, "start").await,
        Command::Stop { time, container } => {
            containers::action(&c, &container, &format!("stop?timeout={time}")).await
        }
        Command::Kill { signal, container } => {
            containers::action(&c, &container, &format!("kill?signal={}", enc(&signal))).await
        }
        Command::Wait { container } => containers::wait(&c, &container).await,
        Command::Rm { force, container } => containers::rm(&c, force, &container).await,
        Command::Inspect { container } => containers::inspect(&c, &container).await,
        Command::Exec(o) => exec::exec(&c, o).await,
        Command::Attach { container } => exec::attach(&c, &container).await,
        Command::Update {
            limits,
            restart,
            container,
        } => containers::update(&c, &container, &limits, restart.as_deref()).await,
        Command::Rename { container, name } => containers::rename(&c, &container, &name).await,
        Command::Top { container, json } => containers::top(&c, &container, json).await,
        Command::Stats { container } => containers::stats(&c, &container).await,
        Command::Engine(cmd) => engines::engine(&c, as_json, cmd).await,
        Command::Network(cmd) => networks::network(&c, as_json, cmd).await,
        Command::Export(cmd) => exports::export(&c, as_json, cmd).await,
        Command::Token(cmd) => access::token(&c, as_json, cmd).await,
        Command::Info => {
            print_json(&c.json(Method::GET, "/v1/info", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { limit, before } => access::audit(&c, as_json, limit, before).await,
        Command::Job(cmd) => jobs::job(&c, as_json, cmd).await,
        Command::Watch(cmd) => events::watch(&c, as_json, cmd).await,
        Command::Events(cmd) => events::events(&c, cmd).await,
        Command::Volume(cmd) => volumes::volume(&c, as_json, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding() {
        assert_eq!(enc("reg:5000/a b"), "reg%3A5000%2Fa%20b");
        assert_eq!(enc("job.run-1_~"), "job.run-1_~");
    }
}
