//! CLI: array volumes (`inarray volume …`): create, list, inspect, resize, remove, and their
//! snapshots, restores and clones.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::{json, Map, Value};

use super::{enc, output, print_json};

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        name: String,
        /// Its quota, e.g. 512m, 10g (bytes without a suffix; binary units).
        #[arg(long)]
        size: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List volumes with their size and usage.
    Ls,
    /// Show a volume as JSON (usage, users, capabilities).
    Inspect { name: String },
    /// Change a volume's quota live (`none` removes it).
    Resize { name: String, size: String },
    /// Remove a volume and its snapshots (refused while containers or jobs use it).
    Rm { name: String },
    /// Take a snapshot of a volume.
    Snapshot { name: String, snapshot: String },
    /// List a volume's snapshots.
    Snapshots { name: String },
    /// Remove a snapshot.
    SnapshotRm { name: String, snapshot: String },
    /// Give a volume back a snapshot's contents (refused while running containers use it).
    Restore { name: String, snapshot: String },
    /// Make a new, independent volume from a volume (or one of its snapshots).
    Clone {
        name: String,
        new_name: String,
        #[arg(long)]
        snapshot: Option<String>,
        /// The new volume's quota (default: the source's).
        #[arg(long)]
        size: Option<String>,
    },
}

/// `512m`, `10G`, `1048576`: bytes (binary units).
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => bail!("size {s:?}: use a number of bytes or a k, m, g or t suffix"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("size {s:?}: not a number of bytes"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

fn human(bytes: &Value) -> String {
    match bytes.as_u64() {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
    }
}

pub async fn volume(c: &Client, as_json: bool, cmd: VolumeCmd) -> Result<ExitCode> {
    let path = |n: &str| format!("/v1/volumes/{}", enc(n));
    match cmd {
        VolumeCmd::Create { name, size, labels } => {
            let mut body = json!({"name": name});
            if let Some(s) = size {
                body["size"] = json!(parse_size(&s)?);
            }
            let mut l = Map::new();
            for kv in labels {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--label {kv:?}: use KEY=VALUE");
                };
                l.insert(k.to_owned(), json!(v));
            }
            body["labels"] = Value::Object(l);
            print_json(&c.json(Method::POST, "/v1/volumes", Some(&body)).await?);
        }
        VolumeCmd::Ls => {
            let v = c.json(Method::GET, "/v1/volumes", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<24} {:<7} {:>9} {:>9} {:>9} USED BY",
                    "NAME", "BACKEND", "SIZE", "USED", "FILES"
                );
                for e in v.as_array().into_iter().flatten() {
                    let users: Vec<&str> = e["used_by"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<24} {:<7} {:>9} {:>9} {:>9} {}",
                        e["name"].as_str().unwrap_or(""),
                        e["backend"].as_str().unwrap_or(""),
                        human(&e["size"]),
                        human(&e["usage"]["bytes"]),
                        e["usage"]["files"],
                        users.join(",")
                    );
                }
            });
        }
        VolumeCmd::Inspect { name } => {
            print_json(&c.json(Method::GET, &path(&name), None).await?);
        }
        VolumeCmd::Resize { name, size } => {
            let size = if size == "none" {
                Value::Null
            } else {
                json!(parse_size(&size)?)
            };
            let body = json!({ "size": size });
            print_json(&c.json(Method::PATCH, &path(&name), Some(&body)).await?);
        }
        VolumeCmd::Rm { name } => {
            c.json(Method::DELETE, &path(&name), None).await?;
            println!("{name}");
        }
        VolumeCmd::Snapshot { name, snapshot } => {
            let body = json!({ "name": snapshot });
            let url = format!("{}/snapshots", path(&name));
            print_json(&c.json(Method::POST, &url, Some(&body)).await?);
        }
        VolumeCmd::Snapshots { name } => {
            let url = format!("{}/snapshots", path(&name));
            let v = c.json(Method::GET, &url, None).await?;
            output(as_json, &v, |v| {
                println!("{:<24} CREATED", "SNAPSHOT");
                for s in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {}",
                        s["name"].as_str().unwrap_or(""),
                        s["created"].as_str().unwrap_or("")
                    );
                }
            });
        }
        VolumeCmd::SnapshotRm { name, snapshot } => {
            let url = format!("{}/snapshots/{}", path(&name), enc(&snapshot));
            c.json(Method::DELETE, &url, None).await?;
            println!("{name}@{snapshot}");
        }
        VolumeCmd::Restore { name, snapshot } => {
            let url = format!("{}/snapshots/{}/restore", path(&name), enc(&snapshot));
            print_json(&c.json(Method::POST, &url, None).await?);
        }
        VolumeCmd::Clone {
            name,
            new_name,
            snapshot,
            size,
        } => {
            let mut body = json!({ "name": new_name });
            if let Some(s) = snapshot {
                body["snapshot"] = json!(s);
            }
            if let Some(s) = size {
                body["size"] = json!(parse_size(&s)?);
            }
            let url = format!("{}/clone", path(&name));
            print_json(&c.json(Method::POST, &url, Some(&body)).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        for bad in ["", "-1", "1x", "m", "99999999999999999999t", "1.5g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
