//! Full-length positioned reads and writes: the kernel may transfer less than asked (signals,
//! pipes, some filesystems), so one call is never assumed to be the whole of it.

use std::io;
use std::os::fd::AsFd;

use crate::fd::pread_spare;

/// Calls `op(done)` (one transfer, returning how many bytes it moved) until `count` bytes are
/// done or it returns 0 (the end of the file); EINTR is retried. Returns the bytes done.
pub(crate) fn read_loop(
    count: usize,
    mut op: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < count {
        match op(done) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Calls `op(done)` until `len` bytes are written; EINTR is retried, a transfer of 0 bytes is an
/// error (`WriteZero`: nothing would ever move).
pub(crate) fn write_loop(
    len: usize,
    mut op: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        match op(done) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads up to `count` bytes at `offset`, appending them to `out` without zero-filling first;
/// fewer only at the end of the file. Returns the number of bytes read.
pub fn pread_append(
    fd: &impl AsFd,
    out: &mut Vec<u8>,
    count: usize,
    offset: u64,
) -> io::Result<usize> {
    out.reserve(count);
    read_loop(count, |done| {
        pread_spare(fd, out, count - done, offset + done as u64)
    })
}

/// Writes all of `data` at `offset`. Returns `data.len()`.
pub fn pwrite_all(fd: &impl AsFd, data: &[u8], offset: u64) -> io::Result<usize> {
    write_loop(data.len(), |done| {
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        nix::sys::uio::pwrite(fd, &data[done..], at).map_err(io::Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn short_reads_and_interruptions_are_looped() {
        // A source that moves at most 3 bytes a call and is interrupted once.
        let src = b"0123456789abcdef";
        let interrupted = Cell::new(false);
        let mut out = Vec::new();
        let n = read_loop(10, |done| {
            if done == 3 && !interrupted.replace(true) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let take = (10 - done).min(3);
            out.extend_from_slice(&src[done..done + take]);
            Ok(take)
        })
        .unwrap();
        assert_eq!((n, out.as_slice()), (10, &src[..10]));
        assert!(interrupted.get());
        // The end of the file ends the loop early.
        assert_eq!(
            read_loop(10, |done| Ok(if done < 4 { 2 } else { 0 })).unwrap(),
            4
        );
        // Other errors end it.
        let e = read_loop(10, |_| Err(io::Error::from_raw_os_error(libc::EIO))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn short_writes_are_looped_and_zero_is_an_error() {
        let mut calls = Vec::new();
        let n = write_loop(7, |done| {
            calls.push(done);
            Ok((7 - done).min(2))
        })
        .unwrap();
        assert_eq!((n, calls), (7, vec![0, 2, 4, 6]));
        let e = write_loop(7, |done| Ok(if done == 0 { 5 } else { 0 })).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }

    #[test]
    fn pread_append_and_pwrite_all_on_a_file() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(pwrite_all(&f, &data, 10).unwrap(), data.len());
        let mut out = b"head".to_vec();
        assert_eq!(pread_append(&f, &mut out, 1000, 10).unwrap(), 1000);
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &data[..1000]);
        // Past the end: what there is, then nothing.
        let mut tail = Vec::new();
        let end = 10 + data.len() as u64;
        assert_eq!(pread_append(&f, &mut tail, 100, end - 5).unwrap(), 5);
        assert_eq!(tail, &data[data.len() - 5..]);
        assert_eq!(pread_append(&f, &mut tail, 100, end + 1).unwrap(), 0);
        use std::io::Seek;
        assert_eq!(f.seek(std::io::SeekFrom::End(0)).unwrap(), end);
    }
}
