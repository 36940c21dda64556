//! End-to-end: pulling from a real registry (Debian's `docker-registry`, on loopback) that the
//! test fills with `skopeo copy` from OCI layouts it builds: progress stream, digests, layer
//! reuse, auth (htpasswd), a tampered blob, pull policies, prune, and a container from a pulled
//! image.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use common::image_builder;
use common::registry::{free_port, Registry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Adds a gzip layer holding `path` = `content` on top of the layout's image; returns the new
/// (manifest digest, config digest, layer digest).
fn add_layer(layout: &Path, path: &str, content: &[u8]) -> (String, String, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, content).unwrap();
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let blob_path = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let read_json = |d: &str| -> Value {
        serde_json::from_slice(&std::fs::read(blob_path(d)).unwrap()).unwrap()
    };
    let write_blob = |data: &[u8]| -> String {
        let d = sha256(data);
        std::fs::write(blob_path(&d), data).unwrap();
        d
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest = read_json(&manifest_digest);
    let mut config = read_json(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(sha256(&raw)));
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(&config);
    let layer_digest = write_blob(&gz);
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config.len());
    manifest["layers"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer_digest, "size": gz.len()}));
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let new_manifest = write_blob(&manifest);
    index["manifests"][0]["digest"] = json!(new_manifest);
    index["manifests"][0]["size"] = json!(manifest.len());
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    (new_manifest, config_digest, layer_digest)
}

/// `POST /v1/images/pull`: (HTTP error, or the JSON lines of the stream).
async fn pull(d: &TestDaemon, reference: &str) -> Result<Vec<Value>, (u16, String, String)> {
    let mut lines = Vec::new();
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        d.client()
            .post_lines("/v1/images/pull", &json!({"reference": reference}), |v| {
                lines.push(v)
            }),
    )
    .await
    .expect("pull answered within 2 min");
    match r {
        Ok(()) => Ok(lines),
        Err(inarray_api::client::ClientError::Api {
            status,
            code,
            message,
        }) => Err((status.as_u16(), code, message)),
        Err(e) => panic!("pull {reference}: {e}"),
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_real_registry() {
    let mut d = TestDaemon::start().await;
    let open = Registry::start(&d.tmp.path().join("reg-open"), None);
    let locked = Registry::start(&d.tmp.path().join("reg-auth"), Some(("ci", "s3cret")));
    // HTTPS with a private CA: a CA and a server certificate for 127.0.0.1 signed by it.
    let pki = d.tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(
        pki.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=inarray-test-ca -keyout ca.key -out ca.crt",
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out server.crt",
    ] {
        let out = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&pki)
            .output()
            .expect("openssl is installed");
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cert = pki.join("ca.crt");
    let (server_cert, key) = (pki.join("server.crt"), pki.join("server.key"));
    let tls = Registry::start_with(
        &d.tmp.path().join("reg-tls"),
        None,
        Some((&server_cert, &key)),
    );

    // Restart the daemon with a config listing both registries as insecure (plain HTTP).
    d.kill9();
    let config = d.tmp.path().join("inarray.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"{}\"]\ninsecure = true\n[registries.\"{}\"]\ninsecure = true\n[registries.\"{}\"]\nca_file = \"{}\"\n[registries.\"localhost:{}\"]\ninsecure = false\n",
            open.host(),
            locked.host(),
            tls.host(),
            cert.display(),
            tls.port
        ),
    )
    .unwrap();
    {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(d.tmp.path().join("daemon.log"))
            .unwrap();
        let child = d
            .serve_command()
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.call(Method::GET, "/v1/health", None).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not restart: {}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Images: busybox; busybox + a layer (shares the busybox layer); busybox + another layer,
    // whose blob is then tampered with in the registry's storage.
    let base = d.tmp.path().join("layout-base");
    let dg = image_builder::write_oci_layout(&base, "1");
    open.push(&base, "test/busybox:1", None);
    open.push(&base, "test/busybox:policy", None);
    locked.push(&base, "test/busybox:1", Some("ci:s3cret"));
    let tool = d.tmp.path().join("layout-tool");
    image_builder::write_oci_layout(&tool, "2");
    let (tool_manifest, tool_config, tool_layer) = add_layer(&tool, "etc/tool.conf", b"tool=1\n");
    open.push(&tool, "test/tool:2", None);
    let bad = d.tmp.path().join("layout-bad");
    image_builder::write_oci_layout(&bad, "1");
    let (_, _, bad_layer) = add_layer(&bad, "etc/bad.conf", b"this will be tampered with\n");
    open.push(&bad, "test/bad:1", None);
    let file = open.blob_file(&bad_layer);
    let mut data = std::fs::read(&file).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x55;
    std::fs::write(&file, data).unwrap();

    // For the job (pulled when the job is saved) and the shared-pull check (a larger layer).
    let job = d.tmp.path().join("layout-job");
    image_builder::write_oci_layout(&job, "1");
    let (_, job_config, _) = add_layer(&job, "etc/job.conf", b"job=1\n");
    open.push(&job, "test/job:1", None);
    let share = d.tmp.path().join("layout-share");
    image_builder::write_oci_layout(&share, "1");
    let noise: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (_, share_config, _) = add_layer(&share, "share.bin", &noise);
    open.push(&share, "test/share:1", None);

    tls.push(&base, "test/busybox:1", None);

    let reg = open.host();
    let images_dir = d.state.join("images");

    // 1. A pull streams progress and ends with the image; digests are those pushed.
    let lines = pull(&d, &format!("{reg}/test/busybox:1")).await.unwrap();
    assert_eq!(lines[0]["event"], "resolved", "{lines:?}");
    assert_eq!(lines[0]["manifest_digest"], dg.manifest);
    assert_eq!(lines[0]["cached_bytes"], 0);
    let total = lines[0]["total_bytes"].as_u64().unwrap();
    assert!(total > 100_000, "busybox layer is {total} bytes");
    let layer_done: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "layer" && l["done"] == true)
        .collect();
    assert_eq!(layer_done.len(), 1, "{lines:?}");
    assert_eq!(layer_done[0]["bytes"].as_u64(), Some(total));
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done", "{lines:?}");
    assert_eq!(done["image"]["id"], dg.config);
    assert_eq!(done["image"]["manifest_digest"], dg.manifest);
    assert_eq!(
        done["image"]["names"],
        json!([format!("{reg}/test/busybox:1")])
    );

    // 2. A second image sharing the busybox layer: only its own layer is fetched.
    let lines = pull(&d, &format!("{reg}/test/tool:2")).await.unwrap();
    assert_eq!(lines[0]["manifest_digest"], tool_manifest);
    assert_eq!(lines[0]["cached_bytes"].as_u64(), Some(total));
    let fetched: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "layer")
        .filter_map(|l| l["digest"].as_str())
        .collect();
    assert!(fetched.iter().all(|f| *f == tool_layer), "{fetched:?}");
    assert!(!fetched.is_empty());
    assert_eq!(lines.last().unwrap()["image"]["id"], tool_config);

    // 3. A tampered blob: refused at the end of the stream, nothing left behind.
    let blobs_before = count(&images_dir.join("blobs/sha256"));
    let layers_before = count(&images_dir.join("layers/sha256"));
    let lines = pull(&d, &format!("{reg}/test/bad:1")).await.unwrap();
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "error", "{lines:?}");
    assert_eq!(last["status"], 502);
    assert_eq!(last["error"]["code"], "digest_mismatch");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&bad_layer));
    assert_eq!(count(&images_dir.join("blobs/sha256")), blobs_before);
    assert_eq!(count(&images_dir.join("layers/sha256")), layers_before);
    assert_eq!(count(&images_dir.join("tmp")), 0);
    d.fails(
        Method::GET,
        &format!("/v1/images/{reg}/test/bad:1"),
        None,
        404,
    )
    .await;

    // 4. Precise errors before any progress: unknown tag, unknown repository, unreachable.
    let (status, code, message) = pull(&d, &format!("{reg}/test/busybox:nope"))
        .await
        .unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (404, "image_not_found"),
        "{message}"
    );
    assert!(message.contains("manifest unknown"), "{message}");
    let (status, code, _) = pull(&d, &format!("127.0.0.1:{}/x:1", free_port()))
        .await
        .unwrap_err();
    assert_eq!((status, code.as_str()), (502, "registry_unreachable"));

    // 5. Basic auth: refused without and with wrong credentials, then pulled.
    let locked_ref = format!("{}/test/busybox:1", locked.host());
    let (status, code, message) = pull(&d, &locked_ref).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (403, "registry_auth_refused"),
        "{message}"
    );
    let creds =
        |password: &str| json!({"registry": locked.host(), "username": "ci", "password": password});
    d.ok(Method::POST, "/v1/registries", Some(creds("wrong")))
        .await;
    let (status, _, message) = pull(&d, &locked_ref).await.unwrap_err();
    assert_eq!(status, 403, "{message}");
    d.ok(Method::POST, "/v1/registries", Some(creds("s3cret")))
        .await;
    let lines = pull(&d, &locked_ref).await.unwrap();
    assert_eq!(lines.last().unwrap()["image"]["id"], dg.config);
    let listed = d.ok(Method::GET, "/v1/registries", None).await;
    assert_eq!(listed[0]["registry"], locked.host());
    assert_eq!(listed[0]["username"], "ci");
    assert!(!listed.to_string().contains("s3cret"), "{listed}");
    d.fails(
        Method::POST,
        "/v1/registries",
        Some(json!({"registry": "bad_host", "username": "u", "password": "p"})),
        400,
    )
    .await;

    // 5b. HTTPS, verified against the registry's configured CA; the same registry named
    // `localhost:PORT` (listed `insecure = false`: TLS only, though on loopback) has no CA
    // configured (and the certificate names 127.0.0.1): refused.
    let lines = pull(&d, &format!("{}/test/busybox:1", tls.host()))
        .await
        .unwrap();
    assert_eq!(lines.last().unwrap()["image"]["id"], dg.config, "{lines:?}");
    let (status, code, message) = pull(&d, &format!("localhost:{}/test/busybox:1", tls.port))
        .await
        .unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (502, "registry_unreachable"),
        "{message}"
    );
    assert!(message.contains("TLS handshake failed"), "{message}");

    // 6. A container from a pulled image; pull policies.
    let (code, out) = d
        .run_to_exit(
            json!({"image": format!("{reg}/test/tool:2"), "pull": "never",
            "command": ["cat", "/etc/tool.conf"]}),
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "tool=1\n"));
    d.fails(
        Method::POST,
        "/v1/containers",
        Some(json!({"image": format!("{reg}/test/busybox:policy"), "pull": "never"})),
        404,
    )
    .await;
    // `missing` (the default) pulls it.
    let (code, out) = d
        .run_to_exit(json!({"image": format!("{reg}/test/busybox:policy"),
            "command": ["echo", "pulled on demand"]}))
        .await;
    assert_eq!((code, out.as_str()), (0, "pulled on demand\n"));

    // 7. Concurrent pulls of one reference share one fetch (the registry's access log shows one
    // manifest request) and agree.
    let r = format!("{reg}/test/share:1");
    let (a, b) = tokio::join!(pull(&d, &r), pull(&d, &r));
    assert_eq!(a.unwrap().last().unwrap()["image"]["id"], share_config);
    assert_eq!(b.unwrap().last().unwrap()["image"]["id"], share_config);
    let access = std::fs::read_to_string(d.tmp.path().join("reg-open/registry.log")).unwrap();
    let manifest_gets = access
        .lines()
        .filter(|l| l.contains("\"GET /v2/test/share/manifests/1 "))
        .count();
    assert_eq!(manifest_gets, 1, "{access}");

    // A job naming an image not yet pulled: saving it pulls it.
    d.ok(
        Method::POST,
        "/v1/jobs",
        Some(json!({"name": "reg-job", "schedule": "@yearly",
        "container": {"image": format!("{reg}/test/job:1"), "command": ["true"]}})),
    )
    .await;
    d.ok(Method::GET, &format!("/v1/images/{reg}/test/job:1"), None)
        .await;

    // 8. The CLI shows progress and a summary.
    let out = Command::new(TestDaemon::bin())
        .args([
            "--host",
            &format!("unix:{}", d.socket.display()),
            "image",
            "pull",
            &format!("{reg}/test/tool:2"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pulled {reg}/test/tool:2: {tool_config}")),
        "{stdout}"
    );

    // 9. Prune: the busybox image is used by a container (and tool:2 too): delete the tool
    // container, then prune removes tool:2 and its own layer only.
    let containers = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    for c in containers.as_array().unwrap() {
        if c["image"].as_str().unwrap().contains("test/tool") {
            let id = c["id"].as_str().unwrap();
            d.ok(Method::DELETE, &format!("/v1/containers/{id}"), None)
                .await;
        }
    }
    let report = d.ok(Method::POST, "/v1/images/prune", None).await;
    let pruned: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    // Removed: tool:2 (its container deleted) and share:1 (never used); kept: busybox (a
    // container) and job:1 (a job names it).
    let mut expected = vec![tool_config.as_str(), share_config.as_str()];
    let mut pruned = pruned;
    pruned.sort();
    expected.sort();
    assert_eq!(pruned, expected, "{report}");
    assert_eq!(report["layers_removed"], 2, "{report}");
    assert!(
        report["bytes_freed"].as_u64().unwrap() > 8 << 20,
        "{report}"
    );
    let kept = d
        .ok(Method::GET, &format!("/v1/images/{reg}/test/job:1"), None)
        .await;
    assert_eq!(kept["id"], job_config);
    d.ok(
        Method::GET,
        &format!("/v1/images/{reg}/test/busybox:1"),
        None,
    )
    .await;
    d.fails(
        Method::GET,
        &format!("/v1/images/{reg}/test/tool:2"),
        None,
        404,
    )
    .await;
    // Nothing more to prune while the busybox container exists.
    let report = d.ok(Method::POST, "/v1/images/prune", None).await;
    assert_eq!(report["images"], json!([]), "{report}");
}
