-- Initial schema. An applied migration is never edited: add a new file instead.
CREATE TABLE images (
    id              TEXT PRIMARY KEY,          -- "sha256:<config digest>"
    manifest_digest TEXT NOT NULL,
    config          TEXT NOT NULL,             -- JSON: entrypoint, cmd, env, working_dir, user
    layers          TEXT NOT NULL,             -- JSON: [{digest, diff_id, media_type, size}], bottom first
    size            INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE TABLE image_names (
    name     TEXT PRIMARY KEY,                 -- canonical reference, "name:tag"
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX image_names_image ON image_names(image_id);

CREATE TABLE containers (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    image_id       TEXT NOT NULL REFERENCES images(id),
    image_ref      TEXT NOT NULL,              -- what the caller asked for
    spec           TEXT NOT NULL,              -- JSON: the validated container request
    state          TEXT NOT NULL CHECK (state IN ('created','running','restarting','exited','dead')),
    exit_code      INTEGER,
    error          TEXT,                       -- why it is dead / why a start failed
    pid            INTEGER,                    -- the container's init, host pid namespace
    shim_pid       INTEGER,
    shim_start     INTEGER,                    -- the shim's start time (clock ticks since boot): guards pid reuse
    stop_requested INTEGER NOT NULL DEFAULT 0, -- an operator stopped it: no restart policy applies
    restart_count  INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT
);
CREATE INDEX containers_image ON containers(image_id);
