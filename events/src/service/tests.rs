//! The events service against a real array directory and inotify (no root needed).

use super::*;
use crate::spec::Event;
use std::collections::BTreeSet;

async fn setup() -> (tempfile::TempDir, Events) {
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("array");
    std::fs::create_dir_all(array.join("w")).unwrap();
    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    let root = Arc::new(ArrayRoot::open(&array, &[]).unwrap());
    let ev = Events::start(store, root, None, EventsOptions::default())
        .await
        .unwrap();
    (dir, ev)
}

fn spec(name: &str, path: &str) -> WatchSpec {
    serde_json::from_value(serde_json::json!({"name": name, "path": path})).unwrap()
}

async fn drain(ev: &Events, sub: &str, quiet: Duration) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let d = ev.next(sub, quiet, 1000).await.unwrap();
        let Some(last) = d.events.last().map(|e| e.seq()) else {
            return all;
        };
        ev.ack(sub, last).await.unwrap();
        all.extend(d.events.iter().filter_map(|e| e.file().cloned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_watch_reports_creates_moves_deletes_and_deep_directories() {
    let (dir, ev) = setup().await;
    let w = dir.path().join("array/w");
    std::fs::create_dir_all(w.join("pre/a")).unwrap();
    ev.create_watch(spec("w1", "w")).await.unwrap();
    ev.create_subscription(
        serde_json::from_value(serde_json::json!({"name": "s", "watches": ["w1"]})).unwrap(),
    )
    .await
    .unwrap();
    std::fs::write(w.join("f1"), b"x").unwrap();
    std::fs::create_dir_all(w.join("d1/d2/d3/d4")).unwrap();
    for i in 0..20 {
        std::fs::write(w.join(format!("d1/d2/d3/d4/g{i}")), b"yy").unwrap();
    }
    // Phases apart, so that what is reported where does not depend on the timing (a
    // directory moved before its creation is processed is reported at its new place).
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(w.join("f1"), w.join("pre/a/f1")).unwrap();
    std::fs::rename(w.join("d1"), w.join("pre/d1")).unwrap();
    std::fs::write(w.join("pre/d1/d2/after-move"), b"z").unwrap();
    std::fs::remove_file(w.join("pre/d1/d2/d3/d4/g0")).unwrap();
    // In from outside the watch, and out of it.
    std::fs::write(dir.path().join("array/x"), b"x").unwrap();
    std::fs::rename(dir.path().join("array/x"), w.join("pre/x")).unwrap();
    std::fs::rename(w.join("pre/a/f1"), dir.path().join("array/f1")).unwrap();
    let got = drain(&ev, "s", Duration::from_millis(500)).await;
    let set: BTreeSet<(String, String, Option<String>)> = got
        .iter()
        .filter(|e| e.kind != crate::Kind::CloseWrite)
        .map(|e| {
            (
                e.kind.as_str().to_owned(),
                e.path.clone(),
                e.old_path.clone(),
            )
        })
        .collect();
    let mut want: BTreeSet<(String, String, Option<String>)> = BTreeSet::new();
    let s = |k: &str, p: &str, o: Option<&str>| (k.to_owned(), p.to_owned(), o.map(String::from));
    want.insert(s("create", "w/f1", None));
    for d in ["w/d1", "w/d1/d2", "w/d1/d2/d3", "w/d1/d2/d3/d4"] {
        want.insert(s("mkdir", d, None));
    }
    for i in 0..20 {
        want.insert(s("create", &format!("w/d1/d2/d3/d4/g{i}"), None));
    }
    want.insert(s("move", "w/pre/a/f1", Some("w/f1")));
    want.insert(s("move", "w/pre/d1", Some("w/d1")));
    want.insert(s("create", "w/pre/d1/d2/after-move", None));
    want.insert(s("delete", "w/pre/d1/d2/d3/d4/g0", None));
    want.insert(s("move", "w/pre/x", None));
    want.insert(s("delete", "w/pre/a/f1", None));
    assert_eq!(
        set,
        want,
        "extra {:?} missing {:?}",
        set.difference(&want).collect::<Vec<_>>(),
        want.difference(&set).collect::<Vec<_>>()
    );
    // Seqs increase; every file's close_write came.
    assert!(got.windows(2).all(|p| p[0].seq < p[1].seq));
    let writes = got
        .iter()
        .filter(|e| e.kind == crate::Kind::CloseWrite)
        .count();
    assert!(writes >= 21, "{writes}");
    ev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_but_not_yet_announced_can_be_acked() {
    // The seed's-load benchmark hit this: a poll read a batch the writer had committed but
    // not yet announced, and the ack of its last seq was refused as "beyond the newest".
    let (_dir, ev) = setup().await;
    ev.create_subscription(serde_json::from_value(serde_json::json!({"name": "s"})).unwrap())
        .await
        .unwrap();
    let announced = ev.last_seq();
    // Committed straight to the log, as the writer does before it announces.
    let batch: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent {
            watch: "w1".into(),
            kind: "close_write".into(),
            path: format!("w/f{i}"),
            old_path: None,
            is_dir: false,
            size: Some(1),
            mtime: None,
            time: crate::spec::now_us(),
        })
        .collect();
    let committed = ev.inner.store.append_events(&batch).await.unwrap();
    assert_eq!(ev.last_seq(), announced, "not announced yet");
    let view = ev.ack("s", committed).await.unwrap();
    assert_eq!(view.acked, committed);
    // Beyond what the log holds is still refused.
    let e = ev.ack("s", committed + 1).await.unwrap_err();
    assert!(e.to_string().contains("beyond the newest event"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_are_delivered_again_after_the_deadline() {
    let (dir, ev) = setup().await;
    let mut w = spec("w1", "w");
    // One event per file: the first poll takes all there is.
    w.events = vec![crate::Kind::CloseWrite];
    ev.create_watch(w).await.unwrap();
    ev.create_subscription(
        serde_json::from_value(serde_json::json!({"name": "s", "ack_deadline_seconds": 1}))
            .unwrap(),
    )
    .await
    .unwrap();
    std::fs::write(dir.path().join("array/w/a"), b"1").unwrap();
    let first = ev.next("s", Duration::from_secs(5), 10).await.unwrap();
    assert!(!first.events.is_empty() && !first.redelivery);
    // Nothing new before the deadline.
    let none = ev.next("s", Duration::from_millis(300), 10).await.unwrap();
    assert!(none.events.is_empty());
    let again = ev.next("s", Duration::from_secs(5), 10).await.unwrap();
    assert!(again.redelivery);
    assert_eq!(again.events, first.events);
    let last = again.events.last().unwrap().seq();
    ev.ack("s", last).await.unwrap();
    assert!(ev.ack("s", last + 1000).await.is_err());
    let after = ev.next("s", Duration::from_millis(1500), 10).await.unwrap();
    assert!(after.events.is_empty());
    for (wait, max) in [
        (Duration::from_secs(301), 10),
        (Duration::ZERO, 0),
        (Duration::ZERO, 10_001),
    ] {
        assert!(matches!(
            ev.next("s", wait, max).await,
            Err(EventsError::Invalid { .. })
        ));
    }
    ev.stop().await;
}

/// The watch root removed: its entries are reported deleted, then `resync`, and the watch
/// shows an error; when the path comes back it is watched again (rescan, `resync`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_root_is_reported_and_watched_again_when_it_returns() {
    let (dir, ev) = setup().await;
    let w = dir.path().join("array/w");
    std::fs::write(w.join("old"), b"1").unwrap();
    ev.create_watch(spec("w1", "w")).await.unwrap();
    ev.create_subscription(serde_json::from_value(serde_json::json!({"name": "s"})).unwrap())
        .await
        .unwrap();
    std::fs::remove_dir_all(&w).unwrap();
    // The root's identity is checked every second.
    let got = drain(&ev, "s", Duration::from_millis(2500)).await;
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.kind.as_str(), e.path.as_str()))
        .collect();
    assert!(kinds.contains(&("delete", "w/old")), "{kinds:?}");
    assert!(kinds.contains(&("resync", "w")), "{kinds:?}");
    let view = ev.watch("w1").unwrap();
    assert!(view.error.is_some(), "{view:?}");
    std::fs::create_dir(&w).unwrap();
    std::fs::write(w.join("new"), b"2").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(w.join("later"), b"3").unwrap();
    let got = drain(&ev, "s", Duration::from_millis(700)).await;
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.kind.as_str(), e.path.as_str()))
        .collect();
    assert!(kinds.contains(&("create", "w/new")), "{kinds:?}");
    assert!(kinds.contains(&("resync", "w")), "{kinds:?}");
    assert!(kinds.contains(&("close_write", "w/later")), "{kinds:?}");
    assert!(ev.watch("w1").unwrap().error.is_none());
    ev.stop().await;
}

/// What changed while the service was stopped is reported at the next start, then `resync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_stopped_are_reported_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("array");
    let w = array.join("w");
    std::fs::create_dir_all(w.join("sub")).unwrap();
    std::fs::write(w.join("stays"), b"1").unwrap();
    std::fs::write(w.join("goes"), b"1").unwrap();
    std::fs::write(w.join("changes"), b"1").unwrap();
    let db = dir.path().join("state.db");
    let open = || async {
        let store = Store::open(&db).await.unwrap();
        let root = Arc::new(ArrayRoot::open(&array, &[]).unwrap());
        Events::start(store, root, None, EventsOptions::default())
            .await
            .unwrap()
    };
    let ev = open().await;
    ev.create_watch(spec("w1", "w")).await.unwrap();
    ev.create_subscription(serde_json::from_value(serde_json::json!({"name": "s"})).unwrap())
        .await
        .unwrap();
    ev.stop().await;
    ev.store().close().await;
    drop(ev);
    // While down.
    std::fs::remove_file(w.join("goes")).unwrap();
    std::fs::write(w.join("changes"), b"22").unwrap();
    std::fs::write(w.join("sub/new"), b"3").unwrap();
    let ev = open().await;
    let got = drain(&ev, "s", Duration::from_millis(700)).await;
    let kinds: BTreeSet<(String, String)> = got
        .iter()
        .map(|e| (e.kind.as_str().to_owned(), e.path.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("delete", "w/goes"),
        ("close_write", "w/changes"),
        ("create", "w/sub/new"),
        ("close_write", "w/sub/new"),
        ("resync", "w"),
    ]
    .iter()
    .map(|(k, p)| (k.to_string(), p.to_string()))
    .collect();
    assert_eq!(kinds, want, "{got:#?}");
    ev.stop().await;
}

/// With a coalescing window, a burst of writes to one file is one close_write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_to_one_file_is_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("array");
    std::fs::create_dir_all(array.join("w")).unwrap();
    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    let root = Arc::new(ArrayRoot::open(&array, &[]).unwrap());
    let opts = EventsOptions {
        coalesce: Duration::from_millis(300),
        ..EventsOptions::default()
    };
    let ev = Events::start(store, root, None, opts).await.unwrap();
    let mut w = spec("w1", "w");
    w.events = vec![crate::Kind::CloseWrite, crate::Kind::Delete];
    ev.create_watch(w).await.unwrap();
    ev.create_subscription(serde_json::from_value(serde_json::json!({"name": "s"})).unwrap())
        .await
        .unwrap();
    for i in 0..20 {
        std::fs::write(array.join("w/hot"), format!("{i}")).unwrap();
    }
    std::fs::write(array.join("w/other"), b"x").unwrap();
    let got = drain(&ev, "s", Duration::from_millis(800)).await;
    let hot: Vec<&Event> = got.iter().filter(|e| e.path == "w/hot").collect();
    assert_eq!(hot.len(), 1, "{got:#?}");
    assert_eq!(hot[0].size, Some(2), "the last write's size");
    assert!(got.iter().any(|e| e.path == "w/other"));
    ev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_paths_cannot_leave_the_array() {
    let (dir, ev) = setup().await;
    std::os::unix::fs::symlink("/etc", dir.path().join("array/w/etc-link")).unwrap();
    std::os::unix::fs::symlink("../..", dir.path().join("array/w/up")).unwrap();
    for bad in ["../", "/etc", "w/../../x", "nope"] {
        let e = ev.create_watch(spec("x", bad)).await.unwrap_err();
        assert!(matches!(e, EventsError::Invalid { .. }), "{bad}: {e}");
    }
    // A symlink is resolved inside the array: /etc → <array>/etc, which does not exist.
    let e = ev.create_watch(spec("x", "w/etc-link")).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // `up` → the array root itself, never above it.
    ev.create_watch(spec("up", "w/up")).await.unwrap();
    std::fs::write(dir.path().join("outside"), b"").unwrap();
    std::fs::write(dir.path().join("array/inside"), b"").unwrap();
    let all = ev.read(0, 100, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all2 = ev.read(0, 100, &[]).await.unwrap();
    assert!(all2.len() >= all.len());
    assert!(
        all2.iter()
            .all(|e| !e.file().unwrap().path.contains("outside")),
        "{all2:?}"
    );
    ev.stop().await;
}
