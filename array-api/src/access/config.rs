//! The access configuration: the `[api]` table of the config file — request limits, TLS
//! settings, audit retention — checked once, at start (and on SIGHUP, where changes are reported
//! as taking effect at the next start).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// Request limits; every one has a default and a config key (`[api]` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON request body (bytes); image archives are streamed and bounded by the image store.
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body.
    pub max_json_depth: usize,
    /// Most entries in any one JSON array of a body.
    pub max_array_len: usize,
    /// Time to receive a request's headers; it runs from the connection's start or the end of
    /// the previous reply, so it is also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time to receive a whole JSON body.
    pub body_timeout: Duration,
    /// Longest silence while a streamed upload (image import) is read.
    pub idle_timeout: Duration,
    /// Requests served at once, over all listeners (503 beyond).
    pub max_in_flight: usize,
    /// Open connections per listener (new ones are closed beyond).
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests before closing their connections.
    pub shutdown_timeout: Duration,
    /// Failed authentications from one peer within `auth_failure_window` that block it.
    pub auth_failures: u32,
    pub auth_failure_window: Duration,
    /// How long a blocked peer is refused (429).
    pub auth_block: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_json_depth: 32,
            max_array_len: 16384,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_in_flight: 256,
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
            auth_failures: 10,
            auth_failure_window: Duration::from_secs(60),
            auth_block: Duration::from_secs(300),
        }
    }
}

/// The `[api]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub max_body_bytes: Option<usize>,
    pub max_json_depth: Option<usize>,
    pub max_array_len: Option<usize>,
    pub header_timeout_secs: Option<f64>,
    pub body_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub max_connections: Option<usize>,
    pub shutdown_timeout_secs: Option<f64>,
    /// Failed authentications from one peer (an address; an IPv6 /64) within
    /// `auth_failure_window_secs` that block it (default 10 in 60 s) …
    pub auth_failures: Option<usize>,
    pub auth_failure_window_secs: Option<f64>,
    /// … for this long (default 300 s): 429 with Retry-After.
    pub auth_block_secs: Option<f64>,
    /// Days an audit entry is kept (default 90).
    pub audit_retention_days: Option<u32>,
    /// Most audit entries kept (default 1,000,000).
    pub audit_max_entries: Option<u64>,
    /// PEM certificate chain and private key: the TCP listeners speak TLS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: TLS clients must then present a certificate it signed (tokens are still
    /// needed on top).
    pub tls_client_ca: Option<PathBuf>,
}

/// Largest body a config may allow (the router's own ceiling).
pub const MAX_BODY_CEILING: usize = 16 << 20;

impl ApiConfig {
    pub fn limits(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let secs = |key: &str, v: Option<f64>, def: Duration| match v {
            None => Ok(def),
            Some(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(format!("api.{key}: {s} is not between 0 and 86400 seconds")),
        };
        let count = |key: &str, v: Option<usize>, def: usize, max: usize| match v {
            None => Ok(def),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(format!("api.{key}: {n} is not between 1 and {max}")),
        };
        Ok(Limits {
            max_body_bytes: count(
                "max_body_bytes",
                self.max_body_bytes,
                d.max_body_bytes,
                MAX_BODY_CEILING,
            )?,
            max_json_depth: count("max_json_depth", self.max_json_depth, d.max_json_depth, 128)?,
            max_array_len: count(
                "max_array_len",
                self.max_array_len,
                d.max_array_len,
                1 << 20,
            )?,
            header_timeout: secs(
                "header_timeout_secs",
                self.header_timeout_secs,
                d.header_timeout,
            )?,
            body_timeout: secs("body_timeout_secs", self.body_timeout_secs, d.body_timeout)?,
            idle_timeout: secs("idle_timeout_secs", self.idle_timeout_secs, d.idle_timeout)?,
            max_in_flight: count(
                "max_in_flight",
                self.max_in_flight,
                d.max_in_flight,
                1 << 16,
            )?,
            max_connections: count(
                "max_connections",
                self.max_connections,
                d.max_connections,
                1 << 20,
            )?,
            shutdown_timeout: secs(
                "shutdown_timeout_secs",
                self.shutdown_timeout_secs,
                d.shutdown_timeout,
            )?,
            auth_failures: count(
                "auth_failures",
                self.auth_failures,
                d.auth_failures as usize,
                1000,
            )? as u32,
            auth_failure_window: secs(
                "auth_failure_window_secs",
                self.auth_failure_window_secs,
                d.auth_failure_window,
            )?,
            auth_block: secs("auth_block_secs", self.auth_block_secs, d.auth_block)?,
        })
    }

    /// The TLS setup, when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            (Some(c), Some(k)) => {
                crate::serve::tls_config(c, k, self.tls_client_ca.as_deref()).map(Some)
            }
            _ => Err("api: tls_cert and tls_key go together (and tls_client_ca needs both)".into()),
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            days: self.audit_retention_days.unwrap_or(90),
            max_entries: self.audit_max_entries.unwrap_or(1_000_000),
        }
    }
}

/// How long audit entries are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub max_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_are_checked() {
        assert_eq!(ApiConfig::default().limits().unwrap(), Limits::default());
        let c = ApiConfig {
            max_body_bytes: Some(MAX_BODY_CEILING + 1),
            ..Default::default()
        };
        assert!(c.limits().unwrap_err().contains("max_body_bytes"));
        let c = ApiConfig {
            header_timeout_secs: Some(0.0),
            ..Default::default()
        };
        assert!(c.limits().unwrap_err().contains("header_timeout_secs"));
        let c = ApiConfig {
            header_timeout_secs: Some(0.5),
            max_in_flight: Some(2),
            ..Default::default()
        };
        let l = c.limits().unwrap();
        assert_eq!(
            (l.header_timeout, l.max_in_flight),
            (Duration::from_millis(500), 2)
        );
        let c = ApiConfig {
            auth_failures: Some(3),
            auth_block_secs: Some(30.0),
            ..Default::default()
        };
        let l = c.limits().unwrap();
        assert_eq!(
            (l.auth_failures, l.auth_failure_window, l.auth_block),
            (3, Duration::from_secs(60), Duration::from_secs(30))
        );
        let c = ApiConfig {
            auth_failures: Some(0),
            ..Default::default()
        };
        assert!(c.limits().unwrap_err().starts_with("api.auth_failures"));
    }
}
