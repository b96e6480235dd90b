//! PostgreSQL's writer of snapshot rows ([`Dialect::write_rows`]): rows go in
//! [`CHUNK`] at a time, each chunk first tried as new rows in one statement with one
//! array per column, and only the rows found stored are then read by key, merged and
//! upserted. SQLite's writer (`sqlite_rows.rs`) works row by row on SQLite's handle
//! instead; both merge with [`Pending::merge_into`], and
//! `export_is_identical_on_sqlite_and_postgres` holds them to the same results.

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row};

use super::backend::{Query, RowsWritten};
use super::postgres::PostgresStore;
use super::sql::{CHUNK, PgRowStatements};
use super::{N_COUNTERS, N_HISTS, NewRow, Pending, RawRow, StoreError};

#[cfg(doc)]
use super::backend::Dialect;

/// The statements, in their one spelling.
static STATEMENTS: LazyLock<PgRowStatements> = LazyLock::new(PgRowStatements::new);

/// [`Dialect::write_rows`] for PostgreSQL: (inserted, revised) rows.
pub(super) fn write<'a>(
    conn: &'a mut PgConnection,
    partition: &'a str,
    rows: &'a [Pending<'a>],
    updated_at: &'a str,
) -> RowsWritten<'a> {
    Box::pin(apply_rows(conn, partition, rows, updated_at))
}

/// Write each chunk of rows: as new rows first where the chunk qualifies
/// ([`first_write`]), otherwise by reading the current values by primary key and
/// upserting their sums. The statements are prepared once per connection (sqlx
/// caches them by SQL text, and their shapes are fixed).
///
/// The next chunk's first write is made (rows merged, histograms encoded, values
/// bound) while the current chunk's statements run on the server (the two used to
/// take turns): a replay's final write, most of its rows, 0.57 → 0.52 s per 1 M
/// events when SQLite took this path (docs/performance.md, "thirteenth round").
async fn apply_rows(
    conn: &mut PgConnection,
    partition: &str,
    rows: &[Pending<'_>],
    updated_at: &str,
) -> Result<(u64, u64), StoreError> {
    let (mut inserted, mut revised) = (0, 0);
    // The window of the last chunk with an existing row: the rows are sorted by
    // window, and a window with an existing row (a correction) usually has more,
    // so its next chunks are read first rather than tried first.
    let mut revised_window = None;
    let mut chunks = rows.chunks(CHUNK).peekable();
    // The current chunk's first write, bound while the previous one was written.
    let mut made = None;
    while let Some(chunk) = chunks.next() {
        // Made ahead only where they will be tried (a guess: the current chunk may
        // yet find a row and mark the next chunk's window as revised).
        let next = chunks
            .peek()
            .copied()
            .filter(|c| revised_window != c.first().map(|p| (p.window, p.start)));
        let (written, next_made) = tokio::join!(
            apply_chunk(
                &mut *conn,
                partition,
                chunk,
                made.take(),
                &mut revised_window,
                updated_at
            ),
            async { next.map(|c| first_write(partition, c, updated_at)) }
        );
        let (i, r) = written?;
        inserted += i;
        revised += r;
        made = next_made;
    }
    Ok((inserted, revised))
}

/// One chunk of [`apply_rows`]: `made` is its first write when it was made
/// ahead (`Some(None)`: the chunk cannot be written as new rows).
async fn apply_chunk<'q>(
    conn: &mut PgConnection,
    partition: &'q str,
    chunk: &'q [Pending<'q>],
    made: Option<Option<Query<'q, Postgres>>>,
    revised_window: &mut Option<(&'q str, i64)>,
    updated_at: &'q str,
) -> Result<(u64, u64), StoreError> {
    let (mut inserted, mut revised) = (0, 0);
    let window = chunk.first().map(|p| (p.window, p.start));
    let first = match *revised_window != window {
        true => made.unwrap_or_else(|| first_write(partition, chunk, updated_at)),
        false => None,
    };
    // The stored values of the chunk's rows, and whether the rows without one
    // are stored already (written as new by the first write).
    let (existing, new_rows_written) = match first {
        Some(q) => {
            let inserted = q.fetch_all(&mut *conn).await?;
            (
                stored_besides(conn, partition, chunk, &inserted).await?,
                true,
            )
        }
        None => {
            let rows: Vec<&Pending<'_>> = chunk.iter().collect();
            (fetch_existing(conn, partition, &rows).await?, false)
        }
    };
    let mut writes = Vec::with_capacity(chunk.len());
    for (p, old) in chunk.iter().zip(existing) {
        match old {
            Some(old) => {
                revised += 1;
                *revised_window = window;
                writes.push((p, p.merge_into(partition, Some(old))?));
            }
            None => {
                inserted += 1;
                if !new_rows_written {
                    writes.push((p, p.merge_into(partition, None)?));
                }
            }
        }
    }
    upsert_rows(conn, partition, writes, updated_at).await?;
    Ok((inserted, revised))
}

/// Upsert complete row values, in one statement whatever their number
/// ([`PgRowStatements::upsert_arrays`]).
async fn upsert_rows<'q>(
    conn: &mut PgConnection,
    partition: &'q str,
    writes: Vec<(&'q Pending<'q>, NewRow)>,
    updated_at: &'q str,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let q = sqlx::query::<Postgres>(&STATEMENTS.upsert_arrays);
    bind_rows(q, partition, writes, updated_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A full chunk's rows as new rows, or none when the chunk cannot be written
/// first: it is short (a batch's tail), or a row's delta is not valid as a whole
/// row (a retraction, which only a stored row can absorb).
fn fresh_rows(partition: &str, chunk: &[Pending<'_>]) -> Option<Vec<NewRow>> {
    if chunk.len() != CHUNK {
        return None;
    }
    chunk
        .iter()
        .map(|p| p.merge_into(partition, None).ok())
        .collect()
}

/// A full chunk's first write, before it is known which of its rows exist: one
/// statement inserts the rows that do not exist and returns the keys of those it
/// inserted ([`PgRowStatements::insert_new_chunk`]); only the others are then read,
/// merged and upserted. In a replay, and at a window's first flush, nearly every
/// row is new, and reading each chunk before writing it was most of the snapshot
/// writer's work on PostgreSQL (docs/performance.md, "ninth round"); reading the
/// chunk's keys in the same statement still cost the server a look-up per row,
/// most of the time for nothing ("thirty-third round"). A plain insert that
/// fails on an existing row would abort PostgreSQL's whole transaction (a
/// savepoint per chunk would be a round trip of its own). None when the chunk
/// cannot be written first (see [`fresh_rows`]).
fn first_write<'q>(
    partition: &'q str,
    chunk: &'q [Pending<'q>],
    updated_at: &'q str,
) -> Option<Query<'q, Postgres>> {
    let fresh = fresh_rows(partition, chunk)?;
    let rows = chunk.iter().zip(fresh).collect();
    let q = sqlx::query::<Postgres>(&STATEMENTS.insert_new_chunk);
    Some(bind_rows(q, partition, rows, updated_at))
}

/// After a chunk's first write, which returned the keys of the rows it inserted:
/// the stored values of the chunk's other rows (stored already, so it left them
/// as they were), read by key; none for the rows it inserted. In chunk order.
async fn stored_besides(
    conn: &mut PgConnection,
    partition: &str,
    chunk: &[Pending<'_>],
    inserted: &[PgRow],
) -> Result<Vec<Option<RawRow>>, StoreError> {
    let position = positions(chunk.iter());
    let mut new = vec![false; chunk.len()];
    for r in inserted {
        if let Some(&i) = position.get(&key_of(r)?) {
            new[i] = true;
        }
    }
    let mut out: Vec<Option<RawRow>> = chunk.iter().map(|_| None).collect();
    let stored: Vec<&Pending<'_>> = chunk
        .iter()
        .zip(&new)
        .filter(|(_, new)| !**new)
        .map(|(p, _)| p)
        .collect();
    if stored.is_empty() {
        return Ok(out);
    }
    let mut found = fetch_existing(conn, partition, &stored).await?.into_iter();
    for (slot, _) in out.iter_mut().zip(&new).filter(|(_, new)| !**new) {
        *slot = found.next().flatten();
    }
    Ok(out)
}

/// The stored rows for `rows` (1..=CHUNK distinct rows), in their order.
async fn fetch_existing(
    conn: &mut PgConnection,
    partition: &str,
    rows: &[&Pending<'_>],
) -> Result<Vec<Option<RawRow>>, StoreError> {
    let mut q = sqlx::query::<Postgres>(&STATEMENTS.select_rows).bind(partition);
    for i in 0..CHUNK {
        // A short list repeats its last key to fill the fixed statement; the
        // repeats find the same row, which lands in the same slot below.
        let p = rows[i.min(rows.len().saturating_sub(1))];
        q = q
            .bind(p.window)
            .bind(p.start)
            .bind(p.dimension.as_str())
            .bind(p.key.as_str());
    }
    let found = q.fetch_all(&mut *conn).await?;
    let position = positions(rows.iter().copied());
    let mut out: Vec<Option<RawRow>> = rows.iter().map(|_| None).collect();
    for r in &found {
        if let Some(&i) = position.get(&key_of(r)?) {
            out[i] = Some(PostgresStore::raw_row(r, 4)?);
        }
    }
    Ok(out)
}

/// Each row's position by its key (window, window_start, dimension, key).
fn positions<'p>(
    rows: impl Iterator<Item = &'p Pending<'p>>,
) -> HashMap<(&'p str, i64, &'p str, &'p str), usize> {
    rows.enumerate()
        .map(|(i, p)| ((p.window, p.start, p.dimension.as_str(), p.key.as_str()), i))
        .collect()
}

/// The key columns a statement returns first: window, window_start, dimension,
/// key.
fn key_of(r: &PgRow) -> Result<(&str, i64, &str, &str), StoreError> {
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
}

/// Binds rows to [`PgRowStatements::insert_new_chunk`] or
/// [`PgRowStatements::upsert_arrays`]: one array per column
/// ([`super::sql::array_type`]), the rows' values column by column.
fn bind_rows<'q>(
    q: Query<'q, Postgres>,
    partition: &'q str,
    rows: Vec<(&'q Pending<'q>, NewRow)>,
    updated_at: &'q str,
) -> Query<'q, Postgres> {
    let n = rows.len();
    let mut counters: Vec<Vec<i64>> = (0..N_COUNTERS).map(|_| Vec::with_capacity(n)).collect();
    let mut hists: Vec<Vec<Option<Vec<u8>>>> =
        (0..N_HISTS).map(|_| Vec::with_capacity(n)).collect();
    let mut revisions = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for (p, row) in rows {
        for (column, c) in counters.iter_mut().zip(row.counters) {
            column.push(c);
        }
        for (column, h) in hists.iter_mut().zip(row.hists) {
            column.push(h);
        }
        revisions.push(row.revision);
        keys.push(p);
    }
    let column = |f: fn(&Pending<'q>) -> &'q str| keys.iter().map(|p| f(p)).collect::<Vec<_>>();
    let mut q = q
        .bind(column(|p| p.window))
        .bind(keys.iter().map(|p| p.start).collect::<Vec<i64>>())
        .bind(keys.iter().map(|p| p.end).collect::<Vec<i64>>())
        .bind(column(|p| p.dimension.as_str()))
        .bind(column(|p| p.delta.key.as_str()))
        .bind(partition);
    for c in counters {
        q = q.bind(c);
    }
    for h in hists {
        q = q.bind(h);
    }
    q.bind(revisions).bind(updated_at)
}
