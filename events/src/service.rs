//! [`Events`]: the service the daemon starts. It owns the running watches, the batch writer that
//! appends their events to the log, retention, the subscriptions' delivery state, and the
//! trigger and webhook tasks.
//!
//! Delivery is at-least-once: a subscription's cursor (`acked`) is in SQL and moves only on an
//! ack; what was delivered past it is remembered in memory with the time of delivery, and is
//! delivered again once the ack deadline passes — or after a daemon restart.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use inarray_runtime::volumes::ArrayRoot;
use inarray_runtime::Manager;
use inarray_store::{EventFilter, NewEvent, Store, SubscriptionRow, TypeMatch};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::lifecycle::LifecycleLog;
use crate::spec::{parse_types, From, LogEvent, SubscriptionSpec, WatchSpec, WebhookSpec};
use crate::watcher::{self, WatchConfig, WatchHandle};
use crate::{invalid, EventsError};

#[derive(Clone, Debug)]
pub struct EventsOptions {
    /// Repeated close_write/attrib of one path within this window become one event (0: off).
    pub coalesce: Duration,
    /// Events older than this are removed.
    pub retention_age: Option<Duration>,
    /// At most this many events are kept (the oldest go first).
    pub retention_max_events: Option<i64>,
    /// Events appended per transaction, at most.
    pub batch_max: usize,
    /// PEM file of CA certificates HTTPS webhooks trust besides the node's trust store (a
    /// private CA); read at the first HTTPS delivery (check it at start with
    /// `inarray_images::http::check_ca_file`).
    pub webhook_ca_file: Option<PathBuf>,
}

impl Default for EventsOptions {
    fn default() -> Self {
        Self {
            coalesce: Duration::ZERO,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_max_events: Some(10_000_000),
            batch_max: 20_000,
            webhook_ca_file: None,
        }
    }
}

/// A watch as the API shows it: the definition, then live figures.
#[derive(Clone, Debug, Serialize)]
pub struct WatchView {
    #[serde(flatten)]
    pub spec: WatchSpec,
    pub watched_dirs: usize,
    pub known_entries: usize,
    pub resyncs: u64,
    /// Events this watch has reported since the daemon started.
    pub events_seen: u64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionView {
    pub name: String,
    pub watches: Vec<String>,
    /// The event types it delivers.
    pub types: Vec<String>,
    pub ack_deadline_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Every event up to this seq is acknowledged.
    pub acked: i64,
    /// Delivered up to this seq (acked or not).
    pub delivered: i64,
    /// The newest seq in the log.
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
}

/// One answer to a poll.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub events: Vec<LogEvent>,
    /// True when these events were delivered before and not acknowledged in time.
    pub redelivery: bool,
}

struct WatchEntry {
    spec: WatchSpec,
    handle: WatchHandle,
    trigger: Option<JoinHandle<()>>,
    created_at: DateTime<Utc>,
}

struct SubState {
    row: SubscriptionRow,
    /// `row.types` parsed (empty: every type).
    types: Vec<TypeMatch>,
    delivered: i64,
    /// When the oldest unacknowledged delivery was made.
    delivered_at: Option<Instant>,
    lock: Arc<tokio::sync::Mutex<()>>,
    webhook: Option<JoinHandle<()>>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    array: Arc<ArrayRoot>,
    pub(crate) manager: Option<Manager>,
    pub(crate) opts: EventsOptions,
    sink: watcher::Sink,
    /// The newest seq in the log; shared with the lifecycle log, which appends too.
    pub(crate) last_seq: Arc<watch::Sender<i64>>,
    lifecycle: LifecycleLog,
    watches: Mutex<BTreeMap<String, WatchEntry>>,
    subs: Mutex<HashMap<String, SubState>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serializes watch creation and deletion.
    admin: tokio::sync::Mutex<()>,
    /// Set when the daemon begins to shut down: waiting polls and streams end.
    closing: watch::Sender<bool>,
    /// Acks not yet written to SQL (subscription → seq).
    dirty_acks: Mutex<HashMap<String, i64>>,
    /// Where the watches' tree states go to be saved.
    snaps: watcher::SnapSink,
}

/// How often acknowledgements are written to SQL.
pub const ACK_FLUSH: Duration = Duration::from_millis(100);

/// The file-events service; cheap to clone.
#[derive(Clone)]
pub struct Events {
    pub(crate) inner: Arc<Inner>,
}

pub const MAX_WAIT_SECONDS: u64 = 300;
pub const MAX_EVENTS_PER_POLL: u32 = 10_000;

impl Events {
    /// Starts the writer and retention tasks, restores the watches and subscriptions from SQL.
    /// `manager` runs trigger containers (none: triggers are refused).
    pub async fn start(
        store: Store,
        array: Arc<ArrayRoot>,
        manager: Option<Manager>,
        opts: EventsOptions,
    ) -> Result<Self, EventsError> {
        let log = LifecycleLog::start(store.clone()).await?;
        Self::start_with(store, array, manager, opts, log).await
    }

    /// [`Events::start`] with the lifecycle log the daemon started before the services that
    /// record lifecycle events (so that what they record before this start is kept).
    pub async fn start_with(
        store: Store,
        array: Arc<ArrayRoot>,
        manager: Option<Manager>,
        opts: EventsOptions,
        lifecycle: LifecycleLog,
    ) -> Result<Self, EventsError> {
        let (sink, rx) = mpsc::channel(1024);
        let (snaps, snap_rx) = mpsc::channel(16);
        let last_seq = lifecycle.announcer();
        let last = store.last_event_seq().await?;
        last_seq.send_modify(|v| *v = (*v).max(last));
        let ev = Events {
            inner: Arc::new(Inner {
                store,
                array,
                manager,
                opts,
                sink,
                last_seq,
                lifecycle,
                watches: Mutex::default(),
                subs: Mutex::default(),
                tasks: Mutex::default(),
                admin: tokio::sync::Mutex::new(()),
                closing: watch::channel(false).0,
                dirty_acks: Mutex::default(),
                snaps,
            }),
        };
        let writer = tokio::spawn(writer(ev.clone(), rx));
        let retention = tokio::spawn(retention(ev.clone()));
        let acks = tokio::spawn(ack_flusher(ev.clone()));
        let states = tokio::spawn(state_saver(ev.inner.store.clone(), snap_rx));
        ev.inner
            .tasks
            .lock()
            .expect("tasks")
            .extend([writer, retention, acks, states]);
        for row in ev.inner.store.list_subscriptions().await? {
            ev.install_subscription(row);
        }
        for row in ev.inner.store.list_watches().await? {
            let spec: WatchSpec = match serde_json::from_str(&row.spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(watch = %row.name, error = %e, "corrupt watch definition; skipped");
                    continue;
                }
            };
            if let Err(e) = ev.install_watch(spec, row.created_at, true).await {
                tracing::error!(watch = %row.name, error = %e, "cannot restore the watch");
            }
        }
        Ok(ev)
    }

    /// Ends waiting polls and open streams (SSE, WebSocket) so the API can shut down; new polls
    /// are refused (409) from now on.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// True once [`Events::begin_shutdown`] was called (a receiver to wait on).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Stops every watch and task (the log keeps what was appended).
    pub async fn stop(&self) {
        let entries: Vec<WatchEntry> = std::mem::take(&mut *self.inner.watches.lock().expect("w"))
            .into_values()
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for mut e in entries {
                if let Some(t) = e.trigger.take() {
                    t.abort();
                }
                e.handle.stop();
            }
        })
        .await;
        for s in self.inner.subs.lock().expect("subs").values_mut() {
            if let Some(t) = s.webhook.take() {
                t.abort();
            }
        }
        // Let the writer drain what the watches flushed, and their states be saved.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.states_saved().await;
        self.flush_acks().await;
        for t in self.inner.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }

    /// Starts publishing to NATS JetStream (see [`crate::nats`]).
    pub async fn start_nats(&self, cfg: crate::nats::NatsConfig) -> Result<(), EventsError> {
        let task = crate::nats::start(self, cfg).await?;
        self.inner.tasks.lock().expect("tasks").push(task);
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The lifecycle log (the sink of the services' lifecycle events).
    pub fn lifecycle(&self) -> &LifecycleLog {
        &self.inner.lifecycle
    }

    pub fn last_seq(&self) -> i64 {
        *self.inner.last_seq.borrow()
    }

    /// Notified with the newest seq after each appended batch.
    pub fn subscribe_seq(&self) -> watch::Receiver<i64> {
        self.inner.last_seq.subscribe()
    }

    // ------------------------------------------------------------------ watches

    async fn install_watch(
        &self,
        spec: WatchSpec,
        created_at: DateTime<Utc>,
        restore: bool,
    ) -> Result<(), EventsError> {
        let filter = spec.validate()?;
        let baseline = if restore {
            self.inner.store.load_watch_state(&spec.name).await?
        } else {
            None
        };
        let cfg = WatchConfig {
            name: spec.name.clone(),
            path: spec.path.clone(),
            recursive: spec.recursive,
            filter,
            coalesce: self.inner.opts.coalesce,
            baseline,
            snapshots: Some(self.inner.snaps.clone()),
        };
        let array = self.inner.array.clone();
        let sink = self.inner.sink.clone();
        let handle = tokio::task::spawn_blocking(move || watcher::start(cfg, array, sink))
            .await
            .map_err(|e| EventsError::Internal(format!("watch setup panicked: {e}")))??;
        let trigger = spec
            .trigger
            .as_ref()
            .map(|_| tokio::spawn(crate::trigger::run(self.clone(), spec.name.clone())));
        self.inner.watches.lock().expect("watches").insert(
            spec.name.clone(),
            WatchEntry {
                spec,
                handle,
                trigger,
                created_at,
            },
        );
        Ok(())
    }

    pub async fn create_watch(&self, spec: WatchSpec) -> Result<WatchView, EventsError> {
        spec.validate()?;
        if let Some(t) = &spec.trigger {
            let Some(m) = &self.inner.manager else {
                return Err(invalid(
                    "trigger",
                    "triggers are not available on this daemon",
                ));
            };
            m.find_image(&t.container.image)
                .await
                .map_err(|e| invalid("trigger.container.image", e.to_string()))?;
        }
        let _admin = self.inner.admin.lock().await;
        if self
            .inner
            .watches
            .lock()
            .expect("watches")
            .contains_key(&spec.name)
        {
            return Err(EventsError::Conflict(format!(
                "watch {} already exists",
                spec.name
            )));
        }
        let now = Utc::now();
        self.install_watch(spec.clone(), now, false).await?;
        let json =
            serde_json::to_string(&spec).map_err(|e| EventsError::Internal(e.to_string()))?;
        // Triggers start with the events that come after the watch.
        if let Err(e) = self
            .inner
            .store
            .insert_watch(&spec.name, &json, self.last_seq())
            .await
        {
            self.remove_running(&spec.name).await;
            return Err(e.into());
        }
        self.watch(&spec.name)
    }

    async fn remove_running(&self, name: &str) -> bool {
        let entry = self.inner.watches.lock().expect("watches").remove(name);
        match entry {
            Some(mut e) => {
                if let Some(t) = e.trigger.take() {
                    t.abort();
                }
                let _ = tokio::task::spawn_blocking(move || e.handle.stop()).await;
                true
            }
            None => false,
        }
    }

    pub async fn delete_watch(&self, name: &str) -> Result<(), EventsError> {
        let _admin = self.inner.admin.lock().await;
        let running = self.remove_running(name).await;
        // Its last state may still be on its way to SQL: delete after it.
        self.states_saved().await;
        let in_sql = self.inner.store.delete_watch(name).await?;
        if !in_sql && !running {
            return Err(EventsError::NotFound {
                kind: "watch",
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub fn watch(&self, name: &str) -> Result<WatchView, EventsError> {
        let w = self.inner.watches.lock().expect("watches");
        let e = w.get(name).ok_or_else(|| EventsError::NotFound {
            kind: "watch",
            name: name.to_owned(),
        })?;
        Ok(view(e))
    }

    pub fn watches(&self) -> Vec<WatchView> {
        self.inner
            .watches
            .lock()
            .expect("watches")
            .values()
            .map(view)
            .collect()
    }

    pub(crate) fn watch_spec(&self, name: &str) -> Option<WatchSpec> {
        self.inner
            .watches
            .lock()
            .expect("watches")
            .get(name)
            .map(|e| e.spec.clone())
    }

    // ------------------------------------------------------------------ subscriptions

    fn install_subscription(&self, row: SubscriptionRow) {
        let webhook = row.webhook.as_deref().and_then(|w| {
            serde_json::from_str::<WebhookSpec>(w)
                .map_err(
                    |e| tracing::error!(subscription = %row.name, error = %e, "corrupt webhook"),
                )
                .ok()
        });
        let name = row.name.clone();
        let types = parse_types("types", &row.types).unwrap_or_else(|e| {
            tracing::error!(subscription = %row.name, error = %e, "corrupt types; delivering every type");
            Vec::new()
        });
        // In the table first: the webhook task ends when it finds no subscription.
        let mut subs = self.inner.subs.lock().expect("subs");
        subs.insert(
            name.clone(),
            SubState {
                types,
                delivered: row.acked,
                row,
                delivered_at: None,
                lock: Arc::default(),
                webhook: None,
            },
        );
        if let (Some(w), Some(s)) = (webhook, subs.get_mut(&name)) {
            s.webhook = Some(tokio::spawn(crate::webhook::run(self.clone(), name, w)));
        }
    }

    pub async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<SubscriptionView, EventsError> {
        spec.validate()?;
        {
            let w = self.inner.watches.lock().expect("watches");
            for (i, name) in spec.watches.iter().enumerate() {
                if !w.contains_key(name) {
                    return Err(invalid(
                        format!("watches[{i}]"),
                        format!("no such watch: {name}"),
                    ));
                }
            }
        }
        if self
            .inner
            .subs
            .lock()
            .expect("subs")
            .contains_key(&spec.name)
        {
            return Err(EventsError::Conflict(format!(
                "subscription {} already exists",
                spec.name
            )));
        }
        let last = self.last_seq();
        let acked = match spec.from {
            From::Now => last,
            From::Beginning => 0,
            From::Seq(n) => n - 1,
        };
        let row = SubscriptionRow {
            name: spec.name.clone(),
            watches: spec.watches.clone(),
            acked,
            ack_deadline_ms: (spec.ack_deadline_seconds * 1000) as i64,
            webhook: spec
                .webhook
                .as_ref()
                .map(|w| serde_json::to_string(w).unwrap_or_default()),
            types: spec.types.clone(),
            created_at: Utc::now(),
        };
        self.inner
            .store
            .insert_subscription(&row)
            .await
            .map_err(|e| match e {
                inarray_store::StoreError::Conflict { .. } => {
                    EventsError::Conflict(format!("subscription {} already exists", spec.name))
                }
                e => e.into(),
            })?;
        self.install_subscription(row);
        self.subscription(&spec.name)
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<(), EventsError> {
        self.inner.dirty_acks.lock().expect("acks").remove(name);
        let removed = self.inner.subs.lock().expect("subs").remove(name);
        if let Some(t) = removed.and_then(|s| s.webhook) {
            t.abort();
        }
        if !self.inner.store.delete_subscription(name).await? {
            return Err(not_found_sub(name));
        }
        Ok(())
    }

    pub fn subscription(&self, name: &str) -> Result<SubscriptionView, EventsError> {
        let subs = self.inner.subs.lock().expect("subs");
        let s = subs.get(name).ok_or_else(|| not_found_sub(name))?;
        Ok(self.sub_view(s))
    }

    pub fn subscriptions(&self) -> Vec<SubscriptionView> {
        let subs = self.inner.subs.lock().expect("subs");
        let mut v: Vec<_> = subs.values().map(|s| self.sub_view(s)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn sub_view(&self, s: &SubState) -> SubscriptionView {
        SubscriptionView {
            name: s.row.name.clone(),
            watches: s.row.watches.clone(),
            types: s.row.types.clone(),
            ack_deadline_seconds: (s.row.ack_deadline_ms / 1000) as u64,
            webhook: s
                .row
                .webhook
                .as_deref()
                .and_then(|w| serde_json::from_str::<WebhookSpec>(w).ok())
                .map(|mut w| {
                    w.secret = w.secret.map(|_| "(set)".into());
                    w
                }),
            acked: s.row.acked,
            delivered: s.delivered,
            last_seq: self.last_seq(),
            created_at: s.row.created_at,
        }
    }

    /// The next events for a subscription: those past what was delivered, or — once the ack
    /// deadline of an unacknowledged delivery has passed — again from the acknowledged cursor.
    /// Waits up to `wait` for an event when there is none.
    pub async fn next(
        &self,
        name: &str,
        wait: Duration,
        max: u32,
    ) -> Result<Delivery, EventsError> {
        if wait > Duration::from_secs(MAX_WAIT_SECONDS) {
            return Err(invalid(
                "wait",
                format!("at most {MAX_WAIT_SECONDS} seconds"),
            ));
        }
        if !(1..=MAX_EVENTS_PER_POLL).contains(&max) {
            return Err(invalid(
                "max",
                format!("must be between 1 and {MAX_EVENTS_PER_POLL}"),
            ));
        }
        let deadline = Instant::now() + wait;
        let mut seq_rx = self.inner.last_seq.subscribe();
        let mut closing = self.inner.closing.subscribe();
        loop {
            if *closing.borrow_and_update() {
                return Err(EventsError::Conflict("the daemon is shutting down".into()));
            }
            let lock = {
                let subs = self.inner.subs.lock().expect("subs");
                subs.get(name)
                    .ok_or_else(|| not_found_sub(name))?
                    .lock
                    .clone()
            };
            let guard = lock.lock().await;
            let (start, watches, types, redelivery, ack_deadline) = {
                let mut subs = self.inner.subs.lock().expect("subs");
                let s = subs.get_mut(name).ok_or_else(|| not_found_sub(name))?;
                let ack_deadline = Duration::from_millis(s.row.ack_deadline_ms as u64);
                let mut redelivery = false;
                if s.delivered > s.row.acked
                    && s.delivered_at.is_some_and(|t| t.elapsed() >= ack_deadline)
                {
                    tracing::info!(subscription = %name, from = s.row.acked + 1, to = s.delivered, "ack deadline passed: redelivering");
                    s.delivered = s.row.acked;
                    s.delivered_at = None;
                    redelivery = true;
                }
                (
                    s.delivered.max(s.row.acked),
                    s.row.watches.clone(),
                    s.types.clone(),
                    redelivery,
                    ack_deadline,
                )
            };
            seq_rx.borrow_and_update();
            let filter = EventFilter {
                watches: &watches,
                types: &types,
            };
            let rows = self.inner.store.events_after(start, filter, max).await?;
            if let Some(last) = rows.last().map(|r| r.seq) {
                let mut subs = self.inner.subs.lock().expect("subs");
                if let Some(s) = subs.get_mut(name) {
                    s.delivered = s.delivered.max(last);
                    if s.delivered_at.is_none() {
                        s.delivered_at = Some(Instant::now());
                    }
                }
                drop(guard);
                return Ok(Delivery {
                    events: rows.into_iter().map(LogEvent::from_row).collect(),
                    // A redelivery starts at or below what was delivered before.
                    redelivery,
                });
            }
            drop(guard);
            let now = Instant::now();
            if now >= deadline {
                return Ok(Delivery {
                    events: Vec::new(),
                    redelivery: false,
                });
            }
            // Wake for a new event, the end of the wait, or an ack deadline.
            let until = deadline.min(now + ack_deadline);
            tokio::select! {
                _ = tokio::time::sleep(until - now) => {}
                _ = seq_rx.changed() => {}
                _ = closing.changed() => {}
            }
        }
    }

    /// Acknowledges every event up to `seq` (cumulative).
    pub async fn ack(&self, name: &str, seq: i64) -> Result<SubscriptionView, EventsError> {
        if seq < 0 {
            return Err(invalid("seq", "must be >= 0"));
        }
        let mut last = self.last_seq();
        if seq > last {
            // The log's writer announces a batch (`last_seq`) just after committing it, and a
            // poll in between hands out events of that batch: the store decides.
            last = last.max(self.inner.store.last_event_seq().await?);
        }
        if seq > last {
            return Err(invalid(
                "seq",
                format!("{seq} is beyond the newest event ({last})"),
            ));
        }
        let mut subs = self.inner.subs.lock().expect("subs");
        let s = subs.get_mut(name).ok_or_else(|| not_found_sub(name))?;
        // Written to SQL by the ack flusher within ACK_FLUSH: an ack lost in a crash only means
        // a redelivery (at-least-once), and the log's writer does not wait behind every ack.
        if seq > s.row.acked {
            self.inner
                .dirty_acks
                .lock()
                .expect("acks")
                .insert(name.to_owned(), seq);
        }
        s.row.acked = s.row.acked.max(seq);
        s.delivered = s.delivered.max(s.row.acked);
        s.delivered_at = if s.delivered > s.row.acked {
            Some(Instant::now())
        } else {
            None
        };
        Ok(self.sub_view(s))
    }

    /// Returns once every state sent so far is saved (at most 10 s).
    async fn states_saved(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .inner
            .snaps
            .send(watcher::SnapMsg::Barrier(tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    /// Writes the pending acknowledgements to SQL.
    pub async fn flush_acks(&self) {
        let acks = std::mem::take(&mut *self.inner.dirty_acks.lock().expect("acks"));
        for (name, seq) in acks {
            if let Err(e) = self.inner.store.ack_subscription(&name, seq).await {
                tracing::error!(subscription = %name, error = %e, "cannot save an ack; retrying");
                let mut d = self.inner.dirty_acks.lock().expect("acks");
                let v = d.entry(name).or_insert(seq);
                *v = (*v).max(seq);
            }
        }
    }

    /// Events with seq > `after` of `types` (parsed by [`parse_types`]; empty: every type), for
    /// `inarray events tail` without a subscription.
    pub async fn read(
        &self,
        after: i64,
        max: u32,
        types: &[TypeMatch],
    ) -> Result<Vec<LogEvent>, EventsError> {
        if !(1..=MAX_EVENTS_PER_POLL).contains(&max) {
            return Err(invalid(
                "max",
                format!("must be between 1 and {MAX_EVENTS_PER_POLL}"),
            ));
        }
        Ok(self
            .inner
            .store
            .events_after(
                after,
                EventFilter {
                    watches: &[],
                    types,
                },
                max,
            )
            .await?
            .into_iter()
            .map(LogEvent::from_row)
            .collect())
    }
}

fn not_found_sub(name: &str) -> EventsError {
    EventsError::NotFound {
        kind: "subscription",
        name: name.to_owned(),
    }
}

fn view(e: &WatchEntry) -> WatchView {
    let s = e.handle.status.lock().expect("status").clone();
    WatchView {
        spec: e.spec.clone(),
        watched_dirs: s.watched_dirs,
        known_entries: s.known_entries,
        resyncs: s.resyncs,
        events_seen: s.events,
        error: s.error,
        created_at: e.created_at,
    }
}

/// Appends the watches' batches: one transaction per batch (what has queued up meanwhile is
/// merged in, up to `batch_max`), then tells the subscribers.
async fn writer(ev: Events, mut rx: mpsc::Receiver<Vec<NewEvent>>) {
    let max = ev.inner.opts.batch_max;
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < max {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match ev.inner.store.append_events(&batch).await {
                Ok(last) => {
                    ev.inner.last_seq.send_modify(|v| *v = (*v).max(last));
                    break;
                }
                Err(e) => {
                    // Never dropped: the watches block behind us (and resync on overflow).
                    tracing::error!(error = %e, events = batch.len(), "cannot append events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

async fn state_saver(store: Store, mut rx: mpsc::Receiver<watcher::SnapMsg>) {
    while let Some(m) = rx.recv().await {
        match m {
            watcher::SnapMsg::State(watch, entries) => {
                if let Err(e) = store.save_watch_state(&watch, &entries).await {
                    tracing::error!(watch, error = %e, "cannot save the watch's state");
                }
            }
            watcher::SnapMsg::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn ack_flusher(ev: Events) {
    let mut tick = tokio::time::interval(ACK_FLUSH);
    loop {
        tick.tick().await;
        ev.flush_acks().await;
    }
}

async fn retention(ev: Events) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let before = ev
            .inner
            .opts
            .retention_age
            .map(|a| crate::spec::now_us() - a.as_micros() as i64);
        match ev
            .inner
            .store
            .prune_events(before, ev.inner.opts.retention_max_events)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "event retention"),
            Err(e) => tracing::error!(error = %e, "event retention failed"),
        }
    }
}

#[cfg(test)]
mod tests;
