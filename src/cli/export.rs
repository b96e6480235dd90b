use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ccmetrics::engine::Dimension;
use ccmetrics::engine::window::Interval;
use ccmetrics::event::decode::parse_rfc3339;
use ccmetrics::export::{self, Format};
use ccmetrics::store::Store;

use super::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Interval size, one of the configured [windows] intervals (e.g. 15m, 1h, 1d).
    #[arg(long)]
    pub window: Interval,
    /// all | channel | queue | team | agent
    #[arg(long, value_parser = parse_dimension)]
    pub dimension: Dimension,
    /// Only windows starting at or after this time (RFC 3339 with offset).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Only windows starting before this time (RFC 3339 with offset).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// csv | jsonl
    #[arg(long, default_value = "csv")]
    pub format: Format,
}

fn parse_dimension(s: &str) -> Result<Dimension, String> {
    Dimension::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of all, channel, queue, team, agent"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    parse_rfc3339(s)
        .ok_or_else(|| format!("{s:?} is not RFC 3339 with an offset, e.g. 2026-11-23T00:00:00Z"))
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    anyhow::ensure!(
        cfg.windows.intervals.contains(&a.window),
        "--window {} is not a configured interval (configured: {})",
        a.window,
        ccmetrics::config::join(&cfg.windows.intervals)
    );
    // A configured interval the dimension does not keep: only
    // `[windows.dimensions]` can say so.
    if let Some(kept) = cfg.windows.dimensions.get(a.dimension.as_str())
        && !kept.contains(&a.window)
    {
        let d = a.dimension.as_str();
        let quoted: Vec<String> = kept.iter().map(|iv| format!("\"{iv}\"")).collect();
        anyhow::bail!(
            "{d} windows are not kept at {w} ([windows.dimensions] {d} = [{}]), so none are written; \
             list {w} there to keep them (a replay then writes them)",
            quoted.join(", "),
            w = a.window
        );
    }
    let store = Store::open(&cfg.store.url).await.with_context(|| {
        format!(
            "opening store {}",
            ccmetrics::config::redact_url(&cfg.store.url)
        )
    })?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut w = export::Writer::new(cfg.metrics.service_level_formula, a.format, &mut out)
        .context("writing export")?;
    // Rows are written as they are read: an export of months of per-agent windows
    // runs in the memory of one row.
    store
        .query_each(&a.window.to_string(), a.dimension, a.from, a.to, |row| {
            w.row(&row).context("writing export")
        })
        .await
        .context("exporting snapshots")?;
    store.close().await;
    out.flush().context("writing export")?;
    Ok(ExitCode::SUCCESS)
}
