//! Resolving an image's `User` (`uid[:gid]` or names) against the image's own /etc/passwd and
//! /etc/group, read from the unpacked layers (top layer first) without following symlinks.

use std::path::{Path, PathBuf};

use crate::spec::Identity;

const MAX_DB: u64 = 4 * 1024 * 1024;

/// Reads `rel` from the topmost layer that has it; a whiteout or a symlink ends the search.
fn read_layered(layers: &[PathBuf], rel: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    for l in layers.iter().rev() {
        let p = l.join(rel);
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_char_device() || !md.is_file() || md.len() > MAX_DB {
            return None;
        }
        // No component above it may be a symlink either (they are layer-relative).
        if Path::new(rel).ancestors().skip(1).any(|a| {
            std::fs::symlink_metadata(l.join(a))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
        }) {
            return None;
        }
        return std::fs::read_to_string(p).ok();
    }
    None
}

fn lookup(db: Option<&str>, name: &str, id_field: usize) -> Option<(u32, Option<u32>)> {
    db?.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) && f.len() > id_field {
            let id = f[id_field].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves `user` ("" = root) for an image with `layers` (bottom first).
pub fn resolve(user: &str, layers: &[PathBuf]) -> Result<Identity, String> {
    if user.is_empty() {
        return Ok(Identity { uid: 0, gid: 0 });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_layered(layers, "etc/passwd");
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd.as_deref().and_then(|db| {
                db.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2) == Some(&u))
                        .then(|| f.get(3).and_then(|g| g.parse().ok()))
                        .flatten()
                })
            });
            (uid, gid)
        }
        Err(_) => lookup(passwd.as_deref(), u, 2)
            .ok_or_else(|| format!("{u:?} is not in the image's /etc/passwd"))?,
    };
    let gid = match g {
        None => primary_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(read_layered(layers, "etc/group").as_deref(), g, 2)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok(Identity { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_names_and_layers() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        std::fs::create_dir_all(l2.join("etc")).unwrap();
        std::fs::write(
            l1.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nold:x:5:5::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            l2.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:100::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(l1.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![l1, l2];
        assert_eq!(resolve("", &layers).unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(
            resolve("app", &layers).unwrap(),
            Identity {
                uid: 1000,
                gid: 100
            }
        );
        assert_eq!(
            resolve("1000", &layers).unwrap(),
            Identity {
                uid: 1000,
                gid: 100
            }
        );
        assert_eq!(
            resolve("7:8", &layers).unwrap(),
            Identity { uid: 7, gid: 8 }
        );
        assert_eq!(
            resolve("app:staff", &layers).unwrap(),
            Identity { uid: 1000, gid: 50 }
        );
        assert!(
            resolve("old", &layers).is_err(),
            "the top layer's passwd wins"
        );
        assert!(resolve("app:nogroup", &layers)
            .unwrap_err()
            .contains("group"));
    }

    #[test]
    fn symlinked_passwd_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", l.join("etc/passwd")).unwrap();
        assert!(resolve("root", &[l]).is_err());
    }
}
