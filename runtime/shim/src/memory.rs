//! Keeping a waiting shim small: once its container runs, the shim only waits for it, so the
//! pages of code and read-only data it touched while starting it (libcontainer, serde, the
//! loader's work) need not stay mapped. [`drop_clean_file_pages`] unmaps them; they stay in the
//! page cache (the daemon's sealed memfd, the shared libraries), shared by every process, and
//! come back on the next touch.

/// One mapping of /proc/self/smaps that can be dropped: read-only, file-backed, and with no
/// page of its own (no copy-on-write copy: what the file holds is exactly what is mapped).
#[derive(Debug, PartialEq, Eq)]
struct Clean {
    start: usize,
    len: usize,
}

/// The read-only, file-backed mappings without anonymous pages in an smaps text.
fn clean_file_mappings(smaps: &str) -> Vec<Clean> {
    let mut out = Vec::new();
    let mut current: Option<(Clean, bool)> = None;
    let finish = |c: Option<(Clean, bool)>, out: &mut Vec<Clean>| {
        if let Some((m, true)) = c {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A new mapping: "start-end perms offset dev inode path".
            finish(current.take(), &mut out);
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let droppable = perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p')
                && path.starts_with('/');
            current = Some((
                Clean {
                    start: lo,
                    len: hi.saturating_sub(lo),
                },
                droppable,
            ));
        } else if first == "Anonymous:" {
            let anon_kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            if anon_kb != 0 {
                if let Some((_, droppable)) = current.as_mut() {
                    *droppable = false;
                }
            }
        }
    }
    finish(current.take(), &mut out);
    out
}

/// Unmaps the pages of this process's read-only file mappings that have no private copy; they
/// are faulted in again from the same file when touched. Best effort.
pub(crate) fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for m in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process that is read-only and private
        // with no anonymous (copy-on-write) page: nothing can write to it, so MADV_DONTNEED only
        // drops its page-table entries, and every later access reads the same bytes again from
        // the mapped file. No memory is freed that anything refers to.
        let _ = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings_are_chosen() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 00:01 1234 /memfd:inarray-sealed-shim (deleted)
Rss:                 400 kB
Anonymous:             0 kB
55d0c0100000-55d0c0400000 r-xp 00100000 00:01 1234 /memfd:inarray-sealed-shim (deleted)
Anonymous:             0 kB
55d0c0400000-55d0c0420000 r--p 00400000 00:01 1234 /memfd:inarray-sealed-shim (deleted)
Anonymous:            64 kB
55d0c0420000-55d0c0424000 rw-p 00420000 00:01 1234 /memfd:inarray-sealed-shim (deleted)
Anonymous:            16 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Anonymous:            12 kB
7f0000100000-7f0000200000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            [
                Clean {
                    start: 0x55d0c0000000,
                    len: 0x100000
                },
                Clean {
                    start: 0x55d0c0100000,
                    len: 0x300000
                },
                Clean {
                    start: 0x7f0000100000,
                    len: 0x100000
                },
            ]
        );
    }

    fn rss_kb() -> u64 {
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        rollup
            .lines()
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn dropping_shrinks_rss_and_the_code_still_runs() {
        let before = rss_kb();
        drop_clean_file_pages();
        let after = rss_kb();
        assert!(after < before, "rss {before} kB -> {after} kB");
        // Code and read-only data come back from their files.
        let mut v: Vec<String> = (0..1000).map(|i| format!("{i:04}")).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(v[0], "0999");
    }
}
