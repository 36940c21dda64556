//! Faults: the daemon's disk fills up. Every call that needs space fails with a clear error,
//! nothing is half-made, the daemon keeps serving, and once space is back everything works and
//! the database is intact.

mod common;

use common::daemon::TestDaemon;
use inarray_api::client::ClientError;
use inarray_api::client::Method;
use serde_json::json;

/// A small tmpfs mounted over the daemon's state directory, lazily unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, mib: u64) -> Self {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={mib}m").as_str()),
        )
        .expect("mount a tmpfs for the state directory");
        SmallDisk(at.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the filesystem of `dir` until a write fails; returns the filler file.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_clear_errors_and_recovery_once_space_is_back() {
    let mut d = TestDaemon::start().await;
    // The same daemon, restarted on a 48 MiB state disk.
    d.kill9();
    std::fs::remove_dir_all(&d.state).unwrap();
    let _disk = SmallDisk::mount(&d.state, 48);
    d.launch().await;
    d.with_busybox().await;
    let before = d.ok(Method::GET, "/v1/images", None).await;

    let filler = fill(&d.state);
    // Creating a container needs space (its row, bundle and overlay directories).
    let body = json!({"image": "busybox", "name": "c1", "command": ["true"]});
    match d
        .call(Method::POST, "/v1/containers", Some(body.clone()))
        .await
    {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert!(
                status.as_u16() == 507 || status.is_server_error(),
                "{status}: {message}"
            );
            assert!(
                message.contains("space") || message.contains("full"),
                "the error says why: {message}"
            );
        }
        other => panic!("create on a full disk: {other:?}"),
    }
    // An import fails too, and leaves the image list as it was.
    let archive = d.tmp.path().join("again.tar");
    common::image_builder::write_oci_archive(&archive, "other:1");
    assert!(d
        .client()
        .upload("/v1/images/import?name=other:1", &archive)
        .await
        .is_err());
    // Still serving.
    assert_eq!(d.ok(Method::GET, "/v1/health", None).await["status"], "ok");
    assert_eq!(d.ok(Method::GET, "/v1/images", None).await, before);
    let listed = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "c1" || c["state"] == "dead"),
        "no half-made container: {listed}"
    );

    // Space back: everything works, and the database is intact.
    std::fs::remove_file(filler).unwrap();
    let (code, _) = d
        .run_to_exit(json!({"image": "busybox", "name": "c2", "command": ["true"]}))
        .await;
    assert_eq!(code, 0);
    d.import(&archive, "other:1").await;
    d.kill9();
    let store = inarray_store::Store::open(&d.state.join("state.db"))
        .await
        .unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
    d.launch().await;
    assert_eq!(d.ok(Method::GET, "/v1/health", None).await["status"], "ok");
}
