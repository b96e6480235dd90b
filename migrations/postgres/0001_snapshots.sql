-- Merged snapshot rows: additive KPI primitives per (window, dimension, key) and
-- ingest partition. Derived KPIs (rates, averages, percentiles) are never stored; they
-- are computed at read time from these columns (src/kpi.rs).
--
-- Counter columns follow engine::acc::COUNTER_NAMES and histogram columns
-- engine::acc::HIST_NAMES (HDR V2 bytes; NULL or empty = empty histogram). A test in
-- src/store/mod.rs checks the two lists against this table.
--
-- The PostgreSQL twin of migrations/sqlite/0001_snapshots.sql: same columns in the
-- same order, same keys and indexes (the statements in src/store/mod.rs serve both).
-- BIGINT where SQLite has INTEGER (64-bit there too), BYTEA where it has BLOB.
--
-- "window", "key" and "partition" are quoted because they are keywords (WINDOW is
-- reserved in PostgreSQL).
CREATE TABLE snapshots (
    "window"         TEXT    NOT NULL,
    window_start     BIGINT  NOT NULL,
    window_end       BIGINT  NOT NULL,
    dimension        TEXT    NOT NULL,
    "key"            TEXT    NOT NULL,
    "partition"      TEXT    NOT NULL,
    offered          BIGINT  NOT NULL DEFAULT 0,
    answered         BIGINT  NOT NULL DEFAULT 0,
    abandoned        BIGINT  NOT NULL DEFAULT 0,
    short_abandoned  BIGINT  NOT NULL DEFAULT 0,
    answered_within  BIGINT  NOT NULL DEFAULT 0,
    abandoned_within BIGINT  NOT NULL DEFAULT 0,
    wait_sum_ms      BIGINT  NOT NULL DEFAULT 0,
    handled          BIGINT  NOT NULL DEFAULT 0,
    handle_sum_ms    BIGINT  NOT NULL DEFAULT 0,
    frt_count        BIGINT  NOT NULL DEFAULT 0,
    frt_sum_ms       BIGINT  NOT NULL DEFAULT 0,
    resolved         BIGINT  NOT NULL DEFAULT 0,
    fcr              BIGINT  NOT NULL DEFAULT 0,
    csat_responses   BIGINT  NOT NULL DEFAULT 0,
    csat_positive    BIGINT  NOT NULL DEFAULT 0,
    csat_sum         BIGINT  NOT NULL DEFAULT 0,
    converted        BIGINT  NOT NULL DEFAULT 0,
    revenue          BIGINT  NOT NULL DEFAULT 0,
    qa_count         BIGINT  NOT NULL DEFAULT 0,
    qa_sum           BIGINT  NOT NULL DEFAULT 0,
    wait_count       BIGINT  NOT NULL DEFAULT 0,
    wait_hist        BYTEA,
    handle_hist      BYTEA,
    frt_hist         BYTEA,
    revision         BIGINT  NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY ("window", window_start, dimension, "key", "partition")
);

-- Export reads one window label and dimension over a range of window starts, across
-- all partitions.
CREATE INDEX snapshots_export ON snapshots ("window", dimension, window_start);

-- clear_partition deletes by partition alone; without this it would scan the table.
CREATE INDEX snapshots_partition ON snapshots ("partition");
