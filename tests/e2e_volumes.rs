//! End-to-end: array volumes on a loop-mounted btrfs the test makes (quotas enabled) and on a
//! plain directory — the API and CLI, hostile names and sizes, containers mounting volumes
//! (subpaths confined), EDQUOT at the quota and live resizing, snapshots restored to the exact
//! tree, independent clones, and kill -9 in the middle of creates, snapshots, restores and
//! deletes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use common::loopfs::LoopFs;
use serde_json::json;
use sha2::{Digest, Sha256};

async fn daemon_on(fs: &LoopFs) -> TestDaemon {
    TestDaemon::start_on_array(Some(fs.path().to_owned()), Vec::new()).await
}

fn vol_dir(array: &Path, name: &str) -> PathBuf {
    array.join(".inarray-volumes/volumes").join(name)
}

/// Every entry below `dir` → its kind and the SHA-256 of its content (files), its target
/// (symlinks), or nothing (directories).
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            let v = if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p);
                "dir".into()
            } else {
                format!(
                    "file {}",
                    hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

fn btrfs_subvolumes(mnt: &Path) -> Vec<String> {
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", "list", "-o"])
        .arg(mnt)
        .output()
        .unwrap();
    let mut all: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(" path ").map(|(_, p)| p.to_owned()))
        .collect();
    // `-o` lists only direct children: list everything instead.
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(mnt)
        .output()
        .unwrap();
    all.extend(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.rsplit_once(" path ").map(|(_, p)| p.to_owned())),
    );
    all.sort();
    all.dedup();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_api_cli_and_hostile_input_on_btrfs() {
    let fs = LoopFs::btrfs(512);
    let d = daemon_on(&fs).await;
    let v = d
        .ok(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "db", "size": 64 << 20, "labels": {"app": "pg"}})),
        )
        .await;
    assert_eq!(v["backend"], "btrfs", "{v}");
    assert_eq!(v["size"], 64 << 20);
    assert_eq!(v["labels"]["app"], "pg");
    assert_eq!(v["capabilities"]["quota"], true);
    assert_eq!(v["used_by"]["containers"], json!([]));
    assert!(vol_dir(&d.array, "db").is_dir());
    assert!(
        btrfs_subvolumes(fs.path())
            .iter()
            .any(|p| p.ends_with(".inarray-volumes/volumes/db")),
        "{:?}",
        btrfs_subvolumes(fs.path())
    );

    // Hostile names and sizes: 400 naming the field, nothing made.
    for (body, field) in [
        (json!({"name": "a/b"}), "name"),
        (json!({"name": ".."}), "name"),
        (json!({"name": "../etc"}), "name"),
        (json!({"name": ".hidden"}), "name"),
        (json!({"name": "x".repeat(300)}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "z", "size": 0}), "size"),
        (json!({"name": "z", "size": 4096}), "size"),
        (json!({"name": "z", "size": 1u64 << 62}), "size"),
        (json!({"name": "z", "labels": {"": "x"}}), "labels"),
    ] {
        let m = d
            .fails(Method::POST, "/v1/volumes", Some(body.clone()), 400)
            .await;
        assert!(m.contains(field), "{body}: {m}");
    }
    // -1 and 2^64 are not u64s: refused by the body's parser, naming the field.
    for raw in [
        r#"{"name":"z","size":-1}"#,
        r#"{"name":"z","size":18446744073709551616}"#,
        r#"{"name":"z","bogus":1}"#,
    ] {
        let body: serde_json::Value = serde_json::from_str(raw).unwrap_or(json!(null));
        let status = match d.call(Method::POST, "/v1/volumes", Some(body)).await {
            Err(inarray_api::client::ClientError::Api { status, .. }) => status.as_u16(),
            other => panic!("{raw}: {other:?}"),
        };
        assert!(status == 400 || status == 422, "{raw}: {status}");
    }
    let listed = d.ok(Method::GET, "/v1/volumes", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let entries: Vec<_> = std::fs::read_dir(d.array.join(".inarray-volumes/volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, vec!["db".to_owned()]);
    d.fails(
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "db"})),
        409,
    )
    .await;
    d.fails(Method::GET, "/v1/volumes/nope", None, 404).await;

    // Resize live, then remove the limit.
    let v = d
        .ok(
            Method::PATCH,
            "/v1/volumes/db",
            Some(json!({"size": 128 << 20})),
        )
        .await;
    assert_eq!(v["size"], 128 << 20);
    let v = d
        .ok(Method::PATCH, "/v1/volumes/db", Some(json!({"size": null})))
        .await;
    assert_eq!(v["size"], json!(null));
    d.fails(
        Method::PATCH,
        "/v1/volumes/db",
        Some(json!({"size": 0})),
        400,
    )
    .await;

    // The CLI.
    let (ok, out, err) = d.cli(&["volume", "create", "web", "--size", "32m", "--label", "t=1"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = d.cli(&["volume", "ls"]);
    assert!(
        ok && out.contains("web") && out.contains("db"),
        "{out}{err}"
    );
    let (ok, out, _) = d.cli(&["volume", "inspect", "web"]);
    assert!(ok && out.contains("\"size\": 33554432"), "{out}");
    let (ok, _, err) = d.cli(&["volume", "create", "bad/name"]);
    assert!(!ok && err.contains("name"), "{err}");
    let (ok, out, err) = d.cli(&["volume", "resize", "web", "64m"]);
    assert!(ok && out.contains("67108864"), "{out}{err}");
    let (ok, _, err) = d.cli(&["volume", "rm", "web"]);
    assert!(ok, "{err}");
    d.fails(Method::GET, "/v1/volumes/web", None, 404).await;
    assert!(!vol_dir(&d.array, "web").exists());

    d.ok(Method::DELETE, "/v1/volumes/db", None).await;
    assert!(!vol_dir(&d.array, "db").exists());
    assert!(
        !btrfs_subvolumes(fs.path())
            .iter()
            .any(|p| p.contains(".inarray-volumes/volumes/")),
        "{:?}",
        btrfs_subvolumes(fs.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_directories_say_they_have_no_quota_and_no_snapshots() {
    let d = TestDaemon::start().await;
    let m = d
        .fails(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "q", "size": 64 << 20})),
            400,
        )
        .await;
    assert!(m.contains("size") && m.contains("no quota"), "{m}");
    let v = d
        .ok(Method::POST, "/v1/volumes", Some(json!({"name": "q"})))
        .await;
    assert_eq!(v["backend"], "plain");
    assert_eq!(v["capabilities"]["quota"], false);
    assert_eq!(v["capabilities"]["snapshots"], false);
    std::fs::write(vol_dir(&d.array, "q").join("f"), vec![7u8; 10_000]).unwrap();
    let v = d.ok(Method::GET, "/v1/volumes/q", None).await;
    assert_eq!(v["usage"]["files"], 1, "{v}");
    assert!(v["usage"]["bytes"].as_u64().unwrap() >= 10_000, "{v}");
    let m = d
        .fails(
            Method::POST,
            "/v1/volumes/q/snapshots",
            Some(json!({"name": "s"})),
            409,
        )
        .await;
    assert!(m.contains("no snapshots"), "{m}");
    d.ok(Method::DELETE, "/v1/volumes/q", None).await;
    assert!(!vol_dir(&d.array, "q").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_mount_volumes_quota_is_enforced_and_raised_live() {
    let fs = LoopFs::btrfs(512);
    let d = daemon_on(&fs).await;
    d.with_busybox().await;
    d.ok(
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "q", "size": 16 << 20})),
    )
    .await;
    // Past the quota: dd stops with EDQUOT.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "name": "writer",
            "command": ["sh", "-c", "dd if=/dev/zero of=/data/big bs=1M count=64 conv=fsync; echo rc=$?; sync"],
            "volumes": [{"volume": "q", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("Disk quota exceeded"), "{logs}");
    assert!(!logs.contains("rc=0"), "{logs}");
    let written = std::fs::metadata(vol_dir(&d.array, "q").join("big"))
        .unwrap()
        .len();
    assert!(
        written <= 17 << 20,
        "wrote {written} bytes past a 16 MiB quota"
    );

    // In use: delete refused naming the container; used_by shows it.
    let m = d.fails(Method::DELETE, "/v1/volumes/q", None, 409).await;
    assert!(m.contains("writer"), "{m}");
    let v = d.ok(Method::GET, "/v1/volumes/q", None).await;
    assert_eq!(v["used_by"]["containers"], json!(["writer"]), "{v}");

    // Raised live: the same writes go on.
    d.ok(
        Method::PATCH,
        "/v1/volumes/q",
        Some(json!({"size": 256 << 20})),
    )
    .await;
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "rm -f /data/big; dd if=/dev/zero of=/data/big bs=1M count=64 conv=fsync && echo rc=$? && mkdir -p /data/sub/dir && echo in-sub > /data/sub/dir/f"],
            "volumes": [{"volume": "q", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("rc=0"), "{logs}");
    assert_eq!(
        std::fs::metadata(vol_dir(&d.array, "q").join("big"))
            .unwrap()
            .len(),
        64 << 20
    );
    // Usage from the qgroup (after a commit).
    nix::unistd::sync();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = d.ok(Method::GET, "/v1/volumes/q", None).await;
        if v["usage"]["bytes"].as_u64().unwrap_or(0) >= 64 << 20 {
            assert!(v["usage"]["files"].as_u64().unwrap() >= 4, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "usage never counted: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A subpath, read-only.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "cat /s/f; echo x > /s/g; echo rc=$?"],
            "volumes": [{"volume": "q", "target": "/s", "subpath": "sub/dir", "read_only": true}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("in-sub") && !logs.contains("rc=0"), "{logs}");

    // Hostile mounts: 400 naming the field, no container made.
    std::os::unix::fs::symlink("../../..", vol_dir(&d.array, "q").join("up")).unwrap();
    std::os::unix::fs::symlink("/etc", vol_dir(&d.array, "q").join("abs")).unwrap();
    for (vol, field) in [
        (
            json!({"volume": "q", "target": "/d", "subpath": "../../.."}),
            "subpath",
        ),
        (
            json!({"volume": "q", "target": "/d", "subpath": "sub/../.."}),
            "subpath",
        ),
        (
            json!({"volume": "q", "target": "/d", "subpath": "/etc"}),
            "subpath",
        ),
        (
            json!({"volume": "q", "target": "/d", "subpath": "up"}),
            "subpath",
        ),
        (
            json!({"volume": "q", "target": "/d", "subpath": "abs"}),
            "subpath",
        ),
        (
            json!({"volume": "q", "target": "/d", "subpath": "up/x", "create": true}),
            "subpath",
        ),
        (json!({"volume": "nope", "target": "/d"}), "volume"),
        (json!({"volume": "../x", "target": "/d"}), "volume"),
        (
            json!({"volume": "q", "source": "x", "target": "/d"}),
            "volumes[0]",
        ),
    ] {
        let m = d
            .fails(
                Method::POST,
                "/v1/containers",
                Some(json!({"image": "busybox", "command": ["true"], "volumes": [vol.clone()]})),
                400,
            )
            .await;
        assert!(m.contains(field), "{vol}: {m}");
    }
    assert!(!fs.path().join("x").exists());
    let listed = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_the_exact_tree_and_clones_are_independent() {
    let fs = LoopFs::btrfs(512);
    let d = daemon_on(&fs).await;
    d.with_busybox().await;
    d.ok(
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "app", "size": 128 << 20})),
    )
    .await;
    let root = vol_dir(&d.array, "app");
    for i in 0..200 {
        let dir = root.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("{i}-").repeat(i * 13)).unwrap();
    }
    std::os::unix::fs::symlink("d1/f1", root.join("link")).unwrap();
    let before = tree(&root);
    assert!(before.len() > 200);
    d.ok(
        Method::POST,
        "/v1/volumes/app/snapshots",
        Some(json!({"name": "s1"})),
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/volumes/app/snapshots",
        Some(json!({"name": "s1"})),
        409,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/volumes/app/snapshots",
        Some(json!({"name": "../s"})),
        400,
    )
    .await;
    let snaps = d.ok(Method::GET, "/v1/volumes/app/snapshots", None).await;
    assert_eq!(snaps[0]["name"], "s1", "{snaps}");

    // Change files: remove, append, add, replace a link.
    std::fs::remove_dir_all(root.join("d3")).unwrap();
    std::fs::write(root.join("d1/f1"), "changed").unwrap();
    std::fs::write(root.join("new"), "new").unwrap();
    std::fs::remove_file(root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
    assert_ne!(tree(&root), before);

    // Restore refused while a running container mounts the volume.
    let c = d
        .run(json!({
            "image": "busybox", "name": "user",
            "command": ["sh", "-c", "while true; do echo x >> /v/log; sleep 0.05; done"],
            "volumes": [{"volume": "app", "target": "/v"}],
        }))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    // A snapshot under writes is fine (atomic).
    d.ok(
        Method::POST,
        "/v1/volumes/app/snapshots",
        Some(json!({"name": "busy"})),
    )
    .await;
    let m = d
        .fails(
            Method::POST,
            "/v1/volumes/app/snapshots/s1/restore",
            None,
            409,
        )
        .await;
    assert!(m.contains("user"), "{m}");
    d.ok(Method::POST, &format!("/v1/containers/{id}/kill"), None)
        .await;
    d.wait_for(&id, 60, |c| c["state"] != "running").await;
    d.ok(Method::DELETE, &format!("/v1/containers/{id}"), None)
        .await;

    let (ok, out, err) = d.cli(&["volume", "restore", "app", "s1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(tree(&root), before, "the restored tree differs");
    // The quota stays on the restored volume.
    let v = d.ok(Method::GET, "/v1/volumes/app", None).await;
    assert_eq!(v["size"], 128 << 20);
    assert!(!d
        .array
        .join(".inarray-volumes/volumes/.restore-app")
        .exists());

    // Clones: from the snapshot and from the live volume; independent both ways.
    let (ok, out, err) = d.cli(&["volume", "clone", "app", "copy", "--snapshot", "s1"]);
    assert!(ok, "{out}{err}");
    d.ok(
        Method::POST,
        "/v1/volumes/app/clone",
        Some(json!({"name": "live", "size": 32 << 20})),
    )
    .await;
    let copy = vol_dir(&d.array, "copy");
    assert_eq!(tree(&copy), before);
    std::fs::write(copy.join("only-in-copy"), "c").unwrap();
    std::fs::write(root.join("d0/f0"), "only-in-app").unwrap();
    assert!(!root.join("only-in-copy").exists());
    assert_eq!(tree(&vol_dir(&d.array, "live")), before);
    assert_ne!(
        std::fs::read(copy.join("d0/f0")).unwrap(),
        b"only-in-app".to_vec()
    );
    let v = d.ok(Method::GET, "/v1/volumes/live", None).await;
    assert_eq!(v["size"], 32 << 20);
    // The source can go; the clone stays whole.
    d.ok(Method::DELETE, "/v1/volumes/app/snapshots/busy", None)
        .await;
    d.ok(Method::DELETE, "/v1/volumes/app", None).await;
    assert!(tree(&copy).contains_key("only-in-copy"));
    assert_eq!(tree(&copy).len(), before.len() + 1);
    d.ok(Method::DELETE, "/v1/volumes/copy", None).await;
    d.ok(Method::DELETE, "/v1/volumes/live", None).await;
    let left = btrfs_subvolumes(fs.path());
    assert!(left.is_empty(), "subvolumes left behind: {left:?}");

    // Each change is a lifecycle event in the log, in the order it happened.
    let log = d
        .ok(Method::GET, "/v1/events?after=0&types=volume", None)
        .await;
    let seen: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let at = |t: &str, n: &str| {
        seen.iter()
            .position(|(a, b)| a == t && b == n)
            .unwrap_or_else(|| panic!("no {t} of {n} in {seen:?}"))
    };
    assert!(at("volume.create", "app") < at("volume.snapshot", "app"));
    assert!(at("volume.snapshot", "app") < at("volume.restore", "app"));
    assert!(at("volume.restore", "app") < at("volume.delete", "app"));
    assert!(at("volume.create", "copy") < at("volume.delete", "copy"));
    at("volume.snapshot_delete", "app");
    let clone = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "volume.create" && e["name"] == "copy")
        .unwrap();
    assert_eq!(clone["attributes"]["cloned_from"], "app", "{clone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_change_leaves_each_volume_whole_or_gone() {
    let fs = LoopFs::btrfs(1024);
    let mut d = daemon_on(&fs).await;
    d.ok(
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "base", "size": 64 << 20})),
    )
    .await;
    std::fs::write(vol_dir(&d.array, "base").join("f"), "base").unwrap();
    d.ok(
        Method::POST,
        "/v1/volumes/base/snapshots",
        Some(json!({"name": "s0"})),
    )
    .await;
    for round in 0..8u64 {
        // Many changes in flight, then kill -9 at a moment that moves every round.
        let mut tasks = Vec::new();
        for i in 0..6 {
            let c = d.client();
            tasks.push(tokio::spawn(async move {
                let n = format!("r{round}v{i}");
                let _ = c
                    .json(
                        Method::POST,
                        "/v1/volumes",
                        Some(&json!({"name": n, "size": 32 << 20})),
                    )
                    .await;
                let _ = c
                    .json(
                        Method::POST,
                        &format!("/v1/volumes/{n}/snapshots"),
                        Some(&json!({"name": "s"})),
                    )
                    .await;
                let _ = c
                    .json(Method::POST, "/v1/volumes/base/snapshots/s0/restore", None)
                    .await;
                if i % 2 == 0 {
                    let _ = c
                        .json(Method::DELETE, &format!("/v1/volumes/{n}"), None)
                        .await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(5 + round * 17)).await;
        d.kill9();
        for t in tasks {
            let _ = t.await;
        }
        d.launch().await;
        // Registry and filesystem agree: every listed volume is a subvolume with its
        // snapshots, every subvolume under volumes/ is listed, no work in progress is left.
        let listed = d.ok(Method::GET, "/v1/volumes", None).await;
        let names: std::collections::BTreeSet<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        let subvols = btrfs_subvolumes(fs.path());
        let on_disk: std::collections::BTreeSet<String> = subvols
            .iter()
            .filter_map(|p| p.strip_prefix(".inarray-volumes/volumes/"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            names, on_disk,
            "round {round}: registry vs subvolumes {subvols:?}"
        );
        for n in &names {
            let snaps = d
                .ok(Method::GET, &format!("/v1/volumes/{n}/snapshots"), None)
                .await;
            for s in snaps.as_array().unwrap() {
                let p = format!(
                    ".inarray-volumes/snapshots/{n}/{}",
                    s["name"].as_str().unwrap()
                );
                assert!(
                    subvols.contains(&p),
                    "round {round}: {p} missing: {subvols:?}"
                );
            }
        }
        let snap_dirs: Vec<&String> = subvols
            .iter()
            .filter(|p| p.starts_with(".inarray-volumes/snapshots/"))
            .collect();
        for p in snap_dirs {
            let rest = p.strip_prefix(".inarray-volumes/snapshots/").unwrap();
            let (v, s) = rest.split_once('/').unwrap();
            let snaps = d
                .ok(Method::GET, &format!("/v1/volumes/{v}/snapshots"), None)
                .await;
            assert!(
                snaps.as_array().unwrap().iter().any(|x| x["name"] == s),
                "round {round}: snapshot subvolume {p} has no registry entry"
            );
        }
        assert_eq!(
            std::fs::read_to_string(vol_dir(&d.array, "base").join("f")).unwrap(),
            "base",
            "round {round}"
        );
        eprintln!(
            "round {round}: {} volumes kept, {} interrupted changes finished at restart so far",
            names.len(),
            d.log().matches("a crash interrupted").count()
        );
        for n in names.iter().filter(|n| n.starts_with('r')) {
            d.ok(Method::DELETE, &format!("/v1/volumes/{n}"), None)
                .await;
        }
    }
}

/// A minimal NFSv3 client (AUTH_SYS uid 0) for what libnfs' tools cannot show: the status of
/// a WRITE, and FSSTAT.
struct Rpc {
    s: std::net::TcpStream,
    xid: u32,
}

fn opaque(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v.resize(4 + b.len().div_ceil(4) * 4, 0);
    v
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

impl Rpc {
    fn connect(port: u16) -> Self {
        Self {
            s: std::net::TcpStream::connect(("127.0.0.1", port)).unwrap(),
            xid: 1,
        }
    }

    /// The reply's body after an accepted, successful RPC header.
    fn call(&mut self, prog: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        use std::io::{Read, Write};
        self.xid += 1;
        let mut m = Vec::new();
        for v in [self.xid, 0, 2, prog, 3, proc_] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        // AUTH_SYS: stamp, machine "t", uid 0, gid 0, no groups; verifier AUTH_NONE.
        let body: Vec<u8> = [0u32, 1, u32::from_be_bytes(*b"t\0\0\0"), 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&opaque(&body));
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(args);
        let mut rec = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
        rec.extend_from_slice(&m);
        self.s.write_all(&rec).unwrap();
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 4];
            self.s.read_exact(&mut h).unwrap();
            let h = u32::from_be_bytes(h);
            let mut frag = vec![0u8; (h & 0x7fff_ffff) as usize];
            self.s.read_exact(&mut frag).unwrap();
            out.extend_from_slice(&frag);
            if h & 0x8000_0000 != 0 {
                break;
            }
        }
        // xid, REPLY, MSG_ACCEPTED, verifier (flavor, body), SUCCESS.
        let at = 20 + (be32(&out, 16) as usize).div_ceil(4) * 4;
        assert_eq!(be32(&out, at), 0, "rpc not accepted");
        out[at + 4..].to_vec()
    }

    fn mnt(&mut self, export: &str) -> Vec<u8> {
        let r = self.call(100_005, 1, &opaque(format!("/{export}").as_bytes()));
        assert_eq!(be32(&r, 0), 0, "MNT /{export} refused");
        let n = be32(&r, 4) as usize;
        r[8..8 + n].to_vec()
    }

    /// (total, free, available) bytes.
    fn fsstat(&mut self, fh: &[u8]) -> (u64, u64, u64) {
        let r = self.call(100_003, 18, &opaque(fh));
        assert_eq!(be32(&r, 0), 0, "FSSTAT failed");
        let at = if be32(&r, 4) == 1 { 8 + 84 } else { 8 };
        let u = |i: usize| u64::from_be_bytes(r[at + 8 * i..at + 8 * i + 8].try_into().unwrap());
        (u(0), u(1), u(2))
    }

    /// CREATE (UNCHECKED, no attributes set): the new file's handle.
    fn create(&mut self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut a = opaque(dir);
        a.extend_from_slice(&opaque(name.as_bytes()));
        a.extend_from_slice(&[0; 4]); // UNCHECKED
        a.extend_from_slice(&[0; 24]); // sattr3: nothing set
        let r = self.call(100_003, 8, &a);
        assert_eq!(be32(&r, 0), 0, "CREATE {name} failed");
        assert_eq!(be32(&r, 4), 1, "CREATE returned no handle");
        let n = be32(&r, 8) as usize;
        r[12..12 + n].to_vec()
    }

    /// WRITE with FILE_SYNC: the NFS status.
    fn write(&mut self, fh: &[u8], offset: u64, data: &[u8]) -> u32 {
        let mut a = opaque(fh);
        a.extend_from_slice(&offset.to_be_bytes());
        a.extend_from_slice(&(data.len() as u32).to_be_bytes());
        a.extend_from_slice(&2u32.to_be_bytes());
        a.extend_from_slice(&opaque(data));
        be32(&self.call(100_003, 7, &a), 0)
    }
}

fn fsstat(port: u16, export: &str) -> (u64, u64, u64) {
    let mut c = Rpc::connect(port);
    let fh = c.mnt(export);
    c.fsstat(&fh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_export_of_a_volume_shows_its_size_and_refuses_writes_past_it() {
    let fs = LoopFs::btrfs(512);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = TestDaemon::start_on_array(
        Some(fs.path().to_owned()),
        vec!["--nfs-listen".into(), format!("127.0.0.1:{port}")],
    )
    .await;
    let v = d
        .ok(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "nv", "size": 16 << 20})),
        )
        .await;
    d.ok(
        Method::POST,
        "/v1/exports",
        Some(json!({"name": "nv", "path": v["path"], "squash": "none",
                    "clients": [{"match": "127.0.0.1", "access": "rw"}]})),
    )
    .await;
    // FSSTAT: the volume's size, not the filesystem's.
    let (total, free, avail) = fsstat(port, "nv");
    assert_eq!(total, 16 << 20);
    assert!(free <= 16 << 20 && avail <= 16 << 20, "{free} {avail}");

    // WRITE past the quota: NFS3ERR_DQUOT (69).
    let mut c = Rpc::connect(port);
    let root = c.mnt("nv");
    let fh = c.create(&root, "w");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut status = 0;
    let mut offset = 0u64;
    while offset < 64 << 20 {
        status = c.write(&fh, offset, &chunk);
        if status != 0 {
            break;
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(status, 69, "after {offset} bytes");
    assert!(
        (8 << 20..=17 << 20).contains(&offset),
        "stopped at {offset}"
    );
    nix::unistd::sync();
    let (_, free_after, _) = c.fsstat(&root);
    assert!(free_after < free, "{free_after} !< {free}");

    // nfs-cp past the quota fails too (libnfs' tool prints no status code).
    let src = d.tmp.path().join("big");
    std::fs::write(&src, vec![0x5au8; 32 << 20]).unwrap();
    let nfs_cp = |name: &str| {
        std::process::Command::new("timeout")
            .args(["120", "nfs-cp"])
            .arg(&src)
            .arg(format!(
                "nfs://127.0.0.1/nv//{name}?nfsport={port}&mountport={port}"
            ))
            .output()
            .expect("nfs-cp (libnfs-utils; ./dev installs it)")
    };
    let out = nfs_cp("big");
    assert!(!out.status.success(), "nfs-cp past the quota succeeded");
    // Raised live: the same copy goes through, and FSSTAT follows.
    d.ok(
        Method::PATCH,
        "/v1/volumes/nv",
        Some(json!({"size": 128 << 20})),
    )
    .await;
    let out = nfs_cp("big2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.fsstat(&root).0, 128 << 20);
    assert_eq!(
        std::fs::metadata(vol_dir(&d.array, "nv").join("big2"))
            .unwrap()
            .len(),
        32 << 20
    );

    // In use by the export: delete refused, naming it.
    let m = d.fails(Method::DELETE, "/v1/volumes/nv", None, 409).await;
    assert!(m.contains("NFS exports nv"), "{m}");
    d.ok(Method::DELETE, "/v1/exports/nv", None).await;
    d.ok(Method::DELETE, "/v1/volumes/nv", None).await;
}

/// XFS without project quotas (this kernel has no CONFIG_XFS_QUOTA, so a `prjquota` mount
/// fails): the daemon refuses a size with the reason, still offers plain volumes, and the
/// project-id ioctls (`FS_IOC_FSSETXATTR` + inherit) work on the real filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_without_project_quotas_is_refused_clearly_and_project_ids_are_inherited() {
    let fs = LoopFs::make(320, &["mkfs.xfs", "-q", "-f"]);
    // What the kernel allows: project id + inherit flag set through the wrapper, taken by
    // new files and directories below.
    let dir = fs.path().join("p");
    std::fs::create_dir(&dir).unwrap();
    let fd = std::fs::File::open(&dir).unwrap();
    use std::os::fd::AsFd;
    inarray_sys::quota::fs_set_project(fd.as_fd(), 4242).unwrap();
    let x = inarray_sys::quota::fs_get_xattr(fd.as_fd()).unwrap();
    assert_eq!(x.projid, 4242);
    assert_ne!(x.xflags & inarray_sys::quota::FS_XFLAG_PROJINHERIT, 0);
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), "x").unwrap();
    for p in ["sub", "sub/f"] {
        let f = std::fs::File::open(dir.join(p)).unwrap();
        let x = inarray_sys::quota::fs_get_xattr(f.as_fd()).unwrap();
        assert_eq!(x.projid, 4242, "{p} did not inherit the project id");
    }
    drop(fd);
    std::fs::remove_dir_all(&dir).unwrap();

    let d = daemon_on(&fs).await;
    let m = d
        .fails(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "x", "size": 64 << 20})),
            400,
        )
        .await;
    assert!(
        m.starts_with("size: ") && m.contains("xfs mounted without project quotas"),
        "{m}"
    );
    assert!(d.ok(Method::GET, "/v1/volumes", None).await == json!([]));
    let v = d
        .ok(Method::POST, "/v1/volumes", Some(json!({"name": "x"})))
        .await;
    assert_eq!(v["backend"], "plain");
    d.ok(Method::DELETE, "/v1/volumes/x", None).await;
}
