//! SQLite's own writer of snapshot rows, and its reader of exports: the statements of
//! [`super::sql`] run on a connection's SQLite handle instead of through sqlx (the
//! reader, `query_each_on_handle`, is at the end).
//!
//! Why: sqlx hands every statement to a worker thread of its own and copies every
//! bound value twice on the way (its arguments take owned copies of borrowed text, and
//! binds them as `SQLITE_TRANSIENT`, which SQLite copies again). For a snapshot row of
//! 32 values that was about half of what a row cost, SQLite's own insert the other
//! half (docs/performance.md, "thirty-first round"). Here the handle is locked out of
//! sqlx's worker for the write (`lock_handle`), and the task calls SQLite directly
//! through rusqlite's wrapper of the same handle: one prepared statement per shape,
//! one row per step, the partition and `updated_at` bound once per statement (SQLite
//! keeps bindings across steps). The transaction is sqlx's, opened by the caller: the
//! rows commit or roll back with the checkpoint and the spill written before them.
//!
//! What is stored is exactly what the shared path stores ([`super::backend`], which
//! PostgreSQL keeps using): the same merge ([`Pending::merge_into`]), the same values,
//! the same (inserted, revised) counts. Per row: a row of a window with no stored row
//! so far is tried as new (`insert_row_if_new`, which changes nothing when the key is
//! stored); otherwise, or when that found the row stored, the row is read by its key,
//! merged and upserted. Once a window has shown a stored row (a correction), its next
//! rows are read first, as the shared path does per chunk.

use sqlx::{Sqlite, SqliteConnection};

use super::backend::{Dialect, SqlxStore};
use super::sql::Statements;
use super::{
    ExportRaw, N_COUNTERS, NewRow, PartitionMerge, Pending, RawRow, StoreError, StoredRow,
};
use crate::engine::Dimension;

/// Write `rows` (sorted by window, start, dimension, key; one per key) in the open
/// transaction of `conn`. Returns (inserted, revised) like the shared path.
pub(super) async fn write(
    conn: &mut SqliteConnection,
    statements: &Statements,
    partition: &str,
    rows: &[Pending<'_>],
    updated_at: &str,
) -> Result<(u64, u64), StoreError> {
    if rows.is_empty() {
        return Ok((0, 0));
    }
    on_handle(conn, |db| {
        write_locked(db, statements, partition, rows, updated_at)
    })
    .await
}

/// Runs `f` on `conn`'s SQLite handle, locked away from sqlx's worker thread
/// meanwhile, on this thread ([`blocking`]).
async fn on_handle<R, E: From<StoreError>>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, E>,
) -> Result<R, E> {
    let mut handle = conn.lock_handle().await.map_err(StoreError::from)?;
    let raw = handle.as_raw_handle();
    blocking(|| {
        // SAFETY: `raw` is the live handle of `conn`, which `handle` keeps locked away
        // from sqlx's worker thread until it is dropped, after `db` (a local of this
        // closure). `from_handle` never closes the handle; dropping `db` finalizes the
        // statements it prepared.
        let db =
            unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }.map_err(StoreError::from)?;
        f(&db)
    })
}

/// Runs `f`, which blocks its thread on SQLite for a while, where it keeps the
/// runtime's other tasks moving: on a multi-threaded runtime (the daemon's, `replay`'s)
/// through `block_in_place`, which hands this worker's queue to another thread; on a
/// current-thread runtime (tests) there is no other thread to hand it to.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Rows from which a batch's new rows are merged and encoded on a helper thread,
/// ahead of the writer, while SQLite inserts the ones before (a replay's final write,
/// where the other core is otherwise idle). Fewer rows do not pay for the thread.
pub(super) const MERGE_AHEAD_FROM: usize = 1024;
/// Rows per hand-over from the helper, and hand-overs it may be ahead by.
const AHEAD_CHUNK: usize = 256;
const AHEAD_CHUNKS: usize = 4;

fn write_locked(
    db: &rusqlite::Connection,
    statements: &Statements,
    partition: &str,
    rows: &[Pending<'_>],
    updated_at: &str,
) -> Result<(u64, u64), StoreError> {
    let inline = |p: &Pending<'_>, wanted: bool| {
        // Not valid as a whole row (a retraction): only a stored row can take it.
        wanted.then(|| p.merge_into(partition, None).ok()).flatten()
    };
    if rows.len() < MERGE_AHEAD_FROM {
        return write_rows(db, statements, partition, rows, updated_at, inline);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Option<NewRow>>>(AHEAD_CHUNKS);
        let helper = std::thread::Builder::new()
            .name("sqlite-rows".into())
            .spawn_scoped(scope, move || {
                for chunk in rows.chunks(AHEAD_CHUNK) {
                    let fresh = chunk.iter().map(|p| p.merge_into(partition, None).ok());
                    // The writer stopped (an error): nothing more is wanted.
                    if tx.send(fresh.collect()).is_err() {
                        return;
                    }
                }
            });
        if helper.is_err() {
            // No thread to be had: the writer merges its rows itself.
            return write_rows(db, statements, partition, rows, updated_at, inline);
        }
        let mut ahead = rx.into_iter().flatten();
        // Taken for every row, wanted or not, to stay in step with `rows`.
        let fresh = |_: &Pending<'_>, wanted: bool| ahead.next().flatten().filter(|_| wanted);
        write_rows(db, statements, partition, rows, updated_at, fresh)
    })
}

/// The write itself: `fresh(p, wanted)` is called once per row in order and gives
/// the row as a new row (`merge_into` of nothing) when `wanted` and valid as one.
fn write_rows(
    db: &rusqlite::Connection,
    statements: &Statements,
    partition: &str,
    rows: &[Pending<'_>],
    updated_at: &str,
    mut fresh: impl FnMut(&Pending<'_>, bool) -> Option<NewRow>,
) -> Result<(u64, u64), StoreError> {
    let mut insert = RowStatement::new(db, &statements.insert_row_if_new, partition, updated_at)?;
    let mut upsert = RowStatement::new(db, &statements.upsert_row, partition, updated_at)?;
    let mut select = db.prepare(&statements.select_row)?;
    select.raw_bind_parameter(5, partition)?;
    let (mut inserted, mut revised) = (0, 0);
    // The window of the last row found stored: its next rows are read first.
    let mut revised_window = None;
    for p in rows {
        let window = Some((p.window, p.start));
        if let Some(new) = fresh(p, revised_window != window)
            && insert.write(p, &new)? == 1
        {
            inserted += 1;
            continue;
        }
        let old = read(&mut select, p)?;
        match old {
            Some(_) => {
                revised += 1;
                revised_window = window;
            }
            None => inserted += 1,
        }
        let new = p.merge_into(partition, old)?;
        upsert.write(p, &new)?;
    }
    Ok((inserted, revised))
}

/// A prepared one-row statement with [`super::sql::UPSERT_BINDS`] parameters, the
/// partition's and `updated_at`'s bound once.
struct RowStatement<'c> {
    st: rusqlite::Statement<'c>,
}

/// Parameter positions (1-based) in the order of `insert_values`: window,
/// window_start, window_end, dimension, key, partition, counters, histograms,
/// revision, updated_at.
const PARTITION: usize = 6;
const COUNTERS: usize = 7;
const HISTS: usize = COUNTERS + N_COUNTERS;
const REVISION: usize = HISTS + super::N_HISTS;
const UPDATED_AT: usize = REVISION + 1;
const _: () = assert!(UPDATED_AT == super::sql::UPSERT_BINDS);

impl<'c> RowStatement<'c> {
    fn new(
        db: &'c rusqlite::Connection,
        sql: &str,
        partition: &str,
        updated_at: &str,
    ) -> rusqlite::Result<Self> {
        let mut st = db.prepare(sql)?;
        st.raw_bind_parameter(PARTITION, partition)?;
        st.raw_bind_parameter(UPDATED_AT, updated_at)?;
        Ok(RowStatement { st })
    }

    /// Runs the statement for one row: the rows it changed (0 or 1).
    fn write(&mut self, p: &Pending<'_>, row: &NewRow) -> rusqlite::Result<usize> {
        let st = &mut self.st;
        st.raw_bind_parameter(1, p.window)?;
        st.raw_bind_parameter(2, p.start)?;
        st.raw_bind_parameter(3, p.end)?;
        st.raw_bind_parameter(4, p.dimension.as_str())?;
        st.raw_bind_parameter(5, p.key.as_str())?;
        for (i, c) in row.counters.iter().enumerate() {
            st.raw_bind_parameter(COUNTERS + i, c)?;
        }
        for (i, h) in row.hists.iter().enumerate() {
            st.raw_bind_parameter(HISTS + i, h.as_deref())?;
        }
        st.raw_bind_parameter(REVISION, row.revision)?;
        st.raw_execute()
    }
}

/// The stored values of `p`'s row (`select_row`, its partition bound), if any.
fn read(select: &mut rusqlite::Statement<'_>, p: &Pending<'_>) -> rusqlite::Result<Option<RawRow>> {
    select.raw_bind_parameter(1, p.window)?;
    select.raw_bind_parameter(2, p.start)?;
    select.raw_bind_parameter(3, p.dimension.as_str())?;
    select.raw_bind_parameter(4, p.key.as_str())?;
    let mut found = select.raw_query();
    match found.next()? {
        Some(r) => raw_row(r, 0).map(Some),
        None => Ok(None),
    }
}

/// Revision, counters and histograms starting at column `first` (the order of
/// `select_row` and `select_export`).
fn raw_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RawRow> {
    let mut counters = [0; N_COUNTERS];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = r.get(first + 1 + i)?;
    }
    let h = first + 1 + N_COUNTERS;
    Ok(RawRow {
        revision: r.get(first)?,
        counters,
        hists: [r.get(h)?, r.get(h + 1)?, r.get(h + 2)?],
    })
}

impl SqlxStore<Sqlite> {
    /// [`super::Store::query_each`] on SQLite: `select_export` stepped on a pooled
    /// connection's handle, each row read where SQLite holds it. Through sqlx, every
    /// row was copied into a row of its own on sqlx's worker thread and sent over a
    /// channel to this one, and that thread took over a third of an export's samples
    /// (docs/performance.md, "thirty-second round"). The rows and their merge are the
    /// shared path's ([`PartitionMerge`]).
    pub(super) async fn query_each_on_handle<E: From<StoreError>>(
        &self,
        window: &str,
        dimension: Dimension,
        from: Option<i64>,
        to: Option<i64>,
        mut each: impl FnMut(StoredRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        on_handle(&mut conn, |db| {
            let mut st = db
                .prepare(&<Sqlite as Dialect>::statements().select_export)
                .map_err(StoreError::from)?;
            let bind = |st: &mut rusqlite::Statement<'_>| -> rusqlite::Result<()> {
                st.raw_bind_parameter(1, window)?;
                st.raw_bind_parameter(2, dimension.as_str())?;
                st.raw_bind_parameter(3, from.unwrap_or(i64::MIN))?;
                st.raw_bind_parameter(4, to.unwrap_or(i64::MAX))
            };
            bind(&mut st).map_err(StoreError::from)?;
            let mut merge = PartitionMerge::new(window, dimension);
            let mut rows = st.raw_query();
            while let Some(r) = rows.next().map_err(StoreError::from)? {
                let raw = export_raw(r).map_err(StoreError::from)?;
                merge.add_to(raw, &mut each)?;
            }
            merge.finish_to(&mut each)
        })
        .await
    }
}

/// One `select_export` row as read: window start, end, key, then the values.
fn export_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRaw> {
    Ok(ExportRaw {
        start: r.get(0)?,
        end: r.get(1)?,
        key: r.get(2)?,
        row: raw_row(r, 3)?,
    })
}
