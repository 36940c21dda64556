//! Writing images out as one archive (`docker save`): an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) with Docker's `manifest.json` beside it, as Docker 25+
//! writes it, so both `docker load` and our own import read it back. The blobs are the stored
//! ones, byte for byte (their digests hold). Written as a plain ustar stream (every name is
//! under 100 bytes), one file at a time through a fixed buffer.

use std::fs::File;
use std::io::{self, Read, Write};

use serde_json::{json, Value};

use crate::reference::is_sha256_hex;
use crate::{ImageError, ImageStore, Reference};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One image to write: its names (`busybox:latest`; none for an image saved by id) and its
/// blobs' digests.
#[derive(Debug, Clone)]
pub struct ExportImage {
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Bottom layer first.
    pub layer_digests: Vec<String>,
}

/// A ustar header for a regular file of `size` bytes.
fn header(name: &str, size: u64) -> io::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.len() > 99 {
        return Err(io::Error::other(format!(
            "archive name {name:?} is too long"
        )));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{v:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rest = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; rest as usize])
}

fn write_bytes(out: &mut impl Write, name: &str, data: &[u8]) -> io::Result<()> {
    out.write_all(&header(name, data.len() as u64)?)?;
    out.write_all(data)?;
    pad(out, data.len() as u64)
}

impl ImageStore {
    /// Writes `images` as one archive to `out` (see the module's documentation). A blob the
    /// store does not hold is an error; the caller keeps garbage collection away meanwhile.
    pub fn export_archive<W: Write>(
        &self,
        images: &[ExportImage],
        mut out: W,
    ) -> Result<(), ImageError> {
        let io_err = |e: io::Error| ImageError::io("write the archive to", "the client", e);
        let mut written = std::collections::HashSet::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        write_bytes(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err)?;
        for img in images {
            let manifest = self.read_blob(&img.manifest_digest)?;
            let manifest_json: Value = serde_json::from_slice(&manifest).unwrap_or(Value::Null);
            let media_type = manifest_json["mediaType"]
                .as_str()
                .unwrap_or(MEDIA_OCI_MANIFEST)
                .to_owned();
            let blobs = std::iter::once(&img.manifest_digest)
                .chain(std::iter::once(&img.config_digest))
                .chain(img.layer_digests.iter());
            for digest in blobs {
                if written.insert(digest.clone()) {
                    self.copy_blob(digest, &mut out)?;
                }
            }
            let mut tags = Vec::new();
            for name in &img.names {
                let r = Reference::parse(name)?;
                index.push(json!({
                    "mediaType": media_type,
                    "digest": img.manifest_digest,
                    "size": manifest.len(),
                    "annotations": {
                        "io.containerd.image.name": r.to_string(),
                        "org.opencontainers.image.ref.name": r.tag.clone().unwrap_or_default(),
                    },
                }));
                tags.push(r.to_string());
            }
            if img.names.is_empty() {
                index.push(json!({"mediaType": media_type, "digest": img.manifest_digest, "size": manifest.len()}));
            }
            docker.push(json!({
                "Config": format!("blobs/sha256/{}", hex(&img.config_digest)?),
                "RepoTags": tags,
                "Layers": img.layer_digests.iter().map(|d| hex(d).map(|h| format!("blobs/sha256/{h}"))).collect::<Result<Vec<_>, _>>()?,
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index});
        write_bytes(&mut out, "index.json", index.to_string().as_bytes()).map_err(io_err)?;
        write_bytes(
            &mut out,
            "manifest.json",
            Value::Array(docker).to_string().as_bytes(),
        )
        .map_err(io_err)?;
        // The end of the archive: two empty records.
        out.write_all(&[0u8; 1024]).map_err(io_err)?;
        out.flush().map_err(io_err)
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(hex(digest)?);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|f| {
                f.take(self.limits().max_manifest_bytes)
                    .read_to_end(&mut data)
            })
            .map_err(|e| ImageError::io("read", &path, e))?;
        Ok(data)
    }

    fn copy_blob(&self, digest: &str, out: &mut impl Write) -> Result<(), ImageError> {
        let h = hex(digest)?;
        let path = self.blob_path(h);
        let mut f = File::open(&path).map_err(|e| ImageError::io("open", &path, e))?;
        let size = f
            .metadata()
            .map_err(|e| ImageError::io("stat", &path, e))?
            .len();
        let io_err = |e: io::Error| ImageError::io("write the archive to", "the client", e);
        out.write_all(&header(&format!("blobs/sha256/{h}"), size).map_err(io_err)?)
            .map_err(io_err)?;
        let copied = io::copy(&mut (&mut f).take(size), out)
            .map_err(|e| ImageError::io("copy", &path, e))?;
        if copied != size {
            return Err(ImageError::io(
                "copy",
                &path,
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        pad(out, size).map_err(io_err)
    }
}

fn hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| ImageError::InvalidDigest(digest.to_owned()))
}
