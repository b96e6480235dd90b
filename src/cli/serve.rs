use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ccmetrics::engine::EngineConfig;
use ccmetrics::http::{self, AppState, LiveSnapshot};
use ccmetrics::pipeline::Pipeline;
use ccmetrics::source::kafka::consumer::KafkaSource;
use ccmetrics::source::{file, sim};
use ccmetrics::store::Store;
use tokio::sync::{mpsc, watch};

use super::ConfigArg;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The [kafka] topics, as a member of the consumer group (the production source).
    Kafka,
    /// JSONL events on standard input.
    Stdin,
    /// The built-in simulator: contacts, agents, queues, surveys in real time.
    Sim,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where events come from (default: kafka when [kafka] brokers is set, else sim).
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// Simulator arrival rate (contacts per hour; about 12 per agent is a healthy load).
    #[arg(long, default_value_t = 600.0)]
    pub sim_contacts_per_hour: f64,
    /// Simulator agents.
    #[arg(long, default_value_t = 50)]
    pub sim_agents: usize,
    /// Simulator seed (same seed, same contacts).
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
    /// Snapshot partition this daemon writes (default: the source name).
    #[arg(long)]
    pub partition: Option<String>,
    /// Append rejected messages (with their reason) to this JSONL file.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Number of events to write.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Output file (`-` for stdout).
    #[arg(long, short = 'o', default_value = "-")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 500)]
    pub agents: usize,
    #[arg(long, default_value_t = 12)]
    pub queues: usize,
    /// Contacts per hour of simulated time.
    #[arg(long, default_value_t = 6000.0)]
    pub contacts_per_hour: f64,
    /// Simulated start time (RFC 3339); default 2026-11-02T00:00:00Z.
    #[arg(long, default_value = "2026-11-02T00:00:00Z")]
    pub start: String,
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let start = ccmetrics::event::decode::parse_rfc3339(&a.start)
        .with_context(|| format!("--start {:?} is not RFC 3339", a.start))?;
    let cfg = sim::SimConfig {
        seed: a.seed,
        agents: a.agents,
        queues: a.queues,
        start_ms: start,
        contacts_per_hour: a.contacts_per_hour,
        ..sim::SimConfig::default()
    };
    let out: Box<dyn Write> = if a.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&a.out)
                .with_context(|| format!("creating {}", a.out.display()))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    sim::write_jsonl(cfg, a.events, &mut out).context("writing events")?;
    out.flush().context("writing events")?;
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    let store = Store::open(&cfg.store.url).await.with_context(|| {
        format!(
            "opening store {}",
            ccmetrics::config::redact_url(&cfg.store.url)
        )
    })?;
    let state = Arc::new(AppState::new(&cfg).context("setting up metrics")?);
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.http.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let source = a.source.unwrap_or(if cfg.kafka.enabled() {
        SourceKind::Kafka
    } else {
        SourceKind::Sim
    });
    if source == SourceKind::Kafka {
        anyhow::ensure!(
            cfg.kafka.enabled(),
            "--source kafka needs [kafka] brokers (or CCMETRICS__KAFKA__BROKERS)"
        );
        anyhow::ensure!(
            a.partition.is_none() && a.dead_letter.is_none(),
            "--partition and --dead-letter are for the sim and stdin sources; Kafka partitions name themselves and dead letters go to [kafka] dead_letter_topic"
        );
    }
    let partition = a
        .partition
        .clone()
        .unwrap_or_else(|| format!("{source:?}").to_lowercase());
    tracing::info!(%addr, store = %ccmetrics::config::redact_url(&cfg.store.url), ?source, "ccmetrics serving");
    if cfg.http.token.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the JSON API and the wallboard are open to the network: set [http] token (CCMETRICS__HTTP__TOKEN)");
    }
    // A daemon must not die because whoever started it stopped reading its stdout
    // (println! panics on a closed pipe), so write and ignore failures.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ccmetrics is running: metrics at http://{addr}/metrics, rolling KPIs at http://{addr}/api/v1/rolling?window=15m&dimension=queue"
    )
    .and_then(|()| {
        writeln!(
            out,
            "snapshots go to {}; export them with `ccmetrics export --window 15m --dimension queue`; wallboard at http://{addr}/wallboard",
            ccmetrics::config::redact_url(&cfg.store.url)
        )
    })
    .and_then(|()| out.flush());
    drop(out);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(http::serve(listener, state.clone(), async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));

    if source == SourceKind::Kafka {
        let result = run_kafka(&cfg, store.clone(), state.clone()).await;
        state.set_ready(false);
        let _ = stop_tx.send(true);
        let _ = http_task.await;
        store.close().await;
        result?;
        return Ok(ExitCode::SUCCESS);
    }

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8192);
    let source_task = match source {
        SourceKind::Kafka => unreachable!("handled above"),
        SourceKind::Stdin => tokio::task::spawn_blocking(move || read_stdin(tx)),
        SourceKind::Sim => {
            let sc = sim::SimConfig {
                seed: a.sim_seed,
                agents: a.sim_agents,
                start_ms: now_ms(),
                contacts_per_hour: a.sim_contacts_per_hour,
                ..sim::SimConfig::default()
            };
            tokio::spawn(run_sim(sc, tx, stop_rx.clone()))
        }
    };

    let mut pipe = Pipeline::new(EngineConfig::from_config(&cfg), cfg.decoder(), partition);
    if let Some(path) = &a.dead_letter {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening dead-letter file {}", path.display()))?;
        // Unbuffered: a daemon's dead letters should be on disk when it is killed.
        pipe.set_dead_letters(Box::new(ccmetrics::pipeline::JsonlDeadLetters(f)));
    }
    let idle = cfg.windows.idle_timeout.0;
    let mut last_input = Instant::now();
    let mut last_flush_ms = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut input_open = true;
    state.publish(LiveSnapshot::capture(&pipe.engine, 0, None));
    state.set_ready(true);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            msg = rx.recv(), if input_open => match msg {
                Some(bytes) => {
                    pipe.ingest(&bytes);
                    last_input = Instant::now();
                }
                None => {
                    input_open = false;
                    tracing::info!("input ended; still serving (Ctrl-C to stop)");
                }
            },
            _ = tick.tick() => {
                if last_input.elapsed() >= idle {
                    // Quiet input: let wall-clock time close intervals.
                    pipe.engine.advance_to(now_ms() - idle.as_millis() as i64);
                }
                match pipe.flush(&store).await {
                    Ok(()) => last_flush_ms = Some(now_ms()),
                    Err(e) => tracing::error!(error = %e, pending = pipe.unwritten(), "snapshot flush failed; will retry"),
                }
                state.publish(LiveSnapshot::capture(&pipe.engine, pipe.flushes, last_flush_ms));
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: flushing open windows");
    state.set_ready(false);
    let _ = stop_tx.send(true);
    source_task.abort();
    let rest = pipe.engine.flush_open();
    let mut attempts = 0;
    let mut rest = Some(rest);
    loop {
        match pipe.write(&store, rest.take().unwrap_or_default()).await {
            Ok(()) => break,
            Err(e) if attempts < 5 => {
                attempts += 1;
                tracing::warn!(error = %e, attempts, "final flush failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 * attempts)).await;
            }
            Err(e) => {
                return Err(e)
                    .context("final snapshot flush failed; open-window data was not written");
            }
        }
    }
    let _ = http_task.await;
    let s = pipe.stats();
    tracing::info!(
        read = s.read,
        accepted = s.accepted,
        duplicates = s.duplicates,
        rejected = s.rejected_total(),
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// The Kafka source on a thread of its own until a shutdown signal (or a fatal error),
/// then its orderly stop: every partition committed, the group left.
async fn run_kafka(
    cfg: &ccmetrics::config::Config,
    store: Store,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let source =
        KafkaSource::new(cfg, store, state, stop.clone()).context("starting the Kafka source")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            let _ = done_tx.send(source.run());
        })
        .context("starting the consumer thread")?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tokio::pin!(done_rx);
    let result = tokio::select! {
        r = &mut done_rx => r,
        _ = &mut shutdown => {
            tracing::info!("shutting down: committing every partition");
            stop.store(true, Ordering::Release);
            done_rx.await
        }
    };
    match result {
        Ok(r) => r.context("Kafka source failed"),
        Err(_) => anyhow::bail!("the Kafka consumer thread ended without a result"),
    }
}

fn read_stdin(tx: mpsc::Sender<Vec<u8>>) {
    let mut reader = file::open_stdin();
    let mut buf = Vec::new();
    loop {
        match file::read_record(&mut reader, &mut buf) {
            Ok(true) => {
                if tx.blocking_send(buf.clone()).is_err() {
                    return;
                }
            }
            Ok(false) => return,
            Err(e) => {
                tracing::error!(error = %e, "reading stdin failed");
                return;
            }
        }
    }
}

async fn run_sim(cfg: sim::SimConfig, tx: mpsc::Sender<Vec<u8>>, mut stop: watch::Receiver<bool>) {
    let mut sim = sim::Simulator::new(cfg);
    loop {
        let (at, line) = sim.next_line();
        let wait = at - now_ms();
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        if tx.send(line.into_bytes()).await.is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
