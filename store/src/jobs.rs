//! Job rows (definitions and next-fire times) and run rows (one per attempt of a run).
//!
//! The jobs crate owns the meaning of `spec`; this module only keeps the rows and makes the writes
//! the scheduler relies on atomic: a run row and its job's new next-fire time are committed in one
//! transaction, and a whole batch of fires (1000 jobs due at the same instant) in one as well, so a
//! batch costs one fsync.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::{unique_conflict, Result, Store, StoreError};

#[derive(Clone, Debug)]
pub struct JobRow {
    pub name: String,
    /// JSON of the validated definition (owned by the jobs crate).
    pub spec: String,
    pub suspended: bool,
    /// The next scheduled instant; None while suspended.
    pub next_fire: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a run attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Recorded; its container is not (yet) running.
    Pending,
    Running,
    /// Its container exited with code 0.
    Succeeded,
    /// Its container exited with another code, could not start, timed out or was replaced.
    Failed,
    /// Not started: the concurrency policy `forbid` and a run still active.
    Skipped,
    /// Not started: the daemon was down (or stalled) at the scheduled instant.
    Missed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Missed => "missed",
        }
    }

    /// Pending and running attempts are active; the others are history.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            "missed" => Self::Missed,
            other => {
                return Err(StoreError::Corrupt {
                    what: "run state",
                    detail: other.to_owned(),
                })
            }
        })
    }
}

/// How a run came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// Its scheduled instant came.
    Schedule,
    /// `POST /v1/jobs/{name}/run`.
    Manual,
    /// The missed-run policy `run_once`, for an instant missed while the daemon was down.
    CatchUp,
}

impl RunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::CatchUp => "catch_up",
        }
    }
}

impl fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunTrigger {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "schedule" => Self::Schedule,
            "manual" => Self::Manual,
            "catch_up" => Self::CatchUp,
            other => {
                return Err(StoreError::Corrupt {
                    what: "run trigger",
                    detail: other.to_owned(),
                })
            }
        })
    }
}

/// One attempt of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: i64,
    pub trigger: RunTrigger,
    pub state: RunState,
    pub not_before: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub container_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

/// A run attempt to record. Pending ones get started; skipped and missed ones are history only.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub job: String,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: i64,
    pub trigger: RunTrigger,
    pub state: RunState,
    pub not_before: DateTime<Utc>,
    pub error: Option<String>,
}

/// A change to an existing run row.
#[derive(Clone, Debug)]
pub enum RunUpdate {
    /// Its container runs. `fired_at`, when given, replaces the batch's time with the moment
    /// the batch's commit completed.
    Running {
        id: i64,
        container_id: String,
        started_at: DateTime<Utc>,
        fired_at: Option<DateTime<Utc>>,
    },
    /// It ended (or will never start): succeeded, failed, skipped or missed.
    Finished {
        id: i64,
        state: RunState,
        container_id: Option<String>,
        exit_code: Option<i64>,
        error: Option<String>,
        finished_at: DateTime<Utc>,
        fired_at: Option<DateTime<Utc>>,
    },
    /// A pending row becomes the catch-up run of the missed-run policy.
    CatchUp { id: i64 },
}

/// Writes committed in one transaction: new run rows (a row that already exists — same job,
/// instant and attempt — is left as it is and not returned), next-fire times, run updates.
#[derive(Clone, Debug, Default)]
pub struct JobBatch {
    pub runs: Vec<NewRun>,
    pub next_fires: Vec<(String, Option<DateTime<Utc>>)>,
    pub updates: Vec<RunUpdate>,
}

impl JobBatch {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.next_fires.is_empty() && self.updates.is_empty()
    }
}

/// How many finished runs of each kind a job keeps (older ones are pruned with their containers).
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub succeeded: u32,
    pub failed: u32,
    /// Skipped and missed records.
    pub other: u32,
}

const JOB_COLUMNS: &str = "name, spec, suspended, next_fire, created_at, updated_at";
const RUN_COLUMNS: &str = "id, job, scheduled_at, attempt, trigger, state, not_before, fired_at, \
     container_id, started_at, finished_at, exit_code, error";

/// Timestamps as sqlx writes them for SQLite (RFC 3339, UTC, as many fraction digits as needed), so
/// that values written through JSON batches compare equal to bound ones (the run key includes one).
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn job_from(r: &sqlx::sqlite::SqliteRow) -> Result<JobRow> {
    use sqlx::Row;
    Ok(JobRow {
        name: r.try_get("name")?,
        spec: r.try_get("spec")?,
        suspended: r.try_get("suspended")?,
        next_fire: r.try_get("next_fire")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn run_from(r: &sqlx::sqlite::SqliteRow) -> Result<RunRow> {
    use sqlx::Row;
    let trigger: String = r.try_get("trigger")?;
    let state: String = r.try_get("state")?;
    Ok(RunRow {
        id: r.try_get("id")?,
        job: r.try_get("job")?,
        scheduled_at: r.try_get("scheduled_at")?,
        attempt: r.try_get("attempt")?,
        trigger: trigger.parse()?,
        state: state.parse()?,
        not_before: r.try_get("not_before")?,
        fired_at: r.try_get("fired_at")?,
        container_id: r.try_get("container_id")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        error: r.try_get("error")?,
    })
}

impl Store {
    /// Records a new job, created at `now` (the scheduler's clock); `Conflict` when the name is
    /// taken.
    pub async fn insert_job(
        &self,
        name: &str,
        spec: &str,
        suspended: bool,
        next_fire: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<JobRow> {
        sqlx::query(
            "INSERT INTO jobs (name, spec, suspended, next_fire, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(spec)
        .bind(suspended)
        .bind(next_fire)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "job", name))?;
        self.job(name).await?.ok_or_else(|| StoreError::Corrupt {
            what: "job",
            detail: format!("{name} vanished after insert"),
        })
    }

    pub async fn job(&self, name: &str) -> Result<Option<JobRow>> {
        let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(job_from).transpose()
    }

    /// Every job, by name.
    pub async fn list_jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from).collect()
    }

    /// Replaces a job's definition, suspension and next fire, updated at `now` (the scheduler's
    /// clock); false when there is no such job.
    pub async fn update_job(
        &self,
        name: &str,
        spec: &str,
        suspended: bool,
        next_fire: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET spec = ?, suspended = ?, next_fire = ?, updated_at = ? WHERE name = ?",
        )
        .bind(spec)
        .bind(suspended)
        .bind(next_fire)
        .bind(now)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a job and all its run rows.
    pub async fn delete_job(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM jobs WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Commits a batch in one transaction (see [`JobBatch`]); returns the run rows it inserted.
    /// `now` (the scheduler's clock) is the new runs' `fired_at`, and the `finished_at` of those
    /// recorded as skipped or missed.
    pub async fn commit_job_batch(&self, b: &JobBatch, now: DateTime<Utc>) -> Result<Vec<RunRow>> {
        if b.is_empty() {
            return Ok(Vec::new());
        }
        let now_t = now;
        let now = ts(now_t);
        let mut tx = self.pool.begin().await?;
        let mut inserted = Vec::new();
        if !b.runs.is_empty() {
            let runs: Vec<_> = b
                .runs
                .iter()
                .map(|r| {
                    json!([
                        r.job,
                        ts(r.scheduled_at),
                        r.attempt,
                        r.trigger.as_str(),
                        r.state.as_str(),
                        ts(r.not_before),
                        r.error,
                    ])
                })
                .collect();
            // Skipped and missed rows are finished the moment they are written. Only the keys
            // come back (decoding whole rows costs more than inserting them: this is on the
            // path of every fire); the rows are rebuilt from what was inserted.
            let keys: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "INSERT INTO job_runs (job, scheduled_at, attempt, trigger, state, not_before,
                   fired_at, error, finished_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                   value ->> 5, ?1, value ->> 6,
                   CASE WHEN value ->> 4 IN ('skipped', 'missed') THEN ?1 END
                 FROM json_each(?2) WHERE true
                 ON CONFLICT (job, scheduled_at, attempt) DO NOTHING
                 RETURNING id, job, scheduled_at, attempt",
            )
            .bind(&now)
            .bind(serde_json::Value::Array(runs).to_string())
            .fetch_all(&mut *tx)
            .await?;
            let by_key: HashMap<(&str, String, i64), &NewRun> = b
                .runs
                .iter()
                .map(|r| ((r.job.as_str(), ts(r.scheduled_at), r.attempt), r))
                .collect();
            for (id, job, at, attempt) in keys {
                let r = by_key.get(&(job.as_str(), at, attempt)).ok_or_else(|| {
                    StoreError::Corrupt {
                        what: "job run",
                        detail: format!("inserted run {id} of {job} matches no request"),
                    }
                })?;
                let finished = matches!(r.state, RunState::Skipped | RunState::Missed);
                inserted.push(RunRow {
                    id,
                    job: r.job.clone(),
                    scheduled_at: r.scheduled_at,
                    attempt,
                    trigger: r.trigger,
                    state: r.state,
                    not_before: r.not_before,
                    fired_at: now_t,
                    container_id: None,
                    started_at: None,
                    finished_at: finished.then_some(now_t),
                    exit_code: None,
                    error: r.error.clone(),
                });
            }
            inserted.sort_by_key(|r| r.id);
        }
        if !b.next_fires.is_empty() {
            let fires: Vec<_> = b
                .next_fires
                .iter()
                .map(|(job, t)| json!([job, t.map(ts)]))
                .collect();
            sqlx::query(
                "UPDATE jobs SET next_fire = f.value ->> 1
                 FROM json_each(?) AS f WHERE jobs.name = f.value ->> 0",
            )
            .bind(serde_json::Value::Array(fires).to_string())
            .execute(&mut *tx)
            .await?;
        }
        for u in &b.updates {
            apply_update(&mut tx, u).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Applies one run update (its own transaction).
    pub async fn update_run(&self, u: &RunUpdate) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        apply_update(&mut tx, u).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let r = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(run_from).transpose()
    }

    /// A job's run attempts, newest first (by scheduled instant, then attempt).
    pub async fn job_runs(&self, job: &str, limit: Option<u32>) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE job = ?
             ORDER BY scheduled_at DESC, attempt DESC, id DESC LIMIT ?"
        ))
        .bind(job)
        .bind(limit.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// Every pending or running attempt, oldest first (for the scheduler's start-up).
    pub async fn active_runs(&self) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE state IN ('pending', 'running')
             ORDER BY scheduled_at, attempt"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// How many attempts of `job` are pending or running.
    pub async fn active_run_count(&self, job: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM job_runs WHERE job = ? AND state IN ('pending', 'running')",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The number of pending or running attempts of every job that has any.
    pub async fn active_run_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT job, count(*) FROM job_runs WHERE state IN ('pending', 'running') GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The attempts of finished runs beyond `limits`, oldest runs first. A run (all attempts of one
    /// scheduled instant) counts by its last attempt's outcome; runs with an active attempt are
    /// never returned.
    pub async fn runs_beyond_history(
        &self,
        job: &str,
        limits: HistoryLimits,
    ) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(&format!(
            "WITH last AS (
               SELECT scheduled_at, max(attempt) AS attempt FROM job_runs WHERE job = ?1
               GROUP BY scheduled_at
               HAVING sum(state IN ('pending', 'running')) = 0
             ), outcome AS (
               SELECT l.scheduled_at,
                 CASE r.state WHEN 'succeeded' THEN 's' WHEN 'failed' THEN 'f' ELSE 'o' END AS kind
               FROM last l JOIN job_runs r
                 ON r.job = ?1 AND r.scheduled_at = l.scheduled_at AND r.attempt = l.attempt
             ), ranked AS (
               SELECT scheduled_at, kind,
                 row_number() OVER (PARTITION BY kind ORDER BY scheduled_at DESC) AS n
               FROM outcome
             )
             SELECT {RUN_COLUMNS} FROM job_runs WHERE job = ?1 AND scheduled_at IN (
               SELECT scheduled_at FROM ranked
               WHERE (kind = 's' AND n > ?2) OR (kind = 'f' AND n > ?3) OR (kind = 'o' AND n > ?4))
             ORDER BY scheduled_at, attempt"
        ))
        .bind(job)
        .bind(limits.succeeded)
        .bind(limits.failed)
        .bind(limits.other)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// Deletes run rows by id; returns how many went.
    pub async fn delete_runs(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query("DELETE FROM job_runs WHERE id IN (SELECT value FROM json_each(?))")
            .bind(serde_json::to_string(ids).expect("ids"))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

async fn apply_update(tx: &mut sqlx::SqliteConnection, u: &RunUpdate) -> Result<()> {
    match u {
        RunUpdate::Running {
            id,
            container_id,
            started_at,
            fired_at,
        } => {
            sqlx::query(
                "UPDATE job_runs SET state = 'running', container_id = ?, started_at = ?,
                   fired_at = coalesce(?, fired_at) WHERE id = ?",
            )
            .bind(container_id)
            .bind(started_at)
            .bind(fired_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        RunUpdate::Finished {
            id,
            state,
            container_id,
            exit_code,
            error,
            finished_at,
            fired_at,
        } => {
            sqlx::query(
                "UPDATE job_runs SET state = ?, container_id = coalesce(?, container_id),
                   exit_code = ?, error = ?, finished_at = ?, fired_at = coalesce(?, fired_at)
                 WHERE id = ?",
            )
            .bind(state.as_str())
            .bind(container_id)
            .bind(exit_code)
            .bind(error)
            .bind(finished_at)
            .bind(fired_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        RunUpdate::CatchUp { id } => {
            sqlx::query("UPDATE job_runs SET trigger = 'catch_up' WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
