//! Latency histograms with HDR bucketing and signed counts.
//!
//! Open windows hold a sparse, signed bin list: small for the many per-agent windows
//! (a handful of contacts each) and able to take a correction (`-1`) exactly, which
//! `hdrhistogram` counts cannot. Bins are HDR bins (2 significant digits, so ≤ 1 %
//! relative error), so converting to an [`hdrhistogram::Histogram`] for storage,
//! merging and percentiles is lossless.

use std::sync::LazyLock;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};

/// Largest recordable value: one year in milliseconds. Larger values are clamped.
pub const MAX_VALUE_MS: u64 = 366 * 24 * 3600 * 1000;
/// Two significant digits: bins are at most 1 % of their value wide.
pub const SIGFIG: u8 = 2;

fn empty_hdr() -> Histogram<u64> {
    // Infallible: the bounds are constants that satisfy 1 <= low, 2*low <= high, sigfig <= 5.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_VALUE_MS, SIGFIG).expect("constant HDR bounds are valid")
}

static TEMPLATE: LazyLock<Histogram<u64>> = LazyLock::new(empty_hdr);

/// Bin value (lowest equivalent) of every HDR counts index of our layout, so a stored
/// histogram decodes straight into sparse bins without a full counts array.
static INDEX_BINS: LazyLock<Vec<u64>> = LazyLock::new(|| {
    TEMPLATE
        .iter_all()
        .map(|v| TEMPLATE.lowest_equivalent(v.value_iterated_to()))
        .collect()
});

/// HDR V2 (uncompressed) cookie: the V2 base 0x1c849303 with the 8-byte word-size flag.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_HEADER_LEN: usize = 40;

/// Error reading a stored histogram.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    #[error("cannot decode stored histogram: {0}")]
    Decode(String),
    #[error("cannot encode histogram: {0}")]
    Encode(String),
    #[error("histogram bin {value} ms would go negative ({count})")]
    Negative { value: u64, count: i64 },
}

/// Sparse signed histogram of millisecond values, bins sorted by value.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hist {
    bins: Vec<(u64, i64)>,
}

impl Hist {
    pub fn new() -> Self {
        Hist::default()
    }

    /// The HDR bin (its lowest equivalent value) that holds `ms`.
    pub fn bin_of(ms: u64) -> u64 {
        TEMPLATE.lowest_equivalent(ms.min(MAX_VALUE_MS))
    }

    /// Add `count` (may be negative, to retract) observations of `ms`.
    pub fn record(&mut self, ms: u64, count: i64) {
        if count == 0 {
            return;
        }
        let bin = Hist::bin_of(ms);
        match self.bins.binary_search_by_key(&bin, |b| b.0) {
            Ok(i) => {
                self.bins[i].1 += count;
                if self.bins[i].1 == 0 {
                    self.bins.remove(i);
                }
            }
            Err(i) => self.bins.insert(i, (bin, count)),
        }
    }

    pub fn merge(&mut self, other: &Hist) {
        for &(bin, count) in &other.bins {
            self.record(bin, count);
        }
    }

    /// Undo a [`Hist::merge`] of `other` (bins are signed, so this is exact).
    pub fn unmerge(&mut self, other: &Hist) {
        for &(bin, count) in &other.bins {
            self.record(bin, -count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    pub fn bins(&self) -> &[(u64, i64)] {
        &self.bins
    }

    /// Total count (net of retractions).
    pub fn count(&self) -> i64 {
        self.bins.iter().map(|b| b.1).sum()
    }

    /// Convert to an HDR histogram; fails if any bin is net negative.
    pub fn to_hdr(&self) -> Result<Histogram<u64>, HistError> {
        let mut h = empty_hdr();
        for &(value, count) in &self.bins {
            let n = u64::try_from(count).map_err(|_| HistError::Negative { value, count })?;
            // Infallible: value <= MAX_VALUE_MS by construction of `record`.
            h.record_n(value, n)
                .map_err(|e| HistError::Encode(format!("{e:?}")))?;
        }
        Ok(h)
    }

    pub fn from_hdr(h: &Histogram<u64>) -> Hist {
        let mut out = Hist::new();
        for v in h.iter_recorded() {
            out.record(v.value_iterated_to(), v.count_at_value() as i64);
        }
        out
    }

    /// HDR V2 serialization (uncompressed): the portable format other HDR tools read.
    pub fn encode(&self) -> Result<Vec<u8>, HistError> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.to_hdr()?, &mut buf)
            .map_err(|e| HistError::Encode(format!("{e:?}")))?;
        Ok(buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<Hist, HistError> {
        if bytes.is_empty() {
            return Ok(Hist::new());
        }
        // Only our own layout is accepted: trusting another header's bounds or payload
        // length would let one damaged row allocate gigabytes.
        Hist::decode_v2_sparse(bytes).ok_or_else(|| {
            HistError::Decode("not an uncompressed HDR V2 histogram with ccmetrics' layout (1 ms .. 1 y, 2 digits)".into())
        })
    }

    /// Decode a blob in our layout (1 ms .. [`MAX_VALUE_MS`], 2 digits) straight into
    /// sparse bins: walk the zig-zag LEB128 counts (negative = a run of empty indexes)
    /// without building a full counts array. `None` for anything else or a damaged blob.
    fn decode_v2_sparse(b: &[u8]) -> Option<Hist> {
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes)
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let header_ok = u32_at(0)? == V2_COOKIE
            && u32_at(8)? == 0
            && u32_at(12)? == u32::from(SIGFIG)
            && u64_at(16)? == 1
            && u64_at(24)? == MAX_VALUE_MS
            && f64::from_bits(u64_at(32)?) == 1.0;
        if !header_ok {
            return None;
        }
        let len = usize::try_from(u32_at(4)?).ok()?;
        let payload = b.get(V2_HEADER_LEN..V2_HEADER_LEN.checked_add(len)?)?;
        let bins = &*INDEX_BINS;
        let mut out = Hist::new();
        let (mut pos, mut index) = (0usize, 0usize);
        while pos < payload.len() {
            let (zz, n) = varint(&payload[pos..])?;
            pos += n;
            let v = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            if v < 0 {
                index = index.checked_add(usize::try_from(v.unsigned_abs()).ok()?)?;
            } else {
                if v > 0 {
                    out.bins.push((*bins.get(index)?, v));
                }
                index = index.checked_add(1)?;
            }
        }
        Some(out)
    }

    /// Value at quantile `q` (0..=1) in milliseconds, `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let h = self.to_hdr().ok()?;
        if h.is_empty() {
            return None;
        }
        Some(h.value_at_quantile(q))
    }

    /// Number of observations <= `ms` (for Prometheus cumulative buckets).
    pub fn count_le(&self, ms: u64) -> i64 {
        let limit = TEMPLATE.highest_equivalent(ms.min(MAX_VALUE_MS));
        self.bins
            .iter()
            .take_while(|b| b.0 <= limit)
            .map(|b| b.1)
            .sum()
    }
}

/// LEB128 as HDR V2 writes it: up to 9 bytes, the 9th carrying a full 8 bits.
fn varint(s: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *s.get(i)?;
        if i == 8 {
            return Some((v | (u64::from(b) << 56), 9));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;
    use proptest::prelude::*;

    #[test]
    fn retraction_is_exact() {
        let mut h = Hist::new();
        h.record(1500, 1);
        h.record(20_000, 2);
        h.record(1500, -1);
        assert_eq!(h.bins(), &[(Hist::bin_of(20_000), 2)]);
        h.record(20_000, -2);
        assert!(h.is_empty());
    }

    #[test]
    fn roundtrips_through_hdr_v2() {
        let mut h = Hist::new();
        for v in [0, 1, 999, 1000, 59_000, 3_600_000, MAX_VALUE_MS + 5] {
            h.record(v, 3);
        }
        let back = Hist::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(Hist::decode(b"garbage").is_err());
    }

    #[test]
    fn negative_bins_do_not_encode() {
        let mut h = Hist::new();
        h.record(10, -1);
        assert!(matches!(h.encode(), Err(HistError::Negative { .. })));
    }

    proptest! {
        #[test]
        fn quantiles_within_one_percent(mut values in proptest::collection::vec(1u64..10_000_000, 1..300)) {
            let mut h = Hist::new();
            for &v in &values { h.record(v, 1); }
            values.sort_unstable();
            for q in [0.5, 0.9] {
                // Same rank definition as HDR: the smallest value with at least q of the count at or below it.
                let rank = ((q * values.len() as f64).ceil() as usize).max(1);
                let exact = values[rank - 1] as f64;
                let got = h.quantile_ms(q).unwrap() as f64;
                prop_assert!((got - exact).abs() <= exact * 0.01 + 1.0, "q={} exact={} got={}", q, exact, got);
            }
        }

        /// The sparse fast path decodes exactly what hdrhistogram's deserializer does.
        #[test]
        fn sparse_decode_equals_hdr_decode(values in proptest::collection::vec((0u64..MAX_VALUE_MS + 10, 1i64..1_000_000), 0..80)) {
            let mut h = Hist::new();
            for &(v, c) in &values { h.record(v, c); }
            let bytes = h.encode().unwrap();
            let slow: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
            prop_assert_eq!(Hist::decode_v2_sparse(&bytes), Some(Hist::from_hdr(&slow)));
            prop_assert_eq!(Hist::decode(&bytes).unwrap(), h);
        }

        /// A damaged stored blob is an error (or, if still well-formed, some histogram),
        /// never a panic.
        #[test]
        fn damaged_blobs_do_not_panic(pos in 0usize..200, byte in proptest::num::u8::ANY, cut in 0usize..200) {
            let mut h = Hist::new();
            for v in [5u64, 900, 20_000, 3_600_000] { h.record(v, 7); }
            let mut bytes = h.encode().unwrap();
            let p = pos % bytes.len();
            bytes[p] = byte;
            bytes.truncate(cut.max(1).min(bytes.len()));
            let _ = Hist::decode(&bytes);
        }

        #[test]
        fn merge_is_order_independent(a in proptest::collection::vec((0u64..1_000_000, -3i64..4), 0..50),
                                      b in proptest::collection::vec((0u64..1_000_000, -3i64..4), 0..50)) {
            let mut x = Hist::new();
            let mut y = Hist::new();
            for &(v, c) in &a { x.record(v, c); }
            for &(v, c) in &b { y.record(v, c); }
            let mut xy = x.clone(); xy.merge(&y);
            let mut yx = y.clone(); yx.merge(&x);
            prop_assert_eq!(xy, yx);
        }
    }
}
