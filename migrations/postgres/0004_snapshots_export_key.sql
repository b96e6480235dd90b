-- The export index gains "key" as its last column.
--
-- Every write reads its rows back by primary key first (select_rows: a row-value IN
-- list of (window, window_start, dimension, key)). Without statistics for the rows it
-- has just written (a replay's, or a new deployment's, before ANALYZE runs; and never
-- with autovacuum off) PostgreSQL's planner rates this index as good as the primary
-- key for that look-up, picks it, and then filters on "key": every look-up walked every
-- key of its window and dimension (10,000 agents: 5 ms each, 64 per chunk), and a
-- 2 M-event replay took 98 s to write 163,000 rows (docs/performance.md, "eighth
-- round"). With "key" in the index either index finds a row exactly. Export's range
-- scans (window, dimension, window_start range) read it as before.
DROP INDEX IF EXISTS snapshots_export;
CREATE INDEX snapshots_export ON snapshots ("window", dimension, window_start, "key");
