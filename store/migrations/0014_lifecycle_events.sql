-- Lifecycle events (issue 20): what happens to containers, jobs, images and exports goes into the
-- same durable log as file events (`events`), under the same seqs, cursors and subscriptions.
-- An applied migration is never edited: add a new file instead.

-- What an event is about: 'file' for file events (every row before this migration), else the
-- object's type ('container', 'job', 'image', 'export', …). `kind` holds the action ('die',
-- 'run_end', …) as it holds a file event's kind. A lifecycle row has `watch` and `path` empty,
-- the object's id and name, and its attributes as a JSON object.
ALTER TABLE events ADD COLUMN type TEXT NOT NULL DEFAULT 'file';
ALTER TABLE events ADD COLUMN object_id TEXT;
ALTER TABLE events ADD COLUMN object_name TEXT;
ALTER TABLE events ADD COLUMN attributes TEXT;
-- A subscriber of one type reads only its rows, however many file events there are.
CREATE INDEX events_type_seq ON events (type, seq);

-- The types a subscription delivers: a JSON array of 'file', an object type or 'type.action'
-- ('*' = every type). Subscriptions made before lifecycle events existed keep file events only.
ALTER TABLE subscriptions ADD COLUMN types TEXT NOT NULL DEFAULT '["file"]';

-- The health status of a container's current run (JSON {status, run}), so a daemon restart does
-- not forget it (nor report it again as a change).
ALTER TABLE containers ADD COLUMN health TEXT;
