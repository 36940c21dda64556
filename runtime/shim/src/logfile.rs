//! The container log: one line per piece of output, in the CRI logging format
//! (`<RFC 3339 time with nanoseconds> <stdout|stderr> <F|P> <text>`), rotated by size.
//!
//! The shim writes it ([`LogWriter`]); the daemon reads it ([`parse_line`], [`files_oldest_first`]).
//! Every line records when it was written and which stream it came from, so `logs` can filter by
//! time, tail across files and keep stdout and stderr apart. A line longer than
//! [`MAX_LINE`] is split into partial (`P`) entries ended by a final (`F`) one. The log never
//! takes more than `max_size × max_files` bytes: before an entry would make the current file
//! pass `max_size`, it becomes `container.log.1` (the older ones shift, the oldest goes).
//! Logs written before this format (raw bytes) are still read: a line that does not parse is
//! text of stdout.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest entry's text; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;
/// The smallest `max_size` allowed (a file must hold a few entries).
pub const MIN_MAX_SIZE: u64 = 64 * 1024;

/// How big a container's log may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLimits {
    /// Bytes per file.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 10 MiB × 3: a container never keeps more than 30 MiB of output.
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

impl LogLimits {
    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_size < MIN_MAX_SIZE {
            return Err(format!(
                "log.max_size: at least {MIN_MAX_SIZE} bytes (64 KiB)"
            ));
        }
        if !(1..=100).contains(&self.max_files) {
            return Err("log.max_files: between 1 and 100".into());
        }
        Ok(())
    }
}

/// The log's files, oldest first (`container.log.N` … `container.log.1`, `container.log`); only
/// those that exist.
pub fn files_oldest_first(current: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=100)
        .map(|i| rotated(current, i))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    if current.exists() {
        out.push(current.to_owned());
    }
    out
}

fn rotated(current: &Path, i: u32) -> PathBuf {
    let mut s = current.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// One entry of the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The time as written (RFC 3339, UTC, nanoseconds); None for a line of an old raw log.
    pub time: Option<&'a str>,
    /// 1 stdout, 2 stderr.
    pub stream: u8,
    /// The entry ends a line (`F`), or continues on the next entry (`P`).
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Entry<'_> {
    let raw = Entry {
        time: None,
        stream: 1,
        full: true,
        text: line,
    };
    let mut parts = line.splitn(4, |&b| b == b' ');
    let (Some(t), Some(s), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return raw;
    };
    let text = parts.next().unwrap_or_default();
    let stream = match s {
        b"stdout" => 1,
        b"stderr" => 2,
        _ => return raw,
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        _ => return raw,
    };
    let Ok(time) = std::str::from_utf8(t) else {
        return raw;
    };
    if chrono::DateTime::parse_from_rfc3339(time).is_err() {
        return raw;
    }
    Entry {
        time: Some(time),
        stream,
        full,
        text,
    }
}

/// Writes output to the log as entries, rotating by size.
pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    limits: LogLimits,
    /// Per stream (stdout, stderr): the start of a line not ended yet.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, limits: LogLimits) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            size,
            limits,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Takes output of `stream` (1 stdout, 2 stderr): complete lines become entries at once,
    /// the rest waits for its end (at most [`MAX_LINE`] bytes, then a partial entry).
    pub fn write(&mut self, stream: u8, mut data: &[u8]) {
        let i = usize::from(stream == 2);
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[i]);
            line.extend_from_slice(&data[..nl]);
            self.entries(stream, &line, true);
            data = &data[nl + 1..];
        }
        self.pending[i].extend_from_slice(data);
        if self.pending[i].len() >= MAX_LINE {
            // Whole MAX_LINE pieces go out as partial entries; the rest waits for its end.
            let cut = self.pending[i].len() / MAX_LINE * MAX_LINE;
            let part: Vec<u8> = self.pending[i].drain(..cut).collect();
            self.entries(stream, &part, false);
        }
    }

    /// Writes what waits for a line's end (the process has ended).
    pub fn flush(&mut self) {
        for stream in [1u8, 2] {
            let i = usize::from(stream == 2);
            if !self.pending[i].is_empty() {
                let rest = std::mem::take(&mut self.pending[i]);
                self.entries(stream, &rest, true);
            }
        }
    }

    /// One line as entries of at most MAX_LINE bytes; the last is `F` when `ends`.
    fn entries(&mut self, stream: u8, line: &[u8], ends: bool) {
        let chunks: Vec<&[u8]> = if line.is_empty() {
            vec![line]
        } else {
            line.chunks(MAX_LINE).collect()
        };
        let last = chunks.len() - 1;
        for (k, chunk) in chunks.into_iter().enumerate() {
            let tag = if k == last && ends { "F" } else { "P" };
            let name = if stream == 2 { "stderr" } else { "stdout" };
            let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
            let mut entry = format!("{time} {name} {tag} ").into_bytes();
            entry.extend_from_slice(chunk);
            entry.push(b'\n');
            self.append(&entry);
        }
    }

    fn append(&mut self, entry: &[u8]) {
        if self.size > 0 && self.size + entry.len() as u64 > self.limits.max_size {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            // A full disk loses output, never the container: it goes on running.
            if f.write_all(entry).is_ok() {
                self.size += entry.len() as u64;
            }
        }
    }

    /// `container.log` → `.1` → … ; the oldest beyond `max_files` is removed.
    fn rotate(&mut self) {
        self.file = None;
        let keep = self.limits.max_files;
        if keep <= 1 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, keep - 1));
            for i in (1..keep - 1).rev() {
                let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
            }
            let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_entries(dir: &Path) -> Vec<(u8, bool, String)> {
        files_oldest_first(&dir.join("container.log"))
            .iter()
            .flat_map(|p| {
                std::fs::read(p)
                    .unwrap()
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let e = parse_line(l);
                        assert!(e.time.is_some(), "{}", String::from_utf8_lossy(l));
                        (
                            e.stream,
                            e.full,
                            String::from_utf8_lossy(e.text).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn lines_streams_and_partial_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            LogWriter::open(&dir.path().join("container.log"), LogLimits::default()).unwrap();
        w.write(1, b"one\ntw");
        w.write(2, b"err\n");
        w.write(1, b"o\n\nprompt$ ");
        w.write(1, &vec![b'x'; MAX_LINE + 10]);
        w.flush();
        let got = all_entries(dir.path());
        assert_eq!(got[0], (1, true, "one".into()));
        assert_eq!(got[1], (2, true, "err".into()));
        assert_eq!(got[2], (1, true, "two".into()));
        assert_eq!(got[3], (1, true, "".into()));
        assert!(!got[4].1, "a long line is split: partial first");
        assert_eq!(got[4].2.len(), MAX_LINE);
        assert!(got[4].2.starts_with("prompt$ x"));
        assert_eq!(got[5], (1, true, "x".repeat(18)), "the rest ends the line");
    }

    #[test]
    fn rotation_keeps_at_most_max_size_times_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: MIN_MAX_SIZE,
            max_files: 3,
        };
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..20_000 {
            w.write(1, format!("line {i}\n").as_bytes());
        }
        let files = files_oldest_first(&path);
        assert_eq!(files.len(), 3);
        let total: u64 = files
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 3 * MIN_MAX_SIZE, "{total}");
        for p in &files {
            assert!(std::fs::metadata(p).unwrap().len() <= MIN_MAX_SIZE);
        }
        let got = all_entries(dir.path());
        assert_eq!(got.last().unwrap().2, "line 19999");
        // In order, without gaps, across the files.
        let first: usize = got[0].2["line ".len()..].parse().unwrap();
        for (k, e) in got.iter().enumerate() {
            assert_eq!(e.2, format!("line {}", first + k));
        }
        // max_files 1: one file, never more than max_size.
        let one = dir.path().join("one.log");
        let mut w = LogWriter::open(
            &one,
            LogLimits {
                max_size: MIN_MAX_SIZE,
                max_files: 1,
            },
        )
        .unwrap();
        for i in 0..20_000 {
            w.write(2, format!("line {i}\n").as_bytes());
        }
        assert_eq!(files_oldest_first(&one).len(), 1);
        assert!(std::fs::metadata(&one).unwrap().len() <= MIN_MAX_SIZE);
    }

    #[test]
    fn old_raw_logs_and_odd_lines_read_as_stdout_text() {
        assert_eq!(
            parse_line(b"hello world from an old log"),
            Entry {
                time: None,
                stream: 1,
                full: true,
                text: b"hello world from an old log"
            }
        );
        assert_eq!(parse_line(b"notatime stdout F x").time, None);
        let e = parse_line(b"2026-12-03T16:00:00.000000001Z stderr P abc def");
        assert_eq!(
            (e.time, e.stream, e.full, e.text),
            (
                Some("2026-12-03T16:00:00.000000001Z"),
                2,
                false,
                &b"abc def"[..]
            )
        );
        assert!(LogLimits {
            max_size: 1,
            max_files: 3
        }
        .validate()
        .unwrap_err()
        .contains("log.max_size"));
    }
}
