//! The end-to-end tests' busybox image (tests/common/image_builder.rs) imports in all three
//! forms and yields a runnable root filesystem.

#[path = "../../tests/common/image_builder.rs"]
mod image_builder;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use inarray_images::{ImageStore, ImportedImage, Limits, Reference};

fn check(store: &ImageStore, image: &ImportedImage, digests: &image_builder::Digests, name: &str) {
    assert_eq!(image.id, digests.config);
    assert_eq!(image.manifest_digest, digests.manifest);
    assert_eq!(image.names, vec![name.to_string()]);
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(image.config.entrypoint, None);
    assert_eq!(image.config.env, vec!["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/"));
    assert_eq!(image.layers.len(), 1);
    let dirs = store.layer_dirs(&image.diff_ids()).unwrap();
    let root = &dirs[0];
    assert!(root.join("bin/busybox").is_file());
    for applet in [
        "sh", "cat", "echo", "ls", "sleep", "id", "env", "grep", "kill",
    ] {
        assert_eq!(
            fs::read_link(root.join("bin").join(applet)).unwrap(),
            Path::new("busybox")
        );
    }
    let tmp = fs::symlink_metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(tmp.uid(), 0);
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nobody:x:65534:65534"));
    for dir in ["proc", "dev", "sys"] {
        assert!(root.join(dir).is_dir());
    }
}

#[test]
fn busybox_image_imports_in_every_form_and_runs() {
    let work = tempfile::TempDir::new().unwrap();
    let store = ImageStore::open(&work.path().join("store"), Limits::default()).unwrap();

    let layout = work.path().join("layout");
    let d1 = image_builder::write_oci_layout(&layout, "busybox:layout");
    let images = store.import_layout_dir(&layout, None).unwrap();
    check(&store, &images[0], &d1, "busybox:layout");

    let archive = work.path().join("oci.tar");
    let d2 = image_builder::write_oci_archive(&archive, "busybox:oci");
    assert_eq!(d2, d1, "layout and archive hold the same image");
    let images = store
        .import_archive(fs::File::open(&archive).unwrap(), None)
        .unwrap();
    check(&store, &images[0], &d2, "busybox:oci");

    let docker = work.path().join("docker.tar");
    let d3 = image_builder::write_docker_archive(&docker, "busybox:docker");
    assert_eq!(d3.config, d1.config);
    let images = store
        .import_archive(fs::File::open(&docker).unwrap(), None)
        .unwrap();
    check(&store, &images[0], &d3, "busybox:docker");
    let renamed = Reference::parse("registry.example/tools/bb:1").unwrap();
    let images = store
        .import_archive(fs::File::open(&docker).unwrap(), Some(&renamed))
        .unwrap();
    assert_eq!(images[0].names, vec!["registry.example/tools/bb:1"]);

    // The unpacked layer is a working root filesystem.
    let root = &store.layer_dirs(&images[0].diff_ids()).unwrap()[0];
    let out = Command::new("/usr/sbin/chroot")
        .arg(root)
        .args([
            "/bin/sh",
            "-c",
            "cd / && echo hello from $(id -u) && ls /bin | wc -l",
        ])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .expect("run chroot");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello from 0\n"), "{stdout}");
}
