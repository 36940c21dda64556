//! XDR (RFC 4506): a bounds-checked decoder over one received record and an encoder into the
//! reply buffer. Every length read from the wire is checked against both the bytes left and a
//! caller-given maximum before anything is allocated.

/// The record did not hold what the procedure's arguments need (→ GARBAGE_ARGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbage;

pub type XdrResult<T> = Result<T, Garbage>;

pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(Garbage);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> XdrResult<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    pub fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Garbage),
        }
    }

    /// Variable-length opaque data of at most `max` bytes, borrowed from the record.
    pub fn opaque(&mut self, max: usize) -> XdrResult<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(Garbage);
        }
        let data = self.take(len)?;
        self.take(pad(len))?;
        Ok(data)
    }

    /// Fixed-length opaque data.
    pub fn fixed(&mut self, len: usize) -> XdrResult<&'a [u8]> {
        let data = self.take(len)?;
        self.take(pad(len))?;
        Ok(data)
    }
}

pub fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Appends XDR to a reply buffer.
pub struct Encoder {
    pub buf: Vec<u8>,
}

thread_local! {
    /// The reply buffer of the thread's last call, kept for the next one: a 1 MiB READ reply is
    /// then neither allocated nor faulted in again at every call.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest reply buffer kept for reuse.
const MAX_SPARE: usize = 2 * 1024 * 1024;

/// Gives a sent reply's buffer back for the thread's next reply.
pub fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() <= MAX_SPARE {
        buf.clear();
        SPARE.set(buf);
    }
}

impl Encoder {
    /// An empty reply buffer with room for `n` bytes (the thread's spare one when there is).
    pub fn with_capacity(n: usize) -> Self {
        let mut buf = SPARE.take();
        buf.clear();
        buf.reserve(n);
        Self { buf }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u32(u32::from(v));
    }

    pub fn opaque(&mut self, data: &[u8]) {
        self.u32(data.len() as u32);
        self.fixed(data);
    }

    pub fn fixed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(&[0u8; 3][..pad(data.len())]);
    }

    /// Overwrites a u32 written earlier at `at` (a length or a count known only later).
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut e = Encoder::with_capacity(64);
        e.u32(7);
        e.u64(1 << 40);
        e.opaque(b"abcde");
        e.bool(true);
        assert_eq!(e.len(), 4 + 8 + 4 + 8 + 4);
        let mut d = Decoder::new(&e.buf);
        assert_eq!(d.u32(), Ok(7));
        assert_eq!(d.u64(), Ok(1 << 40));
        assert_eq!(d.opaque(5), Ok(&b"abcde"[..]));
        assert_eq!(d.bool(), Ok(true));
        assert_eq!(d.remaining(), 0);
        assert_eq!(d.u32(), Err(Garbage));

        // A length over the maximum, or over what the record holds, allocates nothing.
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(d.opaque(usize::MAX), Err(Garbage));
        let mut d = Decoder::new(&[0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]);
        assert_eq!(d.opaque(8), Err(Garbage));
        let mut d = Decoder::new(&[0, 0, 0, 2]);
        assert_eq!(d.bool(), Err(Garbage));
    }
}
