-- API access (issue 8): bearer tokens and the audit log. Never edit once applied.

-- Tokens for the TCP listeners. Only the SHA-256 of the secret is kept: the secret is a random
-- 256-bit value shown once at creation.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: audit rows name it
    name         TEXT NOT NULL UNIQUE,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    secret_hash  BLOB NOT NULL UNIQUE,              -- sha256(secret), 32 bytes
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL
);

-- One row per mutating API call (and per refused one), written before the reply is sent.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    who      TEXT NOT NULL,   -- "token:<id>:<name>", "unix:<uid>", "anonymous"
    method   TEXT NOT NULL,
    route    TEXT NOT NULL,   -- the matched route template, e.g. /v1/containers/{id}
    target   TEXT NOT NULL,   -- the request path as sent
    status   INTEGER NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
