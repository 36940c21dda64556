//! The boot a daemon last started in (`node_boot`), and the one transaction that records what a
//! reboot did to the containers together with the new boot.

use chrono::{DateTime, Utc};

use crate::{ExitUpdate, Result, Store};

/// The node and kernel boot a daemon started in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootRow {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    pub hostname: String,
    pub recorded_at: DateTime<Utc>,
}

/// What a reboot did to one container: its run ended (`exit`), and whether it is to start again
/// (then `exit.state` is `restarting`, its restart count starts again at 0 and a stop request
/// is cleared, as by a start).
#[derive(Clone, Debug)]
pub struct BootChange {
    pub id: String,
    pub exit: ExitUpdate,
    pub start_again: bool,
}

impl Store {
    /// The boot recorded by the last daemon start, if any.
    pub async fn last_boot(&self) -> Result<Option<BootRow>> {
        let row: Option<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT boot_id, hostname, recorded_at FROM node_boot WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(boot_id, hostname, recorded_at)| BootRow {
            boot_id,
            hostname,
            recorded_at,
        }))
    }

    /// Records the boot this daemon runs in, with what the reboot did to the containers: one
    /// transaction, so a daemon killed half-way applies the reboot again at its next start.
    pub async fn record_boot(&self, boot: &BootRow, changes: &[BootChange]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for c in changes {
            sqlx::query(
                "UPDATE containers SET state = ?, exit_code = ?, error = ?, finished_at = ?,
                   oom_killed = ?, pid = NULL, shim_pid = NULL, shim_start = NULL,
                   restart_count = CASE WHEN ? THEN 0 ELSE restart_count END,
                   stop_requested = CASE WHEN ? THEN 0 ELSE stop_requested END
                 WHERE id = ?",
            )
            .bind(c.exit.state.as_str())
            .bind(c.exit.exit_code)
            .bind(&c.exit.error)
            .bind(c.exit.finished_at)
            .bind(c.exit.oom_killed)
            .bind(c.start_again)
            .bind(c.start_again)
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO node_boot (id, boot_id, hostname, recorded_at) VALUES (1, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET boot_id = excluded.boot_id,
               hostname = excluded.hostname, recorded_at = excluded.recorded_at",
        )
        .bind(&boot.boot_id)
        .bind(&boot.hostname)
        .bind(boot.recorded_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_store, ContainerState, NewContainer, NewImage};

    #[tokio::test]
    async fn a_boot_and_its_changes_are_recorded_together() {
        let (_d, store) = test_store().await;
        assert_eq!(store.last_boot().await.unwrap(), None);
        let image = format!("sha256:{}", "ab".repeat(32));
        store
            .put_image(NewImage {
                id: &image,
                manifest_digest: "sha256:00",
                names: &["img:latest".to_owned()],
                config: &serde_json::json!({}),
                layers: &serde_json::json!([]),
                size: 1,
            })
            .await
            .unwrap();
        for (id, name) in [("aaaa0001", "web"), ("aaaa0002", "batch")] {
            store
                .insert_container(NewContainer {
                    id,
                    name,
                    image_id: &image,
                    image_ref: "img:latest",
                    spec: "{}",
                    engine: "default",
                })
                .await
                .unwrap();
            store.mark_running(id, 10, 9, 100).await.unwrap();
        }
        store.set_stop_requested("aaaa0001", true).await.unwrap();
        store.bump_restart_count("aaaa0001").await.unwrap();
        let at = Utc::now();
        let exit = |state| ExitUpdate {
            state,
            exit_code: None,
            error: Some("the node rebooted".into()),
            finished_at: at,
            oom_killed: false,
        };
        let boot = BootRow {
            boot_id: "b-1".into(),
            hostname: "node-a".into(),
            recorded_at: at,
        };
        store
            .record_boot(
                &boot,
                &[
                    BootChange {
                        id: "aaaa0001".into(),
                        exit: exit(ContainerState::Restarting),
                        start_again: true,
                    },
                    BootChange {
                        id: "aaaa0002".into(),
                        exit: exit(ContainerState::Exited),
                        start_again: false,
                    },
                ],
            )
            .await
            .unwrap();
        assert_eq!(store.last_boot().await.unwrap(), Some(boot));
        let again = store.container("aaaa0001").await.unwrap().unwrap();
        assert_eq!(again.state, ContainerState::Restarting);
        assert_eq!((again.restart_count, again.stop_requested), (0, false));
        assert_eq!(again.pid, None);
        let ended = store.container("aaaa0002").await.unwrap().unwrap();
        assert_eq!(ended.state, ContainerState::Exited);
        assert_eq!(ended.error.as_deref(), Some("the node rebooted"));
        // The row is replaced, not added to.
        let next = BootRow {
            boot_id: "b-2".into(),
            hostname: "node-b".into(),
            recorded_at: Utc::now(),
        };
        store.record_boot(&next, &[]).await.unwrap();
        assert_eq!(store.last_boot().await.unwrap(), Some(next));
    }
}
