-- Boot and failover (issue 20): the kernel boot id of the node whose daemon last started against
-- this state. A daemon that finds another boot id knows that nothing of that boot runs any more:
-- the node rebooted, or another node (a partner controller) took the array over. One row,
-- replaced at every start. Never edit once applied.
CREATE TABLE node_boot (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    boot_id     TEXT NOT NULL,   -- /proc/sys/kernel/random/boot_id
    hostname    TEXT NOT NULL,   -- the node's name then (tells a failover from a reboot)
    recorded_at TEXT NOT NULL    -- the daemon start that recorded it
);
