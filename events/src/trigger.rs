//! Triggers: a watch's events start containers (one per event, or one per batch), through the
//! runtime's [`Manager`](inarray_runtime::Manager), like `POST /v1/containers`.
//!
//! The event reaches the container as environment variables — data, never a shell command line:
//! `INARRAY_WATCH`, `INARRAY_EVENT_SEQ`, `INARRAY_EVENT_KIND`, `INARRAY_EVENT_PATH` (relative to
//! the array), `INARRAY_EVENT_OLD_PATH` (moves), `INARRAY_EVENT_IS_DIR` and `INARRAY_EVENT` (the
//! event as JSON); in batch mode `INARRAY_EVENTS` (a JSON array) and `INARRAY_EVENT_COUNT`.
//!
//! Progress is a cursor in SQL (`watches.trigger_cursor`), moved after each container is
//! created; each container is named from its event (`<watch>.ev-<seq>`) and looked up by that name
//! before it is created, so a restart neither skips nor repeats one.
//!
//! **Loop protection rule.** A trigger container's writes must not trigger it again. While a
//! container started by a watch's trigger runs, and for `settle_ms` after it exits, events of
//! that watch on paths inside the array directories the container mounts *read-write* are
//! attributed to it: they are logged and delivered to subscriptions as usual, but start no
//! container. Events elsewhere (including in its read-only volumes) trigger normally.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use inarray_runtime::ContainerConfig;
use inarray_store::{EventFilter, LoggedEvent, NewEvent, TypeMatch};

use crate::service::Events;
use crate::spec::{now_us, Event, Kind, TriggerMode, TriggerSpec};

/// The span during which a trigger container's writes are attributed to it.
#[derive(Clone, Debug)]
pub struct Window {
    /// Array-relative directories it mounts read-write ("" = the whole array).
    pub writable: Vec<String>,
    /// µs since the epoch.
    pub start: i64,
    pub end: Option<i64>,
}

impl Window {
    /// Whether an event at `time` on `path` is attributed to this container.
    pub fn covers(&self, path: &str, time: i64, settle_us: i64) -> bool {
        time >= self.start
            && self.end.is_none_or(|e| time <= e + settle_us)
            && self.writable.iter().any(|w| {
                w.is_empty()
                    || path == w
                    || (path.starts_with(w.as_str()) && path.as_bytes().get(w.len()) == Some(&b'/'))
            })
    }
}

fn writable_dirs(c: &ContainerConfig) -> Vec<String> {
    c.volumes
        .iter()
        .filter(|v| !v.read_only)
        .filter_map(|v| {
            inarray_runtime::volumes::validate_source("source", &v.source)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .collect()
}

fn container_name(watch: &str, seq: i64) -> String {
    let w: String = watch.chars().take(100).collect();
    format!("{w}.ev-{seq}")
}

fn event_env(e: &Event) -> Vec<String> {
    let mut env = vec![
        format!("INARRAY_WATCH={}", e.watch),
        format!("INARRAY_EVENT_SEQ={}", e.seq),
        format!("INARRAY_EVENT_KIND={}", e.kind.as_str()),
        format!("INARRAY_EVENT_PATH={}", e.path),
        format!("INARRAY_EVENT_IS_DIR={}", e.is_dir),
        format!(
            "INARRAY_EVENT={}",
            serde_json::to_string(e).unwrap_or_default()
        ),
    ];
    if let Some(o) = &e.old_path {
        env.push(format!("INARRAY_EVENT_OLD_PATH={o}"));
    }
    env
}

/// The trigger loop of one watch; ends when the watch is deleted (the task is aborted).
pub(crate) async fn run(ev: Events, watch: String) {
    let Some(manager) = ev.inner.manager.clone() else {
        return;
    };
    let mut cursor = match ev.store().list_watches().await {
        Ok(rows) => rows
            .into_iter()
            .find(|r| r.name == watch)
            .map_or(ev.last_seq(), |r| r.trigger_cursor),
        Err(e) => {
            tracing::error!(watch, error = %e, "trigger: cannot read its cursor");
            return;
        }
    };
    let windows: Arc<Mutex<Vec<Window>>> = Arc::default();
    let mut seq_rx = ev.subscribe_seq();
    loop {
        let Some(spec) = ev.watch_spec(&watch).and_then(|s| s.trigger) else {
            // Not installed yet (start-up) or gone.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seq_rx.borrow_and_update();
        let file_events = [TypeMatch {
            object: inarray_store::FILE.into(),
            action: None,
        }];
        let filter = EventFilter {
            watches: std::slice::from_ref(&watch),
            types: &file_events,
        };
        let rows = match ev.store().events_after(cursor, filter, 1000).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(watch, error = %e, "trigger: cannot read the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), seq_rx.changed()).await;
            continue;
        }
        let settle_us = (spec.settle_ms * 1000) as i64;
        let now = now_us();
        windows
            .lock()
            .expect("windows")
            .retain(|w| w.end.is_none_or(|e| e + settle_us >= now - 60_000_000));
        let last = rows.last().map_or(cursor, |r| r.seq);
        let eligible: Vec<(i64, NewEvent)> = rows
            .into_iter()
            .filter_map(|r| match r.event {
                LoggedEvent::File(e) => Some((r.seq, e)),
                LoggedEvent::Lifecycle(_) => None,
            })
            .filter(|(seq, e)| {
                let kind_ok = Kind::parse(&e.kind).is_some_and(|k| spec.events.contains(&k));
                if !kind_ok {
                    return false;
                }
                let attributed = windows
                    .lock()
                    .expect("windows")
                    .iter()
                    .any(|w| w.covers(&e.path, e.time, settle_us));
                if attributed {
                    tracing::info!(watch, seq, path = %e.path, "trigger: event caused by its own container; not fired");
                }
                !attributed
            })
            .collect();
        let groups: Vec<Vec<(i64, NewEvent)>> = match spec.mode {
            TriggerMode::Event => eligible.into_iter().map(|r| vec![r]).collect(),
            TriggerMode::Batch => eligible
                .chunks(spec.max_batch as usize)
                .map(<[(i64, NewEvent)]>::to_vec)
                .collect(),
        };
        for group in groups {
            fire(&manager, &watch, &spec, group, &windows).await;
        }
        cursor = last;
        if let Err(e) = ev.store().set_trigger_cursor(&watch, cursor).await {
            tracing::error!(watch, error = %e, "trigger: cannot save its cursor");
        }
    }
}

async fn fire(
    manager: &inarray_runtime::Manager,
    watch: &str,
    spec: &TriggerSpec,
    group: Vec<(i64, NewEvent)>,
    windows: &Arc<Mutex<Vec<Window>>>,
) {
    let Some(first) = group.first().map(|r| r.0) else {
        return;
    };
    let name = container_name(watch, first);
    match manager.find_by_name(&name).await {
        Ok(Some(_)) => return, // started before a restart
        Ok(_) => {}
        Err(e) => tracing::error!(watch, error = %e, "trigger: cannot look the container up"),
    }
    let events: Vec<Event> = group
        .into_iter()
        .map(|(seq, e)| Event::from_file(seq, e))
        .collect();
    let mut cfg = spec.container.clone();
    cfg.name = Some(name.clone());
    match spec.mode {
        TriggerMode::Event => cfg.env.extend(event_env(&events[0])),
        TriggerMode::Batch => {
            cfg.env.push(format!("INARRAY_WATCH={watch}"));
            cfg.env
                .push(format!("INARRAY_EVENT_COUNT={}", events.len()));
            cfg.env.push(format!(
                "INARRAY_EVENTS={}",
                serde_json::to_string(&events).unwrap_or_default()
            ));
        }
    }
    let start = now_us();
    windows.lock().expect("windows").push(Window {
        writable: writable_dirs(&cfg),
        start,
        end: None,
    });
    // Closes this container's window (matched by its start instant).
    let close = move |windows: &Mutex<Vec<Window>>| {
        let mut w = windows.lock().expect("windows");
        if let Some(x) = w.iter_mut().find(|x| x.start == start && x.end.is_none()) {
            x.end = Some(now_us());
        }
    };
    match manager.create(cfg).await {
        Ok(row) => {
            tracing::info!(watch, container = %name, id = %row.id, "trigger: container started");
            let (m, w) = (manager.clone(), windows.clone());
            tokio::spawn(async move {
                let _ = m.wait(&row.id).await;
                close(&w);
            });
        }
        Err(e) => {
            tracing::error!(watch, container = %name, error = %e, "trigger: cannot start the container");
            close(windows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_writable_paths_while_running_and_settling() {
        let w = Window {
            writable: vec!["data/in".into()],
            start: 100,
            end: Some(200),
        };
        assert!(w.covers("data/in/a.out", 150, 50));
        assert!(w.covers("data/in/x/y", 240, 50));
        assert!(!w.covers("data/in/a.out", 260, 50));
        assert!(!w.covers("data/inbox/a", 150, 50));
        assert!(!w.covers("data/in/a", 99, 50));
        let running = Window {
            writable: vec![String::new()],
            start: 100,
            end: None,
        };
        assert!(running.covers("anything", 1_000_000, 0));
    }

    #[test]
    fn names_and_env_are_data() {
        assert_eq!(container_name("w", 7), "w.ev-7");
        assert_eq!(container_name(&"x".repeat(128), 1).len(), 100 + 5);
        let e = Event {
            seq: 3,
            r#type: "file.close_write".into(),
            watch: "w".into(),
            kind: Kind::CloseWrite,
            path: "in/$(reboot); `x`".into(),
            old_path: None,
            is_dir: false,
            size: Some(1),
            mtime: None,
            time: "t".into(),
        };
        let env = event_env(&e);
        assert!(env.contains(&"INARRAY_EVENT_PATH=in/$(reboot); `x`".to_string()));
        assert!(env.contains(&"INARRAY_EVENT_KIND=close_write".to_string()));
    }
}
