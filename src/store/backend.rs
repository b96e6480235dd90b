//! The statements of [`super::sql`] run on any sqlx driver: one implementation of
//! apply / claim / commit / query shared by SQLite and PostgreSQL. A backend module
//! (`sqlite.rs`, `postgres.rs`) only opens its pool and describes its transactions
//! ([`Dialect`]); everything that binds parameters or reads columns is here, so the
//! two backends cannot drift apart. The one exception is how each writes snapshot
//! rows ([`Dialect::write_rows`]): SQLite row by row on the connection's handle
//! (`sqlite_rows.rs`), PostgreSQL a chunk at a time as arrays (`postgres_rows.rs`),
//! with the same merge, and held to the same results by
//! `export_is_identical_on_sqlite_and_postgres`.

use std::fmt;

use sqlx::{
    ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};

use super::sql::{self, Statements};
use crate::engine::spill::{SpillBatch, SpilledContact};

use super::{
    CheckpointWrite, Claim, ExportRaw, N_COUNTERS, PartitionMerge, Pending, RawRow, StoreError,
    StoredRow,
};
use crate::engine::Dimension;

/// What differs between backends once a pool is open.
pub trait Dialect: Database {
    /// Starts every write transaction.
    const BEGIN: &'static str;
    /// Run first in every write transaction, binding the partition, when `BEGIN` alone
    /// does not keep two writers of the same partition apart. A write reads rows and
    /// then stores absolute values, so two concurrent writers of one partition would
    /// lose one's update.
    const LOCK_PARTITION: Option<&'static str>;
    /// Empties `spilled_contacts` in one step, without visiting its rows.
    const SPILL_CLEAR_ALL: &'static str;
    /// Run before [`Self::SPILL_CLEAR_ALL`] when `BEGIN` alone does not keep other
    /// writers from adding spilled contacts between the check that there are none and
    /// the clear.
    const LOCK_SPILL_TABLE: Option<&'static str>;
    /// The shared statements in this backend's placeholder spelling.
    fn statements() -> &'static Statements;
    /// Rows changed by a statement (sqlx has no driver-neutral accessor).
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// The backend's writer of a transaction's snapshot rows (`sqlite_rows.rs`,
    /// `postgres_rows.rs`): each its own way to its database's fastest path, both
    /// merging with [`Pending::merge_into`], so the same rows are stored with the
    /// same (inserted, revised) counts.
    // `Dialect` is public only as the bound of `SqlxStore`; no caller outside the
    // crate can name a `Pending` to call this with.
    #[allow(private_interfaces)]
    fn write_rows<'a>(
        conn: &'a mut Self::Connection,
        partition: &'a str,
        rows: &'a [Pending<'a>],
        updated_at: &'a str,
    ) -> RowsWritten<'a>;
}

/// What [`Dialect::write_rows`] returns: (inserted, revised) rows.
pub type RowsWritten<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(u64, u64), StoreError>> + Send + 'a>>;

/// A snapshot store on an sqlx pool of backend `DB`.
pub struct SqlxStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// SQLite's write-ahead log checkpointed on a thread of its own
    /// ([`super::sqlite::Checkpointer`]); `None` for PostgreSQL and wherever SQLite
    /// checkpoints itself.
    pub(super) wal: Option<std::sync::Arc<super::sqlite::Checkpointer>>,
    /// Whether a connection whose write transaction failed is closed (see
    /// [`Self::write_tx`]). Not for an in-memory SQLite database: it lives in its
    /// one connection, and closing it would lose every table.
    pub(super) discard_failed: bool,
}

// By hand: a derive would require `DB: Clone + Debug`, which the driver markers are not.
impl<DB: Database> Clone for SqlxStore<DB> {
    fn clone(&self) -> Self {
        SqlxStore {
            pool: self.pool.clone(),
            wal: self.wal.clone(),
            discard_failed: self.discard_failed,
        }
    }
}

impl<DB: Database> fmt::Debug for SqlxStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxStore")
            .field("pool", &self.pool)
            .finish()
    }
}

pub(super) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// The bounds are spelled once, on this impl, rather than on every function: what a
/// backend must encode (i64, text, bytes, nullable bytes) and decode, and that its
/// connections execute queries.
impl<DB> SqlxStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Vec<u8>: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(super) fn new(pool: Pool<DB>) -> Self {
        SqlxStore {
            pool,
            wal: None,
            discard_failed: true,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `body` in one write transaction of `partition` (begun with
    /// [`Dialect::BEGIN`], the partition locked first): committed when `body`
    /// succeeds, else rolled back at once, so the write lock is let go before the error
    /// reaches the caller (dropping the transaction would only queue the rollback).
    ///
    /// A connection on which the transaction failed is closed instead of going back
    /// to the pool. Why: sqlx counts a connection's open transactions itself, and its
    /// count goes wrong when the database ended the transaction on its own. SQLite
    /// rolls a transaction back by itself on some errors (a full disk, `SQLITE_FULL`,
    /// among them): the `ROLLBACK` that follows then fails ("no transaction is
    /// active"), the count stays at 1, and every later transaction on that connection
    /// is refused ("begin_with at non-zero transaction depth"), long after the disk has
    /// room again (`tests/kafka_store_outage.rs`, the full disk). A fresh connection
    /// costs a few milliseconds, and only after a failure.
    async fn write_tx<T>(
        &self,
        partition: &str,
        body: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let result = async {
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let result = async {
                Self::lock_partition(&mut tx, partition).await?;
                body(&mut tx).await
            }
            .await;
            match result {
                Ok(v) => {
                    tx.commit().await?;
                    Ok(v)
                }
                Err(e) => {
                    if let Err(rb) = tx.rollback().await {
                        tracing::warn!(partition, error = %rb, "rollback after a failed write failed");
                    }
                    Err(e)
                }
            }
        }
        .await;
        if result.is_err() && self.discard_failed {
            conn.close_on_drop();
        }
        result
    }

    /// Apply pre-merged rows in one transaction, with the partition's checkpoint when
    /// given (written first: it is the ownership fence). Returns (inserted, revised).
    pub(super) async fn apply(
        &self,
        partition: &str,
        rows: &[Pending<'_>],
        updated_at: &str,
        checkpoint: Option<&CheckpointWrite<'_>>,
        spill: Option<&SpillBatch>,
    ) -> Result<(u64, u64), StoreError> {
        self.write_tx(partition, async |tx| {
            if let Some(cp) = checkpoint {
                Self::write_checkpoint(tx, partition, cp, updated_at).await?;
            }
            if let Some(batch) = checkpoint.and_then(|cp| cp.spill).or(spill) {
                Self::write_spill(tx, partition, batch).await?;
            }
            DB::write_rows(tx, partition, rows, updated_at).await
        })
        .await
    }

    pub(super) async fn claim(
        &self,
        partition: &str,
        owner: &str,
        updated_at: &str,
    ) -> Result<Claim, StoreError> {
        let r = sqlx::query::<DB>(&DB::statements().claim)
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
        let r = sqlx::query::<DB>(&DB::statements().select_committed)
            .bind(partition)
            .fetch_optional(&self.pool)
            .await?;
        match r {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }

    /// In a write transaction like [`Self::apply`], so it waits for (rather than
    /// interleaves with) a write of the same partition in progress.
    pub(super) async fn clear_partition(&self, partition: &str) -> Result<u64, StoreError> {
        self.write_tx(partition, async |tx| {
            let done = sqlx::query::<DB>(&DB::statements().delete_partition)
                .bind(partition)
                .execute(&mut *tx)
                .await?;
            Self::delete_spill(tx, partition).await?;
            Ok(DB::rows_affected(&done))
        })
        .await
    }

    /// Removes `partition`'s spilled contacts. When no other partition has any (a
    /// replay into a database of its own, the usual case), the table is emptied
    /// whole instead: SQLite's `DELETE` without `WHERE` and PostgreSQL's `TRUNCATE`
    /// drop the table's pages, where a `DELETE` by partition visits every row and its
    /// three index entries (3 to 8 s for the 190,000 to 450,000 rows a `replay` of 2
    /// to 4 M events leaves; docs/performance.md).
    async fn delete_spill(conn: &mut DB::Connection, partition: &str) -> Result<(), StoreError> {
        let mut alone = !Self::spill_of_others(&mut *conn, partition).await?;
        if alone && let Some(lock) = DB::LOCK_SPILL_TABLE {
            sqlx::query::<DB>(lock).execute(&mut *conn).await?;
            // Another writer may have spilled between the check and the lock.
            alone = !Self::spill_of_others(&mut *conn, partition).await?;
        }
        if alone {
            sqlx::query::<DB>(DB::SPILL_CLEAR_ALL)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query::<DB>(&DB::statements().spill_delete_partition)
                .bind(partition)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn query_each<E: From<StoreError>>(
        &self,
        window: &str,
        dimension: Dimension,
        from: Option<i64>,
        to: Option<i64>,
        mut each: impl FnMut(StoredRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query::<DB>(&DB::statements().select_export)
            .bind(window)
            .bind(dimension.as_str())
            .bind(from.unwrap_or(i64::MIN))
            .bind(to.unwrap_or(i64::MAX))
            .fetch(&self.pool);
        let mut merge = PartitionMerge::new(window, dimension);
        let read =
            |r: Result<Option<DB::Row>, sqlx::Error>| -> Result<Option<ExportRaw>, StoreError> {
                let Some(r) = r? else { return Ok(None) };
                Ok(Some(ExportRaw {
                    start: r.try_get(0)?,
                    end: r.try_get(1)?,
                    key: r.try_get(2)?,
                    row: Self::raw_row(&r, 3)?,
                }))
            };
        while let Some(raw) = read(rows.try_next().await)? {
            merge.add_to(raw, &mut each)?;
        }
        merge.finish_to(&mut each)
    }

    /// A spill batch, in the commit transaction after the fence: expiry first, then
    /// the contacts taken back, then the ones spilled (a batch holds one change per
    /// contact, so the order between the last two does not matter).
    async fn write_spill(
        conn: &mut DB::Connection,
        partition: &str,
        batch: &SpillBatch,
    ) -> Result<(), StoreError> {
        let st = DB::statements();
        if let Some(before) = batch.expire_before {
            sqlx::query::<DB>(&st.spill_expire)
                .bind(partition)
                .bind(before)
                .execute(&mut *conn)
                .await?;
        }
        // In key order, rows and deletes: each B-tree page is then visited once per
        // batch rather than once per row (the keys are hashes: any other order is a
        // random walk over the table, and with more rows than the page cache holds
        // that was a disk read and a spilled page per row).
        let mut deletes: Vec<[u8; 16]> = batch.deletes.iter().map(|k| k.to_be_bytes()).collect();
        deletes.sort_unstable();
        let mut chunks = deletes.chunks_exact(sql::SPILL_CHUNK);
        for chunk in &mut chunks {
            let mut q = sqlx::query::<DB>(&st.spill_delete_chunk).bind(partition);
            for key in chunk {
                q = q.bind(&key[..]);
            }
            q.execute(&mut *conn).await?;
        }
        for key in chunks.remainder() {
            sqlx::query::<DB>(&st.spill_delete)
                .bind(partition)
                .bind(&key[..])
                .execute(&mut *conn)
                .await?;
        }
        // Full chunks in one statement each (a round trip per row would cost more than
        // the rows), the rest one by one; a batch holds each key once, which
        // PostgreSQL's multi-row upsert requires.
        let mut puts: Vec<&SpilledContact> = batch.puts.iter().collect();
        puts.sort_unstable_by_key(|c| c.key);
        let keys: Vec<[u8; 16]> = puts.iter().map(|c| c.key.to_be_bytes()).collect();
        let mut chunks = puts.chunks_exact(sql::SPILL_CHUNK);
        let mut at = 0;
        for chunk in &mut chunks {
            let mut q = sqlx::query::<DB>(&st.spill_upsert_chunk);
            for (c, key) in chunk.iter().zip(&keys[at..]) {
                q = Self::bind_spilled(q, partition, c, key);
            }
            q.execute(&mut *conn).await?;
            at += chunk.len();
        }
        for (c, key) in chunks.remainder().iter().zip(&keys[at..]) {
            let q = sqlx::query::<DB>(&st.spill_upsert);
            Self::bind_spilled(q, partition, c, key)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    fn bind_spilled<'q>(
        q: Query<'q, DB>,
        partition: &'q str,
        c: &'q SpilledContact,
        key: &'q [u8; 16],
    ) -> Query<'q, DB> {
        q.bind(partition)
            .bind(&key[..])
            .bind(c.customer.map(|k| k.to_be_bytes().to_vec()))
            .bind(c.first_offer)
            .bind(c.last_ts)
            .bind(&c.body[..])
    }

    /// In a write transaction, so the check that no other partition has spilled
    /// contacts holds until the clear (see [`Self::delete_spill`]).
    pub(super) async fn clear_spill(&self, partition: &str) -> Result<(), StoreError> {
        self.write_tx(partition, async |tx| {
            Self::delete_spill(tx, partition).await
        })
        .await
    }

    pub(super) async fn spill_get(
        &self,
        partition: &str,
        key: u128,
        oldest: i64,
    ) -> Result<Option<SpilledContact>, StoreError> {
        sqlx::query::<DB>(&DB::statements().spill_select)
            .bind(partition)
            .bind(&key.to_be_bytes()[..])
            .bind(oldest)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Self::spilled_from(&r))
            .transpose()
    }

    pub(super) async fn spill_customer(
        &self,
        partition: &str,
        customer: u128,
        oldest: i64,
    ) -> Result<Vec<SpilledContact>, StoreError> {
        let rows = sqlx::query::<DB>(&DB::statements().spill_select_customer)
            .bind(partition)
            .bind(&customer.to_be_bytes()[..])
            .fetch_all(&self.pool)
            .await?;
        Self::spilled_above(&rows, oldest)
    }

    /// The spilled contacts with one of `keys` (`by_customer`: customer keys), in
    /// statements of [`sql::SPILL_CHUNK`] keys each.
    pub(super) async fn spill_select_many(
        &self,
        partition: &str,
        keys: &[u128],
        by_customer: bool,
        oldest: i64,
    ) -> Result<Vec<SpilledContact>, StoreError> {
        let st = DB::statements();
        let sql = if by_customer {
            &st.spill_select_customers
        } else {
            &st.spill_select_keys
        };
        let bytes: Vec<[u8; 16]> = keys.iter().map(|k| k.to_be_bytes()).collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(sql::SPILL_CHUNK) {
            let mut q = sqlx::query::<DB>(sql).bind(partition);
            // A short chunk repeats its last key: one statement shape, cached once.
            for i in 0..sql::SPILL_CHUNK {
                if let Some(k) = chunk.get(i).or(chunk.last()) {
                    q = q.bind(&k[..]);
                }
            }
            let rows = q.fetch_all(&self.pool).await?;
            out.extend(Self::spilled_above(&rows, oldest)?);
        }
        Ok(out)
    }

    /// A row of a `spill_select*` statement (`sql::SPILL_COLUMNS`).
    fn spilled_from(r: &DB::Row) -> Result<SpilledContact, StoreError> {
        let key: Vec<u8> = r.try_get(0)?;
        let customer: Option<Vec<u8>> = r.try_get(1)?;
        let body: Vec<u8> = r.try_get(4)?;
        Ok(SpilledContact {
            key: key_from(&key)?,
            customer: customer.as_deref().map(key_from).transpose()?,
            first_offer: r.try_get(2)?,
            last_ts: r.try_get(3)?,
            body: body.into(),
        })
    }

    /// The rows with `last_ts >= oldest` (the look-ups without that bound in the SQL).
    fn spilled_above(rows: &[DB::Row], oldest: i64) -> Result<Vec<SpilledContact>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let c = Self::spilled_from(r)?;
            if c.last_ts >= oldest {
                out.push(c);
            }
        }
        Ok(out)
    }

    pub(super) async fn spill_scan(
        &self,
        partition: &str,
        mut f: impl FnMut(u128, Option<u128>, i64),
    ) -> Result<u64, StoreError> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query::<DB>(&DB::statements().spill_scan)
            .bind(partition)
            .fetch(&self.pool);
        let mut n = 0;
        while let Some(r) = rows.try_next().await? {
            let key: Vec<u8> = r.try_get(0)?;
            let customer: Option<Vec<u8>> = r.try_get(1)?;
            f(
                key_from(&key)?,
                customer.as_deref().map(key_from).transpose()?,
                r.try_get(2)?,
            );
            n += 1;
        }
        Ok(n)
    }

    /// Migrations recorded as applied.
    #[cfg(test)]
    pub(super) async fn applied_migrations(&self) -> Result<i64, sqlx::Error> {
        sqlx::query::<DB>("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }

    /// Whether a partition other than `partition` has spilled contacts.
    async fn spill_of_others(
        conn: &mut DB::Connection,
        partition: &str,
    ) -> Result<bool, StoreError> {
        let found: i64 = sqlx::query::<DB>(&DB::statements().spill_others)
            .bind(partition)
            .bind(partition)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        Ok(found != 0)
    }

    async fn lock_partition(conn: &mut DB::Connection, partition: &str) -> Result<(), StoreError> {
        if let Some(lock) = DB::LOCK_PARTITION {
            sqlx::query::<DB>(lock)
                .bind(partition)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// The fenced checkpoint write: fails with [`StoreError::Fenced`] when another
    /// owner has claimed the partition since `cp.epoch`.
    async fn write_checkpoint(
        conn: &mut DB::Connection,
        partition: &str,
        cp: &CheckpointWrite<'_>,
        updated_at: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query::<DB>(&DB::statements().write_checkpoint)
            .bind(cp.next_offset)
            .bind(cp.seq)
            .bind(cp.state)
            .bind(updated_at)
            .bind(partition)
            .bind(cp.epoch)
            .execute(&mut *conn)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::Fenced {
                partition: partition.to_owned(),
                epoch: cp.epoch,
            });
        }
        Ok(())
    }

    /// Revision, counters and histograms starting at column `first` (the order of
    /// `select_export` and PostgreSQL's `select_rows`).
    pub(super) fn raw_row(r: &DB::Row, first: usize) -> Result<RawRow, sqlx::Error> {
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
}

/// A 128-bit key stored as 16 big-endian bytes.
fn key_from(bytes: &[u8]) -> Result<u128, StoreError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: format!("spilled contact key of {} bytes (expected 16)", bytes.len()),
    })?;
    Ok(u128::from_be_bytes(arr))
}
