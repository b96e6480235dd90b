//! Parse and parse+aggregate throughput on a realistic simulated mix.
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
