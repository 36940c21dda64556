//! `prepare`: the work directory every section starts from — the busybox image as an OCI
//! archive (inarray) and a docker archive (podman), the walk image, and a runc bundle.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{image_builder, IMAGE, WALK_IMAGE};

/// The headline's in-array tool (`bench/walk/main.rs`), built static with the toolchain's
/// `rustc` (`$RUSTC` if set) and added to a copy of the busybox image as `/bin/inarray-walk`:
/// WORK/walk-oci.tar, imported as [`WALK_IMAGE`].
fn write_walk_image(work: &Path) -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("walk/main.rs");
    let bin = work.join("inarray-walk");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
        ])
        .arg("strip=symbols")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .with_context(|| format!("running {rustc:?} for {}", src.display()))?;
    if !out.status.success() {
        bail!(
            "building {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let data = std::fs::read(&bin)?;
    image_builder::write_oci_archive_with(&work.join("walk-oci.tar"), WALK_IMAGE, &|tar| {
        image_builder::add_file(tar, "bin/inarray-walk", 0o755, &data)
    });
    Ok(())
}

pub fn prepare(work: &Path, podman_image: &str) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let work = work.canonicalize()?;
    image_builder::write_oci_archive(&work.join("busybox-oci.tar"), IMAGE);
    write_walk_image(&work)?;
    let docker = work.join("busybox-docker.tar");
    image_builder::write_docker_archive(&docker, podman_image);

    // The runc bundle: the image's one layer unpacked, and `runc spec` edited to run /bin/true.
    let bundle = work.join("bundle");
    let rootfs = bundle.join("rootfs");
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)?;
    }
    std::fs::create_dir_all(&rootfs)?;
    let mut outer = tar::Archive::new(std::fs::File::open(&docker)?);
    let mut found = false;
    for entry in outer.entries()? {
        let entry = entry?;
        if entry.path()?.to_string_lossy().ends_with("/layer.tar") {
            let mut layer = tar::Archive::new(entry);
            layer.set_preserve_permissions(true);
            layer.unpack(&rootfs).context("unpacking the layer")?;
            found = true;
            break;
        }
    }
    if !found {
        bail!("no layer.tar in {}", docker.display());
    }
    let st = Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .status()
        .context("runc spec")?;
    if !st.success() {
        bail!("runc spec failed: {st}");
    }
    let cfg_path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    spec["process"]["args"] = json!(["/bin/true"]);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    spec["root"]["path"] = json!(rootfs.display().to_string());
    // inarray's root is a writable overlay; runc's default is a read-only remount.
    spec["root"]["readonly"] = json!(false);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&spec)?)?;
    println!("prepared {}", work.display());
    Ok(())
}
