-- The export index gains "key" as its last column.
--
-- Every write reads its rows back by primary key first (select_rows: a row-value IN
-- list of (window, window_start, dimension, key)). Without statistics for the rows it
-- has just written (a replay's, or a new deployment's, before ANALYZE runs; and never
-- with autovacuum off) PostgreSQL's planner can rate this index as good as the primary
-- key for that look-up, pick it, and then filter on "key": every look-up walked every
-- key of its window and dimension (10,000 agents: 5 ms each, 64 per chunk; seen on a
-- 153,000-row table, docs/performance.md, "eighth round"). With "key" in the index
-- either index finds a row exactly. Export's range scans (window, dimension,
-- window_start range) read it as before. (The larger cost of that replay, 96 s, was a
-- cached generic plan: see `plan_cache_mode` in src/store/postgres.rs.)
DROP INDEX IF EXISTS snapshots_export;
CREATE INDEX snapshots_export ON snapshots ("window", dimension, window_start, "key");
