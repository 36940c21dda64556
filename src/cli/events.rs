//! CLI: file events (`inarray watch add|ls|rm`) and the log of file and lifecycle events
//! (`inarray events tail [--type …]`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

use super::{enc, output};

#[derive(Debug, Subcommand)]
pub enum WatchCmd {
    /// List watches with their live figures.
    Ls,
    /// Watch an array directory (recursively unless --no-recursive).
    Add {
        name: String,
        /// Relative to the array root.
        path: String,
        #[arg(long)]
        no_recursive: bool,
        /// Kinds to report (repeatable): create, close_write, delete, move, attrib, mkdir.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Report only paths matching (repeatable; `*`, `?`, `**`, `[a-z]`).
        #[arg(long)]
        include: Vec<String>,
        /// Neither report nor watch paths matching (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Stop watching (the events already logged stay).
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print events as they come, one JSON object per line. With --subscription, through that
    /// durable subscription (acknowledging what was printed); else from the log's end.
    Tail {
        #[arg(long)]
        subscription: Option<String>,
        /// Start at the log's beginning (without --subscription).
        #[arg(long)]
        all: bool,
        /// Event types (repeatable; without --subscription, whose own types apply): file,
        /// container, job, image, export, one type (container.die, job.run_end) or `*`.
        /// Default: file.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
    },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

pub async fn watch(c: &Client, as_json: bool, cmd: WatchCmd) -> Result<ExitCode> {
    match cmd {
        WatchCmd::Ls => {
            let v = c.json(Method::GET, "/v1/watches", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<20} {:<30} {:>5} {:>8} {:>8} {:>7} ERROR",
                    "NAME", "PATH", "REC", "DIRS", "EVENTS", "RESYNCS"
                );
                for w in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<30} {:>5} {:>8} {:>8} {:>7} {}",
                        s(&w["name"]),
                        s(&w["path"]),
                        if w["recursive"] == true { "yes" } else { "no" },
                        w["watched_dirs"],
                        w["events_seen"],
                        w["resyncs"],
                        s(&w["error"])
                    );
                }
            });
        }
        WatchCmd::Add {
            name,
            path,
            no_recursive,
            events,
            include,
            exclude,
        } => {
            let mut body = json!({
                "name": name, "path": path, "recursive": !no_recursive,
                "include": include, "exclude": exclude,
            });
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            let v = c.json(Method::POST, "/v1/watches", Some(&body)).await?;
            output(as_json, &v, |v| {
                println!(
                    "{} watching {} directories",
                    s(&v["name"]),
                    v["watched_dirs"]
                );
            });
        }
        WatchCmd::Rm { name } => {
            c.json(Method::DELETE, &format!("/v1/watches/{}", enc(&name)), None)
                .await?;
            println!("{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(c: &Client, cmd: EventsCmd) -> Result<ExitCode> {
    let EventsCmd::Tail {
        subscription,
        all,
        types,
    } = cmd;
    if subscription.is_some() && !types.is_empty() {
        anyhow::bail!("--type: a subscription delivers its own types (set when it is made)");
    }
    let types = if types.is_empty() {
        String::new()
    } else {
        format!("&types={}", enc(&types.join(",")))
    };
    match subscription {
        Some(name) => loop {
            let path = format!("/v1/subscriptions/{}/events?wait=30&max=1000", enc(&name));
            let d = c.json(Method::GET, &path, None).await?;
            let evs = d["events"].as_array().cloned().unwrap_or_default();
            for e in &evs {
                println!("{e}");
            }
            if let Some(last) = evs.last().and_then(|e| e["seq"].as_i64()) {
                c.json(
                    Method::POST,
                    &format!("/v1/subscriptions/{}/ack", enc(&name)),
                    Some(&json!({ "seq": last })),
                )
                .await?;
            }
        },
        None => {
            let mut after = if all {
                0
            } else {
                let v = c.json(Method::GET, "/v1/subscriptions", None).await.ok();
                // The log's newest seq: any subscription view carries it; else read to the end.
                match v
                    .as_ref()
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.first())
                    .and_then(|s| s["last_seq"].as_i64())
                {
                    Some(l) => l,
                    None => {
                        let mut after = 0;
                        loop {
                            let v = c
                                .json(
                                    Method::GET,
                                    &format!("/v1/events?after={after}&max=10000{types}"),
                                    None,
                                )
                                .await?;
                            match v
                                .as_array()
                                .and_then(|a| a.last())
                                .and_then(|e| e["seq"].as_i64())
                            {
                                Some(l) => after = l,
                                None => break after,
                            }
                        }
                    }
                }
            };
            loop {
                let v = c
                    .json(
                        Method::GET,
                        &format!("/v1/events?after={after}&max=1000&wait=30{types}"),
                        None,
                    )
                    .await?;
                for e in v.as_array().into_iter().flatten() {
                    println!("{e}");
                    after = e["seq"].as_i64().unwrap_or(after);
                }
                if v.as_array().is_none_or(|a| a.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}
