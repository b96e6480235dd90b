//! Rendering the `/metrics` body at 10 000 agents with per-agent series on (issue 6's
//! scrape target), without HTTP: what a scrape costs the daemon's CPU.
//! `cargo bench --bench scrape`; figures in docs/performance.md ("Scrape").

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ccmetrics::config::Config;
use ccmetrics::engine::{Engine, EngineConfig};
use ccmetrics::event::Decoder;
use std::sync::Arc;

use ccmetrics::http::{AgentBlock, HttpSettings, LiveSnapshot, render_chunks};
use ccmetrics::source::sim::{SimConfig, Simulator};

/// A live snapshot of an engine fed simulated events from 10 000 agents.
fn snapshot(cfg: &Config) -> LiveSnapshot {
    let mut sim = Simulator::new(SimConfig {
        agents: 10_000,
        queues: 300,
        contacts_per_hour: 120_000.0,
        ..SimConfig::default()
    });
    let mut e = Engine::new(EngineConfig::from_config(cfg));
    let decoder = Decoder::default();
    for _ in 0..600_000 {
        if let Ok(ev) = decoder.decode(sim.next_line().1.as_bytes()) {
            e.apply(ev);
        }
    }
    LiveSnapshot::capture(&e, 0, None)
}

fn bench(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let mut g = c.benchmark_group("metrics_body");
    g.sample_size(20);
    for buckets in [false, true] {
        let mut cfg = Config::default();
        cfg.http.per_agent_series = true;
        cfg.http.max_agent_series = 1_000_000;
        cfg.http.per_agent_buckets = buckets;
        let settings = Arc::new(HttpSettings::from_config(&cfg));
        let snap = snapshot(&cfg);
        let block = AgentBlock::build(&snap, settings.clone());
        let mut bytes = 0u64;
        render_chunks(&registry, &snap, &block, &mut |c| {
            bytes += c.len() as u64;
            true
        })
        .unwrap_or_else(|e| panic!("render: {e}"));
        g.throughput(Throughput::Bytes(bytes));
        let name = if buckets {
            "10k_agents_with_agent_buckets"
        } else {
            "10k_agents"
        };
        // A scrape of an agent part already rendered (the steady state while someone
        // scrapes: the block is rendered ahead when the agent part is published).
        g.bench_function(format!("{name}/scrape"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                render_chunks(&registry, &snap, &block, &mut |c| {
                    n += c.len();
                    true
                })
                .map(|()| n)
            })
        });
        // Rendering the agent part (once per agent part, on the render-ahead thread).
        g.bench_function(format!("{name}/agent_block"), |b| {
            b.iter(|| AgentBlock::build(&snap, settings.clone()).len())
        });
        // A scrape that finds no block ready renders both.
        g.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| {
                let block = AgentBlock::build(&snap, settings.clone());
                let mut n = 0usize;
                render_chunks(&registry, &snap, &block, &mut |c| {
                    n += c.len();
                    true
                })
                .map(|()| n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
