//! IO engines: named cgroup subtrees that split the node's CPU, memory, I/O and pids.
//!
//! Layout ([`CgroupLayout`], root `inarray` unless `cgroup_root` says otherwise):
//! `/inarray/<engine>` for each containers' engine, `/inarray/<engine>/<container-id>` for each
//! container (a nested cgroup, so a container's limits can only be tighter than its engine's), and
//! `/inarray-storage` for the built-in `storage` engine, which holds the daemon itself (API, NFS
//! gateway, shims) with a large protected share — at the top of the hierarchy, beside `/inarray`,
//! not inside it. `default` is where containers go unless they say otherwise.
//!
//! cgroup writes go through [`CgroupDriver`], the seam: [`LibcgroupsDriver`] uses youki's
//! libcgroups (already linked for the runtime; v1, v2 and hybrid), and the v2 writes are unit
//! tested against a directory tree standing in for /sys/fs/cgroup.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use serde::{Deserialize, Serialize};

pub use crate::recording::RecordingDriver;
use crate::resources::{Bytes, Limit, Resources};

pub const STORAGE: &str = "storage";
pub const DEFAULT: &str = "default";
/// The cgroup that holds the containers' engines unless the config names another
/// (`cgroup_root`); `storage` is its sibling `<root>-storage`.
pub const DEFAULT_CGROUP_ROOT: &str = "inarray";

/// Where one daemon's engines and containers live in the cgroup hierarchies.
///
/// `/<root>/<engine>/<container>` for the engines containers run in, and `/<root>-storage` for
/// `storage`, the daemon's own engine: a sibling of `/<root>` at the top of the hierarchy. Why
/// there: a cgroup's weight only divides its parent's time among the parent's children. Inside
/// `/<root>`, `storage` would win against the containers' engines only once `/<root>` as a whole
/// had been picked against everything else on the node, and with busy containers `/<root>` has
/// always used its share — every wakeup of the daemon then waits for a scheduler tick
/// (docs/design/engines.md, docs/benchmarks.md). At the top, its weight counts against the whole
/// node. Each daemon on a machine has its own root, so two never share an engine's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    root: String,
}

impl Default for CgroupLayout {
    fn default() -> Self {
        Self {
            root: DEFAULT_CGROUP_ROOT.to_owned(),
        }
    }
}

impl CgroupLayout {
    /// `root`: [`inarray_store::names::CGROUP_ROOT`] (one path component).
    pub fn new(root: &str) -> Result<Self, String> {
        inarray_store::names::CGROUP_ROOT
            .check(root)
            .map_err(|reason| format!("cgroup_root: {reason}"))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The parent of the containers' engines, e.g. `inarray`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The cgroup path of an engine.
    pub fn engine(&self, engine: &str) -> String {
        if engine == STORAGE {
            format!("/{}-{STORAGE}", self.root)
        } else {
            format!("/{}/{engine}", self.root)
        }
    }

    /// The cgroup path of a container in an engine (never `storage`: containers are refused there).
    pub fn container(&self, engine: &str, id: &str) -> String {
        format!("/{}/{engine}/{id}", self.root)
    }
}

/// An engine as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineDef {
    pub name: String,
    #[serde(default)]
    pub resources: Resources,
}

/// The built-in engines and their defaults: `storage` gets ten times the CPU and I/O share of a
/// default engine and a memory reservation, so containers can never starve the daemon or NFS.
pub fn builtin() -> Vec<EngineDef> {
    vec![
        EngineDef {
            name: STORAGE.into(),
            resources: Resources {
                cpu_weight: Some(1000),
                io_weight: Some(1000),
                memory_reservation: Some(Bytes(512 << 20)),
                ..Default::default()
            },
        },
        EngineDef {
            name: DEFAULT.into(),
            resources: Resources::default(),
        },
    ]
}

/// Checks an engine's limits (`field` names them in messages: "resources", "engines.NAME").
/// `storage` holds the daemon and the NFS gateway themselves: it takes shares (cpu_weight,
/// io_weight), memory_reservation and cpuset, never a hard cap — a `write_bps` of a few KB/s or a
/// small `pids` on it would throttle the service it protects (the daemon's own database writes
/// stalled for seconds when the conformance run set one).
pub fn validate_engine(name: &str, r: &Resources, field: &str) -> Result<(), String> {
    r.validate(field)?;
    if name == STORAGE {
        if let Some(cap) = r.hard_caps().first() {
            return Err(format!(
                "{field}.{cap}: the storage engine holds the daemon and the NFS gateway; it takes \
                 shares (cpu_weight, io_weight), memory_reservation and cpuset, not hard caps"
            ));
        }
    }
    Ok(())
}

pub fn is_builtin(name: &str) -> bool {
    name == STORAGE || name == DEFAULT
}

/// Engine names: [`inarray_store::names::ENGINE`]; the error starts with `name: `.
pub fn validate_name(name: &str) -> Result<(), String> {
    inarray_store::names::ENGINE
        .check(name)
        .map_err(|reason| format!("name: {reason}"))
}

/// Usage figures of one cgroup (an engine or a container).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
    pub io: IoUsage,
    pub pids: PidsUsage,
    /// A container on a bridge network: its interfaces' traffic (not for engines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryUsage {
    pub current: u64,
    pub peak: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
    pub failcnt: u64,
    pub oom_kills: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IoUsage {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PidsUsage {
    pub current: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
}

/// The seam between engines and the kernel's cgroup files.
pub trait CgroupDriver: Send + Sync {
    /// Creates the cgroup (in every hierarchy) if needed and applies `resources` to it.
    fn apply(&self, path: &str, resources: &Resources) -> Result<(), String>;
    /// Sets `limits` of the cgroup back to none (unlimited, or the kernel's default share).
    fn clear(&self, path: &str, limits: &[Limit]) -> Result<(), String>;
    /// Moves a whole process into the cgroup.
    fn add_process(&self, path: &str, pid: i32) -> Result<(), String>;
    fn usage(&self, path: &str) -> Result<Usage, String>;
    fn is_v2(&self) -> bool;
    /// The array's block device (major, minor), which per-device I/O limits apply to.
    fn device(&self) -> Option<(u64, u64)>;
    /// Where the hierarchies are mounted (the I/O guard reads and writes blk-throttle files there).
    fn mount_root(&self) -> &Path;
    /// Whether any hierarchy has the cgroup `path`.
    fn exists(&self, path: &str) -> bool;
    /// Kills whatever is left in the cgroup `path` and removes it from every hierarchy.
    fn remove(&self, path: &str) -> std::io::Result<()>;
    /// Removes the cgroup `path` where it is empty; leaves it where it is not.
    fn remove_if_empty(&self, path: &str);
    /// Kills and removes container `id`'s cgroups below `parent`, whichever engine they are in.
    fn remove_container(&self, parent: &str, id: &str) -> std::io::Result<()>;
    /// The processes in the cgroup `path` and below it (host pids).
    fn pids(&self, path: &str) -> Result<Vec<i32>, String>;
}

/// The real driver: youki's libcgroups over the mounted hierarchies.
pub struct LibcgroupsDriver {
    root: PathBuf,
    v2: bool,
    /// The array's block device (major, minor), for per-device I/O limits.
    device: Option<(u64, u64)>,
}

impl LibcgroupsDriver {
    /// Detects the hierarchy under `root` (normally /sys/fs/cgroup). `array` locates the block
    /// device I/O limits apply to.
    pub fn new(root: &Path, array: &Path) -> Result<Self, String> {
        let setup = libcgroups::common::get_cgroup_setup_with_root(root).map_err(|e| {
            format!(
                "cannot detect the cgroup hierarchy at {}: {e}",
                root.display()
            )
        })?;
        let v2 = matches!(setup, libcgroups::common::CgroupSetup::Unified);
        debug_assert_eq!(v2, crate::cgroups::is_v2(root));
        Ok(Self {
            root: root.to_owned(),
            v2,
            device: block_device_of(array),
        })
    }

    fn manager(&self, path: &str) -> Result<Box<dyn CgroupManager<Error = String>>, String> {
        let rel = Path::new(path.trim_start_matches('/'));
        if self.v2 {
            let m = libcgroups::v2::manager::Manager::new(self.root.clone(), rel.to_owned())
                .map_err(|e| format!("cgroup {path}: {e}"))?;
            Ok(Box::new(Stringly(m)))
        } else {
            let m = libcgroups::v1::manager::Manager::new(Path::new(path))
                .map_err(|e| format!("cgroup {path}: {e}"))?;
            Ok(Box::new(Stringly(m)))
        }
    }

    /// Creates the cgroup's directory in every hierarchy so that usage can always be read; a new
    /// v1 cpuset directory gets its parent's CPUs and memory nodes (the kernel leaves them empty).
    fn ensure_dirs(&self, path: &str) -> Result<(), String> {
        let rel = path.trim_start_matches('/');
        let roots: Vec<PathBuf> = if self.v2 {
            vec![self.root.clone()]
        } else {
            std::fs::read_dir(&self.root)
                .map_err(|e| format!("{}: {e}", self.root.display()))?
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n != "unified"))
                .collect()
        };
        for hroot in roots {
            let mut cur = hroot.clone();
            for comp in Path::new(rel).components() {
                let parent = cur.clone();
                cur.push(comp);
                if cur.exists() {
                    continue;
                }
                std::fs::create_dir(&cur)
                    .map_err(|e| format!("cannot create cgroup {}: {e}", cur.display()))?;
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if cur.join(f).exists() && !self.v2 {
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        std::fs::write(cur.join(f), v.trim())
                            .map_err(|e| format!("cannot set {}: {e}", cur.join(f).display()))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// libcgroups managers with their errors as strings, so v1 and v2 fit one trait object.
struct Stringly<M>(M);

impl<M: CgroupManager> CgroupManager for Stringly<M>
where
    M::Error: std::fmt::Display,
{
    type Error = String;
    fn add_task(&self, pid: nix::unistd::Pid) -> Result<(), String> {
        self.0.add_task(pid).map_err(|e| e.to_string())
    }
    fn apply(&self, o: &ControllerOpt) -> Result<(), String> {
        self.0.apply(o).map_err(|e| e.to_string())
    }
    fn remove(&self) -> Result<(), String> {
        self.0.remove().map_err(|e| e.to_string())
    }
    fn freeze(&self, s: libcgroups::common::FreezerState) -> Result<(), String> {
        self.0.freeze(s).map_err(|e| e.to_string())
    }
    fn stats(&self) -> Result<libcgroups::stats::Stats, String> {
        self.0.stats().map_err(|e| e.to_string())
    }
    fn get_all_pids(&self) -> Result<Vec<nix::unistd::Pid>, String> {
        self.0.get_all_pids().map_err(|e| e.to_string())
    }
}

impl CgroupDriver for LibcgroupsDriver {
    fn apply(&self, path: &str, resources: &Resources) -> Result<(), String> {
        self.ensure_dirs(path)?;
        let oci = resources.to_oci(self.device, self.v2);
        let linux: oci_spec::runtime::LinuxResources =
            serde_json::from_value(oci).map_err(|e| format!("resources: {e}"))?;
        let opt = ControllerOpt {
            resources: &linux,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager(path)?
            .apply(&opt)
            .map_err(|e| format!("cannot apply limits to cgroup {path}: {e}"))
    }

    fn clear(&self, path: &str, limits: &[Limit]) -> Result<(), String> {
        crate::cgroups::clear_limits(&self.root, self.v2, path, limits, self.device)
    }

    fn add_process(&self, path: &str, pid: i32) -> Result<(), String> {
        self.ensure_dirs(path)?;
        self.manager(path)?
            .add_task(nix::unistd::Pid::from_raw(pid))
            .map_err(|e| format!("cannot move process {pid} into cgroup {path}: {e}"))
    }

    fn pids(&self, path: &str) -> Result<Vec<i32>, String> {
        Ok(self
            .manager(path)?
            .get_all_pids()?
            .into_iter()
            .map(|p| p.as_raw())
            .collect())
    }

    fn usage(&self, path: &str) -> Result<Usage, String> {
        let s = self.manager(path)?.stats()?;
        let sum = |v: &[libcgroups::stats::BlkioDeviceStat], op: &str| -> u64 {
            v.iter()
                .filter(|d| {
                    d.op_type
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(op))
                })
                .map(|d| d.value)
                .sum()
        };
        let unlimited = |l: u64| (l != 0 && l < (1 << 62)).then_some(l);
        Ok(Usage {
            cpu: CpuUsage {
                usage_ns: s.cpu.usage.usage_total,
                user_ns: s.cpu.usage.usage_user,
                system_ns: s.cpu.usage.usage_kernel,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_ns: s.cpu.throttling.throttled_time,
            },
            memory: MemoryUsage {
                current: s.memory.memory.usage,
                peak: s.memory.memory.max_usage,
                limit: unlimited(s.memory.memory.limit),
                failcnt: s.memory.memory.fail_count,
                oom_kills: crate::cgroups::oom_kills(&self.root, path).unwrap_or(0),
            },
            io: if self.v2 {
                // io.stat is hierarchical: an engine's figures include its containers'.
                IoUsage {
                    read_bytes: sum(&s.blkio.service_bytes, "read"),
                    write_bytes: sum(&s.blkio.service_bytes, "write"),
                    read_ops: sum(&s.blkio.serviced, "read"),
                    write_ops: sum(&s.blkio.serviced, "write"),
                }
            } else {
                // libcgroups reads v1's non-recursive files, which leave out the child cgroups:
                // an engine's I/O is all in its containers.
                let dir = self.root.join("blkio").join(path.trim_start_matches('/'));
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                let (read_bytes, write_bytes) =
                    v1_blkio_totals(&read("blkio.throttle.io_service_bytes_recursive"));
                let (read_ops, write_ops) =
                    v1_blkio_totals(&read("blkio.throttle.io_serviced_recursive"));
                IoUsage {
                    read_bytes,
                    write_bytes,
                    read_ops,
                    write_ops,
                }
            },
            pids: PidsUsage {
                current: s.pids.current,
                limit: unlimited(s.pids.limit),
            },
            network: None,
        })
    }

    fn is_v2(&self) -> bool {
        self.v2
    }

    fn device(&self) -> Option<(u64, u64)> {
        self.device
    }

    fn mount_root(&self) -> &Path {
        &self.root
    }

    fn exists(&self, path: &str) -> bool {
        crate::cgroups::exists(&self.root, path)
    }

    fn remove(&self, path: &str) -> std::io::Result<()> {
        crate::cgroups::cleanup(&self.root, path)
    }

    fn remove_if_empty(&self, path: &str) {
        crate::cgroups::remove_if_empty(&self.root, path)
    }

    fn remove_container(&self, parent: &str, id: &str) -> std::io::Result<()> {
        for path in crate::cgroups::find_container(&self.root, parent, id) {
            crate::cgroups::cleanup(&self.root, &path)?;
        }
        Ok(())
    }
}

/// The whole-disk block device holding `path`, as (major, minor): blkio limits apply to disks,
/// not partitions. None for filesystems without one (tmpfs, overlay, btrfs multi-device).
pub fn block_device_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return None;
    }
    if sys.join("partition").exists() {
        // The parent directory of a partition's sysfs node is its disk.
        let disk = std::fs::canonicalize(&sys).ok()?.parent()?.join("dev");
        let text = std::fs::read_to_string(disk).ok()?;
        let (a, b) = text.trim().split_once(':')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    Some((major, minor))
}

/// (read, write) summed over the devices of a v1 blkio statistics file
/// (`MAJ:MIN Read N` lines; the `Total` line and other operations are ignored).
fn v1_blkio_totals(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !dev.contains(':') {
            continue;
        }
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => read = read.saturating_add(n),
            "Write" => write = write.saturating_add(n),
            _ => {}
        }
    }
    (read, write)
}

/// The active I/O scheduler of block device (major, minor), e.g. `mq-deadline`, `bfq`, `none`.
pub fn io_scheduler(dev: (u64, u64)) -> Option<String> {
    let text = std::fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/queue/scheduler",
        dev.0, dev.1
    ))
    .ok()?;
    active_scheduler(&text)
}

/// The bracketed entry of a `queue/scheduler` file (`none [mq-deadline] kyber bfq`).
fn active_scheduler(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

/// Sets the I/O scheduler of block device (major, minor); returns the one it replaced.
pub fn set_io_scheduler(dev: (u64, u64), name: &str) -> Result<String, String> {
    let file = format!("/sys/dev/block/{}:{}/queue/scheduler", dev.0, dev.1);
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    let before = active_scheduler(&text).unwrap_or_default();
    if before == name {
        return Ok(before);
    }
    if !text
        .split_whitespace()
        .any(|s| s.trim_matches(|c| c == '[' || c == ']') == name)
    {
        return Err(format!(
            "io_scheduler: the kernel offers no {name:?} for device {}:{} (it offers: {})",
            dev.0,
            dev.1,
            text.trim()
        ));
    }
    std::fs::write(&file, name).map_err(|e| format!("cannot set {file} to {name}: {e}"))?;
    Ok(before)
}

/// Why engines' `io_weight` would not be enforced on the array's disk, or None when it is: on
/// cgroup v1 only BFQ reads the blkio weight; on v2 BFQ or the iocost controller.
pub fn io_weight_ineffective(
    dev: Option<(u64, u64)>,
    v2: bool,
    cgroup_root: &Path,
) -> Option<String> {
    let Some(dev) = dev else {
        return Some(
            "the array is on no single block device (tmpfs, overlay or a multi-device filesystem)"
                .into(),
        );
    };
    let sched = io_scheduler(dev).unwrap_or_else(|| "unknown".into());
    if sched == "bfq" {
        return None;
    }
    if v2 {
        let qos = std::fs::read_to_string(cgroup_root.join("io.cost.qos")).unwrap_or_default();
        let key = format!("{}:{} enable=1", dev.0, dev.1);
        if qos.lines().any(|l| l.starts_with(&key)) {
            return None;
        }
    }
    Some(format!(
        "the array's disk {}:{} uses the {sched} I/O scheduler, which ignores cgroup I/O weights ({})",
        dev.0,
        dev.1,
        if v2 {
            "BFQ or iocost would honour them"
        } else {
            "only BFQ honours them on cgroup v1"
        }
    ))
}

/// Memory available to containers when the operator sets no figure: 90 % of the node's.
pub fn default_container_memory() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    total_kib * 1024 / 10 * 9
}

/// Checks that the memory limits of all engines but `storage` fit in `allotted`; returns the
/// message for a 409 naming the excess.
pub fn check_memory_allotment(engines: &[EngineDef], allotted: u64) -> Result<(), String> {
    let total: u64 = engines
        .iter()
        .filter(|e| e.name != STORAGE)
        .filter_map(|e| e.resources.memory.map(|b| b.0))
        .sum();
    if total > allotted {
        return Err(format!(
            "engine memory limits would total {} MiB, {} MiB more than the {} MiB the node allots to containers",
            total >> 20,
            (total - allotted) >> 20,
            allotted >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_storage_beside_the_root() {
        let l = CgroupLayout::new("inarray-t1").unwrap();
        assert_eq!(l.engine(STORAGE), "/inarray-t1-storage");
        assert_eq!(l.engine(DEFAULT), "/inarray-t1/default");
        assert_eq!(l.container("batch", "abc"), "/inarray-t1/batch/abc");
        assert_eq!(CgroupLayout::default().engine(STORAGE), "/inarray-storage");
        for bad in ["", "a/b", "..", "Inarray", "1a", "a b", &"a".repeat(65)] {
            let e = CgroupLayout::new(bad).unwrap_err();
            assert!(e.starts_with("cgroup_root: "), "{bad}: {e}");
        }
    }

    #[test]
    fn v1_blkio_files_are_summed_per_operation() {
        let text =
            "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 1\n254:0 Async 2\n254:0 Discard 0\n\
                    254:0 Total 12288\n8:0 Read 10\nTotal 12298\n";
        assert_eq!(v1_blkio_totals(text), (4106, 8192));
        assert_eq!(v1_blkio_totals(""), (0, 0));
        assert_eq!(v1_blkio_totals("garbage\n1:2 Read x\n"), (0, 0));
    }

    #[test]
    fn active_scheduler_is_the_bracketed_one() {
        assert_eq!(
            active_scheduler("none [mq-deadline] kyber bfq\n").as_deref(),
            Some("mq-deadline")
        );
        assert_eq!(active_scheduler("[none] \n").as_deref(), Some("none"));
        assert_eq!(active_scheduler("none bfq"), None);
    }

    #[test]
    fn names() {
        for ok in ["default", "backup-2", "a"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Backup", "1x", "a/b", "..", &"x".repeat(33)] {
            assert!(
                validate_name(bad).unwrap_err().starts_with("name:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn allotment() {
        let mut e = builtin();
        e.push(EngineDef {
            name: "a".into(),
            resources: Resources {
                memory: Some(Bytes(600 << 20)),
                ..Default::default()
            },
        });
        e.push(EngineDef {
            name: "b".into(),
            resources: Resources {
                memory: Some(Bytes(600 << 20)),
                ..Default::default()
            },
        });
        check_memory_allotment(&e, 2 << 30).unwrap();
        let err = check_memory_allotment(&e, 1 << 30).unwrap_err();
        assert!(
            err.contains("1200 MiB") && err.contains("176 MiB more"),
            "{err}"
        );
    }

    #[test]
    fn v2_writes_go_to_the_right_files() {
        // A directory standing in for a cgroup2 mount: libcgroups writes the v2 interface files.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        // The kernel creates the interface files of a new cgroup; the stand-in does it here.
        let dir = root.path().join("inarray/batch");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [root.path().join("inarray"), dir.clone()] {
            std::fs::write(d.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
            std::fs::write(d.join("cgroup.subtree_control"), "").unwrap();
        }
        for f in [
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "io.max",
            "io.weight",
            "cgroup.procs",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let d = LibcgroupsDriver {
            root: root.path().to_owned(),
            v2: true,
            device: Some((254, 0)),
        };
        let r: Resources = serde_json::from_str(
            r#"{"memory":"64m","memory_reservation":"32m","cpus":0.5,"cpu_weight":300,"pids":42,"read_bps":"1m"}"#,
        )
        .unwrap();
        d.apply("/inarray/batch", &r).unwrap();
        let read =
            |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
        assert_eq!(read("memory.low").trim(), (32u64 << 20).to_string());
        assert_eq!(read("cpu.max").trim(), "50000 100000");
        assert_eq!(read("cpu.weight").trim(), "300");
        assert_eq!(read("pids.max").trim(), "42");
        let io = read("io.max");
        assert!(io.contains("254:0") && io.contains("rbps=1048576"), "{io}");
        // The kernel takes one setting per write; a plain file keeps only the last, so the
        // second per-device limit is checked on its own.
        std::fs::write(dir.join("io.max"), "").unwrap();
        d.apply(
            "/inarray/batch",
            &Resources {
                write_iops: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(read("io.max").trim(), "254:0 wiops=7");
    }
}
