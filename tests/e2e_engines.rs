//! End-to-end: IO engines and container limits on the real cgroup hierarchy (v1 hybrid here),
//! checked from inside the container (a probe reading its own cgroup files) and from the host.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::json;

fn cgroup_of(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_storage_and_containers_in_their_engine() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let daemon_pid = d.child.as_ref().unwrap().id() as i64;
    assert!(
        cgroup_of(daemon_pid).contains(&format!(":/{}-storage", d.cgroup_root)),
        "{}",
        cgroup_of(daemon_pid)
    );
    let engines = d.ok(Method::GET, "/v1/engines", None).await;
    let names: Vec<&str> = engines
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "storage"]);
    // storage is the daemon's: no container runs there.
    let msg = d
        .fails(
            Method::POST,
            "/v1/containers",
            Some(json!({"image": "busybox", "engine": "storage", "command": ["true"]})),
            400,
        )
        .await;
    assert!(msg.contains("engine") && msg.contains("storage"), "{msg}");
    d.ok(
        Method::POST,
        "/v1/engines",
        Some(json!({"name": "batch", "resources": {"memory": "256m", "pids": 64}})),
    )
    .await;
    let c = d
        .run(json!({"image": "busybox", "engine": "batch", "command": ["sleep", "100"]}))
        .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["engine"], "batch");
    assert!(
        cgroup_of(c["pid"].as_i64().unwrap()).contains(&format!(":/{}/batch/{id}", d.cgroup_root))
    );
    // A container may not ask for more than its engine.
    let msg = d
        .fails(Method::POST, "/v1/containers", Some(json!({"image": "busybox", "engine": "batch", "resources": {"memory": "512m"}, "command": ["true"]})), 409)
        .await;
    assert!(
        msg.contains("memory") && msg.contains("engine batch"),
        "{msg}"
    );
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": "busybox", "engine": "nope", "command": ["true"]})),
        404,
    )
    .await;
    // Nor may the engine shrink below a container in it, or go away while it has containers.
    d.ok(
        Method::PATCH,
        &format!("/v1/containers/{id}"),
        Some(json!({"resources": {"memory": "200m"}})),
    )
    .await;
    let msg = d
        .fails(
            Method::PATCH,
            "/v1/engines/batch",
            Some(json!({"resources": {"memory": "100m"}})),
            409,
        )
        .await;
    assert!(msg.contains("asks for more"), "{msg}");
    d.fails(Method::DELETE, "/v1/engines/batch", None, 409)
        .await;
    d.fails(Method::DELETE, "/v1/engines/default", None, 409)
        .await;
    // Over-committing the node's memory with engines is refused, naming the excess.
    let msg = d
        .fails(
            Method::POST,
            "/v1/engines",
            Some(json!({"name": "huge", "resources": {"memory": "100t"}})),
            409,
        )
        .await;
    assert!(
        msg.contains("more than the") && msg.contains("MiB"),
        "{msg}"
    );
    d.fails(
        Method::POST,
        "/v1/engines",
        Some(json!({"name": "Bad Name"})),
        400,
    )
    .await;
    d.fails(
        Method::POST,
        "/v1/engines",
        Some(json!({"name": "x", "resources": {"cpus": -1}})),
        400,
    )
    .await;
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
    d.ok(Method::DELETE, "/v1/engines/batch", None).await;
    assert!(
        !inarray_runtime::cgroups::exists(
            std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
            &format!("/{}/batch", d.cgroup_root)
        ),
        "the engine's cgroups are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_sees_its_limits_and_a_live_update() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({
            "image": "busybox",
            "resources": {"memory": "64m", "pids": 50},
            "command": ["sh", "-c", "while true; do echo $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) $(cat /sys/fs/cgroup/pids/pids.max); sleep 0.1; done"],
        }))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.logs(&id).await.contains(&format!("{} 50", 64 << 20)) {
        assert!(
            Instant::now() < deadline,
            "probe never saw its limits: {}",
            d.logs(&id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let updated = d
        .ok(
            Method::PATCH,
            &format!("/v1/containers/{id}"),
            Some(json!({"resources": {"memory": "96m", "pids": 70}})),
        )
        .await;
    assert_eq!(updated["resources"]["memory"], 96 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.logs(&id).await.contains(&format!("{} 70", 96 << 20)) {
        assert!(
            Instant::now() < deadline,
            "probe never saw the update: {}",
            d.logs(&id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = d
        .ok(Method::GET, &format!("/v1/containers/{id}/stats"), None)
        .await;
    assert_eq!(stats["memory"]["limit"], 96 << 20);
    assert_eq!(stats["pids"]["limit"], 70);
    assert!(stats["pids"]["current"].as_u64().unwrap() >= 1);
    // Beyond the engine, or malformed: refused, nothing changed.
    d.fails(
        Method::PATCH,
        &format!("/v1/containers/{id}"),
        Some(json!({"resources": {"memory": "1k"}})),
        400,
    )
    .await;
    d.fails(
        Method::PATCH,
        &format!("/v1/containers/{id}"),
        Some(json!({"resources": {"memroy": "1g"}})),
        422,
    )
    .await;
    // `null` removes one limit: its cgroup file goes back to unlimited, the other stays.
    let cleared = d
        .ok(
            Method::PATCH,
            &format!("/v1/containers/{id}"),
            Some(json!({"resources": {"memory": null}})),
        )
        .await;
    assert_eq!(cleared["resources"], json!({"pids": 70}), "{cleared}");
    let root = inarray_runtime::cgroups::MOUNT_ROOT;
    let cg = format!("{}/default/{id}", d.cgroup_root);
    let (v1, v2) = (
        format!("{root}/memory/{cg}/memory.limit_in_bytes"),
        format!("{root}/{cg}/memory.max"),
    );
    let limit = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap();
    assert!(
        limit.trim() == "max" || limit.trim().parse::<u64>().unwrap() >= 1 << 62,
        "memory is unlimited again: {limit}"
    );
    let stats = d
        .ok(Method::GET, &format!("/v1/containers/{id}/stats"), None)
        .await;
    assert!(stats["memory"]["limit"].is_null(), "{stats}");
    assert_eq!(stats["pids"]["limit"], 70);
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_and_reported() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (code, logs) = d
        .run_to_exit(json!({"image": "busybox", "resources": {"memory": "32m"}, "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]}))
        .await;
    assert_eq!(code, 137, "{logs}");
    let list = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(list[0]["oom_killed"], true, "{list}");
    let (code, _) = d
        .run_to_exit(
            json!({"image": "busybox", "resources": {"memory": "32m"}, "command": ["true"]}),
        )
        .await;
    assert_eq!(code, 0);
    let list = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(list[1]["oom_killed"], false);
}

/// CPU time a spinner gets in `secs` seconds with the given resources.
async fn spin(d: &TestDaemon, resources: serde_json::Value, secs: u64) -> (f64, u64) {
    let c = d.run(json!({"image": "busybox", "resources": resources, "command": ["sh", "-c", "while true; do :; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let s = d
        .ok(Method::GET, &format!("/v1/containers/{id}/stats"), None)
        .await;
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
    (
        s["cpu"]["usage_ns"].as_u64().unwrap() as f64 / 1e9 / secs as f64,
        s["cpu"]["throttled_periods"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_quota_caps_a_spinner() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (capped, throttled) = spin(&d, json!({"cpus": 0.2}), 3).await;
    let (free, free_throttled) = spin(&d, json!({}), 3).await;
    // Wide bounds: the machine is shared (under load an uncapped spinner may get little more than
    // the quota), so the proof that the quota acts is the kernel's throttling count.
    assert!(capped < 0.3, "capped spinner used {capped:.2} CPU");
    assert!(
        throttled > 5,
        "the quota throttled the spinner {throttled} times"
    );
    assert_eq!(
        free_throttled, 0,
        "no quota, no throttling (used {free:.2} CPU)"
    );
}

/// Parses a `?stream=true` body: one JSON document per line.
fn stats_lines(body: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stream_a_sample_a_second_until_the_container_ends() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    // Spins for about 3 s (a busy loop, so the CPU time grows), then exits.
    let c = d.run(json!({"image": "busybox", "command": ["sh", "-c", "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done"]})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut body = Vec::new();
    let t0 = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        d.client()
            .stream(&format!("/v1/containers/{id}/stats?stream=true"), |b| {
                body.extend_from_slice(b)
            }),
    )
    .await
    .expect("the stream ends when the container does")
    .unwrap();
    let took = t0.elapsed();
    let lines = stats_lines(&body);
    // A sample at once, then one a second while it runs (wide bounds: a loaded machine starts
    // the loop late or ends the stream a sample late).
    assert!(
        (2..=8).contains(&lines.len()),
        "{} samples in {took:?}",
        lines.len()
    );
    let cpu: Vec<u64> = lines
        .iter()
        .map(|l| l["cpu"]["usage_ns"].as_u64().unwrap())
        .collect();
    assert!(
        cpu.windows(2).all(|w| w[0] <= w[1]) && cpu[cpu.len() - 1] > cpu[0],
        "CPU time grows from sample to sample: {cpu:?}"
    );
    assert!(lines.iter().all(|l| l["pids"]["current"].is_u64()));

    // An engine's stream goes on while the client stays: read ~2.5 s of it, then hang up.
    let mut body = Vec::new();
    let r = tokio::time::timeout(
        Duration::from_millis(2500),
        d.client()
            .stream("/v1/engines/default/stats?stream=true", |b| {
                body.extend_from_slice(b)
            }),
    )
    .await;
    assert!(r.is_err(), "an engine stream only ends with its client");
    let lines = stats_lines(&body);
    assert!((2..=4).contains(&lines.len()), "{} samples", lines.len());
    assert!(lines.iter().all(|l| l["memory"]["current"].is_u64()));
    // The daemon is still fine after the client went away mid-stream.
    d.ok(Method::GET, "/v1/engines/default/stats", None).await;
}

/// The block device holding the test array; `what` needs one (the test cannot run without).
fn array_device(d: &TestDaemon, what: &str) -> (u64, u64) {
    inarray_runtime::engines::block_device_of(&d.array).unwrap_or_else(|| {
        panic!(
            "the test array {} is on no block device: {what} cannot be tested",
            d.array.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_bps_limit_caps_a_direct_io_reader() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    array_device(&d, "per-device limits");
    std::fs::create_dir_all(d.array.join("io")).unwrap();
    let data = vec![7u8; 8 << 20];
    std::fs::write(d.array.join("io/blob"), &data).unwrap();
    let read = r#"s=$(cut -d' ' -f1 /proc/uptime); dd if=/d/blob of=/dev/null bs=1M iflag=direct 2>/dev/null; e=$(cut -d' ' -f1 /proc/uptime); awk "BEGIN { print int(($e - $s) * 1000) }""#;
    let run = |limits: serde_json::Value| json!({"image": "busybox", "resources": limits, "volumes": [{"source": "io", "target": "/d", "read_only": true}], "command": ["sh", "-c", read]});
    let (code, limited) = d.run_to_exit(run(json!({"read_bps": "2m"}))).await;
    assert_eq!(code, 0, "{limited}");
    let (_, free) = d.run_to_exit(run(json!({}))).await;
    let (limited_ms, free_ms): (u64, u64) = (
        limited.trim().parse().unwrap(),
        free.trim().parse().unwrap(),
    );
    // 8 MiB at 2 MiB/s: about 4 s (the first second's budget is granted at once).
    assert!(limited_ms >= 2500, "limited read took {limited_ms} ms");
    assert!(
        free_ms * 2 < limited_ms,
        "unlimited {free_ms} ms vs limited {limited_ms} ms"
    );
    // An engine's I/O figures include its containers' (on v1, the *_recursive files).
    let c = d
        .run(json!({"image": "busybox", "volumes": [{"source": "io", "target": "/d", "read_only": true}], "command": ["sh", "-c", "dd if=/d/blob of=/dev/null bs=1M iflag=direct; sleep 100"]}))
        .await;
    let id = c["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let container_read = loop {
        let cs = d
            .ok(Method::GET, &format!("/v1/containers/{id}/stats"), None)
            .await;
        let r = cs["io"]["read_bytes"].as_u64().unwrap();
        if r >= 8 << 20 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container stats: {cs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let es = d.ok(Method::GET, "/v1/engines/default/stats", None).await;
    assert!(
        es["io"]["read_bytes"].as_u64().unwrap() >= container_read,
        "engine {es} vs container's {container_read} bytes read"
    );
    assert!(es["io"]["read_ops"].as_u64().unwrap() >= 8, "{es}");
}

/// An engine's per-device limit holds each of its containers, also those with no limit of their
/// own, and a PATCH of the engine reaches running containers. (On cgroup v1 the kernel ignores a
/// parent cgroup's throttle — v1 blk-throttle is flat — so the daemon writes the engine's limits
/// into every container's cgroup; this test caught that they did nothing before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engines_read_bps_holds_its_containers_and_changes_live() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (major, minor) = array_device(&d, "per-device limits");
    std::fs::create_dir_all(d.array.join("io")).unwrap();
    std::fs::write(d.array.join("io/blob"), vec![7u8; 8 << 20]).unwrap();
    d.ok(
        Method::POST,
        "/v1/engines",
        Some(json!({"name": "slowio", "resources": {"read_bps": "2m"}})),
    )
    .await;
    // One timed 8 MiB direct read, or (loop) one a line forever.
    let read = r#"s=$(cut -d' ' -f1 /proc/uptime); dd if=/d/blob of=/dev/null bs=1M iflag=direct 2>/dev/null; e=$(cut -d' ' -f1 /proc/uptime); awk "BEGIN { print int(($e - $s) * 1000) }""#;
    let body = |engine: &str, cmd: String| json!({"image": "busybox", "engine": engine, "volumes": [{"source": "io", "target": "/d", "read_only": true}], "command": ["sh", "-c", cmd]});
    let (code, limited) = d.run_to_exit(body("slowio", read.to_owned())).await;
    assert_eq!(code, 0, "{limited}");
    let (_, free) = d.run_to_exit(body("default", read.to_owned())).await;
    let (limited_ms, free_ms): (u64, u64) = (
        limited.trim().parse().unwrap(),
        free.trim().parse().unwrap(),
    );
    // 8 MiB at 2 MiB/s: about 4 s (the first second's budget is granted at once).
    assert!(
        limited_ms >= 2500,
        "read in the limited engine took {limited_ms} ms"
    );
    assert!(
        free_ms * 2 < limited_ms,
        "default engine {free_ms} ms vs limited engine {limited_ms} ms"
    );

    // Live: a container reading in a loop speeds up when the engine's limit is raised.
    let c = d
        .run(body("slowio", format!("while true; do {read}; done")))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let timings =
        |logs: String| -> Vec<u64> { logs.lines().filter_map(|l| l.trim().parse().ok()).collect() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while timings(d.logs(&id).await).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no read finished: {}",
            d.logs(&id).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = timings(d.logs(&id).await);
    assert!(before[0] >= 2500, "reads before the update: {before:?}");
    d.ok(
        Method::PATCH,
        "/v1/engines/slowio",
        Some(json!({"resources": {"read_bps": "512m"}})),
    )
    .await;
    let v1_file = format!(
        "/sys/fs/cgroup/blkio/{}/slowio/{id}/blkio.throttle.read_bps_device",
        d.cgroup_root
    );
    if std::path::Path::new(&v1_file).exists() {
        assert_eq!(
            std::fs::read_to_string(&v1_file).unwrap().trim(),
            format!("{major}:{minor} {}", 512u64 << 20),
            "the container's own cgroup carries the engine's new limit"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = timings(d.logs(&id).await);
        // A read that started after the update: fast.
        if t.len() >= before.len() + 2 && *t.last().unwrap() < 1500 {
            break;
        }
        assert!(Instant::now() < deadline, "reads after the update: {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.ok(
        Method::DELETE,
        &format!("/v1/containers/{id}?force=true"),
        None,
    )
    .await;
}

/// One value of /metrics, by its full sample name (labels included).
async fn metric(d: &TestDaemon, sample: &str) -> Option<f64> {
    d.metrics().await.get(sample).copied()
}

/// The I/O guard: while the `storage` engine reads the array's disk, the running containers are
/// held to their share (a cap in their cgroups, never above their own limit); when it stops, they
/// get their own limits back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_io_guard_holds_containers_while_storage_uses_the_disk() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (major, minor) = array_device(&d, "the I/O guard");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    std::fs::create_dir_all(d.array.join("io")).unwrap();
    std::fs::write(d.array.join("io/big"), vec![3u8; 64 << 20]).unwrap();
    let reader = |limits: serde_json::Value| json!({"image": "busybox", "resources": limits, "volumes": [{"source": "io", "target": "/d", "read_only": true}], "command": ["sh", "-c", "while true; do dd if=/d/big of=/dev/null bs=1M iflag=direct 2>/dev/null; done"]});
    let free = d.run(reader(json!({}))).await;
    let own = d.run(reader(json!({"read_bps": "1m"}))).await;
    let dev = format!("{major}:{minor}");
    let read_cap = |c: &serde_json::Value| -> Option<u64> {
        let rel = format!("{}/default/{}", d.cgroup_root, c["id"].as_str().unwrap());
        let text = if v2 {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{}/io.max", d.cgroup_root)).unwrap()
        } else {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/blkio/{rel}/blkio.throttle.read_bps_device"
            ))
            .unwrap()
        };
        text.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            if f.next() != Some(dev.as_str()) {
                return None;
            }
            let v = f.next()?;
            v.strip_prefix("rbps=").unwrap_or(v).parse().ok()
        })
    };
    // Starting containers is the daemon's own disk work (fsyncs): the guard may hold for its
    // `hold` after; then it lets go while the containers read on, and their cgroups have no cap.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&d, "inarray_io_guard_holding").await != Some(0.0) || read_cap(&free).is_some() {
        assert!(
            Instant::now() < deadline,
            "the guard holds with storage quiet"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Something in `storage` reads the disk as fast as it can.
    let mut hog = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "while true; do dd if={} of=/dev/null bs=1M iflag=direct 2>/dev/null; done",
                d.array.join("io/big").display()
            ),
        ])
        .spawn()
        .unwrap();
    let storage = if v2 {
        format!("/sys/fs/cgroup/{}-storage/cgroup.procs", d.cgroup_root)
    } else {
        format!(
            "/sys/fs/cgroup/blkio/{}-storage/cgroup.procs",
            d.cgroup_root
        )
    };
    std::fs::write(&storage, hog.id().to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&d, "inarray_io_guard_holding").await != Some(1.0) || read_cap(&free).is_none() {
        assert!(Instant::now() < deadline, "the guard never took hold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let budget = metric(&d, "inarray_io_guard_budget_bytes_per_second")
        .await
        .unwrap() as u64;
    let peak = metric(&d, "inarray_io_guard_disk_peak_bytes_per_second")
        .await
        .unwrap() as u64;
    // The built-in weights: 100 for `default` against 1000 for `storage`, a floor of 16 MiB/s.
    assert!(
        budget >= 16 << 20 && budget <= (peak / 11).max(16 << 20) + 1,
        "budget {budget} of peak {peak}"
    );
    // The budget moves with the disk's peak; the guard never leaves a cap above it, so the cap
    // read between two readings of the budget is at most the larger of them.
    let cap = read_cap(&free).unwrap();
    let budget_after = metric(&d, "inarray_io_guard_budget_bytes_per_second")
        .await
        .unwrap() as u64;
    assert!(
        cap > 0 && cap <= budget.max(budget_after),
        "the free reader's cap {cap}, budget {budget} then {budget_after}"
    );
    if !v2 {
        assert!(
            read_cap(&own).unwrap() <= 1 << 20,
            "never above the container's own limit"
        );
    }

    // The hog stops: the guard lets go after its hold (1 s) and the limits are the containers' own.
    hog.kill().unwrap();
    hog.wait().unwrap();
    let _ = std::process::Command::new("pkill")
        .args(["-f", &format!("dd if={}", d.array.join("io/big").display())])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&d, "inarray_io_guard_holding").await != Some(0.0) || read_cap(&free).is_some() {
        assert!(Instant::now() < deadline, "the guard never let go");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !v2 {
        assert_eq!(read_cap(&own), Some(1 << 20), "its own limit is back");
    }
    assert!(
        metric(&d, "inarray_io_guard_engagements_total")
            .await
            .unwrap()
            >= 1.0
    );
    for c in [&free, &own] {
        d.ok(
            Method::DELETE,
            &format!("/v1/containers/{}?force=true", c["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let c = d
        .run(json!({"image": "busybox", "name": "m1", "command": ["sleep", "100"]}))
        .await;
    let text = d.metrics_text().await;
    let mut families = std::collections::HashSet::new();
    let mut histograms = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            assert!(families.insert(name.to_owned()), "TYPE twice for {name}");
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        // name{labels} value
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        // A histogram's samples are <family>_bucket (with `le`), _sum and _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| histograms.contains(*f)))
            .unwrap_or(name);
        assert!(families.contains(family), "sample before its TYPE: {line}");
        if name.ends_with("_bucket") && family != name {
            assert!(series.contains("le=\""), "{line}");
        }
        if let Some(labels) = series.strip_prefix(name).and_then(|l| l.strip_prefix('{')) {
            assert!(labels.ends_with('}'), "{line}");
        }
    }
    assert!(text.contains("inarray_up 1"));
    // The API's own latency: the requests this test made, by route and status.
    assert!(
        text.contains("inarray_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/containers\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("inarray_containers{state=\"running\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("inarray_engine_memory_bytes{engine=\"storage\"}"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "inarray_container_pids{{container=\"m1\",id=\"{}\",engine=\"default\"}}",
            c["id"].as_str().unwrap()
        )),
        "{text}"
    );
    let es = d.ok(Method::GET, "/v1/engines/default/stats", None).await;
    assert!(es["memory"]["current"].as_u64().unwrap() > 0, "{es}");
}
