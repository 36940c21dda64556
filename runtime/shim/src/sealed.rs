//! CVE-2019-5736 defence: containers are started by a shim executed from a sealed, in-memory copy
//! of its executable, so a container that manages to open `/proc/self/exe` of its runtime can never
//! write to the executable on disk. (youki does this in its binary, not in libcontainer.)
//!
//! The daemon makes one sealed copy of `inarray-shim` at start and spawns every shim from it; a
//! shim started any other way re-executes itself from a sealed copy of itself first.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// The name of the memfd (`/proc/PID/exe` of a shim reads `/memfd:inarray-sealed-shim (deleted)`).
const MEMFD_NAME: &str = "inarray-sealed-shim";

/// A sealed copy of an executable; keep it alive while shims are spawned from it.
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    /// Copies the executable at `exe` into a memfd and seals it against any change.
    pub fn copy_of(exe: &Path) -> io::Result<Self> {
        let name = CString::new(MEMFD_NAME).expect("no NUL");
        let fd = memfd_create(
            &name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let mut src = File::open(exe)?;
        let mut dst = File::from(fd);
        io::copy(&mut src, &mut dst)?;
        let fd = OwnedFd::from(dst);
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        Ok(Self { fd })
    }

    /// A path that executes the sealed copy (valid in this process and, across fork, its children).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(inarray_sys::proc_fd_path(&self.fd))
    }
}

/// Whether the running executable is a sealed memfd.
pub fn running_sealed() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    match fcntl(f.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_WRITE),
        Err(_) => false,
    }
}

/// Re-executes this program, with the same arguments, from a sealed copy of itself. Returns only
/// the error that prevented it.
pub(crate) fn reexec_sealed() -> io::Error {
    let sealed = match SealedExe::copy_of(Path::new("/proc/self/exe")) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let args: Vec<CString> = std::env::args_os()
        .map(|a: OsString| CString::new(a.into_vec()).unwrap_or_default())
        .collect();
    let path = match CString::new(sealed.path().into_os_string().into_vec()) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    match nix::unistd::execv(&path, &args) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_copy_cannot_be_written() {
        let s = SealedExe::copy_of(Path::new("/proc/self/exe")).unwrap();
        let len = std::fs::metadata(s.path()).unwrap().len();
        assert_eq!(len, std::fs::metadata("/proc/self/exe").unwrap().len());
        let opened = std::fs::OpenOptions::new().write(true).open(s.path());
        // Opening for write is refused, or writing is.
        if let Ok(mut f) = opened {
            use std::io::Write;
            assert!(f.write_all(b"x").is_err());
        }
        assert!(!running_sealed(), "the test binary itself runs from disk");
    }
}
