-- snapshots keyed in the order the exports read it; the export index goes.
--
-- 0001 keyed the rows ("window", window_start, dimension, "key", "partition") and
-- added an export index ("window", dimension, window_start): every row written went
-- into four B-trees (the table, the key, the export index, the partition index), and
-- an export read the export index, then each row from the table, and sorted each
-- window start's keys. Keyed ("window", dimension, window_start, "key", "partition"),
-- the key is the export's index, already in the order the export reads (window start,
-- then key byte-wise, a key's partitions together): a row goes into three B-trees and
-- an export sorts nothing (docs/performance.md, "twenty-ninth round").
--
-- Still a rowid table: WITHOUT ROWID (the rows stored in the key's B-tree) was tried
-- and was slower. The rows, a few hundred bytes with their histograms, then land in the
-- middle of that tree instead of being appended, and `replay` took 1.08 of the time.
--
-- SQLite cannot change a table's primary key in place: the rows are copied over, as
-- they are the stored figures.
CREATE TABLE snapshots_new (
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
    PRIMARY KEY ("window", dimension, window_start, "key", "partition")
);
INSERT INTO snapshots_new SELECT * FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_new RENAME TO snapshots;
-- clear_partition deletes by partition alone; without this it would scan the table.
CREATE INDEX snapshots_partition ON snapshots ("partition");
