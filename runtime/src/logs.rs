//! Reading a container's log: the entries of its rotated files (written by the shim in the CRI
//! format, `inarray_shim::logfile`), filtered by stream and time, the last N lines, with or
//! without timestamps — and following it as it grows and rotates.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use inarray_shim::logfile::{files_oldest_first, parse_line};

/// What to read of a log.
#[derive(Clone, Debug)]
pub struct LogQuery {
    pub stdout: bool,
    pub stderr: bool,
    /// Only entries written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries written before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only the last N lines (of what the other filters keep).
    pub tail: Option<usize>,
    /// Each line starts with the time it was written (RFC 3339, nanoseconds) and a space.
    pub timestamps: bool,
}

impl Default for LogQuery {
    fn default() -> Self {
        Self {
            stdout: true,
            stderr: true,
            since: None,
            until: None,
            tail: None,
            timestamps: false,
        }
    }
}

/// A piece of output: 1 stdout, 2 stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: u8,
    pub data: Vec<u8>,
}

/// Turns log lines into chunks: the query's filters, and where lines start (for timestamps).
struct Formatter {
    q: LogQuery,
    /// Per stream: the last entry was partial (the next continues its line).
    open_line: [bool; 2],
}

impl Formatter {
    fn new(q: LogQuery) -> Self {
        Self {
            q,
            open_line: [false, false],
        }
    }

    fn chunk(&mut self, line: &[u8]) -> Option<LogChunk> {
        let e = parse_line(line);
        let i = usize::from(e.stream == 2);
        let starts_line = !self.open_line[i];
        self.open_line[i] = !e.full;
        if (e.stream == 1 && !self.q.stdout) || (e.stream == 2 && !self.q.stderr) {
            return None;
        }
        if self.q.since.is_some() || self.q.until.is_some() {
            // An entry of a log from before timestamps has no time: it matches no time filter.
            let t = e
                .time
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?
                .with_timezone(&Utc);
            if self.q.since.is_some_and(|s| t < s) || self.q.until.is_some_and(|u| t >= u) {
                return None;
            }
        }
        let mut data = Vec::with_capacity(e.text.len() + 40);
        if self.q.timestamps && starts_line {
            if let Some(t) = e.time {
                data.extend_from_slice(t.as_bytes());
                data.push(b' ');
            }
        }
        data.extend_from_slice(e.text);
        if e.full {
            data.push(b'\n');
        }
        Some(LogChunk {
            stream: e.stream,
            data,
        })
    }
}

/// Where a [`read`] stopped: the file it read last and how far, so that a follower goes on from
/// exactly there (nothing missed, nothing twice).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogEnd {
    ino: u64,
    offset: u64,
}

/// Everything in the log now that the query selects, oldest first, and where it stopped.
pub fn read(log: &Path, q: &LogQuery) -> io::Result<(Vec<LogChunk>, LogEnd)> {
    let mut f = Formatter::new(q.clone());
    let mut out: VecDeque<LogChunk> = VecDeque::new();
    let mut end = LogEnd::default();
    // Complete lines kept for a tail (a partial entry belongs to the line its F entry ends).
    let mut lines = 0usize;
    for path in files_oldest_first(log) {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Rotated away between the listing and the open: its entries are gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        end = LogEnd {
            ino: file.metadata()?.ino(),
            offset: 0,
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            end.offset += line.len() as u64 + 1;
            if let Some(c) = f.chunk(&line) {
                if c.data.ends_with(b"\n") {
                    lines += 1;
                }
                out.push_back(c);
                if let Some(n) = q.tail {
                    while lines > n {
                        match out.pop_front() {
                            Some(c) if c.data.ends_with(b"\n") => lines -= 1,
                            Some(_) => {}
                            None => break,
                        }
                    }
                }
            }
        }
    }
    if q.tail == Some(0) {
        out.clear();
    }
    Ok((out.into(), end))
}

/// Follows the log from its current end (or from a position [`read`] left it at), across
/// rotations: when the file it reads has ended and the log's path names another file, it goes on
/// with that one.
pub struct LogFollower {
    path: PathBuf,
    file: Option<(BufReader<File>, u64)>,
    fmt: Formatter,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl LogFollower {
    /// From where a [`read`] stopped (the file it read last may have been rotated since: then
    /// it is found as `.1`).
    pub fn from(log: &Path, q: LogQuery, end: LogEnd) -> Self {
        let mut me = Self {
            path: log.to_owned(),
            file: None,
            fmt: Formatter::new(q),
            partial: Vec::new(),
        };
        let mut rotated = log.as_os_str().to_owned();
        rotated.push(".1");
        for p in [log.to_owned(), PathBuf::from(rotated)] {
            if let Ok(f) = File::open(&p) {
                if f.metadata().map(|m| m.ino()).ok() == Some(end.ino) {
                    let mut r = BufReader::new(f);
                    if io::Seek::seek(&mut r, io::SeekFrom::Start(end.offset)).is_ok() {
                        me.file = Some((r, end.ino));
                    }
                    break;
                }
            }
        }
        me
    }

    /// From the end of what is there now.
    pub fn from_end(log: &Path, q: LogQuery) -> Self {
        let mut me = Self {
            path: log.to_owned(),
            file: None,
            fmt: Formatter::new(q),
            partial: Vec::new(),
        };
        if let Ok(f) = File::open(log) {
            let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            let mut r = BufReader::new(f);
            let _ = io::Seek::seek(&mut r, io::SeekFrom::End(0));
            me.file = Some((r, ino));
        }
        me
    }

    /// What has been written since the last call (empty: nothing new yet).
    pub fn poll(&mut self) -> io::Result<Vec<LogChunk>> {
        let mut out = Vec::new();
        for _ in 0..2 {
            if self.file.is_none() {
                match File::open(&self.path) {
                    Ok(f) => {
                        let ino = f.metadata()?.ino();
                        self.file = Some((BufReader::new(f), ino));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e),
                }
            }
            let Some((r, ino)) = self.file.as_mut() else {
                return Ok(out);
            };
            let mut buf = Vec::new();
            // Bounded: at most 1 MiB per call, the rest at the next.
            r.by_ref().take(1024 * 1024).read_to_end(&mut buf)?;
            self.partial.extend_from_slice(&buf);
            while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=nl).collect();
                if let Some(c) = self.fmt.chunk(&line[..line.len() - 1]) {
                    out.push(c);
                }
            }
            if !buf.is_empty() {
                return Ok(out);
            }
            // At the end of this file: rotated? Then the new one is read from its start.
            let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            if current.is_some() && current != Some(*ino) {
                self.file = None;
                self.partial.clear();
                continue;
            }
            return Ok(out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inarray_shim::logfile::{LogLimits, LogWriter};

    fn text(chunks: &[LogChunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[test]
    fn streams_tail_timestamps_and_time_filters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        w.write(1, b"a\nb\n");
        w.write(2, b"oops\n");
        w.write(1, b"c\npartial");
        w.flush();
        let (all, end) = read(&path, &LogQuery::default()).unwrap();
        assert_eq!(text(&all), "a\nb\noops\nc\npartial\n");
        let q = LogQuery {
            stderr: false,
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(text(&read(&path, &q).unwrap().0), "c\npartial\n");
        let q = LogQuery {
            stdout: false,
            timestamps: true,
            ..Default::default()
        };
        let ts = text(&read(&path, &q).unwrap().0);
        assert!(ts.ends_with("Z oops\n"), "{ts}");
        let later = LogQuery {
            since: Some(Utc::now() + chrono::Duration::seconds(5)),
            ..Default::default()
        };
        assert!(read(&path, &later).unwrap().0.is_empty());
        let earlier = LogQuery {
            until: Some(Utc::now() - chrono::Duration::seconds(5)),
            ..Default::default()
        };
        assert!(read(&path, &earlier).unwrap().0.is_empty());
        let zero = LogQuery {
            tail: Some(0),
            ..Default::default()
        };
        assert!(read(&path, &zero).unwrap().0.is_empty());
        // A follower from where the read stopped sees exactly what comes next.
        let mut f = LogFollower::from(&path, LogQuery::default(), end);
        w.write(1, b"next\n");
        assert_eq!(text(&f.poll().unwrap()), "next\n");
        // An old raw log reads as text.
        let old = dir.path().join("old.log");
        std::fs::write(&old, "raw line\nanother\n").unwrap();
        assert_eq!(
            text(&read(&old, &LogQuery::default()).unwrap().0),
            "raw line\nanother\n"
        );
    }

    #[test]
    fn a_follower_goes_on_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: inarray_shim::logfile::MIN_MAX_SIZE,
            max_files: 2,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        w.write(1, b"before\n");
        let mut f = LogFollower::from_end(&path, LogQuery::default());
        assert!(f.poll().unwrap().is_empty(), "only what comes after");
        let mut seen = String::new();
        for i in 0..5000 {
            w.write(1, format!("line {i}\n").as_bytes());
            if i % 100 == 0 {
                seen.push_str(&text(&f.poll().unwrap()));
            }
        }
        seen.push_str(&text(&f.poll().unwrap()));
        let expected: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(seen, expected);
    }
}
