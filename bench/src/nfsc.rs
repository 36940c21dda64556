//! A small NFSv3 client over TCP (one connection, one call in flight, like a backup tool walking a
//! mount without an attribute cache) and the delay proxy that puts a simulated network between
//! it and the gateway.
//!
//! Only what the benchmarks call: MOUNT's MNT, and NFSv3's NULL, GETATTR, SETATTR, LOOKUP, READ,
//! RENAME and READDIR (RFC 1813), with AUTH_SYS as root. Its own XDR (a few lines) rather than a
//! path dependency on the gateway, whose XDR module is private.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;

pub type Fh = Vec<u8>;

/// What the benchmarks read of a file's attributes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub ftype: u32,
    pub size: u64,
    pub mtime: u32,
}

struct Dec<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Dec<'a> {
    fn u32(&mut self) -> Result<u32> {
        let s = self.b.get(self.p..self.p + 4).context("short reply")?;
        self.p += 4;
        Ok(u32::from_be_bytes(s.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
    fn bool(&mut self) -> Result<bool> {
        Ok(self.u32()? != 0)
    }
    fn opaque(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        let s = self.b.get(self.p..self.p + n).context("short reply")?;
        self.p += n.div_ceil(4) * 4;
        Ok(s)
    }
    fn skip(&mut self, n: usize) {
        self.p += n;
    }
    /// fattr3 (84 bytes).
    fn fattr(&mut self) -> Result<Attr> {
        let ftype = self.u32()?;
        self.skip(16); // mode, nlink, uid, gid
        let size = self.u64()?;
        self.skip(8 + 8 + 8 + 8 + 8); // used, rdev, fsid, fileid, atime
        let mtime = self.u32()?;
        self.skip(4 + 8); // mtime nsec, ctime
        Ok(Attr { ftype, size, mtime })
    }
    fn post_op_attr(&mut self) -> Result<Option<Attr>> {
        if self.bool()? {
            Ok(Some(self.fattr()?))
        } else {
            Ok(None)
        }
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put_opaque(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
    b.resize(b.len() + (4 - v.len() % 4) % 4, 0);
}

/// One RPC connection.
pub struct Conn {
    s: TcpStream,
    xid: u32,
    buf: Vec<u8>,
    /// Calls made (every procedure, for the report).
    pub calls: u64,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            s,
            xid: std::process::id() << 12,
            buf: Vec::new(),
            calls: 0,
        })
    }

    /// One call; returns the procedure's result (after the accepted reply header).
    fn call(&mut self, prog: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>> {
        self.xid = self.xid.wrapping_add(1);
        self.calls += 1;
        let mut m = Vec::with_capacity(64 + args.len());
        put_u32(&mut m, 0); // record mark, patched below
        for v in [self.xid, 0, 2, prog, 3, proc_] {
            put_u32(&mut m, v);
        }
        // AUTH_SYS: stamp, machine name, uid 0, gid 0, no groups.
        let mut cred = Vec::new();
        put_u32(&mut cred, 0);
        put_opaque(&mut cred, b"bench");
        for v in [0, 0, 0] {
            put_u32(&mut cred, v);
        }
        put_u32(&mut m, 1);
        put_opaque(&mut m, &cred);
        put_u32(&mut m, 0);
        put_u32(&mut m, 0);
        m.extend_from_slice(args);
        let len = (m.len() - 4) as u32;
        m[..4].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());
        self.s.write_all(&m)?;
        self.buf.clear();
        loop {
            let mut mark = [0u8; 4];
            self.s.read_exact(&mut mark).context("reading a reply")?;
            let mark = u32::from_be_bytes(mark);
            let n = (mark & 0x7fff_ffff) as usize;
            if n > 4 << 20 {
                bail!("reply fragment of {n} bytes");
            }
            let at = self.buf.len();
            self.buf.resize(at + n, 0);
            self.s.read_exact(&mut self.buf[at..])?;
            if mark & 0x8000_0000 != 0 {
                break;
            }
        }
        let mut d = Dec { b: &self.buf, p: 0 };
        let (xid, mtype, stat) = (d.u32()?, d.u32()?, d.u32()?);
        if xid != self.xid || mtype != 1 || stat != 0 {
            bail!("rpc reply xid {xid} type {mtype} stat {stat}");
        }
        d.u32()?; // verifier flavor
        d.opaque()?;
        let accept = d.u32()?;
        if accept != 0 {
            bail!("rpc call not accepted ({accept})");
        }
        Ok(self.buf[d.p..].to_vec())
    }

    /// NFS NULL: one round trip.
    pub fn null(&mut self) -> Result<()> {
        self.call(PROG_NFS, 0, &[]).map(|_| ())
    }

    /// MOUNT MNT of `path`: the export's root handle.
    pub fn mount(&mut self, path: &str) -> Result<Fh> {
        let mut a = Vec::new();
        put_opaque(&mut a, path.as_bytes());
        let r = self.call(PROG_MOUNT, 1, &a)?;
        let mut d = Dec { b: &r, p: 0 };
        let st = d.u32()?;
        if st != 0 {
            bail!("mount {path}: status {st}");
        }
        Ok(d.opaque()?.to_vec())
    }

    fn status(d: &mut Dec<'_>, what: &str) -> Result<()> {
        match d.u32()? {
            0 => Ok(()),
            st => bail!("{what}: nfs status {st}"),
        }
    }

    pub fn lookup(&mut self, dir: &[u8], name: &str) -> Result<(Fh, Option<Attr>)> {
        let mut a = Vec::new();
        put_opaque(&mut a, dir);
        put_opaque(&mut a, name.as_bytes());
        let r = self.call(PROG_NFS, 3, &a)?;
        let mut d = Dec { b: &r, p: 0 };
        Self::status(&mut d, &format!("lookup {name}"))?;
        let fh = d.opaque()?.to_vec();
        let attr = d.post_op_attr()?;
        Ok((fh, attr))
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Result<Attr> {
        let mut a = Vec::new();
        put_opaque(&mut a, fh);
        let r = self.call(PROG_NFS, 1, &a)?;
        let mut d = Dec { b: &r, p: 0 };
        Self::status(&mut d, "getattr")?;
        d.fattr()
    }

    /// READ; returns (bytes, eof).
    pub fn read(&mut self, fh: &[u8], off: u64, count: u32) -> Result<(usize, bool)> {
        let mut a = Vec::new();
        put_opaque(&mut a, fh);
        put_u64(&mut a, off);
        put_u32(&mut a, count);
        let r = self.call(PROG_NFS, 6, &a)?;
        let mut d = Dec { b: &r, p: 0 };
        Self::status(&mut d, "read")?;
        d.post_op_attr()?;
        let _count = d.u32()?;
        let eof = d.bool()?;
        Ok((d.opaque()?.len(), eof))
    }

    /// Reads a whole file; returns its bytes.
    pub fn read_all(&mut self, fh: &[u8]) -> Result<u64> {
        let mut off = 0u64;
        loop {
            let (n, eof) = self.read(fh, off, 1 << 20)?;
            off += n as u64;
            if eof || n == 0 {
                return Ok(off);
            }
        }
    }

    /// SETATTR of the mode only, unguarded.
    pub fn chmod(&mut self, fh: &[u8], mode: u32) -> Result<()> {
        let mut a = Vec::new();
        put_opaque(&mut a, fh);
        for v in [1, mode, 0, 0, 0, 0, 0, 0] {
            put_u32(&mut a, v);
        }
        let r = self.call(PROG_NFS, 2, &a)?;
        Self::status(&mut Dec { b: &r, p: 0 }, "setattr")
    }

    pub fn rename(&mut self, from: &[u8], fname: &str, to: &[u8], tname: &str) -> Result<()> {
        let mut a = Vec::new();
        put_opaque(&mut a, from);
        put_opaque(&mut a, fname.as_bytes());
        put_opaque(&mut a, to);
        put_opaque(&mut a, tname.as_bytes());
        let r = self.call(PROG_NFS, 14, &a)?;
        Self::status(&mut Dec { b: &r, p: 0 }, &format!("rename {fname}"))
    }

    /// READDIR until EOF: the names, without "." and "..".
    pub fn readdir(&mut self, dir: &[u8]) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let (mut cookie, mut verf) = (0u64, [0u8; 8]);
        loop {
            let mut a = Vec::new();
            put_opaque(&mut a, dir);
            put_u64(&mut a, cookie);
            a.extend_from_slice(&verf);
            put_u32(&mut a, 32 * 1024);
            let r = self.call(PROG_NFS, 16, &a)?;
            let mut d = Dec { b: &r, p: 0 };
            Self::status(&mut d, "readdir")?;
            d.post_op_attr()?;
            verf.copy_from_slice(r.get(d.p..d.p + 8).context("short reply")?);
            d.skip(8);
            let mut any = false;
            while d.bool()? {
                d.u64()?;
                let name = String::from_utf8_lossy(d.opaque()?).into_owned();
                cookie = d.u64()?;
                any = true;
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
            if d.bool()? || !any {
                return Ok(names);
            }
        }
    }
}

// ------------------------------------------------------------------------------ delay proxy

/// A TCP proxy on 127.0.0.1 that holds every chunk for `one_way` before passing it on, in each
/// direction: a simulated network round trip of 2 × `one_way` (this machine has no netem).
/// Throughput is not limited, only latency added. Stops accepting when dropped.
pub struct DelayProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    pub fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let Ok(u) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = u.set_nodelay(true);
                let (Ok(c2), Ok(u2)) = (c.try_clone(), u.try_clone()) else {
                    continue;
                };
                pipe(c, u2, one_way);
                pipe(u, c2, one_way);
            }
        });
        Ok(DelayProxy { addr, stop })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, each chunk no earlier than `delay` after it arrived.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        // A fine timer slack for this thread, so that 0.5 ms sleeps are not rounded up by the
        // default 50 µs slack.
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes integers only and affects this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        while let Ok((due, data)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy passes bytes through unchanged, and a round trip through it takes at least
    /// twice its one-way delay.
    #[test]
    fn proxy_adds_its_delay_both_ways() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            while s.read_exact(&mut b).is_ok() {
                s.write_all(&b).unwrap();
            }
        });
        let p = DelayProxy::start(up, Duration::from_millis(20)).unwrap();
        let mut c = TcpStream::connect(p.addr).unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            c.write_all(b"hello").unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hello");
            assert!(
                t.elapsed() >= Duration::from_millis(40),
                "{:?}",
                t.elapsed()
            );
        }
    }

    #[test]
    fn xdr_opaque_is_padded_and_read_back() {
        let mut b = Vec::new();
        put_opaque(&mut b, b"abcde");
        put_u32(&mut b, 7);
        assert_eq!(b.len(), 4 + 8 + 4);
        let mut d = Dec { b: &b, p: 0 };
        assert_eq!(d.opaque().unwrap(), b"abcde");
        assert_eq!(d.u32().unwrap(), 7);
        assert!(d.u32().is_err());
    }
}
