//! Snapshot persistence: only this module writes to the database.
//!
//! The engine flushes additive [`SnapshotDelta`]s; [`Store::apply_deltas`] adds them to
//! the stored row of the same (window, window start, dimension, key, partition) and
//! bumps the row's revision. Rows hold only additive primitives (counters and HDR
//! histograms), so partitions written by different ingest processes merge exactly at
//! read time ([`Store::query`]) and derived KPIs are never stored.
//!
//! Backend-neutral parts live here: the SQL text ([`sql::Statements`], written in the
//! dialect SQLite and PostgreSQL share: quoted keyword columns, row-value `IN`,
//! `ON CONFLICT … DO UPDATE`; only the placeholder spelling differs), the row
//! arithmetic, and merging across partitions. `backend.rs` runs the statements and
//! converts rows for any sqlx driver; `sqlite.rs` and `postgres.rs` only open their
//! pools and say how a write transaction begins.

mod backend;
pub mod postgres;
mod postgres_rows;
pub mod spill;
pub mod spill_log;
pub mod sqlite;
mod sqlite_rows;
#[doc(hidden)]
pub mod testing;

use std::cmp::Ordering;
use std::path::PathBuf;

use crate::engine::acc::{Acc, COUNTER_NAMES, HIST_NAMES};
use crate::engine::hist::{Hist, HistError};
use crate::engine::spill::{SpillBatch, SpilledContact};
use crate::engine::window::Interval;
use crate::engine::{Dimension, SnapshotDelta};

/// Number of counter columns (`COUNTER_NAMES`).
const N_COUNTERS: usize = COUNTER_NAMES.len();
/// Number of histogram columns (`HIST_NAMES`).
const N_HISTS: usize = HIST_NAMES.len();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create directory {} for the store: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// From SQLite's own row writer ([`sqlite_rows`]), which calls SQLite on the
    /// connection's handle rather than through sqlx.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The partition was claimed by another owner (a newer epoch) since this one
    /// claimed it: the caller lost the partition and must drop its state unwritten.
    #[error(
        "partition {partition:?} is now owned by another instance (epoch {epoch} is stale); nothing was written"
    )]
    Fenced { partition: String, epoch: i64 },
    /// A stored or merged histogram is unusable: undecodable bytes, or a correction
    /// that would take a bin below zero (the deltas do not match what was stored).
    /// `row` names the snapshot row for the operator (one string keeps the error small).
    /// A stored value that this version could not have written.
    #[error("corrupt store content: {what}")]
    Corrupt { what: String },
    #[error("snapshot {row}, column {column}: {source}")]
    Hist {
        row: String,
        column: &'static str,
        #[source]
        source: HistError,
    },
}

impl StoreError {
    /// Whether the same call may succeed if retried later (after a backoff): the
    /// connection or the server was lost or is not there yet, or the database aborted
    /// the transaction to resolve a conflict. Everything else (bad URL, schema, SQL,
    /// data, a fenced partition) fails again the same way. A failed call wrote nothing,
    /// except a commit whose COMMIT was lost: see [`Store::committed`].
    pub fn is_transient(&self) -> bool {
        use sqlx::migrate::MigrateError;
        match self {
            StoreError::Db(e)
            | StoreError::Migrate(
                MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _),
            ) => sqlx_transient(e),
            // SQLITE_BUSY, as for sqlx's SQLite errors below.
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DatabaseBusy
            }
            _ => false,
        }
    }
}

fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        // Refused, reset or closed connections, and unexpected EOF mid-message: sqlx
        // reports a connection lost at the socket or protocol level as I/O.
        sqlx::Error::Io(_) => true,
        // No connection became available (or could be opened) within the timeout.
        sqlx::Error::PoolTimedOut => true,
        // Our own pool was closed (shutdown): retrying cannot help.
        sqlx::Error::PoolClosed => false,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite result codes, the primary code in the low byte. SQLITE_BUSY:
                // another process held the write lock past the busy timeout.
                return code.parse::<u32>().is_ok_and(|c| c & 0xff == 5);
            }
            sqlstate_transient(&code)
        }
        _ => false,
    }
}

/// SQLSTATEs (PostgreSQL's, from the standard) worth a retry.
fn sqlstate_transient(code: &str) -> bool {
    // Class 08: connection exception (lost, refused, failed during the handshake).
    code.starts_with("08")
        || matches!(
            code,
            // admin_shutdown, crash_shutdown, cannot_connect_now (starting up or in
            // recovery): the server is being restarted.
            "57P01" | "57P02" | "57P03"
            // serialization_failure, deadlock_detected: the transaction was rolled back
            // to let another through; running it again is the documented remedy.
            | "40001" | "40P01"
        )
}

/// What one [`Store::apply_deltas`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Rows that did not exist before (revision 1).
    pub inserted: u64,
    /// Existing rows that were added to (revision bumped).
    pub revised: u64,
    /// Input deltas that did not become a row write of their own: all zero, cancelled
    /// out, or merged with another delta for the same row in the same call (a row is
    /// revised at most once per call).
    pub skipped: u64,
}

/// One exported row: a (window, dimension, key) merged across partitions.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    /// Window label, `Interval::to_string()` (`15m`, `1h`, `1d`).
    pub window: String,
    /// Window bounds, UTC milliseconds, `[start, end)`.
    pub start: i64,
    pub end: i64,
    pub dimension: Dimension,
    pub key: String,
    pub acc: Acc,
    /// Highest revision over the merged partitions: it grows whenever any of them is
    /// revised, so consumers can tell a corrected row from one already seen.
    pub revision: i64,
}

/// What [`Store::claim`] found: the new owner epoch and the partition's last committed
/// checkpoint (none for a partition never committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    /// Number of commits so far (0 when none).
    pub seq: i64,
    /// Next source offset to read; `None` before the first commit.
    pub next_offset: Option<i64>,
    /// Engine checkpoint bytes; `None` before the first commit.
    pub state: Option<Vec<u8>>,
}

/// The partition bookkeeping written with a batch of deltas by [`Store::commit`].
#[derive(Clone, Copy, Debug)]
pub struct CheckpointWrite<'a> {
    /// The epoch returned by [`Store::claim`]; the write is refused if it is stale.
    pub epoch: i64,
    /// Commit sequence number: the claimed `seq` + 1 for the first commit, and so on.
    pub seq: i64,
    pub next_offset: i64,
    pub state: &'a [u8],
    /// The engine's spill changes since the last commit (`engine::spill`), written in
    /// the same transaction.
    pub spill: Option<&'a SpillBatch>,
}

/// The snapshot store. An enum rather than a trait object: the backends are a closed
/// set and async trait methods would need boxing.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// How many connections a [`Store`] may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// A few, so that reads (exports, the HTTP API) run beside a write: `serve`,
    /// `export`, `score`.
    Shared,
    /// One, for a process whose store has one user at a time: `replay`'s writer.
    /// Every connection keeps its own page cache and its own copies of the prepared
    /// statements (the chunked upserts are large programs), and the pool handed
    /// consecutive write transactions to two connections, so a replay held both
    /// copies: about 10 to 20 MiB of its peak (docs/performance.md, "twenty-ninth
    /// round"). A SQLite file's write-ahead log is checkpointed beside it, on a
    /// connection of its own that holds no statements
    /// ([`sqlite::Checkpointer`]), so that the writer never waits for the disk.
    Single,
}

impl Connections {
    /// The pool's size: `shared` for [`Connections::Shared`], one otherwise.
    fn limit(self, shared: u32) -> u32 {
        match self {
            Connections::Shared => shared,
            Connections::Single => 1,
        }
    }
}

impl Store {
    /// Open and migrate the store at `url`: `sqlite://PATH` (created when missing),
    /// `sqlite::memory:`, or `postgres://…` / `postgresql://…` (an existing database).
    /// [`Connections::Shared`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, Connections::Shared).await
    }

    /// [`Store::open`] with the given number of connections.
    pub async fn open_with(url: &str, connections: Connections) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Store::Sqlite(
                sqlite::SqliteStore::open(url, connections).await?,
            )),
            Some("postgres" | "postgresql") => Ok(Store::Postgres(
                postgres::PostgresStore::open(url, connections).await?,
            )),
            _ => Err(StoreError::InvalidUrl {
                url: url.to_owned(),
                reason: "expected sqlite://PATH, sqlite::memory: or postgres://…".into(),
            }),
        }
    }

    /// The directory of the SQLite database `url` names (`sqlite://PATH`), where a
    /// scratch file beside it lands on the same disk; `None` for PostgreSQL and for an
    /// in-memory database.
    pub fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
        // Any URL but a `sqlite:` one is refused by the SQLite parser: `None`.
        sqlite::database_dir(url)
    }

    /// Close the connections, SQLite's write-ahead log first moved into the database
    /// file. Later calls fail.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => {
                // The background checkpoints end before the last one, on the pool. The
                // join waits for a checkpoint in progress (its syncs), off the runtime's
                // threads.
                if let Some(wal) = s.wal.clone() {
                    let _ = tokio::task::spawn_blocking(move || wal.stop()).await;
                }
                s.checkpoint().await;
                s.close().await
            }
            Store::Postgres(s) => s.close().await,
        }
    }

    /// Merge additive deltas into the stored rows of `partition` in one transaction:
    /// counters add, histograms merge; the revision becomes the stored one + 1, or 1
    /// for a new row. Deltas that add nothing are skipped. If any row fails (a
    /// histogram bin would go negative) nothing is written.
    pub async fn apply_deltas(
        &self,
        partition: &str,
        deltas: &[SnapshotDelta],
    ) -> Result<ApplyReport, StoreError> {
        // The only clock read in the write path, and only for `updated_at`, which
        // nothing computes with: the stored values stay reproducible.
        let now = jiff::Timestamp::now().as_millisecond();
        self.apply_deltas_at(partition, deltas, now).await
    }

    /// [`Store::apply_deltas`] and a spill batch in one transaction (`replay`, which
    /// has no checkpoint to write it with). Takes the deltas by value: their
    /// accumulators move into the rows instead of being copied, so a flush's batch is
    /// not held twice while it is written (an hour's boundary in a 10 k-agent replay
    /// is tens of MB of deltas).
    pub async fn apply_deltas_and_spill(
        &self,
        partition: &str,
        deltas: Vec<SnapshotDelta>,
        spill: Option<&SpillBatch>,
    ) -> Result<ApplyReport, StoreError> {
        let merged = coalesce(deltas);
        let (pending, skipped) = (merged.pending(), merged.skipped);
        let spill = spill.filter(|b| !b.is_empty());
        if pending.is_empty() && spill.is_none() {
            return Ok(ApplyReport {
                skipped,
                ..ApplyReport::default()
            });
        }
        let updated_at = rfc3339_ms(jiff::Timestamp::now().as_millisecond());
        let (inserted, revised) = match self {
            Store::Sqlite(s) => {
                s.apply(partition, &pending, &updated_at, None, spill)
                    .await?
            }
            Store::Postgres(s) => {
                s.apply(partition, &pending, &updated_at, None, spill)
                    .await?
            }
        };
        Ok(ApplyReport {
            inserted,
            revised,
            skipped,
        })
    }

    /// [`Store::apply_deltas`] with `updated_at` given (UTC milliseconds).
    pub async fn apply_deltas_at(
        &self,
        partition: &str,
        deltas: &[SnapshotDelta],
        updated_at_ms: i64,
    ) -> Result<ApplyReport, StoreError> {
        let merged = coalesce(deltas.to_vec());
        let (pending, skipped) = (merged.pending(), merged.skipped);
        let mut report = ApplyReport {
            skipped,
            ..ApplyReport::default()
        };
        if pending.is_empty() {
            return Ok(report);
        }
        let updated_at = rfc3339_ms(updated_at_ms);
        let (inserted, revised) = match self {
            Store::Sqlite(s) => {
                s.apply(partition, &pending, &updated_at, None, None)
                    .await?
            }
            Store::Postgres(s) => {
                s.apply(partition, &pending, &updated_at, None, None)
                    .await?
            }
        };
        report.inserted = inserted;
        report.revised = revised;
        Ok(report)
    }

    /// Take ownership of `partition` for `owner`: bump its epoch (fencing out any
    /// previous owner's later writes) and return its last committed checkpoint.
    pub async fn claim(&self, partition: &str, owner: &str) -> Result<Claim, StoreError> {
        let now = rfc3339_ms(jiff::Timestamp::now().as_millisecond());
        match self {
            Store::Sqlite(s) => s.claim(partition, owner, &now).await,
            Store::Postgres(s) => s.claim(partition, owner, &now).await,
        }
    }

    /// Add `deltas` to `partition`'s rows AND record its checkpoint in one
    /// transaction, provided `cp.epoch` is still the partition's epoch
    /// ([`StoreError::Fenced`] otherwise, with nothing written).
    pub async fn commit(
        &self,
        partition: &str,
        deltas: &[SnapshotDelta],
        cp: &CheckpointWrite<'_>,
    ) -> Result<ApplyReport, StoreError> {
        let merged = coalesce(deltas.to_vec());
        let (pending, skipped) = (merged.pending(), merged.skipped);
        let now = rfc3339_ms(jiff::Timestamp::now().as_millisecond());
        let (inserted, revised) = match self {
            Store::Sqlite(s) => s.apply(partition, &pending, &now, Some(cp), None).await?,
            Store::Postgres(s) => s.apply(partition, &pending, &now, Some(cp), None).await?,
        };
        Ok(ApplyReport {
            inserted,
            revised,
            skipped,
        })
    }

    /// The committed (epoch, seq) of `partition`, if it was ever claimed. After a
    /// commit whose outcome is unknown (the connection dropped during COMMIT), this
    /// tells whether it landed: seq equals the one written.
    pub async fn committed(&self, partition: &str) -> Result<Option<(i64, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.committed(partition).await,
            Store::Postgres(s) => s.committed(partition).await,
        }
    }

    /// Delete every row of `partition` (a replay recomputes its partition from
    /// scratch). Returns the number of rows deleted.
    pub async fn clear_partition(&self, partition: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.clear_partition(partition).await,
            Store::Postgres(s) => s.clear_partition(partition).await,
        }
    }

    /// The spilled contact `key` of `partition`, if held with `last_ts >= oldest`.
    pub async fn spill_get(
        &self,
        partition: &str,
        key: u128,
        oldest: i64,
    ) -> Result<Option<SpilledContact>, StoreError> {
        match self {
            Store::Sqlite(s) => s.spill_get(partition, key, oldest).await,
            Store::Postgres(s) => s.spill_get(partition, key, oldest).await,
        }
    }

    /// The spilled contacts of `customer` in `partition` with `last_ts >= oldest`.
    pub async fn spill_customer(
        &self,
        partition: &str,
        customer: u128,
        oldest: i64,
    ) -> Result<Vec<SpilledContact>, StoreError> {
        match self {
            Store::Sqlite(s) => s.spill_customer(partition, customer, oldest).await,
            Store::Postgres(s) => s.spill_customer(partition, customer, oldest).await,
        }
    }

    /// The spilled contacts of `partition` with one of `keys`, or with `by_customer`
    /// one of the customer keys `keys`, with `last_ts >= oldest`: many look-ups in a
    /// few round trips (a statement per [`sql::SPILL_CHUNK`] keys).
    pub async fn spill_select_many(
        &self,
        partition: &str,
        keys: &[u128],
        by_customer: bool,
        oldest: i64,
    ) -> Result<Vec<SpilledContact>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.spill_select_many(partition, keys, by_customer, oldest)
                    .await
            }
            Store::Postgres(s) => {
                s.spill_select_many(partition, keys, by_customer, oldest)
                    .await
            }
        }
    }

    /// Every spilled contact of `partition` as (key, customer, last_ts), streamed into
    /// `f` (millions of rows: never collected). Returns the number of rows.
    pub async fn spill_scan(
        &self,
        partition: &str,
        f: impl FnMut(u128, Option<u128>, i64),
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.spill_scan(partition, f).await,
            Store::Postgres(s) => s.spill_scan(partition, f).await,
        }
    }

    /// Delete the spilled contacts of `partition` and nothing else (`clear_partition`
    /// does it with the rows; `replay` spills into a scratch database of its own).
    pub async fn clear_spill(&self, partition: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.clear_spill(partition).await,
            Store::Postgres(s) => s.clear_spill(partition).await,
        }
    }

    /// Rows of one window label and dimension with `from <= window_start < to`, merged
    /// across partitions (counters summed, histograms merged, revision = max), sorted
    /// by window start, then key (byte-wise).
    pub async fn query(
        &self,
        window: &str,
        dimension: Dimension,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut rows = Vec::new();
        self.query_each(window, dimension, from, to, |r| {
            rows.push(r);
            Ok::<_, StoreError>(())
        })
        .await?;
        Ok(rows)
    }

    /// [`Self::query`]'s rows handed to `each` one at a time as they are read and
    /// merged, in the same order, holding one row in memory whatever the range (an
    /// export of months of per-agent quarter-hours). Stops at `each`'s first error.
    /// Returns the number of rows.
    pub async fn query_each<E: From<StoreError>>(
        &self,
        window: &str,
        dimension: Dimension,
        from: Option<i64>,
        to: Option<i64>,
        each: impl FnMut(StoredRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        match self {
            Store::Sqlite(s) => {
                s.query_each_on_handle(window, dimension, from, to, each)
                    .await
            }
            Store::Postgres(s) => s.query_each(window, dimension, from, to, each).await,
        }
    }
}

/// SQL shared by the backends, generated once per backend from the accumulator's
/// column lists so the statements cannot drift from `Acc`. Only the placeholder
/// spelling differs between backends; `window`, `key` and `partition` are quoted
/// because they are keywords (WINDOW is reserved in PostgreSQL).
pub(crate) mod sql {
    use super::{COUNTER_NAMES, HIST_NAMES};

    /// Snapshot rows written or read per statement of PostgreSQL's writer
    /// ([`PgRowStatements`]; SQLite's own writer, `sqlite_rows.rs`, calls SQLite row
    /// by row instead). Each statement is a round trip to the server, which costs
    /// more than the database's work on a row, so rows go in chunks. It was 64: when
    /// SQLite took this path, a replay's final write (most of its rows) then kept
    /// SQLite's worker thread idle 40 % of the time, waiting for the next statement;
    /// 256 rows cut that to a quarter (docs/performance.md, "thirteenth round"). The
    /// look-up by key binds 1 + 4 × 256 parameters, below PostgreSQL's limit (65,535).
    pub const CHUNK: usize = 256;

    /// Spilled contacts per statement: their batches are small (a flush's worth) and
    /// a short look-up is padded to the full statement, so they keep smaller chunks.
    pub const SPILL_CHUNK: usize = 64;

    /// Values bound per row of an upsert.
    pub const UPSERT_BINDS: usize = 6 + COUNTER_NAMES.len() + HIST_NAMES.len() + 2;

    /// How a backend spells the i-th (1-based) bind parameter. `?` binds in order of
    /// appearance and `$N` by number; statements that both backends run name their
    /// parameters in number order, so both spellings bind alike. (PostgreSQL's own
    /// statements, [`PgRowStatements`], may reuse or reorder numbers.)
    #[derive(Clone, Copy, Debug)]
    pub enum Placeholder {
        /// `?`: SQLite. Its numbered `$N` also works, but sqlx then resolves each
        /// parameter by name with a linear search, which is quadratic in the 2,048
        /// parameters of a chunked upsert and costs more than the writes themselves.
        Question,
        /// `$N`: PostgreSQL.
        Dollar,
    }

    impl Placeholder {
        fn list(self, first: usize, n: usize) -> String {
            let one = |i: usize| match self {
                Placeholder::Question => "?".to_owned(),
                Placeholder::Dollar => format!("${i}"),
            };
            (first..first + n).map(one).collect::<Vec<_>>().join(", ")
        }
    }

    #[derive(Debug)]
    pub struct Statements {
        /// One row inserted unless its primary key is stored: changes no row then.
        /// SQLite's own row writer ([`super::sqlite_rows`]) tries each new row with it.
        /// Binds per row ([`UPSERT_BINDS`]): window, window_start, window_end,
        /// dimension, key, partition, counters, histograms, revision, updated_at.
        pub insert_row_if_new: String,
        /// Write the complete new values of one row, stored or not. The caller has
        /// read the old values in the same transaction, so the statement stores
        /// absolute values (it never adds itself). Binds as `insert_row_if_new`.
        pub upsert_row: String,
        /// The stored revision, counters and histograms of one row by its primary key.
        /// Binds: window, window_start, dimension, key, partition.
        pub select_row: String,
        /// Binds: partition.
        pub delete_partition: String,
        /// Binds: partition.
        pub spill_delete_partition: String,
        /// 1 when another partition than the one bound (twice) has spilled contacts,
        /// else 0: two index ranges, so it costs two probes however many rows the
        /// partition itself has. Binds: partition, partition.
        pub spill_others: String,
        /// Binds: partition, last_ts bound (exclusive).
        pub spill_expire: String,
        /// Binds: partition, contact_key.
        pub spill_delete: String,
        /// Binds: partition, [`SPILL_CHUNK`] distinct contact keys.
        pub spill_delete_chunk: String,
        /// Binds: partition, contact_key, customer_key, first_offer, last_ts, body.
        pub spill_upsert: String,
        /// The same for [`SPILL_CHUNK`] distinct contacts (6 binds each, in that order).
        pub spill_upsert_chunk: String,
        /// Binds: partition, contact_key, oldest last_ts kept. Returns contact_key,
        /// customer_key, first_offer, last_ts, body (every `spill_select*` the same).
        pub spill_select: String,
        /// Binds: partition, customer_key. No `last_ts` bound in the SQL: with one,
        /// SQLite's planner picks the `last_ts` index and scans every row of the
        /// horizon per look-up; the caller filters instead (a customer has a handful
        /// of rows).
        pub spill_select_customer: String,
        /// Binds: partition, [`SPILL_CHUNK`] contact keys (repeat one to pad). No `last_ts`
        /// bound, as above.
        pub spill_select_keys: String,
        /// Binds: partition, [`SPILL_CHUNK`] customer keys (repeat one to pad).
        pub spill_select_customers: String,
        /// Binds: partition. Returns contact_key, customer_key, last_ts.
        pub spill_scan: String,
        /// Claim a partition: create its checkpoint row (epoch 1) or bump its epoch.
        /// Binds: partition, owner, updated_at. Returns epoch, seq, next_offset, state.
        pub claim: String,
        /// The fence and the checkpoint in one statement: matches no row when the
        /// epoch is stale. Binds: next_offset, seq, state, updated_at, partition, epoch.
        pub write_checkpoint: String,
        /// Binds: partition. Returns epoch, seq.
        pub select_committed: String,
        /// Export rows of every partition: window_start, window_end, key, then
        /// revision, counters, histograms. Ordered by window start, then key byte by
        /// byte (PostgreSQL's `"C"` collation; SQLite's default `BINARY` is that
        /// already), so a row's partitions arrive together and the export merges and
        /// writes them as they come, holding one row ([`super::PartitionMerge`]).
        /// Binds: window, dimension, from (inclusive), to (exclusive).
        pub select_export: String,
    }

    /// Counter columns, then histogram columns: the value order of every statement.
    fn value_columns() -> String {
        value_columns_of("")
    }

    /// [`value_columns`], each name after `prefix` (a table alias and a dot).
    fn value_columns_of(prefix: &str) -> String {
        COUNTER_NAMES
            .iter()
            .chain(HIST_NAMES.iter())
            .map(|c| format!("{prefix}{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `INSERT INTO snapshots (every column, in the order of [`UPSERT_BINDS`]'s
    /// values)`: the head of every insert and upsert.
    fn insert_into() -> String {
        format!(
            "INSERT INTO snapshots (\"window\", window_start, window_end, dimension, \"key\", \"partition\", {}, \
             revision, updated_at)",
            value_columns()
        )
    }

    /// [`insert_into`] one row of [`UPSERT_BINDS`] parameters: the head of SQLite's
    /// upsert and insert.
    fn insert_row(p: Placeholder) -> String {
        format!("{} VALUES ({})", insert_into(), p.list(1, UPSERT_BINDS))
    }

    /// The conflict target: the primary key.
    const ON_ROW: &str =
        "ON CONFLICT (\"window\", dimension, window_start, \"key\", \"partition\")";

    fn upsert_row(p: Placeholder) -> String {
        format!("{} {}", insert_row(p), update_set())
    }

    /// The conflict clause of every upsert: the row's new values replace the stored.
    fn update_set() -> String {
        let updates: Vec<String> = ["window_end"]
            .iter()
            .chain(COUNTER_NAMES.iter())
            .chain(HIST_NAMES.iter())
            .chain(["revision", "updated_at"].iter())
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!("{ON_ROW} DO UPDATE SET {}", updates.join(", "))
    }

    /// The statements of PostgreSQL's snapshot writer (`postgres_rows.rs`), which
    /// writes rows [`CHUNK`] at a time as one array per column. SQLite's writer
    /// (`sqlite_rows.rs`) runs the one-row statements of [`Statements`] instead.
    #[derive(Debug)]
    pub struct PgRowStatements {
        /// Stored rows of one partition for [`CHUNK`] primary keys: window,
        /// window_start, dimension, key, then revision, counters, histograms. A caller
        /// with fewer rows repeats a key to fill the list, so the statement text (and
        /// its prepared statement) never changes.
        /// Binds: partition, then `CHUNK` × (window, window_start, dimension, key).
        ///
        /// One look-up per key, whatever the planner believes of the table. As an IN
        /// list (a semi join) PostgreSQL may hash the keys and scan the whole partition
        /// instead, and it did while a replay outran the table's statistics (none until
        /// an ANALYZE, and autovacuum may be off or behind): a scan per chunk that
        /// grows with the table (docs/performance.md, "ninth round"). `LIMIT 1` (the
        /// key is unique anyway) keeps the sub-select from being pulled up into a plain
        /// join, where that choice would return.
        pub select_rows: String,
        /// Insert those of up to [`CHUNK`] distinct rows that do not exist, leave the
        /// others as they are, and return the keys (window, window_start, dimension,
        /// key) of the rows it inserted. The others are stored already (the partition
        /// lock keeps other writers of them out) and are then read by key. Binds the
        /// values of `insert_row_if_new`, each but the partition and `updated_at` as an
        /// array of every row's value ([`array_type`]). As a `VALUES` list of
        /// [`CHUNK`] rows it was 8,192 parameters, and the server received each on its
        /// own and built an expression for it: about a quarter of its work in a replay
        /// (docs/performance.md, "thirty-third round").
        pub insert_new_chunk: String,
        /// Write the complete new values of any number of distinct rows, stored or
        /// not, bound as `insert_new_chunk`: one statement whatever the count. The
        /// caller has read the old values in the same transaction, so the statement
        /// stores absolute values (it never adds itself).
        pub upsert_arrays: String,
    }

    impl PgRowStatements {
        pub fn new() -> PgRowStatements {
            let p = Placeholder::Dollar;
            let keys: Vec<String> = (0..CHUNK)
                .map(|i| format!("({})", p.list(2 + 4 * i, 4)))
                .collect();
            let select_rows = format!(
                "SELECT s.\"window\", s.window_start, s.dimension, s.\"key\", s.revision, {} \
                 FROM (VALUES {}) AS k (w, ws, d, kk) CROSS JOIN LATERAL \
                 (SELECT * FROM snapshots WHERE \"window\" = k.w AND window_start = k.ws \
                 AND dimension = k.d AND \"key\" = k.kk AND \"partition\" = $1 LIMIT 1) AS s",
                value_columns_of("s."),
                keys.join(", ")
            );
            PgRowStatements {
                select_rows,
                insert_new_chunk: format!(
                    "{} {ON_ROW} DO NOTHING RETURNING \"window\", window_start, dimension, \"key\"",
                    insert_arrays()
                ),
                upsert_arrays: format!("{} {}", insert_arrays(), update_set()),
            }
        }
    }

    /// An insert of rows given as one array per column ([`array_type`]), PostgreSQL's.
    fn insert_arrays() -> String {
        let (mut columns, mut arrays, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for b in 1..=UPSERT_BINDS {
            match array_type(b) {
                Some(t) => {
                    columns.push(format!("c{b}"));
                    names.push(format!("c{b}"));
                    arrays.push(format!("${b}::{t}[]"));
                }
                None => columns.push(format!("${b}")),
            }
        }
        format!(
            "{} SELECT {} FROM unnest({}) AS r ({})",
            insert_into(),
            columns.join(", "),
            arrays.join(", "),
            names.join(", ")
        )
    }

    /// The element type of [`PgRowStatements::insert_new_chunk`]'s parameter `b` (1-based, in
    /// the order of [`insert_into`]), or none for the two bound once: the partition
    /// (6) and `updated_at` (the last).
    pub(crate) fn array_type(b: usize) -> Option<&'static str> {
        const HISTS: usize = 7 + super::N_COUNTERS;
        const REVISION: usize = HISTS + super::N_HISTS;
        match b {
            1 | 4 | 5 => Some("text"),
            2 | 3 | 7..HISTS | REVISION => Some("int8"),
            HISTS..REVISION => Some("bytea"),
            _ => None,
        }
    }

    /// The columns every `spill_select*` statement returns, in this order.
    const SPILL_COLUMNS: &str = "contact_key, customer_key, first_offer, last_ts, body";

    /// How a look-up by customer names its index: see
    /// migrations/sqlite/0003_spilled_contacts.sql.
    fn by_customer(p: Placeholder) -> &'static str {
        match p {
            Placeholder::Question => "INDEXED BY spilled_contacts_customer",
            Placeholder::Dollar => "",
        }
    }

    fn spill_upsert(p: Placeholder, rows: usize) -> String {
        let tuples: Vec<String> = (0..rows)
            .map(|r| format!("({})", p.list(1 + r * 6, 6)))
            .collect();
        format!(
            "INSERT INTO spilled_contacts (\"partition\", contact_key, customer_key, first_offer, last_ts, body) \
             VALUES {} ON CONFLICT (\"partition\", contact_key) DO UPDATE SET \
             customer_key = excluded.customer_key, first_offer = excluded.first_offer, \
             last_ts = excluded.last_ts, body = excluded.body",
            tuples.join(", ")
        )
    }

    impl Statements {
        pub fn new(p: Placeholder) -> Statements {
            Statements {
                insert_row_if_new: format!("{} {ON_ROW} DO NOTHING", insert_row(p)),
                upsert_row: upsert_row(p),
                select_row: format!(
                    "SELECT revision, {} FROM snapshots WHERE \"window\" = {} AND window_start = {} \
                     AND dimension = {} AND \"key\" = {} AND \"partition\" = {}",
                    value_columns(),
                    p.list(1, 1),
                    p.list(2, 1),
                    p.list(3, 1),
                    p.list(4, 1),
                    p.list(5, 1)
                ),
                delete_partition: format!(
                    "DELETE FROM snapshots WHERE \"partition\" = {}",
                    p.list(1, 1)
                ),
                spill_delete_partition: format!(
                    "DELETE FROM spilled_contacts WHERE \"partition\" = {}",
                    p.list(1, 1)
                ),
                spill_others: format!(
                    "SELECT CAST(CASE WHEN \
                     EXISTS (SELECT 1 FROM spilled_contacts WHERE \"partition\" < {}) \
                     OR EXISTS (SELECT 1 FROM spilled_contacts WHERE \"partition\" > {}) \
                     THEN 1 ELSE 0 END AS BIGINT)",
                    p.list(1, 1),
                    p.list(2, 1)
                ),
                spill_expire: format!(
                    "DELETE FROM spilled_contacts WHERE \"partition\" = {} AND last_ts < {}",
                    p.list(1, 1),
                    p.list(2, 1)
                ),
                spill_delete: format!(
                    "DELETE FROM spilled_contacts WHERE \"partition\" = {} AND contact_key = {}",
                    p.list(1, 1),
                    p.list(2, 1)
                ),
                spill_delete_chunk: format!(
                    "DELETE FROM spilled_contacts WHERE \"partition\" = {} AND contact_key IN ({})",
                    p.list(1, 1),
                    p.list(2, SPILL_CHUNK)
                ),
                spill_upsert: spill_upsert(p, 1),
                spill_upsert_chunk: spill_upsert(p, SPILL_CHUNK),
                spill_select: format!(
                    "SELECT {SPILL_COLUMNS} FROM spilled_contacts \
                     WHERE \"partition\" = {} AND contact_key = {} AND last_ts >= {}",
                    p.list(1, 1),
                    p.list(2, 1),
                    p.list(3, 1)
                ),
                spill_select_customer: format!(
                    "SELECT {SPILL_COLUMNS} FROM spilled_contacts {} \
                     WHERE \"partition\" = {} AND customer_key = {}",
                    by_customer(p),
                    p.list(1, 1),
                    p.list(2, 1)
                ),
                spill_select_keys: format!(
                    "SELECT {SPILL_COLUMNS} FROM spilled_contacts \
                     WHERE \"partition\" = {} AND contact_key IN ({})",
                    p.list(1, 1),
                    p.list(2, SPILL_CHUNK)
                ),
                spill_select_customers: format!(
                    "SELECT {SPILL_COLUMNS} FROM spilled_contacts {} \
                     WHERE \"partition\" = {} AND customer_key IN ({})",
                    by_customer(p),
                    p.list(1, 1),
                    p.list(2, SPILL_CHUNK)
                ),
                spill_scan: format!(
                    "SELECT contact_key, customer_key, last_ts FROM spilled_contacts WHERE \"partition\" = {}",
                    p.list(1, 1)
                ),
                claim: format!(
                    "INSERT INTO checkpoints (\"partition\", epoch, owner, seq, updated_at) VALUES ({}, 1, {}, 0, {}) \
                     ON CONFLICT (\"partition\") DO UPDATE SET epoch = checkpoints.epoch + 1, \
                     owner = excluded.owner, updated_at = excluded.updated_at \
                     RETURNING epoch, seq, next_offset, state",
                    p.list(1, 1),
                    p.list(2, 1),
                    p.list(3, 1)
                ),
                write_checkpoint: format!(
                    "UPDATE checkpoints SET next_offset = {}, seq = {}, state = {}, updated_at = {} \
                     WHERE \"partition\" = {} AND epoch = {}",
                    p.list(1, 1),
                    p.list(2, 1),
                    p.list(3, 1),
                    p.list(4, 1),
                    p.list(5, 1),
                    p.list(6, 1)
                ),
                select_committed: format!(
                    "SELECT epoch, seq FROM checkpoints WHERE \"partition\" = {}",
                    p.list(1, 1)
                ),
                select_export: format!(
                    "SELECT window_start, window_end, \"key\", revision, {} FROM snapshots \
                     WHERE \"window\" = {} AND dimension = {} AND window_start >= {} AND window_start < {} \
                     ORDER BY window_start, \"key\"{}",
                    value_columns(),
                    p.list(1, 1),
                    p.list(2, 1),
                    p.list(3, 1),
                    p.list(4, 1),
                    match p {
                        Placeholder::Question => "",
                        Placeholder::Dollar => " COLLATE \"C\"",
                    }
                ),
            }
        }
    }
}

/// One row's worth of input, after merging the deltas of one call: the merged delta
/// (its fields through `Deref`) and its window's name as stored.
#[derive(Debug)]
pub(crate) struct Pending<'a> {
    pub window: &'a str,
    delta: &'a SnapshotDelta,
}

impl std::ops::Deref for Pending<'_> {
    type Target = SnapshotDelta;
    fn deref(&self) -> &SnapshotDelta {
        self.delta
    }
}

/// The rows of one call, merged ([`coalesce`]).
struct Coalesced {
    rows: Vec<SnapshotDelta>,
    /// Stored names of the intervals among `rows` (a handful).
    names: Vec<(Interval, String)>,
    /// Deltas that did not become a row write of their own.
    skipped: u64,
}

impl Coalesced {
    fn pending(&self) -> Vec<Pending<'_>> {
        self.rows
            .iter()
            .map(|d| Pending {
                window: self
                    .names
                    .iter()
                    .find(|(i, _)| *i == d.interval)
                    .map_or("", |(_, n)| n.as_str()),
                delta: d,
            })
            .collect()
    }
}

/// Merge deltas for the same row within one call (a caller may concatenate several
/// flushes), drop the ones that add nothing, and order the rest by (window, start,
/// dimension, key) so the writes mostly walk the primary-key B-tree in order.
///
/// Merging first also means a row is revised once per call, and a retraction followed
/// by its re-addition in the same batch is judged by the net result. In place: the
/// deltas become the rows (the engine hands them out sorted already), where a map of
/// copies held a flush's batch two to three times over while it was written (an
/// hour's boundary in a 10 k-agent replay is tens of thousands of rows). The order
/// among deltas of one row does not matter: merging adds.
fn coalesce(mut deltas: Vec<SnapshotDelta>) -> Coalesced {
    let n = deltas.len();
    fn row(d: &SnapshotDelta) -> (Interval, i64, Dimension, &str) {
        (d.interval, d.start, d.dimension, d.key.as_str())
    }
    if !deltas.is_sorted_by(|a, b| row(a) <= row(b)) {
        deltas.sort_unstable_by(|a, b| row(a).cmp(&row(b)));
    }
    deltas.dedup_by(|later, kept| {
        let same = row(later) == row(kept);
        if same {
            kept.acc.merge(&later.acc);
        }
        same
    });
    deltas.retain(|d| !d.acc.is_zero());
    let mut names: Vec<(Interval, String)> = Vec::new();
    for d in &deltas {
        if !names.iter().any(|(i, _)| *i == d.interval) {
            names.push((d.interval, d.interval.to_string()));
        }
    }
    Coalesced {
        skipped: (n - deltas.len()) as u64,
        rows: deltas,
        names,
    }
}

/// The stored value of a row as read back: the revision plus raw column values.
#[derive(Debug)]
pub(crate) struct RawRow {
    pub revision: i64,
    pub counters: [i64; N_COUNTERS],
    /// `None` (NULL) or empty bytes mean an empty histogram.
    pub hists: [Option<Vec<u8>>; N_HISTS],
}

/// Column values to write for a row.
#[derive(Debug)]
pub(crate) struct NewRow {
    pub revision: i64,
    pub counters: [i64; N_COUNTERS],
    pub hists: [Option<Vec<u8>>; N_HISTS],
}

impl Pending<'_> {
    fn hist_error(&self, partition: &str, column: &'static str, source: HistError) -> StoreError {
        StoreError::Hist {
            row: describe_row(
                self.window,
                self.start,
                self.dimension,
                &self.key,
                Some(partition),
            ),
            column,
            source,
        }
    }

    /// The row's new value: `existing` + this delta.
    pub(crate) fn merge_into(
        &self,
        partition: &str,
        existing: Option<RawRow>,
    ) -> Result<NewRow, StoreError> {
        let (revision, mut counters, old_hists) = match existing {
            Some(r) => (r.revision + 1, r.counters, r.hists),
            None => (1, [0; N_COUNTERS], [None, None, None]),
        };
        for (c, d) in counters.iter_mut().zip(self.acc.counters()) {
            *c += d;
        }
        let mut hists: [Option<Vec<u8>>; N_HISTS] = [None, None, None];
        for (i, (old, delta)) in old_hists.into_iter().zip(self.acc.hists()).enumerate() {
            let column = HIST_NAMES[i];
            hists[i] = if delta.is_empty() {
                // Nothing to add: keep the stored bytes as they are, saving a decode
                // and an encode per untouched histogram.
                old
            } else {
                let mut h = decode_hist(old.as_deref())
                    .map_err(|e| self.hist_error(partition, column, e))?;
                h.merge(delta);
                // Fails if a correction took a bin below zero.
                encode_hist(&h).map_err(|e| self.hist_error(partition, column, e))?
            };
        }
        Ok(NewRow {
            revision,
            counters,
            hists,
        })
    }
}

fn decode_hist(bytes: Option<&[u8]>) -> Result<Hist, HistError> {
    match bytes {
        Some(b) => Hist::decode(b),
        None => Ok(Hist::new()),
    }
}

/// Empty histograms are stored as NULL: most rows leave some histogram empty (agents
/// without first responses, …) and encoding allocates a full HDR histogram.
fn encode_hist(h: &Hist) -> Result<Option<Vec<u8>>, HistError> {
    if h.is_empty() {
        Ok(None)
    } else {
        h.encode().map(Some)
    }
}

/// Identity of an export row as read, for merging partitions.
#[derive(Debug)]
pub(crate) struct ExportRaw {
    pub start: i64,
    pub end: i64,
    pub key: String,
    pub row: RawRow,
}

/// Merges the rows of several partitions into export rows, as they are read in the
/// export's order (window start, then key byte by byte: `select_export`): a row's
/// partitions arrive together, so one merged row is held at a time and an export of
/// any length runs in constant memory (collecting every row first held ~5 KB per row,
/// over 50 MB for a day of 10,000 agents and so months of quarter-hours per agent
/// beyond any machine). The statement names a byte-wise collation (a database's default may
/// sort keys otherwise), and rows that arrive out of that order are an error, not a
/// silent second row.
pub(crate) struct PartitionMerge<'a> {
    window: &'a str,
    dimension: Dimension,
    current: Option<StoredRow>,
    /// Merged rows handed out by [`Self::add_to`] and [`Self::finish_to`].
    handed: u64,
}

impl<'a> PartitionMerge<'a> {
    pub(crate) fn new(window: &'a str, dimension: Dimension) -> Self {
        PartitionMerge {
            window,
            dimension,
            current: None,
            handed: 0,
        }
    }

    /// [`Self::add`], handing the row it completes to `each`.
    pub(crate) fn add_to<E: From<StoreError>>(
        &mut self,
        raw: ExportRaw,
        each: &mut impl FnMut(StoredRow) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(done) = self.add(raw)? {
            self.handed += 1;
            each(done)?;
        }
        Ok(())
    }

    /// Hands the last merged row to `each`: returns the rows handed out in all.
    pub(crate) fn finish_to<E>(
        mut self,
        each: &mut impl FnMut(StoredRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        if let Some(last) = self.current.take() {
            self.handed += 1;
            each(last)?;
        }
        Ok(self.handed)
    }

    /// Add one partition's row; returns the previous merged row once `raw` starts the
    /// next one.
    pub(crate) fn add(&mut self, raw: ExportRaw) -> Result<Option<StoredRow>, StoreError> {
        let (window, dimension) = (self.window, self.dimension);
        let mut acc = Acc::default();
        acc.set_counters(raw.row.counters);
        for (i, (slot, bytes)) in acc.hists_mut().into_iter().zip(&raw.row.hists).enumerate() {
            *slot = decode_hist(bytes.as_deref()).map_err(|source| StoreError::Hist {
                row: describe_row(window, raw.start, dimension, &raw.key, None),
                column: HIST_NAMES[i],
                source,
            })?;
        }
        if let Some(r) = &mut self.current {
            match (r.start, r.key.as_str()).cmp(&(raw.start, raw.key.as_str())) {
                Ordering::Equal => {
                    r.acc.merge(&acc);
                    r.revision = r.revision.max(raw.row.revision);
                    // Partitions agree on the bounds; max keeps the result independent
                    // of row order should they ever not.
                    r.end = r.end.max(raw.end);
                    return Ok(None);
                }
                Ordering::Less => {}
                Ordering::Greater => {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "export rows out of order: {} after {}",
                            describe_row(window, raw.start, dimension, &raw.key, None),
                            describe_row(window, r.start, dimension, &r.key, None)
                        ),
                    });
                }
            }
        }
        Ok(self.current.replace(StoredRow {
            window: window.to_owned(),
            start: raw.start,
            end: raw.end,
            dimension,
            key: raw.key,
            acc,
            revision: raw.row.revision,
        }))
    }
}

/// A snapshot row for error messages; `partition` None for a merged export row.
fn describe_row(
    window: &str,
    start: i64,
    dimension: Dimension,
    key: &str,
    partition: Option<&str>,
) -> String {
    let d = dimension.as_str();
    let start = crate::engine::window::fmt_utc(start);
    match partition {
        Some(p) => format!("{window} {start} {d}/{key:?} (partition {p:?})"),
        None => format!("{window} {start} {d}/{key:?} (merged partitions)"),
    }
}

/// RFC 3339 UTC with fixed milliseconds, so `updated_at` sorts as text.
fn rfc3339_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Out of jiff's range (±9999 years): not a clock reading, keep the number.
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::acc::Measure;

    const H: i64 = 3_600_000;
    const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    fn hour() -> Interval {
        Interval::Minutes(60)
    }

    /// A 1h window's delta (also the backends' own tests').
    pub(super) fn delta(start: i64, dimension: Dimension, key: &str, acc: Acc) -> SnapshotDelta {
        SnapshotDelta {
            interval: hour(),
            start,
            end: start + H,
            dimension,
            key: key.into(),
            acc,
        }
    }

    /// `n` answered queue contacts that waited `wait_ms` each, within SL.
    fn answered(n: i64, wait_ms: u64) -> Acc {
        let mut a = Acc::default();
        for _ in 0..n {
            a.apply(
                &Measure::QueueOutcome {
                    answered: true,
                    wait_ms,
                    short: false,
                    within: true,
                },
                1,
            );
        }
        a
    }

    async fn mem() -> Store {
        Store::open("sqlite::memory:").await.unwrap()
    }

    /// Run `case` on a fresh in-memory SQLite store.
    async fn on_sqlite<F, Fut>(case: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = ()>,
    {
        let s = mem().await;
        case(s.clone()).await;
        s.close().await;
    }

    /// Run `case` on a store in a database of its own on the test PostgreSQL, and drop
    /// the database afterwards, also when `case` panics. An unreachable server fails
    /// the test: these tests must not pass by not running.
    async fn on_postgres<F, Fut>(case: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let db = testing::TestDb::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&db.url).await.unwrap();
        // A task of its own, so a failed assertion comes back here as an error.
        let outcome = tokio::spawn(case(s.clone())).await;
        s.close().await;
        db.drop_db().await.unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// One test per backend for each case (`async fn case(s: Store)`):
    /// `case::sqlite` on an in-memory database, `case::postgres` on a fresh one.
    /// `multi_thread:` before the cases runs them on a two-worker runtime.
    macro_rules! on_both_backends {
        (multi_thread: $($case:ident),* $(,)?) => {
            on_both_backends!(@with tokio::test(flavor = "multi_thread", worker_threads = 2); $($case),*);
        };
        (@with $test:meta; $($case:ident),*) => {$(
            mod $case {
                #[$test]
                async fn sqlite() {
                    super::on_sqlite(super::$case).await
                }
                #[$test]
                async fn postgres() {
                    super::on_postgres(super::$case).await
                }
            }
        )*};
        ($($case:ident),* $(,)?) => {
            on_both_backends!(@with tokio::test; $($case),*);
        };
    }

    on_both_backends!(
        apply_twice_sums_counters_merges_hists_and_bumps_revision,
        zero_deltas_are_skipped_and_duplicates_coalesced,
        batches_larger_than_a_chunk,
        tails_of_every_shape_are_written,
        a_chunk_with_one_existing_row_is_merged_whole,
        query_merges_partitions,
        export_streams_partitions_merged_in_byte_order,
        clear_partition_deletes_only_that_partition,
        negative_correction_brings_counters_down,
        query_filters_by_window_dimension_and_range_and_sorts,
        claim_starts_at_epoch_one_without_state,
        commit_writes_rows_state_and_offset_together,
        stale_epoch_is_fenced_and_writes_nothing,
        concurrent_writers_neither_conflict_nor_lose_updates,
        spill_rows_go_with_the_checkpoint,
        clear_spill_keeps_other_partitions,
    );

    // Multi-threaded: the spill blocks a thread of its own on the store, and a long
    // write runs on a worker (see the case).
    on_both_backends!(
        multi_thread: negative_hist_bin_is_an_error_and_rolls_back,
        store_spill_behaves_like_the_model,
    );

    /// The spill's rows are written by the commit transaction (with the fence), read
    /// back by key and by customer above the horizon, expired, and cleared with the
    /// partition; a fenced commit writes none of them.
    async fn spill_rows_go_with_the_checkpoint(s: Store) {
        let p = "kafka:t:0";
        let claim = s.claim(p, "a").await.unwrap();
        let c = |key: u128, customer: Option<u128>, last_ts: i64| SpilledContact {
            key,
            customer,
            first_offer: Some(last_ts - 5),
            last_ts,
            body: vec![1, 2, key as u8].into(),
        };
        let big = u128::MAX - 3; // all 16 bytes used
        let batch = SpillBatch {
            expire_before: None,
            deletes: vec![],
            puts: vec![
                c(1, Some(big), 100),
                c(2, Some(big), 200),
                c(big, None, 300),
            ],
        };
        let mut cp = checkpoint(claim.epoch, claim.seq + 1, 10, b"s1");
        cp.spill = Some(&batch);
        s.commit(p, &[], &cp).await.unwrap();
        assert_eq!(
            s.spill_get(p, big, 0).await.unwrap(),
            Some(c(big, None, 300))
        );
        assert_eq!(
            s.spill_get(p, 1, 101).await.unwrap(),
            None,
            "below the horizon"
        );
        assert_eq!(s.spill_get("other", 1, 0).await.unwrap(), None);
        let mut of = s.spill_customer(p, big, 0).await.unwrap();
        of.sort_by_key(|c| c.key);
        assert_eq!(of, vec![c(1, Some(big), 100), c(2, Some(big), 200)]);
        let mut scanned = Vec::new();
        let n = s
            .spill_scan(p, |k, cu, t| scanned.push((k, cu, t)))
            .await
            .unwrap();
        scanned.sort();
        assert_eq!(n, 3);
        assert_eq!(scanned[0], (1, Some(big), 100));

        // A stale owner's batch is refused with its checkpoint.
        let newer = s.claim(p, "b").await.unwrap();
        let gone = SpillBatch {
            deletes: vec![1, 2, big],
            ..SpillBatch::default()
        };
        let mut stale = checkpoint(claim.epoch, claim.seq + 2, 20, b"zombie");
        stale.spill = Some(&gone);
        assert!(matches!(
            s.commit(p, &[], &stale).await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(s.spill_get(p, 1, 0).await.unwrap().is_some());

        // Expiry, a delete and a replacement in one commit.
        let next = SpillBatch {
            expire_before: Some(150),
            deletes: vec![2],
            puts: vec![c(big, Some(7), 400)],
        };
        let mut cp = checkpoint(newer.epoch, newer.seq + 1, 30, b"s2");
        cp.spill = Some(&next);
        s.commit(p, &[], &cp).await.unwrap();
        assert_eq!(s.spill_get(p, 1, 0).await.unwrap(), None, "expired");
        assert_eq!(s.spill_get(p, 2, 0).await.unwrap(), None, "deleted");
        assert_eq!(
            s.spill_get(p, big, 0).await.unwrap(),
            Some(c(big, Some(7), 400))
        );
        s.clear_partition(p).await.unwrap();
        assert_eq!(s.spill_scan(p, |_, _, _| ()).await.unwrap(), 0);

        // More than two chunks of puts (multi-row upserts plus a tail), one replacing.
        let many = SpillBatch {
            puts: (0..150)
                .map(|i| c(1000 + i, Some(i % 7), 500 + i as i64))
                .collect(),
            ..SpillBatch::default()
        };
        let mut cp = checkpoint(newer.epoch, newer.seq + 2, 40, b"s3");
        cp.spill = Some(&many);
        s.commit(p, &[], &cp).await.unwrap();
        let again = SpillBatch {
            puts: vec![c(1149, None, 999)],
            ..SpillBatch::default()
        };
        let mut cp = checkpoint(newer.epoch, newer.seq + 3, 50, b"s4");
        cp.spill = Some(&again);
        s.commit(p, &[], &cp).await.unwrap();
        assert_eq!(s.spill_scan(p, |_, _, _| ()).await.unwrap(), 150);
        assert_eq!(
            s.spill_get(p, 1000, 0).await.unwrap(),
            Some(c(1000, Some(0), 500))
        );
        assert_eq!(
            s.spill_get(p, 1149, 0).await.unwrap(),
            Some(c(1149, None, 999))
        );
        assert_eq!(s.spill_customer(p, 3, 0).await.unwrap().len(), 21);
    }

    /// `clear_spill` removes one partition's spilled contacts, whether partitions
    /// before or after it in key order have some (they keep them) or none do (the
    /// whole table is emptied at once); snapshot rows are not touched.
    async fn clear_spill_keeps_other_partitions(s: Store) {
        let c = |key: u128| SpilledContact {
            key,
            customer: Some(key + 100),
            first_offer: None,
            last_ts: 100,
            body: vec![key as u8].into(),
        };
        let put = |keys: std::ops::Range<u128>| SpillBatch {
            puts: keys.map(c).collect(),
            ..SpillBatch::default()
        };
        let row = vec![delta(T0, Dimension::Queue, "sales", answered(1, 1))];
        for (p, keys) in [("a", 0..2), ("m", 2..5), ("z", 5..6)] {
            s.apply_deltas_and_spill(p, row.clone(), Some(&put(keys)))
                .await
                .unwrap();
        }
        let held = |p: &'static str| {
            let s = s.clone();
            async move { s.spill_scan(p, |_, _, _| ()).await.unwrap() }
        };
        // Others before and after it; only after; only before; none.
        s.clear_spill("m").await.unwrap();
        assert_eq!(
            (held("a").await, held("m").await, held("z").await),
            (2, 0, 1)
        );
        s.clear_spill("a").await.unwrap();
        assert_eq!((held("a").await, held("z").await), (0, 1));
        s.apply_deltas_and_spill("a", vec![], Some(&put(0..2)))
            .await
            .unwrap();
        s.clear_spill("z").await.unwrap();
        assert_eq!((held("a").await, held("z").await), (2, 0));
        assert_eq!(s.spill_get("a", 1, 0).await.unwrap(), Some(c(1)));
        s.clear_spill("a").await.unwrap();
        assert_eq!(held("a").await, 0);
        s.clear_spill("a").await.unwrap();
        // The table emptied whole still takes new rows, and snapshots stayed.
        s.apply_deltas_and_spill("z", vec![], Some(&put(7..8)))
            .await
            .unwrap();
        assert_eq!(s.spill_get("z", 7, 0).await.unwrap(), Some(c(7)));
        let rows = all_rows(&s).await;
        assert_eq!(
            (rows.len(), rows[0].acc.answered),
            (1, 3),
            "merged over a, m, z"
        );
    }

    /// `StoreSpill` answers like the in-memory model through puts, take-backs,
    /// expiry, commits that land or fail, and reopening from the store.
    async fn store_spill_behaves_like_the_model(s: Store) {
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || store_spill_model_run(s, rt))
            .await
            .unwrap();
    }

    fn store_spill_model_run(s: Store, rt: tokio::runtime::Handle) {
        use crate::engine::spill::{MemSpill, Spill};
        use rand::{Rng, SeedableRng};
        let p = "kafka:t:1";
        let claim = rt.block_on(s.claim(p, "me")).unwrap();
        let mut seq = claim.seq;
        let mut spill = spill::StoreSpill::open(s.clone(), rt.clone(), p).unwrap();
        let mut model = MemSpill::default();
        // Keys held (the engine never spills a contact it does not hold).
        let mut held: std::collections::HashMap<u128, i64> = Default::default();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (mut took, mut commits, mut reopened, mut saved) = (0, 0, 0, 0);
        // A prefetch of random keys and customers: what it read must answer exactly
        // as the store would, through commits that land after it.
        let prefetch = |spill: &mut spill::StoreSpill, rng: &mut rand::rngs::SmallRng| {
            let keys: Vec<u128> = (0..20)
                .map(|_| rng.random_range(0..150u128) << 64 | 0xabc)
                .collect();
            let customers: Vec<u128> = (0..5).map(|_| rng.random_range(1..26u128)).collect();
            spill.prefetch(&keys, &customers);
            keys
        };
        for step in 0..4_000i64 {
            let now = step * 1_000;
            let key = rng.random_range(0..150u128) << 64 | 0xabc;
            match rng.random_range(0..22) {
                0..=7 => {
                    if let std::collections::hash_map::Entry::Vacant(e) = held.entry(key) {
                        let customer = (key % 3 != 0).then(|| (key >> 64) % 25 + 1);
                        let c = SpilledContact {
                            key,
                            customer,
                            first_offer: Some(now - 10),
                            last_ts: now,
                            body: now.to_le_bytes().to_vec().into(),
                        };
                        e.insert(now);
                        spill.put(c.clone());
                        model.put(c);
                    }
                }
                8..=11 => {
                    let got = spill.take(key);
                    assert_eq!(got, model.take(key), "take {key} at {step}");
                    took += got.is_some() as u32;
                    held.remove(&key);
                }
                12..=13 => {
                    let customer = rng.random_range(1..26u128);
                    take_customer_both(&mut spill, &mut model, &mut held, customer, step);
                }
                14 => {
                    let before = now - 600_000;
                    spill.expire(before);
                    model.expire(before);
                    held.retain(|_, t| *t >= before);
                }
                15..=18 => {
                    let batch = spill.prepare().unwrap();
                    if rng.random_bool(0.3) {
                        prefetch(&mut spill, &mut rng); // before the commit lands
                    }
                    if rng.random_bool(0.8) {
                        let mut cp = checkpoint(claim.epoch, seq + 1, step, b"state");
                        cp.spill = Some(&batch);
                        rt.block_on(s.commit(p, &[], &cp)).unwrap();
                        seq += 1;
                        commits += 1;
                        if rng.random_bool(0.3) {
                            prefetch(&mut spill, &mut rng); // landed, not finished
                        }
                        spill.finish(true);
                    } else {
                        spill.finish(false);
                    }
                }
                19..=20 => {
                    let keys = prefetch(&mut spill, &mut rng);
                    let before = spill.round_trips;
                    let got = spill.take(keys[0]);
                    assert_eq!(got, model.take(keys[0]), "prefetched take at {step}");
                    let customer = got.as_ref().and_then(|c| c.customer);
                    if let Some(k) = customer {
                        take_customer_both(&mut spill, &mut model, &mut held, k, step);
                    }
                    assert_eq!(spill.round_trips, before, "answered from the prefetch");
                    saved += got.is_some() as u32;
                    held.remove(&keys[0]);
                }
                _ => {
                    // Commit everything, then continue from the store alone.
                    let batch = spill.prepare().unwrap();
                    let mut cp = checkpoint(claim.epoch, seq + 1, step, b"state");
                    cp.spill = Some(&batch);
                    rt.block_on(s.commit(p, &[], &cp)).unwrap();
                    seq += 1;
                    spill.finish(true);
                    let horizon_kept = held.values().copied().min();
                    spill = spill::StoreSpill::open(s.clone(), rt.clone(), p).unwrap();
                    // The horizon is the engine's: tell the reopened spill again.
                    if let Some(t) = horizon_kept {
                        spill.expire(t.min(now - 600_000));
                    }
                    reopened += 1;
                }
            }
        }
        assert!(
            took > 50 && commits > 50 && reopened > 5 && saved > 20,
            "{took} {commits} {reopened} {saved}"
        );
    }

    /// A customer's contacts taken from the store's spill and from the model: the same.
    fn take_customer_both(
        spill: &mut spill::StoreSpill,
        model: &mut crate::engine::spill::MemSpill,
        held: &mut std::collections::HashMap<u128, i64>,
        customer: u128,
        step: i64,
    ) {
        use crate::engine::spill::Spill;
        let mut a = spill.take_customer(customer);
        let mut b = model.take_customer(customer);
        a.sort_by_key(|c| c.key);
        b.sort_by_key(|c| c.key);
        assert_eq!(a, b, "customer {customer} at {step}");
        for c in &a {
            held.remove(&c.key);
        }
    }

    async fn all_rows(s: &Store) -> Vec<StoredRow> {
        s.query("1h", Dimension::Queue, None, None).await.unwrap()
    }

    async fn apply_twice_sums_counters_merges_hists_and_bumps_revision(s: Store) {
        let r = s
            .apply_deltas(
                "p1",
                &[delta(T0, Dimension::Queue, "sales", answered(2, 10_000))],
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            ApplyReport {
                inserted: 1,
                revised: 0,
                skipped: 0
            }
        );
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].revision, 1);
        assert_eq!(rows[0].acc, answered(2, 10_000));

        let r = s
            .apply_deltas(
                "p1",
                &[delta(T0, Dimension::Queue, "sales", answered(1, 30_000))],
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            ApplyReport {
                inserted: 0,
                revised: 1,
                skipped: 0
            }
        );
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.window.as_str(), row.start, row.end, row.key.as_str()),
            ("1h", T0, T0 + H, "sales")
        );
        assert_eq!(row.revision, 2);
        assert_eq!(row.acc.offered, 3);
        assert_eq!(row.acc.answered, 3);
        assert_eq!(row.acc.wait_sum_ms, 50_000);
        let mut expected = answered(2, 10_000);
        expected.merge(&answered(1, 30_000));
        assert_eq!(row.acc, expected);
        assert_eq!(row.acc.wait_hist.count(), 3);
        assert_eq!(row.acc.wait_hist.count_le(10_000), 2);
        assert!(row.acc.handle_hist.is_empty());
    }

    async fn zero_deltas_are_skipped_and_duplicates_coalesced(s: Store) {
        let r = s
            .apply_deltas(
                "p1",
                &[
                    delta(T0, Dimension::Queue, "sales", Acc::default()),
                    delta(T0, Dimension::Queue, "support", answered(1, 1_000)),
                    delta(T0, Dimension::Queue, "support", answered(1, 2_000)),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            ApplyReport {
                inserted: 1,
                revised: 0,
                skipped: 2
            }
        );
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].key.as_str(), rows[0].revision, rows[0].acc.answered),
            ("support", 1, 2)
        );

        // A delta that cancels out within the call writes nothing, so no revision bump.
        let mut minus = answered(1, 5_000);
        for h in minus.hists_mut() {
            *h = Hist::new();
        }
        let mut back = Acc::default();
        back.set_counters(minus.counters().map(|c| -c));
        let r = s
            .apply_deltas(
                "p1",
                &[
                    delta(T0, Dimension::Queue, "support", minus),
                    delta(T0, Dimension::Queue, "support", back),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            ApplyReport {
                inserted: 0,
                revised: 0,
                skipped: 2
            }
        );
        assert_eq!(all_rows(&s).await[0].revision, 1);
    }

    async fn batches_larger_than_a_chunk(s: Store) {
        // The second size's batches are long enough for SQLite's writer to merge rows
        // on its helper thread ([`sqlite_rows::MERGE_AHEAD_FROM`]), the first not.
        let long = 8 * sql::CHUNK + 5;
        assert!(long / 2 > sqlite_rows::MERGE_AHEAD_FROM);
        for (round, n) in [2 * sql::CHUNK + 5, long].into_iter().enumerate() {
            rows_by_the_chunk(&s, T0 + round as i64 * H, n).await;
        }
    }

    async fn rows_by_the_chunk(s: &Store, start: i64, n: usize) {
        let keys: Vec<String> = (0..n).map(|i| format!("agent-{i:04}")).collect();
        // Counts differ from one key to the next, so a row written with another's
        // values shows.
        let count = |i: usize| 1 + (i % 3) as i64;
        let first: Vec<SnapshotDelta> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| delta(start, Dimension::Agent, k, answered(count(i), 1_000)))
            .collect();
        let r = s.apply_deltas("p1", &first).await.unwrap();
        assert_eq!((r.inserted, r.revised), (n as u64, 0));
        // Every other existing key plus new ones, so chunks mix inserts and revisions.
        let mut second: Vec<SnapshotDelta> = keys
            .iter()
            .step_by(2)
            .map(|k| delta(start, Dimension::Agent, k, answered(2, 3_000)))
            .collect();
        second.extend((0..sql::CHUNK).map(|i| {
            delta(
                start,
                Dimension::Agent,
                &format!("new-{i:03}"),
                answered(1, 1),
            )
        }));
        let revisions = keys.len().div_ceil(2);
        let r = s.apply_deltas("p1", &second).await.unwrap();
        assert_eq!(
            (r.inserted, r.revised),
            (sql::CHUNK as u64, revisions as u64)
        );
        let rows = s
            .query("1h", Dimension::Agent, Some(start), Some(start + H))
            .await
            .unwrap();
        assert_eq!(rows.len(), n + sql::CHUNK);
        for row in rows.iter().filter(|r| r.key.starts_with("agent-")) {
            let i: usize = row.key["agent-".len()..].parse().unwrap();
            let (answered, revision) = if i.is_multiple_of(2) {
                (count(i) + 2, 2)
            } else {
                (count(i), 1)
            };
            assert_eq!(
                (row.acc.answered, row.acc.wait_hist.count(), row.revision),
                (answered, answered, revision)
            );
        }
        assert!(
            rows.iter()
                .filter(|r| r.key.starts_with("new-"))
                .all(|r| r.revision == 1 && r.acc.answered == 1)
        );
    }

    /// A batch's tail (fewer rows than a chunk: read first, then upserted in one
    /// statement on PostgreSQL, row by row on SQLite) of 1, 2, 3, one under a half, a
    /// half, and a chunk less one row, each mixing revised and new rows: all land once
    /// with their sums.
    async fn tails_of_every_shape_are_written(s: Store) {
        let c = sql::CHUNK;
        for (round, len) in [1, 2, 3, c / 2 - 1, c / 2, c - 1].into_iter().enumerate() {
            let start = T0 + round as i64 * H;
            let batch = |from: usize, to: usize, n: i64| -> Vec<SnapshotDelta> {
                (from..to)
                    .map(|i| {
                        delta(
                            start,
                            Dimension::Agent,
                            &format!("a-{i:04}"),
                            answered(n, 7),
                        )
                    })
                    .collect()
            };
            // The even half of the keys first, then all of them: the second tail's
            // rows are revisions and new rows, interleaved.
            let evens: Vec<SnapshotDelta> = batch(0, len, 2)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i.is_multiple_of(2))
                .map(|(_, d)| d)
                .collect();
            let r = s.apply_deltas("p1", &evens).await.unwrap();
            assert_eq!((r.inserted, r.revised), (evens.len() as u64, 0), "{len}");
            let r = s.apply_deltas("p1", &batch(0, len, 1)).await.unwrap();
            let revised = len.div_ceil(2) as u64;
            assert_eq!(
                (r.inserted, r.revised),
                (len as u64 - revised, revised),
                "{len}"
            );
            let rows = s
                .query("1h", Dimension::Agent, Some(start), Some(start + H))
                .await
                .unwrap();
            assert_eq!(rows.len(), len, "{len}");
            for row in rows {
                let i: usize = row.key["a-".len()..].parse().unwrap();
                let (answered, revision) = if i.is_multiple_of(2) { (3, 2) } else { (1, 1) };
                assert_eq!(
                    (row.acc.answered, row.revision),
                    (answered, revision),
                    "{len} {i}"
                );
            }
        }
    }

    /// A full chunk of new rows whose last row exists. The writers try new rows as
    /// new first (PostgreSQL a chunk in one statement, SQLite row by row): the existing
    /// row must be merged, and the new rows neither read back as existing nor counted
    /// twice. Also a retraction of an existing row (not valid as a new row) inside a
    /// full chunk of new rows.
    async fn a_chunk_with_one_existing_row_is_merged_whole(s: Store) {
        s.apply_deltas(
            "p1",
            &[
                delta(T0, Dimension::Agent, "zz-existing", answered(2, 1_000)),
                delta(T0 + H, Dimension::Agent, "zz-existing", answered(2, 1_000)),
            ],
        )
        .await
        .unwrap();
        let fill = |start: i64| -> Vec<SnapshotDelta> {
            (0..sql::CHUNK - 1)
                .map(|i| {
                    delta(
                        start,
                        Dimension::Agent,
                        &format!("a-{i:03}"),
                        answered(1, 5),
                    )
                })
                .collect()
        };
        let mut batch = fill(T0);
        batch.push(delta(
            T0,
            Dimension::Agent,
            "zz-existing",
            answered(1, 1_000),
        ));
        // One of the two answered contacts retracted: valid against the stored row only.
        let mut minus = Acc::default();
        minus.apply(
            &Measure::QueueOutcome {
                answered: true,
                wait_ms: 1_000,
                short: false,
                within: true,
            },
            -1,
        );
        batch.extend(fill(T0 + H));
        batch.push(delta(T0 + H, Dimension::Agent, "zz-existing", minus));
        let r = s.apply_deltas("p1", &batch).await.unwrap();
        let n = 2 * (sql::CHUNK as u64 - 1);
        assert_eq!((r.inserted, r.revised), (n, 2));
        let rows = s.query("1h", Dimension::Agent, None, None).await.unwrap();
        assert_eq!(rows.len(), 2 * sql::CHUNK);
        for row in &rows {
            let (answered, revision) = match (row.key.as_str(), row.start) {
                ("zz-existing", T0) => (3, 2),
                ("zz-existing", _) => (1, 2),
                _ => (1, 1),
            };
            assert_eq!(
                (row.acc.answered, row.acc.wait_hist.count(), row.revision),
                (answered, answered, revision),
                "{} {}",
                row.key,
                row.start
            );
        }
    }

    async fn query_merges_partitions(s: Store) {
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(2, 10_000))],
        )
        .await
        .unwrap();
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(1, 10_000))],
        )
        .await
        .unwrap();
        s.apply_deltas(
            "p2",
            &[delta(T0, Dimension::Queue, "sales", answered(4, 60_000))],
        )
        .await
        .unwrap();
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].acc.answered, 7);
        assert_eq!(rows[0].acc.wait_hist.count(), 7);
        assert_eq!(rows[0].acc.wait_hist.count_le(10_000), 3);
        // Max over partitions, not the sum.
        assert_eq!(rows[0].revision, 2);
    }

    /// Keys whose byte order differs from a language's order (case, `_` against
    /// letters, accents), each in a different set of three partitions written in
    /// different orders, over two windows: `query_each` hands out each (start, key)
    /// once, merged over its partitions, in (start, bytes of key) order, and
    /// `query` returns the same rows.
    async fn export_streams_partitions_merged_in_byte_order(s: Store) {
        let keys = [
            "b",
            "B",
            "a_b",
            "ab",
            "Zed",
            "\u{e9}t\u{e9}",
            "e",
            "\u{c9}",
            "a",
        ];
        let parts = ["p1", "p2", "p3"];
        let mut expected = Vec::new();
        for (w, start) in [T0, T0 + H].into_iter().enumerate() {
            for (i, key) in keys.iter().enumerate() {
                let mut n = 0;
                for (j, p) in parts.iter().enumerate() {
                    // Key i is in partitions whose index differs from (i + w) % 3.
                    if (i + w) % 3 != j {
                        let k = (i * 3 + j + 1) as i64;
                        n += k;
                        s.apply_deltas(
                            p,
                            &[delta(start, Dimension::Queue, key, answered(k, 1_000))],
                        )
                        .await
                        .unwrap();
                    }
                }
                expected.push((start, key.to_string(), n));
            }
        }
        expected.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
        let mut got = Vec::new();
        let n = s
            .query_each("1h", Dimension::Queue, None, None, |r| {
                got.push((r.start, r.key, r.acc.answered));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(got, expected);
        assert_eq!(n, expected.len() as u64);
        let rows: Vec<_> = all_rows(&s)
            .await
            .into_iter()
            .map(|r| (r.start, r.key, r.acc.answered))
            .collect();
        assert_eq!(rows, expected);
        // An error from the caller stops the read and comes back as it was.
        let mut seen = 0;
        let err = s
            .query_each("1h", Dimension::Queue, None, None, |_| {
                seen += 1;
                Err(StoreError::Corrupt {
                    what: "stop".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { what } if what == "stop"));
        assert_eq!(seen, 1);
    }

    /// Rows that arrive out of the export's order (a database sorting keys in another
    /// collation) are an error naming both rows, not a second export row for a key.
    #[test]
    fn partition_merge_refuses_rows_out_of_order() {
        let raw = |start: i64, key: &str| ExportRaw {
            start,
            end: start + H,
            key: key.into(),
            row: RawRow {
                revision: 1,
                counters: [1; N_COUNTERS],
                hists: [None, None, None],
            },
        };
        let mut m = PartitionMerge::new("1h", Dimension::Agent);
        assert!(m.add(raw(T0, "B")).unwrap().is_none());
        assert!(m.add(raw(T0, "B")).unwrap().is_none());
        let done = m.add(raw(T0, "a")).unwrap().unwrap();
        assert_eq!((done.key.as_str(), done.acc.offered), ("B", 2));
        let err = m.add(raw(T0, "B")).unwrap_err().to_string();
        assert!(
            err.contains("out of order") && err.contains("\"B\"") && err.contains("\"a\""),
            "{err}"
        );
        let mut m = PartitionMerge::new("1h", Dimension::Agent);
        m.add(raw(T0 + H, "a")).unwrap();
        assert!(m.add(raw(T0, "b")).is_err());
        let nothing: Result<u64, StoreError> = PartitionMerge::new("1h", Dimension::Agent)
            .finish_to(&mut |r| panic!("no row was added, {r:?} handed out"));
        assert_eq!(nothing.unwrap(), 0);
    }

    /// PostgreSQL sorts text in the column's collation, which is the database's
    /// default unless the statement names one: under a language collation ("a" before
    /// "B") the export's byte order would break and the merge refuse the rows. The
    /// column here is given ICU's root collation, as a database created with it would.
    #[tokio::test]
    async fn postgres_export_order_is_bytewise_whatever_the_collation() {
        on_postgres(export_order_under_a_language_collation).await
    }

    async fn export_order_under_a_language_collation(store: Store) {
        let Store::Postgres(pg) = &store else {
            panic!("not PostgreSQL")
        };
        sqlx::query("ALTER TABLE snapshots ALTER COLUMN \"key\" TYPE TEXT COLLATE \"und-x-icu\"")
            .execute(&pg.pool)
            .await
            .unwrap();
        let in_icu: Vec<String> = sqlx::query_scalar(
            "SELECT k FROM (VALUES ('a'), ('B')) AS v(k) ORDER BY k COLLATE \"und-x-icu\"",
        )
        .fetch_all(&pg.pool)
        .await
        .unwrap();
        assert_eq!(
            in_icu,
            ["a", "B"],
            "the collation must sort otherwise than bytes"
        );
        for key in ["a", "B", "b", "A"] {
            for p in ["p1", "p2"] {
                store
                    .apply_deltas(p, &[delta(T0, Dimension::Queue, key, answered(1, 1_000))])
                    .await
                    .unwrap();
            }
        }
        let rows = all_rows(&store).await;
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.acc.answered))
            .collect();
        assert_eq!(got, [("A", 2), ("B", 2), ("a", 2), ("b", 2)]);
    }

    async fn clear_partition_deletes_only_that_partition(s: Store) {
        let ds = [
            delta(T0, Dimension::Queue, "sales", answered(1, 1)),
            delta(T0, Dimension::Queue, "b", answered(1, 1)),
        ];
        s.apply_deltas("p1", &ds).await.unwrap();
        s.apply_deltas("p2", &ds[..1]).await.unwrap();
        assert_eq!(s.clear_partition("p1").await.unwrap(), 2);
        assert_eq!(s.clear_partition("p1").await.unwrap(), 0);
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].key.as_str(), rows[0].acc.answered), ("sales", 1));
        // A replay starts the partition over at revision 1.
        s.apply_deltas("p1", &ds[1..]).await.unwrap();
        assert_eq!(all_rows(&s).await[0].revision, 1);
    }

    async fn negative_correction_brings_counters_down(s: Store) {
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(3, 20_000))],
        )
        .await
        .unwrap();
        let mut fix = Acc::default();
        fix.apply(
            &Measure::QueueOutcome {
                answered: true,
                wait_ms: 20_000,
                short: false,
                within: true,
            },
            -1,
        );
        s.apply_deltas("p1", &[delta(T0, Dimension::Queue, "sales", fix)])
            .await
            .unwrap();
        let rows = all_rows(&s).await;
        assert_eq!(rows[0].acc, answered(2, 20_000));
        assert_eq!(rows[0].revision, 2);
    }

    async fn negative_hist_bin_is_an_error_and_rolls_back(s: Store) {
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(1, 1_000))],
        )
        .await
        .unwrap();
        let bad = impossible_retraction();
        // More than a chunk of new rows sorting before the failing one, so a full
        // chunk is written before the error: it must be rolled back with the rest.
        let mut batch: Vec<SnapshotDelta> = (0..sql::CHUNK + 3)
            .map(|i| {
                delta(
                    T0,
                    Dimension::Queue,
                    &format!("aaa-{i:03}"),
                    answered(5, 1_000),
                )
            })
            .collect();
        batch.push(delta(T0, Dimension::Queue, "sales", bad));
        let err = s.apply_deltas("p1", &batch).await.unwrap_err();
        match &err {
            StoreError::Hist {
                row,
                column,
                source: HistError::Negative { .. },
            } => {
                assert_eq!(
                    (row.as_str(), *column),
                    (
                        "1h 2026-11-23T00:00:00Z queue/\"sales\" (partition \"p1\")",
                        "wait_hist"
                    )
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("negative"), "{err}");
        let rows = all_rows(&s).await;
        assert_eq!(
            rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["sales"]
        );
        assert_eq!((rows[0].key.as_str(), rows[0].revision), ("sales", 1));
        assert_eq!(rows[0].acc, answered(1, 1_000));
        // The store is still usable after the rollback.
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(1, 1_000))],
        )
        .await
        .unwrap();
        assert_eq!(all_rows(&s).await[0].revision, 2);
        // A batch long enough for SQLite's writer to merge its new rows on a helper
        // thread, failing on its first row: the helper, thousands of rows ahead, stops
        // with the writer instead of waiting to hand over more, and all of it rolls back.
        let mut long = vec![delta(
            T0,
            Dimension::Queue,
            "sales",
            impossible_retraction(),
        )];
        long.extend((0..8 * sql::CHUNK).map(|i| {
            delta(
                T0,
                Dimension::Queue,
                &format!("zzz-{i:04}"),
                answered(1, 1_000),
            )
        }));
        // On a worker of the test's multi-threaded runtime, where the writer blocks its
        // thread through `block_in_place`, so that the test's own thread can time out.
        // A hung write would then also hang the runtime's shutdown after a panic: abort
        // instead, which fails the test binary with this message.
        let writer = s.clone();
        let write = tokio::spawn(async move { writer.apply_deltas("p1", &long).await });
        let failed = match tokio::time::timeout(std::time::Duration::from_secs(60), write).await {
            Ok(done) => done.unwrap(),
            Err(_) => {
                eprintln!("a long write failing on its first row did not stop within 60 s");
                std::process::abort();
            }
        };
        assert!(matches!(failed, Err(StoreError::Hist { .. })), "{failed:?}");
        let rows = all_rows(&s).await;
        assert_eq!((rows.len(), rows[0].revision), (1, 2));
    }

    async fn query_filters_by_window_dimension_and_range_and_sorts(s: Store) {
        let one = || answered(1, 1_000);
        let mut ds = vec![
            delta(T0 + 2 * H, Dimension::Queue, "b", one()),
            delta(T0 + 2 * H, Dimension::Queue, "B", one()),
            delta(T0, Dimension::Queue, "z", one()),
            delta(T0 + H, Dimension::Queue, "a", one()),
            delta(T0, Dimension::Queue, "a", one()),
            delta(T0, Dimension::Agent, "a", one()),
        ];
        ds.push(SnapshotDelta {
            interval: Interval::Minutes(15),
            ..delta(T0, Dimension::Queue, "q15", one())
        });
        s.apply_deltas("p2", &ds[..3]).await.unwrap();
        s.apply_deltas("p1", &ds[3..]).await.unwrap();

        let ids = |rows: Vec<StoredRow>| {
            rows.into_iter()
                .map(|r| ((r.start - T0) / H, r.key))
                .collect::<Vec<_>>()
        };
        let q = |from, to| s.query("1h", Dimension::Queue, from, to);
        assert_eq!(
            ids(q(None, None).await.unwrap()),
            [
                (0, "a".into()),
                (0, "z".into()),
                (1, "a".into()),
                (2, "B".into()),
                (2, "b".into())
            ]
        );
        assert_eq!(
            ids(q(Some(T0 + H), None).await.unwrap()),
            [(1, "a".into()), (2, "B".into()), (2, "b".into())]
        );
        assert_eq!(
            ids(q(None, Some(T0 + H)).await.unwrap()),
            [(0, "a".into()), (0, "z".into())]
        );
        assert_eq!(
            ids(q(Some(T0 + H), Some(T0 + 2 * H)).await.unwrap()),
            [(1, "a".into())]
        );
        assert!(q(Some(T0 + H), Some(T0 + H)).await.unwrap().is_empty());

        let agents = s.query("1h", Dimension::Agent, None, None).await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].dimension, Dimension::Agent);
        let q15 = s.query("15m", Dimension::Queue, None, None).await.unwrap();
        assert_eq!(
            (q15.len(), q15[0].key.as_str(), q15[0].window.as_str()),
            (1, "q15", "15m")
        );
        assert!(
            s.query("1d", Dimension::Queue, None, None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Reading a stored row (the write path's corrections; SQLite's writer reads one
    /// row at a time, `select_row`) looks the key up in the primary key. The
    /// partition's own index matches the statement too, and an older SQLite (3.40,
    /// Python's) planned the chunked read of 256 keys on that index: every read would
    /// then walk every row of the partition, a cost growing with the table. The bundled
    /// SQLite plans the look-up; this holds it to that across upgrades
    /// (docs/performance.md, "thirty-first round").
    #[tokio::test]
    async fn reading_stored_rows_looks_up_the_primary_key() {
        let s = mem().await;
        let Store::Sqlite(inner) = &s else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        // The statement SQLite's writer runs (PostgreSQL's writer reads a chunk at a
        // time: `sql::PgRowStatements::select_rows`).
        let sql = &<sqlx::Sqlite as backend::Dialect>::statements().select_row;
        let plan = inner.query_plan(sql).await.unwrap().join("\n");
        assert!(!plan.contains("snapshots_partition"), "{plan}");
        assert!(plan.contains("sqlite_autoindex_snapshots"), "{plan}");
        s.close().await;
    }

    #[tokio::test]
    async fn file_store_persists_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        // Parent directories are created on open.
        let path = dir.path().join("nested/deeper/cc.db");
        let url = format!("sqlite://{}", path.display());
        let s = Store::open(&url).await.unwrap();
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(2, 10_000))],
        )
        .await
        .unwrap();
        s.close().await;
        assert!(path.exists());

        let s = Store::open(&url).await.unwrap();
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].acc.clone(), rows[0].revision),
            (answered(2, 10_000), 1)
        );
        s.apply_deltas(
            "p1",
            &[delta(T0, Dimension::Queue, "sales", answered(1, 10_000))],
        )
        .await
        .unwrap();
        s.close().await;

        let s = Store::open(&url).await.unwrap();
        let rows = all_rows(&s).await;
        assert_eq!((rows[0].acc.answered, rows[0].revision), (3, 2));
        let Store::Sqlite(inner) = &s else {
            unreachable!("a sqlite: URL opens the SQLite backend")
        };
        assert_eq!(inner.applied_migrations().await.unwrap(), 5);
        assert_eq!(inner.journal_mode().await.unwrap(), "wal");
        assert_eq!(
            inner.temp_store().await.unwrap(),
            2,
            "temporary files in memory"
        );
        assert_eq!(
            inner.page_size().await.unwrap(),
            16 * 1024,
            "a new file's pages"
        );
        // Built without allocation statistics (LIBSQLITE3_FLAGS in .cargo/config.toml):
        // with them every SQLite malloc and free takes one global mutex.
        let options = inner.compile_options().await.unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        s.close().await;
    }

    #[test]
    fn sqlite_dir_is_the_database_files_directory() {
        let d = |u: &str| Store::sqlite_dir(u).map(|p| p.display().to_string());
        assert_eq!(
            d("sqlite:///var/lib/cc/ccmetrics.db").as_deref(),
            Some("/var/lib/cc")
        );
        assert_eq!(d("sqlite://data/cc.db?mode=rwc").as_deref(), Some("data"));
        assert_eq!(d("sqlite://cc.db").as_deref(), Some("."));
        assert_eq!(d("sqlite::memory:"), None);
        assert_eq!(d("sqlite://x.db?mode=memory"), None);
        assert_eq!(d("postgres://u@h/db"), None);
    }

    #[tokio::test]
    async fn rejects_invalid_urls() {
        for url in ["mysql://x", "sqlite://"] {
            let err = Store::open(url).await.unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidUrl { .. }),
                "{url}: {err:?}"
            );
            assert!(!err.is_transient(), "{url}");
        }
        // Parsed by the PostgreSQL driver: a configuration error, not worth a retry.
        let err = Store::open("postgres://u@localhost:notaport/cc")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Db(_)), "{err:?}");
        assert!(!err.is_transient(), "{err:?}");
    }

    #[test]
    fn sql_lists_every_column() {
        use sql::{CHUNK, PgRowStatements, Placeholder, Statements, UPSERT_BINDS};
        let st = Statements::new(Placeholder::Dollar);
        let pg = PgRowStatements::new();
        let upsert_one = &st.upsert_row;
        for c in COUNTER_NAMES.iter().chain(HIST_NAMES.iter()) {
            assert!(upsert_one.contains(&format!("{c} = excluded.{c}")), "{c}");
            assert!(st.select_export.contains(c), "{c}");
            assert!(st.select_row.contains(c), "{c}");
            assert!(pg.select_rows.contains(c), "{c}");
        }
        assert_eq!(UPSERT_BINDS, 32);
        assert!(upsert_one.contains("VALUES ($1, $2, "));
        assert!(upsert_one.contains("$32) ON CONFLICT"));
        assert!(!upsert_one.contains("$33"));
        let insert_one = upsert_one.split(" ON CONFLICT").next().unwrap();
        assert_eq!(
            st.insert_row_if_new,
            format!(
                "{insert_one} ON CONFLICT (\"window\", dimension, window_start, \"key\", \"partition\") DO NOTHING"
            )
        );
        let last = 1 + 4 * CHUNK;
        assert!(pg.select_rows.contains("\"partition\" = $1 LIMIT 1"));
        assert!(
            pg.select_rows
                .contains("FROM (VALUES ($2, $3, $4, $5), ($6, ")
        );
        assert!(pg.select_rows.contains(&format!("${last})) AS k")));
        assert!(!pg.select_rows.contains(&format!("${}", last + 1)));
        // The first write of a chunk is the insert, returning the keys it inserted.
        // Its values come as one array per column, but the partition's ($6) and
        // updated_at's ($32), in the order of the upserts' columns.
        let write = &pg.insert_new_chunk;
        let columns = upsert_one.split(") VALUES").next().unwrap();
        assert!(write.starts_with(&format!("{columns}) SELECT c1, c2, c3, c4, c5, $6, c7, ")));
        assert!(write.contains(
            ", c31, $32 FROM unnest($1::text[], $2::int8[], $3::int8[], \
             $4::text[], $5::text[], $7::int8[], "
        ));
        assert!(write.contains(
            "$27::int8[], $28::bytea[], $29::bytea[], $30::bytea[], $31::int8[]) AS r (c1, "
        ));
        assert!(!write.contains("$33"));
        // The upsert of any number of rows: the same arrays, the upserts' update.
        let arrays = write.split(" ON CONFLICT").next().unwrap();
        let update = upsert_one.split(") VALUES").nth(1).unwrap();
        let update = &update[update.find(" ON CONFLICT").unwrap()..];
        assert_eq!(pg.upsert_arrays, format!("{arrays}{update}"));
        assert!(
            write.ends_with("DO NOTHING RETURNING \"window\", window_start, dimension, \"key\"")
        );
        assert!(
            st.select_export
                .contains("window_start >= $3 AND window_start < $4")
        );
        // The SQLite spelling binds the same parameters in the same order.
        let q = Statements::new(Placeholder::Question);
        let count = |s: &str, pat: &str| s.matches(pat).count();
        assert_eq!(count(&q.upsert_row, "?"), UPSERT_BINDS);
        assert_eq!(count(&q.insert_row_if_new, "?"), UPSERT_BINDS);
        assert_eq!(count(&q.select_row, "?"), 5);
        assert_eq!(count(&q.select_export, "?"), 4);
        assert!(!q.upsert_row.contains('$'));
        assert_eq!(rfc3339_ms(T0 + 5), "2026-11-23T00:00:00.005Z");
    }

    fn checkpoint(epoch: i64, seq: i64, next_offset: i64, state: &[u8]) -> CheckpointWrite<'_> {
        CheckpointWrite {
            epoch,
            seq,
            next_offset,
            state,
            spill: None,
        }
    }

    /// Retracts a 90 s wait that was never stored: its histogram bin would go negative.
    fn impossible_retraction() -> Acc {
        let mut bad = Acc::default();
        bad.apply(
            &Measure::QueueOutcome {
                answered: true,
                wait_ms: 90_000,
                short: false,
                within: false,
            },
            -1,
        );
        bad
    }

    async fn claim_starts_at_epoch_one_without_state(s: Store) {
        assert_eq!(s.committed("kafka:events:0").await.unwrap(), None);
        let c = s.claim("kafka:events:0", "host-a").await.unwrap();
        assert_eq!(
            c,
            Claim {
                epoch: 1,
                seq: 0,
                next_offset: None,
                state: None
            }
        );
        assert_eq!(s.committed("kafka:events:0").await.unwrap(), Some((1, 0)));
        // Partitions are independent.
        let other = s.claim("kafka:events:1", "host-a").await.unwrap();
        assert_eq!((other.epoch, other.seq), (1, 0));
    }

    async fn commit_writes_rows_state_and_offset_together(s: Store) {
        let p = "kafka:events:0";
        let c = s.claim(p, "host-a").await.unwrap();
        let sales = |acc| delta(T0, Dimension::Queue, "sales", acc);
        let r = s
            .commit(
                p,
                &[sales(answered(2, 10_000))],
                &checkpoint(c.epoch, 1, 42, b"state-1"),
            )
            .await
            .unwrap();
        assert_eq!((r.inserted, r.revised), (1, 0));
        assert_eq!(s.committed(p).await.unwrap(), Some((1, 1)));
        // A commit without deltas still moves the checkpoint on.
        s.commit(p, &[], &checkpoint(c.epoch, 2, 50, b"state-2"))
            .await
            .unwrap();
        assert_eq!(s.committed(p).await.unwrap(), Some((1, 2)));

        // A commit that fails on its rows leaves the checkpoint where it was too.
        let err = s
            .commit(
                p,
                &[
                    sales(answered(1, 10_000)),
                    delta(T0, Dimension::Queue, "support", impossible_retraction()),
                ],
                &checkpoint(c.epoch, 3, 60, b"state-3"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Hist { .. }), "{err:?}");
        assert_eq!(s.committed(p).await.unwrap(), Some((1, 2)));
        let rows = all_rows(&s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].acc.answered, rows[0].revision), (2, 1));

        // The next owner resumes from the last commit.
        let c = s.claim(p, "host-b").await.unwrap();
        assert_eq!(
            c,
            Claim {
                epoch: 2,
                seq: 2,
                next_offset: Some(50),
                state: Some(b"state-2".to_vec())
            }
        );
    }

    async fn stale_epoch_is_fenced_and_writes_nothing(s: Store) {
        let p = "kafka:events:3";
        let old = s.claim(p, "host-a").await.unwrap();
        s.commit(
            p,
            &[delta(T0, Dimension::Queue, "sales", answered(2, 10_000))],
            &checkpoint(old.epoch, 1, 10, b"a-1"),
        )
        .await
        .unwrap();
        let new = s.claim(p, "host-b").await.unwrap();
        assert_eq!((new.epoch, new.seq, new.next_offset), (2, 1, Some(10)));
        let before = all_rows(&s).await;

        // The zombie's commit: a revision of an existing row and a new row.
        let zombie = [
            delta(T0, Dimension::Queue, "sales", answered(5, 10_000)),
            delta(T0, Dimension::Queue, "support", answered(1, 1_000)),
        ];
        let err = s
            .commit(p, &zombie, &checkpoint(old.epoch, 2, 20, b"a-2"))
            .await
            .unwrap_err();
        match &err {
            StoreError::Fenced { partition, epoch } => {
                assert_eq!((partition.as_str(), *epoch), (p, 1));
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert!(!err.is_transient());
        assert_eq!(all_rows(&s).await, before, "a fenced commit wrote rows");
        assert_eq!(s.committed(p).await.unwrap(), Some((2, 1)));

        // The new owner writes as usual.
        s.commit(p, &zombie[1..], &checkpoint(new.epoch, 2, 20, b"b-2"))
            .await
            .unwrap();
        assert_eq!(s.committed(p).await.unwrap(), Some((2, 2)));
        assert_eq!(all_rows(&s).await.len(), 2);
    }

    /// Writers of different partitions run side by side; writers of one partition
    /// queue, so none of their read-add-write updates is lost.
    async fn concurrent_writers_neither_conflict_nor_lose_updates(s: Store) {
        const WRITERS: usize = 6;
        const SHARED: usize = 3;
        const ROUNDS: usize = 5;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let s = s.clone();
            tasks.spawn(async move {
                let partition = if w < SHARED {
                    "shared".to_owned()
                } else {
                    format!("own-{w}")
                };
                for _ in 0..ROUNDS {
                    let ds = [
                        delta(T0, Dimension::Queue, "sales", answered(1, 1_000)),
                        delta(T0, Dimension::Queue, &format!("w{w}"), answered(1, 2_000)),
                    ];
                    s.apply_deltas(&partition, &ds).await.unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let rows = all_rows(&s).await;
        let sales = rows.iter().find(|r| r.key == "sales").unwrap();
        assert_eq!(sales.acc.answered, (WRITERS * ROUNDS) as i64);
        assert_eq!(sales.acc.wait_hist.count(), (WRITERS * ROUNDS) as i64);
        // Every write of the shared partition revised its row once.
        assert_eq!(sales.revision, (SHARED * ROUNDS) as i64);
        assert_eq!(rows.len(), 1 + WRITERS);
    }

    /// Deltas covering every column kind, several windows, dimensions and partitions,
    /// a correction, and keys whose order differs between collations.
    fn mixed_batches() -> Vec<(&'static str, Vec<SnapshotDelta>)> {
        let mut rich = answered(3, 25_000);
        for m in [
            Measure::Presented,
            Measure::AgentAnswered {
                wait_ms: Some(4_000),
                within: true,
            },
            Measure::Handled { handle_ms: 310_000 },
            Measure::FirstResponse { frt_ms: 45_000 },
            Measure::Resolved { fcr: true },
            Measure::Converted {
                first: true,
                amount: 129_990,
            },
            Measure::Csat {
                score: 4_500,
                positive: true,
            },
            Measure::Qa { score: 8_800 },
        ] {
            rich.apply(&m, 1);
        }
        let mut fix = Acc::default();
        fix.apply(&Measure::Handled { handle_ms: 310_000 }, -1);
        let day = |d: SnapshotDelta| SnapshotDelta {
            interval: Interval::Day,
            start: T0,
            end: T0 + 24 * H,
            ..d
        };
        vec![
            (
                "p1",
                vec![
                    delta(T0, Dimension::Queue, "sales", rich.clone()),
                    delta(T0, Dimension::Queue, "B", answered(1, 500)),
                    delta(T0, Dimension::Queue, "b", answered(2, 1_500)),
                    delta(T0, Dimension::Queue, "é", answered(1, 90_000)),
                    delta(T0 + H, Dimension::Agent, "a-1", rich.clone()),
                    day(delta(T0, Dimension::All, "all", rich.clone())),
                ],
            ),
            (
                "p2",
                vec![
                    delta(T0, Dimension::Queue, "sales", answered(4, 70_000)),
                    delta(T0, Dimension::Queue, "Z", answered(1, 1)),
                    day(delta(T0, Dimension::All, "all", answered(4, 70_000))),
                ],
            ),
            (
                "p1",
                vec![
                    delta(T0 + H, Dimension::Agent, "a-1", fix.clone()),
                    delta(T0, Dimension::Queue, "sales", answered(1, 2_000)),
                ],
            ),
        ]
    }

    #[tokio::test]
    async fn export_is_identical_on_sqlite_and_postgres() {
        on_postgres(|pg| async move {
            let lite = mem().await;
            for (partition, ds) in mixed_batches() {
                for s in [&lite, &pg] {
                    s.apply_deltas_at(partition, &ds, T0).await.unwrap();
                }
            }
            let mut seen = 0;
            for window in ["15m", "1h", "1d"] {
                for dimension in [Dimension::All, Dimension::Queue, Dimension::Agent] {
                    for (from, to) in [(None, None), (Some(T0 + H), None), (None, Some(T0 + H))] {
                        let a = lite.query(window, dimension, from, to).await.unwrap();
                        let b = pg.query(window, dimension, from, to).await.unwrap();
                        assert_eq!(a, b, "{window} {dimension:?} {from:?}..{to:?}");
                        seen += a.len();
                    }
                }
            }
            assert!(seen >= 8, "the comparison covered too few rows: {seen}");
            let queues = pg.query("1h", Dimension::Queue, None, None).await.unwrap();
            let keys: Vec<&str> = queues.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys, ["B", "Z", "b", "sales", "é"], "byte-wise order");
            lite.close().await;
        })
        .await;
    }

    /// The columns the migrations of every backend must create, in order: the
    /// statements list them from `COUNTER_NAMES` and `HIST_NAMES`.
    fn expected_columns(table: &str) -> Vec<&'static str> {
        match table {
            "snapshots" => {
                let mut c = vec![
                    "window",
                    "window_start",
                    "window_end",
                    "dimension",
                    "key",
                    "partition",
                ];
                c.extend(COUNTER_NAMES);
                c.extend(HIST_NAMES);
                c.extend(["revision", "updated_at"]);
                c
            }
            "checkpoints" => vec![
                "partition",
                "epoch",
                "owner",
                "next_offset",
                "seq",
                "state",
                "updated_at",
            ],
            other => panic!("no table {other}"),
        }
    }

    #[tokio::test]
    async fn sqlite_tables_match_the_accumulator() {
        let s = sqlite::SqliteStore::open("sqlite::memory:", Connections::Shared)
            .await
            .unwrap();
        for table in ["snapshots", "checkpoints"] {
            assert_eq!(
                s.table_columns(table).await.unwrap(),
                expected_columns(table)
            );
        }
    }

    /// The read before a write finds each row by its whole key. With the export index
    /// on (window, dimension, window_start) only, PostgreSQL without statistics (a
    /// table just written, before ANALYZE) picked it for this look-up and filtered on
    /// `key`: every look-up walked every key of its window (migrations/postgres/0004).
    /// Fails then: 64 look-ups among 10,000 keys per window touch thousands of pages.
    /// Also holds the connection to custom plans (fails without `plan_cache_mode`).
    #[tokio::test]
    async fn postgres_reads_rows_back_by_their_whole_key() {
        let db = testing::TestDb::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&db.url).await.unwrap();
        let Store::Postgres(pg) = &store else {
            panic!("not PostgreSQL")
        };
        // Reads are planned for their values every time: a generic plan made while the
        // table was near empty scanned the whole partition per chunk (see
        // `PostgresStore::open`). Write transactions use generic plans, which the
        // look-ups below must survive.
        let show = "SHOW plan_cache_mode";
        let mode: String = sqlx::query_scalar(show).fetch_one(&pg.pool).await.unwrap();
        assert_eq!(mode, "force_custom_plan");
        let mut tx = pg
            .pool
            .begin_with(<sqlx::Postgres as backend::Dialect>::BEGIN)
            .await
            .unwrap();
        let mode: String = sqlx::query_scalar(show).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(mode, "force_generic_plan");
        tx.rollback().await.unwrap();
        // Forty hours of 2,000 agents with a 300-byte histogram each, written in one
        // statement (no statistics yet). Ten hours was the size at which PostgreSQL
        // 15 planned a row-value IN list of 64 keys as a hash semi join over the
        // whole partition (1,446 pages, against 256 for look-ups by key); with
        // chunks of 256 keys the partition is four times that, so that a scan stays
        // far above the look-ups' ~4 pages per key.
        sqlx::query(
            "INSERT INTO snapshots (\"window\", window_start, window_end, dimension, \"key\", \
             \"partition\", revision, updated_at, wait_hist) \
             SELECT '1h', $1 + w * 3600000, $1 + (w + 1) * 3600000, 'agent', \
             'agent-' || lpad(k::text, 5, '0'), 'p1', 1, '', decode(repeat('ab', 300), 'hex') \
             FROM generate_series(0, 39) AS w, generate_series(0, 1999) AS k",
        )
        .bind(T0)
        .execute(&pg.pool)
        .await
        .unwrap();
        let st = sql::PgRowStatements::new();
        let start = T0 + 5 * H;
        let agent = |i: usize| format!("'agent-{:05}'", i * 7);
        // select_rows: the partition, then (window, start, dimension, key) per key.
        let mut types = vec!["text"];
        let mut args = vec!["'p1'".to_owned()];
        for i in 0..sql::CHUNK {
            types.extend(["text", "bigint", "text", "text"]);
            args.extend([
                "'1h'".to_owned(),
                start.to_string(),
                "'agent'".into(),
                agent(i),
            ]);
        }
        // insert_new_chunk: whole rows (every one exists, so nothing is inserted).
        // As arrays: column b's every row, or the one value of the partition and
        // updated_at.
        let row = |i: usize| -> Vec<String> {
            let mut v = vec![
                "'1h'".to_owned(),
                start.to_string(),
                (start + H).to_string(),
                "'agent'".into(),
                agent(i),
                "'p1'".into(),
            ];
            v.extend(std::iter::repeat_n("0".to_owned(), N_COUNTERS));
            v.extend(std::iter::repeat_n("NULL".to_owned(), N_HISTS));
            v.extend(["2".to_owned(), "''".into()]);
            v
        };
        let rows: Vec<Vec<String>> = (0..sql::CHUNK).map(row).collect();
        let (mut write_types, mut write_args) = (Vec::new(), Vec::new());
        for b in 1..=sql::UPSERT_BINDS {
            match sql::array_type(b) {
                Some(t) => {
                    write_types.push(format!("{t}[]"));
                    let values: Vec<&str> = rows.iter().map(|r| r[b - 1].as_str()).collect();
                    write_args.push(format!("ARRAY[{}]::{t}[]", values.join(", ")));
                }
                None => {
                    write_types.push("text".to_owned());
                    write_args.push(rows[0][b - 1].clone());
                }
            }
        }
        let write_types: Vec<&str> = write_types.iter().map(String::as_str).collect();
        let insert_new = st.insert_new_chunk.as_str();
        for (what, statement, types, args, mode, rows) in [
            (
                "select_rows",
                st.select_rows.as_str(),
                &types,
                &args,
                "force_custom_plan",
                sql::CHUNK,
            ),
            (
                "select_rows",
                &st.select_rows,
                &types,
                &args,
                "force_generic_plan",
                sql::CHUNK,
            ),
            // Its conflict checks look each key up; none is inserted or returned.
            (
                "insert_new",
                insert_new,
                &write_types,
                &write_args,
                "force_generic_plan",
                0,
            ),
        ] {
            let (pages, found, plan) = pages_touched(&pg.pool, mode, statement, types, args).await;
            assert_eq!(found, rows, "{what}, {mode}: rows returned");
            // About 4 pages per key; the partition alone is ~5,800.
            assert!(
                (1..=5 * sql::CHUNK as u64).contains(&pages),
                "{what}, {mode}: {pages} pages:\n{plan}"
            );
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
        assert_eq!(stored, 80_000, "the first write wrote over existing rows");
        store.close().await;
        db.drop_db().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// `statement` run once on its own connection as a prepared statement with SQL
    /// literals `args` of `types`, under `plan_cache_mode` `mode`, in `EXPLAIN (ANALYZE,
    /// BUFFERS)`: the pages its top plan node touched, the rows it returned, the plan.
    async fn pages_touched(
        pool: &sqlx::PgPool,
        mode: &str,
        statement: &str,
        types: &[&str],
        args: &[String],
    ) -> (u64, usize, String) {
        let mut conn = pool.acquire().await.unwrap();
        let setup = format!(
            "SET plan_cache_mode = {mode}; PREPARE probe ({}) AS {statement}",
            types.join(", ")
        );
        sqlx::raw_sql(&setup).execute(&mut *conn).await.unwrap();
        let explain = format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE probe ({})",
            args.join(", ")
        );
        let plan: Vec<String> = sqlx::raw_sql(&explain)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, 0))
            .collect();
        sqlx::raw_sql("DEALLOCATE probe; RESET plan_cache_mode")
            .execute(&mut *conn)
            .await
            .unwrap();
        // The top node's buffers and rows.
        let pages: u64 = plan
            .iter()
            .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
            .map(|b| {
                b.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| matches!(*k, "hit" | "read"))
                    .map(|(_, v)| v.parse::<u64>().unwrap())
                    .sum()
            })
            .unwrap_or(0);
        let found = plan
            .first()
            .and_then(|l| l.split(" rows=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        (pages, found, plan.join("\n"))
    }

    #[tokio::test]
    async fn postgres_migrations_are_idempotent_and_match_the_accumulator() {
        let db = testing::TestDb::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for round in 0..2 {
            let s = postgres::PostgresStore::open(&db.url, Connections::Shared)
                .await
                .unwrap();
            assert_eq!(s.applied_migrations().await.unwrap(), 6, "open #{round}");
            // 0006: the key's text columns compare byte-wise, whatever the database's
            // collation.
            let collations: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT column_name::text, collation_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'snapshots' \
                 AND data_type = 'text' ORDER BY ordinal_position",
            )
            .fetch_all(&s.pool)
            .await
            .unwrap();
            let c = Some("C".to_owned());
            assert_eq!(
                collations,
                [
                    ("window".to_owned(), c.clone()),
                    ("dimension".to_owned(), c.clone()),
                    ("key".to_owned(), c.clone()),
                    ("partition".to_owned(), c.clone()),
                    ("updated_at".to_owned(), None),
                ],
                "open #{round}"
            );
            // 0005: the key in export order serves the exports; no index besides it
            // and the partition's.
            let indexes: Vec<String> = sqlx::query_scalar(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'snapshots' ORDER BY indexname",
            )
            .fetch_all(&s.pool)
            .await
            .unwrap();
            assert_eq!(indexes.len(), 2, "{indexes:?}");
            assert!(indexes[0].ends_with("(partition)"), "{indexes:?}");
            assert!(
                indexes[1].contains("snapshots_pkey")
                    && indexes[1]
                        .ends_with("(\"window\", dimension, window_start, key, partition)"),
                "{indexes:?}"
            );
            for table in ["snapshots", "checkpoints"] {
                assert_eq!(
                    s.table_columns(table).await.unwrap(),
                    expected_columns(table)
                );
            }
            s.close().await;
        }
        db.drop_db().await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn postgres_store_survives_a_killed_connection() {
        on_postgres(|s| async move {
            let Store::Postgres(pg) = &s else {
                unreachable!("a postgres: URL opens the PostgreSQL backend")
            };
            // The server ends the session as it would on a restart or failover.
            let err = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                .execute(&pg.pool)
                .await
                .unwrap_err();
            let err = StoreError::Db(err);
            assert!(err.is_transient(), "{err:?}");
            // A syntax error is not worth a retry.
            let err = sqlx::query("SELEKT 1").execute(&pg.pool).await.unwrap_err();
            assert!(!StoreError::Db(err).is_transient());
            // The pool replaced the dead connection.
            s.apply_deltas(
                "p1",
                &[delta(T0, Dimension::Queue, "sales", answered(1, 1_000))],
            )
            .await
            .unwrap();
            assert_eq!(all_rows(&s).await.len(), 1);
        })
        .await;
    }

    /// A database error with a given code, as a driver would report it.
    #[derive(Debug)]
    struct CodedError(&'static str);

    impl std::fmt::Display for CodedError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for CodedError {}

    impl sqlx::error::DatabaseError for CodedError {
        fn message(&self) -> &str {
            "coded"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn transient_errors_are_told_from_permanent_ones() {
        use std::io::{Error as IoError, ErrorKind};
        let db = |code| StoreError::Db(sqlx::Error::Database(Box::new(CodedError(code))));
        let transient = [
            StoreError::Db(sqlx::Error::Io(IoError::from(ErrorKind::ConnectionReset))),
            StoreError::Db(sqlx::Error::Io(IoError::from(ErrorKind::ConnectionRefused))),
            StoreError::Db(sqlx::Error::Io(IoError::from(ErrorKind::UnexpectedEof))),
            StoreError::Db(sqlx::Error::PoolTimedOut),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(
                sqlx::Error::PoolTimedOut,
            )),
            db("08000"),
            db("08003"),
            db("08006"),
            db("57P01"),
            db("57P02"),
            db("57P03"),
            db("40001"),
            db("40P01"),
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e:?}");
        }
        let permanent = [
            StoreError::Db(sqlx::Error::PoolClosed),
            StoreError::Db(sqlx::Error::RowNotFound),
            StoreError::Db(sqlx::Error::Protocol("unknown message type".into())),
            StoreError::Db(sqlx::Error::Configuration("bad URL".into())),
            db("23505"), // unique_violation
            db("42P01"), // undefined_table
            db("28P01"), // invalid_password
            db("57014"), // query_canceled
            db("3D000"), // invalid_catalog_name: the database does not exist
            StoreError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(1)),
            StoreError::Fenced {
                partition: "p".into(),
                epoch: 1,
            },
            StoreError::InvalidUrl {
                url: "x".into(),
                reason: "y".into(),
            },
        ];
        for e in &permanent {
            assert!(!e.is_transient(), "{e:?}");
        }
    }

    /// SQLite reports a write lock held past the busy timeout as SQLITE_BUSY.
    #[tokio::test]
    async fn sqlite_busy_is_transient() {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::{ConnectOptions, Connection, Executor};
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("busy.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = options.connect().await.unwrap();
        holder.execute("BEGIN IMMEDIATE").await.unwrap();
        let mut other = options.connect().await.unwrap();
        let err = other.execute("BEGIN IMMEDIATE").await.unwrap_err();
        assert!(StoreError::Db(err).is_transient());
        holder.execute("ROLLBACK").await.unwrap();
        holder.close().await.unwrap();
        other.close().await.unwrap();
    }
}
