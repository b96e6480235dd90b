//! Latency histograms with HDR bucketing and signed counts.
//!
//! Open windows hold a sparse, signed bin list: small for the many per-agent windows
//! (a handful of contacts each; the few histograms with hundreds of bins turn into a
//! dense array, see [`DENSE_AT`]) and able to take a correction (`-1`) exactly, which
//! `hdrhistogram` counts cannot. Bins are HDR bins (2 significant digits, so ≤ 1 %
//! relative error), so converting to an [`hdrhistogram::Histogram`] for storage,
//! merging and percentiles is lossless.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use hdrhistogram::Histogram;
use smallvec::SmallVec;

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

/// Bins a histogram holds sparse before it turns dense. A sparse record is a binary
/// search plus, for a new bin, a shift of the bins above it; the centre's, channels' and
/// big queues' histograms reach hundreds of distinct bins per window, where that search
/// and shift were most of the time the engine spent in histograms. Dense, a record is
/// one add into an array over the HDR slots from the lowest to the highest value seen
/// (1 KB per doubling of the value range, rounded out to whole doublings: a histogram
/// of handle times from 1 minute to 1 hour spans 6 doublings, 6 KB, where its sparse
/// list at 256 bins is 4 KB and at its ~700 possible bins 11 KB). The many per-agent
/// histograms (a handful of bins) stay sparse.
const DENSE_AT: usize = 256;

/// Slots per doubling of the value range in the HDR layout (past bucket 0).
const SLOTS_PER_DOUBLING: usize = SUB_BUCKET_HALF as usize;

/// HDR layout of our bounds (lowest 1, 2 significant digits): 256 sub-buckets per
/// bucket (half of them used past bucket 0), unit magnitude 0. `index_of` and
/// `bin_of` are hdrhistogram's `index_for` and `lowest_equivalent` for that layout,
/// computed without going through a `Histogram` (a test checks them against it).
const SUB_BUCKET_HALF_MAGNITUDE: u32 = 7;
const SUB_BUCKET_HALF: u64 = 1 << SUB_BUCKET_HALF_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (SUB_BUCKET_HALF << 1) - 1;
const LEADING_ZERO_BASE: u32 = 64 - (SUB_BUCKET_HALF_MAGNITUDE + 1);

/// (bucket, sub-bucket) of a value already clamped to [`MAX_VALUE_MS`].
const fn loc(ms: u64) -> (u32, u64) {
    let bucket = LEADING_ZERO_BASE - (ms | SUB_BUCKET_MASK).leading_zeros();
    (bucket, ms >> bucket)
}

/// HDR counts index of `ms` (clamped): the dense array's slot.
const fn index_of(ms: u64) -> usize {
    let (bucket, sub) = loc(if ms < MAX_VALUE_MS { ms } else { MAX_VALUE_MS });
    (((bucket as u64 + 1) << SUB_BUCKET_HALF_MAGNITUDE) + sub - SUB_BUCKET_HALF) as usize
}

// Every HDR index of our layout fits a sparse bin's `u16`.
const _: () = assert!(index_of(MAX_VALUE_MS) <= u16::MAX as usize);

/// [`index_of`] as a sparse bin holds it (lossless: the assertion above).
fn sparse_index(ms: u64) -> u16 {
    index_of(ms) as u16
}

/// One non-zero bin of a sparse histogram: its HDR index (`INDEX_BINS[index]` is its
/// value) and its count. 8 bytes where `(value, count)` as two 64-bit words was 16:
/// an open window holds a sparse histogram per measure and key, and a day's windows
/// of 10 k agents grow bins for the whole day (docs/performance.md, "eighteenth
/// round"). A count past `i32` turns the histogram dense (`i64` counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bin {
    index: u16,
    count: i32,
}

impl Bin {
    /// `(index, count)` with the count widened, for sums that may leave `i32`.
    fn wide(self) -> (u16, i64) {
        (self.index, i64::from(self.count))
    }
}

/// A dense histogram's counts: per HDR index from `lo` on (`INDEX_BINS[lo + i]` is
/// slot `i`'s value); `nonzero` of them not zero.
#[derive(Clone, Debug, Default)]
struct Dense {
    lo: usize,
    counts: Vec<i64>,
    nonzero: usize,
}

impl Dense {
    /// Add `count` at HDR index `i`, extending the range to whole doublings first when
    /// `i` is outside it. An empty range starts at `i` (the lowest bin, when a sparse
    /// list turns dense in order; the rest only extend it upwards).
    fn add(&mut self, i: usize, count: i64) {
        if self.counts.is_empty() {
            self.lo = i;
        }
        if i < self.lo {
            // Values below the range are rare once it is established, and each extension
            // downwards shifts the array.
            let new_lo = i - i % SLOTS_PER_DOUBLING;
            self.counts
                .splice(0..0, std::iter::repeat_n(0, self.lo - new_lo));
            self.lo = new_lo;
        }
        if i - self.lo >= self.counts.len() {
            let hi = (i / SLOTS_PER_DOUBLING + 1) * SLOTS_PER_DOUBLING;
            self.counts.resize(hi.min(INDEX_BINS.len()) - self.lo, 0);
        }
        // In range now (index_of < INDEX_BINS.len(), tested); `get_mut` keeps a slip
        // from panicking.
        if let Some(c) = self.counts.get_mut(i - self.lo) {
            let before = *c;
            *c += count;
            match (before == 0, *c == 0) {
                (true, false) => self.nonzero += 1,
                (false, true) => self.nonzero -= 1,
                _ => {}
            }
        }
    }
}

/// Bins a sparse histogram holds in place, without a heap allocation. Most open
/// windows' histograms are an agent's in a quarter-hour: one to a few contacts, so
/// one to a few bins. On the heap, each of them was an allocation at its first value
/// and a free when its window was written, and the growth of longer lists was a
/// reallocation at every doubling: 264,000 of those per million events, a tenth of
/// the instructions of the thread that applies facts to the windows
/// (docs/performance.md, "forty-second round"). 16 bytes in place make a histogram
/// 48 bytes instead of 24; the memory suite's peak at 10 k agents with the spill
/// moved by 2 MiB.
const INLINE_BINS: usize = 4;

/// A sparse histogram's bins, the first [`INLINE_BINS`] in place.
type SparseBins = SmallVec<[Bin; INLINE_BINS]>;

/// Sparse or dense signed bins; see [`DENSE_AT`]. The rare dense form is boxed, so a
/// histogram is the sparse list's 40 bytes and a tag (three per accumulator).
#[derive(Clone, Debug)]
enum Bins {
    /// Sorted by index, no zero counts.
    Sparse(SparseBins),
    Dense(Box<Dense>),
}

const _: () = assert!(size_of::<Hist>() == 48);

/// Add `count` at index `index` of sorted sparse bins: `Some(true)` when a bin was
/// inserted, `None` (bins unchanged) when the count would not fit a [`Bin`].
fn sparse_add(bins: &mut SparseBins, index: u16, count: i64) -> Option<bool> {
    match bins.binary_search_by_key(&index, |b| b.index) {
        Ok(i) => {
            let c = i32::try_from(i64::from(bins[i].count) + count).ok()?;
            if c == 0 {
                bins.remove(i);
            } else {
                bins[i].count = c;
            }
            Some(false)
        }
        Err(i) => {
            let count = i32::try_from(count).ok()?;
            bins.insert(i, Bin { index, count });
            Some(true)
        }
    }
}

impl Default for Bins {
    fn default() -> Self {
        Bins::Sparse(SparseBins::new())
    }
}

/// Sparse signed histogram of millisecond values (dense once large, see [`DENSE_AT`]).
///
/// Stored and checkpointed as its sorted non-zero `(bin, count)` list whatever its
/// in-memory form, so the encoding is the one checkpoint format 4 has always had.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(from = "SparseHist")]
pub struct Hist {
    bins: Bins,
}

/// The serialized form of a [`Hist`].
#[derive(serde::Deserialize)]
struct SparseHist {
    bins: Vec<(u64, i64)>,
}

impl From<SparseHist> for Hist {
    fn from(s: SparseHist) -> Hist {
        Hist::from_sorted(s.bins)
    }
}

impl serde::Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct Seq<'a>(&'a Hist);
        impl serde::Serialize for Seq<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for b in self.0.iter() {
                    seq.serialize_element(&b)?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("Hist", 1)?;
        st.serialize_field("bins", &Seq(self))?;
        st.end()
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Hist) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Hist {}

impl Hist {
    pub fn new() -> Self {
        Hist::default()
    }

    /// From bins sorted by value without zero counts (a decoded or stored list).
    fn from_sorted(bins: Vec<(u64, i64)>) -> Hist {
        let sparse: Option<SparseBins> = bins
            .iter()
            .map(|&(value, count)| {
                Some(Bin {
                    index: sparse_index(value),
                    count: i32::try_from(count).ok().filter(|c| *c != 0)?,
                })
            })
            .collect();
        // The sparse form's order and non-zero counts are invariants the rest of this
        // file relies on. A list that breaks them is not one this code writes (a
        // damaged checkpoint behind a matching checksum, a hand-edited row): it is
        // added up bin by bin below instead of trusted.
        let sparse = sparse.filter(|s| s.windows(2).all(|w| w[0].index < w[1].index));
        let mut h = Hist::new();
        match sparse {
            Some(sparse) => {
                h.bins = Bins::Sparse(sparse);
                h.densify_if_large();
            }
            // A count past `i32` (a stored row merged over a long period), or a list
            // out of order.
            None => {
                h.densify();
                // Each bin's counts added up first, saturating, and recorded once: a
                // damaged list repeating a bin with huge counts must not overflow here
                // (a restored checkpoint's accumulators are then checked for
                // plausible counts, `Acc::plausible`).
                let mut sums: BTreeMap<usize, (u64, i64)> = BTreeMap::new();
                for (value, count) in bins {
                    let sum = sums.entry(index_of(value)).or_insert((value, 0));
                    sum.1 = sum.1.saturating_add(count);
                }
                for (value, count) in sums.into_values() {
                    h.record(value, count);
                }
            }
        }
        h
    }

    /// The HDR bin (its lowest equivalent value) that holds `ms`.
    pub fn bin_of(ms: u64) -> u64 {
        let (bucket, sub) = loc(ms.min(MAX_VALUE_MS));
        sub << bucket
    }

    /// Add `count` (may be negative, to retract) observations of `ms`.
    pub fn record(&mut self, ms: u64, count: i64) {
        if count == 0 {
            return;
        }
        if let Bins::Sparse(bins) = &mut self.bins {
            match sparse_add(bins, sparse_index(ms), count) {
                Some(inserted) => {
                    if inserted {
                        self.densify_if_large();
                    }
                    return;
                }
                // The count outgrew `i32`: dense bins count in `i64`.
                None => self.densify(),
            }
        }
        if let Bins::Dense(d) = &mut self.bins {
            d.add(index_of(ms), count);
        }
    }

    fn densify_if_large(&mut self) {
        if matches!(&self.bins, Bins::Sparse(bins) if bins.len() > DENSE_AT) {
            self.densify();
        }
    }

    /// Turn sparse bins dense (whatever their number).
    fn densify(&mut self) {
        let Bins::Sparse(bins) = &self.bins else {
            return;
        };
        let mut d = Dense::default();
        for b in bins {
            let (index, count) = b.wide();
            d.add(usize::from(index), count);
        }
        self.bins = Bins::Dense(Box::new(d));
    }

    pub fn merge(&mut self, other: &Hist) {
        self.add(other, 1);
    }

    /// Undo a [`Hist::merge`] of `other` (bins are signed, so this is exact).
    pub fn unmerge(&mut self, other: &Hist) {
        self.add(other, -1);
    }

    /// Add `sign` × `other`'s counts.
    fn add(&mut self, other: &Hist, sign: i64) {
        // A handful of bins (most agents' windows) is inserted in place, without a
        // new list.
        if let (Bins::Sparse(mine), Bins::Sparse(theirs)) = (&mut self.bins, &other.bins)
            && theirs.len() > 4
        {
            // Both sorted: one pass over the two lists. Bin by bin, each of `other`'s
            // bins was a binary search and an insertion shifting the tail, which made
            // merging a day's 96 quarter-hours into its window quadratic in the bins.
            let mut out = SparseBins::with_capacity(mine.len() + theirs.len());
            let (mut i, mut j) = (0, 0);
            let merged = loop {
                let next = match (mine.get(i), theirs.get(j)) {
                    (Some(x), Some(y)) if x.index == y.index => {
                        i += 1;
                        j += 1;
                        (x.index, x.wide().1 + sign * y.wide().1)
                    }
                    (Some(x), Some(y)) if x.index < y.index => {
                        i += 1;
                        x.wide()
                    }
                    (Some(x), None) => {
                        i += 1;
                        x.wide()
                    }
                    (_, Some(y)) => {
                        j += 1;
                        (y.index, sign * y.wide().1)
                    }
                    (None, None) => break true,
                };
                if next.1 != 0 {
                    let Ok(count) = i32::try_from(next.1) else {
                        break false;
                    };
                    out.push(Bin {
                        index: next.0,
                        count,
                    });
                }
            };
            if merged {
                *mine = out;
                self.densify_if_large();
                return;
            }
            // A count outgrew `i32`: add into dense bins, bin by bin, below.
            self.densify();
        }
        for (bin, count) in other.iter() {
            self.record(bin, sign * count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of non-zero bins.
    fn len(&self) -> usize {
        match &self.bins {
            Bins::Sparse(bins) => bins.len(),
            Bins::Dense(d) => d.nonzero,
        }
    }

    /// Non-zero `(bin value, count)` pairs in ascending bin order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        let values = &*INDEX_BINS;
        let (sparse, dense) = match &self.bins {
            Bins::Sparse(bins) => (
                Some(bins.iter().filter_map(move |b| {
                    // Always there: every index of our layout has its value.
                    let (index, count) = b.wide();
                    Some((*values.get(usize::from(index))?, count))
                })),
                None,
            ),
            Bins::Dense(d) => (
                None,
                Some(
                    d.counts
                        .iter()
                        .zip(values.get(d.lo..).unwrap_or_default().iter())
                        .filter(|(c, _)| **c != 0)
                        .map(|(c, b)| (*b, *c)),
                ),
            ),
        };
        sparse
            .into_iter()
            .flatten()
            .chain(dense.into_iter().flatten())
    }

    /// Total count (net of retractions).
    pub fn count(&self) -> i64 {
        self.iter().map(|b| b.1).sum()
    }

    /// Convert to an HDR histogram; fails if any bin is net negative.
    pub fn to_hdr(&self) -> Result<Histogram<u64>, HistError> {
        let mut h = empty_hdr();
        for (value, count) in self.iter() {
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
    ///
    /// Written straight from the non-zero bins, byte for byte what hdrhistogram's
    /// `V2Serializer` writes for [`Hist::to_hdr`] (a property test holds the two
    /// equal): going through a `Histogram` zeroed and walked its full counts array
    /// (thousands of slots) for a row with a few bins, which made encoding a tenth of
    /// `replay`'s writer thread.
    pub fn encode(&self) -> Result<Vec<u8>, HistError> {
        let mut buf = Vec::with_capacity(V2_HEADER_LEN + 4 * self.len() + 1);
        buf.extend_from_slice(&V2_COOKIE.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes()); // payload length, set below
        buf.extend_from_slice(&0u32.to_be_bytes()); // normalizing index offset
        buf.extend_from_slice(&u32::from(SIGFIG).to_be_bytes());
        buf.extend_from_slice(&1u64.to_be_bytes()); // lowest discernible value
        buf.extend_from_slice(&MAX_VALUE_MS.to_be_bytes());
        buf.extend_from_slice(&1.0f64.to_bits().to_be_bytes()); // integer to double ratio
        // Counts up to the highest non-zero index: a count as itself, a run of empty
        // indexes as its negated length (a single empty index as a zero count).
        let mut next = 0;
        for (value, count) in self.iter() {
            if count < 0 {
                return Err(HistError::Negative { value, count });
            }
            let i = index_of(value);
            match i - next {
                0 => {}
                1 => write_varint(&mut buf, 0),
                run => write_varint(&mut buf, zig_zag(-(run as i64))),
            }
            write_varint(&mut buf, zig_zag(count));
            next = i + 1;
        }
        if next == 0 {
            // An empty histogram writes the zero count of index 0.
            write_varint(&mut buf, 0);
        }
        let payload = u32::try_from(buf.len() - V2_HEADER_LEN)
            .map_err(|_| HistError::Encode("payload over 4 GiB".into()))?;
        buf[4..8].copy_from_slice(&payload.to_be_bytes());
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
        let mut out = Vec::new();
        let (mut pos, mut index) = (0usize, 0usize);
        while pos < payload.len() {
            let (zz, n) = varint(&payload[pos..])?;
            pos += n;
            let v = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            if v < 0 {
                index = index.checked_add(usize::try_from(v.unsigned_abs()).ok()?)?;
            } else {
                if v > 0 {
                    out.push((*bins.get(index)?, v));
                }
                index = index.checked_add(1)?;
            }
        }
        Some(Hist::from_sorted(out))
    }

    /// Value at quantile `q` (0..=1) in milliseconds, `None` when empty (or a bin is
    /// net negative).
    ///
    /// hdrhistogram's `value_at_quantile`, step for step, over the non-zero bins (the
    /// property test `quantile_is_hdrhistograms` holds the two equal): going through
    /// [`Hist::to_hdr`] allocated and zeroed a full counts array (~24 KiB) per call,
    /// several calls per exported row, `memset` and page faults a quarter of an
    /// export's time (docs/performance.md, "thirteenth round").
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let mut total: u64 = 0;
        for (_, count) in self.iter() {
            total = total.saturating_add(u64::try_from(count).ok()?);
        }
        if total == 0 {
            return None;
        }
        let q = if q > 1.0 { 1.0 } else { q };
        // Part-way into the next count means that count; at least the first one.
        let at = ((q * total as f64).ceil() as u64).max(1);
        let mut seen: u64 = 0;
        for (value, count) in self.iter() {
            // Non-negative: checked above.
            seen = seen.saturating_add(count.unsigned_abs());
            if seen >= at {
                return Some(if q == 0.0 {
                    TEMPLATE.lowest_equivalent(value)
                } else {
                    TEMPLATE.highest_equivalent(value)
                });
            }
        }
        Some(0)
    }

    /// Number of observations <= `ms` (for Prometheus cumulative buckets).
    pub fn count_le(&self, ms: u64) -> i64 {
        let limit = TEMPLATE.highest_equivalent(ms.min(MAX_VALUE_MS));
        self.iter().take_while(|b| b.0 <= limit).map(|b| b.1).sum()
    }
}

fn zig_zag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Append `v` as HDR V2's LEB128: 7 bits per byte, high bit set while more follow,
/// and a 9th byte (if reached) carrying a full 8 bits.
fn write_varint(buf: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            buf.push(v as u8);
            return;
        }
        buf.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    buf.push(v as u8);
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
        assert_eq!(h.iter().collect::<Vec<_>>(), [(Hist::bin_of(20_000), 2)]);
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

    /// `index_of` and `bin_of` are hdrhistogram's own arithmetic for our layout.
    #[test]
    fn index_and_bin_match_hdrhistogram() {
        let mut values: Vec<u64> = (0..70_000).collect();
        for shift in 0..64 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, p.saturating_mul(3) / 2]);
        }
        values.extend([MAX_VALUE_MS - 1, MAX_VALUE_MS, MAX_VALUE_MS + 1, u64::MAX]);
        for v in values {
            let expected = TEMPLATE.lowest_equivalent(v.min(MAX_VALUE_MS));
            assert_eq!(Hist::bin_of(v), expected, "bin of {v}");
            assert_eq!(INDEX_BINS[index_of(v)], expected, "index of {v}");
        }
        assert!(index_of(MAX_VALUE_MS) < INDEX_BINS.len());
    }

    /// A dense histogram's range grows both ways, to the layout's ends.
    #[test]
    fn dense_range_grows_down_and_up() {
        let mut h = Hist::new();
        // 257 consecutive HDR slots from slot 1000 (values ~1.3 s to ~4.3 s).
        for &v in &INDEX_BINS[1000..=1000 + DENSE_AT] {
            h.record(v, 1);
        }
        assert!(matches!(h.bins, Bins::Dense { .. }));
        for v in [0, 1, 255, 256, 999, 600_000, MAX_VALUE_MS, u64::MAX] {
            h.record(v, 2);
        }
        let got: Vec<(u64, i64)> = h.iter().collect();
        assert_eq!(
            got.len(),
            DENSE_AT + 1 + 7,
            "u64::MAX and MAX_VALUE_MS share a bin"
        );
        assert_eq!(got.first(), Some(&(0, 2)));
        assert_eq!(got.last(), Some(&(Hist::bin_of(MAX_VALUE_MS), 4)));
        assert_eq!(h.count(), DENSE_AT as i64 + 1 + 16);
        h.record(0, -2);
        assert_eq!(h.iter().next(), Some((1, 2)));
        let back = Hist::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(back, h);
    }

    /// hdrhistogram's own V2 bytes for `h`: what [`Hist::encode`] must write.
    fn hdr_v2(h: &Hist) -> Vec<u8> {
        use hdrhistogram::serialization::{Serializer, V2Serializer};
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&h.to_hdr().unwrap(), &mut buf)
            .unwrap();
        buf
    }

    /// The edges of the direct encoder: empty, index 0, a single empty index between
    /// two counts (written as a zero count), runs, the top of the range, and counts
    /// that need every varint length up to the 9-byte form.
    #[test]
    fn encode_writes_hdrhistogram_v2_bytes() {
        let mut cases = vec![Hist::new()];
        for bins in [
            vec![(0, 1)],
            vec![(0, 1), (2, 1)],
            vec![(1, 1), (2, 3), (3, 1)],
            vec![(5, 1), (MAX_VALUE_MS, 2)],
            vec![
                (1000, 1 << 20),
                (2000, 1 << 40),
                (3000, (1 << 56) + 5),
                (4000, i64::MAX),
            ],
        ] {
            let mut h = Hist::new();
            for (v, n) in bins {
                h.record(v, n);
            }
            cases.push(h);
        }
        for h in cases {
            assert_eq!(h.encode().unwrap(), hdr_v2(&h), "{h:?}");
        }
    }

    /// Two sparse histograms whose merged count outgrows a sparse bin's `i32` (the
    /// one-pass merge of sorted lists) give the exact sum, dense; so does a record.
    #[test]
    fn merged_counts_past_i32_turn_dense() {
        let big = 2_000_000_000i64;
        let mut h = Hist::new();
        h.record(10, big);
        let mut o = Hist::new();
        for v in [10, 20, 30, 40, 50] {
            o.record(v, big);
        }
        assert!(matches!(o.bins, Bins::Sparse(_)));
        h.merge(&o);
        assert!(matches!(h.bins, Bins::Dense(_)));
        let want = [(10, 2 * big), (20, big), (30, big), (40, big), (50, big)];
        assert_eq!(h.iter().collect::<Vec<_>>(), want);
        h.unmerge(&o);
        assert_eq!(h.iter().collect::<Vec<_>>(), [(10, big)]);
        let mut r = Hist::new();
        r.record(7, big);
        r.record(7, big);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(7, 2 * big)]);
    }

    /// A stored list out of order, repeating a bin or holding a zero count (not one
    /// this code writes: a damaged checkpoint behind a matching checksum) is added up
    /// bin by bin instead of trusted as the sparse form; huge repeated counts
    /// saturate rather than overflow.
    #[test]
    fn a_stored_list_out_of_order_is_added_up() {
        let mut want = Hist::new();
        for (v, c) in [(5, 2), (900, 1), (40, -3)] {
            want.record(v, c);
        }
        for list in [
            vec![(900, 1), (5, 2), (40, -3)],
            vec![(5, 1), (40, -3), (5, 1), (900, 1)],
            vec![(5, 2), (7, 0), (40, -3), (900, 1)],
        ] {
            let h = Hist::from_sorted(list.clone());
            assert_eq!(
                h.iter().collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>(),
                "{list:?}"
            );
        }
        let h = Hist::from_sorted(vec![(5, i64::MAX), (5, i64::MAX), (1, 1)]);
        assert_eq!(h.iter().collect::<Vec<_>>(), [(1, 1), (5, i64::MAX)]);
    }

    /// A histogram turned dense by one count past `i32` holds the doubling of that
    /// bin, not every slot from 0 up to it.
    #[test]
    fn a_dense_range_starts_at_its_first_bin() {
        let mut h = Hist::new();
        h.record(3_600_000, 3_000_000_000);
        let Bins::Dense(d) = &h.bins else {
            panic!("not dense: {h:?}");
        };
        assert_eq!(d.lo, index_of(3_600_000));
        assert!(
            d.counts.len() <= SLOTS_PER_DOUBLING,
            "{} slots",
            d.counts.len()
        );
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [(Hist::bin_of(3_600_000), 3_000_000_000)]
        );
    }

    #[test]
    fn negative_bins_do_not_encode() {
        let mut h = Hist::new();
        h.record(10, -1);
        assert!(matches!(h.encode(), Err(HistError::Negative { .. })));
    }

    /// `ops` recorded into one histogram and `other` into another merged into it give
    /// what a plain map of bin -> count gives, in memory and stored; unmerging
    /// `other` gives `ops` alone.
    fn agrees_with_a_map(
        ops: &[(u64, i64)],
        other: &[(u64, i64)],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut h = Hist::new();
        let mut model = std::collections::BTreeMap::<u64, i64>::new();
        for &(v, c) in ops {
            h.record(v, c);
            *model.entry(Hist::bin_of(v)).or_default() += c;
        }
        let mut o = Hist::new();
        for &(v, c) in other {
            o.record(v, c);
            *model.entry(Hist::bin_of(v)).or_default() += c;
        }
        h.merge(&o);
        model.retain(|_, c| *c != 0);
        let want: Vec<(u64, i64)> = model.into_iter().collect();
        prop_assert_eq!(h.iter().collect::<Vec<_>>(), want.clone());
        prop_assert_eq!(h.count(), want.iter().map(|b| b.1).sum::<i64>());
        prop_assert_eq!(h.is_empty(), want.is_empty());
        // Stored form: the sorted list, whichever form is in memory.
        let bytes = postcard::to_allocvec(&h).unwrap();
        let plain = postcard::to_allocvec(&(want,)).unwrap();
        prop_assert_eq!(&bytes, &plain);
        let back: Hist = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &h);
        h.unmerge(&o);
        let mut alone = Hist::new();
        for &(v, c) in ops {
            alone.record(v, c);
        }
        prop_assert_eq!(h, alone);
        Ok(())
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

        /// `quantile_ms` answers what hdrhistogram's `value_at_quantile` answers for the
        /// same counts, sparse and dense, at the ends (0, 1, above 1) and in between.
        #[test]
        fn quantile_is_hdrhistograms(
            values in proptest::collection::vec((0u64..MAX_VALUE_MS + 10, 0i64..1_000), 0..80),
            dense_from in proptest::option::of(0usize..2_000),
            qs in proptest::collection::vec(0.0f64..1.0, 1..8),
        ) {
            let mut h = Hist::new();
            for &(v, n) in &values { h.record(v, n); }
            if let Some(n) = dense_from {
                // Enough bins to switch to the dense layout.
                for v in 0..n as u64 { h.record(1 + v * 37, 1); }
            }
            let hdr = h.to_hdr().unwrap();
            for q in qs.into_iter().chain([0.0, 1.0, 1.5, 1e-9, 0.999_999]) {
                let want = (!hdr.is_empty()).then(|| hdr.value_at_quantile(q));
                prop_assert_eq!(h.quantile_ms(q), want, "q={}", q);
            }
        }

        /// The sparse fast path decodes exactly what hdrhistogram's deserializer does.
        #[test]
        fn encode_equals_hdrhistogram_v2(
            values in proptest::collection::vec((0u64..MAX_VALUE_MS + 10, 1i64..1_000_000), 0..80),
            dense_from in proptest::option::of(0usize..2_000),
        ) {
            let mut h = Hist::new();
            for (v, n) in &values {
                h.record(*v, *n);
            }
            // Past DENSE_AT bins the histogram turns dense (zeros inside its range).
            if let Some(from) = dense_from {
                for (k, &b) in INDEX_BINS[from..].iter().step_by(2).take(DENSE_AT + 5).enumerate() {
                    h.record(b, k as i64 + 1);
                }
            }
            prop_assert_eq!(h.encode().unwrap(), hdr_v2(&h));
            prop_assert_eq!(Hist::decode(&h.encode().unwrap()).unwrap(), h);
        }

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

        /// Past [`DENSE_AT`] bins a histogram turns dense; every operation still gives
        /// what a plain map of bin -> count gives, and it stores as the same list.
        #[test]
        fn dense_and_sparse_agree_with_a_map(
            ops in proptest::collection::vec((0u64..5_000_000, -2i64..4), 0..900),
            other in proptest::collection::vec((0u64..5_000_000, 1i64..3), 0..600),
        ) {
            agrees_with_a_map(&ops, &other)?;
        }

        /// A sparse bin counts in an `i32`: counts past it (a stored row merged over a
        /// long period, a centre's all-time totals) turn the histogram dense and stay
        /// exact, by record, by merge and by decoding.
        #[test]
        fn counts_past_i32_stay_exact(
            // `other`'s counts fit an `i32` one by one (it stays sparse), their sums may
            // not, and merging them into `ops` may not either.
            ops in proptest::collection::vec((0u64..300, -3_000_000_000i64..3_000_000_000), 0..40),
            other in proptest::collection::vec((0u64..300, 1i64..2_000_000_000), 0..40),
        ) {
            agrees_with_a_map(&ops, &other)?;
            let mut h = Hist::new();
            for &(v, c) in &other { h.record(v, c); }
            let back = Hist::decode(&h.encode().unwrap()).unwrap();
            prop_assert_eq!(back, h);
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
