//! Pulls against a scripted registry on loopback: the protocol paths (auth, platforms, mirrors)
//! and hostile answers (huge or endless bodies, wrong media types, redirects elsewhere, stalls).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::pull::{select_platform, IndexEntry};
use super::*;
use crate::http::Timeouts;
use crate::testutil::{image, sha, Comp, TarBuilder, TestImage};
use crate::{ImageStore, Limits, Reference};

/// What the scripted server answers.
#[derive(Clone)]
enum Reply {
    /// Status, headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Headers, then body bytes forever.
    Endless(Vec<(String, String)>),
    /// Headers, then silence.
    Stall(Vec<(String, String)>),
    /// Headers, then a byte now and then, forever.
    Drip(Vec<(String, String)>),
}

fn ok(content_type: &str, body: &[u8]) -> Reply {
    Reply::Full(
        200,
        vec![("Content-Type".into(), content_type.into())],
        body.to_vec(),
    )
}

type Handler = Arc<dyn Fn(&str, Option<&str>) -> Reply + Send + Sync>;

/// Requests seen: (path, Authorization header).
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `handler(path, authorization)` on a loopback port; records every request line.
struct Server {
    port: u16,
    log: RequestLog,
}

async fn serve(handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                    if head.len() == 4 && head != b"GET " {
                        return; // not plain HTTP (a TLS client hello): hang up
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let auth = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l["authorization:".len()..].trim().to_string());
                log.lock().unwrap().push((path.clone(), auth.clone()));
                let head_of = |status: u16, headers: &[(String, String)], len: Option<usize>| {
                    let mut h = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                    for (k, v) in headers {
                        h.push_str(&format!("{k}: {v}\r\n"));
                    }
                    if let Some(len) = len {
                        h.push_str(&format!("Content-Length: {len}\r\n"));
                    }
                    h.push_str("\r\n");
                    h
                };
                match handler(&path, auth.as_deref()) {
                    Reply::Full(status, headers, body) => {
                        let h = head_of(status, &headers, Some(body.len()));
                        let _ = sock.write_all(h.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Reply::Endless(headers) => {
                        let h = head_of(200, &headers, None);
                        let _ = sock.write_all(h.as_bytes()).await;
                        let junk = vec![b'x'; 64 * 1024];
                        while sock.write_all(&junk).await.is_ok() {}
                    }
                    Reply::Drip(headers) => {
                        let h = head_of(200, &headers, Some(1000));
                        let _ = sock.write_all(h.as_bytes()).await;
                        loop {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if sock.write_all(b" ").await.is_err() {
                                break;
                            }
                        }
                    }
                    Reply::Stall(headers) => {
                        let h = head_of(200, &headers, Some(1000));
                        let _ = sock.write_all(h.as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Server { port, log }
}

fn puller(root: &Path, timeouts: Timeouts) -> Puller {
    let limits = Limits {
        max_manifest_bytes: 64 * 1024,
        ..Limits::default()
    };
    let store = Arc::new(ImageStore::open(root, limits).unwrap());
    Puller::with_timeouts(store, timeouts)
}

fn insecure(p: &Puller, hosts: &[String]) {
    p.set_settings(
        hosts
            .iter()
            .map(|h| {
                (
                    h.clone(),
                    RegistrySettings {
                        insecure: Some(true),
                        ..Default::default()
                    },
                )
            })
            .collect(),
    );
}

async fn pull(
    p: &Puller,
    r: &str,
) -> (Result<crate::ImportedImage, RegistryError>, Vec<PullEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    let result = p
        .pull(
            &Reference::parse(r).unwrap(),
            Arc::new(move |e| e2.lock().unwrap().push(e)),
        )
        .await;
    let events = events.lock().unwrap().clone();
    (result, events)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn test_image() -> TestImage {
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho hi\n");
    image(&[(t.finish(), Comp::Gzip)])
}

/// A registry serving `img` under `repo` (manifest by tag `1` and by digest, blobs).
fn registry_for(img: &TestImage, repo: &str) -> impl Fn(&str) -> Option<Reply> {
    let img = img.clone();
    let repo = repo.to_string();
    move |path: &str| {
        let manifest = img.blob(&img.manifest_digest).to_vec();
        if path == format!("/v2/{repo}/manifests/1")
            || path == format!("/v2/{repo}/manifests/{}", img.manifest_digest)
        {
            return Some(ok(OCI_MANIFEST, &manifest));
        }
        let digest = path.strip_prefix(&format!("/v2/{repo}/blobs/"))?;
        let blob = img.blobs.iter().find(|(d, _)| d == digest)?;
        Some(ok("application/octet-stream", &blob.1))
    }
}

fn not_found() -> Reply {
    Reply::Full(
        404,
        vec![("Content-Type".into(), "application/json".into())],
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
    )
}

fn store_is_empty(p: &Path) {
    for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
        let n = std::fs::read_dir(p.join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub} should be empty");
    }
}

#[tokio::test]
async fn pulls_verifies_and_reuses_layers() {
    let img = test_image();
    let routes = registry_for(&img, "team/tool");
    let server = serve(Arc::new(move |path, _| {
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));

    let (result, events) = pull(&p, &format!("{host}/team/tool:1")).await;
    let pulled = result.unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(pulled.id, img.config_digest);
    assert_eq!(pulled.names, vec![format!("{host}/team/tool:1")]);
    match &events[0] {
        PullEvent::Resolved {
            total_bytes,
            cached_bytes,
            layers,
            ..
        } => {
            assert_eq!(*total_bytes, img.blob(&img.layer_digests[0]).len() as u64);
            assert_eq!(*cached_bytes, 0);
            assert!(!layers[0].cached);
        }
        e => panic!("first event {e:?}"),
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, PullEvent::Layer { done: true, .. })));
    assert!(dir
        .path()
        .join("layers/sha256")
        .join(&img.diff_ids[0][7..])
        .join("bin/tool")
        .is_file());

    // Again, by digest: the layer blob is not fetched a second time.
    let before = server.log.lock().unwrap().len();
    let (result, events) = pull(&p, &format!("{host}/team/tool@{}", img.manifest_digest)).await;
    result.unwrap();
    let fetched: Vec<String> = server.log.lock().unwrap()[before..]
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        !fetched.iter().any(|p| p.ends_with(&img.layer_digests[0])),
        "{fetched:?}"
    );
    assert!(matches!(&events[0], PullEvent::Resolved { cached_bytes, .. } if *cached_bytes > 0));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn bearer_token_flow_and_refusals() {
    let img = test_image();
    let routes = registry_for(&img, "team/tool");
    let port = Arc::new(Mutex::new(0u16));
    let port2 = port.clone();
    let server = serve(Arc::new(move |path, auth| {
        let port = *port2.lock().unwrap();
        if path.starts_with("/token?") {
            assert!(path.contains("scope=repository:team/tool:pull"), "{path}");
            return if auth == Some(super::auth::basic("ci", "s3cret").as_str()) {
                ok("application/json", br#"{"token":"tok-123"}"#)
            } else {
                Reply::Full(401, vec![], br#"{"details":"bad credentials"}"#.to_vec())
            };
        }
        if auth != Some("Bearer tok-123") {
            return Reply::Full(
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="test""#),
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
            );
        }
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    *port.lock().unwrap() = server.port;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));
    let r = format!("{host}/team/tool:1");

    let err = pull(&p, &r).await.0.unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::Denied, "{err}");
    assert!(err.message.contains("token service refused"), "{err}");
    store_is_empty(dir.path());

    p.set_credentials(
        &host,
        Some(Credentials {
            username: "ci".into(),
            password: "wrong".into(),
        }),
    );
    assert_eq!(
        pull(&p, &r).await.0.unwrap_err().kind,
        RegistryErrorKind::Denied
    );

    p.set_credentials(
        &host,
        Some(Credentials {
            username: "ci".into(),
            password: "s3cret".into(),
        }),
    );
    pull(&p, &r).await.0.unwrap();
    // The token is reused: the second pull asks the token service nothing.
    let before = server.log.lock().unwrap().len();
    pull(&p, &r).await.0.unwrap();
    assert!(!server.log.lock().unwrap()[before..]
        .iter()
        .any(|(p, _)| p.starts_with("/token")));
}

#[tokio::test]
async fn basic_auth_and_unknown_tags() {
    let img = test_image();
    let routes = registry_for(&img, "x");
    let server = serve(Arc::new(move |path, auth| {
        if auth != Some(super::auth::basic("u", "p").as_str()) {
            return Reply::Full(
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    r#"Basic realm="registry""#.into(),
                )],
                vec![],
            );
        }
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));
    let err = pull(&p, &format!("{host}/x:1")).await.0.unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::Denied);
    assert!(err.message.contains("no credentials"), "{err}");
    p.set_credentials(
        &host,
        Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
    );
    let err = pull(&p, &format!("{host}/x:nope")).await.0.unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::NotFound);
    assert!(
        err.message.contains("MANIFEST_UNKNOWN: manifest unknown"),
        "{err}"
    );
    pull(&p, &format!("{host}/x:1")).await.0.unwrap();
}

#[tokio::test]
async fn a_loopback_registry_speaks_plain_http_unless_listed_otherwise() {
    let img = test_image();
    let routes = registry_for(&img, "x");
    let server = serve(Arc::new(move |path, _| {
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    // Not listed at all: a loopback registry is plain HTTP, as dockerd treats 127.0.0.0/8.
    let (result, _) = pull(&p, &format!("localhost:{}/x:1", server.port)).await;
    assert_eq!(result.unwrap().manifest_digest, img.manifest_digest);
}

#[tokio::test]
async fn registry_listed_tls_only_is_not_spoken_to_over_http() {
    let server = serve(Arc::new(|_, _| not_found())).await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    p.set_settings(
        [(
            host.clone(),
            RegistrySettings {
                insecure: Some(false),
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
    );
    // Listed `insecure = false`: the client speaks TLS, which the plain server cannot answer.
    let err = pull(&p, &format!("{host}/x:1")).await.0.unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::Unreachable, "{err}");
    assert!(err.message.contains("TLS"), "{err}");
    assert!(server.log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_registry_and_mirrors() {
    let img = test_image();
    let routes = registry_for(&img, "x");
    let mirror = serve(Arc::new(move |path, _| {
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let upstream = format!("127.0.0.1:{dead}");
    let mirror_host = format!("127.0.0.1:{}", mirror.port);
    let err = {
        insecure(&p, std::slice::from_ref(&upstream));
        pull(&p, &format!("{upstream}/x:1")).await.0.unwrap_err()
    };
    assert_eq!(err.kind, RegistryErrorKind::Unreachable, "{err}");
    assert!(err.message.contains("cannot connect"), "{err}");

    let mut settings = HashMap::new();
    settings.insert(
        upstream.clone(),
        RegistrySettings {
            insecure: Some(true),
            mirrors: vec![mirror_host.clone()],
            ..Default::default()
        },
    );
    settings.insert(
        mirror_host,
        RegistrySettings {
            insecure: Some(true),
            ..Default::default()
        },
    );
    p.set_settings(settings);
    let pulled = pull(&p, &format!("{upstream}/x:1")).await.0.unwrap();
    assert_eq!(pulled.names, vec![format!("{upstream}/x:1")]);
}

#[tokio::test]
async fn hostile_manifests_are_refused_bounded() {
    let server = serve(Arc::new(|path, _| match path {
        "/v2/huge/manifests/1" => Reply::Full(
            200,
            vec![("Content-Type".into(), OCI_MANIFEST.into())],
            vec![b' '; 200 * 1024],
        ),
        "/v2/endless/manifests/1" => {
            Reply::Endless(vec![("Content-Type".into(), OCI_MANIFEST.into())])
        }
        "/v2/html/manifests/1" => ok("text/html", b"<html>login here</html>"),
        "/v2/schema1/manifests/1" => ok(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1}"#,
        ),
        "/v2/stall/manifests/1" => Reply::Stall(vec![("Content-Type".into(), OCI_MANIFEST.into())]),
        "/v2/drip/manifests/1" => Reply::Drip(vec![("Content-Type".into(), OCI_MANIFEST.into())]),
        "/v2/loop/manifests/1" => Reply::Full(
            302,
            vec![("Location".into(), "/v2/loop/manifests/1".into())],
            vec![],
        ),
        "/v2/elsewhere/manifests/1" => Reply::Full(
            307,
            vec![("Location".into(), "http://evil.example:8080/steal".into())],
            vec![],
        ),
        "/v2/lying/manifests/1" => {
            let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
            Reply::Full(
                200,
                vec![
                    ("Content-Type".into(), OCI_MANIFEST.into()),
                    (
                        "Docker-Content-Digest".into(),
                        "sha256:1111111111111111111111111111111111111111111111111111111111111111"
                            .into(),
                    ),
                ],
                body.to_vec(),
            )
        }
        _ => not_found(),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let timeouts = Timeouts {
        idle: Duration::from_secs(1),
        document: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let p = puller(dir.path(), timeouts);
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));
    let cases = [
        (
            "huge",
            RegistryErrorKind::Invalid,
            "larger than 65536 bytes",
        ),
        (
            "endless",
            RegistryErrorKind::Invalid,
            "larger than 65536 bytes",
        ),
        (
            "html",
            RegistryErrorKind::Invalid,
            "unsupported media type \"text/html\"",
        ),
        (
            "schema1",
            RegistryErrorKind::Invalid,
            "unsupported media type",
        ),
        ("stall", RegistryErrorKind::Invalid, "no data for 1 s"),
        (
            "drip",
            RegistryErrorKind::Invalid,
            "took over 2 s to arrive",
        ),
        ("loop", RegistryErrorKind::Protocol, "more than 5 redirects"),
        (
            "elsewhere",
            RegistryErrorKind::Protocol,
            "not listed as insecure; refused",
        ),
        (
            "lying",
            RegistryErrorKind::Corrupt,
            "the registry says sha256:1111",
        ),
    ];
    for (repo, kind, text) in cases {
        let err = pull(&p, &format!("{host}/{repo}:1")).await.0.unwrap_err();
        assert_eq!(err.kind, kind, "{repo}: {err}");
        assert!(err.message.contains(text), "{repo}: {err}");
        store_is_empty(dir.path());
    }
}

#[tokio::test]
async fn hostile_blobs_are_refused_and_nothing_is_left() {
    let img = test_image();
    let layer = img.layer_digests[0].clone();
    let routes = registry_for(&img, "x");
    let mode = Arc::new(Mutex::new("endless"));
    let mode2 = mode.clone();
    let layer2 = layer.clone();
    let server = serve(Arc::new(move |path, _| {
        if path.ends_with(&layer2) {
            let good = routes(path).unwrap();
            return match *mode2.lock().unwrap() {
                "endless" => Reply::Endless(vec![]),
                "tampered" => {
                    let Reply::Full(s, h, mut body) = good else {
                        unreachable!()
                    };
                    let last = body.len() - 1;
                    body[last] ^= 0xff;
                    Reply::Full(s, h, body)
                }
                "short" => {
                    let Reply::Full(s, h, mut body) = good else {
                        unreachable!()
                    };
                    body.pop();
                    Reply::Full(s, h, body)
                }
                _ => Reply::Full(
                    302,
                    vec![("Location".into(), "http://127.0.0.2:1/blob".into())],
                    vec![],
                ),
            };
        }
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));
    for (m, kind, text) in [
        (
            "endless",
            RegistryErrorKind::Corrupt,
            "longer than its descriptor",
        ),
        (
            "tampered",
            RegistryErrorKind::Corrupt,
            "does not match its digest",
        ),
        (
            "short",
            RegistryErrorKind::Corrupt,
            "bytes but its descriptor says",
        ),
        (
            "redirect",
            RegistryErrorKind::Protocol,
            "plain HTTP to a host not listed",
        ),
    ] {
        *mode.lock().unwrap() = m;
        let err = pull(&p, &format!("{host}/x:1")).await.0.unwrap_err();
        assert_eq!(err.kind, kind, "{m}: {err}");
        assert!(err.message.contains(text), "{m}: {err}");
        assert!(
            err.message.contains(&layer) || m == "redirect",
            "{m}: {err}"
        );
        store_is_empty(dir.path());
    }
}

fn entry(os: &str, arch: &str, variant: Option<&str>, n: u8) -> IndexEntry {
    IndexEntry {
        media_type: OCI_MANIFEST.into(),
        digest: sha(&[n]),
        size: 1,
        platform: Some(super::pull::PlatformDoc {
            architecture: arch.into(),
            os: os.into(),
            variant: variant.map(Into::into),
        }),
    }
}

#[test]
fn selects_the_nodes_platform_from_an_index() {
    let entries = vec![
        entry("unknown", "unknown", None, 0),
        entry("linux", "arm", Some("v7"), 1),
        entry("linux", "arm64", Some("v8"), 2),
        entry("linux", "amd64", None, 3),
        entry("windows", "amd64", None, 4),
    ];
    assert_eq!(
        select_platform(&entries, "linux", "amd64").unwrap().digest,
        sha(&[3])
    );
    assert_eq!(
        select_platform(&entries, "linux", "arm64").unwrap().digest,
        sha(&[2])
    );
    let err = select_platform(&entries, "linux", "s390x").unwrap_err();
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/arm/v7, linux/arm64/v8, linux/amd64"),
        "{err}"
    );
    // A lone entry without a platform is the image.
    let mut lone = entry("linux", "amd64", None, 9);
    lone.platform = None;
    assert_eq!(
        select_platform(std::slice::from_ref(&lone), "linux", "amd64")
            .unwrap()
            .digest,
        sha(&[9])
    );
    assert!(select_platform(&[], "linux", "amd64").is_err());
}

#[tokio::test]
async fn pulls_the_nodes_platform_from_an_index() {
    let img = test_image();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha(b"other"), "size": 5,
             "platform": {"os": "linux", "architecture": "riscv64"}},
            {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest_size,
             "platform": {"os": "linux", "architecture": crate::import::host_arch()}},
        ]
    }))
    .unwrap();
    let routes = registry_for(&img, "multi");
    let server = serve(Arc::new(move |path, _| {
        if path == "/v2/multi/manifests/latest" {
            return ok("application/vnd.oci.image.index.v1+json", &index);
        }
        if path == "/v2/multi/manifests/only-riscv" {
            let only = json!({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": sha(b"other"), "size": 5,
                 "platform": {"os": "linux", "architecture": "riscv64"}}]});
            return ok(
                "application/vnd.oci.image.index.v1+json",
                &serde_json::to_vec(&only).unwrap(),
            );
        }
        routes(path).unwrap_or_else(not_found)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), Timeouts::default());
    let host = format!("127.0.0.1:{}", server.port);
    insecure(&p, std::slice::from_ref(&host));
    let (result, events) = pull(&p, &format!("{host}/multi")).await;
    let pulled = result.unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    let platform = format!("linux/{}", crate::import::host_arch());
    assert!(matches!(&events[0], PullEvent::Resolved { platform: Some(p), .. } if *p == platform));
    let err = pull(&p, &format!("{host}/multi:only-riscv"))
        .await
        .0
        .unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::NoPlatform);
    assert!(err.message.contains("linux/riscv64"), "{err}");
}
