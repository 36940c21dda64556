-- File events (issue 6). An applied migration is never edited: add a new file instead.

-- Watches: the operator's intent, restored at daemon start. `spec` is the JSON the API accepted
-- (validated by the events crate). `trigger_cursor` is the last event seq whose trigger container
-- was started (or skipped), so a restart neither loses nor repeats a trigger.
CREATE TABLE watches (
    name           TEXT PRIMARY KEY,
    spec           TEXT NOT NULL,
    trigger_cursor INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL
);

-- The durable event log. `seq` is never reused (AUTOINCREMENT), even when retention empties the
-- table. Times are integers: `time` in microseconds, `mtime` in nanoseconds since the epoch.
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    watch    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    path     TEXT NOT NULL,
    old_path TEXT,
    is_dir   INTEGER NOT NULL,
    size     INTEGER,
    mtime    INTEGER,
    time     INTEGER NOT NULL
);
CREATE INDEX events_time ON events (time);

-- Durable named consumers. Every event with seq <= `acked` is acknowledged (acks are cumulative).
CREATE TABLE subscriptions (
    name            TEXT PRIMARY KEY,
    watches         TEXT NOT NULL,   -- JSON array of watch names; [] = every watch
    acked           INTEGER NOT NULL,
    ack_deadline_ms INTEGER NOT NULL,
    webhook         TEXT,            -- JSON {url, secret, max_batch} or NULL
    created_at      TEXT NOT NULL
);

-- The last known state of each watch's tree (saved every few seconds and at stop), so that a
-- restart reports what changed while the daemon was down (as events, then `resync`).
CREATE TABLE watch_state (
    watch   TEXT NOT NULL,
    path    TEXT NOT NULL,   -- relative to the watch root
    is_dir  INTEGER NOT NULL,
    is_file INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    mtime   INTEGER NOT NULL,
    PRIMARY KEY (watch, path)
) WITHOUT ROWID;
