//! CLI: bridge networks (`inarray network …`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::{json, Map, Value};

use super::{enc, output, print_json};

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List networks.
    Ls,
    /// Create a bridge network.
    Create {
        name: String,
        /// IPv4 subnet, e.g. 10.89.3.0/24 (default: a free /24 of the daemon's pool).
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        /// No route out: containers reach only each other.
        #[arg(long)]
        internal: bool,
        /// An IPv6 subnet too.
        #[arg(long)]
        ipv6: bool,
        #[arg(long)]
        subnet6: Option<String>,
        /// No name resolution (aardvark-dns) on the network.
        #[arg(long)]
        no_dns: bool,
        /// netavark bridge options, KEY=VALUE (mtu).
        #[arg(long = "opt", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Remove a network no container is on.
    Rm { name: String },
    /// Show a network.
    Inspect { name: String },
}

pub async fn network(c: &Client, as_json: bool, cmd: NetworkCmd) -> Result<ExitCode> {
    match cmd {
        NetworkCmd::Ls => {
            let v = c.json(Method::GET, "/v1/networks", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<20} {:<18} {:<16} {:<9} DNS",
                    "NAME", "SUBNET", "INTERFACE", "INTERNAL"
                );
                for n in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<18} {:<16} {:<9} {}",
                        n["name"].as_str().unwrap_or(""),
                        n["subnet"].as_str().unwrap_or(""),
                        n["interface"].as_str().unwrap_or(""),
                        n["internal"],
                        n["dns"]
                    );
                }
            });
        }
        NetworkCmd::Create {
            name,
            subnet,
            gateway,
            internal,
            ipv6,
            subnet6,
            no_dns,
            options,
        } => {
            let mut opts = Map::new();
            for o in options {
                let (k, v) = o
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--opt {o:?}: not KEY=VALUE"))?;
                opts.insert(k.to_owned(), Value::from(v));
            }
            let v = c
                .json(
                    Method::POST,
                    "/v1/networks",
                    Some(&json!({
                        "name": name, "subnet": subnet, "gateway": gateway,
                        "internal": internal, "ipv6": ipv6, "subnet6": subnet6,
                        "dns": !no_dns, "options": opts,
                    })),
                )
                .await?;
            print_json(&v);
        }
        NetworkCmd::Rm { name } => {
            c.json(
                Method::DELETE,
                &format!("/v1/networks/{}", enc(&name)),
                None,
            )
            .await?;
            println!("{name}");
        }
        NetworkCmd::Inspect { name } => {
            print_json(
                &c.json(Method::GET, &format!("/v1/networks/{}", enc(&name)), None)
                    .await?,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
