//! PostgreSQL backend: opens the pool and says how write transactions keep partitions
//! apart; the shared statements run in [`super::backend`], the snapshot rows are
//! written by `postgres_rows.rs`.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgQueryResult};
use sqlx::{ConnectOptions, Connection, Postgres};

use super::backend::{Dialect, RowsWritten, SqlxStore};
use super::sql::{Placeholder, Statements};
use super::{Connections, Pending, StoreError};

/// Connections per process. One writer per owned partition flushes at a time, and
/// exports and HTTP reads share the rest; more would only hold server backends idle.
const POOL_SIZE: u32 = 8;

/// How long a call waits for a connection, including opening one. Bounded so an
/// unreachable server surfaces as a (transient) `PoolTimedOut` the caller can retry,
/// instead of a flush hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared statements in PostgreSQL's placeholder spelling.
static SQL: LazyLock<Statements> = LazyLock::new(|| Statements::new(Placeholder::Dollar));

pub type PostgresStore = SqlxStore<Postgres>;

impl Dialect for Postgres {
    // Spelled out rather than left to the server's `default_transaction_isolation`:
    // READ COMMITTED takes a fresh snapshot per statement, so once the partition lock
    // below is held the rows read are the latest committed ones (REPEATABLE READ would
    // read as of the lock wait and lose the previous writer's update), and writers of
    // different partitions never conflict (SERIALIZABLE can report false conflicts
    // between them through its page-level predicate locks).
    //
    // Inside write transactions statements run on generic plans (sent with `BEGIN` in
    // one simple-query round trip; `SET LOCAL` ends with the transaction). The writes'
    // plans have one shape whatever the values (inserts, and look-ups by whole key
    // that cannot turn into scans: `sql::rows_by_key`), and planning a 64-row insert
    // for its values each time cost PostgreSQL about 1 ms per chunk, a third of its
    // work in a replay (docs/performance.md, "ninth round"). Reads outside keep the
    // connection's `force_custom_plan` (see `open`).
    const BEGIN: &'static str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
                                 SET LOCAL plan_cache_mode = force_generic_plan";
    // Writers of one partition queue here for the rest of their transaction, as SQLite's
    // BEGIN IMMEDIATE makes them; writers of different partitions take different locks
    // (a hash collision only makes two of them queue, never deadlock: a transaction
    // takes one such lock, first). The two-key form with a constant first key keeps
    // clear of single-key advisory locks, such as the one sqlx's migrator takes.
    const LOCK_PARTITION: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(1667460467, hashtext($1))");
    const SPILL_CLEAR_ALL: &'static str = "TRUNCATE spilled_contacts";
    // TRUNCATE takes this lock itself, but only once it runs; taken before the second
    // check, it keeps other partitions' spills (and reads) out until the commit, a few
    // milliseconds. A partition's other writers are kept out by LOCK_PARTITION.
    const LOCK_SPILL_TABLE: Option<&'static str> =
        Some("LOCK TABLE spilled_contacts IN ACCESS EXCLUSIVE MODE");

    fn statements() -> &'static Statements {
        &SQL
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    #[allow(private_interfaces)]
    fn write_rows<'a>(
        conn: &'a mut PgConnection,
        partition: &'a str,
        rows: &'a [Pending<'a>],
        updated_at: &'a str,
    ) -> RowsWritten<'a> {
        super::postgres_rows::write(conn, partition, rows, updated_at)
    }
}

impl SqlxStore<Postgres> {
    /// Open `postgres://…` or `postgresql://…` (the database must exist) and apply
    /// pending migrations.
    pub async fn open(url: &str, connections: Connections) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            // Shows in pg_stat_activity, next to the locks the connection holds.
            .application_name("ccmetrics")
            // The migrator's `CREATE TABLE IF NOT EXISTS` would otherwise log a NOTICE
            // on every start.
            .options([
                ("client_min_messages", "warning"),
                // Every statement planned for its own values and the table as it is.
                // sqlx prepares each statement once per connection, and after five
                // runs PostgreSQL may keep a generic plan made when the table was near
                // empty: the read before a write then scanned the whole partition per
                // chunk (a hash join), and a 2 M-event replay took 96 s instead of
                // 16 s (docs/performance.md, "eighth round"). Write transactions,
                // whose statements have one safe shape, switch to generic plans
                // (`BEGIN` above): planning a chunked insert is not cheap.
                ("plan_cache_mode", "force_custom_plan"),
            ]);
        // One connection of our own first: the pool retries a refused connection until
        // its acquire timeout and then only says that it timed out; this says why, at
        // once (refused, unknown database, authentication).
        options.connect().await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.limit(POOL_SIZE))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        // Records what it applied in `_sqlx_migrations` and holds an advisory lock while
        // migrating, so reopening is a no-op and concurrent opens are safe.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(SqlxStore::new(pool))
    }

    #[cfg(test)]
    pub(super) async fn table_columns(&self, table: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT column_name::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
    }
}
