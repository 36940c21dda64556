//! CLI: API tokens (`inarray token ls|add|rm`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use hyper::Method;
use inarray_api::client::Client;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List tokens (never their secrets).
    Ls,
    /// Create a token and print its secret: it is shown this once.
    Add {
        name: String,
        /// read (GET), operate (containers, images, jobs) or admin (everything).
        #[arg(long, default_value = "read")]
        scope: String,
    },
    /// Revoke a token: requests with it fail at once.
    Rm { name: String },
}

pub async fn token(c: &Client, as_json: bool, cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::Ls => {
            let v = c.json(Method::GET, "/v1/tokens", None).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<6} {:<24} {:<8} {:<22} CREATED BY",
                "ID", "NAME", "SCOPE", "CREATED"
            );
            for t in v.as_array().into_iter().flatten() {
                println!(
                    "{:<6} {:<24} {:<8} {:<22} {}",
                    t["id"],
                    t["name"].as_str().unwrap_or(""),
                    t["scope"].as_str().unwrap_or(""),
                    t["created_at"]
                        .as_str()
                        .unwrap_or("")
                        .get(..19)
                        .unwrap_or(""),
                    t["created_by"].as_str().unwrap_or("")
                );
            }
        }
        TokenCmd::Add { name, scope } => {
            let v = c
                .json(
                    Method::POST,
                    "/v1/tokens",
                    Some(&json!({"name": name, "scope": scope})),
                )
                .await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!(
                    "token {} ({}) created; its secret is shown only now:",
                    v["name"].as_str().unwrap_or(""),
                    v["scope"].as_str().unwrap_or("")
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
            }
        }
        TokenCmd::Rm { name } => {
            c.json(
                Method::DELETE,
                &format!("/v1/tokens/{}", crate::cli::enc(&name)),
                None,
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
