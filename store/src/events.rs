//! File events: watches, the durable event log, and subscriptions (issue 6).
//!
//! The log is appended in batches, one transaction per batch, with multi-row INSERTs; `seq` is
//! assigned by SQLite (AUTOINCREMENT: never reused, even after retention empties the table).

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use crate::lifecycle::NewLifecycleEvent;
use crate::{unique_conflict, Result, Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRow {
    pub name: String,
    /// The watch definition as JSON (validated by the events crate).
    pub spec: String,
    pub trigger_cursor: i64,
    pub created_at: DateTime<Utc>,
}

/// An event to append (its seq is assigned by the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub watch: String,
    pub kind: String,
    pub path: String,
    pub old_path: Option<String>,
    pub is_dir: bool,
    pub size: Option<i64>,
    /// Nanoseconds since the epoch.
    pub mtime: Option<i64>,
    /// Microseconds since the epoch.
    pub time: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub seq: i64,
    pub event: LoggedEvent,
}

/// What a row of the log holds: a file event, or a lifecycle event (`lifecycle.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedEvent {
    File(NewEvent),
    Lifecycle(NewLifecycleEvent),
}

/// Which events a read returns: those of `types` (empty: every type), and among file events
/// only those of `watches` (empty: every watch).
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFilter<'a> {
    pub watches: &'a [String],
    pub types: &'a [TypeMatch],
}

/// `object` alone (`container`: every action), or one action of it (`container` + `die`).
/// File events are the object type [`FILE`], their kinds its actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMatch {
    pub object: String,
    pub action: Option<String>,
}

/// The object type of file events.
pub const FILE: &str = "file";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub name: String,
    /// Watch names; empty = every watch.
    pub watches: Vec<String>,
    pub acked: i64,
    pub ack_deadline_ms: i64,
    /// JSON of the webhook settings, if any.
    pub webhook: Option<String>,
    /// The types it delivers (`file`, `container`, `job.run_end`, `*`, …).
    pub types: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// One entry of a watch's saved state: (path, is_dir, is_file, size, mtime). The row with the
/// empty path marks that a state was saved (even an empty one).
pub type StateEntry = (String, bool, bool, i64, i64);

/// Rows per INSERT statement (9 parameters each; SQLite allows 32766).
const ROWS_PER_STATEMENT: usize = 1000;

fn event_from(r: &sqlx::sqlite::SqliteRow) -> Result<EventRow> {
    use sqlx::Row;
    let object: String = r.try_get("type")?;
    if object != FILE {
        return Ok(EventRow {
            seq: r.try_get("seq")?,
            event: LoggedEvent::Lifecycle(NewLifecycleEvent {
                object,
                action: r.try_get("kind")?,
                id: r
                    .try_get::<Option<String>, _>("object_id")?
                    .unwrap_or_default(),
                name: r
                    .try_get::<Option<String>, _>("object_name")?
                    .unwrap_or_default(),
                attributes: r
                    .try_get::<Option<String>, _>("attributes")?
                    .unwrap_or_else(|| "{}".into()),
                time: r.try_get("time")?,
            }),
        });
    }
    Ok(EventRow {
        seq: r.try_get("seq")?,
        event: LoggedEvent::File(NewEvent {
            watch: r.try_get("watch")?,
            kind: r.try_get("kind")?,
            path: r.try_get("path")?,
            old_path: r.try_get("old_path")?,
            is_dir: r.try_get("is_dir")?,
            size: r.try_get("size")?,
            mtime: r.try_get("mtime")?,
            time: r.try_get("time")?,
        }),
    })
}

fn subscription_from(r: &sqlx::sqlite::SqliteRow) -> Result<SubscriptionRow> {
    use sqlx::Row;
    let watches: String = r.try_get("watches")?;
    let types: String = r.try_get("types")?;
    Ok(SubscriptionRow {
        name: r.try_get("name")?,
        watches: crate::parse_json("subscription watches", &watches)?,
        acked: r.try_get("acked")?,
        ack_deadline_ms: r.try_get("ack_deadline_ms")?,
        webhook: r.try_get("webhook")?,
        types: crate::parse_json("subscription types", &types)?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    // ------------------------------------------------------------------ watches

    pub async fn insert_watch(&self, name: &str, spec: &str, trigger_cursor: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO watches (name, spec, trigger_cursor, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(spec)
        .bind(trigger_cursor)
        .bind(Utc::now())
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "watch", name))?;
        Ok(())
    }

    pub async fn list_watches(&self) -> Result<Vec<WatchRow>> {
        use sqlx::Row;
        let rows =
            sqlx::query("SELECT name, spec, trigger_cursor, created_at FROM watches ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(WatchRow {
                    name: r.try_get("name")?,
                    spec: r.try_get("spec")?,
                    trigger_cursor: r.try_get("trigger_cursor")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Replaces the saved state of a watch's tree: (path, is_dir, is_file, size, mtime).
    pub async fn save_watch_state(&self, watch: &str, entries: &[StateEntry]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM watch_state WHERE watch = ?")
            .bind(watch)
            .execute(&mut *tx)
            .await?;
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO watch_state (watch, path, is_dir, is_file, size, mtime) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(watch)
                    .push_bind(&e.0)
                    .push_bind(e.1)
                    .push_bind(e.2)
                    .push_bind(e.3)
                    .push_bind(e.4);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The saved state of a watch's tree; None when none was ever saved.
    pub async fn load_watch_state(&self, watch: &str) -> Result<Option<Vec<StateEntry>>> {
        let saved: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM watch_state WHERE watch = ? AND path = ''")
                .bind(watch)
                .fetch_one(&self.pool)
                .await?;
        if saved.0 == 0 {
            return Ok(None);
        }
        let rows: Vec<StateEntry> = sqlx::query_as(
            "SELECT path, is_dir, is_file, size, mtime FROM watch_state WHERE watch = ? AND path <> ''",
        )
        .bind(watch)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(rows))
    }

    /// Deletes a watch (and its saved state); false when there was none.
    pub async fn delete_watch(&self, name: &str) -> Result<bool> {
        sqlx::query("DELETE FROM watch_state WHERE watch = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("DELETE FROM watches WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_trigger_cursor(&self, name: &str, seq: i64) -> Result<()> {
        sqlx::query("UPDATE watches SET trigger_cursor = MAX(trigger_cursor, ?) WHERE name = ?")
            .bind(seq)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------------ the log

    /// Appends a batch in one transaction; returns the seq of its last event (0 for an empty
    /// batch). Seqs within the batch are consecutive and in order.
    pub async fn append_events(&self, batch: &[NewEvent]) -> Result<i64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO events (watch, kind, path, old_path, is_dir, size, mtime, time) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(&e.watch)
                    .push_bind(&e.kind)
                    .push_bind(&e.path)
                    .push_bind(&e.old_path)
                    .push_bind(e.is_dir)
                    .push_bind(e.size)
                    .push_bind(e.mtime)
                    .push_bind(e.time);
            });
            qb.build().execute(&mut *tx).await?;
        }
        let (last,): (i64,) = sqlx::query_as("SELECT last_insert_rowid()")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// The highest seq ever assigned (0 when none), even if retention removed it.
    pub async fn last_event_seq(&self) -> Result<i64> {
        let (seq,): (Option<i64>,) =
            sqlx::query_as("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or((None,));
        Ok(seq.unwrap_or(0))
    }

    /// The lowest seq still in the log, if any.
    pub async fn first_event_seq(&self) -> Result<Option<i64>> {
        let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MIN(seq) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq)
    }

    /// Up to `limit` events with seq > `after` that pass `filter`, in order.
    pub async fn events_after(
        &self,
        after: i64,
        filter: EventFilter<'_>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let mut qb = QueryBuilder::new("SELECT * FROM events WHERE seq > ");
        qb.push_bind(after);
        if !filter.types.is_empty() {
            qb.push(" AND (");
            for (i, t) in filter.types.iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push("(type = ").push_bind(t.object.as_str());
                if let Some(a) = &t.action {
                    qb.push(" AND kind = ").push_bind(a.as_str());
                }
                qb.push(")");
            }
            qb.push(")");
        }
        if !filter.watches.is_empty() {
            let names = serde_json::to_string(filter.watches).unwrap_or_else(|_| "[]".into());
            qb.push(" AND (type <> 'file' OR watch IN (SELECT value FROM json_each(")
                .push_bind(names)
                .push(")))");
        }
        qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_from).collect()
    }

    /// Retention: removes events older than `before_us` (µs since the epoch) and, beyond that,
    /// the oldest so that at most `max_events` remain. Returns how many were removed.
    pub async fn prune_events(
        &self,
        before_us: Option<i64>,
        max_events: Option<i64>,
    ) -> Result<u64> {
        let mut removed = 0;
        if let Some(t) = before_us {
            removed += sqlx::query("DELETE FROM events WHERE time < ?")
                .bind(t)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        if let Some(max) = max_events {
            removed +=
                sqlx::query("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?")
                    .bind(max)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
        }
        Ok(removed)
    }

    pub async fn count_events(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    // ------------------------------------------------------------------ subscriptions

    pub async fn insert_subscription(&self, s: &SubscriptionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO subscriptions (name, watches, acked, ack_deadline_ms, webhook, types,
               created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.name)
        .bind(serde_json::to_string(&s.watches).unwrap_or_else(|_| "[]".into()))
        .bind(s.acked)
        .bind(s.ack_deadline_ms)
        .bind(&s.webhook)
        .bind(serde_json::to_string(&s.types).unwrap_or_else(|_| "[]".into()))
        .bind(s.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "subscription", &s.name))?;
        Ok(())
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let rows = sqlx::query("SELECT * FROM subscriptions ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(subscription_from).collect()
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM subscriptions WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Moves a subscription's acknowledged cursor forward (never back).
    pub async fn ack_subscription(&self, name: &str, seq: i64) -> Result<()> {
        sqlx::query("UPDATE subscriptions SET acked = MAX(acked, ?) WHERE name = ?")
            .bind(seq)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(watch: &str, path: &str, time: i64) -> NewEvent {
        NewEvent {
            watch: watch.into(),
            kind: "create".into(),
            path: path.into(),
            old_path: None,
            is_dir: false,
            size: Some(1),
            mtime: Some(2),
            time,
        }
    }

    #[tokio::test]
    async fn batches_get_consecutive_seqs_that_are_never_reused() {
        let (_d, s) = crate::test_store().await;
        assert_eq!(s.last_event_seq().await.unwrap(), 0);
        let batch: Vec<_> = (0..2500).map(|i| ev("w", &format!("f{i}"), i)).collect();
        assert_eq!(s.append_events(&batch).await.unwrap(), 2500);
        let got = s
            .events_after(0, EventFilter::default(), 5000)
            .await
            .unwrap();
        assert_eq!(got.len(), 2500);
        assert!(got.iter().enumerate().all(|(i, e)| e.seq == i as i64 + 1
            && matches!(&e.event, LoggedEvent::File(f) if f.path == format!("f{i}"))));
        // Retention empties the log; seqs go on.
        assert_eq!(s.prune_events(Some(10_000), None).await.unwrap(), 2500);
        assert_eq!(s.append_events(&[ev("v", "x", 1)]).await.unwrap(), 2501);
        assert_eq!(s.last_event_seq().await.unwrap(), 2501);
        // Filter by watch; prune by count.
        s.append_events(&[ev("w", "y", 1), ev("v", "z", 1)])
            .await
            .unwrap();
        let watches = ["v".to_string()];
        let only_v = EventFilter {
            watches: &watches,
            types: &[],
        };
        let v = s.events_after(0, only_v, 10).await.unwrap();
        assert_eq!(
            v.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2501, 2503]
        );
        assert_eq!(s.prune_events(None, Some(1)).await.unwrap(), 2);
        assert_eq!(s.first_event_seq().await.unwrap(), Some(2503));
    }

    #[tokio::test]
    async fn watches_and_subscriptions_round_trip() {
        let (_d, s) = crate::test_store().await;
        s.insert_watch("w", "{}", 0).await.unwrap();
        assert!(s.insert_watch("w", "{}", 0).await.is_err());
        s.set_trigger_cursor("w", 7).await.unwrap();
        s.set_trigger_cursor("w", 3).await.unwrap();
        assert_eq!(s.list_watches().await.unwrap()[0].trigger_cursor, 7);
        let sub = SubscriptionRow {
            name: "s".into(),
            watches: vec!["w".into()],
            acked: 5,
            ack_deadline_ms: 1000,
            webhook: None,
            types: vec!["file".into()],
            created_at: Utc::now(),
        };
        s.insert_subscription(&sub).await.unwrap();
        s.ack_subscription("s", 9).await.unwrap();
        s.ack_subscription("s", 4).await.unwrap();
        let l = s.list_subscriptions().await.unwrap();
        assert_eq!(
            (l[0].acked, l[0].watches.clone()),
            (9, vec!["w".to_string()])
        );
        assert!(s.delete_subscription("s").await.unwrap());
        assert!(s.delete_watch("w").await.unwrap());
        assert!(!s.delete_watch("w").await.unwrap());
    }
}
