//! The job definition (the body of `POST /v1/jobs`), its partial update, and their validation.
//! Every error names the field. Cron expressions, names, env and arguments are data: nothing here
//! or downstream ever hands them to a shell.

use inarray_runtime::{ContainerConfig, RestartPolicy};
use serde::{Deserialize, Deserializer, Serialize};

use crate::schedule::Schedule;
use crate::JobsError;

pub const MAX_SECONDS: u64 = 366 * 24 * 3600;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_HISTORY: u32 = 1000;

/// A job: a schedule and the container each run starts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// 5-field cron, 6-field with seconds first, or a shorthand (`@hourly`, `@daily`, …).
    pub schedule: String,
    /// IANA name; the schedule is read as wall-clock time there.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The same shape as `POST /v1/containers`, without `name`, with restart policy `no`.
    pub container: ContainerConfig,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default)]
    pub missed: Missed,
    /// How late a run may start and still be started (missed runs at daemon start, a stalled
    /// scheduler); `None`: no limit.
    #[serde(default)]
    pub starting_deadline_seconds: Option<u64>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub history: History,
    /// A run still going after this long is killed (SIGTERM, SIGKILL after a grace period).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Further attempts after a failed one (backoff 1 s doubling, capped at 5 min).
    #[serde(default)]
    pub retries: u32,
}

fn utc() -> String {
    "UTC".into()
}

/// What a fire does while an earlier run of the job is still active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start another run alongside.
    Allow,
    /// Do not start; record the fire as skipped. The default: maintenance of the same data
    /// should not run twice at once.
    #[default]
    Forbid,
    /// Kill the active run, then start.
    Replace,
}

/// What happens to fire times missed while the daemon was down (or the scheduler stalled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Record them as missed; run nothing.
    Skip,
    /// Run once, for the latest missed instant, if it is within `starting_deadline_seconds`.
    #[default]
    RunOnce,
}

/// How many finished runs to keep; older ones are deleted with their containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    #[serde(default = "three")]
    pub successful: u32,
    #[serde(default = "one")]
    pub failed: u32,
}

fn three() -> u32 {
    3
}

fn one() -> u32 {
    1
}

impl Default for History {
    fn default() -> Self {
        Self {
            successful: 3,
            failed: 1,
        }
    }
}

/// A partial update (`PATCH /v1/jobs/{name}`): each field given replaces the stored one; `null`
/// clears the two optional limits. The name cannot change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub container: Option<ContainerConfig>,
    pub concurrency: Option<Concurrency>,
    pub missed: Option<Missed>,
    #[serde(default, deserialize_with = "present")]
    pub starting_deadline_seconds: Option<Option<u64>>,
    pub suspend: Option<bool>,
    pub history: Option<HistoryPatch>,
    #[serde(default, deserialize_with = "present")]
    pub timeout_seconds: Option<Option<u64>>,
    pub retries: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryPatch {
    pub successful: Option<u32>,
    pub failed: Option<u32>,
}

/// A field that is present (possibly `null`) deserializes to `Some(…)`; an absent one stays `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> JobsError {
    JobsError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Job names: [`inarray_store::names::JOB`] (a run's container is named `<job>.run-<n>`).
pub fn validate_name(name: &str) -> Result<(), JobsError> {
    inarray_store::names::JOB
        .check(name)
        .map_err(|reason| bad("name", reason))
}

fn check_seconds(field: &str, v: Option<u64>) -> Result<(), JobsError> {
    match v {
        Some(0) => Err(bad(field, "must be at least 1 (or null for no limit)")),
        Some(s) if s > MAX_SECONDS => Err(bad(
            field,
            format!("{s} is over the maximum of {MAX_SECONDS} seconds (366 days)"),
        )),
        _ => Ok(()),
    }
}

impl JobSpec {
    /// Checks everything that can be checked without the image store; returns the schedule.
    pub fn validate(&self) -> Result<Schedule, JobsError> {
        validate_name(&self.name)?;
        let schedule = Schedule::new(&self.schedule, &self.time_zone)?;
        let c = &self.container;
        if c.name.is_some() {
            return Err(bad(
                "container.name",
                "is chosen by the scheduler (\"<job>.run-<n>\"); leave it out",
            ));
        }
        if c.restart != RestartPolicy::No {
            return Err(bad(
                "container.restart",
                "must be \"no\": a job's failed runs are retried through `retries`",
            ));
        }
        if c.auto_remove {
            return Err(bad(
                "container.auto_remove",
                "must be false: a job keeps its runs' containers (see `history`)",
            ));
        }
        if !c.start {
            return Err(bad(
                "container.start",
                "must be true: a run starts its container",
            ));
        }
        c.validate()
            .map_err(|e| bad(format!("container.{}", e.field), e.reason))?;
        check_seconds("starting_deadline_seconds", self.starting_deadline_seconds)?;
        check_seconds("timeout_seconds", self.timeout_seconds)?;
        if self.retries > MAX_RETRIES {
            return Err(bad(
                "retries",
                format!("{} is over the maximum of {MAX_RETRIES}", self.retries),
            ));
        }
        for (field, n) in [
            ("history.successful", self.history.successful),
            ("history.failed", self.history.failed),
        ] {
            if n > MAX_HISTORY {
                return Err(bad(
                    field,
                    format!("{n} is over the maximum of {MAX_HISTORY}"),
                ));
            }
        }
        Ok(schedule)
    }

    /// The definition with `patch` applied (not yet validated).
    pub fn patched(&self, patch: JobPatch) -> JobSpec {
        let mut s = self.clone();
        if let Some(v) = patch.schedule {
            s.schedule = v;
        }
        if let Some(v) = patch.time_zone {
            s.time_zone = v;
        }
        if let Some(v) = patch.container {
            s.container = v;
        }
        if let Some(v) = patch.concurrency {
            s.concurrency = v;
        }
        if let Some(v) = patch.missed {
            s.missed = v;
        }
        if let Some(v) = patch.starting_deadline_seconds {
            s.starting_deadline_seconds = v;
        }
        if let Some(v) = patch.suspend {
            s.suspend = v;
        }
        if let Some(h) = patch.history {
            if let Some(v) = h.successful {
                s.history.successful = v;
            }
            if let Some(v) = h.failed {
                s.history.failed = v;
            }
        }
        if let Some(v) = patch.timeout_seconds {
            s.timeout_seconds = v;
        }
        if let Some(v) = patch.retries {
            s.retries = v;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<JobSpec, String> {
        let s: JobSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn defaults() {
        let s = spec(r#"{"name":"n","schedule":"@daily","container":{"image":"b"}}"#).unwrap();
        assert_eq!(s.time_zone, "UTC");
        assert_eq!(s.concurrency, Concurrency::Forbid);
        assert_eq!(s.missed, Missed::RunOnce);
        assert_eq!(s.history, History::default());
        assert_eq!(
            (
                s.starting_deadline_seconds,
                s.timeout_seconds,
                s.retries,
                s.suspend
            ),
            (None, None, 0, false)
        );
        let s = spec(
            r#"{"name":"n","schedule":"@daily","container":{"image":"b"},"history":{"failed":5}}"#,
        )
        .unwrap();
        assert_eq!(
            s.history,
            History {
                successful: 3,
                failed: 5
            }
        );
    }

    #[test]
    fn refuses_bad_input_naming_the_field() {
        let base = |extra: &str| {
            format!(r#"{{"name":"n","schedule":"* * * * *","container":{{"image":"b"}}{extra}}}"#)
        };
        let cases = [
            (base(r#","bogus":1"#), "unknown field"),
            (base(r#","concurrency":"sometimes""#), "unknown variant"),
            (base(r#","missed":"twice""#), "unknown variant"),
            (base(r#","retries":-1"#), "invalid value"),
            (base(r#","retries":101"#), "retries: 101 is over"),
            (base(r#","timeout_seconds":0"#), "timeout_seconds: must be at least 1"),
            (
                base(r#","starting_deadline_seconds":99999999999"#),
                "starting_deadline_seconds: 99999999999 is over",
            ),
            (base(r#","history":{"failed":1001}"#), "history.failed"),
            (base(r#","history":{"kept":1}"#), "unknown field"),
            (base(r#","time_zone":"Moon/Base""#), "time_zone: "),
            (
                r#"{"name":"-x","schedule":"* * * * *","container":{"image":"b"}}"#.into(),
                "name: ",
            ),
            (
                format!(
                    r#"{{"name":"{}","schedule":"* * * * *","container":{{"image":"b"}}}}"#,
                    "a".repeat(64)
                ),
                "name: ",
            ),
            (
                r#"{"name":"n","schedule":"* * *","container":{"image":"b"}}"#.into(),
                "schedule: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","name":"x"}}"#
                    .into(),
                "container.name: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","restart":"always"}}"#
                    .into(),
                "container.restart: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","auto_remove":true}}"#
                    .into(),
                "container.auto_remove: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","start":false}}"#
                    .into(),
                "container.start: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","env":["X"]}}"#
                    .into(),
                "container.env[0]: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","volumes":[{"source":"../etc","target":"/e"}]}}"#
                    .into(),
                "container.volumes[0].source: ",
            ),
            (
                r#"{"name":"n","schedule":"* * * * *","container":{"image":"b","privileged":true}}"#
                    .into(),
                "unknown field",
            ),
        ];
        for (json, want) in cases {
            let e = spec(&json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn patches_replace_fields_and_null_clears_limits() {
        let s = spec(
            r#"{"name":"n","schedule":"@daily","container":{"image":"b"},"timeout_seconds":5,"starting_deadline_seconds":9}"#,
        )
        .unwrap();
        let p: JobPatch = serde_json::from_str(
            r#"{"schedule":"@hourly","timeout_seconds":null,"history":{"failed":4},"retries":2}"#,
        )
        .unwrap();
        let s = s.patched(p);
        assert_eq!(s.schedule, "@hourly");
        assert_eq!(s.timeout_seconds, None);
        assert_eq!(s.starting_deadline_seconds, Some(9), "absent: unchanged");
        assert_eq!(
            s.history,
            History {
                successful: 3,
                failed: 4
            }
        );
        assert_eq!(s.retries, 2);
        let e = serde_json::from_str::<JobPatch>(r#"{"name":"other"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `name`"), "{e}");
    }
}
