//! One file per command. Each turns arguments into library calls; errors get context
//! here (`anyhow`) and become exit code 1 in `main`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ccmetrics::config::Config;
use clap::{Parser, Subcommand};

mod check_config;
mod export;
mod produce;
mod replay;
mod score;
mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "ccmetrics",
    version,
    about = "Event-time contact-centre KPIs from call, chat and ticket events"
)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text (level via RUST_LOG, default info).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Process JSONL files (plain or .gz) as one finite stream and write snapshots.
    Replay(replay::Args),
    /// Print merged snapshot rows as CSV or JSONL.
    Export(export::Args),
    /// Run the daemon: consume events, flush snapshots, serve /metrics and the JSON API.
    Serve(serve::Args),
    /// Publish events (JSONL files or the simulator) to the Kafka topic, keyed by customer.
    Produce(produce::Args),
    /// Validate the configuration and print the effective values.
    CheckConfig(check_config::Args),
    /// Write simulated events as JSONL (for demos, tests and benchmarks).
    Generate(serve::GenerateArgs),
    /// Score agents for a period from day snapshots with a scheme file (grades, caps, bonus).
    Score(score::Args),
}

pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// `--config FILE`: optional everywhere; without it the defaults (plus environment
/// overrides) apply.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// TOML config file (see config/ccmetrics.toml); environment CCMETRICS__SECTION__KEY overrides it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<Config> {
        Config::load(self.config.as_deref()).context("loading configuration")
    }
}

/// An error and its causes on one line, each said once.
///
/// Why not `{:#}` alone: many of our errors (and sqlx's) put their cause in their own
/// message (`"cannot migrate the database schema: {0}"`) and also return it as the
/// source, so the chain says each cause again: a full disk under a new store read
/// "… database or disk is full" four times. A cause whose text the line already holds
/// is left out.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay(a) => runtime()?.block_on(replay::run(a)),
        Command::Export(a) => runtime()?.block_on(export::run(a)),
        Command::Serve(a) => {
            let rt = runtime()?;
            let r = rt.block_on(serve::run(a));
            // After a missed shutdown deadline work may still be running (a commit
            // waiting for the store, a blocking stdin read): do not wait for it, the
            // deadline was the promise.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            r
        }
        Command::Produce(a) => produce::run(a),
        Command::CheckConfig(a) => check_config::run(a),
        Command::Generate(a) => serve::generate(a),
        Command::Score(a) => runtime()?.block_on(score::run(a)),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::error_report;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("database or disk is full")]
        Full,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot migrate the database schema: {0}")]
        Migrate(#[from] Inner),
    }

    #[test]
    fn each_cause_is_said_once() {
        let e = Err::<(), _>(Outer::from(Inner::Full))
            .context("opening store sqlite:///x.db")
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "opening store sqlite:///x.db: cannot migrate the database schema: database or \
             disk is full: database or disk is full"
        );
        assert_eq!(
            error_report(&e),
            "opening store sqlite:///x.db: cannot migrate the database schema: database or \
             disk is full"
        );
        // Causes not in the message above them are kept.
        let e = Err::<(), _>(Inner::Full)
            .context("writing snapshots")
            .unwrap_err();
        assert_eq!(
            error_report(&e),
            "writing snapshots: database or disk is full"
        );
    }
}
