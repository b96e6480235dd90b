-- The primary key in the order the exports read it; the export index goes.
--
-- The twin of migrations/sqlite/0005_snapshots_in_export_order.sql. With the key as
-- ("window", dimension, window_start, "key", "partition") it leads with the export
-- index's columns (0004: "window", dimension, window_start, "key"), so it serves the
-- export's range scans and the whole-key look-ups alike, and every row written updates
-- one index fewer.
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE snapshots ADD PRIMARY KEY ("window", dimension, window_start, "key", "partition");
DROP INDEX IF EXISTS snapshots_export;
