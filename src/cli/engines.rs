//! CLI: engines (`inarray engine …`) and the limit flags `run`, `update` and `engine` share.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use inarray_api::client::{Client, Method};
use serde_json::{json, Map, Value};

use super::{enc, output, print_json};

/// Limits, as flags (shared by `run`, `update`, `engine add` and `engine set`).
#[derive(Debug, Default, Args)]
pub struct LimitFlags {
    /// Memory limit, e.g. 512m, 2g.
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory reservation (soft guarantee).
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// CPU quota in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Relative CPU share, 1-10000 (100 = default).
    #[arg(long)]
    pub cpu_weight: Option<u64>,
    /// CPUs to run on, e.g. 0-1.
    #[arg(long)]
    pub cpuset: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<i64>,
    /// Relative block-I/O share, 10-1000.
    #[arg(long)]
    pub io_weight: Option<u16>,
    /// Read bytes/s on the array's device, e.g. 50m.
    #[arg(long)]
    pub read_bps: Option<String>,
    #[arg(long)]
    pub write_bps: Option<String>,
    #[arg(long)]
    pub read_iops: Option<u64>,
    #[arg(long)]
    pub write_iops: Option<u64>,
}

impl LimitFlags {
    /// The `resources` object of the API (only what was given).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("memory", self.memory.as_ref().map(|v| json!(v)));
        put(
            "memory_reservation",
            self.memory_reservation.as_ref().map(|v| json!(v)),
        );
        put("cpus", self.cpus.map(|v| json!(v)));
        put("cpu_weight", self.cpu_weight.map(|v| json!(v)));
        put("cpuset", self.cpuset.as_ref().map(|v| json!(v)));
        put("pids", self.pids.map(|v| json!(v)));
        put("io_weight", self.io_weight.map(|v| json!(v)));
        put("read_bps", self.read_bps.as_ref().map(|v| json!(v)));
        put("write_bps", self.write_bps.as_ref().map(|v| json!(v)));
        put("read_iops", self.read_iops.map(|v| json!(v)));
        put("write_iops", self.write_iops.map(|v| json!(v)));
        Value::Object(m)
    }
}

#[derive(Debug, Subcommand)]
pub enum EngineCmd {
    /// List engines and their limits.
    Ls,
    /// Add an engine.
    Add {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Change an engine's limits live.
    Set {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Remove an engine (not a built-in one, not while containers use it).
    Rm { name: String },
    /// What an engine uses.
    Stats { name: String },
}

pub async fn engine(c: &Client, as_json: bool, cmd: EngineCmd) -> Result<ExitCode> {
    match cmd {
        EngineCmd::Ls => {
            let v = c.json(Method::GET, "/v1/engines", None).await?;
            output(as_json, &v, |v| {
                println!("{:<16} {:<8} LIMITS", "NAME", "BUILTIN");
                for e in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:<8} {}",
                        e["name"].as_str().unwrap_or(""),
                        e["builtin"],
                        e["resources"]
                    );
                }
            });
        }
        EngineCmd::Add { name, limits } => {
            let v = c
                .json(
                    Method::POST,
                    "/v1/engines",
                    Some(&json!({"name": name, "resources": limits.to_json()})),
                )
                .await?;
            print_json(&v);
        }
        EngineCmd::Set { name, limits } => {
            let v = c
                .json(
                    Method::PATCH,
                    &format!("/v1/engines/{}", enc(&name)),
                    Some(&json!({"resources": limits.to_json()})),
                )
                .await?;
            print_json(&v);
        }
        EngineCmd::Rm { name } => {
            c.json(Method::DELETE, &format!("/v1/engines/{}", enc(&name)), None)
                .await?;
            println!("{name}");
        }
        EngineCmd::Stats { name } => {
            print_json(
                &c.json(
                    Method::GET,
                    &format!("/v1/engines/{}/stats", enc(&name)),
                    None,
                )
                .await?,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
