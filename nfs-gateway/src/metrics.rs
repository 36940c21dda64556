//! Per-export counters: operations, errors and service time per NFS procedure, bytes read and
//! written. Atomic counters bumped by the connection threads; the API reads them at scrape time
//! (`/metrics`) through [`Metrics`], and the gateway logs them every minute while they move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// NFSv3 procedure names, by procedure number (RFC 1813).
pub const PROCEDURES: [&str; 22] = [
    "null",
    "getattr",
    "setattr",
    "lookup",
    "access",
    "readlink",
    "read",
    "write",
    "create",
    "mkdir",
    "symlink",
    "mknod",
    "remove",
    "rmdir",
    "rename",
    "link",
    "readdir",
    "readdirplus",
    "fsstat",
    "fsinfo",
    "pathconf",
    "commit",
];

/// Upper bounds of the latency histogram's buckets, in microseconds (the last bucket, +Inf, is
/// implied).
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

#[derive(Default)]
struct Procedure {
    ops: AtomicU64,
    errors: AtomicU64,
    latency_us_sum: AtomicU64,
    /// Not cumulative: calls whose latency fell in each bucket; the last one is over every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

/// The counters of one export.
#[derive(Default)]
pub struct Stats {
    procs: [Procedure; PROCEDURES.len()],
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Stats {
    /// Counts one call of procedure `proc_` that started at `started`.
    pub fn record(&self, proc_: u32, ok: bool, started: Instant) {
        let Some(p) = self.procs.get(proc_ as usize) else {
            return;
        };
        let us = started.elapsed().as_micros() as u64;
        p.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            p.errors.fetch_add(1, Ordering::Relaxed);
        }
        p.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        let b = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        p.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, export: &str) -> ExportMetrics {
        let procedures = PROCEDURES
            .iter()
            .zip(&self.procs)
            .filter_map(|(name, p)| {
                let count = p.ops.load(Ordering::Relaxed);
                if count == 0 {
                    return None;
                }
                let mut cumulative = 0;
                let buckets = p
                    .buckets
                    .iter()
                    .map(|b| {
                        cumulative += b.load(Ordering::Relaxed);
                        cumulative
                    })
                    .collect();
                Some(ProcedureMetrics {
                    procedure: name,
                    count,
                    errors: p.errors.load(Ordering::Relaxed),
                    latency_seconds_sum: p.latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6,
                    latency_buckets: buckets,
                })
            })
            .collect();
        ExportMetrics {
            export: export.to_owned(),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            procedures,
        }
    }
}

/// One export's figures at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMetrics {
    pub export: String,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Procedures called at least once.
    pub procedures: Vec<ProcedureMetrics>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcedureMetrics {
    pub procedure: &'static str,
    /// Calls answered (errors included).
    pub count: u64,
    /// Calls answered with an NFS error status or refused as garbage.
    pub errors: u64,
    /// Total service time (from the decoded call to the encoded reply).
    pub latency_seconds_sum: f64,
    /// Cumulative counts of calls at most each of [`LATENCY_BOUNDS_US`] long, then all (+Inf).
    pub latency_buckets: Vec<u64>,
}

/// Export id → (its current name, its counters).
type ByExport = HashMap<u32, (String, Arc<Stats>)>;

/// The counters of every export a gateway serves, readable from other crates.
#[derive(Clone, Default)]
pub struct Metrics {
    exports: Arc<Mutex<ByExport>>,
}

impl Metrics {
    /// The counters of export `id` (made on first use; kept across reloads, renamed along).
    pub(crate) fn stats(&self, id: u32, name: &str) -> Arc<Stats> {
        let mut m = self.exports.lock().expect("nfs metrics");
        let e = m
            .entry(id)
            .or_insert_with(|| (name.to_owned(), Arc::default()));
        if e.0 != name {
            e.0 = name.to_owned();
        }
        e.1.clone()
    }

    /// Forgets exports that are no longer served (deleted: their ids are never reused).
    pub(crate) fn retain(&self, live: impl Fn(u32) -> bool) {
        self.exports
            .lock()
            .expect("nfs metrics")
            .retain(|id, _| live(*id));
    }

    /// Every served export's figures, by export name.
    pub fn snapshot(&self) -> Vec<ExportMetrics> {
        let m = self.exports.lock().expect("nfs metrics");
        let mut out: Vec<_> = m.values().map(|(name, s)| s.snapshot(name)).collect();
        out.sort_by(|a, b| a.export.cmp(&b.export));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_errors_and_latency_buckets() {
        let m = Metrics::default();
        let s = m.stats(7, "a");
        let past = |us| Instant::now() - Duration::from_micros(us);
        s.record(1, true, past(0));
        s.record(1, false, past(300));
        s.record(6, true, past(2_000_000));
        s.record(99, true, past(0)); // not a procedure: ignored
        s.bytes_read.fetch_add(10, Ordering::Relaxed);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 1);
        let e = &snap[0];
        assert_eq!(
            (e.export.as_str(), e.bytes_read, e.bytes_written),
            ("a", 10, 0)
        );
        let names: Vec<_> = e.procedures.iter().map(|p| p.procedure).collect();
        assert_eq!(names, ["getattr", "read"]);
        let g = &e.procedures[0];
        assert_eq!((g.count, g.errors), (2, 1));
        // ≤ 50 µs: 1 call; ≤ 500 µs: both; +Inf: both.
        assert_eq!(g.latency_buckets[0], 1);
        assert_eq!(g.latency_buckets[3], 2);
        assert_eq!(*g.latency_buckets.last().unwrap(), 2);
        let r = &e.procedures[1];
        assert_eq!(r.latency_buckets[LATENCY_BOUNDS_US.len() - 1], 0);
        assert_eq!(r.latency_buckets[LATENCY_BOUNDS_US.len()], 1);
        assert!(r.latency_seconds_sum >= 2.0);
        // Renamed along; forgotten once gone.
        assert!(Arc::ptr_eq(&m.stats(7, "b"), &s));
        assert_eq!(m.snapshot()[0].export, "b");
        m.retain(|id| id != 7);
        assert!(m.snapshot().is_empty());
    }
}
