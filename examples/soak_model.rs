//! What the soak's input does to the engine, without a broker or a store: the
//! simulator sized as `produce --sim --rate N` sizes it, fed straight into an engine
//! with the soak's settings (correction horizon, allowed lateness 30 s, FCR window =
//! horizon, live views on), flushed every second of simulated time as `serve` flushes
//! while input flows. Every `--every` minutes of simulated time it prints the event
//! rate of that period and the contacts the engine holds, so the shape of the soak
//! (steady or ramping) can be seen over hours in seconds. Used for the figures in
//! docs/reliability.md ("Soak").
//!
//!   cargo run --release --example soak_model -- --rate 500 --hours 6
//!   cargo run --release --example soak_model -- --rate 500 --hours 6 --warmup-hours 24

use ccmetrics::engine::{Engine, EngineConfig};
use ccmetrics::event::Decoder;
use ccmetrics::source::sim::{self, SimConfig};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Events per second the simulator is sized for (as `produce --rate`).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Correction horizon (and FCR window) in minutes, as the soak's `SOAK_HORIZON`.
    #[arg(long, default_value_t = 5)]
    horizon_min: i64,
    /// Simulated hours to run after the warm-up.
    #[arg(long, default_value_t = 3.0)]
    hours: f64,
    /// Simulated hours run before the measured part (as `produce --sim-warmup`).
    #[arg(long, default_value_t = 0.0)]
    warmup_hours: f64,
    /// Minutes of simulated time per printed row.
    #[arg(long, default_value_t = 5)]
    every: i64,
    /// Rolling windows in minutes (the default's 5, 15 and 60 when not given).
    #[arg(long, value_delimiter = ',')]
    rolling: Vec<u32>,
    /// Generate and decode the events but apply none: the RSS is then the
    /// simulator's own (its queue of events due later grows as it ramps up), to
    /// subtract from a normal run's.
    #[arg(long)]
    sim_only: bool,
}

/// This process's resident set (Linux), MiB; 0 where it cannot be read.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn main() {
    let a = Args::parse();
    let base = SimConfig {
        start_ms: sim::DEFAULT_START_MS,
        ..SimConfig::default()
    };
    let warmup_ms = (a.warmup_hours * 3_600_000.0) as i64;
    let sc = base.sized_for_rate_after(a.rate, warmup_ms);
    println!(
        "sized: contacts_per_hour {:.0}, agents {}; warm-up {} h",
        sc.contacts_per_hour, sc.agents, a.warmup_hours
    );
    let first = sc.start_ms;
    let mut s = sim::warmed_up(sc, warmup_ms);
    let horizon = a.horizon_min * 60_000;
    let mut engine = Engine::new(EngineConfig {
        allowed_lateness_ms: 30_000,
        correction_horizon_ms: horizon,
        rules: ccmetrics::engine::contact::Rules {
            fcr_window_ms: horizon,
            ..EngineConfig::default().rules
        },
        rolling_minutes: if a.rolling.is_empty() {
            EngineConfig::default().rolling_minutes
        } else {
            a.rolling.clone()
        },
        ..EngineConfig::default()
    });
    let decoder = Decoder::default();
    let end = first + (a.hours * 3_600_000.0) as i64;
    let every = a.every * 60_000;
    let mut next_row = first + every;
    let mut next_flush = first + 1_000;
    let mut n_period = 0u64;
    println!("sim_min,events_per_s,open_contacts,packed,expired_total,rss_mib");
    loop {
        let (at, line) = s.next_line();
        if at >= end {
            break;
        }
        while at >= next_flush {
            engine.advance_to(next_flush);
            engine.flush();
            next_flush += 1_000;
        }
        if at >= next_row {
            println!(
                "{},{:.0},{},{},{},{}",
                (next_row - first) / 60_000,
                n_period as f64 / (every as f64 / 1000.0),
                engine.open_contacts(),
                engine.contacts_packed(),
                engine.stats().expired,
                rss_mib()
            );
            n_period = 0;
            next_row += every;
        }
        n_period += 1;
        if let Ok(ev) = decoder.decode(line.as_bytes())
            && !a.sim_only
        {
            engine.apply(ev);
        }
    }
}
