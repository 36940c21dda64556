//! `/v1/jobs`: scheduled jobs. Each handler is one call on the scheduler ([`inarray_jobs::Jobs`]),
//! a part of the router's state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use inarray_jobs::{Concurrency, History, Job, JobPatch, JobSpec, Jobs, Missed};
use inarray_runtime::ContainerConfig;
use inarray_store::{RunRow, RunState, RunTrigger};
use serde::{Deserialize, Serialize};

use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route(
            "/v1/jobs/{name}",
            get(get_job).patch(update_job).delete(delete_job),
        )
        .route("/v1/jobs/{name}/run", post(run_job))
        .route("/v1/jobs/{name}/runs", get(job_runs))
        .route("/v1/jobs/{name}/suspend", post(suspend_job))
        .route("/v1/jobs/{name}/resume", post(resume_job))
}

/// The job object of the API: the definition, then its state.
#[derive(Serialize)]
pub struct JobView {
    pub name: String,
    pub schedule: String,
    pub time_zone: String,
    pub container: ContainerConfig,
    pub concurrency: Concurrency,
    pub missed: Missed,
    pub starting_deadline_seconds: Option<u64>,
    pub suspend: bool,
    pub history: History,
    pub timeout_seconds: Option<u64>,
    pub retries: u32,
    /// The next scheduled instant (UTC); null while suspended.
    pub next_fire: Option<DateTime<Utc>>,
    /// The same instant as wall-clock time in the job's zone.
    pub next_fire_local: Option<String>,
    pub active_runs: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let next_fire_local = j.next_fire_local();
        let s = j.spec;
        Self {
            name: s.name,
            schedule: s.schedule,
            time_zone: s.time_zone,
            container: s.container,
            concurrency: s.concurrency,
            missed: s.missed,
            starting_deadline_seconds: s.starting_deadline_seconds,
            suspend: s.suspend,
            history: s.history,
            timeout_seconds: s.timeout_seconds,
            retries: s.retries,
            next_fire: j.next_fire,
            next_fire_local,
            active_runs: j.active_runs,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

/// One attempt of a run.
#[derive(Serialize)]
pub struct RunView {
    pub id: i64,
    pub job: String,
    /// The instant the run is for (a manual run: when it was asked for).
    pub scheduled_at: DateTime<Utc>,
    pub trigger: RunTrigger,
    /// 0, then 1, 2, … for retries.
    pub attempt: i64,
    pub state: RunState,
    /// The attempt's container (`<job>.run-<id>`); null for skipped and missed records.
    pub container_name: Option<String>,
    pub container_id: Option<String>,
    /// Where its output is: `/v1/containers/{container_id}/logs`.
    pub logs: Option<String>,
    /// The earliest start (the end of a retry's backoff).
    pub not_before: DateTime<Utc>,
    /// When the scheduler committed the run: its lateness is `fired_at - scheduled_at`.
    pub fired_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

impl From<RunRow> for RunView {
    fn from(r: RunRow) -> Self {
        let container_name = match r.state {
            RunState::Skipped | RunState::Missed => None,
            _ => Some(inarray_jobs::scheduler::container_name(&r.job, r.id)),
        };
        Self {
            logs: r
                .container_id
                .as_ref()
                .map(|id| format!("/v1/containers/{id}/logs")),
            id: r.id,
            job: r.job,
            scheduled_at: r.scheduled_at,
            trigger: r.trigger,
            attempt: r.attempt,
            state: r.state,
            container_name,
            container_id: r.container_id,
            not_before: r.not_before,
            fired_at: r.fired_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            error: r.error,
        }
    }
}

async fn list_jobs(State(j): State<Jobs>) -> Result<axum::Json<Vec<JobView>>, ApiError> {
    Ok(axum::Json(
        j.list().await?.into_iter().map(JobView::from).collect(),
    ))
}

async fn create_job(
    State(j): State<Jobs>,
    Caller(who): Caller,
    Json(spec): Json<JobSpec>,
) -> Result<Response, ApiError> {
    crate::containers::privileged_ports(&who, &spec.container, "container.")?;
    let job = j.create(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(JobView::from(job))).into_response())
}

async fn get_job(
    State(j): State<Jobs>,
    Path(name): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    Ok(axum::Json(j.get(&name).await?.into()))
}

async fn update_job(
    State(j): State<Jobs>,
    Path(name): Path<String>,
    Caller(who): Caller,
    Json(patch): Json<JobPatch>,
) -> Result<axum::Json<JobView>, ApiError> {
    if let Some(c) = &patch.container {
        crate::containers::privileged_ports(&who, c, "container.")?;
    }
    Ok(axum::Json(j.update(&name, patch).await?.into()))
}

async fn delete_job(
    State(j): State<Jobs>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    j.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_job(State(j): State<Jobs>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let run = j.run_now(&name).await?;
    Ok((StatusCode::CREATED, axum::Json(RunView::from(run))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<u32>,
}

async fn job_runs(
    State(j): State<Jobs>,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<axum::Json<Vec<RunView>>, ApiError> {
    if let Some(l) = q.limit {
        if !(1..=10_000).contains(&l) {
            return Err(ApiError::bad_request(format!(
                "limit: {l} is not between 1 and 10000"
            )));
        }
    }
    Ok(axum::Json(
        j.runs(&name, q.limit)
            .await?
            .into_iter()
            .map(RunView::from)
            .collect(),
    ))
}

async fn suspend_job(
    State(j): State<Jobs>,
    Path(name): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    Ok(axum::Json(j.set_suspended(&name, true).await?.into()))
}

async fn resume_job(
    State(j): State<Jobs>,
    Path(name): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    Ok(axum::Json(j.set_suspended(&name, false).await?.into()))
}
