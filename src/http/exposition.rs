//! The `/metrics` body, written straight into bytes.
//!
//! Why not only the `prometheus` crate: with per-agent series on, 10 000 agents are
//! ~0.9 M samples. Building one protobuf `Metric` (label strings, bucket vectors) per
//! sample, sorting them in `Registry::gather` and formatting them through
//! `TextEncoder` cost ~0.5 µs a sample (≈ 0.5 s a scrape). The per-dimension families
//! (the counters, histograms and rolling gauges of [`super::metrics`], nearly all of
//! the samples) are written here instead: rows are sorted once, each row's label text
//! is escaped once and shared by the 22 families, and numbers are formatted without
//! allocating. The small families (process-wide counters, the floor, Kafka, `ready`)
//! still come from the registry, and the two lists are merged by name, so the body is
//! byte for byte what `TextEncoder` would write for the same families (a test holds
//! the two equal).
//!
//! The body is handed out in chunks of about [`CHUNK`] bytes as it is written, so
//! `/metrics` streams it: a scrape holds a few chunks rather than the whole body (72 MB
//! at 10 000 agents), the pages are reused instead of faulted in anew for every
//! scrape, and sending overlaps writing.

use std::borrow::Cow;
use std::cmp::Ordering;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::engine::Dimension;
use crate::engine::acc::Acc;

use super::metrics::{
    COUNTERS, HISTOGRAMS, KeptAgents, ROLLING, exported, kept_agents, with_zero_queues,
};
use super::state::{HttpSettings, LiveSnapshot};

/// The bucket bounds of a histogram series of dimension `d`: none (only `+Inf`) on
/// agent rows unless `per_agent_buckets`.
pub(super) fn bucket_bounds(s: &HttpSettings, d: Dimension) -> &[u64] {
    if d == Dimension::Agent && !s.per_agent_buckets {
        &[]
    } else {
        &s.bucket_bounds_ms
    }
}

/// One exported row with its label text (`dimension="queue",queue="q1"`, escaped),
/// in the order `Registry::gather` sorts metrics: by label count, then label values.
struct Row<'a> {
    dim: Dimension,
    /// Label values (window, dimension, key; as many as the row has), for sorting only.
    values: Values<'a>,
    labels: String,
    acc: Cow<'a, Acc>,
}

/// Up to three label values without a heap allocation per row.
#[derive(Default)]
struct Values<'a> {
    v: [&'a str; 3],
    n: usize,
}

impl<'a> Values<'a> {
    fn push(&mut self, s: &'a str) {
        if let Some(slot) = self.v.get_mut(self.n) {
            *slot = s;
            self.n += 1;
        }
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.v[..self.n]
    }
}

fn sort_rows(rows: &mut [Row<'_>]) {
    rows.sort_by(|a, b| {
        let (a, b) = (a.values.as_slice(), b.values.as_slice());
        match a.len().cmp(&b.len()) {
            Ordering::Equal => a.cmp(b),
            o => o,
        }
    });
}

/// Append `name="value"` (value escaped as the text format requires) to `out`.
fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value, true);
    out.push('"');
}

/// The text format's escaping: `\` and newline always, `"` inside label values.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    // Nearly every value needs no escaping: copy it whole.
    if !v
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn dim_values<'a>(values: &mut Values<'a>, d: Dimension, key: &'a str) {
    values.push(d.as_str());
    if d != Dimension::All {
        values.push(key);
    }
}

fn dim_label_text(out: &mut String, d: Dimension, key: &str) {
    push_label(out, "dimension", d.as_str());
    if d != Dimension::All {
        push_label(out, d.as_str(), key);
    }
}

/// Size of the chunks the body is handed out in.
pub const CHUNK: usize = 256 * 1024;

/// Sample writer: a value is formatted as `f64`'s `Display` (what `TextEncoder`
/// writes), through `itoa` when it is a whole number (most samples) and `ryu` when it
/// is a fraction in the range where `ryu` writes the same text.
struct Out<'s> {
    buf: Vec<u8>,
    int: itoa::Buffer,
    float: ryu::Buffer,
    /// Takes each full chunk; `false` when the reader is gone.
    sink: &'s mut dyn FnMut(Vec<u8>) -> bool,
    gone: bool,
}

impl Out<'_> {
    /// Hand out the buffer once it holds a chunk. Called between rows, so a chunk
    /// ends on a line boundary.
    fn maybe_flush(&mut self) {
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || self.gone {
            return;
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + CHUNK / 4));
        self.gone = !(self.sink)(full);
    }

    fn header(&mut self, name: &str, help: &str, ty: &str) {
        let mut h = String::with_capacity(help.len());
        escape_into(&mut h, help, false);
        for part in ["# HELP ", name, " ", &h, "\n# TYPE ", name, " ", ty, "\n"] {
            self.buf.extend_from_slice(part.as_bytes());
        }
    }

    /// `name{labels} value\n`, with `extra` (already `k="v"` text) after `labels`.
    fn sample(&mut self, name: &str, suffix: &str, labels: &str, extra: &str, value: f64) {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(suffix.as_bytes());
        self.buf.push(b'{');
        self.buf.extend_from_slice(labels.as_bytes());
        if !extra.is_empty() {
            self.buf.push(b',');
            self.buf.extend_from_slice(extra.as_bytes());
        }
        self.buf.extend_from_slice(b"} ");
        self.value(value);
        self.buf.push(b'\n');
    }

    fn value(&mut self, v: f64) {
        // Whole numbers below 2^53 print the same through i64 as through f64's
        // Display; -0.0 is the one whole number whose Display differs ("-0").
        if v.fract() == 0.0 && v.abs() < 9.0e15 && !(v == 0.0 && v.is_sign_negative()) {
            let s = self.int.format(v as i64);
            self.buf.extend_from_slice(s.as_bytes());
        } else if ryu_matches_display(v) {
            let s = self.float.format_finite(v);
            self.buf.extend_from_slice(s.as_bytes());
        } else {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(self.buf, "{v}");
        }
    }
}

/// Whether `ryu` prints `v` exactly as `f64`'s `Display` does: both print the shortest
/// digits that round-trip, but `ryu` switches to exponent notation outside
/// [1e-5, 1e16) and prints whole numbers with a `.0`; in between (every ratio, rate
/// and seconds sum a scrape has) the text is the same, at a quarter of the cost.
fn ryu_matches_display(v: f64) -> bool {
    let a = v.abs();
    v.fract() != 0.0 && (1e-5..1e15).contains(&a)
}

/// The per-dimension families of one snapshot, rows sorted and labelled once.
struct DimFamilies<'a> {
    settings: &'a HttpSettings,
    totals: Vec<Row<'a>>,
    rolling: Vec<Row<'a>>,
    /// `le="…"` text per bucket bound, then `le="+Inf"`.
    le: Vec<String>,
}

impl<'a> DimFamilies<'a> {
    fn new(snap: &'a LiveSnapshot, s: &'a HttpSettings, kept: &KeptAgents<'_>) -> DimFamilies<'a> {
        let mut totals: Vec<Row<'a>> =
            with_zero_queues(exported(&snap.totals, s.per_agent_series, kept), snap, s)
                .into_iter()
                .map(|(d, k, acc)| {
                    let mut labels = String::new();
                    dim_label_text(&mut labels, d, k);
                    let mut values = Values::default();
                    dim_values(&mut values, d, k);
                    Row {
                        dim: d,
                        values,
                        labels,
                        acc,
                    }
                })
                .collect();
        sort_rows(&mut totals);
        let mut rolling = Vec::new();
        for w in &s.rolling {
            let Some(rows) = snap.rolling_rows(w.minutes) else {
                continue;
            };
            for (d, k, acc) in exported(rows, s.per_agent_series, kept) {
                let mut labels = String::new();
                push_label(&mut labels, "window", &w.label);
                dim_label_text(&mut labels, d, k);
                let mut values = Values::default();
                values.push(w.label.as_str());
                dim_values(&mut values, d, k);
                rolling.push(Row {
                    dim: d,
                    values,
                    labels,
                    acc,
                });
            }
        }
        sort_rows(&mut rolling);
        let mut le: Vec<String> = s
            .bucket_bounds_ms
            .iter()
            .map(|&ms| {
                let mut t = String::new();
                push_label(&mut t, "le", &(ms as f64 / 1000.0).to_string());
                t
            })
            .collect();
        le.push("le=\"+Inf\"".to_owned());
        DimFamilies {
            settings: s,
            totals,
            rolling,
            le,
        }
    }

    /// Every family name, sorted, with whether it has a series (a family without
    /// series is left out, as `Registry::gather` leaves it out).
    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        if !self.totals.is_empty() {
            names.extend(COUNTERS.iter().map(|c| c.name));
            names.extend(HISTOGRAMS.iter().map(|h| h.name));
        }
        for g in &ROLLING {
            let f = self.settings.sl_formula;
            if self
                .rolling
                .iter()
                .any(|r| (g.value)(&r.acc, f).is_some_and(f64::is_finite))
            {
                names.push(g.name);
            }
        }
        names.sort_unstable();
        names
    }

    fn write(&self, name: &str, out: &mut Out<'_>) {
        if out.gone {
            return;
        }
        if let Some(c) = COUNTERS.iter().find(|c| c.name == name) {
            out.header(c.name, c.help, "counter");
            for r in &self.totals {
                out.sample(c.name, "", &r.labels, "", (c.value)(&r.acc));
                out.maybe_flush();
            }
        } else if let Some(h) = HISTOGRAMS.iter().find(|h| h.name == name) {
            out.header(h.name, h.help, "histogram");
            for r in &self.totals {
                let hist = (h.hist)(&r.acc);
                // Clamped non-negative and non-decreasing, as in `metrics::histogram`.
                let mut prev = 0u64;
                let bounds = bucket_bounds(self.settings, r.dim);
                for (&ms, le) in bounds.iter().zip(&self.le) {
                    prev = prev.max(u64::try_from(hist.count_le(ms)).unwrap_or(0));
                    out.sample(h.name, "_bucket", &r.labels, le, prev as f64);
                }
                let count = prev.max(u64::try_from(hist.count()).unwrap_or(0));
                let inf = self.le.last().map_or("", String::as_str);
                out.sample(h.name, "_bucket", &r.labels, inf, count as f64);
                let sum = (h.sum_ms)(&r.acc) as f64 / 1000.0;
                out.sample(h.name, "_sum", &r.labels, "", sum);
                out.sample(h.name, "_count", &r.labels, "", count as f64);
                out.maybe_flush();
            }
        } else if let Some(g) = ROLLING.iter().find(|g| g.name == name) {
            out.header(g.name, g.help, "gauge");
            for r in &self.rolling {
                if let Some(v) = (g.value)(&r.acc, self.settings.sl_formula)
                    && v.is_finite()
                {
                    out.sample(g.name, "", &r.labels, "", v);
                }
                out.maybe_flush();
            }
        }
    }
}

/// `Registry::gather`'s order of a family's metrics: by label count, then values.
fn sort_metrics(f: &mut MetricFamily) {
    f.mut_metric().sort_by(|a, b| {
        let (la, lb) = (a.get_label(), b.get_label());
        la.len().cmp(&lb.len()).then_with(|| {
            la.iter()
                .map(|l| l.value())
                .cmp(lb.iter().map(|l| l.value()))
        })
    });
}

/// The whole `/metrics` body from one snapshot: the registry's families (Kafka,
/// `ready`), the snapshot's small families ([`super::metrics::families`]) and its
/// per-dimension families, merged by name as `Registry::gather` would. Handed to
/// `sink` in chunks of about [`CHUNK`] bytes, each ending on a line; stops early when
/// `sink` returns `false` (the client went away).
pub fn render_chunks(
    registry: &Registry,
    snap: &LiveSnapshot,
    settings: &HttpSettings,
    sink: &mut dyn FnMut(Vec<u8>) -> bool,
) -> prometheus::Result<()> {
    let (kept, dropped) = kept_agents(snap, settings);
    let dims = DimFamilies::new(snap, settings, &kept);
    let mut small: Vec<MetricFamily> = registry.gather();
    for mut f in super::metrics::families(snap, settings, &kept, dropped) {
        if !f.get_metric().is_empty() {
            sort_metrics(&mut f);
            small.push(f);
        }
    }
    small.sort_by(|a, b| a.name().cmp(b.name()));
    let names = dims.names();
    let mut out = Out {
        buf: Vec::with_capacity(CHUNK + CHUNK / 4),
        int: itoa::Buffer::new(),
        float: ryu::Buffer::new(),
        sink,
        gone: false,
    };
    let encoder = TextEncoder::new();
    let mut next = names.iter().peekable();
    for f in &small {
        while let Some(n) = next.next_if(|n| **n < f.name()) {
            dims.write(n, &mut out);
        }
        encoder.encode(std::slice::from_ref(f), &mut out.buf)?;
        out.maybe_flush();
        if out.gone {
            return Ok(());
        }
    }
    for n in next {
        dims.write(n, &mut out);
    }
    out.flush();
    Ok(())
}

/// [`render_chunks`] into one buffer.
#[cfg(test)]
pub fn render(
    registry: &Registry,
    snap: &LiveSnapshot,
    settings: &HttpSettings,
) -> prometheus::Result<Vec<u8>> {
    let mut body = Vec::new();
    render_chunks(registry, snap, settings, &mut |chunk| {
        body.extend_from_slice(&chunk);
        true
    })?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(v: f64) -> String {
        let mut sink = |_: Vec<u8>| true;
        let mut out = Out {
            buf: Vec::new(),
            int: itoa::Buffer::new(),
            float: ryu::Buffer::new(),
            sink: &mut sink,
            gone: false,
        };
        out.value(v);
        String::from_utf8(out.buf).unwrap_or_default()
    }

    #[test]
    fn values_are_written_as_display_writes_them() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.5,
            1.5,
            2.0 / 3.0,
            1e-5,
            1.5e-5,
            9.99e-6,
            1e-7,
            123.456,
            1e15,
            1e15 + 0.5,
            9.0e15,
            1e16,
            1e21,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.3,
            299.99,
            86_399.999,
        ] {
            assert_eq!(written(v), v.to_string(), "{v:e}");
        }
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_display_writes_it(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            prop_assert_eq!(written(v), v.to_string());
        }

        #[test]
        fn ratios_and_seconds_are_written_as_display_writes_them(a in 0u64..10_000_000, b in 1u64..100_000) {
            let v = a as f64 / b as f64;
            prop_assert_eq!(written(v), v.to_string());
            let s = a as f64 / 1000.0;
            prop_assert_eq!(written(s), s.to_string());
        }
    }
}
