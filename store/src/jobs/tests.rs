//! The job and run rows against a real SQLite database in a temporary directory.
use super::*;
use crate::test_store;
use chrono::TimeZone;

fn at(s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 2, 29, 12, 0, s).unwrap()
}

fn new_run(job: &str, t: DateTime<Utc>, attempt: i64, state: RunState) -> NewRun {
    NewRun {
        job: job.into(),
        scheduled_at: t,
        attempt,
        trigger: RunTrigger::Schedule,
        state,
        not_before: t,
        error: None,
    }
}

#[tokio::test]
async fn jobs_round_trip_and_conflict() {
    let (_d, store) = test_store().await;
    let j = store
        .insert_job("nightly", "{}", false, Some(at(0)), at(0))
        .await
        .unwrap();
    assert_eq!((j.name.as_str(), j.next_fire), ("nightly", Some(at(0))));
    let dup = store.insert_job("nightly", "{}", true, None, at(0)).await;
    assert!(
        matches!(dup, Err(StoreError::Conflict { kind: "job", .. })),
        "{dup:?}"
    );
    assert!(store
        .update_job("nightly", "{\"x\":1}", true, None, at(1))
        .await
        .unwrap());
    let j = store.job("nightly").await.unwrap().unwrap();
    assert_eq!(
        (j.spec.as_str(), j.suspended, j.next_fire),
        ("{\"x\":1}", true, None)
    );
    assert!(!store
        .update_job("nope", "{}", false, None, at(1))
        .await
        .unwrap());
    assert_eq!(store.list_jobs().await.unwrap().len(), 1);
    assert!(store.delete_job("nightly").await.unwrap());
    assert!(store.job("nightly").await.unwrap().is_none());
}

#[tokio::test]
async fn a_batch_claims_each_instant_once_and_moves_next_fire() {
    let (_d, store) = test_store().await;
    for n in ["a", "b"] {
        store
            .insert_job(n, "{}", false, Some(at(0)), at(0))
            .await
            .unwrap();
    }
    let batch = JobBatch {
        runs: vec![
            new_run("a", at(0), 0, RunState::Pending),
            new_run("b", at(0), 0, RunState::Skipped),
        ],
        next_fires: vec![("a".into(), Some(at(1))), ("b".into(), None)],
        updates: vec![],
    };
    let rows = store.commit_job_batch(&batch, at(1)).await.unwrap();
    assert_eq!(rows.len(), 2);
    let a = rows.iter().find(|r| r.job == "a").unwrap();
    assert_eq!(
        (a.state, a.scheduled_at, a.finished_at),
        (RunState::Pending, at(0), None)
    );
    let b = rows.iter().find(|r| r.job == "b").unwrap();
    assert_eq!(b.state, RunState::Skipped);
    assert_eq!(
        b.finished_at,
        Some(at(1)),
        "skipped rows are finished at the batch's time"
    );
    let stored = store.run(a.id).await.unwrap().unwrap();
    assert_eq!(
        (a.fired_at, stored.fired_at),
        (at(1), at(1)),
        "fired at the caller's instant, not the system clock's"
    );
    assert_eq!(
        store.job("a").await.unwrap().unwrap().next_fire,
        Some(at(1))
    );
    assert_eq!(store.job("b").await.unwrap().unwrap().next_fire, None);
    // The same instant again (a crash and a replay): nothing new is inserted.
    let again = store.commit_job_batch(&batch, at(1)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(store.job_runs("a", None).await.unwrap().len(), 1);
    // The rows returned are the rows stored; a bound timestamp and a batched one are the
    // same key.
    for r in &rows {
        assert_eq!(&store.run(r.id).await.unwrap().unwrap(), r);
    }
    let row = store.run(a.id).await.unwrap().unwrap();
    assert_eq!(row.scheduled_at, at(0));
    let active = store.active_runs().await.unwrap();
    assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a.id]);
    assert_eq!(store.active_run_count("a").await.unwrap(), 1);
    assert_eq!(
        store.active_run_counts().await.unwrap(),
        vec![("a".to_owned(), 1)]
    );

    store
        .update_run(&RunUpdate::Running {
            id: a.id,
            container_id: "c1".into(),
            started_at: at(1),
            fired_at: Some(at(0)),
        })
        .await
        .unwrap();
    store
        .update_run(&RunUpdate::Finished {
            id: a.id,
            state: RunState::Succeeded,
            container_id: None,
            exit_code: Some(0),
            error: None,
            finished_at: at(2),
            fired_at: None,
        })
        .await
        .unwrap();
    let row = store.run(a.id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.container_id.as_deref(), row.exit_code),
        (RunState::Succeeded, Some("c1"), Some(0))
    );
    assert_eq!(row.fired_at, at(0), "the commit time replaced the batch's");
    assert_eq!(store.active_run_count("a").await.unwrap(), 0);
    // Deleting the job deletes its runs.
    store.delete_job("a").await.unwrap();
    assert!(store.run(a.id).await.unwrap().is_none());
}

#[tokio::test]
async fn history_counts_runs_by_their_last_attempt() {
    let (_d, store) = test_store().await;
    store
        .insert_job("j", "{}", false, None, at(0))
        .await
        .unwrap();
    let mut b = JobBatch::default();
    // Instants 0..5 succeeded; 5 and 6 failed (6 after a failed retry); 7 is still running
    // after a failed attempt; 8 and 9 were skipped.
    for s in 0..5 {
        b.runs.push(new_run("j", at(s), 0, RunState::Pending));
    }
    b.runs.push(new_run("j", at(5), 0, RunState::Pending));
    b.runs.push(new_run("j", at(6), 0, RunState::Pending));
    b.runs.push(new_run("j", at(6), 1, RunState::Pending));
    b.runs.push(new_run("j", at(7), 0, RunState::Pending));
    b.runs.push(new_run("j", at(7), 1, RunState::Pending));
    b.runs.push(new_run("j", at(8), 0, RunState::Skipped));
    b.runs.push(new_run("j", at(9), 0, RunState::Skipped));
    let rows = store.commit_job_batch(&b, at(1)).await.unwrap();
    let finish = |r: &RunRow, state| RunUpdate::Finished {
        id: r.id,
        state,
        container_id: None,
        exit_code: None,
        error: None,
        finished_at: at(30),
        fired_at: None,
    };
    let mut ups = JobBatch::default();
    for r in &rows {
        let s = r.scheduled_at.timestamp() - at(0).timestamp();
        let state = match (s, r.attempt) {
            (0..=4, _) => RunState::Succeeded,
            (5 | 6, _) => RunState::Failed,
            (7, 0) => RunState::Failed,
            _ => continue,
        };
        ups.updates.push(finish(r, state));
    }
    store.commit_job_batch(&ups, at(1)).await.unwrap();
    let limits = HistoryLimits {
        succeeded: 2,
        failed: 1,
        other: 1,
    };
    let gone = store.runs_beyond_history("j", limits).await.unwrap();
    let keys: Vec<(i64, i64)> = gone
        .iter()
        .map(|r| (r.scheduled_at.timestamp() - at(0).timestamp(), r.attempt))
        .collect();
    // Succeeded 0, 1, 2 (keep 3, 4); failed 5 (keep 6 with both attempts); skipped 8 (keep 9);
    // 7 is active.
    assert_eq!(keys, vec![(0, 0), (1, 0), (2, 0), (5, 0), (8, 0)]);
    let ids: Vec<i64> = gone.iter().map(|r| r.id).collect();
    assert_eq!(store.delete_runs(&ids).await.unwrap(), 5);
    assert!(store
        .runs_beyond_history("j", limits)
        .await
        .unwrap()
        .is_empty());
    let left = store.job_runs("j", Some(3)).await.unwrap();
    let keys: Vec<(i64, i64)> = left
        .iter()
        .map(|r| (r.scheduled_at.timestamp() - at(0).timestamp(), r.attempt))
        .collect();
    assert_eq!(keys, vec![(9, 0), (7, 1), (7, 0)], "newest first");
}
