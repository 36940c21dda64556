//! CLI: scheduled jobs (`inarray job ls|add|rm|run|runs|suspend|resume`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

use super::containers::parse_volume;
use super::{enc, output};

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs and their next fire times.
    Ls,
    /// Add a job: a schedule and the container each run starts (or --file with a definition).
    Add(Box<AddOpts>),
    /// Remove a job: stops its active runs, removes its runs' containers and its history.
    Rm { name: String },
    /// Run a job now (also when suspended); prints the run once its container has started.
    Run { name: String },
    /// A job's runs, newest first (each attempt of a retried run on its own line).
    Runs {
        name: String,
        /// At most this many.
        #[arg(short = 'n', long)]
        limit: Option<u32>,
    },
    /// Stop firing a job (active runs go on).
    Suspend { name: String },
    /// Fire a job again, from the next fire time after now.
    Resume { name: String },
}

#[derive(Debug, clap::Args)]
pub struct AddOpts {
    /// The JSON definition (the body of `POST /v1/jobs`), from a file or `-` for stdin.
    #[arg(long, short = 'f', conflicts_with_all = ["name", "schedule", "image"])]
    file: Option<PathBuf>,
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// 5-field cron, 6-field (seconds first) or @hourly, @daily, @weekly, @monthly, @yearly.
    #[arg(long, required_unless_present = "file")]
    schedule: Option<String>,
    /// IANA time zone the schedule is read in (default UTC).
    #[arg(long = "tz")]
    time_zone: Option<String>,
    /// allow | forbid (default) | replace: what a fire does while a run is still active.
    #[arg(long)]
    concurrency: Option<String>,
    /// run_once (default) | skip: fire times missed while the daemon was down.
    #[arg(long)]
    missed: Option<String>,
    /// A run may start at most this late (seconds); later ones are recorded as missed.
    #[arg(long = "deadline")]
    starting_deadline_seconds: Option<u64>,
    /// Kill a run still going after this many seconds.
    #[arg(long = "timeout")]
    timeout_seconds: Option<u64>,
    /// Retry a failed run this many times (backoff 1 s doubling).
    #[arg(long)]
    retries: Option<u32>,
    /// Successful runs kept (default 3).
    #[arg(long)]
    keep_succeeded: Option<u32>,
    /// Failed runs kept (default 1).
    #[arg(long)]
    keep_failed: Option<u32>,
    /// Add it suspended.
    #[arg(long)]
    suspend: bool,
    /// SRC:DST[:ro] — SRC relative to the array root.
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// KEY=VALUE
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// none | host
    #[arg(long)]
    network: Option<String>,
    /// The engine the runs run in.
    #[arg(long)]
    engine: Option<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(required_unless_present = "file")]
    image: Option<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The request body `job add` sends.
fn definition(o: AddOpts) -> Result<Value> {
    if let Some(f) = &o.file {
        let mut text = String::new();
        if f.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the definition from stdin")?;
        } else {
            text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        }
        return serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON job definition", f.display()));
    }
    let volumes: Vec<Value> = o
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<_>>()?;
    let mut container = json!({"image": o.image, "env": o.env, "volumes": volumes});
    let set = |v: &mut Value, k: &str, x: Option<Value>| {
        if let Some(x) = x {
            v[k] = x;
        }
    };
    set(
        &mut container,
        "command",
        (!o.command.is_empty()).then(|| json!(o.command)),
    );
    set(&mut container, "network", o.network.map(Value::from));
    set(&mut container, "engine", o.engine.map(Value::from));
    set(&mut container, "workdir", o.workdir.map(Value::from));
    set(&mut container, "user", o.user.map(Value::from));
    let mut body = json!({"name": o.name, "schedule": o.schedule, "container": container});
    set(&mut body, "time_zone", o.time_zone.map(Value::from));
    set(&mut body, "concurrency", o.concurrency.map(Value::from));
    set(&mut body, "missed", o.missed.map(Value::from));
    set(
        &mut body,
        "starting_deadline_seconds",
        o.starting_deadline_seconds.map(Value::from),
    );
    set(
        &mut body,
        "timeout_seconds",
        o.timeout_seconds.map(Value::from),
    );
    set(&mut body, "retries", o.retries.map(Value::from));
    if o.keep_succeeded.is_some() || o.keep_failed.is_some() {
        let mut h = json!({});
        set(&mut h, "successful", o.keep_succeeded.map(Value::from));
        set(&mut h, "failed", o.keep_failed.map(Value::from));
        body["history"] = h;
    }
    if o.suspend {
        body["suspend"] = json!(true);
    }
    Ok(body)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `2024-03-31T03:00:00.25+02:00` → `2024-03-31 03:00:00+02:00` (to the second).
fn when(v: &Value) -> String {
    let t = s(v);
    if t.len() < 19 || !t.is_char_boundary(19) || t.as_bytes()[10] != b'T' {
        return "-".into();
    }
    let zone = t[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    format!("{} {}{zone}", &t[..10], &t[11..19])
}

pub async fn job(c: &Client, as_json: bool, cmd: JobCmd) -> Result<ExitCode> {
    let path = |name: &str, tail: &str| format!("/v1/jobs/{}{tail}", enc(name));
    match cmd {
        JobCmd::Ls => {
            let v = c.json(Method::GET, "/v1/jobs", None).await?;
            output(as_json, &v, |v| {
                println!(
                    "{:<24} {:<20} {:<18} {:<26} {:<9} {:>6}",
                    "NAME", "SCHEDULE", "TIME ZONE", "NEXT FIRE (LOCAL)", "SUSPENDED", "ACTIVE"
                );
                for j in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<20} {:<18} {:<26} {:<9} {:>6}",
                        s(&j["name"]),
                        s(&j["schedule"]),
                        s(&j["time_zone"]),
                        when(&j["next_fire_local"]),
                        if j["suspend"] == true { "yes" } else { "no" },
                        j["active_runs"]
                    );
                }
            });
        }
        JobCmd::Add(o) => {
            let body = definition(*o)?;
            let v = c.json(Method::POST, "/v1/jobs", Some(&body)).await?;
            output(as_json, &v, |v| {
                println!(
                    "{} next fire {}",
                    s(&v["name"]),
                    when(&v["next_fire_local"])
                );
            });
        }
        JobCmd::Rm { name } => {
            c.json(Method::DELETE, &path(&name, ""), None).await?;
            println!("{name}");
        }
        JobCmd::Run { name } => {
            let v = c.json(Method::POST, &path(&name, "/run"), None).await?;
            output(as_json, &v, |v| {
                println!(
                    "run {} {} container {}{}",
                    v["id"],
                    s(&v["state"]),
                    v["container_id"].as_str().unwrap_or("-"),
                    v["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            });
        }
        JobCmd::Runs { name, limit } => {
            let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
            let v = c
                .json(Method::GET, &path(&name, &format!("/runs{q}")), None)
                .await?;
            output(as_json, &v, |v| {
                println!(
                    "{:>6} {:<25} {:<9} {:>3} {:<9} {:>4} {:<14} ERROR",
                    "RUN", "SCHEDULED", "TRIGGER", "TRY", "STATE", "EXIT", "CONTAINER"
                );
                for r in v.as_array().into_iter().flatten() {
                    let id = r["container_id"].as_str().unwrap_or("-");
                    println!(
                        "{:>6} {:<25} {:<9} {:>3} {:<9} {:>4} {:<14} {}",
                        r["id"],
                        when(&r["scheduled_at"]),
                        s(&r["trigger"]),
                        r["attempt"],
                        s(&r["state"]),
                        r["exit_code"]
                            .as_i64()
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                        &id[..id.len().min(12)],
                        s(&r["error"])
                    );
                }
            });
        }
        JobCmd::Suspend { name } => {
            c.json(Method::POST, &path(&name, "/suspend"), None).await?;
            println!("{name}");
        }
        JobCmd::Resume { name } => {
            let v = c.json(Method::POST, &path(&name, "/resume"), None).await?;
            println!("{name} next fire {}", when(&v["next_fire_local"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: JobCmd,
    }

    fn add(args: &[&str]) -> Value {
        let cli = Cli::try_parse_from(["x"].iter().chain(args)).unwrap();
        match cli.cmd {
            JobCmd::Add(o) => definition(*o).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_builds_the_definition_from_flags() {
        let v = add(&[
            "add",
            "nightly",
            "--schedule",
            "0 3 * * *",
            "--tz",
            "Europe/Berlin",
            "--concurrency",
            "replace",
            "--retries",
            "2",
            "--timeout",
            "600",
            "--keep-failed",
            "5",
            "-v",
            "proj:/data:ro",
            "-e",
            "A=1",
            "busybox",
            "sh",
            "-c",
            "echo $A; ls -l /data",
        ]);
        assert_eq!(
            v,
            json!({
                "name": "nightly", "schedule": "0 3 * * *", "time_zone": "Europe/Berlin",
                "concurrency": "replace", "retries": 2, "timeout_seconds": 600,
                "history": {"failed": 5},
                "container": {
                    "image": "busybox", "env": ["A=1"],
                    "volumes": [{"source": "proj", "target": "/data", "read_only": true}],
                    "command": ["sh", "-c", "echo $A; ls -l /data"],
                },
            })
        );
    }

    #[test]
    fn add_needs_a_schedule_or_a_file() {
        assert!(Cli::try_parse_from(["x", "add", "n", "busybox"]).is_err());
        assert!(Cli::try_parse_from(["x", "add", "--file", "j.json", "n"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("j.json");
        std::fs::write(
            &f,
            r#"{"name":"n","schedule":"@daily","container":{"image":"b"}}"#,
        )
        .unwrap();
        let v = add(&["add", "--file", f.to_str().unwrap()]);
        assert_eq!(v["schedule"], "@daily");
    }

    #[test]
    fn times_are_shown_to_the_second() {
        assert_eq!(
            when(&json!("2024-03-31T03:00:00.250+02:00")),
            "2024-03-31 03:00:00+02:00"
        );
        assert_eq!(when(&json!("2024-03-31T01:00:00Z")), "2024-03-31 01:00:00Z");
        assert_eq!(when(&Value::Null), "-");
    }
}
