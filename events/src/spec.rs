//! The typed requests and the event as the API shows it. Every validation error names its field.

use chrono::{DateTime, SecondsFormat, Utc};
use inarray_runtime::events::{EventType, LifecycleEvent};
use inarray_runtime::ContainerConfig;
use inarray_store::{names, EventRow, LoggedEvent, NewEvent, NewLifecycleEvent, TypeMatch};
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

fn default_types() -> Vec<String> {
    vec![inarray_store::FILE.to_owned()]
}

/// `POST /v1/subscriptions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub name: String,
    /// Watch names; empty = every watch (file events only: lifecycle events have no watch).
    #[serde(default)]
    pub watches: Vec<String>,
    /// The event types delivered: `file`, an object type (`container`, `job`, `image`,
    /// `export`), one type (`container.die`, `file.close_write`) or `*` for every type.
    /// Default: `["file"]` (file events, as before lifecycle events existed).
    #[serde(default = "default_types")]
    pub types: Vec<String>,
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
        parse_types("types", &self.types)?;
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

/// At most this many entries in a `types` filter.
pub const MAX_TYPES: usize = 64;

/// A `types` filter (`field` names it in errors) → what the log's reads match; empty = every
/// type (`*`). Each entry is `file`, an object type of lifecycle events, `object.action`, or `*`.
pub fn parse_types(field: &str, types: &[String]) -> Result<Vec<TypeMatch>, EventsError> {
    if types.is_empty() {
        return Err(invalid(
            field,
            "at least one type is needed (\"*\": every type)",
        ));
    }
    if types.len() > MAX_TYPES {
        return Err(invalid(
            field,
            format!("has {} entries, at most {MAX_TYPES} allowed", types.len()),
        ));
    }
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let bad = |reason: String| invalid(format!("{field}[{i}]"), reason);
        if t == "*" {
            return Ok(Vec::new());
        }
        let (object, action) = match t.split_once('.') {
            Some((o, a)) => (o, Some(a)),
            None => (t.as_str(), None),
        };
        let known_object = object == inarray_store::FILE || EventType::is_object(object);
        if !known_object {
            return Err(bad(format!(
                "unknown type {:?}: expected *, file, {}, or one of their types (container.die, file.close_write, …)",
                t.chars().take(64).collect::<String>(),
                objects().join(", ")
            )));
        }
        if let Some(a) = action {
            let known = if object == inarray_store::FILE {
                Kind::parse(a).is_some()
            } else {
                EventType::parse(object, a).is_some()
            };
            if !known {
                return Err(bad(format!(
                    "unknown type {:?}: {object} has {}",
                    t.chars().take(64).collect::<String>(),
                    actions(object).join(", ")
                )));
            }
        }
        let m = TypeMatch {
            object: object.to_owned(),
            action: action.map(str::to_owned),
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The object types of lifecycle events.
fn objects() -> Vec<&'static str> {
    let mut v: Vec<&str> = EventType::ALL.iter().map(|t| t.object()).collect();
    v.dedup();
    v
}

fn actions(object: &str) -> Vec<&'static str> {
    if object == inarray_store::FILE {
        return Kind::ALL
            .iter()
            .chain([Kind::Resync].iter())
            .map(|k| k.as_str())
            .collect();
    }
    EventType::ALL
        .iter()
        .filter(|t| t.object() == object)
        .map(|t| t.action())
        .collect()
}

/// A lifecycle event as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleView {
    pub seq: i64,
    /// `container.die`, `job.run_end`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The object's id (a container's id, an image's id, a job's or an export's name).
    pub id: String,
    pub name: String,
    /// What the type says (exit code, status, run id, …).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// RFC 3339, microseconds.
    pub time: String,
}

/// An event of the log: a file event or a lifecycle event (told apart by `type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogEvent {
    File(Event),
    Lifecycle(LifecycleView),
}

impl LogEvent {
    pub fn seq(&self) -> i64 {
        match self {
            LogEvent::File(e) => e.seq,
            LogEvent::Lifecycle(e) => e.seq,
        }
    }

    /// `file.close_write`, `container.die`, …
    pub fn type_name(&self) -> &str {
        match self {
            LogEvent::File(e) => &e.r#type,
            LogEvent::Lifecycle(e) => &e.kind,
        }
    }

    pub fn from_row(r: EventRow) -> Self {
        match r.event {
            LoggedEvent::File(e) => LogEvent::File(Event::from_file(r.seq, e)),
            LoggedEvent::Lifecycle(e) => LogEvent::Lifecycle(LifecycleView {
                seq: r.seq,
                kind: format!("{}.{}", e.object, e.action),
                id: e.id,
                name: e.name,
                attributes: serde_json::from_str(&e.attributes).unwrap_or_default(),
                time: time_of(e.time),
            }),
        }
    }

    /// The file event, if it is one.
    pub fn file(&self) -> Option<&Event> {
        match self {
            LogEvent::File(e) => Some(e),
            LogEvent::Lifecycle(_) => None,
        }
    }
}

/// A lifecycle event of the runtime as the log stores it.
pub fn lifecycle_row(e: &LifecycleEvent) -> NewLifecycleEvent {
    NewLifecycleEvent {
        object: e.kind.object().to_owned(),
        action: e.kind.action().to_owned(),
        id: e.id.clone(),
        name: e.name.clone(),
        attributes: serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into()),
        time: e.time.timestamp_micros(),
    }
}

fn time_of(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A file event as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    /// `file.<kind>` (every event of the log has a type).
    #[serde(rename = "type", default)]
    pub r#type: String,
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
    pub fn from_file(seq: i64, e: NewEvent) -> Self {
        let kind = Kind::parse(&e.kind).unwrap_or(Kind::Resync);
        Self {
            seq,
            r#type: format!("{}.{}", inarray_store::FILE, kind.as_str()),
            kind,
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
            time: time_of(e.time),
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
    fn types_are_checked_entry_by_entry() {
        let t = |v: &[&str]| {
            parse_types(
                "types",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let m = t(&["container.die", "job", "file.close_write", "job"]).unwrap();
        assert_eq!(m.len(), 3, "duplicates merged");
        assert_eq!(m[0].action.as_deref(), Some("die"));
        assert!(
            t(&["container", "*"]).unwrap().is_empty(),
            "* is every type"
        );
        for (bad, field) in [
            (vec![], "types"),
            (vec!["containers"], "types[0]"),
            (vec!["file", "container.dies"], "types[1]"),
            (vec!["file.resync.x"], "types[0]"),
            (vec![""], "types[0]"),
            (vec!["."], "types[0]"),
            (vec!["container."], "types[0]"),
            (vec!["container\u{0}"], "types[0]"),
            (vec!["' OR 1=1 --"], "types[0]"),
        ] {
            let e = t(&bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{bad:?}: {e}");
        }
        let many: Vec<&str> = vec!["file"; 65];
        assert!(t(&many).unwrap_err().to_string().contains("at most 64"));
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
