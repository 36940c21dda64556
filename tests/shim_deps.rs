//! The shim stays small: `inarray-shim` links no async runtime, no HTTP and no SQL, and nothing
//! but the shim crate calls libcontainer (ARCHITECTURE.md's invariants, checked on the resolved
//! dependency graph).

use std::process::Command;

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

#[test]
fn only_the_shim_calls_libcontainer() {
    let users = cargo_tree(&["-i", "libcontainer", "--depth", "1"]);
    assert_eq!(users, ["inarray-shim", "libcontainer"]);
}
