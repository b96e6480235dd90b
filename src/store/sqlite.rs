//! SQLite backend: opens the pool; the statements run in [`super::backend`].

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};

use super::backend::{Dialect, RowsWritten, SqlxStore};
use super::sql::{Placeholder, Statements};
use super::{Connections, Pending, StoreError};

/// Connections for a file database. Writes are serialised by SQLite anyway; a few
/// connections let exports and HTTP reads run beside a write (WAL readers do not block).
const FILE_POOL_SIZE: u32 = 4;
/// Rows a query may read ahead of its reader. sqlx runs SQLite on a thread of its own
/// and hands each row over a channel of this many (its default is 50): with a small
/// one, an export's reader and SQLite's thread woke each other per row, and the
/// futex calls were a third of the 1d / agent export's samples. At 4,096 SQLite reads
/// ahead and the reader drains: that export (10,000 rows) took 0.79 of the time
/// (21 pairs; 1,024 gave 1.15 of 4,096's) at up to ~14 MB more held for the reader
/// (rows with their histograms, ~3.4 kB each), per query and only while it runs
/// (docs/performance.md, "twentieth round"). Exports have since left sqlx on SQLite
/// (`sqlite_rows.rs`, `query_each_on_handle`); the spill's reads still go through it.
const ROW_BUFFER: usize = 4096;

/// Page size of a database file this store creates (SQLite's default is 4,096).
const NEW_FILE_PAGE_SIZE: u32 = 16 * 1024;

/// The shared statements in SQLite's placeholder spelling.
static SQL: LazyLock<Statements> = LazyLock::new(|| Statements::new(Placeholder::Question));

pub type SqliteStore = SqlxStore<Sqlite>;

impl Dialect for Sqlite {
    // IMMEDIATE takes the write lock up front: a deferred transaction that reads and
    // then writes can fail with SQLITE_BUSY when another writer got in between, and
    // that failure is not retried by the busy timeout. It also serialises all writers,
    // so no partition lock is needed.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const LOCK_PARTITION: Option<&'static str> = None;
    // Without `WHERE` (and with no triggers on the table) SQLite truncates: the pages
    // are freed without visiting rows. BEGIN IMMEDIATE already keeps other writers out.
    const SPILL_CLEAR_ALL: &'static str = "DELETE FROM spilled_contacts";
    const LOCK_SPILL_TABLE: Option<&'static str> = None;

    fn statements() -> &'static Statements {
        &SQL
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    // Row by row on the connection's own handle, outside sqlx (`sqlite_rows.rs` says
    // why).
    // `Dialect` is public only as the bound of `SqlxStore`; no caller outside the
    // crate can name a `Pending` to call this with.
    #[allow(private_interfaces)]
    fn write_rows<'a>(
        conn: &'a mut SqliteConnection,
        partition: &'a str,
        rows: &'a [Pending<'a>],
        updated_at: &'a str,
    ) -> RowsWritten<'a> {
        Box::pin(super::sqlite_rows::write(
            conn, &SQL, partition, rows, updated_at,
        ))
    }
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

impl SqlxStore<Sqlite> {
    /// Open `sqlite://PATH` (creating the file and its parent directories; WAL mode) or
    /// `sqlite::memory:`, and apply pending migrations.
    pub async fn open(url: &str, connections: Connections) -> Result<SqliteStore, StoreError> {
        let memory = is_memory(url)?;
        let options = SqliteConnectOptions::from_str(url)?.row_buffer_size(ROW_BUFFER);
        let (options, pool) = if memory {
            // An in-memory database lives as long as its last connection: keep exactly
            // one open for the life of the pool (several would also contend for the
            // shared-cache table locks).
            (options, one_connection())
        } else {
            create_parent_dir(options.get_filename()).await?;
            // WAL lets readers run during a write; NORMAL sync is durable across
            // process crashes in WAL mode and only risks the last commits on power loss,
            // which a replay of the source recovers.
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                // Temporary files in memory: a statement that writes many rows inside a
                // transaction (every chunk of snapshot rows and spilled contacts) keeps
                // a statement journal of the pages it changes, which otherwise is a
                // temporary file written and read through the kernel. With the spill
                // on, that was a fifth of the run's system time: 2 M events, 5 pairs,
                // wall 0.95, peak RSS unchanged (docs/performance.md, "fourteenth
                // round"). The journal holds one statement's pages and is freed with
                // it (an export sorts nothing: it reads the key's order, migration 0005).
                .pragma("temp_store", "memory")
                // 16 KiB pages instead of 4: a snapshot row with its histograms is a
                // few hundred bytes, and rows go in mostly in key order, so a page
                // takes four times the rows for each page split, log frame and
                // checkpoint copy. `replay` + 2 exports 0.97 of the CPU and 0.96 of the
                // wall time (11 pairs), the memory target's set-up unchanged
                // (docs/performance.md, "thirty-second round"). Only a new file gets
                // it: a WAL database keeps the page size it was created with.
                .page_size(NEW_FILE_PAGE_SIZE);
            (
                options,
                SqlitePoolOptions::new().max_connections(connections.limit(FILE_POOL_SIZE)),
            )
        };
        // A single writer on a file hands its checkpoints to a thread of its own.
        let background = !memory && connections == Connections::Single;
        let path = options.get_filename().to_path_buf();
        let options = if background {
            options.pragma("wal_autocheckpoint", "0")
        } else {
            options
        };
        let pool = pool.connect_with(options).await?;
        // Records what it applied in `_sqlx_migrations`, so reopening is a no-op.
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let mut store = SqlxStore::new(pool);
        store.discard_failed = !memory;
        if background {
            match Checkpointer::start(&path) {
                Ok(wal) => store.wal = Some(std::sync::Arc::new(wal)),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread to checkpoint SQLite's write-ahead log on; the writer checkpoints it");
                    sqlx::query(&format!(
                        "PRAGMA wal_autocheckpoint = {DEFAULT_AUTOCHECKPOINT}"
                    ))
                    .execute(&store.pool)
                    .await?;
                }
            }
        }
        Ok(store)
    }

    /// `PRAGMA wal_autocheckpoint` of a pooled connection (0: off).
    #[cfg(test)]
    pub(super) async fn autocheckpoint(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&self.pool)
            .await
    }

    #[cfg(test)]
    pub(super) async fn journal_mode(&self) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await
    }

    /// Move the write-ahead log into the database file and empty it, so that the file
    /// alone holds what was written (to copy or archive after a replay). Closing the
    /// last connection would do the same, but the pool closes its connections side by
    /// side and none of them may find itself the last: the log then stayed behind.
    /// Best effort: a reader still open elsewhere (an export, a daemon) keeps part of
    /// the log, which SQLite checkpoints later; nothing is lost either way.
    pub(super) async fn checkpoint(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "moving SQLite's write-ahead log into the database file failed");
        }
    }

    /// `PRAGMA page_size` of the database.
    #[cfg(test)]
    pub(super) async fn page_size(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&self.pool)
            .await
    }

    /// `PRAGMA temp_store` of a pooled connection (2 = memory).
    #[cfg(test)]
    pub(super) async fn temp_store(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&self.pool)
            .await
    }

    /// `PRAGMA compile_options`: how the bundled SQLite was built.
    #[cfg(test)]
    pub(super) async fn compile_options(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&self.pool)
            .await
    }

    /// The details of `EXPLAIN QUERY PLAN` for `sql` (its parameters left unbound).
    #[cfg(test)]
    pub(super) async fn query_plan(&self, sql: &str) -> Result<Vec<String>, sqlx::Error> {
        use sqlx::Row;
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get::<String, _>(3)).collect()
    }

    #[cfg(test)]
    pub(super) async fn table_columns(&self, table: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(&self.pool)
            .await
    }
}

/// SQLite's own default for `wal_autocheckpoint`, in pages.
const DEFAULT_AUTOCHECKPOINT: u32 = 1000;

/// How often the background checkpointer looks for new frames in the log.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A thread that moves a database's write-ahead log into its file, beside the writer.
///
/// By default SQLite checkpoints on the connection that commits past 1,000 pages of
/// log, inside that commit: it syncs the log, copies its pages into the database file
/// and syncs the file. On the host of the forty-third round a sync took 25–50 ms, and
/// `replay`'s last writes, which run alone after its last event, waited for four of
/// them: about 0.13 s of a 1.2 s replay of 1 M events (`strace`; without any sync, via
/// `eatmydata`, the replay took 0.94 of the time; docs/performance.md, "forty-third
/// round"). Here the writer's connection has `wal_autocheckpoint = 0`, and this thread
/// runs a `PASSIVE` checkpoint every [`CHECKPOINT_EVERY`] on a connection of its own.
/// A passive checkpoint takes no lock the writer needs, so the writer goes on while the
/// disk syncs. Durability is unchanged: in WAL mode with `synchronous = NORMAL` a
/// commit is not synced either way, and a checkpoint syncs the log before it copies
/// it. [`Store::close`](super::Store::close) stops the thread and checkpoints what is
/// left.
pub(super) struct Checkpointer {
    /// The thread and the sender that stops it (dropped); `None` once stopped.
    running: std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl Checkpointer {
    /// Only the log for a warning when this fails: the writer then checkpoints.
    fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| std::io::Error::other(format!("opening {}: {e}", path.display())))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Until stopped (a message, or the sender dropped).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    // (busy, frames in the log, frames copied): busy only while another
                    // checkpoint runs; the next tick tries again.
                    if let Err(e) =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "background checkpoint failed; retried at the next tick");
                    }
                }
            })?;
        Ok(Checkpointer {
            running: std::sync::Mutex::new(Some((stop, thread))),
        })
    }

    /// End the thread once its checkpoint in progress, if any, is done. Idempotent.
    pub(super) fn stop(&self) {
        // A poisoned lock still holds the sender and handle: take them anyway.
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, thread)) = running {
            drop(stop);
            if thread.join().is_err() {
                tracing::warn!("the SQLite checkpoint thread panicked");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pool of exactly one connection, open for the pool's life: an in-memory database
/// lives as long as its last connection, and a scratch database holds its file's lock.
fn one_connection() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
}

/// The directory of the database file `url` names, as [`SqliteStore::open`] parses it
/// (`.` for a bare file name); `None` for an in-memory database or a URL it refuses.
pub(super) fn database_dir(url: &str) -> Option<std::path::PathBuf> {
    if is_memory(url).ok()? {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let dir = options.get_filename().parent()?;
    Some(if dir.as_os_str().is_empty() {
        Path::new(".").to_path_buf()
    } else {
        dir.to_path_buf()
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Dimension;

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
        let super::super::Store::Sqlite(s) = &store else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
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

/// `Connections::Single` holds one connection however the writes follow each other;
/// `Shared` may open more (exports beside a write).
#[cfg(test)]
mod connections {
    use super::super::tests::delta;
    use super::*;
    use crate::engine::Dimension;
    use crate::engine::acc::Acc;

    #[tokio::test]
    async fn a_single_store_holds_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cc.db").display());
        let store = super::super::Store::open_with(&url, Connections::Single)
            .await
            .unwrap();
        let super::super::Store::Sqlite(inner) = &store else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        assert_eq!(inner.pool.options().get_max_connections(), 1);
        // Transactions back to back, from two tasks at once: the second waits for the
        // connection instead of opening another.
        let write = |key: &'static str| {
            let store = store.clone();
            async move {
                for i in 0..20_i64 {
                    let acc = Acc {
                        offered: 1,
                        ..Acc::default()
                    };
                    let d = delta(i * 3_600_000, Dimension::Queue, key, acc);
                    store
                        .apply_deltas_at("p", &[d], 1_795_392_000_000)
                        .await
                        .unwrap();
                }
            }
        };
        tokio::join!(write("a"), write("b"));
        assert_eq!(inner.pool.size(), 1);
        let rows = store
            .query("1h", Dimension::Queue, None, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 40);
        let shared = super::super::Store::open(&url).await.unwrap();
        let super::super::Store::Sqlite(shared) = &shared else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        assert_eq!(shared.pool.options().get_max_connections(), FILE_POOL_SIZE);
    }

    /// A single writer on a file leaves its checkpoints to the background thread: its
    /// connection never checkpoints (`wal_autocheckpoint = 0`), and yet a log far under
    /// SQLite's own 1,000-page threshold reaches the database file while the store is
    /// open. Closing stops the thread and empties the log. A shared store keeps
    /// SQLite's default.
    #[tokio::test]
    async fn a_single_writer_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cc.db");
        let url = format!("sqlite://{}", file.display());
        let store = super::super::Store::open_with(&url, Connections::Single)
            .await
            .unwrap();
        let super::super::Store::Sqlite(inner) = &store else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        assert_eq!(inner.autocheckpoint().await.unwrap(), 0);
        assert!(inner.wal.is_some());
        let len = || std::fs::metadata(&file).unwrap().len();
        let poll = std::time::Duration::from_millis(20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Let the thread copy the migrations' pages first: the file's length held for
        // several ticks, so that what it gains below is the rows.
        let mut before = (len(), std::time::Instant::now());
        while before.1.elapsed() < 5 * CHECKPOINT_EVERY && std::time::Instant::now() < deadline {
            std::thread::sleep(poll);
            if len() != before.0 {
                before = (len(), std::time::Instant::now());
            }
        }
        let before = before.0;
        // 5,000 rows: well under a MB of log, some tens of 16 KiB pages, far from the
        // 1,000 pages at which SQLite would checkpoint on the writer's connection.
        let deltas: Vec<_> = (0..5_000)
            .map(|i| {
                let acc = Acc {
                    offered: 1 + i,
                    handle_sum_ms: 7 * i,
                    ..Acc::default()
                };
                delta(0, Dimension::Agent, &format!("agent-{i:05}"), acc)
            })
            .collect();
        store
            .apply_deltas_at("p", &deltas, 1_795_392_000_000)
            .await
            .unwrap();
        while len() < before + 300_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(poll);
        }
        let grown = len();
        assert!(
            grown >= before + 300_000,
            "the database file stayed at {grown} bytes (from {before}): the log was not checkpointed"
        );
        let wal = dir.path().join("cc.db-wal");
        store.close().await;
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "the log is emptied at close"
        );
        let shared = super::super::Store::open(&url).await.unwrap();
        let rows = shared
            .query("1h", Dimension::Agent, None, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 5_000);
        let super::super::Store::Sqlite(shared) = &shared else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        assert_eq!(
            shared.autocheckpoint().await.unwrap(),
            i64::from(DEFAULT_AUTOCHECKPOINT)
        );
        assert!(shared.wal.is_none());
    }
}

/// The snapshot statements' plans under the bundled SQLite, and migration 0005 (the key
/// in export order) on a database written before it.
#[cfg(test)]
mod plans {
    use super::*;

    /// SQLite's plan for `sql` (every parameter bound to 1), one detail per line.
    async fn plan(pool: &sqlx::SqlitePool, sql: &str) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..sql.matches('?').count() {
            q = q.bind(1_i64);
        }
        let rows = q.fetch_all(pool).await.unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// Every row of `snapshots`, each column `quote`d (type and value), in key order.
    async fn dump(pool: &sqlx::SqlitePool) -> Vec<String> {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('snapshots') ORDER BY cid")
                .fetch_all(pool)
                .await
                .unwrap();
        assert!(columns.len() > 30, "{columns:?}");
        let quoted: Vec<String> = columns.iter().map(|c| format!("quote(\"{c}\")")).collect();
        let sql = format!(
            "SELECT {} FROM snapshots ORDER BY \"window\", window_start, dimension, \"key\", \"partition\"",
            quoted.join(" || '|' || ")
        );
        sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap()
    }

    /// Every snapshot row is found through the primary key, the export reads it in
    /// order without a sort (so no other index is needed for it), and removing a
    /// partition does not scan the table. Fails with 0001's key order, whose export
    /// went through its own index and sorted each window start's keys.
    #[tokio::test]
    async fn snapshot_statements_use_the_key_in_export_order() {
        let s = SqliteStore::open("sqlite::memory:", Connections::Shared)
            .await
            .unwrap();
        let rows = plan(&s.pool, &SQL.select_row).await;
        assert!(
            rows.contains(
                "USING INDEX sqlite_autoindex_snapshots_1 (window=? AND dimension=? \
                 AND window_start=? AND key=? AND partition=?)"
            ),
            "read-back by the whole key: {rows}"
        );
        let export = plan(&s.pool, &SQL.select_export).await;
        assert_eq!(
            export,
            "SEARCH snapshots USING INDEX sqlite_autoindex_snapshots_1 (window=? AND \
             dimension=? AND window_start>? AND window_start<?)",
            "an export is one range of the key, already sorted"
        );
        let delete = plan(&s.pool, &SQL.delete_partition).await;
        assert!(
            delete.contains("USING INDEX snapshots_partition"),
            "clearing a partition: {delete}"
        );
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'snapshots' ORDER BY name",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        assert_eq!(
            indexes,
            ["snapshots_partition", "sqlite_autoindex_snapshots_1"]
        );
    }

    /// A database written before migration 0005 keeps every row, byte for byte, and
    /// then reads and writes through the new key.
    #[tokio::test]
    async fn migration_0005_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("migrations");
        std::fs::create_dir(&old).unwrap();
        let mut copied = 0;
        for e in
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap()
        {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.as_str() < "0005" {
                std::fs::copy(e.path(), old.join(&name)).unwrap();
                copied += 1;
            }
        }
        assert_eq!(copied, 4);
        let url = format!("sqlite://{}", dir.path().join("cc.db").display());
        let pool = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        // Keys that sort differently under the two key orders, and bytes in a histogram
        // column (not a histogram: that row is never decoded here).
        for (w, ws, d, k, p, offered) in [
            ("1h", 3_600_000_i64, "queue", "b", "p1", 3_i64),
            ("1h", 0, "queue", "b", "p1", 1),
            ("1h", 0, "agent", "a", "p2", 2),
            ("1d", 0, "all", "all", "p1", 7),
        ] {
            sqlx::query(
                "INSERT INTO snapshots (\"window\", window_start, window_end, dimension, \"key\", \
                 \"partition\", offered, wait_hist, revision, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, CASE WHEN ? = 'all' THEN x'0102' END, 2, 'then')",
            )
            .bind(w)
            .bind(ws)
            .bind(ws + 3_600_000)
            .bind(d)
            .bind(k)
            .bind(p)
            .bind(offered)
            .bind(d)
            .execute(&pool)
            .await
            .unwrap();
        }
        let before = dump(&pool).await;
        assert_eq!(before.len(), 4);
        pool.close().await;

        let store = SqliteStore::open(&url, Connections::Shared).await.unwrap();
        assert_eq!(dump(&store.pool).await, before);
        assert!(
            plan(&store.pool, &SQL.select_export)
                .await
                .contains("sqlite_autoindex_snapshots_1")
        );
        // A correction to a stored row goes through the new key.
        let store = super::super::Store::Sqlite(store);
        let acc = crate::engine::acc::Acc {
            offered: 10,
            ..Default::default()
        };
        let delta = super::super::tests::delta(0, crate::engine::Dimension::Queue, "b", acc);
        store
            .apply_deltas_at("p1", &[delta], 1_795_392_000_000)
            .await
            .unwrap();
        let rows = store
            .query("1h", crate::engine::Dimension::Queue, None, None)
            .await
            .unwrap();
        let got: Vec<(i64, &str, i64)> = rows
            .iter()
            .map(|r| (r.start, r.key.as_str(), r.acc.offered))
            .collect();
        assert_eq!(got, [(0, "b", 11), (3_600_000, "b", 3)]);
    }
}
