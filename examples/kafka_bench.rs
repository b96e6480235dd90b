//! The Kafka benchmarks of docs/performance.md, run by `scripts/bench.sh kafka`:
//!
//! - `bare`: the practical limit. A bare rdkafka consumer with the daemon's own
//!   consumer settings (`source::kafka::consumer_config`, same bundled librdkafka)
//!   reads the topic from the beginning and discards the messages.
//! - `catch-up`: starts `ccmetrics serve` on an empty store and a fresh group and
//!   times it until it has read every message of the topic.
//! - `latency`: starts `ccmetrics serve`, publishes simulated live events at a steady
//!   rate, and measures for every event the time from its send to the first
//!   `/metrics` scrape whose `ccmetrics_kafka_position` for its partition is past its
//!   offset (the live figures are published before the position).
//!
//! Each prints one summary line; `catch-up` and `bare` also say how long they took, so
//! the two can be compared as whole commands as well.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ccmetrics::config::Config;
use ccmetrics::source::kafka::consumer_config;
use ccmetrics::source::kafka::producer::Keyer;
use ccmetrics::source::sim;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

#[derive(Parser)]
enum Cmd {
    /// Bare consumer: read `expect` messages from the beginning, discard them.
    Bare {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        expect: u64,
    },
    /// `ccmetrics serve` from an empty store until it has read `expect` messages.
    CatchUp {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        expect: u64,
        /// The ccmetrics binary.
        #[arg(long, default_value = "target/release/ccmetrics")]
        bin: PathBuf,
        /// Store in a fresh PostgreSQL database of its own (created on the server of
        /// `CCMETRICS_TEST_PG`, default the local test server, and dropped after)
        /// instead of a fresh SQLite file: production's store.
        #[arg(long)]
        postgres: bool,
    },
    /// Event → /metrics latency at a steady rate of simulated live events.
    Latency {
        #[arg(long)]
        config: PathBuf,
        /// Events per second.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value = "target/release/ccmetrics")]
        bin: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Bare { config, expect } => bare(&load(&config)?, expect),
        Cmd::CatchUp {
            config,
            expect,
            bin,
            postgres,
        } => catch_up(&config, expect, &bin, postgres),
        Cmd::Latency {
            config,
            rate,
            seconds,
            bin,
        } => latency(&config, rate, seconds, &bin),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = Config::load(Some(path)).with_context(|| format!("loading {}", path.display()))?;
    ensure!(
        cfg.kafka.enabled(),
        "{}: no [kafka] brokers",
        path.display()
    );
    Ok(cfg)
}

/// A group no earlier run used, so every run starts from the beginning of the topic.
fn fresh_group(base: &str) -> String {
    format!(
        "{base}-bench-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    )
}

fn bare(cfg: &Config, expect: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut c = consumer_config(&cfg.kafka);
    c.set("group.id", fresh_group(&cfg.kafka.group_id));
    let consumer: BaseConsumer = c.create()?;
    let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < expect {
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {n} of {expect} messages in 10 min"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => eprintln!("poll: {e}"),
            None => {}
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "bare consumer: {n} messages ({bytes} bytes) in {s:.2} s = {:.0} msg/s",
        n as f64 / s
    );
    Ok(())
}

/// A `ccmetrics serve` on a fresh group and an empty store of its own: a SQLite file,
/// or the PostgreSQL database at `store_url`.
struct Serve {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(
        config: &std::path::Path,
        bin: &std::path::Path,
        store_url: Option<&str>,
    ) -> anyhow::Result<Serve> {
        let cfg = load(config)?;
        let dir = tempfile::tempdir()?;
        let url = match store_url {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", dir.path().join("bench.db").display()),
        };
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env(
                "CCMETRICS__KAFKA__GROUP_ID",
                fresh_group(&cfg.kafka.group_id),
            )
            .env("CCMETRICS__STORE__URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut first)?;
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://") && w.ends_with("/metrics,"))
            .map(|w| w.trim_end_matches("/metrics,").to_owned())
            .with_context(|| format!("no address in serve's first line {first:?}"))?;
        Ok(Serve {
            child,
            base,
            _dir: dir,
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Not part of what is timed: the shutdown commit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn catch_up(
    config: &std::path::Path,
    expect: u64,
    bin: &std::path::Path,
    postgres: bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    // Created before the clock starts: not part of what is timed.
    let db = match postgres {
        true => Some(
            rt.block_on(ccmetrics::store::testing::TestDb::create())
                .context("creating the PostgreSQL database")?,
        ),
        false => None,
    };
    let result = catch_up_on(
        &rt,
        config,
        expect,
        bin,
        db.as_ref().map(|d| d.url.as_str()),
    );
    if let Some(db) = db {
        rt.block_on(db.drop_db())
            .context("dropping the PostgreSQL database")?;
    }
    result
}

fn catch_up_on(
    rt: &tokio::runtime::Runtime,
    config: &std::path::Path,
    expect: u64,
    bin: &std::path::Path,
    store_url: Option<&str>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let serve = Serve::start(config, bin, store_url)?;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/status", serve.base);
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "serve did not catch up in 30 min"
        );
        let read = rt
            .block_on(get(&client, &url))
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|s| s["stats"]["read"].as_u64())
            .unwrap_or(0);
        if read >= expect {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "serve caught up: {expect} messages in {s:.2} s = {:.0} msg/s",
        expect as f64 / s
    );
    Ok(())
}

/// Where each sent event landed, and when it was sent.
#[derive(Default)]
struct Sent {
    at: Mutex<Vec<Instant>>,
    landed: Mutex<Vec<(i32, i64, usize)>>,
    failed: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Default)]
struct Timing(Arc<Sent>);

impl ClientContext for Timing {}

impl ProducerContext for Timing {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, idx: Box<usize>) {
        match result {
            Ok(m) => lock(&self.0.landed).push((m.partition(), m.offset(), *idx)),
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ccmetrics_kafka_position{partition="3",topic="t"} 1234` → (3, 1234).
fn positions(body: &str) -> HashMap<i32, i64> {
    body.lines()
        .filter(|l| l.starts_with("ccmetrics_kafka_position{"))
        .filter_map(|l| {
            let p = l
                .split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((p, v))
        })
        .collect()
}

fn latency(
    config: &std::path::Path,
    rate: f64,
    seconds: u64,
    bin: &std::path::Path,
) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let topic = cfg
        .kafka
        .topics
        .first()
        .context("[kafka] topics is empty")?
        .clone();
    let serve = Serve::start(config, bin, None)?;
    let rt = runtime()?;
    let client = reqwest::Client::new();
    let ready = Instant::now();
    while rt
        .block_on(client.get(format!("{}/readyz", serve.base)).send())
        .map_or(true, |r| !r.status().is_success())
    {
        ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "serve not ready in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Scrape /metrics as fast as it answers (about every 10 ms) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let url = format!("{}/metrics", serve.base);
        std::thread::spawn(
            move || -> anyhow::Result<Vec<(Instant, HashMap<i32, i64>)>> {
                let rt = runtime()?;
                let client = reqwest::Client::new();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(body) = rt.block_on(get(&client, &url)) {
                        seen.push((Instant::now(), positions(&body)));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(seen)
            },
        )
    };

    let timing = Timing::default();
    let mut pc = ccmetrics::source::kafka::client_config(&cfg.kafka);
    pc.set("enable.idempotence", "true");
    let producer: ThreadedProducer<Timing> = pc.create_with_context(timing.clone())?;
    let sc = sim::SimConfig {
        seed: 7,
        start_ms: jiff::Timestamp::now().as_millisecond(),
        ..sim::SimConfig::default()
    }
    .sized_for_rate(rate);
    let mut s = sim::Simulator::new(sc);
    let decoder = cfg.decoder();
    let mut keyer = Keyer::default();
    // Paced by count, not by the simulator's timestamps: event n leaves at
    // start + n / rate. The simulator's own rate drifts (a fresh centre ramps up,
    // contacts cluster), so following its clock sent only ~3.4 k of 5 k events/s.
    // Its event times run slightly ahead of or behind the wall clock instead, which
    // the daemon does not care about (latency is measured on offsets).
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut n = 0usize;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * rate) as usize;
        if n >= due {
            // Wake about every millisecond: ~5 events per tick at 5 k/s.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let (_, line) = s.next_line();
        let key = keyer.key(&decoder, line.as_bytes());
        lock(&timing.0.at).push(Instant::now());
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(n)).payload(line.as_bytes());
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        if let Err((e, _)) = producer.send(record) {
            bail!("send: {e}");
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let sent_secs = seconds as f64;

    // Wait until the daemon has processed every delivered event (or give up).
    let landed = lock(&timing.0.landed).clone();
    let mut last: HashMap<i32, i64> = HashMap::new();
    for &(p, o, _) in &landed {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    let url = format!("{}/metrics", serve.base);
    let drained = Instant::now();
    loop {
        let pos = rt
            .block_on(get(&client, &url))
            .map(|b| positions(&b))
            .unwrap_or_default();
        if last.iter().all(|(p, o)| pos.get(p).is_some_and(|v| v > o)) {
            break;
        }
        ensure!(
            drained.elapsed() < Duration::from_secs(60),
            "serve did not process every event within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Where the polling thread spent time instead of consuming (per task).
    if let Some(body) = rt.block_on(get(&client, &url)) {
        for line in body.lines().filter(|l| {
            l.starts_with("ccmetrics_kafka_poll_thread_busy_seconds_sum")
                || l.starts_with("ccmetrics_kafka_poll_thread_busy_seconds_count")
                || (l.starts_with("ccmetrics_kafka_poll_thread_busy_seconds_bucket")
                    && (l.contains("le=\"0.1\"") || l.contains("le=\"0.25\"")))
        }) {
            println!("  {line}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("scraper panicked"))??;
    let at = lock(&timing.0.at).clone();

    let mut lat_ms: Vec<f64> = Vec::with_capacity(landed.len());
    for &(p, o, idx) in &landed {
        // Positions only grow while the partition stays assigned: the first scrape
        // past the offset is found by binary search.
        let first = seen.partition_point(|(_, pos)| pos.get(&p).is_none_or(|v| *v <= o));
        if let Some((t, _)) = seen.get(first) {
            lat_ms.push(t.saturating_duration_since(at[idx]).as_secs_f64() * 1000.0);
        }
    }
    ensure!(!lat_ms.is_empty(), "no latency measured");
    lat_ms.sort_by(f64::total_cmp);
    let q = |f: f64| lat_ms[((lat_ms.len() - 1) as f64 * f).round() as usize];
    println!(
        "event -> /metrics latency over {} events ({:.0}/s sent, {} failed, scraped every ~10 ms): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat_ms.len(),
        n as f64 / sent_secs,
        timing.0.failed.load(Ordering::Relaxed),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
