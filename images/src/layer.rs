//! Layer streams: compression detection, the decompressed-size cap, diff-id hashing, and the
//! drive loop that unpacks (or only scans) a layer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha256};

use crate::tarstream::{Kind, TarReader};
use crate::unpack::Unpacker;
use crate::ImageError;

pub(crate) const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(crate) const MEDIA_DOCKER_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub(crate) const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

pub(crate) fn is_layer_media_type(media_type: &str) -> bool {
    [
        MEDIA_OCI_LAYER,
        MEDIA_OCI_LAYER_GZIP,
        MEDIA_OCI_LAYER_ZSTD,
        MEDIA_DOCKER_LAYER_GZIP,
        MEDIA_DOCKER_LAYER,
    ]
    .contains(&media_type)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects compression from the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
        {
            // A zstd frame, or a zstd skippable frame (0x184D2A5?) in front of one.
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn of_file(path: &Path) -> io::Result<Self> {
        let mut head = [0u8; 4];
        let mut file = File::open(path)?;
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(Compression::sniff(&head[..filled]))
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_OCI_LAYER,
            Compression::Gzip => MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// Hashes and counts what passes through, failing once more than `limit` bytes have.
pub(crate) struct CappedHasher<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> CappedHasher<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        CappedHasher {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
            exceeded: false,
        }
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// "sha256:<hex>" of everything read.
    pub fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for CappedHasher<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(io::Error::other("size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A zstd decoder that handles concatenated and skippable frames (zstd:chunked layers have both).
struct ZstdStream<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for ZstdStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let want = buf.len() - self.decoder.can_collect();
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if !self.decoder.is_finished() {
                    continue;
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let length = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.source).take(length), &mut io::sink())?;
                    if skipped != length {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
    }
}

/// A reader that fails (instead of truncating) once more than `left` bytes have passed.
struct Capped<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => Err(io::Error::other(format!(
                "the decompressed {} is larger than the limit (max_unpacked_layer_bytes)",
                self.what
            ))),
        }
    }
}

/// A whole image archive, as `docker load` takes it: plain tar, or gzip- or zstd-compressed
/// (by its first bytes; a decompressed stream is capped at `limit` bytes, so a small
/// compressed bomb cannot fill the disk). bzip2 and xz are recognized and refused by name.
pub(crate) fn archive_stream<'a, R: Read + 'a>(
    reader: R,
    limit: u64,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    // The first bytes tell the formats apart; they are put back in front of the stream.
    let mut reader = reader;
    let mut buf = [0u8; 6];
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::ArchiveRead(e)),
        }
    }
    let head = &buf[..n];
    let r = BufReader::with_capacity(256 * 1024, io::Cursor::new(head.to_vec()).chain(reader));
    if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let kind = if head.starts_with(b"BZh") {
            "bzip2"
        } else {
            "xz"
        };
        return Err(ImageError::InvalidArchive(format!(
            "the archive is {kind}-compressed, which is not supported; send it uncompressed or gzip- or zstd-compressed"
        )));
    }
    Ok(match Compression::sniff(head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(Capped {
            inner: MultiGzDecoder::new(r),
            left: limit,
            what: "gzip archive",
        }),
        Compression::Zstd => Box::new(Capped {
            inner: ZstdStream {
                source: r,
                decoder: FrameDecoder::new(),
                in_frame: false,
            },
            left: limit,
            what: "zstd archive",
        }),
    })
}

/// Opens a layer blob as its decompressed tar stream.
pub(crate) fn decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let compression = Compression::of_file(path)?;
    let file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(ZstdStream {
            source: file,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }),
    })
}

/// What processing a layer found.
pub(crate) struct LayerOutcome {
    /// "sha256:<hex>" of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of regular-file content.
    pub unpacked_bytes: u64,
}

/// Reads the layer blob at `blob` and either unpacks it into `dest` (an existing empty
/// directory) or, with `dest` `None`, only hashes and measures it. `layer` names the layer in
/// errors. Both caps are `max_unpacked`: the decompressed stream and the file content written.
pub(crate) fn process_layer(
    blob: &Path,
    layer: &str,
    dest: Option<&Path>,
    max_unpacked: u64,
) -> Result<LayerOutcome, ImageError> {
    let stream = decompressed(blob).map_err(|e| ImageError::io("open layer blob", blob, e))?;
    let mut tar = TarReader::new(CappedHasher::new(stream, max_unpacked));
    let mut unpacker = match dest {
        Some(dest) => Some(Unpacker::new(dest, layer, max_unpacked)?),
        None => None,
    };
    let too_large = || ImageError::TooLarge {
        what: format!("uncompressed layer {layer}"),
        limit: max_unpacked,
    };
    let format_error = |tar: &TarReader<CappedHasher<Box<dyn Read>>>, e: io::Error| {
        if tar.get_ref().exceeded() {
            too_large()
        } else {
            ImageError::LayerFormat {
                layer: layer.to_string(),
                reason: e.to_string(),
            }
        }
    };
    let mut scanned: u64 = 0;
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(e) => return Err(format_error(&tar, e)),
        };
        match unpacker.as_mut() {
            Some(unpacker) => {
                let result = unpacker.entry(&entry, &mut EntryData(&mut tar));
                if let Err(err) = result {
                    if tar.get_ref().exceeded() {
                        return Err(too_large());
                    }
                    return Err(err);
                }
            }
            None => {
                if entry.kind == Kind::File {
                    let n = io::copy(&mut EntryData(&mut tar), &mut io::sink())
                        .map_err(|e| format_error(&tar, e))?;
                    scanned += n;
                }
            }
        }
    }
    let unpacked_bytes = match unpacker {
        Some(unpacker) => {
            let written = unpacker.written();
            unpacker.finish()?;
            written
        }
        None => scanned,
    };
    // Whatever follows the end-of-archive marker is part of the diff id too.
    let mut rest = tar.into_inner();
    if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
        return Err(if rest.exceeded() {
            too_large()
        } else {
            ImageError::LayerFormat {
                layer: layer.to_string(),
                reason: e.to_string(),
            }
        });
    }
    Ok(LayerOutcome {
        diff_id: rest.digest(),
        unpacked_bytes,
    })
}

/// The current entry's data as a reader.
struct EntryData<'a, R>(&'a mut TarReader<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}
