//! Builders for layer tars, images, OCI layouts and docker archives used by the tests.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MTIME: u64 = 1_600_000_000;

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn hex_of(digest: &str) -> &str {
    &digest["sha256:".len()..]
}

/// Writes layer tars entry by entry, names as raw bytes (so hostile paths can be expressed).
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        link: &str,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        assert!(
            path.len() <= 100 && link.len() <= 100,
            "test paths fit the header"
        );
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(path, tar::EntryType::Regular, 0o644, 0, "", data)
    }

    pub fn file_with(&mut self, path: &str, data: &[u8], mode: u32, uid: u64) -> &mut Self {
        self.raw(path, tar::EntryType::Regular, mode, uid, "", data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(path, tar::EntryType::Directory, mode, 0, "", b"")
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, tar::EntryType::Symlink, 0o777, 0, target, b"")
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, tar::EntryType::Link, 0o644, 0, target, b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A test image: its blobs and digests.
#[derive(Clone)]
pub struct TestImage {
    /// digest → content, for manifest, config and layer blobs.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
    /// Uncompressed layer tars (what a docker archive holds).
    pub raw_layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
}

impl TestImage {
    pub fn blob(&self, digest: &str) -> &[u8] {
        &self.blobs.iter().find(|(d, _)| d == digest).unwrap().1
    }
}

pub fn image(layers: &[(Vec<u8>, Comp)]) -> TestImage {
    image_with(layers, |_| {}, |_| {})
}

/// Builds an image; `tweak_config` and `tweak_manifest` may alter the JSON before it is
/// serialized (to build broken images).
pub fn image_with(
    layers: &[(Vec<u8>, Comp)],
    tweak_config: impl FnOnce(&mut Value),
    tweak_manifest: impl FnOnce(&mut Value),
) -> TestImage {
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (tar, comp) in layers {
        let (blob, media_type) = match comp {
            Comp::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Comp::Zstd => (zstd(tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        let digest = sha(&blob);
        descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": blob.len()}));
        diff_ids.push(sha(tar));
        layer_digests.push(digest.clone());
        blobs.push((digest, blob));
    }
    let mut config = json!({
        "architecture": crate::import::host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["run", "--fast"],
            "Env": ["PATH=/bin", "MODE=test"],
            "WorkingDir": "/work",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    tweak_config(&mut config);
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha(&config);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descriptors,
    });
    tweak_manifest(&mut manifest);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = sha(&manifest);
    blobs.push((config_digest.clone(), config.clone()));
    blobs.push((manifest_digest.clone(), manifest.clone()));
    TestImage {
        blobs,
        manifest_digest,
        manifest_size: manifest.len() as u64,
        config_digest,
        layer_digests,
        diff_ids,
        raw_layers: layers.iter().map(|(t, _)| t.clone()).collect(),
        config,
    }
}

pub type Files = Vec<(String, Vec<u8>)>;

/// An OCI image layout's files; index.json comes last (as in archives where it does).
pub fn oci_files(images: &[(&TestImage, Option<&str>)]) -> Files {
    let mut files: Files = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut seen = BTreeSet::new();
    let mut manifests = Vec::new();
    for (img, name) in images {
        for (digest, data) in &img.blobs {
            if seen.insert(digest.clone()) {
                files.push((format!("blobs/sha256/{}", hex_of(digest)), data.clone()));
            }
        }
        let mut desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest,
            "size": img.manifest_size,
        });
        if let Some(name) = name {
            desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        }
        manifests.push(desc);
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    files
}

/// A docker archive's files (`docker save` layout: manifest.json, <hex>.json, <n>/layer.tar).
pub fn docker_files(images: &[(&TestImage, &[&str])]) -> Files {
    let mut files: Files = Vec::new();
    let mut entries = Vec::new();
    for (i, (img, tags)) in images.iter().enumerate() {
        let config_name = format!("{}.json", hex_of(&img.config_digest));
        files.push((config_name.clone(), img.config.clone()));
        let mut layer_paths = Vec::new();
        for (j, tar) in img.raw_layers.iter().enumerate() {
            let path = format!("img{i}layer{j}/layer.tar");
            files.push((path.clone(), tar.clone()));
            layer_paths.push(path);
        }
        entries.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layer_paths}));
    }
    files.insert(
        0,
        (
            "manifest.json".into(),
            serde_json::to_vec(&entries).unwrap(),
        ),
    );
    files
}

pub fn tar_of(files: &Files) -> Vec<u8> {
    let mut b = TarBuilder::new();
    for (path, data) in files {
        b.file(path, data);
    }
    b.finish()
}

pub fn write_dir(dir: &Path, files: &Files) {
    for (path, data) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

pub fn set_file(files: &mut Files, path: &str, data: Vec<u8>) {
    let slot = files
        .iter_mut()
        .find(|(p, _)| p == path)
        .expect("file exists");
    slot.1 = data;
}

/// Every path under the store's blobs/, layers/ and tmp/, with its type.
pub fn listing(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            out.insert(format!("{rel} {:?}", meta.file_type()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// Every path under `dir` (for sentinel checks).
pub fn all_paths(dir: &Path) -> BTreeSet<String> {
    listing(dir)
}
