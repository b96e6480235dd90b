use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ccmetrics::engine::{EngineConfig, Scope};
use ccmetrics::http::{self, AGENTS_EVERY, AppState, LiveSnapshot};
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
    fix_mmap_threshold();
    let cfg = a.config.load()?;
    let store = Store::open(&cfg.store.url).await.with_context(|| {
        format!(
            "opening store {}",
            ccmetrics::config::redact_url(&cfg.store.url)
        )
    })?;
    let state = Arc::new(AppState::new(&cfg).context("setting up metrics")?);
    http::memory::MemoryCollector::register(state.registry())
        .context("setting up the memory metrics")?;
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

    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(
        a.config.config.clone(),
        cfg.clone(),
        state.clone(),
    ));

    // With jemalloc as every allocation's allocator there is nothing to trim.
    if cfg!(all(
        target_os = "linux",
        target_env = "gnu",
        not(feature = "jemalloc")
    )) {
        tokio::spawn(trim_freed_memory_periodically());
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(http::serve(
        listener,
        state.clone(),
        cfg.http.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));
    let grace = cfg.serve.shutdown_timeout.0;

    if source == SourceKind::Kafka {
        let (result, deadline) = run_kafka(&cfg, store.clone(), state.clone()).await;
        state.set_ready(false);
        let _ = stop_tx.send(true);
        // A fatal error (no signal) still gets the configured time to drain HTTP.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + grace);
        finish_http(http_task, deadline).await;
        if tokio::time::timeout_at(deadline.into(), store.close())
            .await
            .is_err()
        {
            tracing::warn!("the store's connections did not close before the shutdown deadline");
        }
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
    let mut last_full: Option<(Instant, Arc<LiveSnapshot>)> = None;
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
                // As the Kafka source does: the agent part (team and agent rows, the
                // agents on the floor) every AGENTS_EVERY, the centre on every tick.
                match &last_full {
                    Some((at, full)) if at.elapsed() < AGENTS_EVERY => {
                        let mut snap = LiveSnapshot::capture_of(&pipe.engine, pipe.flushes, last_flush_ms, Scope::Centre);
                        snap.splice_agents_from(full);
                        state.publish(snap);
                    }
                    _ => {
                        let full = Arc::new(LiveSnapshot::capture(&pipe.engine, pipe.flushes, last_flush_ms));
                        last_full = Some((Instant::now(), full.clone()));
                        state.publish_arc(full);
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: flushing open windows");
    let deadline = Instant::now() + grace;
    state.set_ready(false);
    let _ = stop_tx.send(true);
    source_task.abort();
    let rest = pipe.engine.flush_open();
    let final_flush = async {
        let mut attempts = 0;
        let mut rest = Some(rest);
        loop {
            match pipe.write(&store, rest.take().unwrap_or_default()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempts, "final flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempts)).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), final_flush).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(e).context("final snapshot flush failed; open-window data was not written");
        }
        Err(_) => {
            tracing::error!(timeout = %cfg.serve.shutdown_timeout, "shutdown deadline passed before the final snapshot flush finished; exiting with status 1 (open-window data not written)");
            anyhow::bail!(
                "shutdown deadline ({}) passed before the final snapshot flush finished",
                cfg.serve.shutdown_timeout
            );
        }
    }
    finish_http(http_task, deadline).await;
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

/// Let in-flight requests finish, but not past `deadline` and not for long: an open
/// SSE stream (a wallboard) would otherwise hold the graceful shutdown forever.
async fn finish_http(mut task: tokio::task::JoinHandle<std::io::Result<()>>, deadline: Instant) {
    let drain = deadline.min(Instant::now() + Duration::from_secs(2));
    if tokio::time::timeout_at(drain.into(), &mut task)
        .await
        .is_err()
    {
        tracing::info!("closing the remaining HTTP connections (streams)");
        task.abort();
    }
}

/// On SIGHUP: re-read the config file (and the environment), apply the reloadable
/// keys ([`ccmetrics::config::RELOADABLE_KEYS`]: targets, the service-level formula,
/// per-agent series, the token) and log every other changed key as needing a
/// restart. An invalid file changes nothing: the running config stays.
#[cfg(unix)]
async fn reload_on_sighup(
    path: Option<PathBuf>,
    mut running: ccmetrics::config::Config,
    state: Arc<AppState>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; config reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let shown = path
            .as_deref()
            .map_or_else(|| "(defaults)".into(), |p| p.display().to_string());
        let new = match ccmetrics::config::Config::load(path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(config = %shown, error = %e, "config reload rejected; keeping the running config");
                continue;
            }
        };
        let r = running.reload(&new);
        for key in &r.needs_restart {
            tracing::warn!(config = %shown, %key, "config key changed but needs restart; ignored until then");
        }
        state.set_settings(http::HttpSettings::from_config(&r.effective));
        tracing::info!(config = %shown, applied = ?r.applied, needs_restart = r.needs_restart.len(), "config reloaded");
        running = r.effective;
    }
}

/// The Kafka source on a thread of its own until a shutdown signal (or a fatal error),
/// then its orderly stop: every partition committed, the group left, within
/// `[serve] shutdown_timeout` of the signal. Returns the outcome and, when a signal
/// started the stop, its deadline.
async fn run_kafka(
    cfg: &ccmetrics::config::Config,
    store: Store,
    state: Arc<AppState>,
) -> (anyhow::Result<()>, Option<Instant>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let source = match KafkaSource::new(cfg, store, state, stop.clone()) {
        Ok(s) => s,
        Err(e) => return (Err(e).context("starting the Kafka source"), None),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if let Err(e) = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            let _ = done_tx.send(source.run());
        })
    {
        return (Err(e).context("starting the consumer thread"), None);
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tokio::pin!(done_rx);
    let timeout = cfg.serve.shutdown_timeout;
    let (result, deadline) = tokio::select! {
        r = &mut done_rx => (r, None),
        _ = &mut shutdown => {
            let deadline = Instant::now() + timeout.0;
            tracing::info!(%timeout, "shutting down: committing every partition");
            stop.store(true, Ordering::Release);
            match tokio::time::timeout_at(deadline.into(), &mut done_rx).await {
                Ok(r) => (r, Some(deadline)),
                Err(_) => {
                    tracing::error!(%timeout, "shutdown deadline passed before every partition was committed; exiting with status 1 (the next owner re-reads the uncommitted input)");
                    return (
                        Err(anyhow::anyhow!("shutdown deadline ({timeout}) passed before every partition was committed")),
                        Some(deadline),
                    );
                }
            }
        }
    };
    let result = match result {
        Ok(r) => r.context("Kafka source failed"),
        Err(_) => Err(anyhow::anyhow!(
            "the Kafka consumer thread ended without a result"
        )),
    };
    (result, deadline)
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

/// How often `serve` hands free heap pages back to the operating system.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// For builds without the `jemalloc` feature (or off Linux): the C libraries
/// (librdkafka's buffers, SQLite's page cache) and the daemon then allocate from glibc,
/// and this and [`fix_mmap_threshold`] are for them. With the feature (the default)
/// every allocation goes to jemalloc (`src/alloc.rs`), which returns freed pages by
/// itself, and both are no-ops.
///
/// glibc's allocator keeps memory freed in a thread's arena for reuse rather than
/// returning it, so after any burst (a backlog caught up after a slow store or a busy
/// machine, a large checkpoint) the daemon's RSS stayed at the burst's high-water mark
/// for good: a soak saw a 65 MiB step that never came back down (docs/reliability.md,
/// "Soak"). Trimming every 30 s keeps RSS near what is in use, which is what
/// operators' memory alerts and the soak measure; it costs a few milliseconds of one
/// core, off the async workers.
async fn trim_freed_memory_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(trim_freed_memory).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
fn trim_freed_memory() {
    let started = Instant::now();
    // SAFETY: malloc_trim takes no pointer from us; it walks glibc's own arenas under
    // their locks, so it is safe while other threads allocate.
    let released = unsafe { libc::malloc_trim(0) } != 0;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if ms > 100.0 {
        tracing::info!(
            elapsed_ms = ms,
            released,
            "returning free heap pages to the OS was slow"
        );
    } else {
        tracing::debug!(
            elapsed_ms = ms,
            released,
            "returned free heap pages to the OS"
        );
    }
}

/// Other allocators and platforms return memory their own way.
#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc"))))]
fn trim_freed_memory() {}

/// Allocations from this size up are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed,
/// after which the daemon's large transient buffers (checkpoint bytes, snapshot
/// deltas, the `/metrics` agent text) come out of the per-thread arenas instead, where
/// they leave holes between long-lived state that neither a free nor `malloc_trim` can
/// give back: a soak showed eight 64 MiB arenas nearly all resident. Setting the
/// threshold fixes it at 256 KiB (and so turns the dynamic raising off).
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
fn fix_mmap_threshold() {
    // SAFETY: mallopt takes no pointer; it sets a parameter of glibc's allocator
    // under the allocator's own lock.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } == 0 {
        tracing::warn!("could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc"))))]
fn fix_mmap_threshold() {}
