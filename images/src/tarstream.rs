//! A small streaming tar reader with bounded memory.
//!
//! Written for this crate instead of using the `tar` crate's reader because that one buffers GNU
//! long-name and PAX extension members whole, however large their header says they are: a
//! layer whose PAX header claims 20 GiB (a few MiB once gzipped) would exhaust the daemon's
//! memory. Here every extension member is capped at [`MAX_EXTENSION_BYTES`].
//!
//! Supported: v7, ustar (with prefix), GNU (long names/links, base-256 numbers) and PAX
//! (path, linkpath, size, uid, gid, mtime, `SCHILY.xattr.*`). GNU sparse members are refused.

use std::io::{self, Read};

const BLOCK: usize = 512;
/// Largest GNU long-name/long-link or PAX extension member accepted.
pub(crate) const MAX_EXTENSION_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// A type flag this reader does not interpret (the byte is kept for messages).
    Other(u8),
}

#[derive(Debug, Clone)]
pub(crate) struct TarEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    ended: bool,
}

fn format_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the tar stream is truncated")
}

fn padding_for(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            ended: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Skips whatever is left of the current entry and returns the next one, or `None` at the
    /// end-of-archive marker (or at a clean end of the stream on a block boundary).
    pub fn next_entry(&mut self) -> io::Result<Option<TarEntry>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_rest()?;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax = Pax::default();
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                if long_name.is_some() || long_link.is_some() || pax.any {
                    return Err(truncated());
                }
                self.ended = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || pax.any {
                    return Err(format_err("extension header not followed by an entry"));
                }
                self.ended = true;
                return Ok(None);
            }
            check_checksum(&block)?;
            let flag = block[156];
            let header_size = parse_number(&block[124..136], "size")?;
            match flag {
                b'L' | b'K' | b'x' | b'g' => {
                    let data = self.read_extension(header_size)?;
                    match flag {
                        b'L' => long_name = Some(trim_nul(data)),
                        b'K' => long_link = Some(trim_nul(data)),
                        b'x' => pax.parse(&data)?,
                        _ => {} // global PAX headers carry nothing this crate uses
                    }
                    continue;
                }
                b'S' => return Err(format_err("GNU sparse files are not supported")),
                b'M' => return Err(format_err("multi-volume archives are not supported")),
                b'V' => {
                    self.skip_bytes(header_size + padding_for(header_size))?;
                    continue;
                }
                _ => {}
            }

            let kind = match flag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' | b'D' => Kind::Dir,
                b'6' => Kind::Fifo,
                other => Kind::Other(other),
            };
            let ustar = &block[257..263] == b"ustar\0";
            let path = match (pax.path.take(), long_name.take()) {
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => {
                    let name = cstr(&block[0..100]);
                    let prefix = if ustar { cstr(&block[345..500]) } else { &[] };
                    if prefix.is_empty() {
                        name.to_vec()
                    } else {
                        [prefix, b"/", name].concat()
                    }
                }
            };
            let link = match (pax.linkpath.take(), long_link.take()) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => cstr(&block[157..257]).to_vec(),
            };
            let size = pax.size.unwrap_or(header_size);
            let entry = TarEntry {
                path,
                link,
                kind,
                mode: (parse_number(&block[100..108], "mode")? & 0o7777) as u32,
                uid: match pax.uid {
                    Some(uid) => uid,
                    None => parse_number(&block[108..116], "uid")?,
                },
                gid: match pax.gid {
                    Some(gid) => gid,
                    None => parse_number(&block[116..124], "gid")?,
                },
                mtime: match pax.mtime {
                    Some(mtime) => mtime,
                    None => i64::try_from(parse_number(&block[136..148], "mtime")?)
                        .map_err(|_| format_err("mtime out of range"))?,
                },
                xattrs: std::mem::take(&mut pax.xattrs),
            };
            self.remaining = size;
            self.padding = padding_for(size);
            return Ok(Some(entry));
        }
    }

    /// Reads the current entry's data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(truncated());
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip_bytes(n)
    }

    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(truncated());
        }
        Ok(())
    }

    /// Reads one block; `false` on a clean end of stream before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(truncated()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read_extension(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_EXTENSION_BYTES {
            return Err(format_err(format!(
                "extension header of {size} bytes exceeds the limit of {MAX_EXTENSION_BYTES}"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut self.inner).take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(truncated());
        }
        self.skip_bytes(padding_for(size))?;
        Ok(data)
    }
}

/// The PAX records this reader applies to the next entry.
#[derive(Default)]
struct Pax {
    any: bool,
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pax {
    /// Parses records of the form "<len> <key>=<value>\n".
    fn parse(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.any = true;
        while !data.is_empty() {
            let space = data
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| format_err("malformed PAX record"))?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format_err("malformed PAX record length"))?;
            if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err(format_err("malformed PAX record"));
            }
            let record = &data[space + 1..len - 1];
            data = &data[len..];
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| format_err("malformed PAX record"))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            let number = |what: &str| -> io::Result<u64> {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format_err(format!("malformed PAX {what}")))
            };
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"linkpath" => self.linkpath = Some(value.to_vec()),
                b"size" => self.size = Some(number("size")?),
                b"uid" => self.uid = Some(number("uid")?),
                b"gid" => self.gid = Some(number("gid")?),
                b"mtime" => {
                    let text = std::str::from_utf8(value).unwrap_or("");
                    let whole = text.split('.').next().unwrap_or("");
                    let mtime = whole
                        .parse::<i64>()
                        .map_err(|_| format_err("malformed PAX mtime"))?;
                    self.mtime = Some(mtime);
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        self.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_checksum(block: &[u8; BLOCK]) -> io::Result<()> {
    let stored = parse_number(&block[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format_err(
            "tar header checksum mismatch (not a tar stream?)",
        ))
    }
}

/// Parses an octal (NUL/space padded) or GNU base-256 numeric field.
fn parse_number(field: &[u8], what: &str) -> io::Result<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err(format_err(format!("negative {what} in tar header")));
        }
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| format_err(format!("{what} out of range in tar header")))?;
        }
        return Ok(value);
    }
    let text: &[u8] = {
        let start = field
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    };
    let mut value: u64 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format_err(format!("malformed {what} in tar header")));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| format_err(format!("{what} out of range in tar header")))?;
    }
    Ok(value)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn trim_nul(mut data: Vec<u8>) -> Vec<u8> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    data.truncate(end);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(data: &[u8]) -> io::Result<Vec<(TarEntry, Vec<u8>)>> {
        let mut reader = TarReader::new(data);
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            let mut body = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = reader.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
            out.push((entry, body));
        }
        Ok(out)
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o4755);
        h.set_uid(3_000_000_000);
        h.set_gid(7);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        let long = format!("{}/file", "d".repeat(150));
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "x".repeat(200)).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o1777);
        h.set_size(0);
        b.append_data(&mut h, "tmp/", io::empty()).unwrap();
        let data = b.into_inner().unwrap();

        let got = entries(&data).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.path, long.as_bytes());
        assert_eq!(got[0].0.kind, Kind::File);
        assert_eq!(got[0].0.mode, 0o4755);
        assert_eq!(got[0].0.uid, 3_000_000_000);
        assert_eq!(got[0].0.gid, 7);
        assert_eq!(got[0].0.mtime, 1_700_000_000);
        assert_eq!(got[0].1, b"hello");
        assert_eq!(got[1].0.kind, Kind::Symlink);
        assert_eq!(got[1].0.link, "x".repeat(200).as_bytes());
        assert_eq!(got[2].0.kind, Kind::Dir);
        assert_eq!(got[2].0.path, b"tmp/");
        assert_eq!(got[2].0.mode, 0o1777);
    }

    #[test]
    fn applies_pax_records() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("path", &b"pax/name"[..]),
            ("uid", b"123456"),
            ("mtime", b"1700000000.25"),
            ("SCHILY.xattr.security.capability", b"\x01\x02"),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "short", &b"abc"[..]).unwrap();
        let got = entries(&b.into_inner().unwrap()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path, b"pax/name");
        assert_eq!(got[0].0.uid, 123456);
        assert_eq!(got[0].0.mtime, 1_700_000_000);
        assert_eq!(
            got[0].0.xattrs,
            vec![(b"security.capability".to_vec(), b"\x01\x02".to_vec())]
        );
        assert_eq!(got[0].1, b"abc");
    }

    #[test]
    fn refuses_oversized_extension_headers_without_buffering_them() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(20 * 1024 * 1024 * 1024);
        h.set_path("pax").unwrap();
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 4096]);
        let err = entries(&data).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn detects_truncation_and_garbage() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1000);
        b.append_data(&mut h, "f", &[7u8; 1000][..]).unwrap();
        let data = b.into_inner().unwrap();
        let err = entries(&data[..900]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = entries(&[b'z'; 1024]).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(entries(&[]).unwrap().is_empty());
    }
}
