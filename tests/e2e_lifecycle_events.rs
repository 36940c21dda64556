//! Lifecycle events (issue 20) end to end: what happens to containers, jobs and images is in the
//! same durable log as file events, delivered through subscriptions at least once — across a
//! daemon `kill -9` — and filtered by type (`/v1/events?types=…`, `inarray events tail --type`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use inarray_api::client::{Client, Method};
use serde_json::{json, Value};

/// Events a subscriber took, in delivery order (duplicates included).
type Taken = Arc<Mutex<Vec<Value>>>;

/// A consumer of subscription `sub` that outlives daemon restarts (it retries while the socket is
/// gone) and acknowledges each batch only after the next one came: there is always a delivered,
/// unacknowledged batch when the daemon is killed.
fn subscriber(client: Client, sub: &str, taken: Taken) -> tokio::task::JoinHandle<()> {
    let sub = sub.to_owned();
    tokio::spawn(async move {
        let mut pending: Option<i64> = None;
        loop {
            let path = format!("/v1/subscriptions/{sub}/events?wait=2&max=50");
            let v = match client.json(Method::GET, &path, None).await {
                Ok(v) => v,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let evs = v["events"].as_array().cloned().unwrap_or_default();
            let Some(last) = evs.last().and_then(|e| e["seq"].as_i64()) else {
                continue;
            };
            taken.lock().unwrap().extend(evs);
            if let Some(seq) = pending.replace(last) {
                let ack = format!("/v1/subscriptions/{sub}/ack");
                let _ = client
                    .json(Method::POST, &ack, Some(&json!({ "seq": seq })))
                    .await;
            }
        }
    })
}

/// Each container's event types (by name), in seq order, each seq once.
fn per_container(taken: &Taken) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut all = taken.lock().unwrap().clone();
    all.sort_by_key(|e| e["seq"].as_i64());
    for e in all {
        let seq = e["seq"].as_i64().unwrap();
        if !seen.insert(seq) {
            continue;
        }
        let name = e["name"].as_str().unwrap().to_owned();
        out.entry(name)
            .or_default()
            .push((seq, e["type"].as_str().unwrap().to_owned()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_each_containers_lifecycle_in_order_across_a_kill_9() {
    const N: usize = 100;
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("gate")).unwrap();
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "life", "types": ["container"], "ack_deadline_seconds": 2})),
    )
    .await;
    let taken: Taken = Arc::default();
    let consumer = subscriber(d.client(), "life", taken.clone());

    // Half sleep until stopped; half end by themselves once a file appears — while the daemon
    // is down, so that their exits are found (and reported) by the next daemon's reconcile.
    let body = |i: usize| {
        if i % 2 == 0 {
            json!({"image": "busybox", "name": format!("life-{i}"), "command": ["sleep", "600"]})
        } else {
            json!({"image": "busybox", "name": format!("life-{i}"),
                "command": ["sh", "-c", "while [ ! -e /gate/go ]; do sleep 1; done"],
                "volumes": [{"source": "gate", "target": "/gate", "read_only": true}]})
        }
    };
    // Ten creates at a time.
    let mut ids = vec![String::new(); N];
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (client, body) = (d.client(), body(i));
            set.spawn(async move {
                let c = client
                    .json(Method::POST, "/v1/containers", Some(&body))
                    .await;
                (i, c)
            });
        }
        while let Some(done) = set.join_next().await {
            let (i, c) = done.unwrap();
            let c = c.unwrap_or_else(|e| panic!("create life-{i}: {e}\n{}", d.log()));
            ids[i] = c["id"].as_str().unwrap().to_owned();
        }
    }
    // Every create and start was durable before its reply: the kill loses none of them.
    d.kill9();
    std::fs::write(d.array.join("gate/go"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.launch().await;

    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            d.ok(
                Method::DELETE,
                &format!("/v1/containers/{id}?force=true"),
                None,
            )
            .await;
        } else {
            d.ok(Method::POST, &format!("/v1/containers/{id}/wait"), None)
                .await;
            d.ok(Method::DELETE, &format!("/v1/containers/{id}"), None)
                .await;
        }
    }

    let want = [
        "container.create",
        "container.start",
        "container.die",
        "container.destroy",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = per_container(&taken);
        let complete = got.values().filter(|v| v.len() >= want.len()).count();
        if complete == N || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    consumer.abort();
    assert_eq!(got.len(), N, "containers with events: {:?}", got.keys());
    for (name, evs) in &got {
        let types: Vec<&str> = evs.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(types, want, "{name}: {evs:?}");
    }
    // The dies say how each ended: the gated ones by themselves (0), the sleepers by the stop.
    let all = taken.lock().unwrap().clone();
    for e in all.iter().filter(|e| e["type"] == "container.die") {
        let i: usize = e["name"].as_str().unwrap()["life-".len()..]
            .parse()
            .unwrap();
        let code = &e["attributes"]["exit_code"];
        if i % 2 == 1 {
            assert_eq!(code, &json!(0), "{e}");
        } else {
            assert!(code == &json!(137) || code == &json!(143), "{e}");
        }
        assert_eq!(e["attributes"]["image"], "busybox", "{e}");
        assert_eq!(e["id"], json!(ids[i]), "{e}");
    }
    // At least once: the batch delivered but not acknowledged at the kill came again.
    let distinct: BTreeSet<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        all.len() > distinct.len(),
        "no redelivery after the kill: {} events, {} distinct",
        all.len(),
        distinct.len()
    );
    // A subscriber of file events (the default) saw none of this.
    let files = d
        .ok(Method::GET, "/v1/events?after=0&max=10000", None)
        .await;
    assert_eq!(files, json!([]));
}

/// The first line `inarray events tail …` prints, within `secs`.
fn first_tail_line(d: &TestDaemon, args: &[&str], secs: u64) -> Value {
    let host = format!("unix:{}", d.socket.display());
    let mut cmd = std::process::Command::new(TestDaemon::bin());
    cmd.args(["--host", &host, "events", "tail"]).args(args);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(secs));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a line from events tail");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_images_report_their_lifecycle_and_types_filter_the_log() {
    let d = TestDaemon::start().await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "ops", "types": ["job", "image"]})),
    )
    .await;
    d.with_busybox().await;
    let archive = d.tmp.path().join("busybox-oci.tar");
    d.import(&archive, "extra:1").await;
    d.ok(Method::DELETE, "/v1/images/extra:1", None).await;
    d.ok(
        Method::POST,
        "/v1/jobs",
        Some(json!({"name": "nightly", "schedule": "0 3 1 1 *",
            "container": {"image": "busybox", "command": ["sh", "-c", "exit 3"]}})),
    )
    .await;
    let run = d.ok(Method::POST, "/v1/jobs/nightly/run", None).await;
    let run_id = run["id"].as_i64().unwrap();
    // The run ends; then the job (with its runs' containers) and the image go.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = d.ok(Method::GET, "/v1/jobs/nightly/runs", None).await;
        if runs[0]["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the run never ended: {runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.ok(Method::DELETE, "/v1/jobs/nightly", None).await;
    d.ok(Method::DELETE, "/v1/images/busybox:latest", None)
        .await;

    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken.len() < 7 && Instant::now() < deadline {
        let v = d
            .ok(
                Method::GET,
                "/v1/subscriptions/ops/events?wait=2&max=100",
                None,
            )
            .await;
        let evs = v["events"].as_array().unwrap().clone();
        if let Some(last) = evs.last() {
            d.ok(
                Method::POST,
                "/v1/subscriptions/ops/ack",
                Some(json!({"seq": last["seq"]})),
            )
            .await;
        }
        taken.extend(evs);
    }
    let types: Vec<&str> = taken.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "image.import",
            "image.import",
            "image.untag",
            "job.fire",
            "job.run_start",
            "job.run_end",
            "image.delete"
        ],
        "{taken:#?}"
    );
    let image_id = taken[0]["id"].as_str().unwrap();
    assert_eq!(taken[2]["name"], "extra:1");
    assert_eq!(taken[6]["id"], image_id);
    let end = &taken[5];
    assert_eq!(
        (&end["id"], &end["name"]),
        (&json!("nightly"), &json!("nightly"))
    );
    assert_eq!(end["attributes"]["run_id"], run_id);
    assert_eq!(end["attributes"]["state"], "failed");
    assert_eq!(end["attributes"]["exit_code"], 3);
    assert_eq!(taken[3]["attributes"]["trigger"], "manual");
    assert_eq!(
        taken[4]["attributes"]["container_id"],
        end["attributes"]["container_id"]
    );

    // The log by type; the job's container's own events are there too.
    let only = d
        .ok(Method::GET, "/v1/events?after=0&types=job.run_end", None)
        .await;
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    let containers = d
        .ok(Method::GET, "/v1/events?after=0&types=container", None)
        .await;
    let kinds: Vec<&str> = containers
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "container.create",
            "container.start",
            "container.die",
            "container.destroy"
        ]
    );
    for bad in [
        "containerz",
        "container.dies",
        "%00",
        "job.run_end,,image",
        "*.*",
    ] {
        let msg = d
            .fails(Method::GET, &format!("/v1/events?types={bad}"), None, 400)
            .await;
        assert!(msg.starts_with("types"), "{bad}: {msg}");
    }
    d.fails(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "bad", "types": ["job", "nope.x"]})),
        400,
    )
    .await;

    // The CLI: `events tail --type` from the start of the log prints the run's end first.
    let line = first_tail_line(&d, &["--all", "--type", "job.run_end"], 30);
    assert_eq!(line["type"], "job.run_end", "{line}");
    assert_eq!(line["attributes"]["run_id"], run_id);
    let (ok, _, err) = d.cli(&["events", "tail", "--subscription", "ops", "--type", "job"]);
    assert!(!ok && err.contains("--type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_change_is_an_event_and_the_status_survives_a_daemon_restart() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "health", "types": ["container.health_status"]})),
    )
    .await;
    let c = d
        .run(json!({"image": "busybox", "command": ["sleep", "600"],
            "healthcheck": {"test": ["CMD", "true"], "interval": 2}}))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    d.wait_for(&id, 60, |c| c["health"]["status"] == "healthy")
        .await;
    d.sigterm();
    d.launch().await;
    // The restored status, not `starting` again: the first status shown after the restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let c = d.container(&id).await;
        if !c["health"].is_null() {
            break c["health"]["status"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no health after the restart: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first, "healthy");
    // Probes go on (interval 2 s); the status did not change, so no second event.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = d
        .ok(
            Method::GET,
            "/v1/subscriptions/health/events?wait=2&max=100",
            None,
        )
        .await;
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1, "{v}");
    assert_eq!(evs[0]["id"], json!(id));
    assert_eq!(evs[0]["attributes"]["status"], "healthy");
    // The metric agrees.
    let m = d.metrics_text().await;
    assert!(
        m.lines().any(|l| l.contains("inarray_container_health")
            && l.contains("status=\"healthy\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
}

/// The scale of the issue: 250 `always` containers, a simulated power loss (the daemon, every
/// shim, every container SIGKILLed) and the daemon started with another boot id: all 250 run
/// again, and the log says so for each — `die` ("the node rebooted"), `restart` (boot), `start`.
/// (NFS throughput meanwhile is a benchmark: `inarray-bench reboot`, docs/benchmarks.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_always_containers_come_back_after_a_simulated_reboot() {
    const N: usize = 250;
    let mut d = TestDaemon::start_with(vec!["--boot-id".into(), "boot-1".into()]).await;
    d.with_busybox().await;
    let mut ids = vec![String::new(); N];
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let client = d.client();
            let body = json!({"image": "busybox", "name": format!("always-{i}"),
                "command": ["sleep", "100000"], "restart": "always"});
            set.spawn(async move {
                let c = client
                    .json(Method::POST, "/v1/containers", Some(&body))
                    .await;
                (i, c)
            });
        }
        while let Some(done) = set.join_next().await {
            let (i, c) = done.unwrap();
            let c = c.unwrap_or_else(|e| panic!("create always-{i}: {e}\n{}", d.log()));
            ids[i] = c["id"].as_str().unwrap().to_owned();
        }
    }
    let before = d
        .ok(Method::GET, "/v1/events?after=0&types=*&max=10000", None)
        .await;
    let last_before = before.as_array().unwrap().last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    let shims: Vec<i32> = ids
        .iter()
        .map(|id| {
            let rec: Value = serde_json::from_slice(
                &std::fs::read(d.state.join("containers").join(id).join("shim-pid.json")).unwrap(),
            )
            .unwrap();
            rec["shim_pid"].as_i64().unwrap() as i32
        })
        .collect();

    // The power goes: the daemon, the shims, whatever is left in the containers' cgroups.
    d.kill9();
    for &pid in &shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    inarray_runtime::cgroups::cleanup(
        std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
        &format!("/{}", d.cgroup_root),
    )
    .unwrap();
    d.extra_args = vec!["--boot-id".into(), "boot-2".into()];
    let t = Instant::now();
    d.launch().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = d.ok(Method::GET, "/v1/containers?all=true", None).await;
        let running = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "running")
            .count();
        if running == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{running} of {N} running after the reboot\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{N} back in {:.1} s", t.elapsed().as_secs_f64());
    let after = d
        .ok(
            Method::GET,
            &format!("/v1/events?after={last_before}&types=container&max=10000"),
            None,
        )
        .await;
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in after.as_array().unwrap() {
        by_id
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["type"].as_str().unwrap().to_owned());
        if e["type"] == "container.die" {
            assert_eq!(e["attributes"]["error"], "the node rebooted", "{e}");
        }
    }
    assert_eq!(by_id.len(), N);
    for id in &ids {
        assert_eq!(
            by_id[id],
            ["container.die", "container.restart", "container.start"],
            "{id}"
        );
    }
}
