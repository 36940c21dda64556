//! Lifecycle events: what happens to containers, images (and, through the daemon, jobs and
//! exports) as typed values, handed to an [`EventSink`]. The daemon's sink appends them to the
//! durable event log of the `inarray-events` crate (the same seqs, cursors and subscriptions as
//! file events); this crate knows only the trait, so it does not depend on that one.
//!
//! A new kind of event is one line of [`event_types!`] (object type and action) and the call
//! that records it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

macro_rules! event_types {
    ($($variant:ident = ($object:literal, $action:literal),)*) => {
        /// Every lifecycle event type: an object type and an action (`container.die`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// `container`, `job`, `image`, `export`, …
            pub fn object(self) -> &'static str {
                match self {
                    $(EventType::$variant => $object,)*
                }
            }

            /// `create`, `die`, `run_end`, …
            pub fn action(self) -> &'static str {
                match self {
                    $(EventType::$variant => $action,)*
                }
            }
        }
    };
}

event_types! {
    ContainerCreate = ("container", "create"),
    ContainerStart = ("container", "start"),
    ContainerDie = ("container", "die"),
    ContainerRestart = ("container", "restart"),
    ContainerHealthStatus = ("container", "health_status"),
    ContainerDestroy = ("container", "destroy"),
    JobFire = ("job", "fire"),
    JobRunStart = ("job", "run_start"),
    JobRunEnd = ("job", "run_end"),
    ImagePull = ("image", "pull"),
    ImageImport = ("image", "import"),
    ImageUntag = ("image", "untag"),
    ImageDelete = ("image", "delete"),
    ExportCreate = ("export", "create"),
    ExportUpdate = ("export", "update"),
    ExportDelete = ("export", "delete"),
    VolumeCreate = ("volume", "create"),
    VolumeUpdate = ("volume", "update"),
    VolumeDelete = ("volume", "delete"),
    VolumeSnapshot = ("volume", "snapshot"),
    VolumeSnapshotDelete = ("volume", "snapshot_delete"),
    VolumeRestore = ("volume", "restore"),
    NetworkCreate = ("network", "create"),
    NetworkDelete = ("network", "delete"),
}

impl EventType {
    /// `container.die`.
    pub fn as_string(self) -> String {
        format!("{}.{}", self.object(), self.action())
    }

    /// Whether some type has this object type.
    pub fn is_object(object: &str) -> bool {
        Self::ALL.iter().any(|t| t.object() == object)
    }

    pub fn parse(object: &str, action: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.object() == object && t.action() == action)
    }
}

/// One lifecycle event: its type, the object's id and name, and attributes (exit code, status…).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleEvent {
    pub kind: EventType,
    pub id: String,
    pub name: String,
    pub attributes: Map<String, Value>,
    pub time: DateTime<Utc>,
}

impl LifecycleEvent {
    pub fn new(kind: EventType, id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
            name: name.into(),
            attributes: Map::new(),
            time: Utc::now(),
        }
    }

    /// Adds an attribute (a null value is left out).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        let v = value.into();
        if !v.is_null() {
            self.attributes.insert(key.to_owned(), v);
        }
        self
    }

    /// The time of the event, when the caller's clock is not the system's.
    pub fn at(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }
}

/// Completes once the event is durable (or the sink stopped waiting for it).
pub type Recorded = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where lifecycle events go. `record` takes the event at once (events recorded one after the
/// other are logged in that order); the future it returns completes once the event is durable,
/// so an action can reply only after its event is in the log.
pub trait EventSink: Send + Sync + 'static {
    fn record(&self, event: LifecycleEvent) -> Recorded;
}

/// A sink shared by the services that record events.
pub type Sink = Arc<dyn EventSink>;

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Mutex;

    /// Keeps what was recorded, in order.
    #[derive(Default)]
    pub struct Recording(pub Mutex<Vec<LifecycleEvent>>);

    impl EventSink for Recording {
        fn record(&self, event: LifecycleEvent) -> Recorded {
            self.0.lock().expect("events").push(event);
            Box::pin(async {})
        }
    }

    impl Recording {
        /// (type, name) of each event of a container named `name`, in order.
        pub fn of(&self, name: &str) -> Vec<String> {
            self.0
                .lock()
                .expect("events")
                .iter()
                .filter(|e| e.name == name)
                .map(|e| e.kind.as_string())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_object_dot_action_and_unique() {
        let all: std::collections::HashSet<String> =
            EventType::ALL.iter().map(|t| t.as_string()).collect();
        assert_eq!(all.len(), EventType::ALL.len());
        assert!(all.contains("container.die") && all.contains("job.run_end"));
        assert_eq!(
            EventType::parse("container", "health_status"),
            Some(EventType::ContainerHealthStatus)
        );
        assert!(EventType::is_object("export") && !EventType::is_object("file"));
        let e = LifecycleEvent::new(EventType::ContainerDie, "id", "n")
            .with("exit_code", 1)
            .with("error", Value::Null);
        assert_eq!(e.attributes.len(), 1);
    }
}
