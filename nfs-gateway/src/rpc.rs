//! ONC RPC v2 (RFC 5531) over TCP: record marking with hard limits, call headers, AUTH_SYS
//! credentials, and reply headers.

use std::io::Read;

use crate::xdr::{Decoder, Encoder, Garbage, XdrResult};

pub const RPC_VERSION: u32 = 2;
const CALL: u32 = 0;
const REPLY: u32 = 1;
pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// accept_stat values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Success = 0,
    ProgUnavail = 1,
    ProgMismatch = 2,
    ProcUnavail = 3,
    GarbageArgs = 4,
}

/// auth_stat values of an AUTH_ERROR rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStat {
    BadCred = 1,
    TooWeak = 5,
}

/// The AUTH_SYS credential a call carries (RFC 5531 appendix A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSys {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

#[derive(Debug)]
pub struct CallHeader {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// None for AUTH_NONE; other flavors are refused before a procedure runs.
    pub cred: Option<AuthSys>,
    pub flavor: u32,
}

/// Why a record cannot be served as a call.
#[derive(Debug, PartialEq, Eq)]
pub enum BadCall {
    /// Not even an xid: nothing to answer, the connection is dropped.
    Unreadable,
    /// A reply, or an RPC version other than 2 (answered with RPC_MISMATCH).
    Mismatch { xid: u32 },
    /// A malformed credential (answered with AUTH_BADCRED).
    BadCred { xid: u32 },
}

/// Parses the call header; the decoder is left at the procedure's arguments.
pub fn parse_call(d: &mut Decoder<'_>) -> Result<CallHeader, BadCall> {
    let xid = d.u32().map_err(|_| BadCall::Unreadable)?;
    let mtype = d.u32().map_err(|_| BadCall::Unreadable)?;
    if mtype != CALL {
        return Err(BadCall::Unreadable);
    }
    let head =
        (|| -> XdrResult<(u32, u32, u32, u32)> { Ok((d.u32()?, d.u32()?, d.u32()?, d.u32()?)) })();
    let (rpcvers, prog, vers, proc_) = head.map_err(|_| BadCall::Unreadable)?;
    if rpcvers != RPC_VERSION {
        return Err(BadCall::Mismatch { xid });
    }
    let bad = |_| BadCall::BadCred { xid };
    let flavor = d.u32().map_err(bad)?;
    let body = d.opaque(400).map_err(bad)?;
    // The verifier: AUTH_NONE or AUTH_SYS carry nothing we check.
    d.u32().map_err(bad)?;
    d.opaque(400).map_err(bad)?;
    let cred = match flavor {
        AUTH_SYS => Some(parse_auth_sys(body).map_err(bad)?),
        _ => None,
    };
    Ok(CallHeader {
        xid,
        prog,
        vers,
        proc_,
        cred,
        flavor,
    })
}

fn parse_auth_sys(body: &[u8]) -> XdrResult<AuthSys> {
    let mut d = Decoder::new(body);
    let _stamp = d.u32()?;
    let _machine = d.opaque(255)?;
    let uid = d.u32()?;
    let gid = d.u32()?;
    let n = d.u32()? as usize;
    if n > 16 {
        return Err(Garbage);
    }
    let mut gids = Vec::with_capacity(n);
    for _ in 0..n {
        gids.push(d.u32()?);
    }
    Ok(AuthSys { uid, gid, gids })
}

/// A reply buffer: 4 bytes kept for the record mark, then the accepted-reply header. The writer
/// fills in the record mark.
pub fn accepted(xid: u32, stat: Accept, capacity: usize) -> Encoder {
    let mut e = Encoder::with_capacity(capacity.max(64));
    e.u32(0); // record mark, patched by `finish`
    e.u32(xid);
    e.u32(REPLY);
    e.u32(0); // MSG_ACCEPTED
    e.u32(AUTH_NONE);
    e.u32(0);
    e.u32(stat as u32);
    e
}

/// PROG_MISMATCH with the supported version range.
pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Encoder {
    let mut e = accepted(xid, Accept::ProgMismatch, 64);
    e.u32(low);
    e.u32(high);
    e
}

/// MSG_DENIED / RPC_MISMATCH (we speak version 2 only).
pub fn rpc_mismatch(xid: u32) -> Encoder {
    let mut e = Encoder::with_capacity(64);
    e.u32(0);
    e.u32(xid);
    e.u32(REPLY);
    e.u32(1); // MSG_DENIED
    e.u32(0); // RPC_MISMATCH
    e.u32(RPC_VERSION);
    e.u32(RPC_VERSION);
    e
}

/// MSG_DENIED / AUTH_ERROR.
pub fn auth_error(xid: u32, why: AuthStat) -> Encoder {
    let mut e = Encoder::with_capacity(64);
    e.u32(0);
    e.u32(xid);
    e.u32(REPLY);
    e.u32(1); // MSG_DENIED
    e.u32(1); // AUTH_ERROR
    e.u32(why as u32);
    e
}

/// A reply ready to send: `head`, then (READ) `spliced` bytes waiting in the thread's splice
/// pipe and their XDR padding.
pub struct Reply {
    pub head: Vec<u8>,
    pub spliced: usize,
}

/// Fills in the record mark of a reply built by the functions above (one final fragment), which
/// `spliced` bytes and their padding will follow.
pub fn finish(mut e: Encoder, spliced: usize) -> Reply {
    let len = (e.len() - 4 + spliced + crate::xdr::pad(spliced)) as u32;
    e.patch_u32(0, len | 0x8000_0000);
    Reply {
        head: e.buf,
        spliced,
    }
}

/// Why a connection is dropped while reading a record.
#[derive(Debug)]
pub enum RecordError {
    /// The peer closed the connection between records.
    Closed,
    Io(std::io::Error),
    /// A fragment or the sum of a record's fragments claims more than the limit.
    TooLarge(u64),
    /// More than [`MAX_FRAGMENTS`] fragments.
    TooManyFragments,
}

/// Fragments one record may have: endless empty non-final fragments end the connection too.
pub const MAX_FRAGMENTS: usize = 1024;

/// Bytes asked of the socket at least per read: small calls pipelined by a client are read many
/// at a time.
const READ_AHEAD: usize = 64 * 1024;

/// Reads RPC records (all their fragments) of at most `max` bytes from a byte stream, into one
/// buffer that the connection keeps: a record is handed out as a slice of it (no copy), the bytes
/// read ahead stay for the next call, and fragment marks are cut out in place. A mark (or a sum of
/// marks) over `max` ends the connection before anything is allocated for it; the buffer never
/// holds more than `max` plus one read-ahead.
pub struct RecordReader {
    buf: Vec<u8>,
    /// `buf[start..end]` is received and not yet handed out.
    start: usize,
    end: usize,
    max: usize,
}

impl RecordReader {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// Makes `buf[start..start + want]` received (`want` bytes past `start`), reading as much as
    /// the buffer takes at each read. `boundary`: nothing of the current record is read yet, so
    /// an end of stream is a clean close.
    fn fill<R: Read>(&mut self, r: &mut R, want: usize, boundary: bool) -> Result<(), RecordError> {
        while self.end - self.start < want {
            if self.start + want > self.buf.len() {
                // Move what is left to the front, then grow (at most to one record plus one
                // read-ahead).
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                let cap = want.max(READ_AHEAD).min(self.max + 8 + READ_AHEAD);
                if self.buf.len() < cap {
                    self.buf.resize(cap, 0);
                }
            }
            // At most one read-ahead past what is needed: cutting a later fragment's mark out
            // then moves at most that much.
            let stop = self
                .buf
                .len()
                .min(self.start + want + READ_AHEAD)
                .max(self.end + 1);
            match r.read(&mut self.buf[self.end..stop]) {
                Ok(0) if boundary && self.end == self.start => return Err(RecordError::Closed),
                Ok(0) => {
                    return Err(RecordError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RecordError::Io(e)),
            }
        }
        Ok(())
    }

    /// The next record, borrowed from the reader until the next call.
    pub fn next<R: Read>(&mut self, r: &mut R) -> Result<&[u8], RecordError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // Positions are relative to `start`: `fill` may move the bytes to the front.
        self.fill(r, 4, true)?;
        let mut len = 0usize;
        let mut at = 0usize; // where the next mark is
        for _ in 0..MAX_FRAGMENTS {
            self.fill(r, at + 4, false)?;
            let m = self.start + at;
            let mark = u32::from_be_bytes([
                self.buf[m],
                self.buf[m + 1],
                self.buf[m + 2],
                self.buf[m + 3],
            ]);
            let last = mark & 0x8000_0000 != 0;
            let flen = (mark & 0x7fff_ffff) as usize;
            let total = len as u64 + flen as u64;
            if total > self.max as u64 {
                return Err(RecordError::TooLarge(total));
            }
            if at == 0 {
                // The first mark stays in front of the record and is skipped below.
                at = 4;
            } else {
                // A later mark is cut out: the fragment's bytes join the previous ones.
                self.buf.copy_within(m + 4..self.end, m);
                self.end -= 4;
            }
            len += flen;
            at += flen;
            self.fill(r, at, false)?;
            if last {
                let rec = self.start + 4..self.start + at;
                self.start += at;
                return Ok(&self.buf[rec]);
            }
        }
        Err(RecordError::TooManyFragments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, cred: &[u8], flavor: u32) -> Vec<u8> {
        let mut e = Encoder::with_capacity(128);
        e.u32(42);
        e.u32(CALL);
        e.u32(2);
        e.u32(prog);
        e.u32(3);
        e.u32(1);
        e.u32(flavor);
        e.opaque(cred);
        e.u32(0);
        e.u32(0);
        e.u32(0xdead);
        e.buf
    }

    fn sys_cred(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        e.u32(1);
        e.opaque(b"client");
        e.u32(uid);
        e.u32(gid);
        e.u32(gids.len() as u32);
        for g in gids {
            e.u32(*g);
        }
        e.buf
    }

    #[test]
    fn parses_auth_sys_calls() {
        let rec = call(100003, &sys_cred(1000, 100, &[4, 5]), AUTH_SYS);
        let mut d = Decoder::new(&rec);
        let h = parse_call(&mut d).unwrap();
        assert_eq!((h.xid, h.prog, h.vers, h.proc_), (42, 100003, 3, 1));
        assert_eq!(
            h.cred,
            Some(AuthSys {
                uid: 1000,
                gid: 100,
                gids: vec![4, 5]
            })
        );
        assert_eq!(d.u32(), Ok(0xdead), "left at the arguments");
        let rec = call(100003, &sys_cred(0, 0, &[1; 17]), AUTH_SYS);
        assert_eq!(
            parse_call(&mut Decoder::new(&rec)).unwrap_err(),
            BadCall::BadCred { xid: 42 }
        );
        let rec = call(100003, &[], AUTH_NONE);
        assert_eq!(parse_call(&mut Decoder::new(&rec)).unwrap().cred, None);
    }

    /// A stream that hands out one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn record_limits() {
        // Two fragments make one record.
        let mut data = Vec::new();
        data.extend_from_slice(&3u32.to_be_bytes());
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&(0x8000_0000u32 | 2).to_be_bytes());
        data.extend_from_slice(b"de");
        // Followed by a one-fragment record: both come out whole, however the bytes arrive.
        data.extend_from_slice(&(0x8000_0000u32 | 4).to_be_bytes());
        data.extend_from_slice(b"wxyz");
        let mut rd = RecordReader::new(16);
        let mut r = &data[..];
        assert_eq!(rd.next(&mut r).unwrap(), b"abcde");
        assert_eq!(rd.next(&mut r).unwrap(), b"wxyz");
        assert!(matches!(rd.next(&mut r), Err(RecordError::Closed)));
        let mut rd = RecordReader::new(16);
        let mut r = Trickle(&data);
        assert_eq!(rd.next(&mut r).unwrap(), b"abcde");
        assert_eq!(rd.next(&mut r).unwrap(), b"wxyz");
        assert!(matches!(rd.next(&mut r), Err(RecordError::Closed)));
        // Cut short inside a record: an error, not a clean close.
        let mut r = &data[..9];
        assert!(matches!(
            RecordReader::new(16).next(&mut r),
            Err(RecordError::Io(_))
        ));
        // A mark claiming 2 GiB is refused before anything is read or allocated.
        let huge = (0x8000_0000u32 | 0x7fff_ffff).to_be_bytes();
        let mut r = &huge[..];
        assert!(matches!(
            RecordReader::new(1 << 20).next(&mut r),
            Err(RecordError::TooLarge(_))
        ));
        // Endless non-final fragments hit the same limit.
        let mut many = Vec::new();
        for _ in 0..100 {
            many.extend_from_slice(&8u32.to_be_bytes());
            many.extend_from_slice(&[0u8; 8]);
        }
        let mut r = &many[..];
        assert!(matches!(
            RecordReader::new(64).next(&mut r),
            Err(RecordError::TooLarge(_))
        ));
        let empty = vec![0u8; 4 * (MAX_FRAGMENTS + 1)];
        let mut r = &empty[..];
        assert!(matches!(
            RecordReader::new(64).next(&mut r),
            Err(RecordError::TooManyFragments)
        ));
    }
}
