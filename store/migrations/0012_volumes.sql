-- Array volumes (issue 19): named pieces of the array with a size limit, snapshots and clones.
-- A row is the registry entry of one volume; `state` makes creation and deletion crash-safe:
-- a row is inserted `creating` before anything exists on disk and becomes `ready` once the
-- volume is complete; a delete marks it `deleting` before removing anything. At start the daemon
-- finishes what a crash interrupted (`creating` → removed, `deleting` → removed), so a volume is
-- either fully there or fully gone. Never edit once applied.
CREATE TABLE volumes (
    name        TEXT PRIMARY KEY,
    backend     TEXT NOT NULL,             -- btrfs | plain | project
    size        INTEGER,                   -- the quota in bytes; NULL: none
    labels      TEXT NOT NULL DEFAULT '{}',-- JSON object of strings
    state       TEXT NOT NULL,             -- creating | ready | deleting
    project_id  INTEGER UNIQUE,            -- the project-quota backend's id; never shared
    created_at  TEXT NOT NULL
);

-- Snapshots of a volume, with the same crash-safe states.
CREATE TABLE volume_snapshots (
    volume      TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,             -- creating | ready | deleting
    created_at  TEXT NOT NULL,
    PRIMARY KEY (volume, name)
);
