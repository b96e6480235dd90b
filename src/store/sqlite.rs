//! SQLite backend: runs the shared statements of [`super::sql`] and converts rows.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::sql::{Placeholder, Statements};
use super::{
    CheckpointWrite, Claim, ExportRaw, N_COUNTERS, NewRow, Pending, RawRow, StoreError, StoredRow,
    merge_partitions, sql,
};
use crate::engine::Dimension;

/// Connections for a file database. Writes are serialised by SQLite anyway; a few
/// connections let exports and HTTP reads run beside a write (WAL readers do not block).
const FILE_POOL_SIZE: u32 = 4;

/// The shared statements in SQLite's placeholder spelling.
pub(super) static SQL: LazyLock<Statements> =
    LazyLock::new(|| Statements::new(Placeholder::Question));

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Whether a `sqlite:` URL names an in-memory database, mirroring how
/// `SqliteConnectOptions` parses it (which does not expose its in-memory flag).
fn is_memory(url: &str) -> Result<bool, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("sqlite:")
        .ok_or_else(|| invalid("expected a sqlite: URL"))?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (db, params) = match rest.split_once('?') {
        Some((db, params)) => (db, Some(params)),
        None => (rest, None),
    };
    let memory =
        db == ":memory:" || params.is_some_and(|p| p.split('&').any(|kv| kv == "mode=memory"));
    if db.is_empty() && !memory {
        return Err(invalid(
            "no database path; expected sqlite://PATH or sqlite::memory:",
        ));
    }
    Ok(memory)
}

impl SqliteStore {
    /// Open `sqlite://PATH` (creating the file and its parent directories; WAL mode) or
    /// `sqlite::memory:`, and apply pending migrations.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let memory = is_memory(url)?;
        let options = SqliteConnectOptions::from_str(url)?;
        let (options, pool) = if memory {
            // An in-memory database lives as long as its last connection: keep exactly
            // one open for the life of the pool (several would also contend for the
            // shared-cache table locks).
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (options, pool)
        } else {
            create_parent_dir(options.get_filename()).await?;
            // WAL lets readers run during a write; NORMAL sync is durable across
            // process crashes in WAL mode and only risks the last commits on power loss,
            // which a replay of the source recovers.
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            (
                options,
                SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE),
            )
        };
        let pool = pool.connect_with(options).await?;
        // Records what it applied in `_sqlx_migrations`, so reopening is a no-op.
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Apply pre-merged rows in one transaction, with the partition's checkpoint when
    /// given (written first: it is the ownership fence). Returns (inserted, revised).
    pub(super) async fn apply(
        &self,
        partition: &str,
        rows: &[Pending],
        updated_at: &str,
        checkpoint: Option<&CheckpointWrite<'_>>,
    ) -> Result<(u64, u64), StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads
        // and then writes can fail with SQLITE_BUSY when another writer got in between,
        // and that failure is not retried by the busy timeout.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let result = async {
            if let Some(cp) = checkpoint {
                write_checkpoint(&mut tx, partition, cp, updated_at).await?;
            }
            apply_rows(&mut tx, partition, rows, updated_at).await
        }
        .await;
        match result {
            Ok(counts) => {
                tx.commit().await?;
                Ok(counts)
            }
            Err(e) => {
                // Explicit so the connection is clean before the error reaches the
                // caller (dropping the transaction would only queue the rollback).
                if let Err(rb) = tx.rollback().await {
                    tracing::warn!(error = %rb, "rollback after a failed snapshot write failed");
                }
                Err(e)
            }
        }
    }

    pub(super) async fn claim(
        &self,
        partition: &str,
        owner: &str,
        updated_at: &str,
    ) -> Result<Claim, StoreError> {
        let r = sqlx::query(&SQL.claim)
            .bind(partition)
            .bind(owner)
            .bind(updated_at)
            .fetch_one(&self.pool)
            .await?;
        Ok(Claim {
            epoch: r.try_get(0)?,
            seq: r.try_get(1)?,
            next_offset: r.try_get(2)?,
            state: r.try_get(3)?,
        })
    }

    pub(super) async fn committed(
        &self,
        partition: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let r = sqlx::query(&SQL.select_committed)
            .bind(partition)
            .fetch_optional(&self.pool)
            .await?;
        match r {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }

    pub(super) async fn clear_partition(&self, partition: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(&SQL.delete_partition)
            .bind(partition)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn query(
        &self,
        window: &str,
        dimension: Dimension,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let rows = sqlx::query(&SQL.select_export)
            .bind(window)
            .bind(dimension.as_str())
            .bind(from.unwrap_or(i64::MIN))
            .bind(to.unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut raws = Vec::with_capacity(rows.len());
        for r in &rows {
            raws.push(ExportRaw {
                start: r.try_get(0)?,
                end: r.try_get(1)?,
                key: r.try_get(2)?,
                row: raw_row(r, 3)?,
            });
        }
        merge_partitions(window, dimension, raws)
    }

    #[cfg(test)]
    pub(super) async fn applied_migrations(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await
    }

    #[cfg(test)]
    pub(super) async fn journal_mode(&self) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await
    }

    #[cfg(test)]
    pub(super) async fn table_columns(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info('snapshots') ORDER BY cid")
            .fetch_all(&self.pool)
            .await
    }
}

async fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })
        }
        _ => Ok(()),
    }
}

/// The fenced checkpoint write: fails with [`StoreError::Fenced`] when another owner
/// has claimed the partition since `cp.epoch`.
async fn write_checkpoint(
    conn: &mut SqliteConnection,
    partition: &str,
    cp: &CheckpointWrite<'_>,
    updated_at: &str,
) -> Result<(), StoreError> {
    let done = sqlx::query(&SQL.write_checkpoint)
        .bind(cp.next_offset)
        .bind(cp.seq)
        .bind(cp.state)
        .bind(updated_at)
        .bind(partition)
        .bind(cp.epoch)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Fenced {
            partition: partition.to_owned(),
            epoch: cp.epoch,
        });
    }
    Ok(())
}

/// Read the current values of a chunk of rows by primary key, then upsert their sums,
/// chunk by chunk. The statements are prepared once per connection (sqlx caches them
/// by SQL text, and their shapes are fixed).
async fn apply_rows(
    conn: &mut SqliteConnection,
    partition: &str,
    rows: &[Pending],
    updated_at: &str,
) -> Result<(u64, u64), StoreError> {
    let (mut inserted, mut revised) = (0, 0);
    for chunk in rows.chunks(sql::CHUNK) {
        let existing = fetch_existing(conn, partition, chunk).await?;
        let mut writes = Vec::with_capacity(chunk.len());
        for (p, old) in chunk.iter().zip(existing) {
            if old.is_some() {
                revised += 1;
            } else {
                inserted += 1;
            }
            writes.push(p.merge_into(partition, old)?);
        }
        if chunk.len() == sql::CHUNK {
            let mut q = sqlx::query(&SQL.upsert_chunk);
            for (p, w) in chunk.iter().zip(writes) {
                q = bind_upsert(q, p, partition, w, updated_at);
            }
            q.execute(&mut *conn).await?;
        } else {
            for (p, w) in chunk.iter().zip(writes) {
                bind_upsert(sqlx::query(&SQL.upsert_one), p, partition, w, updated_at)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok((inserted, revised))
}

/// The stored rows for `chunk` (1..=CHUNK distinct rows), in chunk order.
async fn fetch_existing(
    conn: &mut SqliteConnection,
    partition: &str,
    chunk: &[Pending],
) -> Result<Vec<Option<RawRow>>, StoreError> {
    let mut q = sqlx::query(&SQL.select_rows).bind(partition);
    for i in 0..sql::CHUNK {
        // A short chunk repeats its last key to fill the fixed statement; IN ignores
        // the repeats.
        let p = &chunk[i.min(chunk.len().saturating_sub(1))];
        q = q
            .bind(&p.window)
            .bind(p.start)
            .bind(p.dimension.as_str())
            .bind(&p.key);
    }
    let found = q.fetch_all(&mut *conn).await?;
    let position: HashMap<(&str, i64, &str, &str), usize> = chunk
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                (
                    p.window.as_str(),
                    p.start,
                    p.dimension.as_str(),
                    p.key.as_str(),
                ),
                i,
            )
        })
        .collect();
    let mut out: Vec<Option<RawRow>> = chunk.iter().map(|_| None).collect();
    for r in &found {
        let id: (&str, i64, &str, &str) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        if let Some(&i) = position.get(&id) {
            out[i] = Some(raw_row(r, 4)?);
        }
    }
    Ok(out)
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Bind one row's [`sql::UPSERT_BINDS`] values, in the order of the upserts.
fn bind_upsert<'q>(
    q: SqliteQuery<'q>,
    p: &'q Pending,
    partition: &'q str,
    row: NewRow,
    updated_at: &'q str,
) -> SqliteQuery<'q> {
    let NewRow {
        revision,
        counters,
        hists,
    } = row;
    let mut q = q
        .bind(&p.window)
        .bind(p.start)
        .bind(p.end)
        .bind(p.dimension.as_str())
        .bind(&p.key)
        .bind(partition);
    for c in counters {
        q = q.bind(c);
    }
    for h in hists {
        q = q.bind(h);
    }
    q.bind(revision).bind(updated_at)
}

/// Revision, counters and histograms starting at column `first` (the order of
/// `select_rows` and `select_export`).
fn raw_row(r: &sqlx::sqlite::SqliteRow, first: usize) -> Result<RawRow, sqlx::Error> {
    let revision = r.try_get(first)?;
    let mut counters = [0; N_COUNTERS];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = r.try_get(first + 1 + i)?;
    }
    let h = first + 1 + N_COUNTERS;
    let hists = [r.try_get(h)?, r.try_get(h + 1)?, r.try_get(h + 2)?];
    Ok(RawRow {
        revision,
        counters,
        hists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::acc::{COUNTER_NAMES, HIST_NAMES};

    #[tokio::test]
    async fn table_matches_accumulator_columns() {
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
        let cols = s.table_columns().await.unwrap();
        let mut expected: Vec<&str> = vec![
            "window",
            "window_start",
            "window_end",
            "dimension",
            "key",
            "partition",
        ];
        expected.extend(COUNTER_NAMES);
        expected.extend(HIST_NAMES);
        expected.extend(["revision", "updated_at"]);
        assert_eq!(cols, expected);
    }

    #[test]
    fn parses_urls() {
        assert!(is_memory("sqlite::memory:").unwrap());
        assert!(is_memory("sqlite://?mode=memory").unwrap());
        assert!(!is_memory("sqlite://data/cc.db").unwrap());
        assert!(!is_memory("sqlite:///var/lib/cc.db?mode=rwc").unwrap());
        assert!(is_memory("sqlite://").is_err());
        assert!(is_memory("file:x.db").is_err());
    }

    #[tokio::test]
    async fn updated_at_is_written() {
        use crate::engine::SnapshotDelta;
        use crate::engine::acc::Acc;
        use crate::engine::window::Interval;
        let store = super::super::Store::open("sqlite::memory:").await.unwrap();
        let acc = Acc {
            offered: 1,
            ..Acc::default()
        };
        let d = SnapshotDelta {
            interval: Interval::Day,
            start: 0,
            end: 86_400_000,
            dimension: Dimension::All,
            key: "all".into(),
            acc,
        };
        store
            .apply_deltas_at("p", &[d], 1_795_392_000_123)
            .await
            .unwrap();
        let super::super::Store::Sqlite(s) = &store;
        let at: String = sqlx::query_scalar("SELECT updated_at FROM snapshots")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(at, "2026-11-23T00:00:00.123Z");
        let hist: Option<Vec<u8>> = sqlx::query_scalar("SELECT wait_hist FROM snapshots")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(hist, None, "empty histograms are stored as NULL");
    }
}
