//! Lifecycle events (issue 20): rows of the same log as file events (`events.rs`), with the
//! object's type, id, name and attributes; and the persisted health status of a container's run.

use sqlx::QueryBuilder;

use crate::{Result, Store};

/// A lifecycle event to append (its seq is assigned by the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLifecycleEvent {
    /// `container`, `job`, `image`, `export`, … (never `file`).
    pub object: String,
    /// `create`, `die`, `run_end`, …
    pub action: String,
    pub id: String,
    pub name: String,
    /// A JSON object.
    pub attributes: String,
    /// Microseconds since the epoch.
    pub time: i64,
}

/// Rows per INSERT statement (7 parameters each).
const ROWS_PER_STATEMENT: usize = 1000;

impl Store {
    /// Appends lifecycle events in one transaction, in order; the seq of the last (0: none).
    pub async fn append_lifecycle_events(&self, batch: &[NewLifecycleEvent]) -> Result<i64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO events (watch, kind, path, is_dir, time, type, object_id, object_name,
                   attributes) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind("")
                    .push_bind(&e.action)
                    .push_bind("")
                    .push_bind(false)
                    .push_bind(e.time)
                    .push_bind(&e.object)
                    .push_bind(&e.id)
                    .push_bind(&e.name)
                    .push_bind(&e.attributes);
            });
            qb.build().execute(&mut *tx).await?;
        }
        let (last,): (i64,) = sqlx::query_as("SELECT last_insert_rowid()")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// Records the health of a container's run (JSON, the runtime's), or forgets it (None).
    pub async fn set_container_health(&self, id: &str, health: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE containers SET health = ? WHERE id = ?")
            .bind(health)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The recorded health of a container's run, if any.
    pub async fn container_health(&self, id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT health FROM containers WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|r| r.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventFilter, LoggedEvent, NewEvent, TypeMatch};

    fn life(object: &str, action: &str, name: &str) -> NewLifecycleEvent {
        NewLifecycleEvent {
            object: object.into(),
            action: action.into(),
            id: format!("id-{name}"),
            name: name.into(),
            attributes: r#"{"exit_code":137}"#.into(),
            time: 5,
        }
    }

    #[tokio::test]
    async fn lifecycle_events_share_the_log_and_filter_by_type() {
        let (_d, s) = crate::test_store().await;
        let file = NewEvent {
            watch: "w".into(),
            kind: "create".into(),
            path: "a".into(),
            old_path: None,
            is_dir: false,
            size: None,
            mtime: None,
            time: 1,
        };
        s.append_events(std::slice::from_ref(&file)).await.unwrap();
        let last = s
            .append_lifecycle_events(&[
                life("container", "create", "c1"),
                life("container", "die", "c1"),
                life("job", "run_end", "j"),
            ])
            .await
            .unwrap();
        assert_eq!(last, 4);
        s.append_events(&[NewEvent {
            watch: "v".into(),
            ..file.clone()
        }])
        .await
        .unwrap();
        let seqs = |rows: Vec<crate::EventRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
        let all = s.events_after(0, EventFilter::default(), 10).await.unwrap();
        assert_eq!(seqs(all.clone()), vec![1, 2, 3, 4, 5]);
        assert_eq!(all[0].event, LoggedEvent::File(file));
        assert_eq!(
            all[2].event,
            LoggedEvent::Lifecycle(life("container", "die", "c1"))
        );
        let t = |o: &str, a: Option<&str>| TypeMatch {
            object: o.into(),
            action: a.map(String::from),
        };
        let only = |types: &'static [TypeMatch]| EventFilter {
            watches: &[],
            types,
        };
        let containers = vec![t("container", None)];
        let f = EventFilter {
            watches: &[],
            types: &containers,
        };
        assert_eq!(seqs(s.events_after(0, f, 10).await.unwrap()), vec![2, 3]);
        let die_and_jobs = vec![t("container", Some("die")), t("job", None)];
        let f = EventFilter {
            watches: &[],
            types: &die_and_jobs,
        };
        assert_eq!(seqs(s.events_after(2, f, 10).await.unwrap()), vec![3, 4]);
        assert!(s.events_after(0, only(&[]), 0).await.unwrap().is_empty());
        // A watch filter restricts file events only.
        let w = vec!["v".to_string()];
        let f = EventFilter {
            watches: &w,
            types: &[],
        };
        assert_eq!(
            seqs(s.events_after(0, f, 10).await.unwrap()),
            vec![2, 3, 4, 5]
        );
        // Hostile strings are data.
        let odd = vec![t("container' OR 1=1 --", None)];
        let f = EventFilter {
            watches: &[],
            types: &odd,
        };
        assert!(s.events_after(0, f, 10).await.unwrap().is_empty());
    }
}
