//! Docker's "stdcopy" framing: how an exec or attach stream without a terminal carries standard
//! output and standard error on one connection. Each frame is an 8-byte header
//! `[stream, 0, 0, 0, len as u32 big-endian]` and then `len` bytes; stream 1 is stdout, 2 stderr.

/// The length of a frame header.
pub const HEADER_LEN: usize = 8;

/// Which of the process's outputs a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("output frame for unknown stream {0} (expected 1 = stdout or 2 = stderr)")]
    UnknownStream(u8),
    #[error("malformed output frame header {0:02x?}")]
    BadHeader([u8; HEADER_LEN]),
    #[error("the output stream ended inside a frame")]
    Truncated,
}

/// The header of a frame of `len` bytes on `stream`.
pub fn header(stream: Stream, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [stream as u8, 0, 0, 0, l[0], l[1], l[2], l[3]]
}

/// An incremental decoder: feed it the stream's bytes in chunks of any size, as they arrive.
/// Only a header split between chunks is buffered (8 bytes at most); payloads are handed back as
/// slices of the chunk they came in.
#[derive(Debug)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    /// Header bytes collected so far (0 between frames and inside a payload).
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    stream: Stream,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            header: [0; HEADER_LEN],
            have: 0,
            left: 0,
            stream: Stream::Stdout,
        }
    }

    /// Decodes one chunk: the payload pieces it holds, in order, each with its stream. A frame
    /// that spans chunks comes back as one piece per chunk; an empty frame yields nothing. After
    /// an error the stream is not stdcopy (or is corrupt) and the decoder must not be fed again.
    pub fn feed<'a>(&mut self, mut chunk: &'a [u8]) -> Result<Vec<(Stream, &'a [u8])>, FrameError> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            if self.left > 0 {
                let n = self.left.min(chunk.len());
                out.push((self.stream, &chunk[..n]));
                self.left -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let h = self.header;
                self.stream = match h[0] {
                    1 => Stream::Stdout,
                    2 => Stream::Stderr,
                    s => return Err(FrameError::UnknownStream(s)),
                };
                if h[1..4] != [0, 0, 0] {
                    return Err(FrameError::BadHeader(h));
                }
                let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.left = usize::try_from(len).map_err(|_| FrameError::BadHeader(h))?;
            }
        }
        Ok(out)
    }

    /// At the end of the stream: an error when it stopped inside a frame (header or payload).
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.have > 0 || self.left > 0 {
            Err(FrameError::Truncated)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: Stream, data: &[u8]) -> Vec<u8> {
        let mut v = header(stream, u32::try_from(data.len()).unwrap()).to_vec();
        v.extend_from_slice(data);
        v
    }

    /// Feeds `chunks` in turn; returns (stdout, stderr) as the pieces came.
    fn decode(d: &mut Decoder, chunks: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for c in chunks {
            for (s, piece) in d.feed(c)? {
                assert!(!piece.is_empty(), "no empty pieces");
                match s {
                    Stream::Stdout => out.extend_from_slice(piece),
                    Stream::Stderr => err.extend_from_slice(piece),
                }
            }
        }
        Ok((out, err))
    }

    fn sample() -> Vec<u8> {
        let mut v = frame(Stream::Stdout, b"out 1\n");
        v.extend(frame(Stream::Stderr, b"err 1\n"));
        v.extend(frame(Stream::Stdout, b""));
        v.extend(frame(Stream::Stdout, b"out 2\n"));
        v
    }

    #[test]
    fn header_layout() {
        assert_eq!(header(Stream::Stdout, 5), [1, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(
            header(Stream::Stderr, 0x0102_0304),
            [2, 0, 0, 0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn frames_in_one_chunk_keep_their_order_and_stream() {
        let mut d = Decoder::new();
        let bytes = sample();
        let pieces = d.feed(&bytes).unwrap();
        assert_eq!(
            pieces,
            vec![
                (Stream::Stdout, &b"out 1\n"[..]),
                (Stream::Stderr, &b"err 1\n"[..]),
                (Stream::Stdout, &b"out 2\n"[..]),
            ]
        );
        d.finish().unwrap();
    }

    #[test]
    fn any_split_into_two_chunks_decodes_the_same() {
        let bytes = sample();
        for i in 0..=bytes.len() {
            let mut d = Decoder::new();
            let (out, err) = decode(&mut d, &[&bytes[..i], &bytes[i..]]).unwrap();
            assert_eq!(out, b"out 1\nout 2\n", "split at {i}");
            assert_eq!(err, b"err 1\n", "split at {i}");
            d.finish().unwrap();
        }
    }

    #[test]
    fn byte_by_byte_headers_split_everywhere() {
        let bytes = sample();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let mut d = Decoder::new();
        let (out, err) = decode(&mut d, &chunks).unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out 1\nout 2\n"[..], &b"err 1\n"[..])
        );
        d.finish().unwrap();
    }

    #[test]
    fn zero_length_frames_yield_nothing() {
        let mut bytes = frame(Stream::Stderr, b"");
        bytes.extend(frame(Stream::Stdout, b""));
        let mut d = Decoder::new();
        assert!(d.feed(&bytes).unwrap().is_empty());
        d.finish().unwrap();
        // And the next frame after them is read from the right place.
        assert_eq!(
            d.feed(&frame(Stream::Stderr, b"x")).unwrap(),
            vec![(Stream::Stderr, &b"x"[..])]
        );
    }

    #[test]
    fn an_empty_chunk_changes_nothing() {
        let mut d = Decoder::new();
        assert!(d.feed(&[]).unwrap().is_empty());
        assert!(d.feed(&[1, 0, 0]).unwrap().is_empty());
        assert!(d.feed(&[]).unwrap().is_empty());
        assert_eq!(
            d.feed(&[0, 0, 0, 0, 1, b'z']).unwrap(),
            vec![(Stream::Stdout, &b"z"[..])]
        );
    }

    #[test]
    fn a_bad_stream_byte_is_an_error() {
        for s in [0u8, 3, 0x1b, 0xff] {
            let mut d = Decoder::new();
            let err = d.feed(&[s, 0, 0, 0, 0, 0, 0, 1, b'a']).unwrap_err();
            assert_eq!(err, FrameError::UnknownStream(s));
            assert!(err.to_string().contains("unknown stream"), "{err}");
        }
        // Also when the bad header arrives after good frames, split over chunks.
        let mut d = Decoder::new();
        let mut bytes = frame(Stream::Stdout, b"ok");
        bytes.extend([9, 0, 0]);
        assert!(d.feed(&bytes).is_ok());
        assert_eq!(
            d.feed(&[0, 0, 0, 0, 0]).unwrap_err(),
            FrameError::UnknownStream(9)
        );
    }

    #[test]
    fn raw_terminal_bytes_are_not_taken_for_frames() {
        // What a tty stream would carry: text, not a header with zero padding.
        let mut d = Decoder::new();
        let err = d.feed(b"\x01hello world").unwrap_err();
        assert!(matches!(err, FrameError::BadHeader(_)), "{err:?}");
    }

    #[test]
    fn a_stream_that_stops_inside_a_frame_is_truncated() {
        let bytes = frame(Stream::Stdout, b"abc");
        for cut in 1..bytes.len() {
            let mut d = Decoder::new();
            d.feed(&bytes[..cut]).unwrap();
            assert_eq!(d.finish(), Err(FrameError::Truncated), "cut at {cut}");
        }
    }
}
