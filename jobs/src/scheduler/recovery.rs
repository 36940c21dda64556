//! Recovery at start: the missed-run policy applied once, in one transaction, to the fires lost
//! while the daemon was down, and the runs that were under way re-adopted through their
//! containers' reconciled rows.

use super::*;

impl Jobs {
    pub(super) async fn recover(&self) -> Result<Recovery> {
        let _ops = self.inner.ops.lock().await;
        let store = &self.inner.store;
        let runner = &self.inner.runner;
        let now = self.now();
        let mut report = Recovery::default();
        let rows = store.list_jobs().await?;
        report.jobs = rows.len();
        let mut defs: HashMap<String, Arc<Def>> = HashMap::new();
        for row in &rows {
            // The schedules are parsed below, one job at a time: never all at once (see `Def`).
            match spec_of(row).map(|spec| Def { spec }) {
                Ok(def) => {
                    defs.insert(row.name.clone(), Arc::new(def));
                }
                Err(e) => {
                    report.invalid += 1;
                    tracing::error!(job = %row.name, error = %e, "stored job definition is invalid; it will not fire");
                }
            }
        }

        // 1. Runs that were active when the daemon stopped.
        let mut batch = JobBatch::default();
        let mut drive: Vec<RunRow> = Vec::new();
        let mut interrupted: HashMap<String, Vec<RunRow>> = HashMap::new();
        for mut run in store.active_runs().await? {
            let Some(def) = defs.get(&run.job) else {
                continue;
            };
            if run.state == RunState::Running && run.container_id.is_some() {
                report.adopted += 1;
                drive.push(run);
                continue;
            }
            let name = container_name(&run.job, run.id);
            match runner.find(&name).await? {
                Some((id, state)) => {
                    // Created before the crash: it is this run's container.
                    let started = if state == ContainerState::Created {
                        runner.start(&id).await
                    } else {
                        Ok(())
                    };
                    match started {
                        Ok(()) => {
                            let at = self.now();
                            batch.updates.push(RunUpdate::Running {
                                id: run.id,
                                container_id: id.clone(),
                                started_at: at,
                                fired_at: None,
                            });
                            run.state = RunState::Running;
                            run.container_id = Some(id);
                            run.started_at = Some(at);
                            report.adopted += 1;
                            drive.push(run);
                        }
                        Err(e) => batch.updates.push(RunUpdate::Finished {
                            id: run.id,
                            state: RunState::Failed,
                            container_id: Some(id),
                            exit_code: None,
                            error: Some(format!("cannot start: {e}")),
                            finished_at: now,
                            fired_at: None,
                        }),
                    }
                }
                None if run.attempt > 0 && within_deadline(&def.spec, run.not_before, now) => {
                    report.resumed += 1;
                    drive.push(run);
                }
                None if run.attempt > 0 || run.trigger == RunTrigger::Manual => {
                    report.interrupted += 1;
                    batch.updates.push(RunUpdate::Finished {
                        id: run.id,
                        state: RunState::Failed,
                        container_id: None,
                        exit_code: None,
                        error: Some(
                            "interrupted: the daemon stopped before this run started".into(),
                        ),
                        finished_at: now,
                        fired_at: None,
                    });
                }
                None => {
                    report.interrupted += 1;
                    interrupted.entry(run.job.clone()).or_default().push(run);
                }
            }
        }
        let mut busy: HashSet<String> = drive.iter().map(|r| r.job.clone()).collect();

        // 2. The missed-run policy, once per job, over the fire times that passed (and the fires
        // recorded but interrupted before their container existed).
        let mut queue = Vec::new();
        let mut replaced: HashSet<String> = HashSet::new();
        for row in &rows {
            let Some(def) = defs.get(&row.name) else {
                continue;
            };
            let schedule = match def.schedule() {
                Ok(s) => s,
                Err(e) => {
                    report.invalid += 1;
                    tracing::error!(job = %row.name, error = %e, "stored schedule is invalid; the job will not fire");
                    continue;
                }
            };
            let spec = &def.spec;
            let lost = interrupted.remove(&row.name).unwrap_or_default();
            let next = if row.suspended {
                None
            } else {
                match row.next_fire {
                    Some(t) if t > now => Some(t),
                    _ => schedule.next_after(now),
                }
            };
            if next != row.next_fire {
                batch.next_fires.push((row.name.clone(), next));
            }
            queue.push((
                row.name.clone(),
                next,
                next.and_then(|t| schedule.next_after(t)),
            ));
            let missed_since = row.next_fire.filter(|t| *t <= now && !row.suspended);
            let latest_missed = missed_since
                .and_then(|from| schedule.last_at_or_before(now).filter(|l| *l >= from));
            let n_missed = missed_since
                .map(|from| schedule.count_between(from, now, COUNT_CAP))
                .unwrap_or(0);
            let latest_lost = lost.iter().map(|r| r.scheduled_at).max();
            let Some(latest) = latest_missed.max(latest_lost) else {
                continue;
            };
            let n = n_missed + lost.len();
            let cause = format!("{} missed while the daemon was down", counted(n));
            let decision = if row.suspended {
                Err("the job is suspended".to_owned())
            } else {
                verdict(spec, latest, now).and_then(|()| {
                    match (spec.concurrency, busy.contains(&row.name)) {
                        (Concurrency::Forbid, true) => {
                            Err("the previous run is still active (concurrency forbid)".into())
                        }
                        _ => Ok(()),
                    }
                })
            };
            // The lost fires that do not become the catch-up run are missed.
            let chosen = match &decision {
                Ok(()) => lost.iter().find(|r| r.scheduled_at == latest).map(|r| r.id),
                Err(_) => None,
            };
            for r in &lost {
                if Some(r.id) != chosen {
                    batch.updates.push(RunUpdate::Finished {
                        id: r.id,
                        state: RunState::Missed,
                        container_id: None,
                        exit_code: None,
                        error: Some(format!(
                            "interrupted: the daemon stopped before this run started; {}",
                            match &decision {
                                Ok(()) => "a later run catches up".to_owned(),
                                Err(why) => why.clone(),
                            }
                        )),
                        finished_at: now,
                        fired_at: None,
                    });
                }
            }
            match decision {
                Ok(()) => {
                    report.catch_ups += 1;
                    if spec.concurrency == Concurrency::Replace && busy.contains(&row.name) {
                        replaced.insert(row.name.clone());
                    }
                    busy.insert(row.name.clone());
                    match chosen.and_then(|id| lost.iter().find(|r| r.id == id)) {
                        Some(r) => {
                            batch.updates.push(RunUpdate::CatchUp { id: r.id });
                            let mut r = r.clone();
                            r.trigger = RunTrigger::CatchUp;
                            drive.push(r);
                        }
                        None => batch.runs.push(new_run(
                            &row.name,
                            latest,
                            RunTrigger::CatchUp,
                            RunState::Pending,
                            None,
                        )),
                    }
                }
                Err(why) => {
                    report.missed += 1;
                    if latest_lost != Some(latest) {
                        batch.runs.push(new_run(
                            &row.name,
                            latest,
                            RunTrigger::Schedule,
                            RunState::Missed,
                            Some(format!("{cause}; {why}")),
                        ));
                    }
                }
            }
        }

        // 3. One transaction for all of it, then the tasks and the queue.
        let inserted = store.commit_job_batch(&batch, self.now()).await?;
        self.fired(&inserted);
        drive.extend(
            inserted
                .into_iter()
                .filter(|r| r.state == RunState::Pending),
        );
        let mut st = self.state();
        *st = State::default();
        st.defs = defs;
        for (name, next, following) in queue {
            st.enqueue(&name, next, following);
        }
        // Adopted and resumed runs first, so that catch-ups find them active.
        drive.sort_by_key(|r| r.trigger == RunTrigger::CatchUp);
        let mut tasks = Vec::new();
        for run in drive {
            let Some(def) = st.defs.get(&run.job).cloned() else {
                continue;
            };
            let after = if run.trigger == RunTrigger::CatchUp && replaced.contains(&run.job) {
                st.cancel_active(&run.job, "replaced by a catch-up run")
            } else {
                Vec::new()
            };
            tasks.push(self.register(&mut st, def, run, after, None, None));
        }
        drop(st);
        for task in tasks {
            tokio::spawn(task);
        }
        tracing::info!(
            jobs = report.jobs,
            adopted = report.adopted,
            resumed = report.resumed,
            catch_ups = report.catch_ups,
            missed = report.missed,
            interrupted = report.interrupted,
            invalid = report.invalid,
            "job scheduler started"
        );
        Ok(report)
    }
}
