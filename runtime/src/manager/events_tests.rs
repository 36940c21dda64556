//! Lifecycle events of containers (`crate::events`), over the recording launcher of `tests.rs`
//! and a recording sink: which events, in which order, with which attributes.

use std::sync::Arc;
use std::time::Duration;

use inarray_store::ContainerState;
use serde_json::json;

use super::tests::{boot, Env};
use crate::events::testing::Recording;

fn with_sink(env: &Env) -> Arc<Recording> {
    let sink = Arc::new(Recording::default());
    env.manager.set_event_sink(sink.clone());
    sink
}

#[tokio::test]
async fn a_container_reports_create_start_die_restart_and_destroy_in_order() {
    let env = Env::new().await;
    let sink = with_sink(&env);
    let row = env.create(json!({"name": "a"})).await;
    env.launcher.exit(&row.id, 7);
    env.until(&row.id, ContainerState::Exited).await;
    env.manager.delete(&row.id, false).await.unwrap();
    assert_eq!(
        sink.of("a"),
        [
            "container.create",
            "container.start",
            "container.die",
            "container.destroy"
        ]
    );
    let die = sink.0.lock().unwrap()[2].clone();
    assert_eq!(die.id, row.id);
    assert_eq!(die.attributes["exit_code"], json!(7));
    assert_eq!(die.attributes["oom_killed"], json!(false));
    assert_eq!(die.attributes["image"], json!("test"));

    // A policy restart: die, restart (why, which count), start.
    let r = env
        .create(json!({"name": "r", "restart": "on-failure:1"}))
        .await;
    env.launcher.exit(&r.id, 1);
    env.until_spawns(3).await;
    env.until(&r.id, ContainerState::Running).await;
    // By hand: die (the stop), restart, start.
    env.manager
        .restart(&r.id, Duration::from_millis(100))
        .await
        .unwrap();
    let got = sink.of("r");
    assert_eq!(
        got,
        [
            "container.create",
            "container.start",
            "container.die",
            "container.restart",
            "container.start",
            "container.die",
            "container.restart",
            "container.start"
        ]
    );
    let restarts: Vec<_> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.name == "r" && e.kind == crate::events::EventType::ContainerRestart)
        .map(|e| e.attributes["reason"].clone())
        .collect();
    assert_eq!(restarts, [json!("policy"), json!("api")]);
}

#[tokio::test]
async fn a_failed_start_dies_with_its_reason_and_a_reboot_reports_what_it_did() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    env.launcher.fail_next("exec: no such file");
    let cfg = serde_json::from_value(json!({"image": "test", "name": "broken"})).unwrap();
    env.manager.create(cfg).await.unwrap_err();
    let always = env
        .create(json!({"name": "always", "restart": "always"}))
        .await;
    let no = env.create(json!({"name": "no"})).await;
    env.launcher.power_loss();

    let manager = env.restarted();
    let sink = Arc::new(Recording::default());
    manager.set_event_sink(sink.clone());
    // The failed start, reported by the first manager (no sink): nothing here.
    manager.reconcile(&boot("boot-2")).await.unwrap();
    for _ in 0..500 {
        if manager.get(&always.id).await.unwrap().state == ContainerState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sink.of("always"),
        ["container.die", "container.restart", "container.start"]
    );
    assert_eq!(sink.of("no"), ["container.die"]);
    let die = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.name == "no")
        .cloned()
        .unwrap();
    assert_eq!(die.attributes["error"], json!(super::REBOOTED));
    assert_eq!(die.id, no.id);

    // A failed start: create, then die with the reason (no start).
    let env = Env::new().await;
    let sink = with_sink(&env);
    env.launcher.fail_next("exec: no such file");
    let cfg = serde_json::from_value(json!({"image": "test", "name": "broken"})).unwrap();
    env.manager.create(cfg).await.unwrap_err();
    assert_eq!(sink.of("broken"), ["container.create", "container.die"]);
    let die = sink.0.lock().unwrap()[1].clone();
    assert!(
        die.attributes["error"]
            .as_str()
            .unwrap()
            .contains("exec: no such file"),
        "{die:?}"
    );
}
