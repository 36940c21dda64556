//! [`RecordingDriver`]: the cgroup seam's double for tests that must not touch the host.

use std::path::Path;

use crate::engines::{CgroupDriver, Usage};
use crate::resources::{Limit, Resources};

/// A driver that only records what it is asked, for tests that must not touch the host's
/// cgroups (the API tier); end-to-end tests use [`LibcgroupsDriver`].
#[derive(Default)]
pub struct RecordingDriver {
    pub applied: std::sync::Mutex<Vec<(String, Resources)>>,
    pub cleared: std::sync::Mutex<Vec<(String, Vec<Limit>)>>,
    pub moved: std::sync::Mutex<Vec<(String, i32)>>,
    /// Cgroup paths removed (`remove`), and `parent/*/id` for `remove_container`.
    pub removed: std::sync::Mutex<Vec<String>>,
}

impl CgroupDriver for RecordingDriver {
    fn apply(&self, path: &str, resources: &Resources) -> Result<(), String> {
        self.applied
            .lock()
            .expect("lock")
            .push((path.to_owned(), resources.clone()));
        Ok(())
    }
    fn clear(&self, path: &str, limits: &[Limit]) -> Result<(), String> {
        self.cleared
            .lock()
            .expect("lock")
            .push((path.to_owned(), limits.to_vec()));
        Ok(())
    }
    fn add_process(&self, path: &str, pid: i32) -> Result<(), String> {
        self.moved
            .lock()
            .expect("lock")
            .push((path.to_owned(), pid));
        Ok(())
    }
    fn usage(&self, _path: &str) -> Result<Usage, String> {
        Ok(Usage::default())
    }
    fn is_v2(&self) -> bool {
        false
    }
    fn device(&self) -> Option<(u64, u64)> {
        None
    }
    fn mount_root(&self) -> &Path {
        // Nothing is ever read or written below it: the recording driver has no hierarchy.
        Path::new("/nonexistent/cgroup")
    }
    fn exists(&self, path: &str) -> bool {
        self.applied
            .lock()
            .expect("lock")
            .iter()
            .any(|(p, _)| p == path)
            && !self.removed.lock().expect("lock").iter().any(|p| p == path)
    }
    fn remove(&self, path: &str) -> std::io::Result<()> {
        self.removed.lock().expect("lock").push(path.to_owned());
        Ok(())
    }
    fn remove_if_empty(&self, path: &str) {
        self.removed.lock().expect("lock").push(path.to_owned());
    }
    fn pids(&self, path: &str) -> Result<Vec<i32>, String> {
        Ok(self
            .moved
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, pid)| *pid)
            .collect())
    }
    fn remove_container(&self, parent: &str, id: &str) -> std::io::Result<()> {
        self.removed
            .lock()
            .expect("lock")
            .push(format!("{}/*/{id}", parent.trim_end_matches('/')));
        Ok(())
    }
}
