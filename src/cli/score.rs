//! `ccmetrics score`: the period-end scoring run (`docs/scoring.md`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ccmetrics::engine::Dimension;
use ccmetrics::engine::window::Interval;
use ccmetrics::scoring::{self, Run, inputs, period::Period, report, scheme};
use ccmetrics::store::Store;

use super::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Scheme file (see config/schemes/).
    #[arg(long, value_name = "FILE")]
    pub scheme: PathBuf,
    /// A month (2026-11), a quarter (2026-Q4) or a year (2026), in the configured time zone.
    #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present_all = ["from", "to"])]
    pub period: Option<String>,
    /// First day of the period (YYYY-MM-DD, included); with --to instead of --period.
    #[arg(long, requires = "to", value_name = "DATE")]
    pub from: Option<String>,
    /// Last day of the period (YYYY-MM-DD, included).
    #[arg(long, requires = "from", value_name = "DATE")]
    pub to: Option<String>,
    /// Manual scores: agent_id,item,score[,rater].
    #[arg(long, value_name = "CSV")]
    pub manual: Option<PathBuf>,
    /// Agent roster: agent_id,name,team,queue_group,hire_date (teams, queue groups and
    /// protection periods come from here).
    #[arg(long, value_name = "CSV")]
    pub roster: Option<PathBuf>,
    /// Bonus bases: agent_id,base; bonus = base × the grade's coefficient.
    #[arg(long, value_name = "CSV")]
    pub bonus_base: Option<PathBuf>,
    /// Leave this day out of the metrics (e.g. an outage), in addition to the scheme's
    /// excluded_dates; repeat for several days.
    #[arg(long = "exclude-date", value_name = "DATE")]
    pub exclude_dates: Vec<jiff::civil::Date>,
    /// Output directory for scores.csv, scores.json and report.html (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    // Scoring merges day snapshots; without them it would have to merge finer ones,
    // which works but hides a config that does not keep what scoring is defined on.
    anyhow::ensure!(
        cfg.windows.intervals.contains(&Interval::Day),
        "score reads day snapshots, but [windows] intervals ({}) has no 1d",
        cfg.windows
            .intervals
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    anyhow::ensure!(
        cfg.windows.keeps(Dimension::Agent, Interval::Day),
        "score reads agents' day snapshots, but [windows.dimensions] agent does not keep 1d; add \"1d\" to it"
    );
    let mut scheme = scheme::load(&a.scheme)?;
    scheme.excluded_dates.extend(&a.exclude_dates);
    scheme.excluded_dates.sort();
    scheme.excluded_dates.dedup();
    let tz = cfg.tz();
    let period = match (&a.period, &a.from, &a.to) {
        (Some(p), _, _) => Period::parse(p, &tz)?,
        (None, Some(f), Some(t)) => Period::range(f, t, &tz)?,
        _ => anyhow::bail!("give --period, or --from and --to"),
    };
    let roster = a.roster.as_deref().map(inputs::read_roster).transpose()?;
    let manual = a
        .manual
        .as_deref()
        .map(inputs::read_manual)
        .transpose()?
        .unwrap_or_default();
    let bases = a
        .bonus_base
        .as_deref()
        .map(inputs::read_bases)
        .transpose()?;

    let store = Store::open(&cfg.store.url).await.with_context(|| {
        format!(
            "opening store {}",
            ccmetrics::config::redact_url(&cfg.store.url)
        )
    })?;
    let data = scoring::read_period(&store, &period)
        .await
        .context("reading day snapshots")?;
    store.close().await;
    let provisional = scoring::fcr_provisional(&period, data.newest_end, cfg.fcr.window.ms());
    let outcome = scoring::score(&Run {
        scheme: &scheme,
        period: &period,
        tz: &tz,
        days: &data.days,
        roster: roster.as_ref(),
        manual: &manual,
        bases: bases.as_ref(),
        sl_formula: cfg.metrics.service_level_formula,
        fcr_provisional: provisional,
    })?;

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating output directory {}", a.out.display()))?;
    let write = |name: &str, f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let path = a.out.join(name);
        let mut buf = Vec::new();
        f(&mut buf)
            .and_then(|()| std::fs::write(&path, &buf))
            .with_context(|| format!("writing {}", path.display()))
    };
    write("scores.csv", &|b| report::write_csv(&outcome, b))?;
    write("scores.json", &|b| report::write_json(&outcome, b))?;
    write("report.html", &|b| {
        b.write_all(report::html(&outcome).as_bytes())
    })?;

    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(report::summary_table(&outcome).as_bytes())?;
    writeln!(
        out,
        "wrote scores.csv, scores.json and report.html to {}",
        a.out.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
