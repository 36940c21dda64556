//! Health checks: what to run and how often (a container's `healthcheck`, or its image's
//! `HEALTHCHECK`), and the rules that turn results into `starting | healthy | unhealthy`. Pure:
//! the runner (`manager/health.rs`) runs the probes through the container's shim.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use inarray_images::ImageHealthcheck;
use serde::{Deserialize, Serialize};

use crate::config::InvalidField;

/// Docker's defaults.
const DEFAULT_INTERVAL: f64 = 30.0;
const DEFAULT_TIMEOUT: f64 = 30.0;
const DEFAULT_RETRIES: u32 = 3;
/// Results kept per container (as Docker).
const KEEP_RESULTS: usize = 5;
/// Output kept per result.
pub const MAX_OUTPUT: usize = 4096;

/// A container's `healthcheck` (seconds; fractions allowed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `["CMD", argv…]`, `["CMD-SHELL", command]` (run with `/bin/sh -c`), or `["NONE"]` (no
    /// check, not even the image's).
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Consecutive failures that make it unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Failures during this time after a start do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<f64>,
    /// Restart the container when it turns unhealthy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_on_unhealthy: bool,
}

/// A check ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub restart_on_unhealthy: bool,
}

fn bad(field: &str, reason: &str) -> InvalidField {
    InvalidField {
        field: format!("healthcheck.{field}"),
        reason: reason.into(),
    }
}

fn argv_of(test: &[String]) -> Result<Option<Vec<String>>, InvalidField> {
    match test.split_first() {
        Some((k, rest)) if k == "NONE" && rest.is_empty() => Ok(None),
        Some((k, rest)) if k == "CMD" && !rest.is_empty() => Ok(Some(rest.to_vec())),
        Some((k, [cmd])) if k == "CMD-SHELL" => {
            Ok(Some(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]))
        }
        _ => Err(bad(
            "test",
            "expected [\"CMD\", argv…], [\"CMD-SHELL\", command] or [\"NONE\"]",
        )),
    }
}

impl HealthCheck {
    pub fn validate(&self) -> Result<(), InvalidField> {
        argv_of(&self.test)?;
        for (name, v, min) in [
            ("interval", self.interval, 0.1),
            ("timeout", self.timeout, 0.1),
            ("start_period", self.start_period, 0.0),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < min || v > 86_400.0 {
                    return Err(bad(name, &format!("seconds between {min} and 86400")));
                }
            }
        }
        if self.retries == Some(0) {
            return Err(bad("retries", "at least 1"));
        }
        Ok(())
    }
}

/// The check a container gets: its own, else its image's; None for none (or `NONE`).
pub fn probe(own: Option<&HealthCheck>, image: Option<&ImageHealthcheck>) -> Option<Probe> {
    let secs = |v: Option<f64>, d: f64| Duration::from_secs_f64(v.unwrap_or(d));
    let nanos = |v: u64, d: f64| {
        if v == 0 {
            Duration::from_secs_f64(d)
        } else {
            Duration::from_nanos(v)
        }
    };
    match (own, image) {
        (Some(h), _) => Some(Probe {
            argv: argv_of(&h.test).ok()??,
            interval: secs(h.interval, DEFAULT_INTERVAL),
            timeout: secs(h.timeout, DEFAULT_TIMEOUT),
            retries: h.retries.unwrap_or(DEFAULT_RETRIES),
            start_period: secs(h.start_period, 0.0),
            restart_on_unhealthy: h.restart_on_unhealthy,
        }),
        (None, Some(i)) => Some(Probe {
            argv: argv_of(&i.test).ok()??,
            interval: nanos(i.interval, DEFAULT_INTERVAL),
            timeout: nanos(i.timeout, DEFAULT_TIMEOUT),
            retries: if i.retries == 0 {
                DEFAULT_RETRIES
            } else {
                i.retries
            },
            start_period: nanos(i.start_period, 0.0),
            restart_on_unhealthy: false,
        }),
        (None, None) => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The probe's exit code; -1 when it timed out or could not run.
    pub exit_code: i64,
    /// The start of its output (at most 4 KiB), or why it did not run.
    pub output: String,
}

/// A running container's health.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: VecDeque<ProbeResult>,
}

impl Health {
    pub fn new() -> Self {
        Self {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: VecDeque::new(),
        }
    }

    /// Takes a result `since_start` after the container started; returns the new status if it
    /// changed. Docker's rules: a success makes it healthy; `retries` failures in a row make it
    /// unhealthy; failures within the start period do not count while it is still starting.
    pub fn record(
        &mut self,
        r: ProbeResult,
        since_start: Duration,
        p: &Probe,
    ) -> Option<HealthStatus> {
        let before = self.status;
        if r.exit_code == 0 {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if !(self.status == HealthStatus::Starting && since_start < p.start_period) {
            self.failing_streak += 1;
            if self.failing_streak >= p.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push_back(r);
        while self.log.len() > KEEP_RESULTS {
            self.log.pop_front();
        }
        (self.status != before).then_some(self.status)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i64) -> ProbeResult {
        ProbeResult {
            start: Utc::now(),
            end: Utc::now(),
            exit_code: code,
            output: String::new(),
        }
    }

    fn probe_with(retries: u32, start_period: f64) -> Probe {
        probe(
            Some(&HealthCheck {
                test: vec!["CMD".into(), "true".into()],
                interval: Some(1.0),
                timeout: None,
                retries: Some(retries),
                start_period: Some(start_period),
                restart_on_unhealthy: false,
            }),
            None,
        )
        .unwrap()
    }

    #[test]
    fn docker_rules_for_status() {
        let p = probe_with(3, 10.0);
        let mut h = Health::new();
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(20);
        assert_eq!(
            h.record(result(1), early, &p),
            None,
            "ignored in the start period"
        );
        assert_eq!(h.failing_streak, 0);
        assert_eq!(h.record(result(0), early, &p), Some(HealthStatus::Healthy));
        assert_eq!(h.record(result(1), early, &p), None, "counts once healthy");
        assert_eq!(h.record(result(1), late, &p), None);
        assert_eq!(
            h.record(result(-1), late, &p),
            Some(HealthStatus::Unhealthy),
            "the third failure in a row"
        );
        assert_eq!(h.record(result(0), late, &p), Some(HealthStatus::Healthy));
        for _ in 0..10 {
            h.record(result(0), late, &p);
        }
        assert_eq!(h.log.len(), 5);
    }

    #[test]
    fn own_check_image_check_and_none() {
        let img = ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "test -f /ok".into()],
            interval: 2_000_000_000,
            ..Default::default()
        };
        let p = probe(None, Some(&img)).unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(p.interval, Duration::from_secs(2));
        assert_eq!(p.timeout, Duration::from_secs(30));
        assert_eq!(p.retries, 3);
        let none = HealthCheck {
            test: vec!["NONE".into()],
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
            restart_on_unhealthy: false,
        };
        assert!(none.validate().is_ok());
        assert_eq!(
            probe(Some(&none), Some(&img)),
            None,
            "NONE overrides the image"
        );
        let bad_test = HealthCheck {
            test: vec!["true".into()],
            ..none.clone()
        };
        assert_eq!(bad_test.validate().unwrap_err().field, "healthcheck.test");
        let bad_interval = HealthCheck {
            interval: Some(0.0),
            ..none
        };
        assert_eq!(
            bad_interval.validate().unwrap_err().field,
            "healthcheck.interval"
        );
    }
}
