//! End-to-end: file events on the real daemon, as root, over its socket. `inotifywait` (Debian's
//! inotify-tools) is the reference for which changes the kernel reports.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::{json, Value};

/// Held while `max_queued_events` is lowered, and while other tests make the inotify instances
/// whose queue size matters (the kernel sizes a queue when the instance is made).
static INOTIFY_SYSCTL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Polls a subscription (acknowledging) until `quiet` passes without an event.
async fn drain(d: &TestDaemon, sub: &str, quiet_secs: u64) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let v = d
            .ok(
                Method::GET,
                &format!("/v1/subscriptions/{sub}/events?wait={quiet_secs}&max=10000"),
                None,
            )
            .await;
        let evs = v["events"].as_array().unwrap().clone();
        let Some(last) = evs.last().map(|e| e["seq"].as_i64().unwrap()) else {
            return all;
        };
        d.ok(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/ack"),
            Some(json!({"seq": last})),
        )
        .await;
        all.extend(evs);
    }
}

/// Our events as (change, path) pairs: a move is its two halves, like inotify's.
fn changes(events: &[Value]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for e in events {
        let path = e["path"].as_str().unwrap().to_owned();
        match e["kind"].as_str().unwrap() {
            "move" => {
                if let Some(old) = e["old_path"].as_str() {
                    out.insert(("moved_from".into(), old.to_owned()));
                }
                out.insert(("moved_to".into(), path));
            }
            "resync" => {}
            k => {
                out.insert((k.to_owned(), path));
            }
        }
    }
    out
}

fn sh(script: &str, dir: &Path) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_changes_as_inotifywait_on_a_scripted_workload() {
    let d = TestDaemon::start().await;
    let w = d.array.join("w");
    std::fs::create_dir_all(w.join("a")).unwrap();
    std::fs::create_dir_all(w.join("b")).unwrap();
    let sysctl = INOTIFY_SYSCTL.lock().await;
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "w", "path": "w"})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "s", "watches": ["w"]})),
    )
    .await;
    let mut iw = Command::new("inotifywait")
        .args([
            "-m",
            "-r",
            "-q",
            "-e",
            "create,close_write,delete,moved_from,moved_to",
            "--format",
            "%e|%w%f",
        ])
        .arg(&w)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("inotifywait (apt-get install inotify-tools)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sysctl);
    // Creates, renames across directories, deletes, mkdir -p deep then files in it. The pause
    // before moving the new tree makes what is reported where independent of the timing (a
    // directory moved before its creation is processed is reported at its new place).
    sh(
        "for i in 1 2 3 4 5; do echo $i > a/f$i; done
         mv a/f1 b/f1
         mv a/f2 b/renamed
         rm a/f3
         mkdir -p deep/x/y/z
         for i in 1 2 3; do echo $i > deep/x/y/z/g$i; done
         sleep 0.3
         mv deep/x b/x
         echo late > b/x/y/late
         rm b/f1
         mkdir c && rmdir c",
        &w,
    );
    let ours = changes(&drain(&d, "s", 2).await);
    let _ = iw.kill();
    let out = iw.stdout.take().unwrap();
    let _ = iw.wait();
    let prefix = format!("{}/", d.array.display());
    let mut theirs = BTreeSet::new();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        let (ev, path) = line.split_once('|').unwrap();
        let path = path.strip_prefix(&prefix).unwrap().to_owned();
        let is_dir = ev.contains("ISDIR");
        let kind = if ev.contains("CLOSE_WRITE") {
            "close_write"
        } else if ev.contains("CREATE") {
            if is_dir {
                "mkdir"
            } else {
                "create"
            }
        } else if ev.contains("MOVED_FROM") {
            "moved_from"
        } else if ev.contains("MOVED_TO") {
            "moved_to"
        } else if ev.contains("DELETE") {
            "delete"
        } else {
            continue;
        };
        theirs.insert((kind.to_owned(), path));
    }
    // What the script did, written out.
    let mut truth = BTreeSet::new();
    let mut add = |k: &str, p: &str| truth.insert((k.to_owned(), format!("w/{p}")));
    for i in 1..=5 {
        add("create", &format!("a/f{i}"));
        add("close_write", &format!("a/f{i}"));
    }
    add("moved_from", "a/f1");
    add("moved_to", "b/f1");
    add("moved_from", "a/f2");
    add("moved_to", "b/renamed");
    add("delete", "a/f3");
    for p in ["deep", "deep/x", "deep/x/y", "deep/x/y/z"] {
        add("mkdir", p);
    }
    for i in 1..=3 {
        add("create", &format!("deep/x/y/z/g{i}"));
        add("close_write", &format!("deep/x/y/z/g{i}"));
    }
    add("moved_from", "deep/x");
    add("moved_to", "b/x");
    add("create", "b/x/y/late");
    add("close_write", "b/x/y/late");
    add("delete", "b/f1");
    add("mkdir", "c");
    add("delete", "c");
    assert_eq!(ours, truth, "inarray vs the script");
    let missed: Vec<_> = truth.difference(&theirs).collect();
    let extra: Vec<_> = theirs.difference(&truth).collect();
    assert!(
        extra.is_empty(),
        "inotifywait saw changes the script did not make: {extra:?}"
    );
    // inotifywait has no scan after it watches a new directory: files created in `mkdir -p`
    // trees before its watch lands are missed by it, never by us.
    for (k, p) in &missed {
        assert!(
            p.starts_with("w/deep/"),
            "inotifywait missed {k} {p}, outside the mkdir -p tree"
        );
    }
    eprintln!(
        "inotifywait: {} of {} changes ({} missed in the mkdir -p tree); inarray: {}",
        theirs.len(),
        truth.len(),
        missed.len(),
        ours.len()
    );
}

/// Restores a /proc/sys value when dropped.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Self {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        Self { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        std::fs::write(self.path, self.old.trim()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_is_resynced_without_loss() {
    let d = TestDaemon::start().await;
    let w = d.array.join("flood");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("before"), b"x").unwrap();
    {
        // The kernel sizes an inotify queue when the instance is made: lower the limit only
        // while the watch is created.
        let _lock = INOTIFY_SYSCTL.lock().await;
        let _q = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "16");
        d.ok(
            Method::POST,
            "/v1/watches",
            Some(json!({"name": "flood", "path": "flood"})),
        )
        .await;
    }
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "s", "watches": ["flood"], "from": "beginning"})),
    )
    .await;
    // Tens of thousands of changes at once.
    let dir = w.clone();
    tokio::task::spawn_blocking(move || {
        // Four writers at once against one reader thread and a 16-event queue.
        let writers: Vec<_> = (0..4)
            .map(|k| {
                let sub = dir.join(format!("d{k}"));
                std::thread::spawn(move || {
                    std::fs::create_dir(&sub).unwrap();
                    for i in 0..5000 {
                        std::fs::write(sub.join(format!("f{i}")), b"data").unwrap();
                    }
                })
            })
            .collect();
        for t in writers {
            t.join().unwrap();
        }
        for i in 0..1000 {
            std::fs::remove_file(dir.join(format!("d0/f{i}"))).unwrap();
        }
        std::fs::remove_file(dir.join("before")).unwrap();
    })
    .await
    .unwrap();
    let events = drain(&d, "s", 3).await;
    let resyncs = events.iter().filter(|e| e["kind"] == "resync").count();
    assert!(resyncs >= 1, "no resync event in {} events", events.len());
    // Replaying the events over the state at the start gives the tree as it is.
    let mut state: BTreeSet<String> = ["flood/before".to_string()].into();
    for e in &events {
        let p = e["path"].as_str().unwrap().to_owned();
        match e["kind"].as_str().unwrap() {
            "create" | "mkdir" | "close_write" => {
                state.insert(p);
            }
            "delete" => {
                state.retain(|x| x != &p && !x.starts_with(&format!("{p}/")));
            }
            "move" => {
                if let Some(o) = e["old_path"].as_str() {
                    state.remove(o);
                }
                state.insert(p);
            }
            _ => {}
        }
    }
    let mut scan = BTreeSet::new();
    for k in 0..4 {
        scan.insert(format!("flood/d{k}"));
        for f in std::fs::read_dir(w.join(format!("d{k}"))).unwrap() {
            scan.insert(format!(
                "flood/d{k}/{}",
                f.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    assert_eq!(scan.len(), 4 + 19_000);
    let lost: Vec<_> = scan.difference(&state).take(10).collect();
    let ghosts: Vec<_> = state.difference(&scan).take(10).collect();
    assert!(
        lost.is_empty() && ghosts.is_empty(),
        "lost {lost:?}, ghosts {ghosts:?}"
    );
    let watch = d.ok(Method::GET, "/v1/watches/flood", None).await;
    assert!(watch["resyncs"].as_u64().unwrap() >= 1, "{watch}");
    eprintln!("{} events, {resyncs} resync(s)", events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_are_redelivered_and_survive_kill_9() {
    let mut d = TestDaemon::start().await;
    let w = d.array.join("inbox");
    std::fs::create_dir_all(&w).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "inbox", "path": "inbox", "events": ["close_write"]})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "c", "ack_deadline_seconds": 1})),
    )
    .await;
    std::fs::write(w.join("one"), b"1").unwrap();
    // A consumer takes the event and dies without acknowledging it.
    let first = d
        .ok(
            Method::GET,
            "/v1/subscriptions/c/events?wait=10&max=10",
            None,
        )
        .await;
    assert_eq!(first["events"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["redelivery"], false);
    let again = d
        .ok(
            Method::GET,
            "/v1/subscriptions/c/events?wait=10&max=10",
            None,
        )
        .await;
    assert_eq!(again["redelivery"], true, "{again}");
    assert_eq!(again["events"], first["events"]);
    let seq1 = first["events"][0]["seq"].as_i64().unwrap();
    d.ok(
        Method::POST,
        "/v1/subscriptions/c/ack",
        Some(json!({"seq": seq1})),
    )
    .await;

    // An ack is written to SQL within 100 ms (ACK_FLUSH); one lost in a crash would only mean a
    // redelivery. Past that, "one" is not delivered again after the restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Events in the log when the daemon is killed are delivered after the restart.
    for n in ["two", "three"] {
        std::fs::write(w.join(n), n).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d
            .ok(Method::GET, &format!("/v1/events?after={seq1}"), None)
            .await;
        if log.as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "events not logged: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.kill9();
    // A change while the daemon is down.
    std::fs::write(w.join("while-down"), b"d").unwrap();
    d.launch().await;
    let after = drain(&d, "c", 2).await;
    let paths: Vec<&str> = after.iter().map(|e| e["path"].as_str().unwrap()).collect();
    // First what was in the log, then what the start-up rescan found against the saved state
    // (saved every 5 s: the files of the last seconds may come again — at-least-once), then
    // `resync`.
    assert_eq!(paths[..2], ["inbox/two", "inbox/three"], "{after:?}");
    assert!(paths[2..].contains(&"inbox/while-down"), "{after:?}");
    assert_eq!(after.last().unwrap()["kind"], "resync", "{after:?}");
    // The watch was restored from SQL.
    std::fs::write(w.join("four"), b"4").unwrap();
    let more = drain(&d, "c", 2).await;
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(more[0]["path"], "inbox/four");
    assert!(more[0]["seq"].as_i64().unwrap() > after.last().unwrap()["seq"].as_i64().unwrap());
}

async fn containers_named(d: &TestDaemon, prefix: &str) -> Vec<Value> {
    let all = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    all.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap_or("").starts_with(prefix))
        .cloned()
        .collect()
}

async fn until_count(d: &TestDaemon, prefix: &str, n: usize, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = containers_named(d, prefix).await;
        if c.len() >= n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}: {} containers, want {n}\n{}",
            c.len(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_runs_one_container_per_new_file_and_a_self_writing_one_does_not_loop() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("trig/in")).unwrap();
    std::fs::create_dir_all(d.array.join("trig/self")).unwrap();
    // Reads the new file (read-only volume); the event comes as environment variables.
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "per-file", "path": "trig/in", "trigger": {"container": {
            "image": "busybox",
            "command": ["sh", "-c", "echo \"got $INARRAY_EVENT_KIND $INARRAY_EVENT_PATH\"; cat \"/in/${INARRAY_EVENT_PATH##*/}\""],
            "volumes": [{"source": "trig/in", "target": "/in", "read_only": true}],
        }}})),
    )
    .await;
    for i in 0..3 {
        // A name that would be dangerous in a shell command line: it stays data.
        std::fs::write(
            d.array.join(format!("trig/in/f{i};$(id)")),
            format!("body{i}"),
        )
        .unwrap();
    }
    let runs = until_count(&d, "per-file.ev-", 3, 60).await;
    for c in &runs {
        let id = c["id"].as_str().unwrap();
        d.wait_for(id, 60, |c| c["state"] == "exited").await;
        let logs = d.logs(id).await;
        assert!(logs.contains("got close_write trig/in/f"), "{logs}");
        assert!(logs.contains("body"), "{logs}");
        assert!(
            !logs.contains("uid="),
            "the name was run as a command: {logs}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        containers_named(&d, "per-file.ev-").await.len(),
        3,
        "one per file"
    );

    // Writes its output next to its input, inside the watched directory.
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(
            json!({"name": "selfw", "path": "trig/self", "trigger": {"container": {
                "image": "busybox",
                "command": ["sh", "-c", "echo done > \"/data/${INARRAY_EVENT_PATH##*/}.out\""],
                "volumes": [{"source": "trig/self", "target": "/data"}],
            }}}),
        ),
    )
    .await;
    std::fs::write(d.array.join("trig/self/input"), b"x").unwrap();
    let first = until_count(&d, "selfw.ev-", 1, 60).await;
    d.wait_for(first[0]["id"].as_str().unwrap(), 60, |c| {
        c["state"] == "exited"
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(d.array.join("trig/self/input.out")).unwrap(),
        "done\n"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let runs = containers_named(&d, "selfw.ev-").await;
    assert_eq!(
        runs.len(),
        1,
        "the container's own write retriggered it: {runs:?}"
    );
    // The output's event was still logged (and delivered to subscribers).
    let log = d.ok(Method::GET, "/v1/events?max=10000", None).await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "trig/self/input.out"),
        "{log}"
    );
    // A user's new file after the settle time triggers again: the watch is not switched off.
    std::fs::write(d.array.join("trig/self/second"), b"y").unwrap();
    until_count(&d, "selfw.ev-", 2, 60).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(containers_named(&d, "selfw.ev-").await.len(), 2);
}

/// A WebSocket client just big enough for the test: handshake, one server frame, masked frames.
mod ws {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    pub async fn connect(socket: &std::path::Path, path: &str) -> UnixStream {
        let mut s = UnixStream::connect(socket).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        s
    }

    /// A server frame's (opcode, payload).
    pub async fn read(s: &mut UnixStream) -> (u8, Vec<u8>) {
        let b0 = s.read_u8().await.unwrap();
        let b1 = s.read_u8().await.unwrap();
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let len = match b1 & 0x7f {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut p = vec![0; len];
        s.read_exact(&mut p).await.unwrap();
        (b0 & 0x0f, p)
    }

    pub async fn send_text(s: &mut UnixStream, text: &str) {
        let mask = [7u8, 1, 9, 3];
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&f).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_a_websocket_delivers_and_takes_acks() {
    let d = TestDaemon::start().await;
    std::fs::create_dir_all(d.array.join("wsin")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "wsin", "path": "wsin", "events": ["close_write"]})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "ws", "watches": ["wsin"]})),
    )
    .await;
    let mut s = ws::connect(&d.socket, "/v1/subscriptions/ws/ws").await;
    std::fs::write(d.array.join("wsin/hello"), b"hi").unwrap();
    let (op, payload) = tokio::time::timeout(Duration::from_secs(10), ws::read(&mut s))
        .await
        .expect("a delivery within 10 s");
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["events"][0]["path"], "wsin/hello", "{v}");
    let seq = v["events"][0]["seq"].as_i64().unwrap();
    ws::send_text(&mut s, &format!("{{\"ack\": {seq}}}")).await;
    let (_, reply) = ws::read(&mut s).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&reply).unwrap()["acked"],
        seq
    );
    ws::send_text(&mut s, "{\"nack\": 1}").await;
    let (_, reply) = ws::read(&mut s).await;
    assert!(String::from_utf8_lossy(&reply).contains("error"));
    let sub = d.ok(Method::GET, "/v1/subscriptions/ws", None).await;
    assert_eq!(sub["acked"], seq, "{sub}");
    // Unknown subscription: 404 before any upgrade.
    let msg = d
        .fails(Method::GET, "/v1/subscriptions/nope/ws", None, 404)
        .await;
    assert!(msg.contains("no such subscription"), "{msg}");
}

/// Debian's nats-server with JetStream, on a loopback port of its own; killed when dropped.
struct NatsServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl NatsServer {
    fn start(dir: &Path, port: u16) -> Self {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn restart(&mut self) {
        self.stop();
        *self = Self::start(&self.dir.clone(), self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn stream_messages(&self, stream: &str) -> u64 {
        let url = format!("nats://127.0.0.1:{}", self.port);
        let mut c = inarray_events::nats::Conn::connect(&url).await.unwrap();
        let r = c
            .request(&format!("$JS.API.STREAM.INFO.{stream}"), b"")
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&r).unwrap();
        v["state"]["messages"].as_u64().unwrap_or(0)
    }

    async fn message(&self, stream: &str, seq: u64) -> (String, Value) {
        let url = format!("nats://127.0.0.1:{}", self.port);
        let mut c = inarray_events::nats::Conn::connect(&url).await.unwrap();
        let r = c
            .request(
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                json!({"seq": seq}).to_string().as_bytes(),
            )
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&r).unwrap();
        let data = v["message"]["data"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"));
        let out = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut p| {
                use std::io::Write;
                p.stdin.take().unwrap().write_all(data.as_bytes())?;
                p.wait_with_output()
            })
            .unwrap();
        (
            v["message"]["subject"].as_str().unwrap().to_owned(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn until_messages(n: &NatsServer, want: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = n.stream_messages("INARRAY").await;
        if got >= want {
            assert_eq!(got, want, "duplicates in the stream");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {want} messages in the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_to_nats_jetstream_and_survive_its_restart() {
    let mut d = TestDaemon::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = NatsServer::start(&d.tmp.path().join("jetstream"), port);
    let cfg = d.tmp.path().join("inarray.toml");
    std::fs::write(
        &cfg,
        format!(
            "[events.nats]\nurl = \"nats://127.0.0.1:{port}\"\nsubject = \"inarray.ev\"\nstream = \"INARRAY\"\n"
        ),
    )
    .unwrap();
    d.kill9();
    d.config = Some(cfg);
    d.launch().await;
    std::fs::create_dir_all(d.array.join("natsin")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "nw", "path": "natsin", "events": ["close_write"]})),
    )
    .await;
    for i in 0..5 {
        std::fs::write(d.array.join(format!("natsin/f{i}")), b"x").unwrap();
    }
    until_messages(&nats, 5, 20).await;
    let (subject, ev) = nats.message("INARRAY", 1).await;
    assert_eq!(subject, "inarray.ev.nw");
    assert_eq!(ev["path"], "natsin/f0", "{ev}");
    assert_eq!(ev["kind"], "close_write");
    // The server goes away; events wait in the log and are published when it is back.
    nats.stop();
    for i in 5..8 {
        std::fs::write(d.array.join(format!("natsin/f{i}")), b"x").unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart();
    until_messages(&nats, 8, 60).await;
    let (_, last) = nats.message("INARRAY", 8).await;
    assert_eq!(last["path"], "natsin/f7", "{last}");
    let sub = d.ok(Method::GET, "/v1/subscriptions/nats", None).await;
    assert_eq!(sub["acked"], last["seq"], "{sub}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_waiting_polls_and_streams() {
    let mut d = TestDaemon::start().await;
    std::fs::create_dir_all(d.array.join("q")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "q", "path": "q"})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "q"})),
    )
    .await;
    // A long-poll, a log read and a WebSocket, all waiting.
    let c1 = d.client();
    let poll = tokio::spawn(async move {
        c1.json(Method::GET, "/v1/subscriptions/q/events?wait=120", None)
            .await
    });
    let c2 = d.client();
    let read = tokio::spawn(async move { c2.json(Method::GET, "/v1/events?wait=120", None).await });
    let _ws = ws::connect(&d.socket, "/v1/subscriptions/q/ws").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = d.child.take().unwrap();
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let _ = poll.await.unwrap();
    assert_eq!(read.await.unwrap().unwrap(), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_removes_watches_and_tails_events() {
    let d = TestDaemon::start().await;
    std::fs::create_dir_all(d.array.join("cli/in")).unwrap();
    let host = format!("unix:{}", d.socket.display());
    let cli = |args: &[&str]| d.cli(args);
    let (ok, out, err) = cli(&["watch", "add", "cw", "cli/in", "--include", "*.txt"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("cw watching 1 directories"), "{out}");
    let (ok, _, err) = cli(&["watch", "add", "bad", "../etc"]);
    assert!(!ok && err.contains("path"), "{err}");
    let (ok, out, _) = cli(&["watch", "ls"]);
    assert!(ok && out.contains("cw") && out.contains("cli/in"), "{out}");
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "cs", "watches": ["cw"]})),
    )
    .await;
    std::fs::write(d.array.join("cli/in/a.txt"), b"x").unwrap();
    // `events tail --subscription` prints the events as JSON lines and acknowledges them.
    let mut tail = Command::new(TestDaemon::bin())
        .arg("--host")
        .arg(&host)
        .args(["events", "tail", "--subscription", "cs"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["path"], "cli/in/a.txt", "{first}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = d.ok(Method::GET, "/v1/subscriptions/cs", None).await;
        if s["acked"].as_i64().unwrap() >= first["seq"].as_i64().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "not acknowledged: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let (ok, out, _) = cli(&["watch", "rm", "cw"]);
    assert!(ok && out.trim() == "cw", "{out}");
    let (ok, out, _) = cli(&["watch", "ls"]);
    assert!(ok && !out.contains("cli/in"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_as_server_sent_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = TestDaemon::start().await;
    std::fs::create_dir_all(d.array.join("sse")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "sse", "path": "sse", "events": ["close_write"]})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "es"})),
    )
    .await;
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(b"GET /v1/subscriptions/es/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    std::fs::write(d.array.join("sse/a"), b"x").unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("\"path\":\"sse/a\"") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert!(text.contains("event: close_write"), "{text}");
    let seq: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no id line: {text}"));
    let sub = d
        .ok(
            Method::POST,
            "/v1/subscriptions/es/ack",
            Some(json!({"seq": seq})),
        )
        .await;
    assert_eq!(sub["acked"], seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_trigger_hands_every_event_to_exactly_one_container() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("batch/in")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "b", "path": "batch/in", "trigger": {
            "mode": "batch", "max_batch": 4,
            "container": {
                "image": "busybox",
                "command": ["sh", "-c", "echo \"count=$INARRAY_EVENT_COUNT watch=$INARRAY_WATCH\"; echo \"$INARRAY_EVENTS\""],
            },
        }})),
    )
    .await;
    let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    for n in &names {
        std::fs::write(d.array.join("batch/in").join(n), n).unwrap();
    }
    // Every event in exactly one batch of at most 4: at least ceil(10 / 4) containers.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen: Vec<String> = Vec::new();
    let mut batches = 0;
    while seen.len() < names.len() {
        assert!(
            Instant::now() < deadline,
            "events seen {seen:?} in {batches} batches\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.clear();
        batches = 0;
        for c in containers_named(&d, "b.ev-").await {
            let id = c["id"].as_str().unwrap();
            d.wait_for(id, 60, |c| c["state"] == "exited").await;
            let logs = d.logs(id).await;
            let mut lines = logs.lines();
            let head = lines.next().unwrap_or_default();
            let events: Vec<Value> = serde_json::from_str(lines.next().unwrap_or("[]"))
                .unwrap_or_else(|e| panic!("{e}: {logs}"));
            assert_eq!(head, format!("count={} watch=b", events.len()), "{logs}");
            assert!((1..=4).contains(&events.len()), "batch of {}", events.len());
            for e in &events {
                assert_eq!(e["kind"], "close_write", "{e}");
                seen.push(
                    e["path"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("batch/in/")
                        .into(),
                );
            }
            batches += 1;
        }
    }
    seen.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(seen, want, "each file in exactly one batch");
    assert!(batches >= 3, "{batches} batches for 10 events of at most 4");
    // Nothing more fires afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(containers_named(&d, "b.ev-").await.len(), batches);
}
