//! The architecture invariants a test can check (ARCHITECTURE.md): which crates may depend on
//! the crates that carry a concern (SQL, HTTP, TLS, containers), and that no SQL is written
//! outside `store/`. A plain test: no root, no network (`cargo metadata --offline`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which of our packages may depend on each of these crates. Only direct dependencies count, of
/// the kinds the product is built from (normal and build): dev-dependencies are test scaffolding
/// (a test may run a TLS server to talk to). Every other package of the workspace must not.
const ALLOWED: &[(&str, &[&str])] = &[
    // SQL: the store owns it.
    ("sqlx", &["inarray-store"]),
    // HTTP: array-api serves it (and holds the CLI's client); the images crate holds the one
    // outbound client (registries, webhooks).
    ("axum", &["inarray-api"]),
    ("hyper", &["inarray-api", "inarray-images"]),
    ("hyper-util", &["inarray-api", "inarray-images"]),
    ("http-body-util", &["inarray-api", "inarray-images"]),
    ("rustls", &["inarray-api", "inarray-images"]),
    ("tokio-rustls", &["inarray-api", "inarray-images"]),
    ("rustls-native-certs", &["inarray-api", "inarray-images"]),
    // Containers: only the shim calls libcontainer.
    ("libcontainer", &["inarray-shim"]),
];

/// Crate name → the workspace packages that depend on it directly (normal or build).
fn direct_dependents() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--no-deps",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut by_crate: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let packages = meta["packages"].as_array().expect("packages");
    assert!(
        packages.len() >= 8,
        "the workspace's packages: {:?}",
        packages.iter().map(|p| &p["name"]).collect::<Vec<_>>()
    );
    for p in packages {
        let name = p["name"].as_str().expect("package name");
        for d in p["dependencies"].as_array().expect("dependencies") {
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            by_crate
                .entry(d["name"].as_str().expect("dependency name").to_owned())
                .or_default()
                .insert(name.to_owned());
        }
    }
    by_crate
}

#[test]
fn only_the_owning_crates_depend_on_sql_http_tls_and_libcontainer() {
    let dependents = direct_dependents();
    assert!(
        dependents.contains_key("tokio") && dependents.contains_key("sqlx"),
        "the metadata lists the dependencies: {:?}",
        dependents.keys().collect::<Vec<_>>()
    );
    let mut wrong = Vec::new();
    for (krate, allowed) in ALLOWED {
        for user in dependents.get(*krate).into_iter().flatten() {
            if !allowed.contains(&user.as_str()) {
                wrong.push(format!("{user} depends on {krate} (allowed: {allowed:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every `.rs` file below `dir` (not `target/`, nor the separate `bench/` and `fuzz/`
/// workspaces).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | "bench" | "fuzz" | ".git") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// What marks SQL in Rust source: sqlx, and statements in string literals.
const SQL_MARKS: &[&str] = &[
    "sqlx",
    "\"SELECT ",
    "\"INSERT ",
    "\"UPDATE ",
    "\"DELETE FROM",
    "\"CREATE ",
    "\"PRAGMA ",
];

/// The crates' code (every file below a `src/` directory) holds no SQL but the store's. Tests
/// (`tests/` directories) may read the state database to check it, as an operator would.
#[test]
fn no_sql_outside_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.retain(|f| {
        let rel = f.strip_prefix(root).unwrap_or(f);
        !rel.starts_with("store") && rel.components().any(|c| c.as_os_str() == "src")
    });
    assert!(files.len() > 50, "found only {} .rs files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if let Some(m) = SQL_MARKS.iter().find(|m| line.contains(*m)) {
                found.push(format!(
                    "{}:{}: {m:?} in {}",
                    f.strip_prefix(root).unwrap_or(f).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside store/:\n{}",
        found.join("\n")
    );
}

// ------------------------------------------------------------- the shim stays small
// `inarray-shim` (one process per running container) links no async runtime, no HTTP and no SQL,
// checked on the resolved graph, transitive dependencies included.

/// The names of the packages `cargo tree ARGS` lists (normal dependencies).
fn cargo_tree(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_shim_links_no_async_runtime_http_or_sql() {
    let deps = cargo_tree(&["-p", "inarray-shim"]);
    assert!(deps.iter().any(|d| d == "libcontainer"), "{deps:?}");
    for banned in [
        "tokio",
        "axum",
        "hyper",
        "sqlx",
        "inarray-runtime",
        "inarray-store",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "inarray-shim depends on {banned}"
        );
    }
}
