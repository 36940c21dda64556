//! Bind access to the array: validating volume requests and resolving sources beneath the array
//! root without ever leaving it.
//!
//! Sources are resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against an fd of the
//! array root, so a symlink inside the array is followed only to its in-array target (an absolute
//! link target is taken relative to the array root, `..` stops at the root) and the result is an
//! `O_PATH` fd that is mounted through `/proc/self/fd/N`. Swapping a component for a symlink between
//! validation and mount cannot redirect the mount: the kernel resolves once, beneath the root.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use serde::{Deserialize, Serialize};

use inarray_sys::{identity, is_dir, open_beneath, open_or_create_dirs};

/// One bind mount of an array directory (or file), or of a named array volume, into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Path relative to the array root (empty when `volume` is set).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// A named array volume (`/v1/volumes`) instead of a `source` path. The daemon turns it into
    /// the volume's directory beneath the array root when it plans a start; the shim never sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// A directory inside `source` (or the volume) to mount instead of its top: resolved beneath
    /// it (`RESOLVE_BENEATH`), so neither `..` nor a symlink can leave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// Absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// Create a missing source directory instead of refusing.
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: source {source_path:?} does not exist in the array (set create: true to create it)")]
    Missing { field: String, source_path: String },
    #[error("{field}: {subpath:?} leaves its volume (through \"..\" or a symlink); refused")]
    Escapes { field: String, subpath: String },
    #[error("{field}: source {source_path:?} is a protected daemon path")]
    Protected { field: String, source_path: String },
    #[error("{field}: cannot open source {source_path:?}: {errno}")]
    Open {
        field: String,
        source_path: String,
        errno: Errno,
    },
    #[error("cannot open the array root {path}: {errno}")]
    Root { path: PathBuf, errno: Errno },
}

impl VolumeError {
    /// Whether the caller's input is at fault (→ 400), as opposed to the node (→ 500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Root { .. })
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Checks the shape of a source path: relative to the array, no `..`, no NUL.
pub fn validate_source(field: &str, source: &str) -> Result<PathBuf, VolumeError> {
    if source.is_empty() {
        return Err(invalid(
            field,
            "source is empty (use \".\" for the array root)",
        ));
    }
    if source.contains('\0') {
        return Err(invalid(field, "source contains a NUL byte"));
    }
    if source.len() > 4096 {
        return Err(invalid(field, "source is longer than 4096 bytes"));
    }
    let p = Path::new(source);
    if p.is_absolute() {
        return Err(invalid(
            field,
            format!("source {source:?} is absolute; it must be relative to the array root"),
        ));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(field, format!("source {source:?} contains \"..\"")))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(field, format!("source {source:?} is not relative")))
            }
        }
    }
    Ok(out)
}

/// Checks a target path: absolute, no `..`, no NUL, not a kernel filesystem the runtime mounts.
pub fn validate_target(field: &str, target: &str) -> Result<PathBuf, VolumeError> {
    if target.contains('\0') {
        return Err(invalid(field, "target contains a NUL byte"));
    }
    if target.len() > 4096 {
        return Err(invalid(field, "target is longer than 4096 bytes"));
    }
    let p = Path::new(target);
    if !p.is_absolute() {
        return Err(invalid(
            field,
            format!("target {target:?} must be an absolute path"),
        ));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(field, format!("target {target:?} contains \"..\"")))
            }
        }
    }
    if out == Path::new("/") {
        return Err(invalid(field, "target cannot be the container's root"));
    }
    for reserved in ["/proc", "/sys", "/dev"] {
        if out.starts_with(reserved) {
            return Err(invalid(
                field,
                format!("target {target:?} is under {reserved}"),
            ));
        }
    }
    Ok(out)
}

/// Validates a whole volume list (shape only; existence is checked by [`ArrayRoot::resolve`]).
/// Each entry names either a `source` path or a `volume` (whose name the runtime checks).
pub fn validate_all(volumes: &[Volume]) -> Result<(), VolumeError> {
    let mut targets = std::collections::HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        match (&v.volume, v.source.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    &format!("volumes[{i}]"),
                    "give either source (an array path) or volume (a named volume), not both",
                ))
            }
            (Some(_), true) => {}
            (None, _) => {
                validate_source(&format!("volumes[{i}].source"), &v.source)?;
            }
        }
        if let Some(sub) = &v.subpath {
            validate_source(&format!("volumes[{i}].subpath"), sub)?;
        }
        let t = validate_target(&format!("volumes[{i}].target"), &v.target)?;
        if !targets.insert(t) {
            return Err(invalid(
                &format!("volumes[{i}].target"),
                format!("target {:?} is used twice", v.target),
            ));
        }
    }
    Ok(())
}

/// An open array root plus the identities of daemon paths no volume may expose.
#[derive(Debug)]
pub struct ArrayRoot {
    fd: OwnedFd,
    path: PathBuf,
    root_id: (u64, u64),
    protected: Vec<(u64, u64)>,
}

impl ArrayRoot {
    /// Opens the array root; `protected` are daemon paths (state dir, socket dirs) that may never be
    /// mounted, nor any directory containing them.
    pub fn open(path: &Path, protected: &[PathBuf]) -> Result<Self, VolumeError> {
        let fd = inarray_sys::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| VolumeError::Root {
            path: path.to_owned(),
            errno,
        })?;
        let root_id = identity(&fd).map_err(|errno| VolumeError::Root {
            path: path.to_owned(),
            errno,
        })?;
        let mut ids = Vec::new();
        for p in protected {
            // The protected path itself and each of its ancestors: mounting an ancestor exposes it.
            for anc in p.ancestors() {
                if let Ok(md) = std::fs::metadata(anc) {
                    use std::os::unix::fs::MetadataExt;
                    ids.push((md.dev(), md.ino()));
                }
            }
        }
        Ok(Self {
            fd,
            path: path.to_owned(),
            root_id,
            protected: ids,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves a volume source beneath the root to an `O_PATH` fd (creating a missing directory
    /// when `create`). `field` names the request field in errors.
    pub fn resolve(&self, field: &str, source: &str, create: bool) -> Result<OwnedFd, VolumeError> {
        let rel = validate_source(field, source)?;
        let fd = open_or_create_dirs(&self.fd, &rel, ResolveFlag::RESOLVE_IN_ROOT, create)
            .map_err(|errno| match errno {
                Errno::ENOENT => VolumeError::Missing {
                    field: field.to_owned(),
                    source_path: source.to_owned(),
                },
                errno => VolumeError::Open {
                    field: field.to_owned(),
                    source_path: source.to_owned(),
                    errno,
                },
            })?;
        self.check_not_protected(field, source, &fd)?;
        Ok(fd)
    }

    /// [`resolve`](Self::resolve), then `subpath` (if any) beneath the source with
    /// `RESOLVE_BENEATH`: a `..` or a symlink that would leave the source is refused
    /// ([`VolumeError::Escapes`]), a missing directory created when `create`.
    pub fn resolve_sub(
        &self,
        field: &str,
        source: &str,
        subpath: Option<&str>,
        create: bool,
    ) -> Result<OwnedFd, VolumeError> {
        let Some(sub) = subpath.filter(|s| !s.is_empty()) else {
            return self.resolve(&format!("{field}.source"), source, create);
        };
        let top = self.resolve(&format!("{field}.source"), source, false)?;
        let sfield = format!("{field}.subpath");
        let rel = validate_source(&sfield, sub)?;
        let fd = open_or_create_dirs(
            &top,
            &rel,
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            create,
        )
        .map_err(|errno| match errno {
            Errno::EXDEV | Errno::ELOOP => VolumeError::Escapes {
                field: sfield.clone(),
                subpath: sub.to_owned(),
            },
            Errno::ENOENT => VolumeError::Missing {
                field: sfield.clone(),
                source_path: sub.to_owned(),
            },
            errno => VolumeError::Open {
                field: sfield.clone(),
                source_path: sub.to_owned(),
                errno,
            },
        })?;
        self.check_not_protected(&sfield, sub, &fd)?;
        Ok(fd)
    }

    /// Refuses a source that is, contains, or lies inside a protected path. Walks up from the opened
    /// fd with `..` (the kernel's view, not a path string) until the array root.
    fn check_not_protected(
        &self,
        field: &str,
        source: &str,
        fd: &OwnedFd,
    ) -> Result<(), VolumeError> {
        let protected = || VolumeError::Protected {
            field: field.to_owned(),
            source_path: source.to_owned(),
        };
        let io = |errno| VolumeError::Open {
            field: field.to_owned(),
            source_path: source.to_owned(),
            errno,
        };
        let id = identity(fd).map_err(io)?;
        if self.protected.contains(&id) {
            return Err(protected());
        }
        if !is_dir(fd).map_err(io)? {
            return Ok(());
        }
        let mut cur = open_beneath(
            fd,
            Path::new("."),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            ResolveFlag::empty(),
        )
        .map_err(io)?;
        for _ in 0..4096 {
            let cid = identity(&cur).map_err(io)?;
            if cid == self.root_id {
                return Ok(());
            }
            if self.protected.contains(&cid) {
                return Err(protected());
            }
            let parent = inarray_sys::openat(
                &cur,
                "..",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(io)?;
            if identity(&parent).map_err(io)? == cid {
                break; // reached "/" without meeting the array root: not beneath it
            }
            cur = parent;
        }
        Err(invalid(
            field,
            format!("source {source:?} does not resolve beneath the array root"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fd_path(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(inarray_sys::proc_fd_path(fd)).unwrap()
    }

    #[test]
    fn source_shapes() {
        for bad in ["", "/etc", "../../etc", "a/../../..", "a/..", "x\0y", "/"] {
            let e = validate_source("volumes[0].source", bad).unwrap_err();
            assert!(
                e.to_string().starts_with("volumes[0].source: "),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(
            validate_source("f", "./a//b/").unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(validate_source("f", ".").unwrap(), PathBuf::new());
    }

    #[test]
    fn target_shapes() {
        for bad in ["rel", "/", "/proc/x", "/sys", "/dev/shm", "/a/../b", "/x\0"] {
            assert!(validate_target("t", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_target("t", "/data//in/").unwrap(),
            PathBuf::from("/data/in")
        );
        let dup = vec![
            Volume {
                source: "a".into(),
                target: "/d".into(),
                read_only: false,
                create: false,
                volume: None,
                subpath: None,
            },
            Volume {
                source: "b".into(),
                target: "/d/".into(),
                read_only: true,
                create: false,
                volume: None,
                subpath: None,
            },
        ];
        assert!(validate_all(&dup)
            .unwrap_err()
            .to_string()
            .contains("used twice"));
    }

    #[test]
    fn symlinks_resolve_inside_the_array_only() {
        let tmp = tempfile::tempdir().unwrap();
        let array = tmp.path().join("array");
        std::fs::create_dir_all(array.join("data/sub")).unwrap();
        std::fs::create_dir_all(array.join("etc")).unwrap();
        symlink("/etc", array.join("data/abs")).unwrap();
        symlink("../../../../../../..", array.join("data/up")).unwrap();
        symlink("sub", array.join("data/rel")).unwrap();
        let root = ArrayRoot::open(&array, &[]).unwrap();
        let canon = array.canonicalize().unwrap();
        assert_eq!(
            fd_path(&root.resolve("s", "data/abs", false).unwrap()),
            canon.join("etc")
        );
        assert_eq!(
            fd_path(&root.resolve("s", "data/up", false).unwrap()),
            canon
        );
        assert_eq!(
            fd_path(&root.resolve("s", "data/rel", false).unwrap()),
            canon.join("data/sub")
        );
        assert!(matches!(
            root.resolve("s", "nope", false),
            Err(VolumeError::Missing { .. })
        ));
        // create: makes the directories, inside the array even through a link.
        let made = root.resolve("s", "data/abs/new/deeper", true).unwrap();
        assert_eq!(fd_path(&made), canon.join("etc/new/deeper"));
        assert!(!Path::new("/etc/new").exists());
    }

    #[test]
    fn subpaths_stay_beneath_their_source() {
        let tmp = tempfile::tempdir().unwrap();
        let array = tmp.path().join("array");
        std::fs::create_dir_all(array.join("vol/a/b")).unwrap();
        std::fs::create_dir_all(array.join("other")).unwrap();
        symlink("../../other", array.join("vol/a/out")).unwrap();
        symlink("/other", array.join("vol/abs")).unwrap();
        symlink("b", array.join("vol/a/in")).unwrap();
        let root = ArrayRoot::open(&array, &[]).unwrap();
        let canon = array.canonicalize().unwrap();
        for bad in ["a/out", "abs", "a/out/x"] {
            let e = root
                .resolve_sub("volumes[0]", "vol", Some(bad), true)
                .unwrap_err();
            assert!(matches!(e, VolumeError::Escapes { .. }), "{bad}: {e}");
        }
        for bad in ["..", "a/../..", "/etc"] {
            let e = root
                .resolve_sub("volumes[0]", "vol", Some(bad), false)
                .unwrap_err();
            assert!(
                e.to_string().starts_with("volumes[0].subpath: "),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            fd_path(&root.resolve_sub("v", "vol", Some("a/in"), false).unwrap()),
            canon.join("vol/a/b")
        );
        assert_eq!(
            fd_path(&root.resolve_sub("v", "vol", Some("new/d"), true).unwrap()),
            canon.join("vol/new/d")
        );
        assert!(!canon.join("other/x").exists());
    }

    #[test]
    fn protected_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let array = tmp.path().join("array");
        let state = array.join("admin/state");
        std::fs::create_dir_all(state.join("inner")).unwrap();
        std::fs::create_dir_all(array.join("ok")).unwrap();
        symlink("/admin/state", array.join("ok/sneaky")).unwrap();
        let root = ArrayRoot::open(&array, std::slice::from_ref(&state)).unwrap();
        for src in [
            "admin/state",
            "admin",
            ".",
            "admin/state/inner",
            "ok/sneaky",
        ] {
            let e = root.resolve("v", src, false).unwrap_err();
            assert!(matches!(e, VolumeError::Protected { .. }), "{src}: {e}");
        }
        assert!(root.resolve("v", "ok", false).is_ok());
    }
}
