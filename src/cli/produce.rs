//! `ccmetrics produce`: publish JSONL files or simulated events to the Kafka topic,
//! keyed as the consumer needs (see `source::kafka::producer`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use ccmetrics::source::kafka::producer::{Keyer, Publisher};
use ccmetrics::source::{file, sim};

use super::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// JSONL input (plain or .gz); repeat for several files, sent in order.
    #[arg(
        long = "input",
        short = 'i',
        value_name = "PATH",
        required_unless_present = "sim",
        conflicts_with = "sim"
    )]
    pub inputs: Vec<PathBuf>,
    /// Publish simulated events in real time instead of files (until Ctrl-C or --events).
    #[arg(long)]
    pub sim: bool,
    /// Target rate: events per second. Files are throttled to it; the simulator is sized
    /// so its centre produces about this many events per second. Default: files as fast
    /// as possible, the simulator at its default size.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Topic to write (default: the first of [kafka] topics).
    #[arg(long)]
    pub topic: Option<String>,
    /// Extra librdkafka producer property, repeatable: `--property batch.num.messages=1`.
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
    /// Simulated time the simulator runs, unpublished, before its first published line
    /// (`24h`, `90m`): the stream then starts from a centre that has been open that
    /// long, so its rate and mix are steady from the start (a cold simulator's event
    /// rate climbs for about a day). `--rate` is sized on the hour after it.
    #[arg(long, value_name = "DURATION", requires = "sim", default_value = "0s")]
    pub sim_warmup: ccmetrics::config::Dur,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive rate such as 5000 or 5000/s"
        )),
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Sleeps so that `sent` messages take at least `sent / rate` seconds.
struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    fn wait(&self, sent: u64) {
        if let Some(r) = self.rate {
            let due = Duration::from_secs_f64(sent as f64 / r);
            if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    anyhow::ensure!(
        cfg.kafka.enabled(),
        "no Kafka brokers configured: set [kafka] brokers in the config file or CCMETRICS__KAFKA__BROKERS"
    );
    let topic = match &a.topic {
        Some(t) => t.clone(),
        None => cfg
            .kafka
            .topics
            .first()
            .cloned()
            .context("[kafka] topics is empty and no --topic given")?,
    };
    for p in &a.inputs {
        anyhow::ensure!(p.exists(), "input {} does not exist", p.display());
    }
    let mut publisher =
        Publisher::new(&cfg.kafka, &topic, &a.properties).context("creating the Kafka producer")?;
    let decoder = cfg.decoder();
    let mut keyer = Keyer::default();
    let limit = a.events.unwrap_or(u64::MAX);
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut report_progress = |sent: u64| {
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            eprint!(
                "\rsent {sent} events ({:.0}/s)   ",
                sent as f64 / started.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
    };
    if a.sim {
        let base = sim::SimConfig {
            seed: a.sim_seed,
            start_ms: jiff::Timestamp::now().as_millisecond(),
            ..sim::SimConfig::default()
        };
        let warmup_ms = a.sim_warmup.ms();
        let sc = match a.rate {
            Some(r) => base.sized_for_rate_after(r, warmup_ms),
            None => base,
        };
        let mut s = sim::warmed_up(sc, warmup_ms);
        // Warming up took wall-clock time (minutes for a day of a large centre): drop
        // what fell due meanwhile rather than send it in one burst, so the published
        // rate is steady from the first line.
        s.skip_until(jiff::Timestamp::now().as_millisecond());
        while publisher.sent() < limit {
            let (at, line) = s.next_line();
            let wait = at - jiff::Timestamp::now().as_millisecond();
            if wait > 0 {
                std::thread::sleep(Duration::from_millis(wait as u64));
            }
            let key = keyer.key(&decoder, line.as_bytes());
            publisher.send(key.as_deref().map(str::as_bytes), line.as_bytes())?;
            report_progress(publisher.sent());
        }
    } else {
        // First pass: learn every contact's customer, so events that precede their
        // contact's offer in the file get the same key.
        let mut buf = Vec::new();
        for p in &a.inputs {
            let mut r = file::open_lines(p)?;
            while file::read_record(&mut r, &mut buf)
                .with_context(|| format!("reading {}", p.display()))?
            {
                keyer.learn(&decoder, &buf);
            }
        }
        let pacer = Pacer {
            start: Instant::now(),
            rate: a.rate,
        };
        'files: for p in &a.inputs {
            let mut r = file::open_lines(p)?;
            while file::read_record(&mut r, &mut buf)
                .with_context(|| format!("reading {}", p.display()))?
            {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if publisher.sent() >= limit {
                    break 'files;
                }
                let key = keyer.key(&decoder, &buf);
                publisher.send(key.as_deref().map(str::as_bytes), &buf)?;
                pacer.wait(publisher.sent());
                report_progress(publisher.sent());
            }
        }
    }
    if progress {
        eprintln!();
    }
    let report = publisher
        .finish(Duration::from_secs(120))
        .context("waiting for the broker to acknowledge every message")?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {} events to {topic} in {secs:.1} s ({:.0}/s): {} delivered, {} failed",
        report.sent,
        report.sent as f64 / secs.max(1e-9),
        report.delivered,
        report.failed
    );
    Ok(if report.failed == 0 && report.delivered == report.sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
