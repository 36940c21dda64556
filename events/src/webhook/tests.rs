//! Webhooks against loopback receivers: plain HTTP (a refusal, then the same batch again, signed)
//! and HTTPS with a private CA (refused until the operator's CA file is configured).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inarray_runtime::volumes::ArrayRoot;
use inarray_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::{Event, EventsOptions, Kind, WatchSpec};

#[test]
fn urls() {
    let u = parse_url("http://127.0.0.1:8080/hook?x=1").unwrap();
    assert_eq!(
        (u.https, u.host.as_str(), u.port, u.path.as_str()),
        (false, "127.0.0.1", 8080, "/hook?x=1")
    );
    let u = parse_url("https://hooks.example/in").unwrap();
    assert_eq!((u.https, u.port, u.path.as_str()), (true, 443, "/in"));
    assert_eq!(parse_url("http://h").unwrap().path, "/");
    let long = format!("http://h/{}", "a".repeat(2048));
    for bad in [
        "ftp://h",
        "http://",
        "http://u@h/",
        "http://h:99999/",
        "http://h/a b",
        long.as_str(),
    ] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn signature_is_hmac_sha256() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// Events over `<dir>/array`, with a watch `w1` of `close_write` on `array/w`.
async fn setup(dir: &Path, webhook_ca_file: Option<PathBuf>) -> Events {
    let array = dir.join("array");
    std::fs::create_dir_all(array.join("w")).unwrap();
    let store = Store::open(&dir.join("state.db")).await.unwrap();
    let root = Arc::new(ArrayRoot::open(&array, &[]).unwrap());
    let opts = EventsOptions {
        webhook_ca_file,
        ..EventsOptions::default()
    };
    let ev = Events::start(store, root, None, opts).await.unwrap();
    let mut w: WatchSpec =
        serde_json::from_value(serde_json::json!({"name": "w1", "path": "w"})).unwrap();
    w.events = vec![Kind::CloseWrite];
    ev.create_watch(w).await.unwrap();
    ev
}

async fn subscribe(ev: &Events, name: &str, url: &str) {
    ev.create_subscription(
        serde_json::from_value(serde_json::json!({"name": name, "webhook": {
            "url": url, "secret": "s3cret"}}))
        .unwrap(),
    )
    .await
    .unwrap();
}

/// Reads one request (its head, lower-cased, and its body by Content-Length) and answers it
/// with `status` and an empty body.
async fn receive(s: &mut (impl AsyncRead + AsyncWrite + Unpin), status: &str) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let k = s.read(&mut chunk).await.unwrap();
        assert!(k > 0, "the client closed before a whole request");
        buf.extend_from_slice(&chunk[..k]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let k = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..k]);
            }
            break (head, buf[i + 4..i + 4 + len].to_vec());
        }
    };
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.flush().await;
    (head, body)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the receiver heard nothing in 10 s")
        .unwrap()
}

async fn wait_acked(ev: &Events, sub: &str, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ev.subscription(sub).unwrap().acked < seq {
        assert!(Instant::now() < deadline, "not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook that fails once gets the same batch again, signed; a 2xx acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_until_taken_and_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ev = setup(dir.path(), None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        for status in ["500 Internal Server Error", "200 OK"] {
            let (mut s, _) = listener.accept().await.unwrap();
            tx.send(receive(&mut s, status).await).unwrap();
        }
    });
    subscribe(&ev, "hook", &format!("http://127.0.0.1:{port}/in")).await;
    std::fs::write(dir.path().join("array/w/a"), b"1").unwrap();
    let (h1, b1) = next(&mut rx).await;
    let (h2, b2) = next(&mut rx).await;
    assert_eq!(b1, b2, "the refused batch comes again");
    let sig = signature("s3cret", &b2);
    assert!(h1.contains(&format!("x-inarray-signature: {sig}")), "{h1}");
    assert!(h2.starts_with("post /in http/1.1"), "{h2}");
    assert!(h2.contains("x-inarray-subscription: hook"), "{h2}");
    let events: Vec<Event> = serde_json::from_slice(&b2).unwrap();
    assert_eq!(events[0].path, "w/a");
    assert!(
        h2.contains(&format!("x-inarray-seq-range: {0}-{0}", events[0].seq)),
        "{h2}"
    );
    wait_acked(&ev, "hook", events[0].seq).await;
    ev.stop().await;
}

/// Makes a CA (self-signed) and a certificate for 127.0.0.1 it signed, with the openssl CLI, in
/// `dir`: `ca.pem`, `server.pem`, `server.key`.
fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "openssl req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=hook-ca
             openssl req {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -out server.pem -days 2 -extfile server.ext"
        ))
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) is needed for the TLS tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the TLS receiver reports: a request it answered, or a handshake that failed.
enum Heard {
    Request(String, Vec<u8>),
    HandshakeFailed(String),
}

/// An HTTPS receiver on loopback answering every request 200; returns its port.
async fn tls_receiver(dir: &Path) -> (u16, mpsc::UnboundedReceiver<Heard>) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let heard = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let (head, body) = receive(&mut tls, "200 OK").await;
                    Heard::Request(head, body)
                }
                Err(e) => Heard::HandshakeFailed(e.to_string()),
            };
            if tx.send(heard).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// An HTTPS webhook whose certificate a private CA signed: refused (never sent) while the node
/// does not trust that CA; delivered, signed and acknowledged once `webhook_ca_file` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_trust_the_configured_ca() {
    let pki = tempfile::tempdir().unwrap();
    make_certs(pki.path());
    let (port, mut heard) = tls_receiver(pki.path()).await;
    let url = format!("https://127.0.0.1:{port}/in");

    // Without the CA file: the handshake fails, nothing is delivered or acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let ev = setup(dir.path(), None).await;
    subscribe(&ev, "hook", &url).await;
    std::fs::write(dir.path().join("array/w/a"), b"1").unwrap();
    match next(&mut heard).await {
        Heard::HandshakeFailed(_) => {}
        Heard::Request(head, _) => panic!("a request went to an untrusted server: {head}"),
    }
    assert_eq!(ev.subscription("hook").unwrap().acked, 0);
    ev.stop().await;

    // With it: delivered over TLS, signed, acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let ev = setup(dir.path(), Some(pki.path().join("ca.pem"))).await;
    subscribe(&ev, "hook", &url).await;
    std::fs::write(dir.path().join("array/w/b"), b"2").unwrap();
    let (head, body) = loop {
        match next(&mut heard).await {
            Heard::Request(head, body) => break (head, body),
            // The first events service's retries before it stopped may still be queued.
            Heard::HandshakeFailed(e) => eprintln!("an earlier handshake failed: {e}"),
        }
    };
    assert!(head.starts_with("post /in http/1.1"), "{head}");
    let sig = signature("s3cret", &body);
    assert!(
        head.contains(&format!("x-inarray-signature: {sig}")),
        "{head}"
    );
    let events: Vec<Event> = serde_json::from_slice(&body).unwrap();
    assert_eq!(events[0].path, "w/b");
    wait_acked(&ev, "hook", events[0].seq).await;
    ev.stop().await;
}
