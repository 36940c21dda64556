//! The web console (`/ui/`) against the real daemon over TCP: in a real headless Chromium driven
//! over the DevTools protocol (`common::browser`) — sign in with a token, see a container the API
//! started, stop it from the page, follow its log, run a job now and see its run, type into an
//! exec terminal — and its defences: no token in a URL or the page's storage, the cookie's flags,
//! a cross-site form post refused, the CSP header, hostile text shown as text. Screenshots of each
//! page go to `target/tmp/console-e2e/` (printed).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::daemon::{Method, TestDaemon};
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_tcp() -> (TestDaemon, u16) {
    let port = free_port();
    let d = TestDaemon::start_with(vec!["--listen".into(), format!("tcp:127.0.0.1:{port}")]).await;
    (d, port)
}

async fn token(d: &TestDaemon, name: &str, scope: &str) -> String {
    let v = d
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name, "scope": scope})),
        )
        .await;
    v["token"].as_str().unwrap().to_owned()
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-e2e");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One raw HTTP/1.1 exchange over TCP: (status, head in lower case, body).
fn raw(port: u16, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn get(port: u16, path: &str, extra: &str) -> (u16, String, String) {
    raw(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
        ),
    )
}

fn post(port: u16, path: &str, extra: &str) -> (u16, String, String) {
    raw(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
        ),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

async fn state_of(d: &TestDaemon, id: &str) -> String {
    d.container(id).await["state"].as_str().unwrap().to_owned()
}

/// The page's view of a selector's text.
fn text_of(sel: &str) -> String {
    format!("((document.querySelector({sel:?}) || {{}}).textContent || '')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_drives_the_array_in_a_real_browser() {
    let (d, port) = start_tcp().await;
    d.with_busybox().await;
    let secret = token(&d, "console", "operate").await;
    let shots = out_dir();
    println!("screenshots: {}", shots.display());
    let base = format!("http://127.0.0.1:{port}/ui/");

    let mut b = Browser::launch();
    b.call("Log.enable", json!({}));
    b.navigate(&base);
    b.wait_for(
        "the sign-in form",
        "!document.getElementById('signin').hidden",
        60,
    );
    b.screenshot(&shots.join("signin.png"));
    // Sign in as a user would: type the token into the form and submit it.
    b.eval("document.getElementById('token').focus()");
    b.type_text(&secret);
    b.eval("document.getElementById('signin').requestSubmit()");
    b.wait_for(
        "the home page",
        "document.body.dataset.signedIn === 'yes' && !!document.querySelector('section.engine')",
        60,
    );

    // A container started through the API appears on the home page.
    let c = d
        .run(json!({
            "name": "console-a",
            "image": "busybox",
            "command": ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done"],
        }))
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let row = "[data-name=\"console-a\"]";
    b.wait_for(
        "console-a on the home page, running",
        &format!("(document.querySelector('{row} .c-state') || {{}}).textContent === 'running'"),
        90,
    );
    // The engines' and the gateway's charts draw live figures.
    b.wait_for(
        "live engine figures",
        "[...document.querySelectorAll('section.engine .val')].some(v => v.textContent !== '–')",
        60,
    );
    let engines = b.eval(
        "[...document.querySelectorAll('section.engine')].map(s => s.dataset.engine).join(',')",
    );
    assert!(engines.as_str().unwrap().contains("storage"), "{engines}");
    assert!(b
        .eval("!!document.querySelector('section.nfs')")
        .as_bool()
        .unwrap());
    b.screenshot(&shots.join("home.png"));

    // Stop it from the page: the API sees it stop.
    b.eval(&format!(
        "document.querySelector('{row} button.stop').click()"
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    while state_of(&d, &id).await != "exited" {
        assert!(Instant::now() < deadline, "the page's stop did not stop it");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.wait_for(
        "the page to show it exited",
        &format!("(document.querySelector('{row} .c-state') || {{}}).textContent === 'exited'"),
        60,
    );

    // Its page follows its log once it runs again.
    d.ok(Method::POST, &format!("/v1/containers/{id}/start"), None)
        .await;
    b.navigate(&format!("{base}#/containers/{id}"));
    b.wait_for(
        "the container page",
        "!!document.getElementById('logs')",
        60,
    );
    b.wait_for(
        "the log",
        &format!("{}.includes('tick-')", text_of("#logs")),
        60,
    );
    let seen = b.eval(&text_of("#logs"));
    let last = seen.as_str().unwrap().lines().count();
    b.wait_for(
        "the log followed (new lines while the page is open)",
        &format!("{}.split('\\n').length > {} + 2", text_of("#logs"), last),
        60,
    );
    b.screenshot(&shots.join("container.png"));

    // A terminal: `echo hi` typed into an exec's terminal, its output read back from the page.
    b.navigate(&format!("{base}#/containers/{id}/exec"));
    b.wait_for(
        "the exec connected",
        "document.querySelector('#view .count') && document.querySelector('#view .count').textContent.includes('connected')",
        60,
    );
    b.wait_for(
        "a shell prompt",
        "(document.querySelector('.xterm-rows') || {}).textContent.includes('#')",
        60,
    );
    b.eval("document.querySelector('.xterm-helper-textarea').focus()");
    b.type_text("echo hi");
    b.press_enter();
    b.wait_for(
        "`hi` on a line of its own",
        "[...document.querySelectorAll('.xterm-rows > div')].some(r => r.textContent.trim() === 'hi')",
        60,
    );
    b.screenshot(&shots.join("terminal.png"));

    // Jobs: run one now from the list, see its run on its page, suspend it.
    d.ok(
        Method::POST,
        "/v1/jobs",
        Some(json!({
            "name": "console-job",
            "schedule": "0 0 1 1 *",
            "container": {"image": "busybox", "command": ["echo", "job-ran"]},
        })),
    )
    .await;
    b.navigate(&format!("{base}#/jobs"));
    let jrow = "[data-job=\"console-job\"]";
    b.wait_for(
        "the job listed",
        &format!("!!document.querySelector('{jrow}')"),
        60,
    );
    b.screenshot(&shots.join("jobs.png"));
    b.eval(&format!(
        "document.querySelector('{jrow} button.run').click()"
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let runs = d.ok(Method::GET, "/v1/jobs/console-job/runs", None).await;
        if runs.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the page's run now made no run");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.navigate(&format!("{base}#/jobs/console-job"));
    b.wait_for(
        "the run, succeeded, on the job's page",
        "[...document.querySelectorAll('#runs .run-state')].some(t => t.textContent === 'succeeded')",
        90,
    );
    b.screenshot(&shots.join("job.png"));
    b.eval("document.querySelector('#view button.suspend').click()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.ok(Method::GET, "/v1/jobs/console-job", None).await["suspend"] != true {
        assert!(
            Instant::now() < deadline,
            "the page's suspend did not suspend"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // File events stream in; exports are listed with their clients.
    std::fs::create_dir_all(d.array.join("share")).unwrap();
    d.ok(
        Method::POST,
        "/v1/watches",
        Some(json!({"name": "console-watch", "path": "share"})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/exports",
        Some(json!({"name": "media", "path": "share", "clients": [{"match": "10.0.0.0/8", "access": "rw"}]})),
    )
    .await;
    b.navigate(&format!("{base}#/events"));
    b.wait_for("the events page", "!!document.getElementById('events')", 60);
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(d.array.join("share/arrived.txt"), b"x").unwrap();
    b.wait_for(
        "the file event on the page",
        &format!("{}.includes('arrived.txt')", text_of("#events")),
        60,
    );
    b.screenshot(&shots.join("events.png"));
    b.navigate(&format!("{base}#/exports"));
    b.wait_for(
        "the export and its clients",
        &format!(
            "{}.includes('10.0.0.0/8')",
            text_of("[data-export=\"media\"]")
        ),
        60,
    );
    b.screenshot(&shots.join("exports.png"));

    // Hostile text is text: a label, a command and a log line with markup.
    let xss = d
        .run(json!({
            "name": "xss",
            "image": "busybox",
            "labels": {"note": "<script>window.__pwned=1</script>"},
            "command": ["sh", "-c", "echo '<img src=x onerror=window.__pwned=2>'; sleep 600"],
        }))
        .await;
    let xid = xss["id"].as_str().unwrap();
    b.navigate(&format!("{base}#/containers/{xid}"));
    b.wait_for(
        "the markup in the log, as text",
        &format!("{}.includes('<img src=x')", text_of("#logs")),
        60,
    );
    assert!(b
        .eval(&format!(
            "{}.includes('<script>window.__pwned=1</script>')",
            text_of(".facts")
        ))
        .as_bool()
        .unwrap());
    assert_eq!(b.eval("typeof window.__pwned"), "undefined");
    assert_eq!(
        b.eval("document.querySelectorAll('img, #view script').length"),
        0
    );

    // No token anywhere the page keeps things, nor in its URL; the cookie is HttpOnly, Strict,
    // and holds a session secret, not the token.
    let kept = b.eval(
        "JSON.stringify({l: localStorage.length, s: sessionStorage.length, url: location.href, c: document.cookie})",
    );
    let kept: Value = serde_json::from_str(kept.as_str().unwrap()).unwrap();
    assert_eq!(
        (kept["l"].as_u64(), kept["s"].as_u64()),
        (Some(0), Some(0)),
        "{kept}"
    );
    assert!(!kept["url"].as_str().unwrap().contains(&secret), "{kept}");
    assert!(
        !kept["c"].as_str().unwrap().contains("inarray_session"),
        "{kept}"
    );
    assert_eq!(
        b.eval(&format!(
            "document.documentElement.outerHTML.includes({secret:?})"
        )),
        false
    );
    let cookies = b.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "inarray_session")
        .expect("the session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_ne!(session["value"], secret.as_str());
    // No Content-Security-Policy violation on any page (xterm.js's styles included).
    let violations: Vec<String> = b
        .events
        .iter()
        .filter(|(m, _)| m == "Log.entryAdded")
        .map(|(_, p)| p["entry"]["text"].as_str().unwrap_or("").to_owned())
        .filter(|t| t.contains("Content Security Policy"))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");

    // A cross-site form post (from a page of another origin) is refused: the container runs on.
    let form = format!(
        "<form method=post action='http://127.0.0.1:{port}/v1/containers/{xid}/stop'></form>\
         <script>document.forms[0].submit()</script>"
    );
    b.call(
        "Page.navigate",
        json!({"url": format!("data:text/html,{}", form.replace('#', "%23"))}),
    );
    b.wait_for(
        "the daemon's refusal",
        "location.href.startsWith('http://127.0.0.1') && document.body && document.body.textContent.includes('unauthorized')",
        60,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state_of(&d, xid).await, "running");
    let audit = d.ok(Method::GET, "/v1/audit?limit=50", None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["route"] == "/v1/containers/{id}/stop" && a["status"] == 401),
        "{audit}"
    );
    drop(b);
}

/// The console's HTTP surface without a browser: headers, caching, the sign-in's cookie, the
/// CSRF rules of a cookie session, browsers refused on the unix socket, revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_same_origin_and_end_with_their_token() {
    let (d, port) = start_tcp().await;
    let read = token(&d, "viewer", "read").await;
    let op = token(&d, "operator", "operate").await;

    // The page and its files: public, with the policy headers, revalidated by ETag.
    let (status, head, body) = get(port, "/ui/", "");
    assert_eq!(status, 200, "{head}");
    assert!(
        body.contains("<script type=\"module\" src=\"app.js\">"),
        "{body}"
    );
    let csp = header(&head, "content-security-policy").expect("a CSP header");
    for part in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&head, "x-frame-options"), Some("deny"));
    let (_, js_head, _) = get(port, "/ui/app.js", "");
    assert!(header(&js_head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let etag = header(&js_head, "etag").unwrap().to_owned();
    let (status, _, body) = get(port, "/ui/app.js", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(get(port, "/ui/no-such-file.js", "").0, 404);
    // The data is not public.
    assert_eq!(get(port, "/v1/info", "").0, 401);

    // Sign-in: a bad token is 401; a good one sets an HttpOnly, Strict cookie (no Secure on
    // plain TCP) holding a fresh secret.
    let (status, _, _) = post(
        port,
        "/ui/session",
        "Authorization: Bearer inarray_nope\r\n",
    );
    assert_eq!(status, 401);
    let (status, head, body) = post(
        port,
        "/ui/session",
        &format!("Authorization: Bearer {read}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let set = header(&head, "set-cookie").unwrap().to_owned();
    assert!(
        set.contains("httponly") && set.contains("samesite=strict"),
        "{set}"
    );
    assert!(!set.contains("secure"), "{set}");
    assert!(!set.contains(&read.to_ascii_lowercase()), "{set}");
    let cookie_of = |set: &str| {
        let v = set.split(';').next().unwrap().trim().to_owned();
        // The head was lowercased; the secret is hex, so lowercase is its own form.
        format!("Cookie: {v}\r\n")
    };
    let viewer = cookie_of(&set);
    assert_eq!(get(port, "/v1/info", &viewer).0, 200);
    let origin = format!("Origin: http://127.0.0.1:{port}\r\n");
    // The session has its token's scope.
    let (status, _, body) = post(
        port,
        "/v1/containers/nope/stop",
        &format!("{viewer}{origin}X-Inarray-Console: 1\r\n"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("scope is read"), "{body}");

    let (_, head, _) = post(
        port,
        "/ui/session",
        &format!("Authorization: Bearer {op}\r\n"),
    );
    let operator = cookie_of(header(&head, "set-cookie").unwrap());
    // A cookie request that changes something must carry the console's header …
    let (status, _, body) = post(
        port,
        "/v1/containers/nope/stop",
        &format!("{operator}{origin}"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Inarray-Console"), "{body}");
    // … and come from this origin.
    let (status, _, body) = post(
        port,
        "/v1/containers/nope/stop",
        &format!("{operator}Origin: http://evil.example\r\nX-Inarray-Console: 1\r\n"),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = get(
        port,
        "/v1/info",
        &format!("{operator}Sec-Fetch-Site: cross-site\r\n"),
    );
    assert_eq!(status, 403);
    // Same origin with the header: the request reaches its handler.
    let (status, _, body) = post(
        port,
        "/v1/containers/nope/stop",
        &format!("{operator}{origin}X-Inarray-Console: 1\r\n"),
    );
    assert_eq!(status, 404, "{body}");
    // A WebSocket with the cookie must say where it comes from.
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _, body) = get(port, "/v1/execs/nope/start", &format!("{operator}{ws}"));
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = get(
        port,
        "/v1/execs/nope/start",
        &format!("{operator}{origin}{ws}"),
    );
    assert_eq!(status, 404, "{body}");
    // A read token cannot start an exec by the WebSocket's GET either.
    let (status, _, body) = get(
        port,
        "/v1/execs/nope/start",
        &format!("{viewer}{origin}{ws}"),
    );
    assert_eq!(status, 403, "{body}");
    // A GET without an upgrade starts nothing.
    let (status, _, _) = get(
        port,
        "/v1/execs/nope/start",
        &format!("Authorization: Bearer {op}\r\n"),
    );
    assert_eq!(status, 404);

    // Browsers are not served on the unix socket (whose peers are admin).
    let (status, body) = unix_get(&d, "/v1/info", "Origin: http://127.0.0.1:9\r\n");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("TCP listener"), "{body}");
    let (status, _) = unix_get(&d, "/ui/", "Sec-Fetch-Site: none\r\n");
    assert_eq!(status, 403);
    assert_eq!(unix_get(&d, "/v1/info", "").0, 200);

    // Sign-out ends the session; revoking the token ends its sessions.
    let (status, head, _) = raw(
        port,
        &format!(
            "DELETE /ui/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{viewer}{origin}X-Inarray-Console: 1\r\n\r\n"
        ),
    );
    assert_eq!(status, 204);
    assert!(header(&head, "set-cookie").unwrap().contains("max-age=0"));
    assert_eq!(get(port, "/v1/info", &viewer).0, 401);
    // A stale cookie is not an attack: a page reloaded with it many times is still served, and
    // the peer is not blocked (10 failures a minute would block it).
    for _ in 0..15 {
        assert_eq!(get(port, "/ui/app.js", &viewer).0, 200);
        assert_eq!(get(port, "/v1/info", &viewer).0, 401);
    }
    assert_eq!(get(port, "/v1/info", &operator).0, 200);
    d.ok(Method::DELETE, "/v1/tokens/operator", None).await;
    let (status, _, body) = get(port, "/v1/info", &operator);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
}

fn unix_get(d: &TestDaemon, path: &str, extra: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}
