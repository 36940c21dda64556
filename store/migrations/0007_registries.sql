-- Registry credentials set through the API (the config file's are never stored). The password is
-- a secret: never returned by the API; the database file is root-only (0600). Never edit once applied.
CREATE TABLE registry_credentials (
    registry   TEXT PRIMARY KEY,          -- host[:port] as image references name it
    username   TEXT NOT NULL,
    password   TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
