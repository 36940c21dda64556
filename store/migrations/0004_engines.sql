-- IO engines, and which engine each container runs in. Never edit once applied.
CREATE TABLE engines (
    name       TEXT PRIMARY KEY,
    resources  TEXT NOT NULL,            -- JSON: the engine's limits (owned by the runtime crate)
    created_at TEXT NOT NULL
);

ALTER TABLE containers ADD COLUMN engine TEXT NOT NULL DEFAULT 'default';
ALTER TABLE containers ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX containers_engine ON containers(engine);
