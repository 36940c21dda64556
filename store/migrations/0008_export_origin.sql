-- NFS exports declared in the config file (issue 3): the file is authoritative for them, so one
-- removed from the file is deleted at the next start. Exports made through the API have 0.
ALTER TABLE exports ADD COLUMN from_config INTEGER NOT NULL DEFAULT 0;
