//! The lifecycle log: the daemon's [`EventSink`] for the runtime's, the scheduler's and the
//! exports' lifecycle events. It is started before them (before reconcile), so that what they
//! record at start is kept, and appends to the same log as file events (same seqs, cursors and
//! subscriptions) through its own writer task: events recorded at once are appended in one
//! transaction (a group commit), in the order they were recorded, and each recorder learns when
//! its event is durable — an action replies only after its event is in the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inarray_runtime::events::{EventSink, LifecycleEvent, Recorded};
use inarray_store::{NewLifecycleEvent, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::spec::lifecycle_row;
use crate::EventsError;

/// Events queued at most; beyond, an event is dropped with an error in the daemon's log (the
/// state disk has been failing for a long time by then).
pub const MAX_QUEUED: usize = 100_000;
/// Events per transaction, at most.
const BATCH_MAX: usize = 1000;
/// How long a recorder waits for its event to be durable before it goes on without (the event
/// stays queued and is written when the store can).
const DURABLE_WAIT: Duration = Duration::from_secs(5);

enum Msg {
    Event(NewLifecycleEvent, oneshot::Sender<()>),
    /// Answered once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone; all clones share one queue and writer.
#[derive(Clone)]
pub struct LifecycleLog {
    tx: mpsc::UnboundedSender<Msg>,
    queued: Arc<AtomicUsize>,
    last_seq: Arc<watch::Sender<i64>>,
}

impl LifecycleLog {
    /// Starts the writer task (on the current tokio runtime).
    pub async fn start(store: Store) -> Result<Self, EventsError> {
        let last = store.last_event_seq().await?;
        let last_seq = Arc::new(watch::channel(last).0);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(writer(store, rx, queued.clone(), last_seq.clone()));
        Ok(Self {
            tx,
            queued,
            last_seq,
        })
    }

    /// The newest seq of the log, told to its readers (shared with the file events' writer).
    pub(crate) fn announcer(&self) -> Arc<watch::Sender<i64>> {
        self.last_seq.clone()
    }

    /// Returns once every event recorded so far is durable (at most 10 s): at shutdown, before
    /// the store closes.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }

    /// Records a row; the receiver is told once it is durable.
    fn queue(&self, row: NewLifecycleEvent) -> Option<oneshot::Receiver<()>> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(object = %row.object, action = %row.action, name = %row.name,
                "lifecycle event dropped: {MAX_QUEUED} events wait for the state database");
            return None;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Event(row, done)).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("lifecycle event after the log stopped: not recorded");
            return None;
        }
        Some(wait)
    }
}

impl EventSink for LifecycleLog {
    fn record(&self, event: LifecycleEvent) -> Recorded {
        let wait = self.queue(lifecycle_row(&event));
        Box::pin(async move {
            if let Some(wait) = wait {
                if tokio::time::timeout(DURABLE_WAIT, wait).await.is_err() {
                    tracing::warn!(
                        "a lifecycle event is not durable after {DURABLE_WAIT:?}: going on (it stays queued)"
                    );
                }
            }
        })
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    queued: Arc<AtomicUsize>,
    last_seq: Arc<watch::Sender<i64>>,
) {
    while let Some(first) = rx.recv().await {
        let mut msgs = vec![first];
        while msgs.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let rows: Vec<NewLifecycleEvent> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Event(row, _) => Some(row.clone()),
                Msg::Flush(_) => None,
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        while !rows.is_empty() {
            match store.append_lifecycle_events(&rows).await {
                Ok(last) => {
                    last_seq.send_modify(|v| *v = (*v).max(last));
                    break;
                }
                Err(e) => {
                    // Never dropped here: recorders wait (bounded), the queue holds the rest.
                    tracing::error!(error = %e, events = rows.len(), "cannot append lifecycle events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        queued.fetch_sub(rows.len(), Ordering::SeqCst);
        for m in msgs {
            let done = match m {
                Msg::Event(_, done) | Msg::Flush(done) => done,
            };
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inarray_runtime::events::EventType;
    use inarray_store::{EventFilter, LoggedEvent};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recorded_events_are_durable_in_order_when_the_future_completes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        let log = LifecycleLog::start(store.clone()).await.unwrap();
        let mut seen = log.announcer().subscribe();
        // Recorded from many tasks at once: each task's own events stay in its order.
        let mut tasks = Vec::new();
        for t in 0..20 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for kind in [
                    EventType::ContainerCreate,
                    EventType::ContainerStart,
                    EventType::ContainerDie,
                    EventType::ContainerDestroy,
                ] {
                    let e = LifecycleEvent::new(kind, format!("id{t}"), format!("c{t}"))
                        .with("exit_code", t);
                    log.record(e).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Durable once recorded: in the store without waiting.
        let rows = store
            .events_after(0, EventFilter::default(), 1000)
            .await
            .unwrap();
        assert_eq!(rows.len(), 80);
        for t in 0..20 {
            let actions: Vec<String> = rows
                .iter()
                .filter_map(|r| match &r.event {
                    LoggedEvent::Lifecycle(e) if e.name == format!("c{t}") => {
                        Some(e.action.clone())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(actions, ["create", "start", "die", "destroy"]);
        }
        assert_eq!(*seen.borrow_and_update(), 80, "readers are told");
        log.flush().await;
    }
}
