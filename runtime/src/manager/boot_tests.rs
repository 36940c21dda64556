//! The rules after a reboot or a failover (`boot.rs`), over the recording launcher and the real
//! SQLite store of `tests.rs`: a power loss ends every supervisor unseen, and a daemon started
//! with another boot id records what the reboot did and starts what the policies ask for, paced.

use std::time::Duration;

use inarray_store::ContainerState;
use serde_json::json;

use super::tests::{boot, Env};
use super::{Since, REBOOTED};
use crate::engines::EngineDef;

#[tokio::test]
async fn after_a_reboot_the_policies_say_what_starts_again() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let no = env.create(json!({"name": "no"})).await;
    let always = env
        .create(json!({"name": "always", "restart": "always"}))
        .await;
    let always_stopped = env
        .create(json!({"name": "always-stopped", "restart": "always"}))
        .await;
    let unless = env
        .create(json!({"name": "unless", "restart": "unless-stopped"}))
        .await;
    let unless_stopped = env
        .create(json!({"name": "unless-stopped", "restart": "unless-stopped"}))
        .await;
    // on-failure:1, restarted once already (its budget spent), running when the power goes.
    let failing = env
        .create(json!({"name": "failing", "restart": "on-failure:1"}))
        .await;
    env.launcher.exit(&failing.id, 1);
    env.until_spawns(7).await;
    env.until(&failing.id, ContainerState::Running).await;
    assert_eq!(env.state(&failing.id).await.restart_count, 1);
    let failed_going_down = env
        .create(json!({"name": "failed-going-down", "restart": "on-failure"}))
        .await;
    let clean_going_down = env
        .create(json!({"name": "clean-going-down", "restart": "on-failure"}))
        .await;
    let done = env
        .create(json!({"name": "done", "restart": "on-failure"}))
        .await;
    env.launcher.exit(&done.id, 0);
    env.until(&done.id, ContainerState::Exited).await;
    let never = env
        .create(json!({"name": "never", "restart": "always", "start": false}))
        .await;
    for s in [&always_stopped, &unless_stopped] {
        env.manager.stop(&s.id, Duration::ZERO).await.unwrap();
    }
    let before = env.launcher.spawns().len();

    // The daemon is killed; as the node goes down, two shims record their container's exit;
    // then the power goes.
    env.launcher.exit_unseen(&failed_going_down.id, 3);
    env.launcher.exit_unseen(&clean_going_down.id, 0);
    env.launcher.power_loss();
    let rebooted = env.restarted();
    let report = rebooted.reconcile(&boot("boot-2")).await.unwrap();
    assert_eq!(report.since, Since::Reboot);
    assert_eq!(report.adopted, 0);
    let again = [
        &always,
        &always_stopped,
        &unless,
        &failing,
        &failed_going_down,
    ];
    assert_eq!(report.boot_starts, again.len());
    // Those that ran: no, always, unless, failing and the two that exited going down.
    assert_eq!(report.exited, 6);
    env.until_spawns(before + again.len()).await;
    for c in again {
        let row = env.until(&c.id, ContainerState::Running).await;
        assert!(!row.stop_requested, "{}", row.name);
        assert_eq!(row.restart_count, 0, "{}: a fresh start", row.name);
    }
    let row = env.state(&no.id).await;
    assert_eq!(row.state, ContainerState::Exited);
    assert_eq!(row.error.as_deref(), Some(REBOOTED));
    assert_eq!(row.exit_code, None, "the power went: no exit code");
    let row = env.state(&clean_going_down.id).await;
    assert_eq!(
        (row.state, row.exit_code, row.error.as_deref()),
        (ContainerState::Exited, Some(0), Some(REBOOTED))
    );
    let row = env.state(&unless_stopped.id).await;
    assert_eq!(row.state, ContainerState::Exited);
    assert!(
        row.stop_requested,
        "the operator's stop holds across reboots"
    );
    assert_eq!(
        env.state(&done.id).await.error,
        None,
        "not running at the reboot: untouched"
    );
    assert_eq!(env.state(&never.id).await.state, ContainerState::Created);
    let recorded = env.store.last_boot().await.unwrap().unwrap();
    assert_eq!(recorded.boot_id, "boot-2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        env.launcher.spawns().len(),
        before + again.len(),
        "once each"
    );
}

#[tokio::test]
async fn after_a_reboot_no_supervisor_of_the_old_boot_is_asked_about() {
    // A pid and start time of the old boot may name a process of the new one: after a reboot
    // the daemon adopts nothing, whatever the launcher would say.
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let c = env.create(json!({"restart": "always"})).await;
    let rebooted = env.restarted();
    let report = rebooted.reconcile(&boot("boot-2")).await.unwrap();
    assert_eq!((report.adopted, report.boot_starts), (0, 1));
    env.until_spawns(2).await;
    env.until(&c.id, ContainerState::Running).await;
}

#[tokio::test]
async fn a_partner_controller_takes_over_the_same_way() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let always = env.create(json!({"restart": "always"})).await;
    let no = env.create(json!({})).await;
    env.launcher.power_loss();
    let partner = env.restarted();
    let report = partner
        .reconcile(&super::NodeBoot {
            boot_id: "boot-9".into(),
            hostname: "node-b".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.since, Since::Failover);
    env.until(&always.id, ContainerState::Running).await;
    let row = env.state(&no.id).await;
    assert_eq!(
        (row.state, row.error.as_deref()),
        (ContainerState::Exited, Some(REBOOTED))
    );
    assert_eq!(
        env.store.last_boot().await.unwrap().unwrap().hostname,
        "node-b"
    );
}

#[tokio::test]
async fn boot_starts_are_paced_engine_by_engine_then_oldest_first() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    for name in ["zeta", "alpha"] {
        env.manager
            .create_engine(EngineDef {
                name: name.into(),
                resources: Default::default(),
            })
            .await
            .unwrap();
    }
    let mut made = Vec::new();
    for i in 0..12 {
        let engine = ["zeta", "default", "alpha"][i % 3];
        let c = env
            .create(json!({"restart": "always", "engine": engine}))
            .await;
        made.push((engine, c.id));
    }
    let before = env.launcher.spawns().len();
    env.launcher.power_loss();
    env.launcher.set_spawn_delay(Duration::from_millis(30));
    let mut opts = env.opts.clone();
    opts.restart_concurrency = 3;
    let rebooted = env.restarted_with(opts);
    rebooted.reconcile(&boot("boot-2")).await.unwrap();
    env.until_spawns(before + made.len()).await;
    for (_, id) in &made {
        env.until(id, ContainerState::Running).await;
    }
    assert_eq!(
        env.launcher.pace.lock().unwrap().max_in_flight,
        3,
        "at most restart_concurrency starts at once, and that many"
    );
    let mut want = made.clone();
    want.sort_by_key(|(engine, _)| *engine); // stable: creation order within an engine
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    // Starts begin in that order; the three under way at once reach the launcher in any order.
    let got = env.launcher.spawns()[before..].to_vec();
    for (i, id) in want.iter().enumerate() {
        let at = got.iter().position(|g| g == id).unwrap();
        assert!(
            at.abs_diff(i) < 3,
            "{id}: start {at}, wanted about {i}: {got:?} vs {want:?}"
        );
    }
}

#[tokio::test]
async fn a_stop_before_its_boot_start_keeps_it_stopped() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let first = env.create(json!({"restart": "always"})).await;
    let second = env.create(json!({"restart": "always"})).await;
    env.launcher.power_loss();
    env.launcher.set_spawn_delay(Duration::from_millis(200));
    let mut opts = env.opts.clone();
    opts.restart_concurrency = 1;
    let rebooted = env.restarted_with(opts);
    rebooted.reconcile(&boot("boot-2")).await.unwrap();
    // The second waits for the first's start; an operator stops it meanwhile.
    assert_eq!(
        env.state(&second.id).await.state,
        ContainerState::Restarting
    );
    let stopped = rebooted.stop(&second.id, Duration::ZERO).await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    env.until(&first.id, ContainerState::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = env.state(&second.id).await;
    assert_eq!(row.state, ContainerState::Exited);
    assert!(row.stop_requested);
    assert_eq!(
        env.launcher.spawns().len(),
        3,
        "two first starts, one boot start"
    );
}

#[tokio::test]
async fn starts_a_killed_daemon_left_undone_are_made_at_its_next_start() {
    // The reboot was recorded (its starts decided, `restarting`, no exit record anywhere), then
    // that daemon was killed before it started them; the next one, in the same boot, starts
    // them instead of declaring their supervisors lost.
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let c = env.create(json!({"restart": "unless-stopped"})).await;
    env.launcher.power_loss();
    env.store
        .record_boot(
            &inarray_store::BootRow {
                boot_id: "boot-2".into(),
                hostname: "node-a".into(),
                recorded_at: chrono::Utc::now(),
            },
            &[inarray_store::BootChange {
                id: c.id.clone(),
                exit: inarray_store::ExitUpdate {
                    state: ContainerState::Restarting,
                    exit_code: None,
                    error: Some(REBOOTED.into()),
                    finished_at: chrono::Utc::now(),
                    oom_killed: false,
                },
                start_again: true,
            }],
        )
        .await
        .unwrap();
    assert!(!env.manager.paths(&c.id).exit_record().exists());
    let next = env.restarted();
    let report = next.reconcile(&boot("boot-2")).await.unwrap();
    assert_eq!((report.since, report.restarted), (Since::Restart, 1));
    let row = env.until(&c.id, ContainerState::Running).await;
    assert_eq!(row.error, None);
}

#[tokio::test]
async fn after_a_reboot_an_auto_remove_container_it_ended_is_removed() {
    let env = Env::new().await;
    env.manager.reconcile(&boot("boot-1")).await.unwrap();
    let gone = env
        .create(json!({"name": "once", "auto_remove": true}))
        .await;
    let kept = env.create(json!({"name": "kept"})).await;
    env.launcher.power_loss();
    let rebooted = env.restarted();
    rebooted.reconcile(&boot("boot-2")).await.unwrap();
    assert!(rebooted.get(&gone.id).await.is_err(), "removed");
    let last = rebooted.removed_container(&gone.id).expect("remembered");
    assert_eq!(last.error.as_deref(), Some(REBOOTED));
    assert_eq!(env.state(&kept.id).await.state, ContainerState::Exited);
}
