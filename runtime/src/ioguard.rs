//! The I/O guard: while the daemon's own engine (`storage`: the NFS gateway, the API's database)
//! uses the array's disk, the containers together get only their weighted share of it.
//!
//! Why: CPU weights protect the daemon's CPU, but on the disk the engines' `io_weight` counts only
//! under BFQ (cgroup v1) — and BFQ costs a fast disk more than it arbitrates
//! (docs/design/engines.md). Under the disk's own scheduler (mq-deadline, none) a container with
//! many direct reads in flight halves a cold NFS read and makes the daemon's fsyncs hundreds of
//! times slower (docs/benchmarks.md, section 3). The guard is a small controller in the spirit of
//! the kernel's io.latency/iocost, built on the hard limits every scheduler enforces:
//!
//! - every `interval` it reads how much `storage` moved on the disk (its cgroup's counters) and how
//!   much the disk moved in all (`/sys/dev/block/M:m/stat`), and keeps the disk's peak rate (a
//!   slowly decaying maximum: the capacity estimate);
//! - `storage` is *busy* when it moved at least `busy_bps` or `busy_iops`; the guard holds from
//!   then until `hold` has passed without it;
//! - while it holds, the containers together may move `peak × share` bytes a second (never less
//!   than `floor_bps`), `share` = the containers' engines' io_weight ÷ (theirs + `storage`'s):
//!   with the built-in weights (1000 against 100) 9 % of the disk;
//! - on cgroup v2 that budget is one `io.max` on the containers' root (hierarchical); v1's
//!   blk-throttle is flat, so it is split among the containers that moved anything in the last
//!   interval and written into each container's cgroup, never above the container's (or its
//!   engine's) own limit; when the guard lets go, every container gets its own limits back.
//!
//! [`Controller`] decides from numbers (unit-tested); the rest reads and writes cgroup files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::resources::{Bytes, Resources};

/// `[io_guard]` in the config file.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub hold: Duration,
    pub busy_bps: u64,
    pub busy_iops: u64,
    pub floor_bps: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_millis(50),
            hold: Duration::from_secs(1),
            busy_bps: 8 << 20,
            busy_iops: 200,
            floor_bps: 16 << 20,
        }
    }
}

impl GuardConfig {
    /// Bounds that keep the controller meaningful; `field` prefixes the message.
    pub fn validate(&self, field: &str) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis();
        if !(10..=10_000).contains(&ms(self.interval)) {
            return Err(format!("{field}.interval_ms: between 10 and 10000"));
        }
        if self.hold < self.interval || ms(self.hold) > 600_000 {
            return Err(format!(
                "{field}.hold_ms: at least interval_ms and at most 600000"
            ));
        }
        if self.busy_bps == 0 && self.busy_iops == 0 {
            return Err(format!(
                "{field}.busy_bps, busy_iops: one of them must be above 0"
            ));
        }
        if self.floor_bps < 1 << 20 {
            return Err(format!("{field}.floor_bps: at least 1m"));
        }
        Ok(())
    }
}

/// Bytes and I/Os (reads + writes) on the array's disk, as a cgroup's or the disk's counters say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes: u64,
    pub ios: u64,
}

/// Half-life of the disk's peak rate: a faster disk shows at once, a slower one within minutes.
const PEAK_HALF_LIFE_SECS: f64 = 600.0;
/// The disk's rate is taken over at least this long: over one short interval a burst of
/// completions looks like a disk several times faster than it is (measured: with 50 ms samples the
/// budget grew and a cold NFS read under deep container I/O kept 74 % instead of 84 %).
const PEAK_WINDOW: Duration = Duration::from_secs(1);

/// The guard's decisions from its samples, free of files.
#[derive(Debug)]
pub struct Controller {
    cfg: GuardConfig,
    peak_bps: f64,
    last_busy: Option<Instant>,
    prev: Option<(Instant, Counters, u64)>,
    /// Start of the current peak window: when, and the disk's bytes then.
    window: Option<(Instant, u64)>,
}

impl Controller {
    pub fn new(cfg: GuardConfig) -> Self {
        Self {
            cfg,
            peak_bps: 0.0,
            last_busy: None,
            prev: None,
            window: None,
        }
    }

    /// The disk's peak rate seen so far (bytes/s, decaying).
    pub fn peak_bps(&self) -> u64 {
        self.peak_bps as u64
    }

    /// One sample of `storage`'s counters and the disk's bytes; returns the containers' budget
    /// (bytes/s, all of them together) while the guard holds, None when it does not. Counters
    /// that go backwards (a cgroup made again) count as no progress.
    pub fn sample(
        &mut self,
        now: Instant,
        storage: Counters,
        disk_bytes: u64,
        share: f64,
    ) -> Option<u64> {
        match self.window {
            None => self.window = Some((now, disk_bytes)),
            Some((w0, b0)) => {
                let span = now.saturating_duration_since(w0);
                if span >= PEAK_WINDOW {
                    let secs = span.as_secs_f64();
                    let rate = disk_bytes.saturating_sub(b0) as f64 / secs;
                    let decay = 0.5f64.powf(secs / PEAK_HALF_LIFE_SECS);
                    self.peak_bps = (self.peak_bps * decay).max(rate);
                    self.window = Some((now, disk_bytes));
                }
            }
        }
        if let Some((t0, s0, _)) = self.prev.replace((now, storage, disk_bytes)) {
            let dt = now.saturating_duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
                let busy = (self.cfg.busy_bps > 0
                    && rate(s0.bytes, storage.bytes) >= self.cfg.busy_bps as f64)
                    || (self.cfg.busy_iops > 0
                        && rate(s0.ios, storage.ios) >= self.cfg.busy_iops as f64);
                if busy {
                    self.last_busy = Some(now);
                }
            }
        }
        let holds = self
            .last_busy
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.hold);
        holds.then(|| ((self.peak_bps * share.clamp(0.0, 1.0)) as u64).max(self.cfg.floor_bps))
    }
}

/// The containers' share of the disk while the guard holds: their engines' I/O weights against
/// `storage`'s (an unset weight is the default, 100).
pub fn share(storage: &Resources, container_engines: &[&Resources]) -> f64 {
    let w = |r: &Resources| r.io_weight.unwrap_or(100) as f64;
    let c: f64 = container_engines.iter().map(|r| w(r)).sum();
    if c == 0.0 {
        return 0.0;
    }
    c / (c + w(storage))
}

/// What one container may read and write a second while the guard holds: its part of the budget,
/// never above its own (or its engine's) limit.
pub fn capped(per_container: u64, own: &Resources) -> (u64, u64) {
    let min = |limit: Option<Bytes>| limit.map_or(per_container, |b| b.0.min(per_container));
    (min(own.read_bps), min(own.write_bps))
}

// ------------------------------------------------------------------------------ kernel files

/// The directory of cgroup `rel` in the hierarchy that throttles block I/O.
pub fn io_dir(root: &Path, rel: &str, v2: bool) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if v2 {
        root.join(rel)
    } else {
        root.join("blkio").join(rel)
    }
}

/// A cgroup's bytes and I/Os on device `dev` (v1: the `_recursive` throttle files; v2: io.stat).
pub fn read_counters(dir: &Path, v2: bool, dev: (u64, u64)) -> Counters {
    let key = format!("{}:{}", dev.0, dev.1);
    if v2 {
        let text = std::fs::read_to_string(dir.join("io.stat")).unwrap_or_default();
        return parse_io_stat(&text, &key);
    }
    let ios = std::fs::read_to_string(dir.join("blkio.throttle.io_serviced_recursive"))
        .unwrap_or_default();
    Counters {
        bytes: moved_bytes_v1(dir, dev),
        ios: parse_v1_throttle(&ios, &key),
    }
}

/// A v1 cgroup's bytes on device `dev` (one file: all the guard needs of each container, every
/// interval while it holds).
fn moved_bytes_v1(dir: &Path, dev: (u64, u64)) -> u64 {
    let text = std::fs::read_to_string(dir.join("blkio.throttle.io_service_bytes_recursive"))
        .unwrap_or_default();
    parse_v1_throttle(&text, &format!("{}:{}", dev.0, dev.1))
}

/// "M:m Read N" + "M:m Write N" of a v1 blkio.throttle file.
fn parse_v1_throttle(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == key && (f[1] == "Read" || f[1] == "Write"))
                .then(|| f[2].parse::<u64>().ok())?
        })
        .sum()
}

/// rbytes+wbytes and rios+wios of the device's line in a v2 io.stat.
fn parse_io_stat(text: &str, key: &str) -> Counters {
    let mut c = Counters::default();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        if f.next() != Some(key) {
            continue;
        }
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" | "wbytes" => c.bytes += v,
                "rios" | "wios" => c.ios += v,
                _ => {}
            }
        }
    }
    c
}

/// Bytes the disk read and wrote since boot (`/sys/dev/block/M:m/stat`: sectors of 512 bytes).
pub fn disk_bytes(dev: (u64, u64)) -> u64 {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{}:{}/stat", dev.0, dev.1))
        .unwrap_or_default();
    parse_disk_stat(&text)
}

fn parse_disk_stat(text: &str) -> u64 {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 7 {
        return 0;
    }
    (f[2] + f[6]) * 512
}

/// Whether a cap of `target` bytes/s needs a write over the `written` one, and what to write.
///
/// The written cap never stays above its target: a lower target is written at once (a cap above
/// the budget would let the containers take more than their share), a higher one only once it is
/// a tenth above (no write each interval while the budget wanders). What is written is the target
/// rounded down to 5 significant bits (steps of at most 1/16), so a budget that decays slowly with
/// the disk's peak costs a write every few percent, not one per interval.
pub fn settle(written: Option<u64>, target: u64) -> Option<u64> {
    let shift = (u64::BITS - target.leading_zeros()).saturating_sub(5);
    let q = (target >> shift) << shift;
    match written {
        Some(w) if q >= w && q <= w + w / 10 => None,
        _ => Some(q),
    }
}

/// Writes a read/write cap on device `dev` into cgroup `dir`; None = no cap (v1 `0`, v2 `max`).
pub fn write_cap(
    dir: &Path,
    v2: bool,
    dev: (u64, u64),
    cap: Option<(u64, u64)>,
) -> std::io::Result<()> {
    let key = format!("{}:{}", dev.0, dev.1);
    if v2 {
        let line = match cap {
            Some((r, w)) => format!("{key} rbps={r} wbps={w}"),
            None => format!("{key} rbps=max wbps=max"),
        };
        return std::fs::write(dir.join("io.max"), line);
    }
    let (r, w) = cap.unwrap_or((0, 0));
    std::fs::write(
        dir.join("blkio.throttle.read_bps_device"),
        format!("{key} {r}"),
    )?;
    std::fs::write(
        dir.join("blkio.throttle.write_bps_device"),
        format!("{key} {w}"),
    )
}

/// A running container as the guard sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub id: String,
    /// Its cgroup path (`/<root>/<engine>/<id>`).
    pub cgroup: String,
    /// Its own I/O limits, or else its engine's: what it has when the guard does not hold.
    pub limits: Resources,
}

/// The running containers, kept up to date by the manager; `generation` grows at each change.
#[derive(Debug, Default)]
pub struct Targets {
    pub generation: u64,
    pub list: Vec<Target>,
    /// The containers' share of the disk against `storage` (see [`share`]).
    pub share: f64,
}

/// Where the guard reads and writes.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// The cgroup hierarchy's mount (/sys/fs/cgroup).
    pub root: PathBuf,
    /// `storage`'s cgroup in the hierarchy that throttles block I/O.
    pub storage: PathBuf,
    /// The containers' root cgroup there (v2 caps them all at once on it).
    pub containers: PathBuf,
}

/// One container in the loop: where it is, what it moved, what the guard wrote.
struct Held {
    dir: PathBuf,
    limits: Resources,
    moved: u64,
    written: Option<(u64, u64)>,
}

/// The guard's loop (its own thread): sample every `interval`, hold or let go. Never returns.
pub fn run(
    cfg: GuardConfig,
    dev: (u64, u64),
    v2: bool,
    dirs: Dirs,
    targets: Arc<Mutex<Targets>>,
    status: Arc<Mutex<GuardStatus>>,
) {
    let mut held: HashMap<String, Held> = HashMap::new();
    let mut generation = None;
    let mut share = 0.0;
    let mut ctl = Controller::new(cfg.clone());
    let mut holding = false;
    let mut written_root: Option<u64> = None;
    let own = |l: &Resources| {
        (
            l.read_bps.map_or(0, |b| b.0),
            l.write_bps.map_or(0, |b| b.0),
        )
    };
    status.lock().expect("lock").running = true;
    let mut first = true;
    let mut next = Instant::now();
    loop {
        next += cfg.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
        let now = Instant::now();
        {
            let t = targets.lock().expect("lock");
            if generation != Some(t.generation) {
                generation = Some(t.generation);
                share = t.share;
                let mut fresh = HashMap::new();
                for x in &t.list {
                    let h = match held.remove(&x.id) {
                        Some(h) if h.limits == x.limits => h,
                        // Its limits changed (a PATCH wrote them): written again if holding.
                        Some(h) => Held {
                            limits: x.limits.clone(),
                            written: None,
                            ..h
                        },
                        None => Held {
                            dir: io_dir(&dirs.root, &x.cgroup, v2),
                            limits: x.limits.clone(),
                            moved: 0,
                            // At the first pass, a cap that a killed daemon may have left is
                            // given back (v1; on v2 the cap is on the root, reset below).
                            written: (first && !v2).then_some((1, 1)),
                        },
                    };
                    fresh.insert(x.id.clone(), h);
                }
                held = fresh;
            }
        }
        let budget = ctl.sample(
            now,
            read_counters(&dirs.storage, v2, dev),
            disk_bytes(dev),
            share,
        );
        match budget {
            Some(b) => {
                if !holding {
                    holding = true;
                    status.lock().expect("lock").engagements += 1;
                }
                if v2 {
                    if let Some(q) = settle(written_root, b) {
                        if write_cap(&dirs.containers, true, dev, Some((q, q))).is_ok() {
                            written_root = Some(q);
                        }
                    }
                } else {
                    // v1 throttles each cgroup on its own: the budget is split among the
                    // containers that moved anything since the last sample.
                    let mut active = 0u64;
                    for h in held.values_mut() {
                        let moved = moved_bytes_v1(&h.dir, dev);
                        if moved > h.moved {
                            active += 1;
                        }
                        h.moved = moved;
                    }
                    let per = b / active.max(1);
                    for h in held.values_mut() {
                        let (r, w) = capped(per, &h.limits);
                        let (was_r, was_w) = h.written.unzip();
                        let (new_r, new_w) = (settle(was_r, r), settle(was_w, w));
                        if new_r.is_none() && new_w.is_none() {
                            continue;
                        }
                        let cap = (new_r.or(was_r).unwrap_or(r), new_w.or(was_w).unwrap_or(w));
                        // A container gone meanwhile fails here; the next refresh drops it.
                        if write_cap(&h.dir, false, dev, Some(cap)).is_ok() {
                            h.written = Some(cap);
                        }
                    }
                }
            }
            None if holding || first => {
                holding = false;
                if v2 {
                    let _ = write_cap(&dirs.containers, true, dev, None);
                    written_root = None;
                }
                for h in held.values_mut() {
                    if h.written.take().is_some() {
                        let _ = write_cap(&h.dir, v2, dev, Some(own(&h.limits)));
                    }
                }
            }
            None => {}
        }
        first = false;
        let mut st = status.lock().expect("lock");
        st.holding = holding;
        st.budget_bps = budget.unwrap_or(0);
        st.peak_bps = ctl.peak_bps();
    }
}

/// The guard's state as `/metrics` shows it.
#[derive(Clone, Debug, Default)]
pub struct GuardStatus {
    /// Whether the guard runs at all (enabled, and the array is on a block device).
    pub running: bool,
    pub holding: bool,
    /// The containers' budget while it holds (bytes/s, all together).
    pub budget_bps: u64,
    pub peak_bps: u64,
    /// How often it took hold since the daemon started.
    pub engagements: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl() -> Controller {
        Controller::new(GuardConfig::default())
    }

    fn c(bytes: u64, ios: u64) -> Counters {
        Counters { bytes, ios }
    }

    #[test]
    fn quiet_storage_leaves_the_containers_alone() {
        let mut g = ctl();
        let t = Instant::now();
        assert_eq!(
            g.sample(t, c(0, 0), 0, 0.1),
            None,
            "the first sample only sets the base"
        );
        // The disk busy with the containers' I/O (2000 MiB/s), storage moving 1 MiB/s: no hold.
        let s = Duration::from_secs(1);
        assert_eq!(g.sample(t + s, c(1 << 20, 50), 2000 << 20, 0.1), None);
        assert_eq!(g.peak_bps(), 2000u64 << 20);
    }

    #[test]
    fn a_burst_within_one_interval_is_not_the_disks_rate() {
        let mut g = ctl();
        let t = Instant::now();
        g.sample(t, c(0, 0), 0, 0.1);
        // 200 MiB completing within 50 ms looks like 4000 MiB/s; over the second, 1000 MiB/s.
        g.sample(t + Duration::from_millis(50), c(0, 0), 200 << 20, 0.1);
        assert_eq!(g.peak_bps(), 0, "no rate before a whole window");
        g.sample(t + Duration::from_secs(1), c(0, 0), 1000 << 20, 0.1);
        assert_eq!(g.peak_bps(), 1000u64 << 20);
    }

    #[test]
    fn busy_storage_holds_the_containers_to_their_share_then_lets_go() {
        let mut g = ctl();
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        g.sample(t, c(0, 0), 0, 0.1);
        // One second: the disk moved 3000 MiB, storage 500 MiB of it.
        let b = g
            .sample(ms(1000), c(500 << 20, 4000), 3000 << 20, 0.1)
            .expect("holds");
        assert_eq!(b, (3000u64 << 20) / 10, "a tenth of the disk's peak");
        // Storage quiet from here: the guard holds for `hold` (1 s) after its last busy sample.
        assert!(g
            .sample(ms(1500), c(500 << 20, 4000), 3100 << 20, 0.1)
            .is_some());
        assert!(g
            .sample(ms(1950), c(500 << 20, 4000), 3200 << 20, 0.1)
            .is_some());
        assert_eq!(
            g.sample(ms(2050), c(500 << 20, 4000), 3300 << 20, 0.1),
            None
        );
        // Busy by I/Os alone (small synchronous writes: 300 a second).
        assert!(g
            .sample(ms(2150), c(500 << 20, 4030), 3301 << 20, 0.1)
            .is_some());
    }

    #[test]
    fn the_budget_never_drops_below_the_floor_and_the_peak_decays() {
        let mut g = ctl();
        let t = Instant::now();
        g.sample(t, c(0, 0), 0, 0.1);
        // A slow disk (10 MiB/s): a tenth of it is below the 16 MiB/s floor.
        let b = g
            .sample(t + Duration::from_secs(1), c(9 << 20, 300), 10 << 20, 0.1)
            .unwrap();
        assert_eq!(b, 16 << 20);
        // Ten minutes later the peak has halved.
        let before = g.peak_bps();
        g.sample(t + Duration::from_secs(601), c(9 << 20, 300), 10 << 20, 0.1);
        let after = g.peak_bps();
        assert!(
            (after as f64 - before as f64 / 2.0).abs() < before as f64 * 0.01,
            "{before} → {after}"
        );
    }

    #[test]
    fn counters_that_go_backwards_are_no_progress() {
        let mut g = ctl();
        let t = Instant::now();
        g.sample(t, c(500 << 20, 9000), 900 << 20, 0.1);
        assert_eq!(
            g.sample(t + Duration::from_millis(100), c(0, 0), 0, 0.1),
            None
        );
    }

    #[test]
    fn shares_follow_the_io_weights() {
        let storage = Resources {
            io_weight: Some(1000),
            ..Default::default()
        };
        let default = Resources::default();
        let heavy = Resources {
            io_weight: Some(500),
            ..Default::default()
        };
        assert!((share(&storage, &[&default]) - 100.0 / 1100.0).abs() < 1e-9);
        assert!((share(&storage, &[&default, &heavy]) - 600.0 / 1600.0).abs() < 1e-9);
        assert_eq!(share(&storage, &[]), 0.0);
        let own = Resources {
            read_bps: Some(Bytes(5 << 20)),
            ..Default::default()
        };
        assert_eq!(capped(64 << 20, &own), (5 << 20, 64 << 20));
    }

    #[test]
    fn a_written_cap_never_stays_above_its_target() {
        // The first write rounds down, never up.
        let first = settle(None, 25_128_338).unwrap();
        assert!((25_128_338 - 25_128_338 / 16..=25_128_338).contains(&first));
        // The budget decays a little below what was written: written again at once.
        let lower = settle(Some(first), first - 1).unwrap();
        assert!(lower < first);
        // A little above: nothing to write (no write each interval as the budget wanders)...
        assert_eq!(settle(Some(first), first + first / 20), None);
        assert_eq!(settle(Some(first), first), None);
        // ...a tenth above: written.
        assert!(settle(Some(first), first * 2).unwrap() > first);
        // A decay of the peak over many samples costs a write every few percent.
        let (mut w, mut writes) = (None, 0);
        let mut b = 100_000_000f64;
        for _ in 0..1000 {
            b *= 0.99995;
            if let Some(q) = settle(w, b as u64) {
                assert!(q <= b as u64);
                w = Some(q);
                writes += 1;
            }
            assert!(w.unwrap() <= b as u64);
        }
        assert!(writes <= 3, "{writes} writes for a 5 % decay");
        // Small values are exact.
        assert_eq!(settle(None, 17), Some(17));
    }

    #[test]
    fn kernel_files_are_parsed() {
        let v1 = "254:0 Read 1000\n254:0 Write 24\n254:0 Sync 1024\n254:0 Total 1024\n8:0 Read 7\nTotal 1031\n";
        assert_eq!(parse_v1_throttle(v1, "254:0"), 1024);
        let v2 = "8:0 rbytes=5 wbytes=6 rios=1 wios=1 dbytes=0 dios=0\n254:0 rbytes=4096 wbytes=8192 rios=2 wios=3 dbytes=0 dios=0\n";
        assert_eq!(parse_io_stat(v2, "254:0"), c(12288, 5));
        let stat = " 9978388  1802289 9589757650 13559020  7505123  3732269 784873880  5189596        0  3251628 19500341";
        assert_eq!(parse_disk_stat(stat), (9589757650 + 784873880) * 512);
        assert_eq!(parse_disk_stat(""), 0);
    }

    #[test]
    fn config_bounds() {
        assert!(GuardConfig::default().validate("io_guard").is_ok());
        let bad = GuardConfig {
            interval: Duration::from_millis(5),
            ..Default::default()
        };
        assert!(bad
            .validate("io_guard")
            .unwrap_err()
            .starts_with("io_guard.interval_ms"));
        let bad = GuardConfig {
            busy_bps: 0,
            busy_iops: 0,
            ..Default::default()
        };
        assert!(bad.validate("io_guard").is_err());
    }
}
