//! CLI: NFS exports (`inarray export ls|add|rm`).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

use super::{enc, output};

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// List the NFS exports.
    Ls,
    /// Add an export (clients mount /NAME).
    Add {
        name: String,
        /// Directory relative to the array root.
        path: String,
        /// MATCH[:rw|:ro] where MATCH is *, an IP address or a CIDR block (repeatable, checked in
        /// order; default access rw).
        #[arg(long = "client", required = true)]
        clients: Vec<String>,
        /// root (default), all or none.
        #[arg(long, default_value = "root")]
        squash: String,
        #[arg(long, default_value_t = 65534)]
        anon_uid: u32,
        #[arg(long, default_value_t = 65534)]
        anon_gid: u32,
    },
    /// Remove an export.
    Rm { name: String },
}

/// Parses `MATCH[:rw|:ro]`; the last colon separates the access (IPv6 addresses hold colons).
pub fn parse_client(s: &str) -> Result<Value> {
    let (m, access) = match s.rsplit_once(':') {
        Some((m, a @ ("rw" | "ro"))) => (m, a),
        _ => (s, "rw"),
    };
    if m.is_empty() {
        bail!("client {s:?}: expected MATCH[:rw|:ro]");
    }
    Ok(json!({"match": m, "access": access}))
}

pub async fn export(c: &Client, as_json: bool, cmd: ExportCmd) -> Result<ExitCode> {
    match cmd {
        ExportCmd::Ls => {
            let v = c.json(Method::GET, "/v1/exports", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<16} {:<28} {:<7} {:<12} CLIENTS",
                    "NAME", "PATH", "SQUASH", "ANON"
                );
                for x in v.as_array().into_iter().flatten() {
                    let clients: Vec<String> = x["clients"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            format!(
                                "{}:{}",
                                c["match"].as_str().unwrap_or(""),
                                c["access"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    println!(
                        "{:<16} {:<28} {:<7} {:<12} {}",
                        x["name"].as_str().unwrap_or(""),
                        x["path"].as_str().unwrap_or(""),
                        x["squash"].as_str().unwrap_or(""),
                        format!("{}:{}", x["anon_uid"], x["anon_gid"]),
                        clients.join(",")
                    );
                }
            });
        }
        ExportCmd::Add {
            name,
            path,
            clients,
            squash,
            anon_uid,
            anon_gid,
        } => {
            let clients = clients
                .iter()
                .map(|c| parse_client(c))
                .collect::<Result<Vec<_>>>()?;
            let body = json!({
                "name": name, "path": path, "clients": clients, "squash": squash,
                "anon_uid": anon_uid, "anon_gid": anon_gid,
            });
            let v = c.json(Method::POST, "/v1/exports", Some(&body)).await?;
            output(as_json, &v, |v| {
                println!("{}", v["name"].as_str().unwrap_or(""));
            });
        }
        ExportCmd::Rm { name } => {
            c.json(Method::DELETE, &format!("/v1/exports/{}", enc(&name)), None)
                .await?;
            println!("{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_flags() {
        assert_eq!(
            parse_client("10.0.0.0/8:ro").unwrap(),
            json!({"match": "10.0.0.0/8", "access": "ro"})
        );
        assert_eq!(parse_client("*").unwrap()["access"], "rw");
        assert_eq!(parse_client("fd00::1").unwrap()["match"], "fd00::1");
        assert_eq!(
            parse_client("fd00::1:ro").unwrap(),
            json!({"match": "fd00::1", "access": "ro"})
        );
        assert!(parse_client(":ro").is_err());
    }
}
