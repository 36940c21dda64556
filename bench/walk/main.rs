//! `inarray-walk`: the headline benchmark's in-array tool (section 4 of docs/benchmarks.md).
//!
//! It does inside a container, through the bind mount, exactly the per-file work the bench's NFS
//! client does over the network — the same walk, the same order, one file at a time, one thread —
//! so that the two sides of the comparison differ only in the data path:
//!
//! * `scan TREE OUT`: stat and read every file (open, fstat, read, close); writes the byte count
//!   to OUT. NFS: LOOKUP, GETATTR, READ per file.
//! * `chmod TREE MODE`: chmod every file (octal MODE). NFS: LOOKUP, SETATTR.
//! * `archive TREE DEST DAYS`: lstat every file, move those last modified more than DAYS days
//!   ago into DEST. NFS: LOOKUP (its attributes carry the mtime), RENAME.
//!
//! TREE holds directories of files (the trees `bench/src/scan.rs` makes). Built by the bench
//! driver with `rustc -O -C target-feature=+crt-static` (std only, no crates: the busybox image has
//! no C library) and added to a copy of the busybox image.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

fn dirs(tree: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(tree)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Calls `f` with every entry of every directory of `tree`.
fn each_file(
    tree: &Path,
    mut f: impl FnMut(&Path, &fs::DirEntry) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for d in dirs(tree)? {
        for e in fs::read_dir(&d)? {
            f(&d, &e?)?;
        }
    }
    Ok(())
}

fn scan(tree: &Path, out: &Path) -> std::io::Result<()> {
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    each_file(tree, |_, e| {
        let mut f = fs::File::open(e.path())?;
        let m = f.metadata()?;
        if m.is_file() {
            buf.clear();
            let n = (&mut f).take(m.len()).read_to_end(&mut buf)? as u64;
            if n != m.len() {
                return Err(std::io::Error::other(format!(
                    "{}: read {n} bytes, fstat said {}",
                    e.path().display(),
                    m.len()
                )));
            }
            total += n;
        }
        Ok(())
    })?;
    fs::write(out, format!("{total}\n"))
}

fn chmod(tree: &Path, mode: u32) -> std::io::Result<()> {
    each_file(tree, |_, e| {
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode))
    })
}

fn archive(tree: &Path, dest: &Path, days: u64) -> std::io::Result<()> {
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .as_secs()
        .saturating_sub(days * 86400) as i64;
    each_file(tree, |_, e| {
        let m = fs::symlink_metadata(e.path())?;
        if m.is_file() && m.mtime() < cutoff {
            fs::rename(e.path(), dest.join(e.file_name()))?;
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["scan", tree, out] => scan(Path::new(tree), Path::new(out)),
        ["chmod", tree, mode] => match u32::from_str_radix(mode, 8) {
            Ok(m) => chmod(Path::new(tree), m),
            Err(e) => Err(std::io::Error::other(format!("mode {mode}: {e}"))),
        },
        ["archive", tree, dest, days] => match days.parse() {
            Ok(d) => archive(Path::new(tree), Path::new(dest), d),
            Err(e) => Err(std::io::Error::other(format!("days {days}: {e}"))),
        },
        _ => {
            eprintln!("usage: inarray-walk scan TREE OUT | chmod TREE MODE | archive TREE DEST DAYS");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inarray-walk: {e}");
            ExitCode::FAILURE
        }
    }
}
