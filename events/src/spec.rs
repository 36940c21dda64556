//! The typed requests and the event as the API shows it. Every validation error names its field.

use chrono::{DateTime, SecondsFormat, Utc};
use inarray_runtime::ContainerConfig;
use inarray_store::{names, EventRow, NewEvent};
use serde::{Deserialize, Serialize};

use crate::glob::Glob;
use crate::{invalid, EventsError};

/// What happened. `resync` is emitted by the daemon after it rescanned a tree (kernel queue
/// overflow, lost watch); it cannot be asked for, it always comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Create,
    CloseWrite,
    Delete,
    Move,
    Attrib,
    Mkdir,
    Resync,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Create,
        Kind::CloseWrite,
        Kind::Delete,
        Kind::Move,
        Kind::Attrib,
        Kind::Mkdir,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::CloseWrite => "close_write",
            Kind::Delete => "delete",
            Kind::Move => "move",
            Kind::Attrib => "attrib",
            Kind::Mkdir => "mkdir",
            Kind::Resync => "resync",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain([Kind::Resync])
            .find(|k| k.as_str() == s)
    }
}

pub const MAX_PATTERNS: usize = 256;
pub const MAX_WATCH_NAMES: usize = 1024;

fn default_true() -> bool {
    true
}

fn default_kinds() -> Vec<Kind> {
    vec![
        Kind::Create,
        Kind::CloseWrite,
        Kind::Delete,
        Kind::Move,
        Kind::Mkdir,
    ]
}

/// `POST /v1/watches`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    pub name: String,
    /// Relative to the array root ("." for the root).
    pub path: String,
    #[serde(default = "default_true")]
    pub recursive: bool,
    /// Default: create, close_write, delete, move, mkdir (attrib is opt-in: it is noisy).
    #[serde(default = "default_kinds")]
    pub events: Vec<Kind>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMode {
    /// One container per event.
    #[default]
    Event,
    /// One container per batch of events (at most `max_batch`).
    Batch,
}

fn default_trigger_kinds() -> Vec<Kind> {
    vec![Kind::CloseWrite, Kind::Move]
}

fn default_max_batch() -> u32 {
    100
}

fn default_settle_ms() -> u64 {
    1000
}

/// A container started by a watch's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// The same shape as `POST /v1/containers`; `name` must be absent (each run is named
    /// `<watch>.ev-<seq>`).
    pub container: ContainerConfig,
    #[serde(default)]
    pub mode: TriggerMode,
    /// Which kinds start a container (default: close_write and move).
    #[serde(default = "default_trigger_kinds")]
    pub events: Vec<Kind>,
    /// Batch mode: events per container (1-1000).
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Loop protection: how long after a trigger container exits its writes are still
    /// attributed to it (milliseconds, 0-60000).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
}

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// After the newest event in the log.
    Now,
    /// At the oldest event still in the log.
    Beginning,
    /// At this seq (inclusive).
    Seq(i64),
}

impl Serialize for From {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            From::Now => s.serialize_str("now"),
            From::Beginning => s.serialize_str("beginning"),
            From::Seq(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for From {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            Seq(i64),
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected \"now\", \"beginning\" or a seq (an integer >= 1)")
        })? {
            Repr::Word(w) if w == "now" => Ok(From::Now),
            Repr::Word(w) if w == "beginning" => Ok(From::Beginning),
            Repr::Seq(n) if n >= 1 => Ok(From::Seq(n)),
            _ => Err(serde::de::Error::custom(
                "expected \"now\", \"beginning\" or a seq (an integer >= 1)",
            )),
        }
    }
}

fn default_from() -> From {
    From::Now
}

fn default_ack_deadline() -> u64 {
    30
}

/// `POST /v1/subscriptions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub name: String,
    /// Watch names; empty = every watch.
    #[serde(default)]
    pub watches: Vec<String>,
    #[serde(default = "default_from")]
    pub from: From,
    /// Delivered but unacknowledged events are delivered again after this (1-3600 s).
    #[serde(default = "default_ack_deadline")]
    pub ack_deadline_seconds: u64,
    /// Push the events to this URL instead of waiting to be asked.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
}

/// Webhook delivery: `POST url` with a JSON array of events, signed with HMAC-SHA256 of the body
/// under `secret` in the `X-Inarray-Signature: sha256=<hex>` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http(s)://HOST[:PORT]/PATH`; HTTPS trusts the node's trust store and the daemon's
    /// `[events] webhook_ca_file`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
}

/// A watch's or a subscription's name (`rule`: [`names::WATCH`] or [`names::SUBSCRIPTION`]),
/// refused naming `field`.
pub fn validate_name(rule: &names::NameRule, field: &str, name: &str) -> Result<(), EventsError> {
    rule.check(name).map_err(|reason| invalid(field, reason))
}

fn check_kinds(field: &str, kinds: &[Kind]) -> Result<(), EventsError> {
    if kinds.is_empty() {
        return Err(invalid(field, "at least one kind is needed"));
    }
    if kinds.contains(&Kind::Resync) {
        return Err(invalid(
            field,
            "resync cannot be asked for: it is always emitted",
        ));
    }
    Ok(())
}

fn check_patterns(field: &str, pats: &[String]) -> Result<Vec<Glob>, EventsError> {
    if pats.len() > MAX_PATTERNS {
        return Err(invalid(
            field,
            format!("has {} entries, at most {MAX_PATTERNS} allowed", pats.len()),
        ));
    }
    pats.iter()
        .enumerate()
        .map(|(i, p)| Glob::new(p).map_err(|e| invalid(format!("{field}[{i}]"), e)))
        .collect()
}

/// The compiled filters of a watch.
#[derive(Clone, Debug)]
pub struct Filter {
    pub kinds: Vec<Kind>,
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
}

impl Filter {
    /// Whether an event of `kind` on `rel` (relative to the watch) is reported.
    pub fn wants(&self, kind: Kind, rel: &str) -> bool {
        (kind == Kind::Resync || self.kinds.contains(&kind)) && self.path_ok(rel)
    }

    pub fn path_ok(&self, rel: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(rel)))
            && !self.excluded(rel)
    }

    /// Excluded paths (directories with their contents) are neither reported nor watched.
    pub fn excluded(&self, rel: &str) -> bool {
        self.exclude.iter().any(|g| g.matches(rel))
    }
}

impl WatchSpec {
    /// Checks every field; the compiled filter.
    pub fn validate(&self) -> Result<Filter, EventsError> {
        validate_name(&names::WATCH, "name", &self.name)?;
        inarray_runtime::volumes::validate_source("path", &self.path).map_err(|e| {
            invalid(
                "path",
                e.to_string().trim_start_matches("path: ").to_owned(),
            )
        })?;
        check_kinds("events", &self.events)?;
        let include = check_patterns("include", &self.include)?;
        let exclude = check_patterns("exclude", &self.exclude)?;
        if let Some(t) = &self.trigger {
            if t.container.name.is_some() {
                return Err(invalid(
                    "trigger.container.name",
                    "must be absent: each run is named <watch>.ev-<seq>",
                ));
            }
            t.container
                .validate()
                .map_err(|e| invalid(format!("trigger.container.{}", e.field), e.reason))?;
            inarray_runtime::volumes::validate_all(&t.container.volumes)
                .map_err(|e| invalid("trigger.container", e.to_string()))?;
            check_kinds("trigger.events", &t.events)?;
            if !(1..=1000).contains(&t.max_batch) {
                return Err(invalid("trigger.max_batch", "must be between 1 and 1000"));
            }
            if t.settle_ms > 60_000 {
                return Err(invalid("trigger.settle_ms", "must be at most 60000"));
            }
        }
        Ok(Filter {
            kinds: self.events.clone(),
            include,
            exclude,
        })
    }
}

impl SubscriptionSpec {
    pub fn validate(&self) -> Result<(), EventsError> {
        validate_name(&names::SUBSCRIPTION, "name", &self.name)?;
        if self.watches.len() > MAX_WATCH_NAMES {
            return Err(invalid(
                "watches",
                format!(
                    "has {} entries, at most {MAX_WATCH_NAMES} allowed",
                    self.watches.len()
                ),
            ));
        }
        for (i, w) in self.watches.iter().enumerate() {
            validate_name(&names::WATCH, &format!("watches[{i}]"), w)?;
        }
        if !(1..=3600).contains(&self.ack_deadline_seconds) {
            return Err(invalid(
                "ack_deadline_seconds",
                "must be between 1 and 3600",
            ));
        }
        if let Some(w) = &self.webhook {
            crate::webhook::parse_url(&w.url).map_err(|e| invalid("webhook.url", e))?;
            if !(1..=1000).contains(&w.max_batch) {
                return Err(invalid("webhook.max_batch", "must be between 1 and 1000"));
            }
            if w.secret.as_ref().is_some_and(|s| s.len() > 4096) {
                return Err(invalid("webhook.secret", "longer than 4096 bytes"));
            }
        }
        Ok(())
    }
}

/// An event as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    pub watch: String,
    pub kind: Kind,
    /// Relative to the array root.
    pub path: String,
    /// For `move`: where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    pub is_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// RFC 3339, nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// When the daemon saw it (RFC 3339, microseconds).
    pub time: String,
}

pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

impl Event {
    pub fn from_row(r: EventRow) -> Self {
        let e: NewEvent = r.event;
        Self {
            seq: r.seq,
            kind: Kind::parse(&e.kind).unwrap_or(Kind::Resync),
            watch: e.watch,
            path: e.path,
            old_path: e.old_path,
            is_dir: e.is_dir,
            size: e.size,
            mtime: e.mtime.map(|ns| {
                DateTime::from_timestamp(
                    ns.div_euclid(1_000_000_000),
                    ns.rem_euclid(1_000_000_000) as u32,
                )
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Nanos, true)
            }),
            time: DateTime::from_timestamp_micros(e.time)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn watch(v: serde_json::Value) -> Result<Filter, EventsError> {
        serde_json::from_value::<WatchSpec>(v).unwrap().validate()
    }

    #[test]
    fn watch_specs_are_checked_field_by_field() {
        let f = watch(json!({"name": "w", "path": "data/in"})).unwrap();
        assert_eq!(f.kinds.len(), 5);
        for (body, field) in [
            (json!({"name": "../x", "path": "a"}), "name"),
            (json!({"name": "w", "path": "../../etc"}), "path"),
            (json!({"name": "w", "path": "/etc"}), "path"),
            (json!({"name": "w", "path": "a/../../b"}), "path"),
            (json!({"name": "w", "path": "a\u{0}b"}), "path"),
            (json!({"name": "w", "path": "a", "events": []}), "events"),
            (
                json!({"name": "w", "path": "a", "events": ["resync"]}),
                "events",
            ),
            (
                json!({"name": "w", "path": "a", "include": ["[x"]}),
                "include[0]",
            ),
            (
                json!({"name": "w", "path": "a", "trigger": {"container": {"image": "i", "name": "n"}}}),
                "trigger.container.name",
            ),
            (
                json!({"name": "w", "path": "a", "trigger": {"container": {"image": "i"}, "max_batch": 0}}),
                "trigger.max_batch",
            ),
        ] {
            let e = watch(body.clone()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{body}: {e}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("*.{i}")).collect();
        let e = watch(json!({"name": "w", "path": "a", "exclude": many})).unwrap_err();
        assert!(e.to_string().contains("at most 256"), "{e}");
    }

    #[test]
    fn from_accepts_now_beginning_or_a_seq() {
        let f = |v| serde_json::from_value::<From>(v);
        assert_eq!(f(json!("now")).unwrap(), From::Now);
        assert_eq!(f(json!("beginning")).unwrap(), From::Beginning);
        assert_eq!(f(json!(42)).unwrap(), From::Seq(42));
        for bad in [json!(0), json!(-1), json!("later"), json!(1.5), json!(null)] {
            assert!(f(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_apply_kinds_and_patterns() {
        let f = watch(json!({"name": "w", "path": "a", "include": ["*.txt"], "exclude": ["tmp"]}))
            .unwrap();
        assert!(f.wants(Kind::Create, "x/a.txt"));
        assert!(!f.wants(Kind::Create, "x/a.bin"));
        assert!(!f.wants(Kind::Attrib, "a.txt"));
        assert!(f.excluded("x/tmp"));
        assert!(f.wants(Kind::Resync, "a.txt"));
    }
}
