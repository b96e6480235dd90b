//! Parse and parse+aggregate throughput on a realistic simulated mix, and what a
//! partition's checkpoint costs to write and to restore (`serve` writes one per
//! commit, and restores one per partition assigned).
//! `cargo bench --bench engine`; figures in docs/performance.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ccmetrics::engine::{Engine, EngineConfig};
use ccmetrics::event::Decoder;
use ccmetrics::source::sim::{SimConfig, Simulator};

fn lines(n: usize) -> Vec<String> {
    let mut sim = Simulator::new(SimConfig {
        agents: 500,
        queues: 12,
        contacts_per_hour: 6000.0,
        ..SimConfig::default()
    });
    (0..n).map(|_| sim.next_line().1).collect()
}

fn bench(c: &mut Criterion) {
    let input = lines(200_000);
    let decoder = Decoder::default();
    let mut g = c.benchmark_group("events");
    g.sample_size(10);
    g.throughput(Throughput::Elements(input.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            input
                .iter()
                .filter(|l| decoder.decode(l.as_bytes()).is_ok())
                .count()
        })
    });
    // As `replay` runs it: no live views.
    g.bench_function("parse_aggregate", |b| {
        b.iter(|| {
            let mut e = Engine::new(EngineConfig {
                live: false,
                ..EngineConfig::default()
            });
            for l in &input {
                if let Ok(ev) = decoder.decode(l.as_bytes()) {
                    e.apply(ev);
                }
            }
            e.flush_all().len()
        })
    });
    g.finish();

    // A daemon's engine (live views on) after the same events, unflushed windows and
    // contacts held as a commit leaves them.
    let cfg = EngineConfig::default();
    let mut e = Engine::new(cfg.clone());
    for l in &input {
        if let Ok(ev) = decoder.decode(l.as_bytes()) {
            e.apply(ev);
        }
    }
    e.flush();
    let bytes = e.checkpoint().expect("checkpoint");
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("write", |b| {
        b.iter(|| e.checkpoint().expect("checkpoint").len())
    });
    g.bench_function("restore", |b| {
        b.iter(|| {
            Engine::restore(cfg.clone(), &bytes)
                .expect("restore")
                .open_contacts()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
