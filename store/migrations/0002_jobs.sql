-- Scheduled jobs (issue 5). An applied migration is never edited: add a new file instead.

-- A job: a cron schedule that runs a container. `spec` is the validated definition (JSON owned by
-- the jobs crate); `next_fire` is the next scheduled instant, persisted so that a restart knows
-- which fire times it missed. It is NULL while the job is suspended.
CREATE TABLE jobs (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    suspended  INTEGER NOT NULL DEFAULT 0,
    next_fire  TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- One row per attempt of a run. A run is keyed by its job and its scheduled instant (a manual run:
-- the instant it was asked for); retries are further attempts of the same run. A row is committed
-- (state `pending`, together with the job's new `next_fire`) before its container is created, and
-- the container's name is derived from the row's id ("<job>.run-<id>"), so a crash between the two
-- can never start the same run twice.
CREATE TABLE job_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job          TEXT NOT NULL REFERENCES jobs(name) ON DELETE CASCADE,
    scheduled_at TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    trigger      TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch_up')),
    state        TEXT NOT NULL
                 CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'skipped', 'missed')),
    not_before   TEXT NOT NULL,  -- earliest start: the scheduled instant, or the end of a retry backoff
    fired_at     TEXT NOT NULL,  -- when the scheduler committed this row
    container_id TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    exit_code    INTEGER,
    error        TEXT,           -- why it failed, was skipped or missed
    UNIQUE (job, scheduled_at, attempt)
);
CREATE INDEX job_runs_active ON job_runs(state) WHERE state IN ('pending', 'running');
