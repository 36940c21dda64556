use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn go(app: &axum::Router, m: &str, uri: &str, ct: Option<&str>, body: Vec<u8>) {
    let mut b = Request::builder().method(m).uri(uri);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    let resp = app
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let st = resp.status();
    let h = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    println!(
        "{m} {uri} -> {st} {:?} {}",
        h.get("content-type"),
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let array = tmp.path().join("array");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(array.join("data")).unwrap();
    let store = inarray_store::Store::open(&state.join("state.db"))
        .await
        .unwrap();
    let images =
        inarray_images::ImageStore::open(&state.join("images"), inarray_images::Limits::default())
            .unwrap();
    let m = inarray_runtime::Manager::new(
        store,
        Arc::new(images),
        inarray_runtime::ManagerOptions {
            state_dir: state.clone(),
            array_dir: array.clone(),
            protected: vec![state.clone()],
            shim_exe: tmp.path().join("no-shim"),
            cgroup_parent: "inarray-api-test".into(),
        },
    )
    .unwrap();
    let app = inarray_api::router(m);
    let j = Some("application/json");
    go(&app, "PUT", "/v1/containers", j, vec![]).await;
    go(&app, "GET", "/v1/images/import", j, vec![]).await;
    go(&app, "DELETE", "/v1/images/import", j, vec![]).await;
    go(&app, "GET", "/v1/images/", j, vec![]).await;
    go(
        &app,
        "GET",
        "/v1/images/docker.io%2Flibrary%2Fx:1",
        j,
        vec![],
    )
    .await;
    go(&app, "GET", "/v1/images/docker.io/library/x:1", j, vec![]).await;
    go(&app, "GET", "/v1/nope", j, vec![]).await;
    go(&app, "GET", "/v1/containers/", j, vec![]).await;
    go(&app, "GET", "/v1/containers?all=maybe", j, vec![]).await;
    go(&app, "GET", "/v1/containers?bogus=1", j, vec![]).await;
    go(
        &app,
        "POST",
        "/v1/containers/x/stop?timeout=99999",
        j,
        vec![],
    )
    .await;
    go(&app, "POST", "/v1/containers/x/stop?timeout=-1", j, vec![]).await;
    go(&app, "POST", "/v1/containers/x/kill?signal=FOO", j, vec![]).await;
    go(&app, "POST", "/v1/containers/x/start?foo=1", j, vec![]).await;
    go(&app, "POST", "/v1/containers", j, b"{".to_vec()).await;
    go(&app, "POST", "/v1/containers", j, vec![]).await;
    go(&app, "POST", "/v1/containers", None, b"{}".to_vec()).await;
    go(
        &app,
        "POST",
        "/v1/containers",
        j,
        br#"{"image":5}"#.to_vec(),
    )
    .await;
    go(&app, "POST", "/v1/containers", j, br#"{}"#.to_vec()).await;
    go(
        &app,
        "POST",
        "/v1/containers",
        j,
        br#"{"image":"x","privileged":true}"#.to_vec(),
    )
    .await;
    go(
        &app,
        "POST",
        "/v1/containers",
        j,
        br#"{"image":"x","restart":"sometimes"}"#.to_vec(),
    )
    .await;
    go(
        &app,
        "POST",
        "/v1/containers",
        j,
        br#"{"image":"x"}"#.to_vec(),
    )
    .await;
    go(&app, "POST", "/v1/containers", j, vec![b' '; 2 << 20]).await;
    go(
        &app,
        "POST",
        "/v1/images/import",
        None,
        b"not an archive".to_vec(),
    )
    .await;
    go(
        &app,
        "POST",
        "/v1/images/import?name=UPPER!",
        None,
        b"not an archive".to_vec(),
    )
    .await;
    go(&app, "POST", "/v1/images/import", None, vec![]).await;
    go(&app, "GET", "/v1/images", None, vec![]).await;
    go(&app, "GET", "/v1/containers/x/logs", None, vec![]).await;
    go(&app, "POST", "/v1/containers/x/wait", None, vec![]).await;
    go(&app, "HEAD", "/v1/health", None, vec![]).await;
}
