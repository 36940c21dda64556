//! Crash consistency: the daemon is killed with SIGKILL at random points of create, start, stop
//! and delete, 50 times; after each restart the state must be consistent — the database passes
//! `PRAGMA integrity_check`, every running container has its process and cgroup, no cgroup,
//! container directory or mount is left without a container, and every container can still be
//! stopped and removed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::daemon::{mounts_mentioning, TestDaemon};
use inarray_api::client::Method;
use serde_json::{json, Value};

const ROUNDS: usize = 50;

/// A small deterministic generator (xorshift): the seed is printed, so a failure can be replayed
/// with INARRAY_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn containers(d: &TestDaemon) -> Vec<Value> {
    d.ok(Method::GET, "/v1/containers?all=true", None)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The container ids that have a cgroup under this daemon's root, in any engine and hierarchy.
fn cgroup_ids(root: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for base in inarray_runtime::cgroups::locations(
        std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
        root,
    ) {
        for engine in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            if !engine.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for c in std::fs::read_dir(engine.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if c.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    ids.insert(c.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    ids
}

fn dir_names(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn alive(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Checks every invariant once; returns what is wrong (empty when consistent).
async fn inconsistencies(d: &TestDaemon) -> Vec<String> {
    let mut wrong = Vec::new();
    let list = containers(d).await;
    let ids: BTreeSet<String> = list
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let running: BTreeSet<String> = list
        .iter()
        .filter(|c| c["state"] == "running")
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    for c in &list {
        let state = c["state"].as_str().unwrap_or("?");
        if !["created", "running", "exited", "dead", "restarting"].contains(&state) {
            wrong.push(format!("container {} in state {state}", c["id"]));
        }
        if state == "running" && !alive(c["pid"].as_i64().unwrap_or(0)) {
            wrong.push(format!(
                "container {} running without its process: {c}",
                c["id"]
            ));
        }
    }
    let cgroups = cgroup_ids(&d.cgroup_root);
    for id in cgroups.difference(&running) {
        wrong.push(format!("cgroup of container {id}, which is not running"));
    }
    for id in running.difference(&cgroups) {
        wrong.push(format!("running container {id} has no cgroup"));
    }
    let dirs = dir_names(&d.state.join("containers"));
    for id in dirs.difference(&ids) {
        wrong.push(format!("state directory of unknown container {id}"));
    }
    wrong
}

/// Waits until the daemon's view settles (exits recorded by reconcile happen in the background).
async fn settled(d: &TestDaemon, round: usize, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let wrong = inconsistencies(d).await;
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round} (INARRAY_CRASH_SEED={seed}): inconsistent after restart:\n{}\n--- daemon log:\n{}",
            wrong.join("\n"),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One operation against the daemon, as a client would do it; its result is irrelevant (the
/// daemon is killed under it).
async fn operate(d: &TestDaemon, op: u64, target: Option<String>) {
    let c = d.client();
    let _ = match (op, target) {
        (0, _) | (_, None) => {
            c.json(
                Method::POST,
                "/v1/containers",
                Some(&json!({"image": "busybox", "command": ["sleep", "300"]})),
            )
            .await
        }
        (1, _) => {
            c.json(
                Method::POST,
                "/v1/containers",
                Some(&json!({"image": "busybox", "command": ["true"]})),
            )
            .await
        }
        (2, Some(id)) => {
            c.json(
                Method::DELETE,
                &format!("/v1/containers/{id}?force=true"),
                None,
            )
            .await
        }
        (3, Some(id)) => {
            c.json(Method::POST, &format!("/v1/containers/{id}/stop"), None)
                .await
        }
        (_, Some(id)) => {
            c.json(Method::POST, &format!("/v1/containers/{id}/start"), None)
                .await
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_leaves_a_consistent_state() {
    let seed = std::env::var("INARRAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("INARRAY_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    for round in 0..ROUNDS {
        let list = containers(&d).await;
        // Keep the number of containers bounded: mostly deletes once there are 8.
        let op = if list.len() >= 8 {
            2 + rng.below(3)
        } else {
            rng.below(5)
        };
        let target = (!list.is_empty()).then(|| {
            list[rng.below(list.len() as u64) as usize]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        });
        let delay = Duration::from_micros(rng.below(60_000));
        tokio::select! {
            _ = operate(&d, op, target) => {}
            _ = tokio::time::sleep(delay) => {}
        }
        d.kill9();
        d.launch().await;
        settled(&d, round, seed).await;
        eprintln!(
            "round {round}: op {op} killed after {delay:?}; now {} container(s)",
            containers(&d).await.len()
        );
    }
    // The database survived 50 kills.
    let store = inarray_store::Store::open(&d.state.join("state.db"))
        .await
        .unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
    // Everything left can still be stopped and removed, and then nothing remains.
    for c in containers(&d).await {
        let id = c["id"].as_str().unwrap();
        d.ok(
            Method::DELETE,
            &format!("/v1/containers/{id}?force=true"),
            None,
        )
        .await;
    }
    settled(&d, ROUNDS, seed).await;
    assert!(containers(&d).await.is_empty());
    assert!(cgroup_ids(&d.cgroup_root).is_empty());
    let tmp = d.tmp.path().to_string_lossy().into_owned();
    assert!(
        mounts_mentioning(&tmp).is_empty(),
        "host mounts: {:?}",
        mounts_mentioning(&tmp)
    );
}
