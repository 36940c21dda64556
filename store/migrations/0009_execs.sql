-- Processes started in running containers (issue 16). The runtime owns `config` (its validated
-- request as JSON); the shim's exec exit records are the truth about the process, copied here.
CREATE TABLE execs (
    id           TEXT PRIMARY KEY,
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    config       TEXT NOT NULL,
    state        TEXT NOT NULL,
    pid          INTEGER,
    exit_code    INTEGER,
    error        TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX execs_by_container ON execs(container_id, created_at);
