//! CVE-2019-5736 defence: containers are started by a shim executed from a sealed, in-memory copy
//! of the binary, so a container that manages to open `/proc/self/exe` of its runtime can never
//! write to the binary on disk. (youki does this in its binary, not in libcontainer.)

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// A sealed copy of the running executable; keep it alive while shims are spawned from it.
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    /// Copies `/proc/self/exe` into a memfd and seals it against any change.
    pub fn new() -> io::Result<Self> {
        let name = CString::new("inarray-sealed").expect("no NUL");
        let fd = memfd_create(
            &name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let mut src = File::open("/proc/self/exe")?;
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
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Whether the running executable is a sealed memfd (the shim checks this).
pub fn running_sealed() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    match fcntl(f.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_WRITE),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_copy_cannot_be_written() {
        let s = SealedExe::new().unwrap();
        let err = std::fs::OpenOptions::new().write(true).open(s.path());
        // Opening for write is refused, or writing is.
        if let Ok(mut f) = err {
            use std::io::Write;
            assert!(f.write_all(b"x").is_err());
        }
        assert!(!running_sealed(), "the test binary itself runs from disk");
    }
}
