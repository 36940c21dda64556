-- NFS exports (issue 3). An applied migration is never edited: add a new file instead.
CREATE TABLE exports (
    id         INTEGER PRIMARY KEY AUTOINCREMENT, -- embedded in file handles: never reused
    name       TEXT NOT NULL UNIQUE,              -- the MOUNT path is "/<name>"
    path       TEXT NOT NULL,                     -- relative to the array root
    clients    TEXT NOT NULL,                     -- JSON: [{"match": "*" | IP | CIDR, "access": "rw" | "ro"}]
    squash     TEXT NOT NULL CHECK (squash IN ('root', 'all', 'none')),
    anon_uid   INTEGER NOT NULL,
    anon_gid   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- The key that authenticates NFS file handles (HMAC). One row; it never changes, so handles stay
-- valid across restarts.
CREATE TABLE nfs_handle_key (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    key BLOB NOT NULL
);
