//! A filesystem of its own for a test: an image file, formatted and loop-mounted, removed (and
//! its loop device freed) when the guard drops — also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct LoopFs {
    _tmp: tempfile::TempDir,
    pub mnt: PathBuf,
    image: PathBuf,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (./dev installs btrfs-progs)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopFs {
    /// A `mb` MiB btrfs with quotas enabled, mounted on a fresh directory.
    pub fn btrfs(mb: u64) -> Self {
        let fs = Self::make(mb, &["mkfs.btrfs", "-q", "-f"]);
        run("btrfs", &["quota", "enable", fs.mnt.to_str().unwrap()]);
        fs
    }

    /// A `mb` MiB filesystem made by `mkfs` (program and flags; the image path is appended).
    pub fn make(mb: u64, mkfs: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("inarray-loopfs-")
            .tempdir()
            .unwrap();
        let image = tmp.path().join("fs.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mb << 20).unwrap();
        drop(f);
        let mut args: Vec<&str> = mkfs[1..].to_vec();
        args.push(image.to_str().unwrap());
        run(mkfs[0], &args);
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = Self {
            mnt: mnt.clone(),
            image,
            _tmp: tmp,
        };
        // `-o loop` sets the loop device's autoclear flag: it goes with the last unmount.
        run(
            "mount",
            &[
                "-o",
                "loop",
                fs.image.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        );
        fs
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let m = self.mnt.to_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("umount")
                .arg(&m)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok
                || !super::daemon::mounts_mentioning(&m)
                    .iter()
                    .any(|l| l.contains(&m))
            {
                break;
            }
            if Instant::now() > deadline {
                // Busy (a dying container's namespace): detach now, freed with its last user.
                let _ = Command::new("umount").arg("-l").arg(&m).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
