//! End-to-end: importing images in every form through the API, and images whose contents try to
//! redirect the runtime's mounts onto the host.

mod common;

use common::daemon::{Method, TestDaemon};
use common::image_builder::{self, add_symlink};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_oci_archives_docker_archives_and_layout_dirs() {
    let d = TestDaemon::start().await;
    let oci = d.tmp.path().join("oci.tar");
    let docker = d.tmp.path().join("docker.tar");
    let layout = d.tmp.path().join("layout");
    let dg_oci = image_builder::write_oci_archive(&oci, "latest");
    let dg_docker = image_builder::write_docker_archive(&docker, "tools/busybox:docker");
    image_builder::write_oci_layout(&layout, "layout");

    let v = d.import(&oci, "busybox:oci").await;
    assert_eq!(v["id"], dg_oci.config);
    assert_eq!(v["names"], json!(["busybox:oci"]));
    // The docker archive keeps its RepoTags when no name is given.
    let v = d
        .client()
        .upload("/v1/images/import", &docker)
        .await
        .unwrap();
    assert_eq!(v["id"], dg_docker.config);
    // Same config as the OCI archive: one image, now with both names.
    assert_eq!(v["names"], json!(["busybox:oci", "tools/busybox:docker"]));
    // A layout directory, tarred by the CLI on the fly.
    let out = std::process::Command::new(TestDaemon::bin())
        .args([
            "--host",
            &format!("unix:{}", d.socket.display()),
            "image",
            "import",
            "--name",
            "busybox:layout",
        ])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let names = image_names(&d).await;
    for n in ["busybox:oci", "tools/busybox:docker", "busybox:layout"] {
        assert!(names.contains(&n.to_owned()), "{n} in {names:?}");
    }
    // Same layer content in all three: unpacked once.
    let layers = std::fs::read_dir(d.state.join("images/layers/sha256"))
        .unwrap()
        .count();
    assert_eq!(layers, 1);
    // Each runs, referenced by name, by id, and by digest-less short name.
    for image in [
        "busybox:oci",
        "tools/busybox:docker",
        "busybox:layout",
        dg_oci.config.as_str(),
    ] {
        let (code, logs) = d
            .run_to_exit(json!({"image": image, "command": ["echo", "ran"]}))
            .await;
        assert_eq!((code, logs.as_str()), (0, "ran\n"), "{image}");
    }
    // The image config is honoured: Cmd, Env, WorkingDir.
    let (code, logs) = d
        .run_to_exit(json!({"image": "busybox:oci", "workdir": "/tmp", "env": ["X=1"]}))
        .await;
    assert_eq!(code, 0, "Cmd [sh] with no stdin exits 0: {logs}");
    let (_, logs) = d.run_to_exit(json!({"image": "busybox:oci", "workdir": "/tmp", "command": ["sh", "-c", "pwd; echo $PATH $X"], "env": ["X=1"]})).await;
    assert_eq!(logs, "/tmp\n/bin 1\n");
    // Removing a name of an image with several only untags it (even while containers use it).
    let v = d
        .ok(Method::DELETE, "/v1/images/tools/busybox:docker", None)
        .await;
    assert_eq!(v["untagged"], "tools/busybox:docker");
    d.fails(Method::DELETE, "/v1/images/tools/busybox:docker", None, 404)
        .await;
    d.ok(Method::DELETE, "/v1/images/busybox:layout", None)
        .await;
    // The last name of an image in use: 409.
    let msg = d
        .fails(Method::DELETE, "/v1/images/busybox:oci", None, 409)
        .await;
    assert!(msg.contains("used by"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_with_symlinked_kernel_mount_points_are_refused() {
    let d = TestDaemon::start().await;
    for (i, point) in ["proc", "dev", "sys"].iter().enumerate() {
        let archive = d.tmp.path().join(format!("evil{i}.tar"));
        let victim = d.tmp.path().join(format!("victim{i}"));
        std::fs::create_dir_all(&victim).unwrap();
        let target = victim.display().to_string();
        image_builder::write_oci_archive_with(&archive, "latest", &|tar| {
            add_symlink(tar, point, &target)
        });
        let name = format!("evil{i}:latest");
        d.import(&archive, &name).await;
        let msg = d
            .fails(
                Method::POST,
                "/v1/containers",
                Some(json!({"image": name, "command": ["true"]})),
                422,
            )
            .await;
        assert!(msg.contains(&format!("/{point} is a symlink")), "{msg}");
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "nothing mounted or created on the host"
        );
    }
    // A volume target that the image made a symlink: refused, nothing mounted there.
    let archive = d.tmp.path().join("evil-target.tar");
    let victim = d.tmp.path().join("victim-target");
    std::fs::create_dir_all(&victim).unwrap();
    let target = victim.display().to_string();
    image_builder::write_oci_archive_with(&archive, "latest", &|tar| {
        add_symlink(tar, "data", &target)
    });
    d.import(&archive, "evil-target:latest").await;
    std::fs::create_dir_all(d.array.join("vol")).unwrap();
    let msg = d
        .fails(Method::POST, "/v1/containers", Some(json!({"image": "evil-target:latest", "command": ["true"], "volumes": [{"source": "vol", "target": "/data/x"}]})), 422)
        .await;
    assert!(
        msg.contains("volumes[0].target") && msg.contains("symlink"),
        "{msg}"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let listed = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "dead"),
        "refused starts are recorded as dead: {listed}"
    );
    d.ok(Method::GET, "/v1/health", None).await;
}

/// Every image name the daemon lists.
async fn image_names(d: &TestDaemon) -> Vec<String> {
    let images = d.ok(Method::GET, "/v1/images", None).await;
    images
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// Imports a small image named `name` whose contents differ from every other name's.
async fn import_distinct(d: &TestDaemon, name: &str) {
    let archive = d.tmp.path().join(format!("{name}.tar"));
    let marker = name.to_owned();
    image_builder::write_oci_archive_with(&archive, "latest", &move |tar| {
        image_builder::add_file(tar, "etc/marker", 0o644, marker.as_bytes())
    });
    d.import(&archive, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_prune_removes_only_images_nothing_uses() {
    let mut d = TestDaemon::start().await;
    // Three images: one a container uses, one a job names, one unused.
    for name in ["kept-by-container:1", "kept-by-job:1", "unused:1"] {
        import_distinct(&d, name).await;
    }
    let (code, _) = d
        .run_to_exit(json!({"image": "kept-by-container:1", "command": ["true"]}))
        .await;
    assert_eq!(code, 0);
    d.ok(
        Method::POST,
        "/v1/jobs",
        Some(json!({"name": "yearly", "schedule": "0 0 1 1 *",
            "container": {"image": "kept-by-job:1", "command": ["true"]}})),
    )
    .await;
    // Now the timer, every 3 s; an image imported just after the start is younger than one
    // interval at the first tick, and kept then (its user may not exist yet).
    let cfg = d.tmp.path().join("inarray.toml");
    std::fs::write(&cfg, "image_prune_interval_seconds = 3\n").unwrap();
    d.kill9();
    d.config = Some(cfg);
    d.launch().await;
    import_distinct(&d, "fresh:1").await;
    let has = |names: &[String], n: &str| names.iter().any(|x| x == n);
    let until_gone = |name: &'static str| {
        let d = &d;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let names = image_names(d).await;
                if !has(&names, name) {
                    return names;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} still there: {names:?}\n{}",
                    d.log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    let names = until_gone("unused:1").await;
    assert!(
        has(&names, "fresh:1"),
        "a fresh import was pruned at once: {names:?}"
    );
    // One interval later it is old enough, and unused: it goes too.
    let names = until_gone("fresh:1").await;
    assert!(has(&names, "kept-by-container:1"), "{names:?}");
    assert!(has(&names, "kept-by-job:1"), "{names:?}");
}
