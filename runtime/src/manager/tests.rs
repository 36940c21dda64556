//! Lifecycle and restart-policy rules, driven through a recording [`Launcher`] double: a real
//! SQLite store and image store in a temporary directory, no root, no processes, no cgroups
//! (the cgroup driver records too). End-to-end tests cover the real shim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inarray_store::{ContainerState, NewImage, Store};
use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};

use super::{Manager, ManagerError, ManagerOptions};
use crate::config::ContainerConfig;
use crate::engines::RecordingDriver;
use crate::launcher::{Launched, Launcher, Pending};
use crate::supervisor::SupervisorError;
use inarray_shim::protocol::{ExitRecord, ShimRecord};
use inarray_shim::ContainerPaths;

/// One supervisor the double pretends to run.
struct Live {
    paths: ContainerPaths,
    exited: Option<oneshot::Sender<()>>,
    gone: watch::Sender<bool>,
}

#[derive(Default)]
struct FakeState {
    next_pid: i32,
    /// The container id of every spawn, in order.
    spawns: Vec<String>,
    /// Every signal sent, with the container id it went to.
    signals: Vec<(String, Signal)>,
    live: HashMap<i32, Live>,
    /// The next spawn fails with this message (and this errno, as a shim reports it).
    fail_next: Option<String>,
    fail_errno: Option<i32>,
    /// SIGTERM is ignored (the container only ends on SIGKILL).
    ignore_term: bool,
    /// Exit notifications of supervisors that ended unseen (a power loss: the daemon that
    /// waited on them went too): never sent, never dropped.
    limbo: Vec<oneshot::Sender<()>>,
    /// How long each spawn takes to report its container running.
    spawn_delay: Duration,
}

/// Spawns under way and the most there ever were at once.
#[derive(Default)]
pub(super) struct Pace {
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
}

/// A [`Launcher`] that records what it is asked and lets the test decide when containers exit.
/// Like the real shim it writes `shim-pid.json` at a start (removing an old `exit.json`) and
/// `exit.json` at an exit, so the manager reads the same records it reads in production.
#[derive(Default)]
pub(super) struct FakeLauncher {
    state: Mutex<FakeState>,
    pub(super) pace: Arc<Mutex<Pace>>,
}

fn id_of(paths: &ContainerPaths) -> String {
    paths
        .dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

impl FakeLauncher {
    pub(super) fn spawns(&self) -> Vec<String> {
        self.state.lock().unwrap().spawns.clone()
    }

    fn signals(&self) -> Vec<Signal> {
        let s = self.state.lock().unwrap();
        s.signals.iter().map(|(_, sig)| *sig).collect()
    }

    fn live_record(&self, id: &str) -> Option<ShimRecord> {
        let s = self.state.lock().unwrap();
        s.live
            .iter()
            .find(|(_, l)| id_of(&l.paths) == id && !*l.gone.borrow())
            .map(|(pid, _)| record(*pid))
    }

    /// The container `id` exits with `code`: its exit record is written, then its supervisor ends.
    pub(super) fn exit(&self, id: &str, code: i32) {
        let mut s = self.state.lock().unwrap();
        Self::exit_locked(&mut s, id, code, true, true);
    }

    /// The supervisor of `id` dies without recording an exit (killed with SIGKILL, say).
    fn die(&self, id: &str) {
        let mut s = self.state.lock().unwrap();
        Self::exit_locked(&mut s, id, 137, false, true);
    }

    /// As the node goes down, after its daemon: the container `id` exits with `code` and its
    /// shim records it, unseen by any daemon.
    pub(super) fn exit_unseen(&self, id: &str, code: i32) {
        let mut s = self.state.lock().unwrap();
        Self::exit_locked(&mut s, id, code, true, false);
    }

    /// A power loss: every supervisor is gone without an exit record, unseen by any daemon.
    pub(super) fn power_loss(&self) {
        let mut s = self.state.lock().unwrap();
        let ids: Vec<String> = s.live.values().map(|l| id_of(&l.paths)).collect();
        for id in ids {
            Self::exit_locked(&mut s, &id, 137, false, false);
        }
    }

    /// The next spawn fails with `msg`.
    pub(super) fn fail_next(&self, msg: &str) {
        self.state.lock().unwrap().fail_next = Some(msg.into());
    }

    /// Each spawn from now on takes `d` to report.
    pub(super) fn set_spawn_delay(&self, d: Duration) {
        self.state.lock().unwrap().spawn_delay = d;
    }

    fn exit_locked(s: &mut FakeState, id: &str, code: i32, record: bool, notify: bool) {
        let mut unseen = Vec::new();
        for live in s.live.values_mut() {
            if id_of(&live.paths) != id || *live.gone.borrow() {
                continue;
            }
            if record {
                let rec = ExitRecord {
                    exit_code: code,
                    signal: None,
                    finished_at: chrono::Utc::now(),
                    oom_killed: false,
                };
                std::fs::write(live.paths.exit_record(), serde_json::to_vec(&rec).unwrap())
                    .unwrap();
            }
            if let Some(tx) = live.exited.take() {
                if notify {
                    let _ = tx.send(());
                } else {
                    unseen.push(tx);
                }
            }
            live.gone.send_replace(true);
        }
        s.limbo.extend(unseen);
    }
}

fn record(pid: i32) -> ShimRecord {
    ShimRecord {
        pid: pid + 1,
        shim_pid: pid,
        shim_start: 1000 + pid as u64,
    }
}

impl Launcher for FakeLauncher {
    fn spawn(&self, paths: &ContainerPaths) -> Pending<Result<Launched, SupervisorError>> {
        let mut s = self.state.lock().unwrap();
        s.spawns.push(id_of(paths));
        if let Some(msg) = s.fail_next.take() {
            let cause = s.fail_errno.take().map(std::io::Error::from_raw_os_error);
            return Box::pin(async move {
                Err(SupervisorError::StartFailed {
                    message: msg,
                    cause,
                })
            });
        }
        assert!(
            paths.bundle().join("config.json").is_file() && paths.shim_config().is_file(),
            "a launch without its plan written"
        );
        s.next_pid += 10;
        let pid = 1000 + s.next_pid;
        let rec = record(pid);
        let _ = std::fs::remove_file(paths.exit_record());
        std::fs::write(paths.shim_record(), serde_json::to_vec(&rec).unwrap()).unwrap();
        let (tx, rx) = oneshot::channel();
        let (gone, _) = watch::channel(false);
        s.live.insert(
            pid,
            Live {
                paths: paths.clone(),
                exited: Some(tx),
                gone,
            },
        );
        let delay = s.spawn_delay;
        let pace = self.pace.clone();
        {
            let mut p = pace.lock().unwrap();
            p.in_flight += 1;
            p.max_in_flight = p.max_in_flight.max(p.in_flight);
        }
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            pace.lock().unwrap().in_flight -= 1;
            Ok(Launched {
                record: rec,
                exited: Box::pin(async move {
                    let _ = rx.await;
                }),
            })
        })
    }

    fn signal(&self, rec: ShimRecord, sig: Signal) -> nix::Result<()> {
        let mut s = self.state.lock().unwrap();
        let Some(id) = s
            .live
            .get(&rec.shim_pid)
            .filter(|l| !*l.gone.borrow())
            .map(|l| id_of(&l.paths))
        else {
            return Err(nix::errno::Errno::ESRCH);
        };
        s.signals.push((id.clone(), sig));
        if sig == Signal::SIGKILL || (sig == Signal::SIGTERM && !s.ignore_term) {
            FakeLauncher::exit_locked(&mut s, &id, 128 + sig as i32, true, true);
        }
        Ok(())
    }

    fn wait_gone(&self, rec: ShimRecord) -> Pending<()> {
        let rx = self
            .state
            .lock()
            .unwrap()
            .live
            .get(&rec.shim_pid)
            .map(|l| l.gone.subscribe());
        Box::pin(async move {
            if let Some(mut rx) = rx {
                let _ = rx.wait_for(|gone| *gone).await;
            }
        })
    }

    fn is_alive(&self, rec: ShimRecord) -> bool {
        let s = self.state.lock().unwrap();
        s.live.get(&rec.shim_pid).is_some_and(|l| !*l.gone.borrow())
    }

    fn control(
        &self,
        _socket: std::path::PathBuf,
        _req: inarray_shim::protocol::CtlRequest,
    ) -> Pending<std::io::Result<crate::launcher::Controlled>> {
        Box::pin(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the recording launcher has no shims to talk to",
            ))
        })
    }
}

pub(super) struct Env {
    _tmp: tempfile::TempDir,
    pub(super) store: Store,
    images: Arc<inarray_images::ImageStore>,
    cgroups: Arc<RecordingDriver>,
    pub(super) launcher: Arc<FakeLauncher>,
    pub(super) opts: ManagerOptions,
    pub(super) manager: Manager,
}

impl Env {
    pub(super) async fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let array = tmp.path().join("array");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&array).unwrap();
        let store = Store::open(&state.join("state.db")).await.unwrap();
        let images = Arc::new(
            inarray_images::ImageStore::open(
                &state.join("images"),
                inarray_images::Limits::default(),
            )
            .unwrap(),
        );
        // An image without layers: enough for a plan (the double runs nothing).
        let config = inarray_images::RuntimeConfig {
            cmd: Some(vec!["/bin/true".into()]),
            ..Default::default()
        };
        let layers: Vec<inarray_images::Layer> = Vec::new();
        store
            .put_image(NewImage {
                id: "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                manifest_digest:
                    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
                names: &["test:latest".to_owned()],
                config: &config,
                layers: &layers,
                size: 0,
            })
            .await
            .unwrap();
        let opts = ManagerOptions {
            state_dir: state.clone(),
            array_dir: array,
            protected: vec![state],
            shim_exe: tmp.path().join("unused"),
            container_memory: 8 << 30,
            cgroups: Default::default(),
            container_log: Default::default(),
            restart_concurrency: super::RESTART_CONCURRENCY,
            networks: Default::default(),
        };
        let cgroups = Arc::new(RecordingDriver::default());
        let launcher = Arc::new(FakeLauncher::default());
        let manager = Manager::with_launcher(
            store.clone(),
            images.clone(),
            cgroups.clone(),
            launcher.clone(),
            opts.clone(),
        )
        .unwrap();
        manager.init_engines(&[]).await.unwrap();
        Self {
            _tmp: tmp,
            store,
            images,
            cgroups,
            launcher,
            opts,
            manager,
        }
    }

    /// The same state, as a daemon started again would see it (same store, same supervisors).
    pub(super) fn restarted(&self) -> Manager {
        self.restarted_with(self.opts.clone())
    }

    /// [`Env::restarted`] with other options.
    pub(super) fn restarted_with(&self, opts: ManagerOptions) -> Manager {
        Manager::with_launcher(
            self.store.clone(),
            self.images.clone(),
            self.cgroups.clone(),
            self.launcher.clone(),
            opts,
        )
        .unwrap()
    }

    pub(super) async fn create(&self, extra: serde_json::Value) -> inarray_store::ContainerRow {
        let mut cfg = serde_json::json!({"image": "test", "pull": "never"});
        cfg.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg: ContainerConfig = serde_json::from_value(cfg).unwrap();
        self.manager.create(cfg).await.unwrap()
    }

    pub(super) async fn state(&self, id: &str) -> inarray_store::ContainerRow {
        self.manager.get(id).await.unwrap()
    }

    /// Waits (bounded) until the launcher has had `n` spawns.
    pub(super) async fn until_spawns(&self, n: usize) {
        for _ in 0..500 {
            if self.launcher.spawns().len() >= n {
                assert_eq!(self.launcher.spawns().len(), n);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} spawns, never {n}", self.launcher.spawns().len());
    }

    /// Waits (bounded) until the container is in `state`.
    pub(super) async fn until(
        &self,
        id: &str,
        state: ContainerState,
    ) -> inarray_store::ContainerRow {
        for _ in 0..500 {
            let row = self.state(id).await;
            if row.state == state {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "container {id} never became {state}: {:?}",
            self.state(id).await
        );
    }
}

#[tokio::test]
async fn create_plans_once_and_launches_once() {
    let env = Env::new().await;
    let row = env.create(serde_json::json!({})).await;
    assert_eq!(row.state, ContainerState::Running);
    assert_eq!(env.launcher.spawns(), vec![row.id.clone()]);
    let rec = env.launcher.live_record(&row.id).unwrap();
    assert_eq!(
        (row.pid, row.shim_pid, row.shim_start),
        (
            Some(rec.pid.into()),
            Some(rec.shim_pid.into()),
            Some(rec.shim_start as i64)
        )
    );
    // The plan the shim reads: the container's cgroup in its engine.
    let shim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.manager.paths(&row.id).shim_config()).unwrap())
            .unwrap();
    assert_eq!(shim["cgroup"], format!("/inarray/default/{}", row.id));

    let created = env.create(serde_json::json!({"start": false})).await;
    assert_eq!(created.state, ContainerState::Created);
    assert_eq!(
        env.launcher.spawns().len(),
        1,
        "start: false launches nothing"
    );
}

#[tokio::test]
async fn an_exit_is_recorded_and_wakes_waiters() {
    let env = Env::new().await;
    let row = env.create(serde_json::json!({})).await;
    let waiter = {
        let m = env.manager.clone();
        let id = row.id.clone();
        tokio::spawn(async move { m.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    env.launcher.exit(&row.id, 7);
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returned")
        .unwrap()
        .unwrap();
    assert_eq!(done.state, ContainerState::Exited);
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(env.launcher.spawns().len(), 1, "policy no: no restart");
}

#[tokio::test]
async fn on_failure_restarts_up_to_its_count_then_stays_exited() {
    let env = Env::new().await;
    let row = env
        .create(serde_json::json!({"restart": "on-failure:2"}))
        .await;
    for round in 1..=3 {
        env.until_spawns(round).await;
        env.until(&row.id, ContainerState::Running).await;
        env.launcher.exit(&row.id, 3);
        if round < 3 {
            // Backoff 100 ms, then 200 ms: restarting meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r = env.state(&row.id).await;
            assert!(
                matches!(
                    r.state,
                    ContainerState::Restarting | ContainerState::Running
                ),
                "round {round}: {:?}",
                r.state
            );
        }
    }
    let done = env.until(&row.id, ContainerState::Exited).await;
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.restart_count, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.launcher.spawns().len(), 3, "no third restart");

    // A clean exit does not restart an on-failure container.
    let ok = env
        .create(serde_json::json!({"restart": "on-failure"}))
        .await;
    env.launcher.exit(&ok.id, 0);
    env.until(&ok.id, ContainerState::Exited).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.state(&ok.id).await.state, ContainerState::Exited);
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_no_restart_follows() {
    let env = Env::new().await;
    env.launcher.state.lock().unwrap().ignore_term = true;
    let row = env.create(serde_json::json!({"restart": "always"})).await;
    let stopped = env
        .manager
        .stop(&row.id, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    assert_eq!(stopped.exit_code, Some(128 + Signal::SIGKILL as i64));
    assert_eq!(
        env.launcher.signals(),
        vec![Signal::SIGTERM, Signal::SIGKILL]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.launcher.spawns().len(),
        1,
        "a stopped container stays down"
    );
    assert!(env.state(&row.id).await.stop_requested);

    // A start clears the stop request; `always` applies again.
    env.launcher.state.lock().unwrap().ignore_term = false;
    env.manager.start(&row.id).await.unwrap();
    assert!(!env.state(&row.id).await.stop_requested);
    env.launcher.exit(&row.id, 0);
    env.until_spawns(3).await;
    env.until(&row.id, ContainerState::Running).await;
}

#[tokio::test]
async fn a_stop_during_the_backoff_keeps_it_exited() {
    let env = Env::new().await;
    let row = env.create(serde_json::json!({"restart": "always"})).await;
    env.launcher.exit(&row.id, 1);
    env.until(&row.id, ContainerState::Restarting).await;
    let stopped = env.manager.stop(&row.id, Duration::ZERO).await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.state(&row.id).await.state, ContainerState::Exited);
    assert_eq!(env.launcher.spawns().len(), 1);
    assert!(env.launcher.signals().is_empty(), "nothing ran to signal");
}

#[tokio::test]
async fn a_failed_launch_leaves_it_dead_with_the_reason() {
    let env = Env::new().await;
    env.launcher.state.lock().unwrap().fail_next = Some("exec: no such file".into());
    let cfg: ContainerConfig =
        serde_json::from_value(serde_json::json!({"image": "test", "name": "broken"})).unwrap();
    let err = env.manager.create(cfg).await.unwrap_err();
    let msg = err.start_message().expect("a start error").to_owned();
    assert!(msg.contains("exec: no such file"), "{msg}");
    assert!(msg.contains("kept in state dead"), "{msg}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
    let row = env.state("broken").await;
    assert_eq!(row.state, ContainerState::Dead);
    assert!(row.error.unwrap().contains("exec: no such file"));
    let removed = env.cgroups.removed.lock().unwrap().clone();
    assert!(
        removed.contains(&format!("inarray/*/{}", row.id)),
        "its cgroups are cleaned up: {removed:?}"
    );
}

#[tokio::test]
async fn a_shim_that_reports_enospc_is_a_full_disk_by_kind() {
    let env = Env::new().await;
    {
        let mut s = env.launcher.state.lock().unwrap();
        s.fail_next = Some("cannot create the upper layer".into());
        s.fail_errno = Some(28);
    }
    let cfg: ContainerConfig =
        serde_json::from_value(serde_json::json!({"image": "test"})).unwrap();
    let err = env.manager.create(cfg).await.unwrap_err();
    assert!(err.is_disk_full(), "{err:?}");
    // Without an errno the same words are not taken for a full disk here.
    env.launcher.state.lock().unwrap().fail_next = Some("exec format error".into());
    let cfg: ContainerConfig =
        serde_json::from_value(serde_json::json!({"image": "test"})).unwrap();
    assert!(!env.manager.create(cfg).await.unwrap_err().is_disk_full());
}

#[tokio::test]
async fn kill_and_delete_respect_the_state() {
    let env = Env::new().await;
    let created = env.create(serde_json::json!({"start": false})).await;
    assert!(matches!(
        env.manager.kill(&created.id, Signal::SIGTERM).await,
        Err(ManagerError::Conflict(_))
    ));
    let row = env.create(serde_json::json!({})).await;
    assert!(matches!(
        env.manager.delete(&row.id, false).await,
        Err(ManagerError::Conflict(_))
    ));
    assert!(matches!(
        env.manager.start(&row.id).await,
        Err(ManagerError::Conflict(_))
    ));
    env.manager.kill(&row.id, Signal::SIGUSR1).await.unwrap();
    assert_eq!(env.launcher.signals(), vec![Signal::SIGUSR1]);
    env.manager.delete(&row.id, true).await.unwrap();
    assert!(matches!(
        env.manager.get(&row.id).await,
        Err(ManagerError::NotFound { .. })
    ));
    assert!(!env.manager.paths(&row.id).dir.exists());
    assert_eq!(
        env.launcher.signals(),
        vec![Signal::SIGUSR1, Signal::SIGTERM]
    );
}

#[tokio::test]
async fn reconcile_adopts_live_supervisors_and_records_what_ended_meanwhile() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let alive = env.create(serde_json::json!({"name": "alive"})).await;
    let exited = env.create(serde_json::json!({"name": "exited"})).await;
    let died = env.create(serde_json::json!({"name": "died"})).await;
    // The daemon goes away; meanwhile one container exits and one supervisor is killed.
    let restarted = env.restarted();
    env.launcher.exit(&exited.id, 4);
    env.launcher.die(&died.id);
    // (The first manager's monitors see these too; a restarted daemon has no such monitors, so
    // the rows are put back to "running" as a crashed daemon would have left them.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    for r in [&exited, &died] {
        let rec = crate::manager::shim_record(r).unwrap();
        env.store
            .mark_running(
                &r.id,
                rec.pid.into(),
                rec.shim_pid.into(),
                rec.shim_start as i64,
            )
            .await
            .unwrap();
    }
    let report = restarted.reconcile(&boot("boot-1")).await.unwrap();
    assert_eq!(
        report.since,
        super::Since::Restart,
        "the same boot: a daemon restart"
    );
    assert_eq!(report.adopted, 1);
    assert_eq!(report.exited, 2);
    let row = env.until(&exited.id, ContainerState::Exited).await;
    assert_eq!(row.exit_code, Some(4));
    let row = env.until(&died.id, ContainerState::Dead).await;
    assert!(row.error.unwrap().contains("without recording an exit"));
    assert_eq!(env.state(&alive.id).await.state, ContainerState::Running);
    // The adopted one's exit is seen by the new daemon.
    env.launcher.exit(&alive.id, 0);
    let row = env.until(&alive.id, ContainerState::Exited).await;
    assert_eq!(row.exit_code, Some(0));
}

#[tokio::test]
async fn find_by_name_matches_names_only() {
    let env = Env::new().await;
    let row = env.create(serde_json::json!({"name": "web"})).await;
    assert_eq!(
        env.manager.find_by_name("web").await.unwrap().map(|r| r.id),
        Some(row.id.clone())
    );
    assert!(env
        .manager
        .find_by_name(&row.id[..12])
        .await
        .unwrap()
        .is_none());
}

/// The boot `id` of the node `node-a`.
pub(super) fn boot(id: &str) -> super::NodeBoot {
    super::NodeBoot {
        boot_id: id.into(),
        hostname: "node-a".into(),
    }
}

/// Waits (bounded) until no container has `id`.
async fn until_gone(env: &Env, id: &str) {
    for _ in 0..500 {
        if env.manager.get(id).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "container {id} was never removed: {:?}",
        env.state(id).await
    );
}

#[tokio::test]
async fn auto_remove_deletes_after_the_exit_is_recorded_and_remembers_it() {
    let env = Env::new().await;
    let row = env
        .create(serde_json::json!({"name": "once", "auto_remove": true}))
        .await;
    let waiter = {
        let m = env.manager.clone();
        let id = row.id.clone();
        tokio::spawn(async move { m.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    env.launcher.exit(&row.id, 3);
    // A waiter woken by the exit sees it (recorded before the delete).
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returned")
        .unwrap();
    if let Ok(done) = done {
        assert_eq!(done.exit_code, Some(3));
    }
    until_gone(&env, &row.id).await;
    assert!(
        !env.manager.paths(&row.id).dir.exists(),
        "its files went with it"
    );
    let last = env.manager.removed_container(&row.id).expect("remembered");
    assert_eq!(
        (last.state, last.exit_code),
        (ContainerState::Exited, Some(3))
    );
    // Without auto_remove nothing is deleted.
    let kept = env.create(serde_json::json!({})).await;
    env.launcher.exit(&kept.id, 0);
    env.until(&kept.id, ContainerState::Exited).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.state(&kept.id).await.state, ContainerState::Exited);
    assert!(env.manager.removed_container(&kept.id).is_none());
}

#[tokio::test]
async fn auto_remove_applies_to_an_exit_seen_at_reconcile_and_to_a_failed_start() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let row = env
        .create(serde_json::json!({"name": "meanwhile", "auto_remove": true}))
        .await;
    let restarted = env.restarted();
    env.launcher.exit(&row.id, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // As a daemon killed before it saw the exit left it: still running in SQL.
    if env.manager.get(&row.id).await.is_ok() {
        let rec = crate::manager::shim_record(&row).unwrap();
        env.store
            .mark_running(
                &row.id,
                rec.pid.into(),
                rec.shim_pid.into(),
                rec.shim_start as i64,
            )
            .await
            .unwrap();
        restarted.reconcile(&boot("boot-1")).await.unwrap();
    }
    until_gone(&env, &row.id).await;

    env.launcher.state.lock().unwrap().fail_next = Some("exec: no such file".into());
    let cfg: ContainerConfig = serde_json::from_value(
        serde_json::json!({"image": "test", "name": "broken", "auto_remove": true}),
    )
    .unwrap();
    let err = env.manager.create(cfg).await.unwrap_err();
    assert!(err.start_message().is_some(), "{err:?}");
    assert!(
        env.manager.get("broken").await.is_err(),
        "a container that cannot start is removed, as Docker does"
    );
}
