//! The client's upgrade against a scripted server on a unix socket (no daemon).

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::*;

/// Reads one request head (up to the blank line), lower-cased.
async fn read_head(s: &mut UnixStream) -> String {
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

#[tokio::test]
async fn upgrade_switches_to_a_raw_stream_that_half_closes() {
    let (_dir, l, c) = listener();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
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
    });
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
