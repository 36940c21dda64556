//! A headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol: a small
//! client over one WebSocket (the handshake and frames written here, as the other tests' WebSocket
//! clients are), blocking, with generous deadlines. The browser runs with a fresh profile in a
//! temp dir and is killed when the `Browser` is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The browser's process group, killed whole when dropped (a launch that fails half-way too).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // The group the browser leads (its renderers, GPU and utility processes): ours alone.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

pub struct Browser {
    child: Group,
    profile: tempfile::TempDir,
    ws: TcpStream,
    next_id: u64,
    /// Events seen while waiting for replies (method, params), kept for the test to inspect.
    pub events: Vec<(String, Value)>,
}

fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).expect("devtools reply"),
            1,
            "devtools closed"
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One plain HTTP request to the DevTools endpoint; returns the body.
fn devtools_http(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Its server keeps the connection open: read the head, then Content-Length bytes.
    let head = read_http_head(&mut s).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

impl Browser {
    /// Starts Chromium headless (as root it needs --no-sandbox) and attaches to a new page.
    pub fn launch() -> Self {
        let profile = tempfile::Builder::new()
            .prefix("inarray-chromium-")
            .tempdir()
            .unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Its own process group: dropping the browser kills its helpers too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Group)
            .expect("chromium (Debian package `chromium`, installed by ./dev test)");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        // A page target of our own, then its WebSocket.
        let target: Value =
            serde_json::from_str(&devtools_http(port, "PUT", "/json/new?about:blank"))
                .expect("a new target");
        let url = target["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
        ws.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            ws,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let head = read_http_head(&mut ws);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut b = Self {
            child,
            profile,
            ws,
            next_id: 1,
            events: Vec::new(),
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// The browser's main process id (for memory figures).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn profile_dir(&self) -> &Path {
        self.profile.path()
    }

    fn send_frame(&mut self, payload: &[u8]) {
        let mask = [0x5au8, 0x13, 0x77, 0xc1];
        let mut f = vec![0x81];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&f).unwrap();
    }

    /// One whole message (continuations joined).
    fn read_message(&mut self) -> Vec<u8> {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.ws.read_exact(&mut h).expect("a devtools frame");
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.ws.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.ws.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut data = vec![0u8; len];
            self.ws.read_exact(&mut data).unwrap();
            match h[0] & 0x0f {
                0x8 => panic!("devtools closed the connection"),
                0x9 | 0xa => continue,
                _ => msg.extend_from_slice(&data),
            }
            if h[0] & 0x80 != 0 {
                return msg;
            }
        }
    }

    /// A CDP command and its result (an error reply fails the test).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"id": id, "method": method, "params": params}).to_string();
        self.send_frame(body.as_bytes());
        loop {
            let v: Value = serde_json::from_slice(&self.read_message()).unwrap();
            if v["id"] == id {
                if !v["error"].is_null() {
                    panic!("{method}: {}", v["error"]);
                }
                return v["result"].clone();
            }
            if let Some(m) = v["method"].as_str() {
                self.events.push((m.to_owned(), v["params"].clone()));
                if self.events.len() > 10_000 {
                    self.events.drain(..5_000);
                }
            }
        }
    }

    /// Evaluates an expression in the page (promises awaited); returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; returns its value. Fails after `secs`.
    pub fn wait_for(&mut self, what: &str, expr: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {secs} s for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            &format!("{url} to load"),
            "document.readyState === 'complete'",
            60,
        );
    }

    /// Types text into the focused element, as a user's keyboard would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    pub fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13});
            if kind == "keyDown" {
                p["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    /// A PNG of the page as it is.
    pub fn screenshot(&mut self, path: &Path) -> PathBuf {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
        path.to_owned()
    }

    /// Every cookie the browser holds (HttpOnly ones too).
    pub fn cookies(&mut self) -> Vec<Value> {
        self.call("Network.getAllCookies", json!({}))["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The proportional memory (PSS, shared pages split between sharers) of the browser's
    /// processes — every process of its group — in KiB.
    pub fn memory_kib(&self) -> u64 {
        let pgid = self.child.0.id() as i32;
        let mut total = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok()
                != Some(nix::unistd::Pid::from_raw(pgid))
            {
                continue;
            }
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
                total += s
                    .lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }
}
