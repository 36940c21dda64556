//! CLI: access control (`inarray token ls|add (create)|rm`, `inarray audit`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::json;

use super::{enc, output};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List tokens (never their secrets).
    Ls,
    /// Create a token and print its secret: it is shown this once.
    #[command(visible_alias = "create")]
    Add {
        name: String,
        /// read (GET), operate (containers, images, jobs) or admin (everything).
        #[arg(long, default_value = "read")]
        scope: String,
        /// It expires after this long: 30d, 12h, 90m, 2w or seconds (default: never).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Revoke a token: requests with it fail at once.
    Rm { name: String },
}

pub async fn token(c: &Client, as_json: bool, cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::Ls => {
            let v = c.json(Method::GET, "/v1/tokens", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<6} {:<24} {:<8} {:<22} {:<22} CREATED BY",
                    "ID", "NAME", "SCOPE", "CREATED", "EXPIRES"
                );
                let time = |v: &serde_json::Value| {
                    v.as_str().unwrap_or("").get(..19).unwrap_or("").to_owned()
                };
                for t in v.as_array().into_iter().flatten() {
                    let expires = match (t["expires_at"].is_null(), t["expired"] == true) {
                        (true, _) => "never".to_owned(),
                        (false, true) => format!("expired {}", time(&t["expires_at"])),
                        (false, false) => time(&t["expires_at"]),
                    };
                    println!(
                        "{:<6} {:<24} {:<8} {:<22} {:<22} {}",
                        t["id"],
                        t["name"].as_str().unwrap_or(""),
                        t["scope"].as_str().unwrap_or(""),
                        time(&t["created_at"]),
                        expires,
                        t["created_by"].as_str().unwrap_or("")
                    );
                }
            });
        }
        TokenCmd::Add { name, scope, ttl } => {
            let mut body = json!({"name": name, "scope": scope});
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            let v = c.json(Method::POST, "/v1/tokens", Some(&body)).await?;
            output(as_json, &v, |v| {
                let until = match v["expires_at"].as_str() {
                    Some(at) => format!(", expires {at}"),
                    None => String::new(),
                };
                eprintln!(
                    "token {} ({}{until}) created; its secret is shown only now:",
                    v["name"].as_str().unwrap_or(""),
                    v["scope"].as_str().unwrap_or("")
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
            });
        }
        TokenCmd::Rm { name } => {
            c.json(Method::DELETE, &format!("/v1/tokens/{}", enc(&name)), None)
                .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `inarray audit [-n LIMIT] [--before ID]`
pub async fn audit(c: &Client, as_json: bool, limit: u32, before: Option<i64>) -> Result<ExitCode> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(b) = before {
        path.push_str(&format!("&before={b}"));
    }
    let v = c.json(Method::GET, &path, None).await?;
    output(as_json, &v, |v| {
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
    });
    Ok(ExitCode::SUCCESS)
}
