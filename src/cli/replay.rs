use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use ccmetrics::config::{REPLAY_SPILL_ABOVE, SpillAbove};
use ccmetrics::engine::{EngineConfig, SnapshotDelta, Stats};
use ccmetrics::pipeline::Pipeline;
use ccmetrics::source::ahead::{Ahead, Item};
use ccmetrics::store::spill_log::LogSpill;
use ccmetrics::store::{Connections, Store};
use indicatif::{ProgressBar, ProgressStyle};

use super::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// JSONL input (plain or .gz); repeat for several files, read in order as one stream.
    #[arg(long = "input", short = 'i', value_name = "PATH", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Snapshot partition this replay owns. Its previous rows are replaced, so running the
    /// same replay twice gives the same snapshots.
    #[arg(long, default_value = "replay")]
    pub partition: String,
    /// Flush closed windows to the store every N messages, so memory holds only open
    /// windows however long the input is. Smaller values write corrections as separate
    /// revisions, as the daemon would. A flush point with no message after it is left
    /// to the final write, which flushes every window.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_every: u64,
    /// Copy rejected messages (with their reason) to this JSONL file.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,
    /// Judge `future` events (more than `[windows] max_clock_skew` ahead) against this
    /// instant (RFC 3339) instead of the wall clock, so a replay of recorded data gives
    /// the same result whenever it runs.
    #[arg(long, value_name = "RFC3339", value_parser = parse_now)]
    pub now: Option<i64>,
    /// With `[windows] spill = true`: where the scratch files that hold the spilled
    /// contacts while the replay runs go (a directory of their own in DIR, removed when
    /// it ends). Default: beside the SQLite store, or the system's temporary directory
    /// with PostgreSQL.
    /// It needs room for the packed contacts of the correction horizon and their
    /// indexes (~450 bytes a contact: 100 MB at most for 3 M events of a 10,000-agent
    /// centre); a `/tmp` kept in RAM (tmpfs) would hold them in memory again.
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// With `[windows] spill` off: start spilling closed contacts into the scratch
    /// files above (as `spill = true` does from the first event) at the first flush
    /// where the replay holds more than CONTACTS contacts, so a back-fill longer than
    /// memory allows keeps going instead of growing with the correction horizon's
    /// week. `never` keeps every contact of the horizon in memory. The figures are
    /// the same either way; only memory, time and scratch disk differ. Default:
    /// `[windows] spill_above`, or 2,000,000 when unset: about 1.3 GB of held
    /// contacts (~660 bytes each, docs/performance.md, "fortieth round"), which a
    /// 10,000-agent centre at 120,000 contacts an hour reaches after about 17 hours
    /// of events, and a 500-agent one never within the week.
    #[arg(long, value_name = "CONTACTS|never")]
    pub spill_above: Option<SpillAbove>,
}

/// Deltas per part of `replay`'s last write (whole windows, so a part may hold more):
/// large enough that a part's transaction and the row writer's helper thread pay off
/// (`store::sqlite_rows`), small enough that the first part reaches the writer soon.
const FINAL_PART_ROWS: usize = 8192;

fn parse_now(s: &str) -> Result<i64, String> {
    ccmetrics::event::decode::parse_rfc3339(s)
        .ok_or_else(|| format!("{s:?} is not an RFC 3339 time with offset"))
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    for p in &a.inputs {
        anyhow::ensure!(p.exists(), "input {} does not exist", p.display());
    }
    // One connection: the writer task is the store's only user, one transaction at a
    // time (see `Connections::Single`).
    let store = Store::open_with(&cfg.store.url, Connections::Single)
        .await
        .with_context(|| {
            format!(
                "opening store {}",
                ccmetrics::config::redact_url(&cfg.store.url)
            )
        })?;
    let cleared = store
        .clear_partition(&a.partition)
        .await
        .context("clearing the replay partition")?;
    if cleared > 0 {
        tracing::info!(partition = %a.partition, rows = cleared, "replacing earlier snapshots of this partition");
    }
    let started = Instant::now();
    let engine_cfg = EngineConfig {
        live: false,
        ..EngineConfig::from_config(&cfg)
    };
    let mut pipe = Pipeline::new(engine_cfg, cfg.decoder(), a.partition.clone());
    pipe.set_now(a.now);
    // Settled contacts leave memory as in `serve`, so a replay of months holds about
    // `spill_after` of contacts in memory, not the correction horizon's. Not into the
    // store, as `serve`'s do (beside its checkpoints, which a replay does not have),
    // nor into a database at all: into append-only files of this run, which cost a
    // fraction of a B-tree's random-key inserts (`store::spill_log`; docs/performance.md,
    // "twenty-fifth round").
    //
    // With the spill off, `[windows] spill_above` (or `--spill-above`) turns it on
    // mid-replay once memory holds more contacts than that: spilling costs a long
    // replay a sixth to two fifths more time (docs/performance.md, "fortieth
    // round"), which a short one need not pay, but a back-fill of weeks must not grow
    // with the horizon's week of contacts until it runs out of memory. The scratch
    // directory is made up front all the same, so that one that cannot be made is
    // an error before any event is read, not after hours of them.
    let spill_above = cfg.windows.spill_limit(a.spill_above, REPLAY_SPILL_ABOVE);
    if a.spill_dir.is_some() && !cfg.windows.spill && spill_above.is_none() {
        tracing::warn!(
            "--spill-dir is not used: [windows] spill is off and the spill limit is never"
        );
    }
    let scratch = if cfg.windows.spill || spill_above.is_some() {
        Some(spill_scratch_dir(a.spill_dir.as_deref(), &cfg.store.url)?)
    } else {
        None
    };
    if let Some(dir) = scratch.as_ref().filter(|_| cfg.windows.spill) {
        pipe.engine.set_spill(Box::new(LogSpill::new(dir.path())));
    }
    if let Some(path) = &a.dead_letter {
        let f = std::fs::File::create(path)
            .with_context(|| format!("creating dead-letter file {}", path.display()))?;
        pipe.set_dead_letters(Box::new(ccmetrics::pipeline::JsonlDeadLetters(
            std::io::BufWriter::new(f),
        )));
    }
    // Snapshot writes run on a writer task while the engine goes on: one batch in
    // the channel and one being written at most, applied in order (deltas add up,
    // but the order keeps revisions identical to an inline write).
    let (write_tx, mut write_rx) = tokio::sync::mpsc::channel::<Vec<SnapshotDelta>>(1);
    let writer = {
        let store = store.clone();
        let partition = a.partition.clone();
        tokio::spawn(async move {
            let mut rows = 0u64;
            while let Some(deltas) = write_rx.recv().await {
                rows += deltas.len() as u64;
                store
                    .apply_deltas_and_spill(&partition, deltas, None)
                    .await?;
            }
            Ok::<u64, ccmetrics::store::StoreError>(rows)
        })
    };
    // A failed write ends the writer; its error is reported once the stream stops.
    let send = |w: Vec<SnapshotDelta>| {
        let tx = write_tx.clone();
        async move { tx.send(w).await.is_ok() }
    };
    // A spill whose files failed gave answers that cannot be trusted since: the
    // replay stops before writing anything derived from them.
    let spill_error = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!(
            "the contact spill's files in {} failed; the replay stopped (its \
             partition holds what was written before; run it again)",
            scratch
                .as_ref()
                .map_or_else(String::new, |d| d.path().display().to_string())
        ))
    };
    // A failed spill, or a contact read back damaged: nothing derived since may be
    // stored.
    let spill_failed = |pipe: &mut Pipeline| -> anyhow::Result<()> {
        pipe.engine
            .spill_trouble()
            .map_or(Ok(()), |e| Err(spill_error(e)))
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {human_pos} events ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    // Files are read and decoded ahead on a second thread (see `source::ahead`).
    let mut n: u64 = 0;
    let mut spilled_peak = 0;
    let mut spilling = cfg.windows.spill;
    let mut ahead = Ahead::spawn(a.inputs.clone(), cfg.decoder()).context("starting the reader")?;
    // A flush point is acted on when an event follows it. At the end of the input
    // `finish` flushes every window anyway: a flush just before it (an input whose
    // length is a multiple of `--flush-every`) wrote rows that the final write then
    // read back and revised. 1 M events: 0.93 of the time (docs/performance.md,
    // "thirtieth round").
    let mut flush_due = false;
    'input: while let Some(item) = ahead.next() {
        let batch = match item.context("reading input")? {
            Item::File(path) => {
                bar.set_message(path.display().to_string());
                continue;
            }
            Item::Batch(b) => b,
        };
        // Record `next` of the batch is applied next; events are applied where they
        // lie in the batch, not moved out of it.
        let mut next = 0;
        let len = batch.with_dependent(|_, decoded| decoded.len());
        loop {
            if flush_due && next < len {
                flush_due = false;
                bar.set_position(n);
                let deltas = pipe.engine.flush();
                spilled_peak = spilled_peak.max(pipe.engine.contacts_spilled());
                tracing::debug!(
                    events = n,
                    deltas = deltas.len(),
                    contacts_held = pipe.engine.open_contacts(),
                    contacts_spilled = pipe.engine.contacts_spilled(),
                    "flushed"
                );
                spill_failed(&mut pipe)?;
                if let (Some(limit), Some(dir)) = (spill_above, scratch.as_ref())
                    && !spilling
                    && pipe.engine.open_contacts() > limit
                {
                    tracing::info!(
                        events = n,
                        contacts_held = pipe.engine.open_contacts(),
                        limit,
                        dir = %dir.path().display(),
                        "more contacts held than the spill limit (--spill-above, [windows] spill_above): closed contacts go to scratch files from now on"
                    );
                    pipe.engine.set_spill(Box::new(LogSpill::new(dir.path())));
                    spilling = true;
                }
                if !send(deltas).await {
                    break 'input;
                }
            }
            // Apply records up to the next flush point (or the batch's end); the flush
            // itself is async, so it runs outside the borrow of the batch.
            let (applied, more) = batch.with_dependent(|records, decoded| {
                let mut applied = 0;
                while let (Some(d), Some(keys)) = (decoded.get(next), decoded.keys.get(next)) {
                    // The next events' contacts are fetched into cache meanwhile.
                    pipe.engine
                        .look_ahead(|ahead| decoded.keys.get(next + ahead));
                    pipe.ingest_decoded(records.record(next), d, keys, None, None);
                    next += 1;
                    applied += 1;
                    if (n + applied).is_multiple_of(a.flush_every) {
                        break;
                    }
                }
                (applied, next < decoded.len())
            });
            n += applied;
            if applied > 0 && n.is_multiple_of(a.flush_every) {
                flush_due = true;
            }
            if !more {
                break;
            }
        }
        ahead.recycle(batch);
    }
    bar.set_position(n);
    tracing::debug!(events = n, "end of input: flushing every window");
    // The engine lets go of its contacts before the last (largest) write, and hands
    // its windows out in parts: the writer writes one part while the engine takes the
    // next (docs/performance.md, "thirty-third round").
    let mut deltas = 0;
    let mut parts = 0;
    // A spill that failed in the last derivations stops the replay before any of
    // their rows is written.
    let finish = pipe
        .engine
        .finish_in_parts(FINAL_PART_ROWS)
        .map_err(spill_error)?;
    for part in finish {
        deltas += part.len();
        parts += 1;
        if !send(part).await {
            break;
        }
    }
    tracing::debug!(
        events = n,
        deltas,
        parts,
        "end of input: every window flushed, contacts released"
    );
    drop(write_tx);
    let rows = writer
        .await
        .context("the snapshot writer task failed")?
        .context("writing snapshots")?;
    tracing::debug!(rows, "snapshots written");
    if let Some(dir) = scratch {
        // Nothing after the replay reads the spill.
        if spilling {
            tracing::info!(
                peak = spilled_peak,
                dir = %dir.path().display(),
                "closed contacts held in scratch files instead of memory (at most, at a flush)"
            );
        }
        let path = dir.path().to_path_buf();
        dir.close().with_context(|| {
            format!("removing the spill's scratch directory {}", path.display())
        })?;
    }
    // Closed, not dropped: SQLite's write-ahead log is moved into the database file
    // (`Store::close`), so a finished replay's file alone holds it, to copy or archive
    // (~10 ms for a 1 M-event replay). Dropping left the last writes in the log.
    store.close().await;
    bar.finish_and_clear();
    pipe.finish().context("writing dead letters")?;
    if let Some(path) = &a.dead_letter {
        println!(
            "dead letters: {} written to {}",
            pipe.dead_lettered,
            path.display()
        );
    }
    print_summary(
        &a.inputs,
        pipe.stats(),
        rows,
        spilling.then_some(spilled_peak),
        started.elapsed().as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}

/// The spill's scratch directory (removed when dropped, also on an error). Beside a
/// SQLite store by default: on the disk the user chose for the replay's data, where
/// the system's temporary directory may be memory.
fn spill_scratch_dir(
    dir: Option<&std::path::Path>,
    store_url: &str,
) -> anyhow::Result<tempfile::TempDir> {
    let parent = match dir {
        Some(d) => d.to_path_buf(),
        None => Store::sqlite_dir(store_url).unwrap_or_else(std::env::temp_dir),
    };
    let dir = tempfile::Builder::new()
        .prefix("ccmetrics-replay-spill-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "creating the spill's scratch directory in {} (set it with --spill-dir)",
                parent.display()
            )
        })?;
    tracing::debug!(dir = %dir.path().display(), "spilled contacts go to scratch files");
    Ok(dir)
}

/// `spilled`: with the spill on, the most contacts it held at a flush.
fn print_summary(inputs: &[PathBuf], s: &Stats, rows: u64, spilled: Option<usize>, secs: f64) {
    println!("replay summary");
    println!("  files            {}", inputs.len());
    println!("  events read      {}", s.read);
    println!("  accepted         {}", s.accepted);
    println!("  duplicates       {}", s.duplicates);
    println!("  rejected         {}", s.rejected_total());
    for (reason, count) in &s.rejected {
        println!("    {:<14} {count}", reason.as_str());
    }
    println!("  late, applied    {}", s.late_applied);
    println!("  expired contacts {}", s.expired);
    if !s.overflowed.is_empty() {
        println!("  keys overflowed  {}", s.overflowed.values().sum::<u64>());
        for (dim, count) in &s.overflowed {
            println!("    {:<14} {count}", dim.as_str());
        }
    }
    println!("  snapshot rows    {rows}");
    if let Some(peak) = spilled {
        println!("  contacts spilled {peak} at most, at a flush");
    }
    println!(
        "  elapsed          {secs:.2} s ({:.0} events/s)",
        s.read as f64 / secs.max(1e-9)
    );
}
