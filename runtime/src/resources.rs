//! Resource limits, shared by engines and containers, and their translation to cgroup settings.
//!
//! One shape for both: an engine's limits cap everything in it; a container's limits (a nested
//! cgroup inside its engine) may only be tighter. Sizes are bytes, given as numbers or as strings
//! with a binary suffix ("512m", "2g").

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

/// A byte count; deserializes from `1048576` or `"1m"` (k, m, g, t: powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "123", "64k", "512m", "2g", "1t" (case-insensitive, optional trailing "b"/"ib").
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512m or 2g"))?;
    if !n.is_finite() || n < 0.0 || n * mult as f64 > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((n * mult as f64) as u64)
}

/// Limits of an engine or a container. Absent means "not limited here".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// Soft guarantee: memory the kernel reclaims from others first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<Bytes>,
    /// CPU quota in CPUs (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Relative CPU share, 1..=10000 (cgroup v2 weight; 100 is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// CPUs it may run on, e.g. "0-1" or "0,2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// Relative block-I/O share, 10..=1000 (100 is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u16>,
    /// Limits on the array's block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
}

/// The most pids a cgroup can be limited to: the kernel's PID_MAX_LIMIT on 64-bit (a larger
/// `pids.max` is refused with EINVAL; leave `pids` out for no limit).
pub const PID_MAX_LIMIT: i64 = 4 << 20;

/// The smallest memory limit we accept: below it, a runtime cannot even start a process.
pub const MIN_MEMORY: u64 = 4 << 20;

impl Resources {
    /// Checks ranges; `field` prefixes every message ("resources", "engines[default]"...).
    pub fn validate(&self, field: &str) -> Result<(), String> {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        if let Some(Bytes(m)) = self.memory {
            if m < MIN_MEMORY {
                return Err(format!(
                    "{field}.memory: {m} bytes is below the minimum of 4 MiB"
                ));
            }
        }
        if let (Some(Bytes(r)), Some(Bytes(m))) = (self.memory_reservation, self.memory) {
            if r > m {
                return Err(format!(
                    "{field}.memory_reservation: {r} is above memory {m}"
                ));
            }
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c >= 0.01 && c <= nproc) {
                return Err(format!(
                    "{field}.cpus: {c} must be between 0.01 and the node's {nproc} CPUs"
                ));
            }
        }
        if let Some(w) = self.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(format!(
                    "{field}.cpu_weight: {w} must be between 1 and 10000"
                ));
            }
        }
        if let Some(s) = &self.cpuset {
            parse_cpuset(s, nproc as usize).map_err(|e| format!("{field}.cpuset: {e}"))?;
        }
        if let Some(p) = self.pids {
            if !(1..=PID_MAX_LIMIT).contains(&p) {
                return Err(format!(
                    "{field}.pids: {p} must be between 1 and {PID_MAX_LIMIT} (the kernel's limit)"
                ));
            }
        }
        if let Some(w) = self.io_weight {
            if !(10..=1000).contains(&w) {
                return Err(format!(
                    "{field}.io_weight: {w} must be between 10 and 1000"
                ));
            }
        }
        for (name, v) in [
            ("read_bps", self.read_bps.map(|b| b.0)),
            ("write_bps", self.write_bps.map(|b| b.0)),
            ("read_iops", self.read_iops),
            ("write_iops", self.write_iops),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "{field}.{name}: must be above 0 (leave it out for no limit)"
                ));
            }
        }
        Ok(())
    }

    /// The hard caps set (as opposed to shares, reservation and cpuset): memory, cpus, pids and
    /// the block-device limits, by field name.
    pub fn hard_caps(&self) -> Vec<&'static str> {
        [
            ("memory", self.memory.is_some()),
            ("cpus", self.cpus.is_some()),
            ("pids", self.pids.is_some()),
            ("read_bps", self.read_bps.is_some()),
            ("write_bps", self.write_bps.is_some()),
            ("read_iops", self.read_iops.is_some()),
            ("write_iops", self.write_iops.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect()
    }

    /// Where `self` (a container's limits) asks for more than `outer` (its engine's) allows:
    /// the first excess, described, or None.
    pub fn excess_over(&self, outer: &Resources) -> Option<String> {
        fn over<T: PartialOrd + std::fmt::Display>(
            name: &str,
            inner: Option<T>,
            outer: Option<T>,
        ) -> Option<String> {
            match (inner, outer) {
                (Some(i), Some(o)) if i > o => {
                    Some(format!("{name} {i} is above the engine's {o}"))
                }
                _ => None,
            }
        }
        over(
            "memory",
            self.memory.map(|b| b.0),
            outer.memory.map(|b| b.0),
        )
        .or_else(|| {
            over(
                "memory_reservation",
                self.memory_reservation.map(|b| b.0),
                outer.memory.map(|b| b.0),
            )
        })
        .or_else(|| over("cpus", self.cpus, outer.cpus))
        .or_else(|| over("pids", self.pids, outer.pids))
        .or_else(|| {
            over(
                "read_bps",
                self.read_bps.map(|b| b.0),
                outer.read_bps.map(|b| b.0),
            )
        })
        .or_else(|| {
            over(
                "write_bps",
                self.write_bps.map(|b| b.0),
                outer.write_bps.map(|b| b.0),
            )
        })
        .or_else(|| over("read_iops", self.read_iops, outer.read_iops))
        .or_else(|| over("write_iops", self.write_iops, outer.write_iops))
        .or_else(|| match (&self.cpuset, &outer.cpuset) {
            (Some(i), Some(o)) => {
                let n = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1);
                let (i, o) = (parse_cpuset(i, n).ok()?, parse_cpuset(o, n).ok()?);
                (!i.iter().all(|c| o.contains(c)))
                    .then(|| "cpuset is not within the engine's".to_owned())
            }
            _ => None,
        })
    }

    /// Overlays `patch` on `self`: fields present in the patch replace ours.
    pub fn merged(&self, patch: &Resources) -> Resources {
        Resources {
            memory: patch.memory.or(self.memory),
            memory_reservation: patch.memory_reservation.or(self.memory_reservation),
            cpus: patch.cpus.or(self.cpus),
            cpu_weight: patch.cpu_weight.or(self.cpu_weight),
            cpuset: patch.cpuset.clone().or_else(|| self.cpuset.clone()),
            pids: patch.pids.or(self.pids),
            io_weight: patch.io_weight.or(self.io_weight),
            read_bps: patch.read_bps.or(self.read_bps),
            write_bps: patch.write_bps.or(self.write_bps),
            read_iops: patch.read_iops.or(self.read_iops),
            write_iops: patch.write_iops.or(self.write_iops),
        }
    }

    /// The OCI `linux.resources` object for these limits; `device` is the array's block device
    /// (major, minor), needed for the per-device I/O limits. On cgroup v2 the CPU weight is
    /// written as is (`unified`), on v1 it becomes shares (weight 100 = the default 1024 shares).
    pub fn to_oci(&self, device: Option<(u64, u64)>, v2: bool) -> Value {
        let mut r = Map::new();
        let mut mem = Map::new();
        if let Some(Bytes(m)) = self.memory {
            mem.insert("limit".into(), json!(m));
        }
        if let Some(Bytes(m)) = self.memory_reservation {
            mem.insert("reservation".into(), json!(m));
        }
        if !mem.is_empty() {
            r.insert("memory".into(), Value::Object(mem));
        }
        let mut cpu = Map::new();
        if let Some(c) = self.cpus {
            cpu.insert("period".into(), json!(CPU_PERIOD));
            cpu.insert(
                "quota".into(),
                json!(((c * CPU_PERIOD as f64).round() as i64).max(1000)),
            );
        }
        if let (Some(w), false) = (self.cpu_weight, v2) {
            cpu.insert("shares".into(), json!(weight_to_shares(w)));
        }
        if let Some(s) = &self.cpuset {
            cpu.insert("cpus".into(), json!(s));
        }
        if !cpu.is_empty() {
            r.insert("cpu".into(), Value::Object(cpu));
        }
        if let Some(p) = self.pids {
            r.insert("pids".into(), json!({"limit": p}));
        }
        let mut bio = Map::new();
        if let Some(w) = self.io_weight {
            bio.insert("weight".into(), json!(w));
        }
        if let Some((major, minor)) = device {
            for (key, rate) in [
                ("throttleReadBpsDevice", self.read_bps.map(|b| b.0)),
                ("throttleWriteBpsDevice", self.write_bps.map(|b| b.0)),
                ("throttleReadIOPSDevice", self.read_iops),
                ("throttleWriteIOPSDevice", self.write_iops),
            ] {
                if let Some(rate) = rate {
                    bio.insert(
                        key.into(),
                        json!([{"major": major, "minor": minor, "rate": rate}]),
                    );
                }
            }
        }
        if !bio.is_empty() {
            r.insert("blockIO".into(), Value::Object(bio));
        }
        if let (Some(w), true) = (self.cpu_weight, v2) {
            r.insert("unified".into(), json!({"cpu.weight": w.to_string()}));
        }
        Value::Object(r)
    }

    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// Only the per-device I/O limits, each the container's own or else its engine's. For cgroup
    /// v1, whose block-I/O throttling is flat (the kernel ignores a parent's throttle for the
    /// cgroups below it; v2's io.max is hierarchical): there the engine's limits are written into
    /// every container's own cgroup, so each container is held to them.
    pub fn io_limits_within(&self, engine: &Resources) -> Resources {
        Resources {
            read_bps: self.read_bps.or(engine.read_bps),
            write_bps: self.write_bps.or(engine.write_bps),
            read_iops: self.read_iops.or(engine.read_iops),
            write_iops: self.write_iops.or(engine.write_iops),
            ..Default::default()
        }
    }

    /// Whether any per-device I/O limit is set.
    pub fn has_io_limits(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

/// The fields of [`Resources`] and [`ResourcesUpdate`], and [`Limit`], from one list.
macro_rules! limits {
    ($($field:ident: $ty:ty => $variant:ident),* $(,)?) => {
        /// One limit of [`Resources`], by its field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Limit {
            $($variant),*
        }

        impl Limit {
            /// The field's name in requests.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($field)),*
                }
            }
        }

        /// A change of limits (the body of a `PATCH`): a field left out stays as it is, `null`
        /// removes that limit (its cgroup is set back to unlimited, a share to the kernel's
        /// default), a value replaces it.
        #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ResourcesUpdate {
            $(
                #[serde(default, deserialize_with = "present")]
                pub $field: Option<Option<$ty>>,
            )*
        }

        impl ResourcesUpdate {
            /// The values it sets (no field it removes or leaves alone).
            pub fn values(&self) -> Resources {
                Resources {
                    $($field: self.$field.clone().flatten(),)*
                }
            }

            /// The limits it removes.
            pub fn cleared(&self) -> Vec<Limit> {
                let mut out = Vec::new();
                $(
                    if matches!(self.$field, Some(None)) {
                        out.push(Limit::$variant);
                    }
                )*
                out
            }

            /// `current` with this change made.
            pub fn applied_to(&self, current: &Resources) -> Resources {
                Resources {
                    $($field: match &self.$field {
                        Some(v) => v.clone(),
                        None => current.$field.clone(),
                    },)*
                }
            }
        }

        impl Resources {
            /// Whether `limit` is set.
            pub fn has(&self, limit: Limit) -> bool {
                match limit {
                    $(Limit::$variant => self.$field.is_some()),*
                }
            }
        }
    };
}

limits! {
    memory: Bytes => Memory,
    memory_reservation: Bytes => MemoryReservation,
    cpus: f64 => Cpus,
    cpu_weight: u64 => CpuWeight,
    cpuset: String => Cpuset,
    pids: i64 => Pids,
    io_weight: u16 => IoWeight,
    read_bps: Bytes => ReadBps,
    write_bps: Bytes => WriteBps,
    read_iops: u64 => ReadIops,
    write_iops: u64 => WriteIops,
}

impl Limit {
    /// A per-device I/O limit (on cgroup v1 a container's cgroup carries its engine's).
    pub fn is_io(self) -> bool {
        matches!(
            self,
            Self::ReadBps | Self::WriteBps | Self::ReadIops | Self::WriteIops
        )
    }
}

/// `null` → `Some(None)`, a value → `Some(Some(v))`; a field left out is `None` (the default).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub const CPU_PERIOD: u64 = 100_000;

/// cgroup v2 weight (1..10000, default 100) → v1 shares (default 1024), proportionally, so that
/// an unset weight and weight 100 mean the same on both hierarchies.
pub fn weight_to_shares(w: u64) -> u64 {
    (w.clamp(1, 10_000) * 1024 / 100).clamp(2, 262_144)
}

/// Parses "0-3,5" into CPU numbers, all below `n`.
pub fn parse_cpuset(s: &str, n: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (a, b): (usize, usize) = (
            a.trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a CPU list like 0-1,3"))?,
            b.trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a CPU list like 0-1,3"))?,
        );
        if a > b || b >= n {
            return Err(format!(
                "{s:?} names CPUs the node does not have (it has {n})"
            ));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1m").is_err());
        let r: Resources = serde_json::from_str(r#"{"memory":"64m","pids":10}"#).unwrap();
        assert_eq!(r.memory, Some(Bytes(64 << 20)));
        assert!(serde_json::from_str::<Resources>(r#"{"memroy":"64m"}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (r#"{"memory":1024}"#, "resources.memory"),
            (
                r#"{"memory":"64m","memory_reservation":"128m"}"#,
                "resources.memory_reservation",
            ),
            (r#"{"cpus":0}"#, "resources.cpus"),
            (r#"{"cpus":100000}"#, "resources.cpus"),
            (r#"{"cpu_weight":0}"#, "resources.cpu_weight"),
            (r#"{"pids":0}"#, "resources.pids"),
            // Above PID_MAX_LIMIT the kernel refuses pids.max (EINVAL): was a 500 (found by
            // the conformance run).
            (r#"{"pids":10289152}"#, "resources.pids"),
            (r#"{"io_weight":5}"#, "resources.io_weight"),
            (r#"{"cpuset":"0-99"}"#, "resources.cpuset"),
            (r#"{"cpuset":"x"}"#, "resources.cpuset"),
            (r#"{"read_bps":0}"#, "resources.read_bps"),
        ];
        for (json, field) in bad {
            let r: Resources = serde_json::from_str(json).unwrap();
            let e = r.validate("resources").unwrap_err();
            assert!(e.starts_with(field), "{json}: {e}");
        }
        let ok: Resources = serde_json::from_str(r#"{"memory":"64m","cpus":0.5,"cpu_weight":200,"cpuset":"0","pids":50,"io_weight":500,"read_bps":"10m"}"#).unwrap();
        ok.validate("resources").unwrap();
        let most: Resources = serde_json::from_str(r#"{"pids":4194304}"#).unwrap();
        most.validate("resources").unwrap();
    }

    #[test]
    fn an_update_leaves_out_removes_with_null_and_replaces() {
        let current: Resources =
            serde_json::from_str(r#"{"memory":"1g","pids":100,"cpus":1,"read_bps":"10m"}"#)
                .unwrap();
        let u: ResourcesUpdate =
            serde_json::from_str(r#"{"memory":null,"pids":50,"read_bps":null}"#).unwrap();
        assert_eq!(u.cleared(), vec![Limit::Memory, Limit::ReadBps]);
        assert_eq!(
            u.values(),
            Resources {
                pids: Some(50),
                ..Default::default()
            }
        );
        let after = u.applied_to(&current);
        assert_eq!(
            (after.memory, after.pids, after.cpus, after.read_bps),
            (None, Some(50), Some(1.0), None)
        );
        assert!(after.has(Limit::Cpus) && !after.has(Limit::Memory));
        assert_eq!(
            ResourcesUpdate::default().applied_to(&current),
            current,
            "an empty update changes nothing"
        );
        assert!(serde_json::from_str::<ResourcesUpdate>(r#"{"memroy":null}"#).is_err());
        assert!(serde_json::from_str::<ResourcesUpdate>(r#"{"memory":"lots"}"#).is_err());
        assert_eq!(Limit::MemoryReservation.as_str(), "memory_reservation");
        assert!(Limit::WriteIops.is_io() && !Limit::IoWeight.is_io());
    }

    #[test]
    fn containers_stay_within_their_engine() {
        let engine: Resources = serde_json::from_str(
            r#"{"memory":"1g","cpus":1,"pids":100,"read_bps":"50m","cpuset":"0"}"#,
        )
        .unwrap();
        let fits: Resources =
            serde_json::from_str(r#"{"memory":"512m","cpus":0.5,"pids":10,"cpuset":"0"}"#).unwrap();
        assert_eq!(fits.excess_over(&engine), None);
        for (json, what) in [
            (r#"{"memory":"2g"}"#, "memory"),
            (r#"{"cpus":1.5}"#, "cpus"),
            (r#"{"pids":101}"#, "pids"),
            (r#"{"read_bps":"60m"}"#, "read_bps"),
        ] {
            let r: Resources = serde_json::from_str(json).unwrap();
            assert!(r.excess_over(&engine).unwrap().starts_with(what), "{json}");
        }
        assert_eq!(
            fits.excess_over(&Resources::default()),
            None,
            "an unlimited engine takes anything"
        );
    }

    #[test]
    fn io_limits_fall_back_to_the_engines() {
        let engine: Resources =
            serde_json::from_str(r#"{"memory":"1g","read_bps":"10m","write_iops":100}"#).unwrap();
        let own: Resources = serde_json::from_str(r#"{"read_bps":"2m","cpus":0.5}"#).unwrap();
        let io = own.io_limits_within(&engine);
        assert_eq!(
            io.read_bps,
            Some(Bytes(2 << 20)),
            "the container's own, tighter"
        );
        assert_eq!(io.write_iops, Some(100), "the engine's where it has none");
        assert_eq!((io.write_bps, io.read_iops), (None, None));
        assert_eq!((io.memory, io.cpus), (None, None), "I/O limits only");
    }

    #[test]
    fn oci_translation() {
        let r: Resources = serde_json::from_str(r#"{"memory":"64m","memory_reservation":"32m","cpus":0.5,"cpu_weight":100,"pids":20,"io_weight":300,"read_bps":"1m","write_iops":50}"#).unwrap();
        let v = r.to_oci(Some((254, 0)), false);
        assert_eq!(v["memory"]["limit"], 64 << 20);
        assert_eq!(v["memory"]["reservation"], 32 << 20);
        assert_eq!(v["cpu"]["quota"], 50_000);
        assert_eq!(v["cpu"]["period"], 100_000);
        assert_eq!(v["cpu"]["shares"], 1024);
        assert_eq!(v["pids"]["limit"], 20);
        assert_eq!(v["blockIO"]["weight"], 300);
        assert_eq!(v["blockIO"]["throttleReadBpsDevice"][0]["rate"], 1 << 20);
        assert_eq!(v["blockIO"]["throttleWriteIOPSDevice"][0]["major"], 254);
        let parsed: oci_spec::runtime::LinuxResources = serde_json::from_value(v).unwrap();
        assert!(parsed.memory().is_some());
        assert_eq!(Resources::default().to_oci(None, false), json!({}));
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
        let v2 = r.to_oci(None, true);
        assert_eq!(v2["unified"]["cpu.weight"], "100");
        assert!(v2["cpu"].get("shares").is_none());
        assert!(
            v2["blockIO"].get("throttleReadBpsDevice").is_none(),
            "no device, no throttles"
        );
    }
}
