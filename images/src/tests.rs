//! Import, verification, hostile-layer and gc tests (run as root: they create whiteout devices,
//! set trusted.* xattrs, chown and mount overlayfs).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;

use crate::fsutil::get_xattr;
use crate::testutil::*;
use crate::{ImageError, ImageStore, ImportedImage, Limits, Reference};

fn store() -> (TempDir, ImageStore) {
    store_with(Limits::default())
}

fn store_with(limits: Limits) -> (TempDir, ImageStore) {
    let dir = TempDir::new().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), limits).unwrap();
    (dir, store)
}

fn import_tar(store: &ImageStore, files: &Files) -> Result<Vec<ImportedImage>, ImageError> {
    store.import_archive(&tar_of(files)[..], None)
}

fn base_layer() -> Vec<u8> {
    let mut b = TarBuilder::new();
    b.dir("./", 0o755)
        .dir("bin/", 0o755)
        .file_with("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755, 0)
        .dir("etc/", 0o755)
        .file("etc/keep", b"keep")
        .file("etc/gone", b"gone")
        .dir("opt/d/", 0o750)
        .file("opt/d/old", b"old")
        .file_with("home/user/data", b"data", 0o600, 1000)
        .symlink("bin/sh", "/bin/tool")
        .hardlink("etc/keep-link", "etc/keep")
        .raw("run/fifo", tar::EntryType::Fifo, 0o620, 0, "", b"")
        .dir("tmp/", 0o1777);
    b.finish()
}

fn top_layer() -> Vec<u8> {
    let mut b = TarBuilder::new();
    b.file("etc/.wh.gone", b"")
        .dir("opt/d/", 0o750)
        .file("opt/d/.wh..wh..opq", b"")
        .file("opt/d/new", b"new")
        .file("etc/added", b"added");
    b.finish()
}

fn two_layer_image() -> TestImage {
    image(&[(base_layer(), Comp::Gzip), (top_layer(), Comp::None)])
}

fn single_layer_image(tar: Vec<u8>) -> TestImage {
    image(&[(tar, Comp::None)])
}

fn assert_empty_tmp(store: &ImageStore) {
    let left: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn imports_oci_archive_with_two_layers_whiteouts_and_opaque_dir() {
    let (_t, store) = store();
    let img = two_layer_image();
    let images = import_tar(&store, &oci_files(&[(&img, Some("example/app:1.0"))])).unwrap();
    assert_eq!(images.len(), 1);
    let got = &images[0];
    assert_eq!(got.id, img.config_digest);
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(got.names, vec!["example/app:1.0"]);
    assert_eq!(got.config.entrypoint, Some(vec!["/bin/tool".to_string()]));
    assert_eq!(
        got.config.cmd,
        Some(vec!["run".to_string(), "--fast".to_string()])
    );
    assert_eq!(got.config.env, vec!["PATH=/bin", "MODE=test"]);
    assert_eq!(got.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(got.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(got.layers.len(), 2);
    assert_eq!(
        got.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(got.layers[0].digest, img.layer_digests[0]);
    assert_eq!(got.layers[0].diff_id, img.diff_ids[0]);
    assert_eq!(
        got.layers[0].size,
        img.blob(&img.layer_digests[0]).len() as u64
    );
    let expected_size = (b"#!/bin/sh\necho tool\n".len() + 4 + 4 + 3 + 4 + 3 + 5) as u64;
    assert_eq!(got.size, expected_size);

    // Every blob is in the store under its digest.
    for (digest, data) in &img.blobs {
        let stored = fs::read(store.root().join("blobs/sha256").join(hex_of(digest))).unwrap();
        assert_eq!(&stored, data);
    }
    let dirs = store.layer_dirs(&got.diff_ids()).unwrap();
    assert!(dirs.iter().all(|d| d.is_absolute()));
    let (base, top) = (&dirs[0], &dirs[1]);
    assert!(base.ends_with(hex_of(&img.diff_ids[0])));

    // Modes, owners, times, links.
    let tool = fs::symlink_metadata(base.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), MTIME as i64);
    let data = fs::symlink_metadata(base.join("home/user/data")).unwrap();
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("/bin/tool")
    );
    let keep = fs::metadata(base.join("etc/keep")).unwrap();
    let link = fs::metadata(base.join("etc/keep-link")).unwrap();
    assert_eq!(keep.ino(), link.ino());
    let fifo = fs::symlink_metadata(base.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    let tmp = fs::symlink_metadata(base.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), MTIME as i64);
    let opt = fs::symlink_metadata(base.join("opt/d")).unwrap();
    assert_eq!(opt.mode() & 0o7777, 0o750);
    // "home/user" was never listed: created implicitly, 0755 root.
    let home = fs::symlink_metadata(base.join("home/user")).unwrap();
    assert_eq!((home.mode() & 0o7777, home.uid()), (0o755, 0));

    // The whiteout is a 0:0 char device, the opaque dir carries the overlay xattr.
    let wh = fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("etc/.wh.gone").exists());
    assert_eq!(
        get_xattr(&top.join("opt/d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("opt/d/.wh..wh..opq").exists());
    assert_eq!(fs::read(top.join("opt/d/new")).unwrap(), b"new");
    assert_empty_tmp(&store);

    // And overlayfs honours both.
    let mnt = TempDir::new().unwrap();
    let opts = format!("lowerdir={}:{}", top.display(), base.display());
    nix::mount::mount(
        Some("overlay"),
        mnt.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount overlayfs (tests run as root)");
    let seen = (
        mnt.path().join("etc/gone").exists(),
        mnt.path().join("etc/keep").exists(),
        mnt.path().join("etc/added").exists(),
        mnt.path().join("opt/d/old").exists(),
        mnt.path().join("opt/d/new").exists(),
    );
    nix::mount::umount(mnt.path()).unwrap();
    assert_eq!(seen, (false, true, true, false, true));
}

#[test]
fn imports_zstd_layers_with_skippable_frames() {
    let (_t, store) = store();
    let tar = base_layer();
    let mut blob = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]; // skippable frame
    blob.extend(zstd(&tar[..1024]));
    blob.extend(zstd(&tar[1024..]));
    let img = image(&[(tar, Comp::Zstd)]);
    let mut files = oci_files(&[(&img, None)]);
    // Swap in the multi-frame blob and fix the descriptor chain.
    let img2 = {
        let diff = img.diff_ids[0].clone();
        image_with(
            &[(base_layer(), Comp::Zstd)],
            |c| c["rootfs"]["diff_ids"] = json!([diff]),
            |m| {
                m["layers"][0]["digest"] = json!(sha(&blob));
                m["layers"][0]["size"] = json!(blob.len());
            },
        )
    };
    files.retain(|(p, _)| !p.starts_with("blobs/") && p != "index.json");
    files.push((
        format!("blobs/sha256/{}", hex_of(&sha(&blob))),
        blob.clone(),
    ));
    let mut rest = oci_files(&[(&img2, Some("z:1"))]);
    rest.retain(|(p, _)| p != "oci-layout" && !p.ends_with(hex_of(&img2.layer_digests[0])));
    files.extend(rest);
    let images = import_tar(&store, &files).unwrap();
    assert_eq!(
        images[0].layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let dirs = store.layer_dirs(&images[0].diff_ids()).unwrap();
    assert_eq!(fs::read(dirs[0].join("etc/keep")).unwrap(), b"keep");
}

#[test]
fn imports_docker_archive() {
    let (_t, store) = store();
    let img = two_layer_image();
    let files = docker_files(&[(
        &img,
        &[
            "docker.io/library/app:2",
            "registry.example:5000/team/app:2",
        ],
    )]);
    let images = import_tar(&store, &files).unwrap();
    assert_eq!(images.len(), 1);
    let got = &images[0];
    assert_eq!(got.id, img.config_digest);
    assert_eq!(got.names, vec!["app:2", "registry.example:5000/team/app:2"]);
    assert_eq!(
        got.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(got.layers[0].diff_id, img.diff_ids[0]);
    // The synthesized manifest is stored as a blob and names the config and layers.
    let manifest = fs::read(
        store
            .root()
            .join("blobs/sha256")
            .join(hex_of(&got.manifest_digest)),
    )
    .unwrap();
    assert_eq!(sha(&manifest), got.manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["config"]["digest"], json!(img.config_digest));
    assert_eq!(
        manifest["layers"][1]["digest"],
        json!(sha(&img.raw_layers[1]))
    );
    for layer in &got.layers {
        assert!(store
            .root()
            .join("blobs/sha256")
            .join(hex_of(&layer.digest))
            .is_file());
    }
    let dirs = store.layer_dirs(&got.diff_ids()).unwrap();
    assert!(fs::symlink_metadata(dirs[1].join("etc/gone"))
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn imports_docker_archive_with_symlinked_layers_and_gzip_layer_files() {
    let (_t, store) = store();
    let shared = base_layer();
    let a = image(&[(shared.clone(), Comp::None)]);
    let b = image(&[(shared.clone(), Comp::None), (top_layer(), Comp::None)]);
    let mut files = docker_files(&[(&a, &["a:1"]), (&b, &["b:1"])]);
    // Old docker save writes a duplicated layer as a symlink to the first copy; and a layer
    // file may be gzip-compressed although named layer.tar.
    files.retain(|(p, _)| p != "img1layer0/layer.tar");
    set_file(&mut files, "img1layer1/layer.tar", gzip(&top_layer()));
    let mut tar = TarBuilder::new();
    for (path, data) in &files {
        tar.file(path, data);
    }
    tar.symlink("img1layer0/layer.tar", "../img0layer0/layer.tar");
    let images = store.import_archive(&tar.finish()[..], None).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[1].names, vec!["b:1"]);
    assert_eq!(
        images[1].layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(images[0].layers[0].diff_id, images[1].layers[0].diff_id);
}

#[test]
fn imports_layout_dir() {
    let (_t, store) = store();
    let img = two_layer_image();
    let layout = TempDir::new().unwrap();
    write_dir(layout.path(), &oci_files(&[(&img, Some("localhost/app"))]));
    let name = Reference::parse("renamed:7").unwrap();
    let images = store.import_layout_dir(layout.path(), Some(&name)).unwrap();
    assert_eq!(images[0].names, vec!["renamed:7"]);
    assert_eq!(images[0].id, img.config_digest);
    store.layer_dirs(&images[0].diff_ids()).unwrap();
    assert_empty_tmp(&store);
}

#[test]
fn layout_dir_symlinks_cannot_reach_outside() {
    let (_t, store) = store();
    let img = two_layer_image();
    let layout = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    let mut files = oci_files(&[(&img, None)]);
    let victim = format!("blobs/sha256/{}", hex_of(&img.layer_digests[0]));
    let data = files.iter().find(|(p, _)| *p == victim).unwrap().1.clone();
    files.retain(|(p, _)| *p != victim);
    write_dir(layout.path(), &files);
    // The blob sits outside the layout, reached through an absolute symlink: resolved inside
    // the layout instead, so it is missing.
    fs::write(outside.path().join("blob"), &data).unwrap();
    std::os::unix::fs::symlink(outside.path().join("blob"), layout.path().join(&victim)).unwrap();
    let err = store.import_layout_dir(layout.path(), None).unwrap_err();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
}

#[test]
fn shared_layer_is_unpacked_once() {
    let (_t, store) = store();
    let a = image(&[(base_layer(), Comp::Gzip)]);
    let b = image(&[(base_layer(), Comp::Gzip), (top_layer(), Comp::None)]);
    let images = import_tar(&store, &oci_files(&[(&a, Some("a")), (&b, Some("b"))])).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].layers[0].diff_id, images[1].layers[0].diff_id);
    let layers: Vec<_> = fs::read_dir(store.root().join("layers/sha256"))
        .unwrap()
        .collect();
    assert_eq!(layers.len(), 2);
    let base_dir = &store.layer_dirs(&images[0].diff_ids()).unwrap()[0];
    let inode = fs::metadata(base_dir.join("etc/keep")).unwrap().ino();

    // A later import using the same layer (here plain rather than gzip) reuses the directory.
    let c = image(&[(base_layer(), Comp::None)]);
    let again = import_tar(&store, &oci_files(&[(&c, Some("c"))])).unwrap();
    assert_eq!(again[0].layers[0].diff_id, images[0].layers[0].diff_id);
    assert_eq!(again[0].size, images[0].size);
    assert_eq!(
        fs::metadata(base_dir.join("etc/keep")).unwrap().ino(),
        inode
    );
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        2
    );
}

/// Imports a good image, then `bad`: it must fail and leave the store exactly as it was.
fn assert_refused(
    limits: Limits,
    bad: impl FnOnce(&ImageStore) -> Result<Vec<ImportedImage>, ImageError>,
) -> ImageError {
    let (t, store) = store();
    let good = image(&[(
        TarBuilder::new().file("ok", b"ok").clone_finish(),
        Comp::Gzip,
    )]);
    import_tar(&store, &oci_files(&[(&good, Some("good"))])).unwrap();
    let store = ImageStore::open(&t.path().join("images"), limits).unwrap();
    let before = listing(store.root());
    let err = bad(&store).expect_err("import must fail");
    assert_eq!(
        listing(store.root()),
        before,
        "store changed by a failed import: {err}"
    );
    assert!(err.is_invalid_input(), "{err} should be a client error");
    err
}

trait CloneFinish {
    fn clone_finish(&mut self) -> Vec<u8>;
}

impl CloneFinish for TarBuilder {
    fn clone_finish(&mut self) -> Vec<u8> {
        std::mem::replace(self, TarBuilder::new()).finish()
    }
}

#[test]
fn digest_mismatch_is_refused() {
    let img = two_layer_image();
    let mut files = oci_files(&[(&img, None)]);
    let path = format!("blobs/sha256/{}", hex_of(&img.layer_digests[1]));
    let mut data = img.blob(&img.layer_digests[1]).to_vec();
    data[600] ^= 1;
    set_file(&mut files, &path, data);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

#[test]
fn truncated_blob_is_refused() {
    let img = two_layer_image();
    let mut files = oci_files(&[(&img, None)]);
    let path = format!("blobs/sha256/{}", hex_of(&img.layer_digests[0]));
    let data = img.blob(&img.layer_digests[0]);
    set_file(&mut files, &path, data[..data.len() - 10].to_vec());
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
}

#[test]
fn truncated_archive_is_refused() {
    let img = two_layer_image();
    let archive = tar_of(&oci_files(&[(&img, None)]));
    let err = assert_refused(Limits::default(), |s| {
        s.import_archive(&archive[..archive.len() / 2], None)
    });
    assert!(matches!(err, ImageError::ArchiveRead(_)), "{err}");
}

#[test]
fn missing_blob_is_refused() {
    let img = two_layer_image();
    let mut files = oci_files(&[(&img, None)]);
    let path = format!("blobs/sha256/{}", hex_of(&img.layer_digests[1]));
    files.retain(|(p, _)| *p != path);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(
        matches!(err, ImageError::MissingBlob { what: "layer", .. }),
        "{err}"
    );

    let mut files = oci_files(&[(&img, None)]);
    let path = format!("blobs/sha256/{}", hex_of(&img.config_digest));
    files.retain(|(p, _)| *p != path);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(
        matches!(err, ImageError::MissingBlob { what: "config", .. }),
        "{err}"
    );
}

#[test]
fn wrong_diff_id_is_refused_and_nothing_is_unpacked() {
    let img = image_with(
        &[(base_layer(), Comp::Gzip), (top_layer(), Comp::None)],
        |c| c["rootfs"]["diff_ids"][1] = json!(sha(b"something else")),
        |_| {},
    );
    let files = oci_files(&[(&img, None)]);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");

    let img = image_with(
        &[(base_layer(), Comp::Gzip)],
        |c| c["rootfs"]["diff_ids"] = json!([]),
        |_| {},
    );
    let files = oci_files(&[(&img, None)]);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(err.to_string().contains("0 diff ids for 1 layers"), "{err}");
}

#[test]
fn wrong_diff_id_for_a_layer_already_in_the_store_is_refused() {
    let (_t, store) = store();
    let a = image(&[(base_layer(), Comp::None)]);
    import_tar(&store, &oci_files(&[(&a, None)])).unwrap();
    // A second image claims a.diff_id for a different blob: the existing directory must not be
    // taken on trust.
    let claimed = a.diff_ids[0].clone();
    let b = image_with(
        &[(top_layer(), Comp::None)],
        |c| c["rootfs"]["diff_ids"] = json!([claimed]),
        |_| {},
    );
    let before = listing(store.root());
    let err = import_tar(&store, &oci_files(&[(&b, None)])).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert_eq!(listing(store.root()), before);
}

#[test]
fn gzip_bomb_is_refused() {
    let mut b = TarBuilder::new();
    b.file("zeros", &vec![0u8; 8 * 1024 * 1024]);
    let img = image(&[(b.finish(), Comp::Gzip)]);
    assert!(img.blob(&img.layer_digests[0]).len() < 100 * 1024);
    let files = oci_files(&[(&img, None)]);
    let limits = Limits {
        max_unpacked_layer_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let err = assert_refused(limits, |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("exceeds the limit of 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn oversize_blob_and_manifest_are_refused() {
    let img = two_layer_image();
    let files = oci_files(&[(&img, None)]);
    let limits = Limits {
        max_manifest_bytes: 64,
        ..Limits::default()
    };
    let err = assert_refused(limits, |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    let limits = Limits {
        max_blob_bytes: 1000,
        ..Limits::default()
    };
    let err = assert_refused(limits, |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
}

#[test]
fn malformed_metadata_is_refused() {
    let img = two_layer_image();
    let mut files = oci_files(&[(&img, None)]);
    set_file(
        &mut files,
        "index.json",
        b"{\"schemaVersion\": 2, \"manifests\": [".to_vec(),
    );
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::Json { .. }), "{err}");

    let bad = image_with(
        &[(base_layer(), Comp::Gzip)],
        |_| {},
        |m| m["layers"][0]["mediaType"] = json!("application/x-evil"),
    );
    let err = assert_refused(Limits::default(), |s| {
        import_tar(s, &oci_files(&[(&bad, None)]))
    });
    assert!(matches!(err, ImageError::UnsupportedMediaType(_)), "{err}");

    let bad = image_with(
        &[(base_layer(), Comp::Gzip)],
        |_| {},
        |m| m["config"]["mediaType"] = json!("application/vnd.example.artifact"),
    );
    let err = assert_refused(Limits::default(), |s| {
        import_tar(s, &oci_files(&[(&bad, None)]))
    });
    assert!(matches!(err, ImageError::UnsupportedMediaType(_)), "{err}");

    let bad = image_with(
        &[(base_layer(), Comp::Gzip)],
        |_| {},
        |m| m["layers"][0]["digest"] = json!("md5:abc"),
    );
    let err = assert_refused(Limits::default(), |s| {
        import_tar(s, &oci_files(&[(&bad, None)]))
    });
    assert!(matches!(err, ImageError::InvalidDigest(_)), "{err}");

    let err = assert_refused(Limits::default(), |s| {
        s.import_archive(&tar_of(&vec![("hello".into(), b"x".to_vec())])[..], None)
    });
    assert!(matches!(err, ImageError::InvalidArchive(_)), "{err}");

    let mut files = docker_files(&[(&img, &["x:1"])]);
    files.retain(|(p, _)| p != "img0layer1/layer.tar");
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(
        matches!(err, ImageError::MissingFile { what: "layer", .. }),
        "{err}"
    );

    let mut files = docker_files(&[(&img, &["x:1"])]);
    let config = format!("{}.json", hex_of(&img.config_digest));
    set_file(
        &mut files,
        &config,
        b"{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}".to_vec(),
    );
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

    let files = docker_files(&[(&img, &["Bad:Name"])]);
    let err = assert_refused(Limits::default(), |s| import_tar(s, &files));
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
}

#[test]
fn picks_the_host_platform_from_a_nested_index() {
    let (_t, store) = store();
    let ours = image(&[(base_layer(), Comp::Gzip)]);
    let theirs = image(&[(top_layer(), Comp::Gzip)]);
    let mut files = oci_files(&[(&ours, None), (&theirs, None)]);
    files.retain(|(p, _)| p != "index.json" && !p.ends_with(hex_of(&theirs.layer_digests[0])));
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": theirs.manifest_digest,
             "size": theirs.manifest_size, "platform": {"os": "linux", "architecture": "not-this-one"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ours.manifest_digest,
             "size": ours.manifest_size, "platform": {"os": "linux", "architecture": crate::import::host_arch()}},
        ]
    });
    let nested = serde_json::to_vec(&nested).unwrap();
    files.push((
        format!("blobs/sha256/{}", hex_of(&sha(&nested))),
        nested.clone(),
    ));
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(&nested), "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}]});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    let images = import_tar(&store, &files).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, ours.config_digest);
    assert_eq!(images[0].names, vec!["multi:1"]);
}

#[test]
fn name_override_needs_a_single_image() {
    let (_t, store) = store();
    let a = image(&[(base_layer(), Comp::Gzip)]);
    let b = image(&[(top_layer(), Comp::Gzip)]);
    let name = Reference::parse("x:1").unwrap();
    let archive = tar_of(&oci_files(&[(&a, None), (&b, None)]));
    let err = store.import_archive(&archive[..], Some(&name)).unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive(_)), "{err}");
    let archive = tar_of(&oci_files(&[(&a, Some("old:1"))]));
    let images = store.import_archive(&archive[..], Some(&name)).unwrap();
    assert_eq!(images[0].names, vec!["x:1"]);
}

// ---- hostile layers -------------------------------------------------------------------------

/// Imports a one-layer image made of `tar`; returns the result, the unpacked layer dir (if
/// any) and the store listing before/after.
fn import_layer(store: &ImageStore, tar: Vec<u8>) -> Result<PathBuf, ImageError> {
    let img = single_layer_image(tar);
    let before = listing(store.root());
    match import_tar(store, &oci_files(&[(&img, None)])) {
        Ok(images) => Ok(store.layer_dirs(&images[0].diff_ids()).unwrap().remove(0)),
        Err(e) => {
            assert_eq!(
                listing(store.root()),
                before,
                "failed import changed the store: {e}"
            );
            assert_empty_tmp(store);
            Err(e)
        }
    }
}

fn refused_entry(err: ImageError) -> (String, String) {
    match err {
        ImageError::UnsafeEntry { entry, reason, .. } => (entry, reason),
        other => panic!("expected an unsafe-entry error, got {other}"),
    }
}

#[test]
fn dotdot_entries_are_refused() {
    let (_t, store) = store();
    for path in ["../x", "a/../../x", "./a/b/../../../x", "a/.."] {
        let mut b = TarBuilder::new();
        b.file("fine", b"1").file(path, b"evil");
        let (entry, reason) = refused_entry(import_layer(&store, b.finish()).unwrap_err());
        assert_eq!(entry, path);
        assert!(reason.contains(".."), "{reason}");
    }
    let mut b = TarBuilder::new();
    b.symlink("ok", "x").hardlink("h", "../../etc/passwd");
    let (entry, _) = refused_entry(import_layer(&store, b.finish()).unwrap_err());
    assert_eq!(entry, "h");
}

#[test]
fn absolute_entries_are_confined_to_the_layer() {
    let (_t, store) = store();
    let sentinel = TempDir::new().unwrap();
    let target = sentinel.path().join("abs-file");
    let mut b = TarBuilder::new();
    b.file(target.to_str().unwrap(), b"inside")
        .file("/etc/abs", b"x");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert!(!target.exists());
    let confined = layer.join(target.strip_prefix("/").unwrap());
    assert_eq!(fs::read(confined).unwrap(), b"inside");
    assert_eq!(fs::read(layer.join("etc/abs")).unwrap(), b"x");
}

#[test]
fn symlink_then_file_through_it_never_leaves_the_layer() {
    let (_t, store) = store();
    let sentinel = TempDir::new().unwrap();
    let outside = sentinel.path().to_str().unwrap().to_string();
    let victim = sentinel.path().join("victim");
    fs::write(&victim, b"original").unwrap();
    let before = all_paths(sentinel.path());

    // 1. absolute symlink to an outside dir, file written through it: the link resolves inside
    //    the layer, where that dir does not exist -> refused.
    let mut b = TarBuilder::new();
    b.symlink("escape", &outside).file("escape/pwned", b"evil");
    let (entry, reason) = refused_entry(import_layer(&store, b.finish()).unwrap_err());
    assert_eq!(entry, "escape/pwned");
    assert!(reason.contains("dangling"), "{reason}");

    // 2. same, but the target path also exists inside the layer: the file lands there.
    let mut b = TarBuilder::new();
    b.dir(&format!("{outside}/"), 0o755)
        .symlink("escape", &outside)
        .file("escape/pwned", b"evil");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert_eq!(
        fs::read(layer.join(&outside[1..]).join("pwned")).unwrap(),
        b"evil"
    );

    // 3. relative symlink climbing with ".." (allowed in link targets) then a nested write.
    let mut b = TarBuilder::new();
    b.symlink("up", "../../../../../../../../..")
        .file(&format!("up{outside}/victim"), b"evil")
        .file("up/tmp-file", b"evil");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert_eq!(
        fs::read(layer.join(&outside[1..]).join("victim")).unwrap(),
        b"evil"
    );
    assert_eq!(fs::read(layer.join("tmp-file")).unwrap(), b"evil");

    // 4. symlink to the victim file, then a regular file of the same name: the link is
    //    replaced, the victim untouched.
    let mut b = TarBuilder::new();
    b.symlink("v", victim.to_str().unwrap()).file("v", b"evil");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert_eq!(fs::read(layer.join("v")).unwrap(), b"evil");
    assert!(!fs::symlink_metadata(layer.join("v"))
        .unwrap()
        .file_type()
        .is_symlink());

    // 5. symlink to the outside dir, then a directory entry and a hard link through it.
    let mut b = TarBuilder::new();
    b.symlink("d", &outside)
        .dir("d/", 0o777)
        .file("d/f", b"evil");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert!(fs::symlink_metadata(layer.join("d")).unwrap().is_dir());

    // 6. a whiteout and an opaque marker through a symlink to the outside dir.
    let mut b = TarBuilder::new();
    b.symlink("w", &outside)
        .file("w/.wh.victim", b"")
        .file("w/.wh..wh..opq", b"");
    let (entry, _) = refused_entry(import_layer(&store, b.finish()).unwrap_err());
    assert_eq!(entry, "w/.wh.victim");

    assert_eq!(
        all_paths(sentinel.path()),
        before,
        "something was created outside"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(get_xattr(sentinel.path(), "trusted.overlay.opaque"), None);
}

#[test]
fn hard_links_outside_the_layer_are_refused() {
    let (_t, store) = store();
    let passwd_before = fs::metadata("/etc/passwd").unwrap().nlink();
    for (setup, link) in [
        (None, "/etc/passwd"),
        (None, "etc/passwd"),
        (Some(("s", "/etc")), "s/passwd"),
        (Some(("s", "/etc/passwd")), "s"),
    ] {
        let mut b = TarBuilder::new();
        if let Some((name, target)) = setup {
            b.symlink(name, target);
        }
        b.hardlink("pw", link);
        let result = import_layer(&store, b.finish());
        match (setup, result) {
            // A hard link to a symlink inside the layer links the symlink itself.
            (Some((_, "/etc/passwd")), Ok(layer)) => {
                assert!(fs::symlink_metadata(layer.join("pw"))
                    .unwrap()
                    .file_type()
                    .is_symlink());
            }
            (_, Err(err)) => {
                let (entry, reason) = refused_entry(err);
                assert_eq!(entry, "pw");
                assert!(reason.contains("not in this layer"), "{reason}");
            }
            (_, Ok(_)) => panic!("hard link to {link} was accepted"),
        }
    }
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_before);
}

#[test]
fn device_nodes_are_refused_fifos_are_not() {
    let (_t, store) = store();
    for kind in [tar::EntryType::Char, tar::EntryType::Block] {
        let mut b = TarBuilder::new();
        b.raw("dev/null", kind, 0o666, 0, "", b"");
        let (entry, reason) = refused_entry(import_layer(&store, b.finish()).unwrap_err());
        assert_eq!(entry, "dev/null");
        assert!(reason.contains("device nodes"), "{reason}");
    }
    let mut b = TarBuilder::new();
    b.raw("p", tar::EntryType::Fifo, 0o600, 0, "", b"");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert!(fs::symlink_metadata(layer.join("p"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn later_entries_replace_earlier_ones_like_tar() {
    let (_t, store) = store();
    let mut b = TarBuilder::new();
    b.file("a/x", b"1")
        .file("a", b"file replaces dir")
        .dir("b/", 0o700)
        .dir("b/", 0o755)
        .file(".wh.c", b"")
        .dir("c/", 0o755)
        .file("d", b"kept")
        .file(".wh.d", b"")
        .hardlink("self", "self");
    let layer = import_layer(&store, b.finish()).unwrap();
    assert_eq!(fs::read(layer.join("a")).unwrap(), b"file replaces dir");
    assert_eq!(
        fs::metadata(layer.join("b")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // A directory replacing a whiteout of this layer hides the lower one.
    assert_eq!(
        get_xattr(&layer.join("c"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(layer.join("d")).unwrap(), b"kept");
}

#[test]
fn layer_root_metadata_and_xattrs() {
    let (_t, store) = store();
    let mut t = tar::Builder::new(Vec::new());
    t.append_pax_extensions([
        ("SCHILY.xattr.user.note", &b"hello"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o755);
    h.set_mtime(MTIME);
    t.append_data(&mut h, "bin/ping", &b"pp"[..]).unwrap();
    let layer = import_layer(&store, t.into_inner().unwrap()).unwrap();
    assert_eq!(
        get_xattr(&layer.join("bin/ping"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        get_xattr(&layer.join("bin/ping"), "trusted.overlay.redirect"),
        None
    );
}

// ---- store management ----------------------------------------------------------------------

#[test]
fn gc_keeps_what_is_referenced() {
    let (_t, store) = store();
    let a = image(&[(base_layer(), Comp::Gzip)]);
    let b = image(&[(base_layer(), Comp::Gzip), (top_layer(), Comp::None)]);
    let images = import_tar(&store, &oci_files(&[(&a, Some("a")), (&b, Some("b"))])).unwrap();
    let keep: HashSet<String> = images[0].referenced_digests().map(str::to_string).collect();
    let report = store.gc(&keep).unwrap();
    // b's manifest, config, top layer blob and top layer dir go; the shared base stays.
    assert_eq!(report.blobs_removed, 3);
    assert_eq!(report.layers_removed, 1);
    assert!(report.bytes_freed > 0);
    store.layer_dirs(&images[0].diff_ids()).unwrap();
    let err = store.layer_dirs(&images[1].diff_ids()).unwrap_err();
    assert!(matches!(err, ImageError::MissingLayer { .. }), "{err}");
    for digest in &keep {
        let hex = hex_of(digest);
        assert!(
            store.root().join("blobs/sha256").join(hex).exists()
                || store.root().join("layers/sha256").join(hex).exists()
        );
    }
    let report = store.gc(&HashSet::new()).unwrap();
    assert_eq!((report.blobs_removed, report.layers_removed), (3, 1));
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_empty_tmp(&store);
}

#[test]
fn open_clears_stale_staging_and_layer_dirs_validates() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("store");
    let store = ImageStore::open(&root, Limits::default()).unwrap();
    fs::create_dir_all(store.root().join("tmp/import-1-1/layer-0/x")).unwrap();
    fs::write(store.root().join("tmp/stray"), b"x").unwrap();
    let store = ImageStore::open(&root, Limits::default()).unwrap();
    assert_empty_tmp(&store);
    assert_eq!(
        fs::metadata(store.root()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(matches!(
        store.layer_dirs(&["sha256:abc".into()]),
        Err(ImageError::InvalidDigest(_))
    ));
    let missing = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        store.layer_dirs(&[missing]),
        Err(ImageError::MissingLayer { .. })
    ));
}

#[test]
fn imported_image_round_trips_as_json() {
    let (_t, store) = store();
    let img = two_layer_image();
    let images = import_tar(&store, &oci_files(&[(&img, Some("j:1"))])).unwrap();
    let text = serde_json::to_string(&images[0]).unwrap();
    let back: ImportedImage = serde_json::from_str(&text).unwrap();
    assert_eq!(back, images[0]);
}

/// `docker save img | gzip` (and zstd) loads as the plain archive does; bzip2 and xz are refused
/// by name; a compressed archive that inflates beyond the limit is refused with the store
/// unchanged.
#[test]
fn imports_compressed_archives_and_refuses_what_it_cannot_read() {
    let img = two_layer_image();
    let files = docker_files(&[(&img, &["app:2"])]);
    let plain = tar_of(&files);
    for (what, data) in [("gzip", gzip(&plain)), ("zstd", zstd(&plain))] {
        let (_t, store) = store();
        let images = store
            .import_archive(&data[..], None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(images[0].id, img.config_digest, "{what}");
        assert_eq!(images[0].names, vec!["app:2"], "{what}");
    }
    let (_t, store) = store();
    for (kind, head) in [
        ("bzip2", &b"BZh91AY&SY"[..]),
        ("xz", &b"\xfd7zXZ\0\0\x04"[..]),
    ] {
        let e = store.import_archive(head, None).unwrap_err().to_string();
        assert!(e.contains(&format!("{kind}-compressed")), "{e}");
    }
    // A short stream is still read as what it is (an empty tar is no image).
    assert!(store.import_archive(&b"x"[..], None).is_err());
    let small = ImageStore::open(
        &_t.path().join("small"),
        crate::Limits {
            max_unpacked_layer_bytes: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let e = small
        .import_archive(&gzip(&plain)[..], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than the limit"), "{e}");
    assert!(
        fs::read_dir(small.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none(),
        "nothing was kept"
    );
}

/// An exported archive is a valid tar (the `tar` crate reads it) that imports again, gzipped
/// too, as the same image with the same names.
#[test]
fn export_round_trips_through_import() {
    let (_t, store) = store();
    let img = two_layer_image();
    let files = docker_files(&[(&img, &["app:2"])]);
    let got = import_tar(&store, &files).unwrap().remove(0);
    let export = crate::ExportImage {
        names: vec!["app:2".into()],
        manifest_digest: got.manifest_digest.clone(),
        config_digest: got.id.clone(),
        layer_digests: got.layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let mut out = Vec::new();
    store
        .export_archive(std::slice::from_ref(&export), &mut out)
        .unwrap();
    let mut names: Vec<String> = tar::Archive::new(&out[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"index.json".to_string()), "{names:?}");
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    assert!(
        names.contains(&format!("blobs/sha256/{}", hex_of(&got.id))),
        "{names:?}"
    );
    for data in [out.clone(), gzip(&out)] {
        let (_t2, other) = self::store();
        let again = other.import_archive(&data[..], None).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, got.id);
        assert_eq!(again[0].manifest_digest, got.manifest_digest);
        assert_eq!(again[0].names, vec!["app:2"]);
    }
    // A blob the store lacks is an error, not a short archive.
    let mut missing = export;
    missing
        .layer_digests
        .push(format!("sha256:{}", "0".repeat(64)));
    assert!(store.export_archive(&[missing], &mut Vec::new()).is_err());
}
