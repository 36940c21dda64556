//! CLI: images (`inarray image import|ls|rm|pull|prune`); the pull's progress is in `pull.rs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::Value;

use super::pull::human;
use super::{enc, output};

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

pub async fn image(c: &Client, as_json: bool, cmd: ImageCmd) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Import { file, name } => {
            let path = match &name {
                Some(n) => format!("/v1/images/import?name={}", enc(n)),
                None => "/v1/images/import".into(),
            };
            let file = if file.is_dir() { tar_dir(&file)? } else { file };
            let v = c.upload(&path, &file).await?;
            output(as_json, &v, |v| {
                println!("{} {}", v["id"].as_str().unwrap_or(""), names(&v["names"]));
            });
        }
        ImageCmd::Ls => {
            let v = c.json(Method::GET, "/v1/images", None).await?;
            output(as_json, &v, |v| {
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
            });
        }
        ImageCmd::Pull { reference } => return super::pull::pull(c, &reference, as_json).await,
        ImageCmd::Prune => {
            let v = c.json(Method::POST, "/v1/images/prune", None).await?;
            output(as_json, &v, |v| {
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
                    human(v["bytes_freed"].as_u64().unwrap_or(0))
                );
            });
        }
        ImageCmd::Rm { reference } => {
            let v = c
                .json(Method::DELETE, &format!("/v1/images/{reference}"), None)
                .await?;
            println!("{}", v["deleted"].as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An image's names, comma-separated.
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

/// Tars an OCI layout directory into a temporary file for upload.
fn tar_dir(dir: &Path) -> Result<PathBuf> {
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
