//! CLI: registry credentials (`inarray registry login|logout|ls`).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::json;

use super::output;

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

pub async fn registry(c: &Client, cmd: RegistryCmd, as_json: bool) -> Result<ExitCode> {
    match cmd {
        RegistryCmd::Login { registry, username } => {
            let mut password = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            c.json(
                Method::POST,
                "/v1/registries",
                Some(&json!({"registry": registry, "username": username, "password": password})),
            )
            .await?;
            println!("credentials stored for {registry}");
        }
        RegistryCmd::Logout { registry } => {
            c.json(Method::DELETE, &format!("/v1/registries/{registry}"), None)
                .await?;
            println!("credentials removed for {registry}");
        }
        RegistryCmd::Ls => {
            let v = c.json(Method::GET, "/v1/registries", None).await?;
            output(as_json, &v, |v| {
                println!("{:<40} {:<24} SOURCE", "REGISTRY", "USERNAME");
                for r in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<40} {:<24} {}",
                        r["registry"].as_str().unwrap_or(""),
                        r["username"].as_str().unwrap_or(""),
                        r["source"].as_str().unwrap_or("")
                    );
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
