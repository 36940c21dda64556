//! [`Jobs`]: the scheduler service.
//!
//! **Truth.** SQL holds the definitions, each job's next fire time and every run attempt. Memory
//! holds a copy of the definitions, a queue of next fires (earliest first) and the active runs;
//! every change to either goes through one async lock (`ops`), SQL first.
//!
//! **Timer.** One task sleeps until the earliest next fire (or until a definition changes), then
//! fires everything due in one SQL transaction: a `pending` run row per fire and the jobs' new
//! next-fire times, together. Only then are containers created, each named after its run row, so
//! a crash anywhere can neither lose a fire (the next-fire time did not move) nor run one twice
//! (the row exists, and at start its container is looked up by name before anything is started).
//!
//! **Start.** [`Jobs::start`] re-adopts active runs, applies the missed-run policy once to fire
//! times that passed while the daemon was down, and starts the timer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use inarray_runtime::events::{EventType, LifecycleEvent};
use inarray_runtime::RestartPolicy;
use inarray_store::{
    ContainerState, HistoryLimits, JobBatch, JobRow, NewRun, RunRow, RunState, RunTrigger,
    RunUpdate, Store, StoreError,
};
use tokio::sync::{oneshot, watch, Notify, Semaphore};

use crate::clock::Clock;
use crate::runner::Runner;
use crate::schedule::Schedule;
use crate::spec::{Concurrency, JobPatch, JobSpec, Missed};
use crate::JobsError;

type Result<T, E = JobsError> = std::result::Result<T, E>;

/// Tunables of the scheduler.
#[derive(Clone, Debug)]
pub struct JobsOptions {
    /// Run containers being created at once (each start spawns a shim).
    pub max_parallel_starts: usize,
    /// Delay before the first retry; it doubles for each further one.
    pub retry_backoff: Duration,
    pub retry_backoff_cap: Duration,
    /// Between SIGTERM and SIGKILL when a run times out.
    pub kill_grace: Duration,
    /// A fire handled later than this after its instant (a stalled or suspended host) is treated
    /// as missed: the missed-run policy applies. `starting_deadline_seconds` lowers it.
    pub late_limit: Duration,
    /// Skipped and missed records kept per job.
    pub kept_other: u32,
}

impl Default for JobsOptions {
    fn default() -> Self {
        Self {
            max_parallel_starts: 16,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_cap: Duration::from_secs(300),
            kill_grace: Duration::from_secs(5),
            late_limit: Duration::from_secs(60),
            kept_other: 10,
        }
    }
}

/// Missed fire times counted one by one up to this many.
const COUNT_CAP: usize = 1000;
/// How long deleting a job waits for its active runs to stop.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// A job as stored, with its state.
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: JobSpec,
    pub next_fire: Option<DateTime<Utc>>,
    pub active_runs: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// The next fire as local time in the job's zone (RFC 3339 with its offset).
    pub fn next_fire_local(&self) -> Option<String> {
        let tz = crate::schedule::parse_zone(&self.spec.time_zone).ok()?;
        self.next_fire.map(|t| {
            t.with_timezone(&tz)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
        })
    }
}

/// What [`Jobs::start`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub jobs: usize,
    /// Runs whose containers were found (running or ended): watched again.
    pub adopted: usize,
    /// Retry attempts that had not started yet: started (after their backoff).
    pub resumed: usize,
    /// Catch-up runs started under `missed: run_once`.
    pub catch_ups: usize,
    /// Jobs with fire times missed and not run (policy `skip`, past the deadline, or `forbid`).
    pub missed: usize,
    /// Runs recorded but never started before the daemon stopped.
    pub interrupted: usize,
    /// Stored definitions that no longer parse (never fired; logged).
    pub invalid: usize,
}

/// The scheduler; cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    runner: Arc<dyn Runner>,
    clock: Arc<dyn Clock>,
    opts: JobsOptions,
    /// Serializes changes to definitions and fires: SQL and memory move together.
    ops: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    wake: Notify,
    starts: Semaphore,
    started: AtomicBool,
    stopping: AtomicBool,
    /// Where the jobs' lifecycle events go (`set_event_sink`; none: not recorded).
    events: std::sync::OnceLock<inarray_runtime::events::Sink>,
}

/// A job's definition as the scheduler keeps it. The parsed schedule is not kept: croner's parsed
/// form takes about 5.5 KiB per job, the definition about 0.6 KiB; the schedule is parsed again
/// (some 15 µs) when a fire needs the instant after next, after that fire is committed.
struct Def {
    spec: JobSpec,
}

impl Def {
    fn schedule(&self) -> Result<Schedule> {
        Schedule::new(&self.spec.schedule, &self.spec.time_zone)
    }
}

/// A job's place in the timer queue: its next fire, and the one after, computed ahead so that a
/// fire commits the job's new next-fire time without parsing anything.
#[derive(Clone, Copy)]
struct Queued {
    next: DateTime<Utc>,
    following: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    defs: HashMap<String, Arc<Def>>,
    /// (next fire, job), one entry per job that has a next fire.
    queue: BTreeSet<(DateTime<Utc>, String)>,
    queued: HashMap<String, Queued>,
    /// The runs (all attempts of one instant) being driven, per job.
    active: HashMap<String, Vec<Active>>,
}

impl State {
    fn unqueue(&mut self, job: &str) -> Option<Queued> {
        let q = self.queued.remove(job)?;
        self.queue.remove(&(q.next, job.to_owned()));
        Some(q)
    }

    fn enqueue(
        &mut self,
        job: &str,
        next: Option<DateTime<Utc>>,
        following: Option<DateTime<Utc>>,
    ) {
        self.unqueue(job);
        if let Some(next) = next {
            self.queue.insert((next, job.to_owned()));
            self.queued
                .insert(job.to_owned(), Queued { next, following });
        }
    }

    fn is_active(&self, job: &str) -> bool {
        self.active.get(job).is_some_and(|v| !v.is_empty())
    }

    /// Asks every active run of `job` to stop; returns what to wait on.
    fn cancel_active(&self, job: &str, reason: &str) -> Vec<watch::Receiver<bool>> {
        self.active
            .get(job)
            .into_iter()
            .flatten()
            .map(|a| {
                let _ = a.cancel.send(Some(reason.to_owned()));
                a.done.clone()
            })
            .collect()
    }
}

struct Active {
    /// Id of the run's first attempt.
    key: i64,
    cancel: watch::Sender<Option<String>>,
    done: watch::Receiver<bool>,
}

/// Removes a run from the active ones when its task ends, however it ends.
struct ActiveGuard {
    inner: Arc<Inner>,
    job: String,
    key: i64,
    done: watch::Sender<bool>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.lock() {
            if let Some(v) = st.active.get_mut(&self.job) {
                v.retain(|a| a.key != self.key);
                if v.is_empty() {
                    st.active.remove(&self.job);
                }
            }
        }
        let _ = self.done.send(true);
    }
}

/// What a run task gets besides its row.
struct Ctl {
    cancel: watch::Receiver<Option<String>>,
    /// Runs this one replaces: it starts once they have ended.
    after: Vec<watch::Receiver<bool>>,
    /// Told once the first attempt has started (or failed to).
    started: Option<oneshot::Sender<()>>,
    /// When the fire's transaction committed (written with the first update).
    fired_at: Option<DateTime<Utc>>,
}

impl Ctl {
    fn cancelled(&self) -> Option<String> {
        self.cancel.borrow().clone()
    }

    async fn cancelled_wait(&mut self) -> String {
        let reason = self
            .cancel
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        match reason {
            Ok(r) => r,
            // The sender lives as long as the run is registered: no cancel can come any more.
            Err(_) => std::future::pending().await,
        }
    }

    fn tell_started(&mut self) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(());
        }
    }
}

/// The name of a run attempt's container: derived from its row, so that after a crash the
/// container (if it was created) is found by name.
pub fn container_name(job: &str, run_id: i64) -> String {
    format!("{job}.run-{run_id}")
}

fn spec_of(row: &JobRow) -> Result<JobSpec> {
    let mut spec: JobSpec = serde_json::from_str(&row.spec).map_err(|e| {
        JobsError::Store(StoreError::Corrupt {
            what: "job definition",
            detail: format!("{}: {e}", row.name),
        })
    })?;
    spec.suspend = row.suspended;
    Ok(spec)
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// Whether a run for instant `at` may still start at `now` under the job's deadline.
fn within_deadline(spec: &JobSpec, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    spec.starting_deadline_seconds
        .is_none_or(|d| now - at <= seconds(d))
}

/// The missed-run policy's verdict on fire times missed up to `now`, the latest being `latest`.
fn verdict(spec: &JobSpec, latest: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    match spec.missed {
        Missed::Skip => Err("policy skip".into()),
        Missed::RunOnce if within_deadline(spec, latest, now) => Ok(()),
        Missed::RunOnce => Err(format!(
            "the latest was {} s late, past the starting deadline of {} s",
            (now - latest).num_seconds(),
            spec.starting_deadline_seconds.unwrap_or_default()
        )),
    }
}

fn counted(n: usize) -> String {
    match n {
        1 => "1 scheduled run".into(),
        n if n >= COUNT_CAP => format!("over {COUNT_CAP} scheduled runs"),
        n => format!("{n} scheduled runs"),
    }
}

fn new_run(
    job: &str,
    at: DateTime<Utc>,
    trigger: RunTrigger,
    state: RunState,
    error: Option<String>,
) -> NewRun {
    NewRun {
        job: job.to_owned(),
        scheduled_at: at,
        attempt: 0,
        trigger,
        state,
        not_before: at,
        error,
    }
}

impl Jobs {
    pub fn new(
        store: Store,
        runner: Arc<dyn Runner>,
        clock: Arc<dyn Clock>,
        opts: JobsOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                runner,
                clock,
                starts: Semaphore::new(opts.max_parallel_starts.max(1)),
                opts,
                ops: tokio::sync::Mutex::new(()),
                state: Mutex::default(),
                wake: Notify::new(),
                started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                events: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sends the jobs' lifecycle events (`job.fire`, `job.run_start`, `job.run_end`) to `sink`
    /// from now on; set once, before [`Jobs::start`].
    pub fn set_event_sink(&self, sink: inarray_runtime::events::Sink) {
        let _ = self.inner.events.set(sink);
    }

    /// Records a job's event (at once, in order); the future completes once it is durable.
    fn emit(
        &self,
        kind: EventType,
        run: &RunRow,
        f: impl FnOnce(LifecycleEvent) -> LifecycleEvent,
    ) -> inarray_runtime::events::Recorded {
        match self.inner.events.get() {
            Some(sink) => sink.record(f(LifecycleEvent::new(kind, &run.job, &run.job)
                .at(self.now())
                .with("run_id", run.id)
                .with("attempt", run.attempt))),
            None => Box::pin(async {}),
        }
    }

    /// `job.fire` for each run a fire recorded (pending, or skipped or missed: history only).
    /// Not waited for: the runs' later events come after them in the log all the same.
    pub(crate) fn fired(&self, runs: &[RunRow]) {
        for run in runs {
            drop(self.emit(EventType::JobFire, run, |e| {
                e.with("scheduled_at", run.scheduled_at.to_rfc3339())
                    .with("trigger", run.trigger.as_str())
                    .with("state", run.state.as_str())
                    .with("error", run.error.clone())
            }));
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("scheduler state")
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    // ------------------------------------------------------------------ definitions

    /// Validates and records a job; its first fire is the first instant of its schedule after now.
    pub async fn create(&self, spec: JobSpec) -> Result<Job> {
        let schedule = spec.validate()?;
        self.inner.runner.check(&spec.container).await?;
        let _ops = self.inner.ops.lock().await;
        let next = if spec.suspend {
            None
        } else {
            schedule.next_after(self.now())
        };
        let json = serde_json::to_string(&spec).map_err(|e| JobsError::Internal(e.to_string()))?;
        self.inner
            .store
            .insert_job(&spec.name, &json, spec.suspend, next, self.now())
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    JobsError::Conflict(format!("a job named {} already exists", spec.name))
                }
                e => e.into(),
            })?;
        let name = spec.name.clone();
        let following = next.and_then(|t| schedule.next_after(t));
        {
            let mut st = self.state();
            st.defs.insert(name.clone(), Arc::new(Def { spec }));
            st.enqueue(&name, next, following);
        }
        self.inner.wake.notify_one();
        self.get(&name).await
    }

    async fn row(&self, name: &str) -> Result<JobRow> {
        self.inner
            .store
            .job(name)
            .await?
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))
    }

    pub async fn get(&self, name: &str) -> Result<Job> {
        let row = self.row(name).await?;
        let active_runs = self.inner.store.active_run_count(name).await?;
        Ok(Job {
            spec: spec_of(&row)?,
            next_fire: row.next_fire,
            active_runs,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    /// Every job, by name.
    pub async fn list(&self) -> Result<Vec<Job>> {
        let counts: HashMap<String, i64> = self
            .inner
            .store
            .active_run_counts()
            .await?
            .into_iter()
            .collect();
        self.inner
            .store
            .list_jobs()
            .await?
            .into_iter()
            .map(|row| {
                Ok(Job {
                    spec: spec_of(&row)?,
                    next_fire: row.next_fire,
                    active_runs: counts.get(&row.name).copied().unwrap_or(0),
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                })
            })
            .collect()
    }

    /// Applies a partial update. A new schedule, zone or a resume starts counting from now; runs
    /// already active keep the definition they started with.
    pub async fn update(&self, name: &str, patch: JobPatch) -> Result<Job> {
        let container_changed = patch.container.is_some();
        let ops = self.inner.ops.lock().await;
        let row = self.row(name).await?;
        let old = spec_of(&row)?;
        let spec = old.patched(patch);
        let schedule = spec.validate()?;
        if container_changed {
            self.inner.runner.check(&spec.container).await?;
        }
        let retimed = spec.schedule != old.schedule
            || spec.time_zone != old.time_zone
            || spec.suspend != old.suspend;
        let history_changed = spec.history != old.history;
        let next = match (spec.suspend, row.next_fire) {
            (true, _) => None,
            (false, Some(t)) if !retimed => Some(t),
            (false, _) => schedule.next_after(self.now()),
        };
        let json = serde_json::to_string(&spec).map_err(|e| JobsError::Internal(e.to_string()))?;
        if !self
            .inner
            .store
            .update_job(name, &json, spec.suspend, next, self.now())
            .await?
        {
            return Err(JobsError::NotFound(name.to_owned()));
        }
        let following = next.and_then(|t| schedule.next_after(t));
        {
            let mut st = self.state();
            st.defs.insert(name.to_owned(), Arc::new(Def { spec }));
            st.enqueue(name, next, following);
        }
        self.inner.wake.notify_one();
        drop(ops);
        if history_changed {
            let this = self.clone();
            let job = name.to_owned();
            tokio::spawn(async move { this.prune(&job).await });
        }
        self.get(name).await
    }

    /// Suspends (no fires until resumed; active runs go on) or resumes (fires from now on; the
    /// fire times that passed while suspended are not run).
    pub async fn set_suspended(&self, name: &str, suspend: bool) -> Result<Job> {
        self.update(
            name,
            JobPatch {
                suspend: Some(suspend),
                ..JobPatch::default()
            },
        )
        .await
    }

    /// Removes a job: stops its active runs, removes every run's container and its history.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _ops = self.inner.ops.lock().await;
        self.row(name).await?;
        let waits = {
            let mut st = self.state();
            st.defs.remove(name);
            st.unqueue(name);
            st.cancel_active(name, "the job was deleted")
        };
        for mut w in waits {
            let _ = tokio::time::timeout(STOP_WAIT, w.wait_for(|d| *d)).await;
        }
        for r in self.inner.store.job_runs(name, None).await? {
            if let Some(id) = &r.container_id {
                match self.inner.runner.remove(id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(job = %name, container = %id, error = %e, "cannot remove a run's container")
                    }
                }
            }
        }
        self.inner.store.delete_job(name).await?;
        Ok(())
    }

    /// A job's run attempts, newest first.
    pub async fn runs(&self, name: &str, limit: Option<u32>) -> Result<Vec<RunRow>> {
        self.row(name).await?;
        Ok(self.inner.store.job_runs(name, limit).await?)
    }

    /// Runs a job now (also when suspended); returns the run once its container has started or
    /// failed to. The concurrency policy applies: `forbid` refuses while a run is active.
    pub async fn run_now(&self, name: &str) -> Result<RunRow> {
        let started = {
            let _ops = self.inner.ops.lock().await;
            let row = self.row(name).await?;
            let def = Arc::new(Def {
                spec: spec_of(&row)?,
            });
            if def.spec.concurrency == Concurrency::Forbid && self.state().is_active(name) {
                return Err(JobsError::Conflict(format!(
                    "job {name} has an active run and its concurrency policy is forbid"
                )));
            }
            // Keyed by the instant asked; should a run of the job have exactly that instant (a
            // scheduled one, to the nanosecond), the next microsecond.
            let now = self.now();
            let mut at = now;
            let mut run = None;
            for _ in 0..3 {
                let batch = JobBatch {
                    runs: vec![NewRun {
                        not_before: now,
                        ..new_run(name, at, RunTrigger::Manual, RunState::Pending, None)
                    }],
                    ..JobBatch::default()
                };
                run = self
                    .inner
                    .store
                    .commit_job_batch(&batch, self.now())
                    .await?
                    .pop();
                if run.is_some() {
                    break;
                }
                at += chrono::Duration::microseconds(1);
            }
            let Some(run) = run else {
                return Err(JobsError::Conflict(format!(
                    "job {name} already has runs for {at} and just before"
                )));
            };
            self.fired(std::slice::from_ref(&run));
            let fired_at = self.now();
            let (tx, rx) = oneshot::channel();
            let mut st = self.state();
            let after = if def.spec.concurrency == Concurrency::Replace {
                st.cancel_active(name, &format!("replaced by the manual run {}", run.id))
            } else {
                Vec::new()
            };
            let id = run.id;
            let task = self.register(&mut st, def, run, after, Some(tx), Some(fired_at));
            drop(st);
            tokio::spawn(task);
            (id, rx)
        };
        let (id, rx) = started;
        let _ = rx.await;
        self.inner
            .store
            .run(id)
            .await?
            .ok_or_else(|| JobsError::Internal(format!("run {id} vanished")))
    }

    // ---------------------------------------------------------------- the timer

    /// Recovers (see the module documentation), then starts the timer. Call once, after the
    /// container manager has reconciled.
    pub async fn start(&self) -> Result<Recovery> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Err(JobsError::Internal(
                "the scheduler is already started".into(),
            ));
        }
        let report = self.recover().await?;
        let this = self.clone();
        tokio::spawn(async move { this.run_loop().await });
        Ok(report)
    }

    /// Stops the timer (runs go on; their containers outlive the daemon anyway).
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    async fn run_loop(self) {
        let inner = &self.inner;
        while !inner.stopping.load(Ordering::SeqCst) {
            let notified = inner.wake.notified();
            let first = self.state().queue.first().map(|(t, _)| *t);
            match first {
                Some(t) => {
                    tokio::select! {
                        () = inner.clock.sleep_until(t) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
            if inner.stopping.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = self.fire_due().await {
                tracing::error!(error = %e, "firing due jobs failed; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn late_limit(&self, spec: &JobSpec) -> chrono::Duration {
        let limit =
            chrono::Duration::from_std(self.inner.opts.late_limit).unwrap_or(chrono::Duration::MAX);
        match spec.starting_deadline_seconds {
            Some(d) => limit.min(seconds(d)),
            None => limit,
        }
    }

    /// Fires every job whose next fire has come, in one transaction.
    async fn fire_due(&self) -> Result<()> {
        let _ops = self.inner.ops.lock().await;
        let now = self.now();
        let mut batch = JobBatch::default();
        let mut undo = Vec::new();
        let mut refill = Vec::new();
        {
            let mut st = self.state();
            let due: Vec<(DateTime<Utc>, String)> = st
                .queue
                .iter()
                .take_while(|(t, _)| *t <= now)
                .cloned()
                .collect();
            for (t, name) in due {
                let following = st.unqueue(&name).and_then(|q| q.following);
                let Some(def) = st.defs.get(&name).cloned() else {
                    continue;
                };
                let next = if now - t > self.late_limit(&def.spec) {
                    // The host stalled (suspended VM, overload): like a daemon that was down.
                    let schedule = match def.schedule() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(job = %name, error = %e, "stored schedule no longer parses; the job stops firing");
                            continue;
                        }
                    };
                    let latest = schedule
                        .last_at_or_before(now)
                        .filter(|l| *l >= t)
                        .unwrap_or(t);
                    let n = schedule.count_between(t, now, COUNT_CAP);
                    match verdict(&def.spec, latest, now) {
                        Ok(()) => batch.runs.push(self.fire_row(
                            &st,
                            &def.spec,
                            latest,
                            RunTrigger::CatchUp,
                        )),
                        Err(why) => batch.runs.push(new_run(
                            &name,
                            latest,
                            RunTrigger::Schedule,
                            RunState::Missed,
                            Some(format!(
                                "{} missed while the scheduler was stalled; {why}",
                                counted(n)
                            )),
                        )),
                    }
                    schedule.next_after(now)
                } else {
                    batch
                        .runs
                        .push(self.fire_row(&st, &def.spec, t, RunTrigger::Schedule));
                    match following {
                        Some(f) => Some(f),
                        None => def.schedule().ok().and_then(|s| s.next_after(t)),
                    }
                };
                batch.next_fires.push((name.clone(), next));
                undo.push((t, name.clone(), following));
                // The instant after `next` is computed once this batch is committed.
                st.enqueue(&name, next, None);
                if let Some(n) = next {
                    refill.push((name.clone(), def, n));
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let decided = std::time::Instant::now();
        let decided_at = self.now();
        let inserted = match self.inner.store.commit_job_batch(&batch, decided_at).await {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing was recorded: the instants stay due and fire at the next attempt.
                let mut st = self.state();
                for (t, name, following) in undo {
                    st.enqueue(&name, Some(t), following);
                }
                return Err(e.into());
            }
        };
        let fired_at = self.now();
        self.fired(&inserted);
        if let Some(first) = batch.runs.iter().map(|r| r.scheduled_at).min() {
            tracing::debug!(
                fires = batch.runs.len(),
                woke_late_ms = (now - first).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                decided_ms = (decided_at - now).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                commit_ms = decided.elapsed().as_secs_f64() * 1000.0,
                "fired"
            );
        }
        let mut history_only = HashSet::new();
        let mut tasks = Vec::new();
        {
            let mut st = self.state();
            for run in inserted {
                let Some(def) = st.defs.get(&run.job).cloned() else {
                    continue;
                };
                if run.state != RunState::Pending {
                    history_only.insert(run.job.clone());
                    continue;
                }
                let after = if def.spec.concurrency == Concurrency::Replace {
                    st.cancel_active(
                        &run.job,
                        &format!("replaced by the run scheduled at {}", run.scheduled_at),
                    )
                } else {
                    Vec::new()
                };
                tasks.push(self.register(&mut st, def, run, after, None, Some(fired_at)));
            }
        }
        for task in tasks {
            tokio::spawn(task);
        }
        for job in history_only {
            let this = self.clone();
            tokio::spawn(async move { this.prune(&job).await });
        }
        // Off the fires' path: the instant after each new next fire.
        let followings: Vec<_> = refill
            .into_iter()
            .map(|(name, def, next)| {
                let f = def.schedule().ok().and_then(|s| s.next_after(next));
                (name, next, f)
            })
            .collect();
        let mut st = self.state();
        for (name, next, f) in followings {
            if let Some(q) = st.queued.get_mut(&name) {
                if q.next == next {
                    q.following = f;
                }
            }
        }
        Ok(())
    }

    /// The row a fire records: pending, or skipped when `forbid` and a run is active.
    fn fire_row(
        &self,
        st: &State,
        spec: &JobSpec,
        at: DateTime<Utc>,
        trigger: RunTrigger,
    ) -> NewRun {
        if spec.concurrency == Concurrency::Forbid && st.is_active(&spec.name) {
            new_run(
                &spec.name,
                at,
                trigger,
                RunState::Skipped,
                Some("the previous run is still active (concurrency forbid)".into()),
            )
        } else {
            new_run(&spec.name, at, trigger, RunState::Pending, None)
        }
    }

    // --------------------------------------------------------------------- runs

    /// Registers a run as active; returns the task that drives it, to be spawned once the state
    /// lock is released (the task's end takes that lock).
    fn register(
        &self,
        st: &mut State,
        def: Arc<Def>,
        run: RunRow,
        after: Vec<watch::Receiver<bool>>,
        started: Option<oneshot::Sender<()>>,
        fired_at: Option<DateTime<Utc>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (cancel_tx, cancel_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        st.active.entry(run.job.clone()).or_default().push(Active {
            key: run.id,
            cancel: cancel_tx,
            done: done_rx,
        });
        let guard = ActiveGuard {
            inner: self.inner.clone(),
            job: run.job.clone(),
            key: run.id,
            done: done_tx,
        };
        let ctl = Ctl {
            cancel: cancel_rx,
            after,
            started,
            fired_at,
        };
        self.clone().drive(def, run, ctl, guard)
    }

    /// Drives one run: its attempts (retries with backoff) until one succeeds, the retries are
    /// used up, or it is cancelled; then prunes the history.
    async fn drive(self, def: Arc<Def>, mut run: RunRow, mut ctl: Ctl, guard: ActiveGuard) {
        for mut prev in std::mem::take(&mut ctl.after) {
            let _ = tokio::time::timeout(STOP_WAIT, prev.wait_for(|d| *d)).await;
        }
        loop {
            let failed = match self.attempt(&def, &run, &mut ctl).await {
                Ok(failed) => failed,
                Err(e) => {
                    tracing::error!(job = %run.job, run = run.id, error = %e, "driving a run failed");
                    break;
                }
            };
            ctl.tell_started();
            if !failed || ctl.cancelled().is_some() || run.attempt >= i64::from(def.spec.retries) {
                break;
            }
            let delay = self.backoff(run.attempt);
            let next = NewRun {
                not_before: self.now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                attempt: run.attempt + 1,
                state: RunState::Pending,
                error: None,
                ..new_run(
                    &run.job,
                    run.scheduled_at,
                    run.trigger,
                    RunState::Pending,
                    None,
                )
            };
            let batch = JobBatch {
                runs: vec![next],
                ..JobBatch::default()
            };
            match self.inner.store.commit_job_batch(&batch, self.now()).await {
                Ok(mut rows) if rows.len() == 1 => run = rows.remove(0),
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(job = %run.job, error = %e, "cannot record a retry");
                    break;
                }
            }
        }
        ctl.tell_started();
        let job = run.job.clone();
        drop(guard);
        self.prune(&job).await;
    }

    fn backoff(&self, attempt: i64) -> Duration {
        let shift = u32::try_from(attempt.clamp(0, 20)).unwrap_or(20);
        self.inner
            .opts
            .retry_backoff
            .saturating_mul(1u32 << shift)
            .min(self.inner.opts.retry_backoff_cap)
    }

    /// One attempt: start its container (unless it runs already), wait for its end, a timeout or
    /// a cancel, record the outcome. Returns whether it failed.
    async fn attempt(&self, def: &Def, run: &RunRow, ctl: &mut Ctl) -> Result<bool> {
        let inner = &self.inner;
        let (id, started_at) = match (&run.container_id, run.started_at) {
            (Some(id), Some(at)) if run.state == RunState::Running => (id.clone(), at),
            _ => {
                if run.not_before > self.now() {
                    tokio::select! {
                        () = inner.clock.sleep_until(run.not_before) => {}
                        reason = ctl.cancelled_wait() => {
                            self.finish(run, RunState::Failed, None, None, Some(reason), ctl).await?;
                            return Ok(true);
                        }
                    }
                }
                let permit = inner
                    .starts
                    .acquire()
                    .await
                    .map_err(|e| JobsError::Internal(e.to_string()))?;
                if let Some(reason) = ctl.cancelled() {
                    self.finish(run, RunState::Failed, None, None, Some(reason), ctl)
                        .await?;
                    return Ok(true);
                }
                let mut cfg = def.spec.container.clone();
                cfg.name = Some(container_name(&run.job, run.id));
                cfg.start = true;
                cfg.restart = RestartPolicy::No;
                let result = inner.runner.run(cfg).await;
                drop(permit);
                match result {
                    Ok(id) => {
                        let at = self.now();
                        inner
                            .store
                            .update_run(&RunUpdate::Running {
                                id: run.id,
                                container_id: id.clone(),
                                started_at: at,
                                fired_at: ctl.fired_at.take(),
                            })
                            .await?;
                        self.emit(EventType::JobRunStart, run, |e| {
                            e.with("container_id", id.as_str())
                        })
                        .await;
                        ctl.tell_started();
                        (id, at)
                    }
                    Err(e) => {
                        let container_id = match &e {
                            JobsError::Start { container_id, .. } => container_id.clone(),
                            _ => None,
                        };
                        self.finish(
                            run,
                            RunState::Failed,
                            container_id,
                            None,
                            Some(format!("cannot start: {e}")),
                            ctl,
                        )
                        .await?;
                        return Ok(true);
                    }
                }
            }
        };
        let deadline = def
            .spec
            .timeout_seconds
            .map(|s| (s, started_at + seconds(s)));
        let timeout = async {
            match deadline {
                Some((_, at)) => inner.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut why = None;
        let exit = tokio::select! {
            r = inner.runner.wait(&id) => r,
            () = timeout => {
                let s = deadline.map(|(s, _)| s).unwrap_or_default();
                why = Some(format!("timed out after {s} s: stopped"));
                if let Err(e) = inner.runner.stop(&id, inner.opts.kill_grace).await {
                    tracing::warn!(job = %run.job, container = %id, error = %e, "cannot stop a timed-out run");
                }
                inner.runner.wait(&id).await
            }
            reason = ctl.cancelled_wait() => {
                why = Some(reason);
                if let Err(e) = inner.runner.stop(&id, Duration::ZERO).await {
                    tracing::warn!(job = %run.job, container = %id, error = %e, "cannot stop a run");
                }
                inner.runner.wait(&id).await
            }
        };
        let (state, code, error) = match exit {
            Ok(x) => match (why, x.exit_code) {
                (None, Some(0)) => (RunState::Succeeded, Some(0), None),
                (Some(w), code) => (RunState::Failed, code, Some(w)),
                (None, Some(c)) => (
                    RunState::Failed,
                    Some(c),
                    Some(format!("exited with code {c}")),
                ),
                (None, None) => (
                    RunState::Failed,
                    None,
                    Some(
                        x.error
                            .unwrap_or_else(|| "ended without an exit code".into()),
                    ),
                ),
            },
            Err(e) if e.is_not_found() => (
                RunState::Failed,
                None,
                Some("the run's container was removed while it ran".into()),
            ),
            Err(e) => (RunState::Failed, None, Some(e.to_string())),
        };
        self.finish(run, state, Some(id), code, error, ctl).await?;
        Ok(state != RunState::Succeeded)
    }

    async fn finish(
        &self,
        run: &RunRow,
        state: RunState,
        container_id: Option<String>,
        exit_code: Option<i64>,
        error: Option<String>,
        ctl: &mut Ctl,
    ) -> Result<()> {
        let (cid, err) = (container_id.clone(), error.clone());
        self.inner
            .store
            .update_run(&RunUpdate::Finished {
                id: run.id,
                state,
                container_id,
                exit_code,
                error,
                finished_at: self.now(),
                fired_at: ctl.fired_at.take(),
            })
            .await?;
        self.emit(EventType::JobRunEnd, run, |e| {
            e.with("state", state.as_str())
                .with("container_id", cid)
                .with("exit_code", exit_code)
                .with("error", err)
        })
        .await;
        Ok(())
    }

    /// Deletes the runs beyond the job's history limits, containers first.
    async fn prune(&self, job: &str) {
        let Some(def) = self.state().defs.get(job).cloned() else {
            return;
        };
        let limits = HistoryLimits {
            succeeded: def.spec.history.successful,
            failed: def.spec.history.failed,
            other: self.inner.opts.kept_other,
        };
        let rows = match self.inner.store.runs_beyond_history(job, limits).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot read the run history");
                return;
            }
        };
        let mut gone = Vec::new();
        for r in rows {
            if let Some(id) = &r.container_id {
                match self.inner.runner.remove(id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(job, container = %id, error = %e, "cannot remove an old run's container");
                        continue;
                    }
                }
            }
            gone.push(r.id);
        }
        if let Err(e) = self.inner.store.delete_runs(&gone).await {
            tracing::warn!(job, error = %e, "cannot delete old runs");
        }
    }
}

mod recovery;
#[cfg(test)]
mod tests;
