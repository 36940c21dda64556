//! Builds a small busybox image for end-to-end tests, in the three forms the daemon imports:
//! an OCI image layout directory, an OCI archive (a tar of that layout, as
//! `skopeo copy … oci-archive:` writes) and a docker archive (as `docker save` writes).
//!
//! The image has one gzip layer: `bin/busybox` (Debian's busybox-static, copied from
//! `/bin/busybox`) with a symlink `bin/<applet>` for every applet `busybox --list` names,
//! `etc/passwd` and `etc/group` (root, nobody 65534), `tmp` (1777), `root`, `proc`, `dev`, `sys`.
//! Config: no entrypoint, `Cmd ["sh"]`, `Env ["PATH=/bin"]`, `WorkingDir "/"`.
//!
//! Uses only std, tar, flate2, sha2, hex and serde_json. Include it with `mod common;`.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where the busybox binary comes from.
pub const BUSYBOX: &str = "/bin/busybox";
const MTIME: u64 = 1_700_000_000;
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Digests ("sha256:<hex>") of what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// The image config: the image id.
    pub config: String,
    /// The manifest. For a docker archive (which has none) this is the OCI manifest inarray
    /// synthesizes on import: plain-tar layer, OCI media types, fixed JSON layout.
    pub manifest: String,
}

/// Writes an OCI image layout directory at `dir` (created if needed) holding the busybox image,
/// named `ref_name` (the `org.opencontainers.image.ref.name` annotation).
pub fn write_oci_layout(dir: &Path, ref_name: &str) -> Digests {
    let image = BusyboxImage::build();
    for (path, data) in image.oci_files(ref_name) {
        let target = dir.join(&path);
        fs::create_dir_all(target.parent().expect("has a parent"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", target.display()));
        fs::write(&target, data)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
    }
    image.oci_digests()
}

/// Writes an OCI archive (a tar of the layout, like `skopeo copy … oci-archive:PATH:REF`).
pub fn write_oci_archive(path: &Path, ref_name: &str) -> Digests {
    write_oci_archive_with(path, ref_name, &|_| {})
}

/// Like [`write_oci_archive`], with `extra` appending entries to the layer after the standard
/// ones (later entries replace earlier ones, as in any tar): for images with hostile contents.
pub fn write_oci_archive_with(
    path: &Path,
    ref_name: &str,
    extra: &dyn Fn(&mut tar::Builder<Vec<u8>>),
) -> Digests {
    let image = BusyboxImage::build_with(extra);
    let files = image.oci_files(ref_name);
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        append(&mut tar, dir, tar::EntryType::Directory, 0o755, b"");
    }
    for (name, data) in &files {
        append(&mut tar, name, tar::EntryType::Regular, 0o644, data);
    }
    write_file(path, &tar.into_inner().expect("finish archive"));
    image.oci_digests()
}

/// Writes a docker archive (`docker save` layout: manifest.json, `<hex>.json` config,
/// `<hex>/layer.tar` uncompressed) tagged `repo_tag`.
pub fn write_docker_archive(path: &Path, repo_tag: &str) -> Digests {
    let image = BusyboxImage::build();
    let config_name = format!("{}.json", hex_of(&image.config_digest));
    let layer_name = format!("{}/layer.tar", hex_of(&image.diff_id));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": [layer_name],
    }]);
    let mut tar = tar::Builder::new(Vec::new());
    append(
        &mut tar,
        "manifest.json",
        tar::EntryType::Regular,
        0o644,
        &serde_json::to_vec(&manifest).expect("serialize manifest.json"),
    );
    append(
        &mut tar,
        &config_name,
        tar::EntryType::Regular,
        0o644,
        &image.config,
    );
    append(
        &mut tar,
        &format!("{}/", hex_of(&image.diff_id)),
        tar::EntryType::Directory,
        0o755,
        b"",
    );
    append(
        &mut tar,
        &layer_name,
        tar::EntryType::Regular,
        0o644,
        &image.layer_tar,
    );
    write_file(path, &tar.into_inner().expect("finish archive"));

    let synthesized = manifest_json(
        &image.config_digest,
        image.config.len(),
        MEDIA_LAYER_TAR,
        &image.diff_id,
        image.layer_tar.len(),
    );
    Digests {
        config: image.config_digest.clone(),
        manifest: sha256(synthesized.as_bytes()),
    }
}

struct BusyboxImage {
    layer_tar: Vec<u8>,
    layer_gz: Vec<u8>,
    diff_id: String,
    layer_digest: String,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    manifest_digest: String,
}

impl BusyboxImage {
    fn build() -> Self {
        Self::build_with(&|_| {})
    }

    fn build_with(extra: &dyn Fn(&mut tar::Builder<Vec<u8>>)) -> Self {
        let busybox = read_busybox();
        let applets = applets();

        let mut tar = tar::Builder::new(Vec::new());
        for (dir, mode) in [
            ("bin/", 0o755),
            ("dev/", 0o755),
            ("etc/", 0o755),
            ("proc/", 0o555),
            ("root/", 0o700),
            ("sys/", 0o555),
            ("tmp/", 0o1777),
        ] {
            append(&mut tar, dir, tar::EntryType::Directory, mode, b"");
        }
        append(
            &mut tar,
            "bin/busybox",
            tar::EntryType::Regular,
            0o755,
            &busybox,
        );
        for applet in &applets {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap_or_else(|e| panic!("cannot add applet {applet}: {e}"));
        }
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
        let group = "root:x:0:\nnogroup:x:65534:\n";
        append(
            &mut tar,
            "etc/passwd",
            tar::EntryType::Regular,
            0o644,
            passwd.as_bytes(),
        );
        append(
            &mut tar,
            "etc/group",
            tar::EntryType::Regular,
            0o644,
            group.as_bytes(),
        );
        extra(&mut tar);
        let layer_tar = tar.into_inner().expect("finish layer");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer_tar).expect("gzip layer");
        let layer_gz = gz.finish().expect("gzip layer");
        let diff_id = sha256(&layer_tar);
        let layer_digest = sha256(&layer_gz);

        let config = serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Cmd": ["sh"],
                "Env": ["PATH=/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "inarray tests/common/image_builder.rs"}],
        });
        let config = serde_json::to_vec(&config).expect("serialize config");
        let config_digest = sha256(&config);
        let manifest = manifest_json(
            &config_digest,
            config.len(),
            MEDIA_LAYER_GZIP,
            &layer_digest,
            layer_gz.len(),
        )
        .into_bytes();
        let manifest_digest = sha256(&manifest);
        BusyboxImage {
            layer_tar,
            layer_gz,
            diff_id,
            layer_digest,
            config,
            config_digest,
            manifest,
            manifest_digest,
        }
    }

    /// The layout's files: (path, content).
    fn oci_files(&self, ref_name: &str) -> Vec<(String, Vec<u8>)> {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": self.manifest_digest,
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }],
        });
        let blob = |digest: &str| format!("blobs/sha256/{}", hex_of(digest));
        vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".to_string(),
                serde_json::to_vec(&index).expect("serialize index"),
            ),
            (blob(&self.manifest_digest), self.manifest.clone()),
            (blob(&self.config_digest), self.config.clone()),
            (blob(&self.layer_digest), self.layer_gz.clone()),
        ]
    }

    fn oci_digests(&self) -> Digests {
        Digests {
            config: self.config_digest.clone(),
            manifest: self.manifest_digest.clone(),
        }
    }
}

/// Appends a symlink entry `name` → `target` to a layer under construction.
pub fn add_symlink(tar: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut h, name, target)
        .unwrap_or_else(|e| panic!("cannot add symlink {name}: {e}"));
}

/// Appends a regular file `name` with `mode` and `data` to a layer under construction.
pub fn add_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]) {
    append(tar, name, tar::EntryType::Regular, mode, data);
}

/// An OCI manifest with one layer, in a fixed byte layout.
fn manifest_json(
    config: &str,
    config_size: usize,
    layer_type: &str,
    layer: &str,
    layer_size: usize,
) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"{layer_type}","digest":"{layer}","size":{layer_size}}}]}}"#
    )
}

fn read_busybox() -> Vec<u8> {
    let data = fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("cannot read {BUSYBOX} ({e}): install Debian's busybox-static package (apt-get install busybox-static)")
    });
    if is_dynamic_elf(&data) {
        panic!(
            "{BUSYBOX} is dynamically linked and would not run in a bare image: install Debian's busybox-static package (apt-get install busybox-static)"
        );
    }
    data
}

/// True when a 64-bit little-endian ELF has a PT_INTERP program header.
fn is_dynamic_elf(data: &[u8]) -> bool {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

fn applets() -> Vec<String> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BUSYBOX} --list ({e}): install busybox-static"));
    assert!(
        out.status.success(),
        "{BUSYBOX} --list failed: {:?}",
        out.status
    );
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    assert!(
        applets.iter().any(|a| a == "sh"),
        "{BUSYBOX} has no sh applet"
    );
    applets
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) {
    let mut h = header(kind, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)
        .unwrap_or_else(|e| panic!("cannot add {path} to the archive: {e}"));
}

fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// The OCI architecture name of this build.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}
