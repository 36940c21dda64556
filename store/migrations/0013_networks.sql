-- Bridge networks (driven by netavark) and the addresses containers hold on them. Never edit
-- once applied.
CREATE TABLE networks (
    name       TEXT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,      -- 64 hex digits (netavark's network id)
    interface  TEXT NOT NULL UNIQUE,      -- the bridge's link name on the node
    subnet     TEXT NOT NULL UNIQUE,      -- IPv4 CIDR
    gateway    TEXT NOT NULL,
    subnet6    TEXT UNIQUE,               -- IPv6 CIDR when ipv6 is on
    gateway6   TEXT,
    internal   INTEGER NOT NULL,
    dns        INTEGER NOT NULL,
    options    TEXT NOT NULL,             -- JSON object of string options (netavark's)
    builtin    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

-- A container's address on a network: allocated at its first start, kept across restarts,
-- released with the container.
CREATE TABLE network_endpoints (
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    network      TEXT NOT NULL REFERENCES networks(name),
    ip           TEXT NOT NULL,
    ip6          TEXT,
    PRIMARY KEY (container_id, network),
    UNIQUE (network, ip),
    UNIQUE (network, ip6)
);
