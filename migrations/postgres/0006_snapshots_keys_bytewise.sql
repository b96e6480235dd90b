-- The snapshot key's text columns compare byte-wise (collation "C").
--
-- PostgreSQL only: SQLite compares text byte-wise already (its BINARY collation), so
-- this makes the two backends order keys alike. In a database created with a
-- language collation (C.UTF-8 and en_US.UTF-8 included, on PostgreSQL 15), every
-- comparison inside the primary key went through the C library's strcoll: a row
-- written was a few of them at each level of the key's B-tree, and they were about a
-- tenth of the server's work in a replay (docs/performance.md, "thirty-third round").
-- The exports read the key in byte order already (`ORDER BY ... COLLATE "C"`, which
-- the key now gives them without a sort).
--
-- A column whose collation changes keeps its rows; PostgreSQL rebuilds the indexes
-- on it (the primary key and the partition's index), in the migration's transaction.
ALTER TABLE snapshots
    ALTER COLUMN "window" TYPE TEXT COLLATE "C",
    ALTER COLUMN dimension TYPE TEXT COLLATE "C",
    ALTER COLUMN "key" TYPE TEXT COLLATE "C",
    ALTER COLUMN "partition" TYPE TEXT COLLATE "C";
