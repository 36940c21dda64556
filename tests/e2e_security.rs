//! End-to-end: the hostile inputs of shared/SECURITY.md that concern paths, images and the API.
//! Each ends with a clear error, nothing created outside the array, and the daemon still serving.

mod common;

use std::os::unix::fs::symlink;
use std::time::Duration;

use common::daemon::{Method, TestDaemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_sources_outside_the_array_are_refused() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    for (source, why) in [
        ("../../etc", "\"..\""),
        ("/etc", "absolute"),
        ("a/../../..", "\"..\""),
        ("a\u{0}b", "NUL"),
        ("", "empty"),
        ("does/not/exist", "does not exist"),
    ] {
        let msg = d
            .fails(Method::POST, "/v1/containers", Some(json!({"image": "busybox", "command": ["true"], "volumes": [{"source": source, "target": "/x"}]})), 400)
            .await;
        assert!(
            msg.contains("volumes[0].source") && msg.contains(why),
            "{source:?}: {msg}"
        );
    }
    for target in ["relative", "/", "/proc/x", "/a/../b"] {
        let msg = d
            .fails(Method::POST, "/v1/containers", Some(json!({"image": "busybox", "command": ["true"], "volumes": [{"source": ".", "target": target}]})), 400)
            .await;
        assert!(msg.contains("volumes[0].target"), "{target:?}: {msg}");
    }
    // create: true makes a missing source, inside the array.
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "command": ["touch", "/n/made"], "volumes": [{"source": "new/dir", "target": "/n", "create": true}]}))
        .await;
    assert_eq!(code, 0);
    assert!(d.array.join("new/dir/made").exists());
    let listed = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "refused requests created nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_the_array_resolve_inside_it_only() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let outside = d.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("SECRET"), "host-secret").unwrap();
    std::fs::create_dir_all(d.array.join("links")).unwrap();
    // An absolute link to a host directory: resolved beneath the array, where it does not exist.
    symlink(&outside, d.array.join("links/abs")).unwrap();
    let msg = d
        .fails(Method::POST, "/v1/containers", Some(json!({"image": "busybox", "command": ["true"], "volumes": [{"source": "links/abs", "target": "/x"}]})), 400)
        .await;
    assert!(msg.contains("does not exist"), "{msg}");
    // A relative link climbing out: `..` stops at the array root.
    symlink("../../../../../../../..", d.array.join("links/up")).unwrap();
    std::fs::write(d.array.join("top-of-array"), "in-array").unwrap();
    let (code, logs) = d
        .run_to_exit(json!({"image": "busybox", "command": ["ls", "/x"], "volumes": [{"source": "links/up", "target": "/x", "read_only": true}]}))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("top-of-array") && !logs.contains("SECRET"),
        "{logs}"
    );
    // An absolute link whose in-array target exists: that target is what gets mounted.
    let fake = d.array.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("DECOY"), "in-array").unwrap();
    let (_, logs) = d.run_to_exit(json!({"image": "busybox", "command": ["ls", "/x"], "volumes": [{"source": "links/abs", "target": "/x"}]})).await;
    assert!(logs.contains("DECOY") && !logs.contains("SECRET"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_path_component_for_a_symlink_never_escapes() {
    // CVE-2021-30465 class: a racer flips `race` between a directory and a symlink out of the array
    // while containers that mount it are created.
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let outside = d.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("SECRET"), "host-secret").unwrap();
    let race = d.array.join("race");
    let real = d.array.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("OK"), "").unwrap();
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flips = std::sync::Arc::new(AtomicU64::new(0));
    let racer = {
        let (race, real, outside, stop, flips) = (
            race.clone(),
            real.clone(),
            outside.clone(),
            stop.clone(),
            flips.clone(),
        );
        std::thread::spawn(move || {
            let tmp_link = race.with_extension("tmp");
            while !stop.load(Ordering::Relaxed) {
                let n = flips.load(Ordering::Relaxed);
                let target = if n % 2 == 0 { &outside } else { &real };
                let _ = std::fs::remove_file(&tmp_link);
                let _ = symlink(target, &tmp_link);
                let _ = std::fs::rename(&tmp_link, &race);
                flips.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The racer is running before the first request (on a loaded machine a thread can start late).
    while flips.load(Ordering::Relaxed) < 2 {
        std::thread::yield_now();
    }
    let before = flips.load(Ordering::Relaxed);
    let mut ran = 0;
    for _ in 0..20 {
        let body = json!({"image": "busybox", "command": ["ls", "/x"], "volumes": [{"source": "race", "target": "/x"}]});
        match d.call(Method::POST, "/v1/containers", Some(body)).await {
            Ok(c) => {
                let id = c["id"].as_str().unwrap().to_owned();
                d.ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
                    .await;
                let logs = d.logs(&id).await;
                assert!(!logs.contains("SECRET"), "escaped the array: {logs}");
                ran += 1;
            }
            Err(e) => assert!(e.to_string().contains("volumes[0]"), "{e}"),
        }
    }
    let during = flips.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(
        during > 0,
        "the racer flipped the path while the containers were created"
    );
    eprintln!("{ran} container(s) ran, {during} flips during the requests");
    d.ok(Method::GET, "/v1/health", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_inside_the_array_is_refused_at_start() {
    common::daemon::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let array = tmp.path().join("array");
    std::fs::create_dir_all(&array).unwrap();
    let out = std::process::Command::new(TestDaemon::bin())
        .args(["serve", "--array"])
        .arg(&array)
        .arg("--state-dir")
        .arg(array.join("state"))
        .arg("--listen")
        .arg(format!("unix:{}/api.sock", tmp.path().display()))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inside the array") && err.lines().count() == 1,
        "{err}"
    );
    for (args, what) in [
        (
            vec!["--array", "/nonexistent/array"],
            "array directory /nonexistent/array",
        ),
        (vec!["--array", "/etc/passwd"], "not a directory"),
    ] {
        let out = std::process::Command::new(TestDaemon::bin())
            .arg("serve")
            .args(&args)
            .arg("--state-dir")
            .arg(tmp.path().join("s"))
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what) && err.lines().count() == 1, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_runs_from_a_sealed_copy() {
    // CVE-2019-5736: what the container's init was forked from cannot be written.
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "100"]}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.state.join("containers").join(&id).join("shim-pid.json")).unwrap(),
    )
    .unwrap();
    let shim = rec["shim_pid"].as_i64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:inarray-sealed"),
        "{exe:?}"
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{shim}/exe"));
    match w {
        Err(_) => {}
        Ok(mut f) => assert!(
            std::io::Write::write_all(&mut f, b"x").is_err(),
            "sealed memfd took a write"
        ),
    }
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d.client();
    // Raw bodies through the client's JSON path: send a string value where an object belongs.
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!("not an object")),
        422,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "privileged": true})),
        422,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": 7})),
        422,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "restart": "sometimes"})),
        422,
    )
    .await;
    let env: Vec<String> = (0..10_000).map(|i| format!("K{i}=v")).collect();
    let msg = d
        .fails(
            Method::POST,
            "/v1/containers",
            Some(json!({"image": "busybox", "env": env})),
            400,
        )
        .await;
    assert!(msg.contains("env"), "{msg}");
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "nope:1", "pull": "never", "command": ["true"]})),
        404,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "workdir": "/proc/self/fd/3"})),
        400,
    )
    .await;
    d.fails(Method::GET, "/v1/containers/doesnotexist", None, 404)
        .await;
    d.fails(Method::POST, "/v1/containers/doesnotexist/stop", None, 404)
        .await;
    d.fails(Method::GET, "/v1/containers?all=maybe", None, 400)
        .await;
    d.fails(Method::GET, "/v1/nowhere", None, 404).await;
    // A 100 MB JSON body is refused without being buffered.
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file().set_len(100 * 1024 * 1024).unwrap();
    match c.upload("/v1/containers", big.path()).await {
        Err(inarray_api::client::ClientError::Api { status, .. }) => {
            assert!(status.as_u16() == 413 || status.as_u16() == 415, "{status}")
        }
        Err(inarray_api::client::ClientError::Http(_)) => {} // connection closed early: also a refusal
        other => panic!("100 MB body: {other:?}"),
    }
    // Names are data: a duplicate is a conflict; a bad one is a 400.
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "name": "dup", "command": ["true"]}))
        .await;
    assert_eq!(code, 0);
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "name": "dup", "command": ["true"]})),
        409,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "name": "$(reboot)", "command": ["true"]})),
        400,
    )
    .await;
    // A command is never run through a shell.
    let (code, logs) = d
        .run_to_exit(json!({"image": "busybox", "command": ["echo", "$(id)", "`id`", "; id"]}))
        .await;
    assert_eq!(code, 0);
    assert_eq!(logs, "$(id) `id` ; id\n");
    tokio::time::sleep(Duration::from_millis(10)).await;
    d.ok(Method::GET, "/v1/health", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_and_leave_the_store_unchanged() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let listing = |d: &TestDaemon| {
        let mut v: Vec<String> = walk(&d.state.join("images"))
            .into_iter()
            .filter(|p| !p.contains("/tmp/"))
            .collect();
        v.sort();
        v
    };
    let before = listing(&d);
    // Flip one byte in the middle of the archive (inside a blob): digest mismatch.
    let good = d.tmp.path().join("busybox-oci.tar");
    let mut bytes = std::fs::read(&good).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = d.tmp.path().join("bad.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let r = d
        .client()
        .upload("/v1/images/import?name=bad:1", &bad)
        .await;
    assert!(
        matches!(&r, Err(inarray_api::client::ClientError::Api { status, .. }) if status.as_u16() == 400),
        "{r:?}"
    );
    // Truncated archive.
    std::fs::write(&bad, &std::fs::read(&good).unwrap()[..mid]).unwrap();
    let r = d
        .client()
        .upload("/v1/images/import?name=bad:2", &bad)
        .await;
    assert!(
        matches!(&r, Err(inarray_api::client::ClientError::Api { status, .. }) if status.as_u16() == 400),
        "{r:?}"
    );
    // Not an archive at all.
    std::fs::write(&bad, b"hello").unwrap();
    let r = d
        .client()
        .upload("/v1/images/import?name=bad:3", &bad)
        .await;
    assert!(
        matches!(&r, Err(inarray_api::client::ClientError::Api { status, .. }) if status.as_u16() == 400),
        "{r:?}"
    );
    assert_eq!(listing(&d), before, "store unchanged");
    let imgs = d.ok(Method::GET, "/v1/images", None).await;
    assert_eq!(imgs.as_array().unwrap().len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
        }
    }
    out
}
