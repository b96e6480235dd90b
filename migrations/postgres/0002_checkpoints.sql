-- Per-partition ownership and engine checkpoints of the Kafka daemon (the PostgreSQL
-- twin of migrations/sqlite/0002_checkpoints.sql).
--
-- One row per snapshot partition (a Kafka topic partition, e.g. "kafka:events:3").
-- A flush writes the partition's snapshot deltas AND this row (engine state, the next
-- Kafka offset to read, seq + 1) in one transaction, guarded by `epoch`: an instance
-- that claims the partition bumps `epoch`, so a zombie that lost the partition can no
-- longer write (its guarded UPDATE matches no row and its transaction is rolled back).
CREATE TABLE checkpoints (
    "partition"  TEXT    NOT NULL PRIMARY KEY,
    epoch        BIGINT  NOT NULL,
    owner        TEXT    NOT NULL,
    -- NULL until the first commit: start from the beginning of the partition.
    next_offset  BIGINT,
    -- Number of commits; read back to settle a commit whose outcome was not reported.
    seq          BIGINT  NOT NULL DEFAULT 0,
    state        BYTEA,
    updated_at   TEXT    NOT NULL
);
