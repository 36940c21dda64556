//! What a report says about how it was made: tools' versions, the source tree, durations.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The first line a command prints (a version), or `?`.
pub fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// The source tree's short revision, and whether it has uncommitted changes.
pub fn git_describe() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rev = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        // What the runner itself writes (the report, its plots, the README's headline) does
        // not count: it is written before this is asked.
        .args(["status", "--porcelain", "--untracked-files=no", "--", "."])
        .args([":!docs/benchmarks.md", ":!docs/bench", ":!README.md"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if rev.is_empty() {
        "unknown".into()
    } else if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
