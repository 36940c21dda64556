//! CLI: `inarray image pull` (progress and a summary).
//!
//! Progress is plain text, not indicatif bars: one status line rewritten in place on a terminal,
//! one line per finished layer otherwise (logs, CI). indicatif would add a crate tree (console,
//! unicode-width, portable-atomic …) to a binary whose other commands print plain lines.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use inarray_api::client::Client;
use serde_json::{json, Value};

/// `bytes` in B, KiB, MiB, GiB or TiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

struct Display {
    tty: bool,
    reference: String,
    sizes: HashMap<String, u64>,
    fetched: HashMap<String, u64>,
    total: u64,
    cached: u64,
    layers: usize,
    done_layers: usize,
    started: Instant,
}

impl Display {
    fn status(&self) {
        if !self.tty {
            return;
        }
        let got: u64 = self.fetched.values().sum::<u64>() + self.cached;
        let pct = (got * 100).checked_div(self.total).unwrap_or(100);
        eprint!(
            "\r\x1b[2K{}: {}/{} layers, {} / {} ({pct}%)",
            self.reference,
            self.done_layers,
            self.layers,
            human(got),
            human(self.total)
        );
        let _ = std::io::stderr().flush();
    }

    fn event(&mut self, v: &Value) {
        match v["event"].as_str().unwrap_or("") {
            "resolved" => {
                self.total = v["total_bytes"].as_u64().unwrap_or(0);
                self.cached = v["cached_bytes"].as_u64().unwrap_or(0);
                for l in v["layers"].as_array().into_iter().flatten() {
                    let d = l["digest"].as_str().unwrap_or("").to_string();
                    let size = l["size"].as_u64().unwrap_or(0);
                    self.layers += 1;
                    if l["cached"].as_bool() == Some(true) {
                        self.done_layers += 1;
                        if !self.tty {
                            eprintln!("{}: already present", short(&d));
                        }
                    }
                    self.sizes.insert(d, size);
                }
                if !self.tty {
                    eprintln!(
                        "{}: manifest {}{}, {} layer(s), {} ({} already present)",
                        self.reference,
                        v["manifest_digest"].as_str().unwrap_or(""),
                        v["platform"]
                            .as_str()
                            .map(|p| format!(" for {p}"))
                            .unwrap_or_default(),
                        self.layers,
                        human(self.total),
                        human(self.cached)
                    );
                }
            }
            "layer" => {
                let d = v["digest"].as_str().unwrap_or("").to_string();
                let bytes = v["bytes"].as_u64().unwrap_or(0);
                self.fetched.insert(d.clone(), bytes);
                if v["done"].as_bool() == Some(true) {
                    self.done_layers += 1;
                    if !self.tty {
                        eprintln!("{}: fetched {}", short(&d), human(bytes));
                    }
                }
            }
            "verifying" if !self.tty => eprintln!("{}: verifying and unpacking", self.reference),
            _ => {}
        }
        self.status();
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

pub async fn pull(c: &Client, reference: &str, as_json: bool) -> Result<ExitCode> {
    let mut d = Display {
        tty: !as_json && std::io::stderr().is_terminal(),
        reference: reference.to_string(),
        sizes: HashMap::new(),
        fetched: HashMap::new(),
        total: 0,
        cached: 0,
        layers: 0,
        done_layers: 0,
        started: Instant::now(),
    };
    let mut last: Option<Value> = None;
    c.post_lines("/v1/images/pull", &json!({"reference": reference}), |v| {
        if as_json {
            println!("{v}");
        } else {
            d.event(&v);
        }
        if matches!(v["event"].as_str(), Some("done" | "error")) {
            last = Some(v);
        }
    })
    .await?;
    if d.tty {
        eprintln!();
    }
    let Some(last) = last else {
        bail!("the daemon ended the pull without a result");
    };
    if last["event"] == "error" {
        bail!(
            "{} ({})",
            last["error"]["message"].as_str().unwrap_or("pull failed"),
            last["error"]["code"].as_str().unwrap_or("")
        );
    }
    if !as_json {
        let secs = d.started.elapsed().as_secs_f64();
        let fetched: u64 = d.fetched.values().sum();
        let img = &last["image"];
        println!(
            "pulled {reference}: {} ({} layer(s), {} fetched, {} already present, {:.1} s, {}/s)",
            img["id"].as_str().unwrap_or(""),
            d.layers,
            human(fetched),
            human(d.cached),
            secs,
            human((fetched as f64 / secs.max(0.001)) as u64)
        );
    }
    Ok(ExitCode::SUCCESS)
}
