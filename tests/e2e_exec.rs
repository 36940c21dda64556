//! End-to-end: exec and attach against the real daemon, as root. The stream is read the way a
//! client reads it: an HTTP/1.1 upgrade on the daemon's unix socket, then stdcopy frames (or raw
//! terminal bytes).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::{json, Value};

/// Sends `POST path` with `Upgrade: tcp` and returns the connection after the 101.
fn upgrade(socket: &Path, path: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "connection closed in the headers"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads stdcopy frames until the end: (stdout, stderr).
fn read_frames(s: &mut UnixStream) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        match h[0] {
            1 => out.extend_from_slice(&data),
            2 => err.extend_from_slice(&data),
            other => panic!("bad stream byte {other}"),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Reads raw bytes until `needle` shows up (or panics after the read timeout).
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = s.read(&mut b).unwrap_or(0);
        assert!(
            n > 0,
            "stream ended before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn sleeper(d: &TestDaemon, name: &str) -> (String, i64) {
    let c = d
        .run(json!({"image": "busybox", "name": name, "command": ["sleep", "600"]}))
        .await;
    (
        c["id"].as_str().unwrap().to_owned(),
        c["pid"].as_i64().unwrap(),
    )
}

async fn create_exec(d: &TestDaemon, container: &str, body: Value) -> String {
    let e = d
        .ok(
            Method::POST,
            &format!("/v1/containers/{container}/exec"),
            Some(body),
        )
        .await;
    assert_eq!(e["state"], "created", "{e}");
    e["id"].as_str().unwrap().to_owned()
}

/// Runs an exec attached; returns (stdout, stderr, its record after the stream ended).
async fn exec_attached(d: &TestDaemon, container: &str, body: Value) -> (String, String, Value) {
    let id = create_exec(d, container, body).await;
    let mut s = upgrade(&d.socket, &format!("/v1/execs/{id}/start"));
    let (out, err) = read_frames(&mut s);
    let e = d.ok(Method::GET, &format!("/v1/execs/{id}"), None).await;
    (out, err, e)
}

fn ns_of(pid: i64) -> Vec<String> {
    ["mnt", "pid", "net", "uts", "ipc"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

fn status_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            ["CapEff", "CapBnd", "CapPrm", "NoNewPrivs", "Seccomp:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_inside_the_container_with_its_rules_and_reports_exit_codes() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (id, init) = sleeper(&d, "box").await;

    let script = "for n in mnt pid net uts ipc; do readlink /proc/self/ns/$n; done; \
                  echo ---; cat /proc/self/cgroup; echo ---; cat /proc/self/status";
    let (out, err, e) = exec_attached(&d, "box", json!({"command": ["sh", "-c", script]})).await;
    assert_eq!(e["exit_code"], 0, "{e} {err}");
    assert_eq!(e["running"], false);
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let ns: Vec<String> = parts[0].lines().map(str::to_owned).collect();
    assert_eq!(ns, ns_of(init), "the init's namespaces");
    let host_cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let mut theirs: Vec<&str> = host_cgroups.lines().collect();
    let mut ours: Vec<&str> = parts[1].lines().collect();
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs, "the init's cgroups");
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert_eq!(status_lines(parts[2]), status_lines(&init_status));
    assert!(
        status_lines(parts[2]).contains(&"Seccomp:\t2".to_owned()),
        "the seccomp filter is on: {}",
        parts[2]
    );

    // Exit codes: a plain one, a missing program, a signal.
    let (_, _, e) = exec_attached(&d, &id, json!({"command": ["sh", "-c", "exit 7"]})).await;
    assert_eq!(e["exit_code"], 7);
    let (_, err, e) = exec_attached(&d, &id, json!({"command": ["no-such-program"]})).await;
    assert_eq!(e["exit_code"], 127, "{e}");
    assert!(err.contains("not found"), "{err}");
    let (_, _, e) = exec_attached(&d, &id, json!({"command": ["sh", "-c", "kill -9 $$"]})).await;
    assert_eq!(e["exit_code"], 137);

    // Users, environment, working directory.
    let (out, _, _) = exec_attached(
        &d,
        &id,
        json!({"command": ["sh", "-c", "id -u; echo $GREETING; pwd"], "user": "1000",
               "env": ["GREETING=hi"], "workdir": "/tmp"}),
    )
    .await;
    assert_eq!(out, "1000\nhi\n/tmp\n");
    let msg = d
        .fails(
            Method::POST,
            "/v1/containers/box/exec",
            Some(json!({"command": ["id"], "user": "nosuchuser"})),
            400,
        )
        .await;
    assert!(msg.contains("user"), "{msg}");
    d.fails(
        Method::POST,
        "/v1/containers/box/exec",
        Some(json!({"command": []})),
        400,
    )
    .await;
    // Started once only; unknown execs are 404.
    let eid = create_exec(&d, "box", json!({"command": ["true"]})).await;
    d.ok(Method::POST, &format!("/v1/execs/{eid}/start"), None)
        .await;
    d.fails(Method::POST, &format!("/v1/execs/{eid}/start"), None, 409)
        .await;
    d.fails(Method::GET, "/v1/execs/nosuchexec", None, 404)
        .await;

    // Not running → 409, for a new exec and for one created before the container stopped.
    let late = create_exec(&d, "box", json!({"command": ["true"]})).await;
    d.ok(Method::POST, "/v1/containers/box/kill?signal=KILL", None)
        .await;
    d.wait_for(&id, 30, |c| c["state"] == "exited").await;
    d.fails(
        Method::POST,
        "/v1/containers/box/exec",
        Some(json!({"command": ["true"]})),
        409,
    )
    .await;
    d.fails(Method::POST, &format!("/v1/execs/{late}/start"), None, 409)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_resize_and_attach_with_detach_keys() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    sleeper(&d, "box").await;
    // An exec with a terminal: its tty is the container's, and a resize reaches it.
    let eid = create_exec(
        &d,
        "box",
        json!({"command": ["sh"], "tty": true, "stdin": true}),
    )
    .await;
    let mut s = upgrade(&d.socket, &format!("/v1/execs/{eid}/start"));
    s.write_all(b"tty; stty size\n").unwrap();
    let seen = read_until(&mut s, "24 80");
    assert!(seen.contains("/dev/pts/"), "{seen}");
    d.ok(
        Method::POST,
        &format!("/v1/execs/{eid}/resize"),
        Some(json!({"rows": 40, "cols": 120})),
    )
    .await;
    s.write_all(b"stty size\n").unwrap();
    read_until(&mut s, "40 120");
    s.write_all(b"exit 3\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
    assert_eq!(e["exit_code"], 3, "{e}");
    // Not a terminal: resize is refused.
    let plain = create_exec(&d, "box", json!({"command": ["sleep", "5"]})).await;
    d.ok(Method::POST, &format!("/v1/execs/{plain}/start"), None)
        .await;
    d.fails(
        Method::POST,
        &format!("/v1/execs/{plain}/resize"),
        Some(json!({"rows": 40, "cols": 120})),
        409,
    )
    .await;

    // A terminal container started by its attach: the first prompt is not missed.
    let c = d
        .run(
            json!({"image": "busybox", "name": "term", "command": ["sh"],
                    "tty": true, "open_stdin": true, "start": false}),
        )
        .await;
    let cid = c["id"].as_str().unwrap().to_owned();
    let mut s = upgrade(
        &d.socket,
        "/v1/containers/term/attach?stdin=true&start=true",
    );
    read_until(&mut s, "/ # ");
    s.write_all(b"echo $((6*7))\n").unwrap();
    read_until(&mut s, "42");
    // ctrl-p ctrl-q: the stream ends, the container lives on.
    s.write_all(&[0x10, 0x11]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(d.container(&cid).await["state"], "running");
    // Attach again and end it.
    let mut s = upgrade(&d.socket, "/v1/containers/term/attach?stdin=true");
    s.write_all(b"exit 4\n").unwrap();
    let _ = s.read_to_end(&mut rest);
    let c = d.wait_for(&cid, 30, |c| c["state"] == "exited").await;
    assert_eq!(c["exit_code"], 4);
    // The log recorded the session.
    assert!(d.logs(&cid).await.contains("42"));

    // A container whose output goes to its log: attach follows the log from now on.
    let c = d
        .run(json!({"image": "busybox", "command": ["sh", "-c", "sleep 1; echo late; exit 5"]}))
        .await;
    let id = c["id"].as_str().unwrap();
    let mut s = upgrade(&d.socket, &format!("/v1/containers/{id}/attach"));
    let (out, _) = read_frames(&mut s);
    assert_eq!(out, "late\n");
    // A non-terminal stdin: EOF reaches the process.
    d.run(
        json!({"image": "busybox", "name": "cat", "command": ["sh", "-c", "cat; echo done >&2"],
                 "open_stdin": true, "start": false}),
    )
    .await;
    let mut s = upgrade(&d.socket, "/v1/containers/cat/attach?stdin=true&start=true");
    s.write_all(b"piped").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_frames(&mut s), ("piped".into(), "done\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_outlives_the_daemon_killed_during_its_session() {
    let mut d = TestDaemon::start().await;
    d.with_busybox().await;
    let (id, _) = sleeper(&d, "box").await;
    let eid = create_exec(
        &d,
        "box",
        json!({"command": ["sh", "-c", "echo started; sleep 3; exit 5"], "stdin": true}),
    )
    .await;
    let mut s = upgrade(&d.socket, &format!("/v1/execs/{eid}/start"));
    let mut h = [0u8; 8];
    s.read_exact(&mut h).unwrap();
    d.kill9();
    drop(s);
    d.launch().await;
    let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
    assert_eq!(e["running"], true, "{e}");
    assert_eq!(d.container(&id).await["state"], "running");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
        if e["running"] == false {
            assert_eq!(e["exit_code"], 5, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fd_count(pid: i64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn children_of(pid: i64) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["-o", "pid=,stat=,comm=", "--ppid", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_execs_large_input_a_reader_that_never_reads_and_a_thousand_execs() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (id, _) = sleeper(&d, "box").await;
    let c = d.container(&id).await;
    let shim = c["shim_pid"].as_i64().or_else(|| {
        // The container view may not show the shim: find it by its command line.
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("inarray-shim .*{id}")])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    });
    let shim = shim.expect("the shim's pid");

    // 10 MB pasted into stdin arrives whole.
    let eid = create_exec(
        &d,
        "box",
        json!({"command": ["sh", "-c", "cat > /tmp/big; wc -c < /tmp/big; md5sum < /tmp/big"], "stdin": true}),
    )
    .await;
    let mut s = upgrade(&d.socket, &format!("/v1/execs/{eid}/start"));
    let data: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
        data
    });
    let (out, err) = read_frames(&mut s);
    let data = writer.join().unwrap();
    let md5 = {
        let out = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(&data)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(out.starts_with("10485760\n"), "{out} {err}");
    assert!(out.contains(&md5), "{out} vs {md5}");

    // A client that never reads an endless output: the daemon's memory stays bounded.
    let daemon_pid = d.child.as_ref().unwrap().id();
    let before = rss_kib(daemon_pid);
    let eid = create_exec(&d, "box", json!({"command": ["cat", "/dev/zero"]})).await;
    let stuck = upgrade(&d.socket, &format!("/v1/execs/{eid}/start"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(daemon_pid);
    assert!(
        after < before + 16 * 1024,
        "the daemon grew from {before} KiB to {after} KiB"
    );
    drop(stuck);
    // The exec now runs without a reader; end it with a kill from inside.
    let (_, _, e) = exec_attached(&d, "box", json!({"command": ["killall", "cat"]})).await;
    assert_eq!(e["exit_code"], 0, "{e}");

    // A thousand execs leave no zombie, no descriptor and no cgroup behind.
    let shim_fds = fd_count(shim);
    let cgroup_dirs = |root: &str| -> usize { walk_count(Path::new("/sys/fs/cgroup"), root) };
    let root = d.cgroup_root.clone();
    let dirs_before = cgroup_dirs(&root);
    for i in 0..1000 {
        let eid = create_exec(&d, "box", json!({"command": ["true"]})).await;
        let mut s = upgrade(&d.socket, &format!("/v1/execs/{eid}/start"));
        read_frames(&mut s);
        if i % 250 == 0 {
            let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
            assert_eq!(e["exit_code"], 0, "{e}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids = children_of(shim);
    assert_eq!(kids.len(), 1, "only the init is left: {kids:?}");
    assert!(!kids[0].contains(" Z"), "{kids:?}");
    assert_eq!(fd_count(shim), shim_fds, "the shim's descriptors");
    assert_eq!(cgroup_dirs(&root), dirs_before, "cgroup directories");
}

/// Cgroup directories named `root` or below it, in every hierarchy.
fn walk_count(dir: &Path, root: &str) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name == root || name.starts_with(&format!("{root}-")) {
            n += count_dirs(&p);
        } else if dir == Path::new("/sys/fs/cgroup") {
            n += walk_count(&p, root);
        }
    }
    n
}

fn count_dirs(dir: &Path) -> usize {
    1 + std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| count_dirs(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_are_capped_per_container() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    sleeper(&d, "box").await;
    for _ in 0..32 {
        let eid = create_exec(&d, "box", json!({"command": ["sleep", "60"]})).await;
        d.ok(Method::POST, &format!("/v1/execs/{eid}/start"), None)
            .await;
    }
    let eid = create_exec(&d, "box", json!({"command": ["true"]})).await;
    let msg = d
        .fails(Method::POST, &format!("/v1/execs/{eid}/start"), None, 429)
        .await;
    assert!(msg.contains("32"), "{msg}");
    let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
    assert_eq!(e["state"], "exited");
    assert!(e["error"].as_str().unwrap().contains("32"), "{e}");
}

/// The WebSocket form of a stream: the same bytes as binary messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_streams_over_a_websocket_too() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    sleeper(&d, "box").await;
    let eid = create_exec(
        &d,
        "box",
        json!({"command": ["sh", "-c", "read x; echo got-$x; echo err >&2; exit 6"], "stdin": true}),
    )
    .await;
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/execs/{eid}/start HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked binary message from the client: the stdin line.
    let payload = b"hi\n";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    // Binary messages back, each one stdcopy frame, then a close.
    let (mut out, mut err) = (String::new(), String::new());
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        match h[0] & 0x0f {
            8 => break,
            2 => {
                let text = String::from_utf8_lossy(&data[8..]).into_owned();
                if data[0] == 1 {
                    out += &text
                } else {
                    err += &text
                }
            }
            op => panic!("opcode {op}"),
        }
    }
    assert_eq!((out.as_str(), err.as_str()), ("got-hi\n", "err\n"));
    let e = d.ok(Method::GET, &format!("/v1/execs/{eid}"), None).await;
    assert_eq!(e["exit_code"], 6, "{e}");
}
