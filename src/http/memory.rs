//! `/metrics`' process memory families, read at each scrape from
//! [`crate::alloc::memory_stats`]:
//!
//! - `process_resident_memory_bytes`: the resident set, under the name Prometheus'
//!   client libraries give it, so the usual dashboards and alerts find it;
//! - `ccmetrics_allocator_bytes{kind}`: jemalloc's account, `kind` one of `allocated`
//!   (live allocations: what the program holds), `active`, `metadata`, `resident`,
//!   `retained` (`crate::alloc::AllocatorStats` defines them). Only in a build with the
//!   `alloc-stats` feature (`cargo build --release --features alloc-stats`).
//!
//! RSS that grows while `allocated` stays flat is memory the allocator holds, not
//! state the daemon keeps (docs/reliability.md, "Soak").

use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};

use super::metrics::{desc, family, gauge, label};
use crate::alloc::{AllocatorStats, memory_stats};

const RSS: (&str, &str) = (
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
);
const ALLOCATOR: (&str, &str) = (
    "ccmetrics_allocator_bytes",
    "Bytes by jemalloc's account, by kind: allocated (live allocations), active (pages holding them), metadata, resident (pages the allocator maps), retained (address space kept, not resident).",
);

/// Reads the memory statistics at every collection (a scrape).
pub struct MemoryCollector {
    descs: Vec<Desc>,
}

impl MemoryCollector {
    /// Register the families in `registry` (`serve` does, once).
    pub fn register(registry: &Registry) -> Result<(), prometheus::Error> {
        let descs = vec![
            desc(RSS.0, RSS.1, &[])?,
            desc(ALLOCATOR.0, ALLOCATOR.1, &["kind"])?,
        ];
        registry.register(Box::new(MemoryCollector { descs }))
    }
}

impl Collector for MemoryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = memory_stats();
        let mut out = Vec::new();
        if let Some(rss) = m.rss {
            out.push(family(
                RSS.0,
                RSS.1,
                MetricType::GAUGE,
                vec![gauge(vec![], rss as f64)],
            ));
        }
        if let Some(a) = m.allocator {
            let AllocatorStats {
                allocated,
                active,
                metadata,
                resident,
                retained,
            } = a;
            let kinds = [
                ("allocated", allocated),
                ("active", active),
                ("metadata", metadata),
                ("resident", resident),
                ("retained", retained),
            ];
            let metrics = kinds
                .into_iter()
                .map(|(k, v)| gauge(vec![label("kind", k)], v as f64))
                .collect();
            out.push(family(ALLOCATOR.0, ALLOCATOR.1, MetricType::GAUGE, metrics));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families are gathered with live values: an RSS, and with jemalloc every
    /// kind, `allocated` no more than `resident`.
    #[test]
    fn memory_families_carry_live_values() {
        let registry = Registry::new();
        MemoryCollector::register(&registry).unwrap();
        let families = registry.gather();
        let value = |name: &str, kind: Option<&str>| {
            families
                .iter()
                .find(|f| f.name() == name)?
                .get_metric()
                .iter()
                .find(|m| kind.is_none_or(|k| m.get_label().iter().any(|l| l.value() == k)))
                .map(|m| m.get_gauge().get_value())
        };
        assert!(value(RSS.0, None).unwrap() > 1e6);
        if cfg!(all(target_os = "linux", feature = "alloc-stats")) {
            let allocated = value(ALLOCATOR.0, Some("allocated")).unwrap();
            let resident = value(ALLOCATOR.0, Some("resident")).unwrap();
            assert!(
                allocated > 0.0 && allocated <= resident,
                "{allocated} {resident}"
            );
            for k in ["active", "metadata", "retained"] {
                assert!(value(ALLOCATOR.0, Some(k)).is_some(), "{k}");
            }
        } else {
            assert!(value(ALLOCATOR.0, None).is_none());
        }
        // A second registration of the same names is refused: nothing else can clash.
        assert!(MemoryCollector::register(&registry).is_err());
    }
}
