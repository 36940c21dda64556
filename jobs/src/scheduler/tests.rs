//! The scheduler loop with a fake clock and a fake container runner: no root, no real time, no
//! containers. A "daemon crash" is a tokio runtime shut down with all its tasks (the fake
//! containers, like real ones, outlive it).
//!
//! The fake containers' behaviour is their command: `["sleep", S]` exits 0 after S (fake)
//! seconds, `["fail", C]` exits C at once, `["hang"]` runs until stopped, `["fail-times", N]`
//! fails (exit 1) for the job's first N containers and then succeeds. Image `no-start` fails to
//! start; image `missing` does not exist.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use inarray_runtime::{ContainerConfig, ManagerError};
use inarray_store::{ContainerState, RunRow, RunState, RunTrigger, Store};
use serde_json::json;
use tokio::sync::Notify;

use super::*;
use crate::clock::{BoxFuture, FakeClock};
use crate::runner::Exit;

// ------------------------------------------------------------------------------- the fakes

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Sleep(f64),
    Fail(i64),
    Hang,
}

struct FakeContainer {
    name: String,
    started: DateTime<Utc>,
    behaviour: Behaviour,
    state: ContainerState,
    exit: Option<Exit>,
}

#[derive(Default)]
struct FakeState {
    next_id: u64,
    containers: HashMap<String, FakeContainer>,
    /// "create NAME", "stop NAME", "remove NAME", "start NAME", in order.
    log: Vec<String>,
    created_per_job: HashMap<String, u32>,
    /// Jobs whose `run` never returns, before creating the container.
    block_before_create: HashSet<String>,
    /// Jobs whose `run` never returns, after creating (and starting) the container.
    block_after_create: HashSet<String>,
}

struct FakeRunner {
    clock: Arc<FakeClock>,
    st: Mutex<FakeState>,
    changed: Notify,
}

fn not_found(kind: &'static str, key: &str) -> JobsError {
    JobsError::Container(ManagerError::NotFound {
        kind,
        key: key.to_owned(),
    })
}

fn job_of(name: &str) -> String {
    name.split(".run-").next().unwrap_or_default().to_owned()
}

impl FakeRunner {
    fn new(clock: Arc<FakeClock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            st: Mutex::default(),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.st.lock().unwrap()
    }

    fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    fn created(&self, job: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.starts_with(&format!("create {job}.run-")))
            .count()
    }

    fn exists(&self, id: &str) -> bool {
        self.lock().containers.contains_key(id)
    }

    fn running(&self) -> Vec<String> {
        let now = self.clock.now();
        let st = self.lock();
        let mut v: Vec<String> = st
            .containers
            .values()
            .filter(|c| c.state == ContainerState::Running && c.exit.is_none())
            .filter(|c| match c.behaviour {
                Behaviour::Sleep(s) => now < c.started + secs(s),
                Behaviour::Fail(_) => false,
                Behaviour::Hang => true,
            })
            .map(|c| c.name.clone())
            .collect();
        v.sort();
        v
    }
}

fn secs(s: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((s * 1000.0) as i64)
}

impl Runner for FakeRunner {
    fn check<'a>(&'a self, cfg: &'a ContainerConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if cfg.image == "missing" {
                return Err(not_found("image", &cfg.image));
            }
            Ok(())
        })
    }

    fn run(&self, cfg: ContainerConfig) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let name = cfg
                .name
                .clone()
                .expect("the scheduler names run containers");
            let job = job_of(&name);
            assert_eq!(cfg.restart, inarray_runtime::RestartPolicy::No);
            if self.lock().block_before_create.contains(&job) {
                std::future::pending::<()>().await;
            }
            let cmd = cfg.command.clone().unwrap_or_default();
            let (id, block) = {
                let mut st = self.lock();
                if st.containers.values().any(|c| c.name == name) {
                    return Err(JobsError::Container(ManagerError::Conflict(format!(
                        "a container named {name} already exists"
                    ))));
                }
                let n = st.created_per_job.entry(job.clone()).or_default();
                let nth = *n;
                *n += 1;
                let arg = |i: usize| cmd.get(i).cloned().unwrap_or_default();
                let behaviour = match arg(0).as_str() {
                    "sleep" => Behaviour::Sleep(arg(1).parse().unwrap()),
                    "fail" => Behaviour::Fail(arg(1).parse().unwrap()),
                    "hang" => Behaviour::Hang,
                    "fail-times" if nth < arg(1).parse::<u32>().unwrap() => Behaviour::Fail(1),
                    _ => Behaviour::Sleep(0.0),
                };
                st.next_id += 1;
                let id = format!("c{:04}", st.next_id);
                let dead = cfg.image == "no-start";
                st.containers.insert(
                    id.clone(),
                    FakeContainer {
                        name: name.clone(),
                        started: self.clock.now(),
                        behaviour,
                        state: if dead {
                            ContainerState::Dead
                        } else {
                            ContainerState::Running
                        },
                        exit: dead.then(|| Exit {
                            exit_code: None,
                            error: Some("no such executable".into()),
                        }),
                    },
                );
                st.log.push(format!("create {name}"));
                if dead {
                    return Err(JobsError::Start {
                        container_id: Some(id),
                        message: "no such executable".into(),
                    });
                }
                (id, st.block_after_create.contains(&job))
            };
            self.changed.notify_waiters();
            if block {
                std::future::pending::<()>().await;
            }
            Ok(id)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut st = self.lock();
            let now = self.clock.now();
            let c = st
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found("container", id))?;
            c.state = ContainerState::Running;
            c.started = now;
            let name = c.name.clone();
            st.log.push(format!("start {name}"));
            Ok(())
        })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Exit>> {
        Box::pin(async move {
            loop {
                let changed = self.changed.notified();
                let deadline = {
                    let mut st = self.lock();
                    let now = self.clock.now();
                    let c = st
                        .containers
                        .get_mut(id)
                        .ok_or_else(|| not_found("container", id))?;
                    if let Some(x) = &c.exit {
                        return Ok(x.clone());
                    }
                    let ended = match c.behaviour {
                        Behaviour::Sleep(s) if now >= c.started + secs(s) => Some(0),
                        Behaviour::Fail(code) => Some(code),
                        _ => None,
                    };
                    if let Some(code) = ended {
                        let x = Exit {
                            exit_code: Some(code),
                            error: None,
                        };
                        c.exit = Some(x.clone());
                        c.state = ContainerState::Exited;
                        return Ok(x);
                    }
                    match c.behaviour {
                        Behaviour::Sleep(s) => Some(c.started + secs(s)),
                        _ => None,
                    }
                };
                match deadline {
                    Some(t) => {
                        tokio::select! {
                            () = self.clock.sleep_until(t) => {}
                            () = changed => {}
                        }
                    }
                    None => changed.await,
                }
            }
        })
    }

    fn stop<'a>(&'a self, id: &'a str, _grace: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            {
                let mut st = self.lock();
                let c = st
                    .containers
                    .get_mut(id)
                    .ok_or_else(|| not_found("container", id))?;
                if c.exit.is_none() {
                    c.exit = Some(Exit {
                        exit_code: Some(137),
                        error: None,
                    });
                    c.state = ContainerState::Exited;
                }
                let name = c.name.clone();
                st.log.push(format!("stop {name}"));
            }
            self.changed.notify_waiters();
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            {
                let mut st = self.lock();
                let c = st
                    .containers
                    .remove(id)
                    .ok_or_else(|| not_found("container", id))?;
                st.log.push(format!("remove {}", c.name));
            }
            self.changed.notify_waiters();
            Ok(())
        })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, ContainerState)>>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .containers
                .iter()
                .find(|(_, c)| c.name == name)
                .map(|(id, c)| (id.clone(), c.state)))
        })
    }
}

// ---------------------------------------------------------------------------- the harness

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

fn at(s: f64) -> DateTime<Utc> {
    t0() + secs(s)
}

fn options() -> JobsOptions {
    JobsOptions {
        max_parallel_starts: 4,
        retry_backoff: Duration::from_secs(1),
        retry_backoff_cap: Duration::from_secs(60),
        kill_grace: Duration::from_secs(5),
        late_limit: Duration::from_secs(60),
        kept_other: 10,
    }
}

fn spec(name: &str, schedule: &str, cmd: &[&str], extra: serde_json::Value) -> JobSpec {
    let mut v = json!({
        "name": name,
        "schedule": schedule,
        "container": {"image": "busybox", "command": cmd},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// Polls `f` (real time) until it returns Some, for at most 10 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A job's runs, oldest first.
async fn runs(jobs: &Jobs, job: &str) -> Vec<RunRow> {
    let mut v = jobs.runs(job, None).await.unwrap();
    v.reverse();
    v
}

/// Waits until the job has a run attempt for `at` (attempt `attempt`) in `state`.
async fn until_run(
    jobs: &Jobs,
    job: &str,
    t: DateTime<Utc>,
    attempt: i64,
    state: RunState,
) -> RunRow {
    eventually(&format!("{job} run at {t} #{attempt} {state}"), || async {
        runs(jobs, job)
            .await
            .into_iter()
            .find(|r| r.scheduled_at == t && r.attempt == attempt && r.state == state)
    })
    .await
}

struct Env {
    _dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    runner: Arc<FakeRunner>,
    jobs: Jobs,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        let clock = FakeClock::new(t0());
        let runner = FakeRunner::new(clock.clone());
        let jobs = Jobs::new(store, runner.clone(), clock.clone(), options());
        jobs.start().await.unwrap();
        Self {
            _dir: dir,
            clock,
            runner,
            jobs,
        }
    }

    fn to(&self, s: f64) {
        self.clock.set(at(s));
    }
}

// ----------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_each_instant_once_and_keeps_the_history_it_is_told() {
    let env = Env::new().await;
    let job = env
        .jobs
        .create(spec(
            "tick",
            "* * * * * *",
            &["sleep", "0"],
            json!({"history": {"successful": 2}}),
        ))
        .await
        .unwrap();
    assert_eq!(job.next_fire, Some(at(1.0)));
    for s in 1..=5 {
        env.to(f64::from(s));
        let r = until_run(&env.jobs, "tick", at(f64::from(s)), 0, RunState::Succeeded).await;
        assert_eq!(r.trigger, RunTrigger::Schedule);
        assert_eq!(
            r.fired_at,
            at(f64::from(s)),
            "the fake clock does not move while firing"
        );
        assert_eq!(r.exit_code, Some(0));
    }
    // History: the 2 newest successful runs are kept; the 3 older runs and their containers went.
    let kept = eventually("history pruned", || async {
        let v = runs(&env.jobs, "tick").await;
        (v.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(
        kept.iter().map(|r| r.scheduled_at).collect::<Vec<_>>(),
        vec![at(4.0), at(5.0)]
    );
    for r in &kept {
        assert!(env.runner.exists(r.container_id.as_ref().unwrap()));
    }
    assert_eq!(env.runner.created("tick"), 5);
    let removed = env
        .runner
        .log()
        .iter()
        .filter(|l| l.starts_with("remove tick.run-"))
        .count();
    assert_eq!(removed, 3);
    // The container names come from the run rows.
    assert_eq!(
        env.runner.log()[0],
        format!("create tick.run-{}", 1),
        "{:?}",
        env.runner.log()
    );
    let job = env.jobs.get("tick").await.unwrap();
    assert_eq!(job.next_fire, Some(at(6.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_a_run_is_active_and_allow_overlaps() {
    let env = Env::new().await;
    let hist = json!({"history": {"successful": 10, "failed": 10}});
    env.jobs
        .create(spec("one", "* * * * * *", &["sleep", "2.5"], hist.clone()))
        .await
        .unwrap();
    let mut allow = hist.clone();
    allow["concurrency"] = json!("allow");
    env.jobs
        .create(spec("many", "* * * * * *", &["sleep", "2.5"], allow))
        .await
        .unwrap();
    env.to(1.0);
    until_run(&env.jobs, "one", at(1.0), 0, RunState::Running).await;
    until_run(&env.jobs, "many", at(1.0), 0, RunState::Running).await;
    env.to(2.0);
    let skipped = until_run(&env.jobs, "one", at(2.0), 0, RunState::Skipped).await;
    assert!(skipped.error.unwrap().contains("concurrency forbid"));
    assert!(skipped.container_id.is_none());
    until_run(&env.jobs, "many", at(2.0), 0, RunState::Running).await;
    env.to(3.0);
    until_run(&env.jobs, "one", at(3.0), 0, RunState::Skipped).await;
    until_run(&env.jobs, "many", at(3.0), 0, RunState::Running).await;
    let running = env.runner.running();
    let of = |job: &str| running.iter().filter(|n| job_of(n) == job).count();
    assert_eq!((of("many"), of("one")), (3, 1), "{running:?}");
    env.to(3.5);
    until_run(&env.jobs, "one", at(1.0), 0, RunState::Succeeded).await;
    env.to(4.0);
    until_run(&env.jobs, "one", at(4.0), 0, RunState::Running).await;
    assert_eq!(env.runner.created("one"), 2);
    assert_eq!(env.runner.created("many"), 4);
    // A manual run is refused while one is active under forbid.
    let e = env.jobs.run_now("one").await.unwrap_err();
    assert!(
        matches!(&e, JobsError::Conflict(m) if m.contains("forbid")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_kills_the_active_run_before_starting_the_next() {
    let env = Env::new().await;
    env.jobs
        .create(spec(
            "latest",
            "* * * * * *",
            &["hang"],
            json!({"concurrency": "replace", "history": {"failed": 5}}),
        ))
        .await
        .unwrap();
    env.to(1.0);
    let first = until_run(&env.jobs, "latest", at(1.0), 0, RunState::Running).await;
    env.to(2.0);
    until_run(&env.jobs, "latest", at(2.0), 0, RunState::Running).await;
    let first = until_run(&env.jobs, "latest", first.scheduled_at, 0, RunState::Failed).await;
    assert_eq!(first.exit_code, Some(137));
    assert!(first
        .error
        .as_deref()
        .unwrap()
        .starts_with("replaced by the run scheduled at"));
    let log = env.runner.log();
    let stop = log.iter().position(|l| l == "stop latest.run-1").unwrap();
    let create = log.iter().position(|l| l == "create latest.run-2").unwrap();
    assert!(stop < create, "stopped before the next started: {log:?}");
    assert_eq!(env.runner.running(), ["latest.run-2"]);
    // No retry for a replaced run, even with retries left.
    assert_eq!(runs(&env.jobs, "latest").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_retried_with_backoff_and_recorded() {
    let env = Env::new().await;
    env.jobs
        .create(spec(
            "flaky",
            "@yearly",
            &["fail", "3"],
            json!({"retries": 2}),
        ))
        .await
        .unwrap();
    // A manual run answers once its container has started; the fake container fails at once,
    // so by the time the answer is read the run may already be recorded as failed.
    let run = env.jobs.run_now("flaky").await.unwrap();
    assert_eq!((run.trigger, run.attempt), (RunTrigger::Manual, 0));
    assert!(
        matches!(run.state, RunState::Running | RunState::Failed),
        "{:?}",
        run.state
    );
    let run = until_run(&env.jobs, "flaky", run.scheduled_at, 0, RunState::Failed).await;
    assert_eq!(run.error.as_deref(), Some("exited with code 3"));
    let t = run.scheduled_at;
    let second = until_run(&env.jobs, "flaky", t, 1, RunState::Pending).await;
    assert_eq!(second.not_before, at(1.0), "first backoff: 1 s");
    assert_eq!(env.runner.created("flaky"), 1);
    env.to(1.0);
    until_run(&env.jobs, "flaky", t, 1, RunState::Failed).await;
    let third = until_run(&env.jobs, "flaky", t, 2, RunState::Pending).await;
    assert_eq!(third.not_before, at(3.0), "then 2 s");
    env.to(3.0);
    until_run(&env.jobs, "flaky", t, 2, RunState::Failed).await;
    env.to(100.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let all = runs(&env.jobs, "flaky").await;
    assert_eq!(all.len(), 3, "retries: 2 means 3 attempts: {all:?}");
    assert!(all.iter().all(|r| r.exit_code == Some(3)));
    assert_eq!(env.runner.created("flaky"), 3);

    // One that fails once, then succeeds on its retry.
    env.jobs
        .create(spec(
            "second-time",
            "@yearly",
            &["fail-times", "1"],
            json!({"retries": 3}),
        ))
        .await
        .unwrap();
    let run = env.jobs.run_now("second-time").await.unwrap();
    until_run(
        &env.jobs,
        "second-time",
        run.scheduled_at,
        1,
        RunState::Pending,
    )
    .await;
    env.to(101.0);
    until_run(
        &env.jobs,
        "second-time",
        run.scheduled_at,
        1,
        RunState::Succeeded,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runs(&env.jobs, "second-time").await.len(), 2);

    // A start that fails is a failed attempt too, with the container kept for inspection.
    let mut s = spec("nostart", "@yearly", &["x"], json!({}));
    s.container.image = "no-start".into();
    env.jobs.create(s).await.unwrap();
    let run = env.jobs.run_now("nostart").await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(run
        .error
        .as_deref()
        .unwrap()
        .contains("cannot start: no such executable"));
    assert!(run.container_id.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_hung_run() {
    let env = Env::new().await;
    env.jobs
        .create(spec(
            "hung",
            "@yearly",
            &["hang"],
            json!({"timeout_seconds": 5, "retries": 1}),
        ))
        .await
        .unwrap();
    let run = env.jobs.run_now("hung").await.unwrap();
    assert_eq!(run.state, RunState::Running);
    env.to(4.9);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(env.runner.running(), ["hung.run-1"]);
    env.to(5.0);
    let r = until_run(&env.jobs, "hung", run.scheduled_at, 0, RunState::Failed).await;
    assert_eq!(r.error.as_deref(), Some("timed out after 5 s: stopped"));
    assert_eq!(r.exit_code, Some(137));
    assert!(env.runner.log().contains(&"stop hung.run-1".to_owned()));
    // A timed-out attempt is a failed one: retried.
    let retry = until_run(&env.jobs, "hung", run.scheduled_at, 1, RunState::Pending).await;
    assert_eq!(retry.not_before, at(6.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_fires_and_resume_starts_from_now() {
    let env = Env::new().await;
    env.jobs
        .create(spec(
            "s",
            "* * * * * *",
            &["sleep", "0"],
            json!({"history": {"successful": 50}}),
        ))
        .await
        .unwrap();
    env.to(1.0);
    until_run(&env.jobs, "s", at(1.0), 0, RunState::Succeeded).await;
    let j = env.jobs.set_suspended("s", true).await.unwrap();
    assert!(j.spec.suspend);
    assert_eq!(j.next_fire, None);
    for s in 2..=5 {
        env.to(f64::from(s));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runs(&env.jobs, "s").await.len(), 1);
    let j = env.jobs.set_suspended("s", false).await.unwrap();
    assert_eq!(
        j.next_fire,
        Some(at(6.0)),
        "the suspended fire times are not run"
    );
    env.to(6.0);
    until_run(&env.jobs, "s", at(6.0), 0, RunState::Succeeded).await;
    assert_eq!(runs(&env.jobs, "s").await.len(), 2);
    // A manual run works while suspended, also at the very instant of a scheduled run.
    env.jobs.set_suspended("s", true).await.unwrap();
    let r = env.jobs.run_now("s").await.unwrap();
    assert_eq!(r.trigger, RunTrigger::Manual);
    assert_eq!(r.scheduled_at, at(6.0) + chrono::Duration::microseconds(1));
    until_run(&env.jobs, "s", r.scheduled_at, 0, RunState::Succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_follows_dst_and_definition_changes() {
    let env = Env::new().await;
    // 2024-03-31 in Berlin: 02:30 never happens; the run fires at 03:00 CEST = 01:00 UTC.
    let start = Utc.with_ymd_and_hms(2024, 3, 30, 12, 0, 0).unwrap();
    env.clock.set(start);
    env.jobs
        .create(spec(
            "dst",
            "30 2 * * *",
            &["sleep", "0"],
            json!({"time_zone": "Europe/Berlin"}),
        ))
        .await
        .unwrap();
    let j = env.jobs.get("dst").await.unwrap();
    assert_eq!(
        j.next_fire,
        Some(Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 0).unwrap())
    );
    assert_eq!(
        j.next_fire_local().as_deref(),
        Some("2024-03-31T03:00:00+02:00")
    );
    env.clock
        .set(Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 0).unwrap());
    until_run(
        &env.jobs,
        "dst",
        Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 0).unwrap(),
        0,
        RunState::Succeeded,
    )
    .await;
    // A new schedule wakes the timer for its earlier fire.
    let j = env
        .jobs
        .update(
            "dst",
            JobPatch {
                schedule: Some("*/10 * * * * *".into()),
                ..JobPatch::default()
            },
        )
        .await
        .unwrap();
    let next = j.next_fire.unwrap();
    assert_eq!(next, Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 10).unwrap());
    env.clock.set(next);
    until_run(&env.jobs, "dst", next, 0, RunState::Succeeded).await;
    // Invalid changes are refused, naming the field, and change nothing.
    let e = env
        .jobs
        .update(
            "dst",
            JobPatch {
                time_zone: Some("Europe/Nowhere".into()),
                ..JobPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("time_zone: "), "{e}");
    assert_eq!(
        env.jobs.get("dst").await.unwrap().spec.time_zone,
        "Europe/Berlin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scheduler_applies_the_missed_policy() {
    let env = Env::new().await;
    env.jobs
        .create(spec("each-minute", "* * * * *", &["sleep", "0"], json!({})))
        .await
        .unwrap();
    env.jobs
        .create(spec(
            "skipper",
            "* * * * *",
            &["sleep", "0"],
            json!({"missed": "skip"}),
        ))
        .await
        .unwrap();
    // The host "sleeps" two hours: 120 fire times pass at once.
    env.to(7200.0 + 30.0);
    let r = until_run(&env.jobs, "each-minute", at(7200.0), 0, RunState::Succeeded).await;
    assert_eq!(r.trigger, RunTrigger::CatchUp);
    let m = until_run(&env.jobs, "skipper", at(7200.0), 0, RunState::Missed).await;
    assert_eq!(
        m.error.as_deref(),
        Some("120 scheduled runs missed while the scheduler was stalled; policy skip")
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runs(&env.jobs, "each-minute").await.len(), 1);
    assert_eq!(env.runner.created("skipper"), 0);
    assert_eq!(
        env.jobs.get("each-minute").await.unwrap().next_fire,
        Some(at(7260.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete() {
    let env = Env::new().await;
    let mut s = spec("img", "@daily", &["x"], json!({}));
    s.container.image = "missing".into();
    let e = env.jobs.create(s).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    env.jobs
        .create(spec(
            "d",
            "* * * * * *",
            &["hang"],
            json!({"concurrency": "allow"}),
        ))
        .await
        .unwrap();
    let e = env
        .jobs
        .create(spec("d", "@daily", &["x"], json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobsError::Conflict(m) if m == "a job named d already exists"),
        "{e}"
    );
    env.to(1.0);
    env.to(2.0);
    eventually("two running", || async {
        (env.runner.running().len() == 2).then_some(())
    })
    .await;
    assert_eq!(env.jobs.get("d").await.unwrap().active_runs, 2);
    assert_eq!(env.jobs.list().await.unwrap()[0].active_runs, 2);
    env.jobs.delete("d").await.unwrap();
    assert!(env.runner.running().is_empty());
    assert!(
        env.runner.lock().containers.is_empty(),
        "containers removed"
    );
    assert!(matches!(
        env.jobs.get("d").await,
        Err(JobsError::NotFound(_))
    ));
    assert!(matches!(
        env.jobs.delete("d").await,
        Err(JobsError::NotFound(_))
    ));
    env.to(5.0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(env.runner.created("d"), 2, "a deleted job does not fire");
}

// ------------------------------------------------------------------------- crash and restart

/// One daemon incarnation: its own runtime (killing it is the crash) and store handle.
struct Daemon {
    rt: tokio::runtime::Runtime,
    jobs: Jobs,
    report: Recovery,
}

fn boot(db: &Path, runner: &Arc<FakeRunner>, clock: &Arc<FakeClock>) -> Daemon {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (jobs, report) = rt.block_on(async {
        let store = Store::open(db).await.unwrap();
        let jobs = Jobs::new(store, runner.clone(), clock.clone(), options());
        let report = jobs.start().await.unwrap();
        (jobs, report)
    });
    Daemon { rt, jobs, report }
}

impl Daemon {
    fn kill9(self) {
        self.rt.shutdown_background();
    }

    fn on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn runs(&self, job: &str) -> Vec<RunRow> {
        self.on(runs(&self.jobs, job))
    }
}

struct Disk {
    dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    runner: Arc<FakeRunner>,
}

impl Disk {
    fn new() -> Self {
        let clock = FakeClock::new(t0());
        Self {
            dir: tempfile::tempdir().unwrap(),
            runner: FakeRunner::new(clock.clone()),
            clock,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    fn boot(&self) -> Daemon {
        boot(&self.db(), &self.runner, &self.clock)
    }
}

#[test]
fn missed_fires_run_once_or_not_at_all_exactly_once_across_restarts() {
    let disk = Disk::new();
    let d = disk.boot();
    d.on(async {
        let every10 = "*/10 * * * * *";
        let j = &d.jobs;
        j.create(spec("once", every10, &["sleep", "0"], json!({})))
            .await
            .unwrap();
        j.create(spec(
            "skip",
            every10,
            &["sleep", "0"],
            json!({"missed": "skip"}),
        ))
        .await
        .unwrap();
        j.create(spec(
            "late",
            every10,
            &["sleep", "0"],
            json!({"starting_deadline_seconds": 3}),
        ))
        .await
        .unwrap();
        j.create(spec(
            "in-time",
            every10,
            &["sleep", "0"],
            json!({"starting_deadline_seconds": 30}),
        ))
        .await
        .unwrap();
    });
    d.kill9();
    // Down across 10, 20 and 30 s; up again at 35 s.
    disk.clock.set(at(35.0));
    let d = disk.boot();
    assert_eq!(d.report.catch_ups, 2, "{:?}", d.report);
    assert_eq!(d.report.missed, 2, "{:?}", d.report);
    let once = d.on(until_run(&d.jobs, "once", at(30.0), 0, RunState::Succeeded));
    assert_eq!(once.trigger, RunTrigger::CatchUp);
    let r = d.on(until_run(
        &d.jobs,
        "in-time",
        at(30.0),
        0,
        RunState::Succeeded,
    ));
    assert_eq!(r.trigger, RunTrigger::CatchUp);
    let skip = d.runs("skip");
    assert_eq!(skip.len(), 1, "{skip:?}");
    assert_eq!(skip[0].state, RunState::Missed);
    assert_eq!(
        skip[0].error.as_deref(),
        Some("3 scheduled runs missed while the daemon was down; policy skip")
    );
    let late = d.runs("late");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].state, RunState::Missed);
    assert!(
        late[0]
            .error
            .as_deref()
            .unwrap()
            .ends_with("the latest was 5 s late, past the starting deadline of 3 s"),
        "{late:?}"
    );
    assert_eq!(
        d.on(d.jobs.get("once")).unwrap().next_fire,
        Some(at(40.0)),
        "the schedule resumes from now"
    );
    d.kill9();
    // A second restart in the same window applies nothing again.
    disk.clock.set(at(36.0));
    let d = disk.boot();
    assert_eq!(
        (d.report.catch_ups, d.report.missed),
        (0, 0),
        "{:?}",
        d.report
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.runs("once").len(), 1);
    assert_eq!(d.runs("skip").len(), 1);
    assert_eq!(disk.runner.created("once"), 1);
    assert_eq!(disk.runner.created("skip"), 0);
    // And the schedule goes on.
    disk.clock.set(at(40.0));
    d.on(until_run(&d.jobs, "once", at(40.0), 0, RunState::Succeeded));
    d.kill9();
}

#[test]
fn a_fire_recorded_before_a_crash_starts_at_most_once() {
    let disk = Disk::new();
    disk.runner
        .lock()
        .block_before_create
        .insert("before".into());
    disk.runner.lock().block_after_create.insert("after".into());
    let d = disk.boot();
    d.on(async {
        for name in ["before", "after"] {
            d.jobs
                .create(spec(name, "*/10 * * * * *", &["sleep", "5"], json!({})))
                .await
                .unwrap();
        }
    });
    disk.clock.set(at(10.0));
    // "before": the row is committed, its container never created; "after": the container was
    // created and started, but the daemon died before recording it.
    d.on(until_run(&d.jobs, "before", at(10.0), 0, RunState::Pending));
    d.on(eventually("after's container", || async {
        (disk.runner.created("after") == 1).then_some(())
    }));
    let after_row = d.on(until_run(&d.jobs, "after", at(10.0), 0, RunState::Pending));
    d.kill9();
    disk.runner.lock().block_before_create.clear();
    disk.runner.lock().block_after_create.clear();
    disk.clock.set(at(12.0));
    let d = disk.boot();
    assert_eq!(d.report.adopted, 1, "{:?}", d.report);
    assert_eq!(d.report.catch_ups, 1, "{:?}", d.report);
    // "after": adopted by name, not created again; it ends at 15 s.
    let r = d.on(until_run(&d.jobs, "after", at(10.0), 0, RunState::Running));
    assert_eq!(r.id, after_row.id);
    // "before": never started, so it is the missed fire; run_once starts it now, same row.
    let b = d.on(until_run(&d.jobs, "before", at(10.0), 0, RunState::Running));
    assert_eq!(b.trigger, RunTrigger::CatchUp);
    disk.clock.set(at(17.0));
    d.on(until_run(
        &d.jobs,
        "after",
        at(10.0),
        0,
        RunState::Succeeded,
    ));
    d.on(until_run(
        &d.jobs,
        "before",
        at(10.0),
        0,
        RunState::Succeeded,
    ));
    assert_eq!(disk.runner.created("after"), 1);
    assert_eq!(disk.runner.created("before"), 1);
    assert_eq!(d.runs("before").len(), 1);
    d.kill9();
}

#[test]
fn running_runs_are_adopted_and_their_timeouts_kept_across_a_restart() {
    let disk = Disk::new();
    let d = disk.boot();
    let run = d.on(async {
        d.jobs
            .create(spec(
                "long",
                "@yearly",
                &["sleep", "20"],
                json!({"timeout_seconds": 30}),
            ))
            .await
            .unwrap();
        d.jobs
            .create(spec(
                "stuck",
                "@yearly",
                &["hang"],
                json!({"timeout_seconds": 30}),
            ))
            .await
            .unwrap();
        d.jobs.run_now("stuck").await.unwrap();
        d.jobs.run_now("long").await.unwrap()
    });
    d.kill9();
    disk.clock.set(at(10.0));
    let d = disk.boot();
    assert_eq!(d.report.adopted, 2);
    disk.clock.set(at(20.0));
    let r = d.on(until_run(
        &d.jobs,
        "long",
        run.scheduled_at,
        0,
        RunState::Succeeded,
    ));
    assert_eq!(r.container_id, run.container_id);
    // The timeout counts from the start before the restart: 30 s after 0, not after 10.
    disk.clock.set(at(30.0));
    let s = d.on(until_run(&d.jobs, "stuck", at(0.0), 0, RunState::Failed));
    assert!(s.error.unwrap().starts_with("timed out"));
    d.kill9();
}

#[test]
fn a_stored_definition_that_no_longer_parses_is_reported_and_never_fires() {
    let disk = Disk::new();
    let d = disk.boot();
    d.on(async {
        d.jobs
            .create(spec("good", "* * * * * *", &["sleep", "0"], json!({})))
            .await
            .unwrap();
        // As if the zone had been removed from the tz database of a newer build.
        let store = Store::open(&disk.db()).await.unwrap();
        let mut bad = serde_json::to_value(spec("bad", "@daily", &["x"], json!({}))).unwrap();
        bad["time_zone"] = json!("Gone/Zone");
        store
            .insert_job("bad", &bad.to_string(), false, Some(at(1.0)), at(0.0))
            .await
            .unwrap();
    });
    d.kill9();
    let d = disk.boot();
    assert_eq!((d.report.jobs, d.report.invalid), (2, 1), "{:?}", d.report);
    disk.clock.set(at(1.0));
    d.on(until_run(&d.jobs, "good", at(1.0), 0, RunState::Succeeded));
    std::thread::sleep(Duration::from_millis(50));
    assert!(d.runs("bad").is_empty());
    // It can be repaired through the API.
    let fixed = d.on(d.jobs.update(
        "bad",
        JobPatch {
            time_zone: Some("UTC".into()),
            ..JobPatch::default()
        },
    ));
    assert_eq!(fixed.unwrap().next_fire, Some(at(86400.0)));
    d.kill9();
}

/// Keeps the lifecycle events recorded, in order.
#[derive(Default)]
struct Recording(Mutex<Vec<inarray_runtime::events::LifecycleEvent>>);

impl inarray_runtime::events::EventSink for Recording {
    fn record(
        &self,
        event: inarray_runtime::events::LifecycleEvent,
    ) -> inarray_runtime::events::Recorded {
        self.0.lock().unwrap().push(event);
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_and_runs_are_lifecycle_events_in_order() {
    let env = Env::new().await;
    let sink = Arc::new(Recording::default());
    env.jobs.set_event_sink(sink.clone());
    env.jobs
        .create(spec("ev", "* * * * * *", &["fail", "3"], json!({})))
        .await
        .unwrap();
    env.to(1.0);
    until_run(&env.jobs, "ev", at(1.0), 0, RunState::Failed).await;
    let manual = env.jobs.run_now("ev").await.unwrap();
    until_run(&env.jobs, "ev", manual.scheduled_at, 0, RunState::Failed).await;
    let events = sink.0.lock().unwrap().clone();
    let of_run = |id: i64| {
        events
            .iter()
            .filter(|e| e.attributes["run_id"] == json!(id))
            .map(|e| e.kind.as_string())
            .collect::<Vec<_>>()
    };
    let first = runs(&env.jobs, "ev").await[0].id;
    for id in [first, manual.id] {
        assert_eq!(of_run(id), ["job.fire", "job.run_start", "job.run_end"]);
    }
    let end = events
        .iter()
        .find(|e| e.kind == inarray_runtime::events::EventType::JobRunEnd)
        .unwrap();
    assert_eq!((end.id.as_str(), end.name.as_str()), ("ev", "ev"));
    assert_eq!(end.attributes["state"], json!("failed"));
    assert_eq!(end.attributes["exit_code"], json!(3));
    assert_eq!(end.time, at(1.0), "the scheduler's clock");
    let fire = events
        .iter()
        .find(|e| e.attributes["run_id"] == json!(manual.id))
        .unwrap();
    assert_eq!(fire.attributes["trigger"], json!("manual"));
}
