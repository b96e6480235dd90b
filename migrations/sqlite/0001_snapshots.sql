-- Merged snapshot rows: additive KPI primitives per (window, dimension, key) and
-- ingest partition. Derived KPIs (rates, averages, percentiles) are never stored; they
-- are computed at read time from these columns (src/kpi.rs).
--
-- Counter columns follow engine::acc::COUNTER_NAMES and histogram columns
-- engine::acc::HIST_NAMES (HDR V2 bytes; NULL or empty = empty histogram). A test in
-- src/store/mod.rs checks the two lists against this table.
--
-- "window", "key" and "partition" are quoted because they are keywords in SQL
-- dialects we intend to support (WINDOW is reserved in PostgreSQL).
CREATE TABLE snapshots (
    "window"         TEXT    NOT NULL,
    window_start     INTEGER NOT NULL,
    window_end       INTEGER NOT NULL,
    dimension        TEXT    NOT NULL,
    "key"            TEXT    NOT NULL,
    "partition"      TEXT    NOT NULL,
    offered          INTEGER NOT NULL DEFAULT 0,
    answered         INTEGER NOT NULL DEFAULT 0,
    abandoned        INTEGER NOT NULL DEFAULT 0,
    short_abandoned  INTEGER NOT NULL DEFAULT 0,
    answered_within  INTEGER NOT NULL DEFAULT 0,
    abandoned_within INTEGER NOT NULL DEFAULT 0,
    wait_sum_ms      INTEGER NOT NULL DEFAULT 0,
    handled          INTEGER NOT NULL DEFAULT 0,
    handle_sum_ms    INTEGER NOT NULL DEFAULT 0,
    frt_count        INTEGER NOT NULL DEFAULT 0,
    frt_sum_ms       INTEGER NOT NULL DEFAULT 0,
    resolved         INTEGER NOT NULL DEFAULT 0,
    fcr              INTEGER NOT NULL DEFAULT 0,
    csat_responses   INTEGER NOT NULL DEFAULT 0,
    csat_positive    INTEGER NOT NULL DEFAULT 0,
    csat_sum         INTEGER NOT NULL DEFAULT 0,
    converted        INTEGER NOT NULL DEFAULT 0,
    revenue          INTEGER NOT NULL DEFAULT 0,
    qa_count         INTEGER NOT NULL DEFAULT 0,
    qa_sum           INTEGER NOT NULL DEFAULT 0,
    wait_count       INTEGER NOT NULL DEFAULT 0,
    wait_hist        BLOB,
    handle_hist      BLOB,
    frt_hist         BLOB,
    revision         INTEGER NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY ("window", window_start, dimension, "key", "partition")
);

-- Export reads one window label and dimension over a range of window starts, across
-- all partitions.
CREATE INDEX snapshots_export ON snapshots ("window", dimension, window_start);

-- clear_partition deletes by partition alone; without this it would scan the table.
CREATE INDEX snapshots_partition ON snapshots ("partition");
