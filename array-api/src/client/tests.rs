//! The client's upgrade against a scripted server on a unix socket or TCP (no daemon).

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

/// Reads one request head (up to the blank line), lower-cased.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "request head cut short");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// A listener in a fresh directory and a client for it.
fn listener() -> (tempfile::TempDir, UnixListener, Client) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("api.sock");
    let l = UnixListener::bind(&path).unwrap();
    (dir, l, Client::new(Listen::Unix(path)))
}

/// The server side of an upgrade: 101, then an echo until the client half-closes, then " bye".
async fn switch_and_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> String {
    let head = read_head(&mut s).await;
    // Bytes of the stream sent in the same write as the 101 reach the client too.
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhello ",
    )
    .await
    .unwrap();
    // Echo until the client half-closes, then say goodbye on the still-open direction.
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    s.write_all(&got).await.unwrap();
    s.write_all(b" bye").await.unwrap();
    s.shutdown().await.unwrap();
    head
}

/// The client's side against [`switch_and_echo`].
async fn upgrade_and_talk(c: &Client, server: tokio::task::JoinHandle<String>) {
    let mut stream = c
        .upgrade(Method::POST, "/v1/execs/abc/start", None)
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello ping bye");
    let head = server.await.unwrap();
    assert!(
        head.starts_with("post /v1/execs/abc/start http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: tcp\r\n"), "{head}");
}

#[tokio::test]
async fn upgrade_switches_to_a_raw_stream_that_half_closes() {
    let (_dir, l, c) = listener();
    let server = tokio::spawn(async move { switch_and_echo(l.accept().await.unwrap().0).await });
    upgrade_and_talk(&c, server).await;
}

#[tokio::test]
async fn upgrade_over_tcp() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = Client::new(Listen::Tcp(l.local_addr().unwrap()));
    let server = tokio::spawn(async move { switch_and_echo(l.accept().await.unwrap().0).await });
    upgrade_and_talk(&c, server).await;
}

#[tokio::test]
async fn upgrade_sends_the_json_body_and_the_token() {
    let (_dir, l, c) = listener();
    let c = c.with_token(Some("s3cret".into()));
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let mut body = [0u8; 10];
        s.read_exact(&mut body).await.unwrap();
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .await
        .unwrap();
        (head, body)
    });
    let body = serde_json::json!({"rows": 1});
    let _stream = c.upgrade(Method::POST, "/x", Some(&body)).await.unwrap();
    let (head, got) = server.await.unwrap();
    assert_eq!(&got, br#"{"rows":1}"#);
    assert!(
        head.contains("\r\nauthorization: bearer s3cret\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\ncontent-length: 10\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn a_refused_upgrade_carries_the_daemons_message() {
    let (_dir, l, c) = listener();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_head(&mut s).await;
        let body = r#"{"error":{"code":"conflict","message":"container web is not running"}}"#;
        let reply = format!(
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
    });
    let err = c
        .upgrade(Method::POST, "/v1/containers/web/attach", None)
        .await
        .unwrap_err();
    match err {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(code, "conflict");
            assert_eq!(message, "container web is not running");
        }
        other => panic!("expected the API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_success_without_switching_is_an_error() {
    let (_dir, l, c) = listener();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
    });
    let err = c
        .upgrade(Method::POST, "/v1/execs/abc/start", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Reply(m) if m.contains("200 OK") && m.contains("instead of switching")),
        "{err:?}"
    );
}

#[tokio::test]
async fn plain_calls_still_work_on_a_connection_driven_with_upgrades() {
    let (_dir, l, c) = listener();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        assert!(!head.contains("upgrade"), "{head}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
            .await
            .unwrap();
    });
    let v = c.json(Method::GET, "/v1/health", None).await.unwrap();
    assert_eq!(v, serde_json::json!({"ok": true}));
}

/// A CA and a certificate for 127.0.0.1 it signed, with the openssl CLI, in `dir`: `ca.pem`,
/// `server.pem`, `server.key`.
fn make_certs(dir: &std::path::Path) {
    make_certs_for(dir, "IP:127.0.0.1");
}

/// [`make_certs`] with the server certificate made out to `san` (`subjectAltName` syntax).
fn make_certs_for(dir: &std::path::Path, san: &str) {
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "openssl req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca
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

#[tokio::test]
async fn upgrade_over_tls_half_closes_too() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let config = crate::serve::tls_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TlsOptions {
        ca: dir.path().join("ca.pem"),
        cert: None,
        key: None,
    };
    let c = Client::new(Listen::Tcp(l.local_addr().unwrap()))
        .with_tls(Some(&tls))
        .unwrap();
    let server = tokio::spawn(async move {
        let tcp = l.accept().await.unwrap().0;
        switch_and_echo(acceptor.accept(tcp).await.unwrap()).await
    });
    upgrade_and_talk(&c, server).await;
}

/// A TLS listener on 127.0.0.1 whose certificate is made out to `san`, and the CA to trust.
async fn tls_server(
    san: &str,
) -> (
    tempfile::TempDir,
    tokio::net::TcpListener,
    tokio_rustls::TlsAcceptor,
    TlsOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    make_certs_for(dir.path(), san);
    let config = crate::serve::tls_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TlsOptions {
        ca: dir.path().join("ca.pem"),
        cert: None,
        key: None,
    };
    (dir, l, tokio_rustls::TlsAcceptor::from(config), tls)
}

#[tokio::test]
async fn tls_checks_the_certificate_for_the_dns_name_connected_to() {
    let (_dir, l, acceptor, tls) = tls_server("DNS:localhost").await;
    let port = l.local_addr().unwrap().port();
    let c = Client::new(format!("tcp://localhost:{port}").parse::<Host>().unwrap())
        .with_tls(Some(&tls))
        .unwrap();
    let server = tokio::spawn(async move {
        let tcp = l.accept().await.unwrap().0;
        switch_and_echo(acceptor.accept(tcp).await.unwrap()).await
    });
    upgrade_and_talk(&c, server).await;
}

#[tokio::test]
async fn tls_refuses_a_certificate_made_out_to_another_name() {
    for (san, host) in [
        // A name the certificate does not have.
        ("DNS:other.example", "localhost"),
        // The address, where the certificate has only a name.
        ("DNS:localhost", "127.0.0.1"),
    ] {
        let (_dir, l, acceptor, tls) = tls_server(san).await;
        let port = l.local_addr().unwrap().port();
        let c = Client::new(format!("tcp://{host}:{port}").parse::<Host>().unwrap())
            .with_tls(Some(&tls))
            .unwrap();
        let server = tokio::spawn(async move {
            let tcp = l.accept().await.unwrap().0;
            acceptor.accept(tcp).await.is_ok()
        });
        let err = c.json(Method::GET, "/v1/health", None).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Tls { .. })
                && err.to_string().contains("not valid for name"),
            "{san} for {host}: {err}"
        );
        assert!(
            !server.await.unwrap(),
            "the handshake failed on the server too"
        );
    }
}

#[test]
fn hosts_by_socket_address_or_name() {
    let tcp = |name: &str, port| Host::Tcp {
        name: name.into(),
        port,
    };
    for (text, want) in [
        (
            "unix:/run/inarray/inarray.sock",
            Host::Unix("/run/inarray/inarray.sock".into()),
        ),
        ("tcp://array-1.example:8443", tcp("array-1.example", 8443)),
        ("tcp:array-1:8443", tcp("array-1", 8443)),
        ("tcp://10.0.0.5:1", tcp("10.0.0.5", 1)),
        ("tcp://[::1]:8443", tcp("::1", 8443)),
        ("tcp:[fd00::5]:80", tcp("fd00::5", 80)),
    ] {
        assert_eq!(text.parse::<Host>().unwrap(), want, "{text}");
    }
    assert_eq!(tcp("::1", 80).to_string(), "tcp://[::1]:80");
    assert_eq!(tcp("a.example", 80).to_string(), "tcp://a.example:80");
    for bad in [
        "tcp://a.example",
        "tcp://:80",
        "tcp://a.example:http",
        "tcp://a b:80",
        "tcp://[::1:80",
        "tcp://[a.example]:80",
        "http://a.example:80",
        "unix:relative.sock",
        "tcp://a..b:80",
    ] {
        assert!(bad.parse::<Host>().is_err(), "{bad}");
    }
    assert_eq!(
        Host::from(Listen::Tcp("127.0.0.1:9".parse().unwrap())),
        tcp("127.0.0.1", 9)
    );
}
