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
//! **The agent part is rendered once, not per scrape.** Team and agent rows (nearly
//! every sample at 10 000 agents) change only when the publisher captures the agent
//! part of the view (every few seconds; the centre, channels and queues change on
//! every publication). Their text is an [`AgentBlock`]: per family, the bytes of each
//! contiguous run of team or agent rows (rows sort by dimension, so each
//! `(window, dimension)` is one run). A scrape writes the centre's rows and copies the
//! runs in place (reference-counted, not copied), so it costs what the centre costs.
//! [`BlockCache`] keeps the block of the latest agent part; a scrape that finds it stale
//! builds it (and keeps it), and while someone scrapes, every new agent part is
//! rendered ahead on a thread of its own, so the next scrape finds it ready.
//!
//! The body is handed out in chunks of about [`CHUNK`] bytes as it is written, so
//! `/metrics` streams it: a scrape holds a few chunks rather than the whole body (32 MB
//! at 10 000 agents), and sending overlaps writing.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{self, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::engine::acc::Acc;
use crate::engine::{Dimension, Scope};

use super::metrics::{
    COUNTERS, CounterDef, Exported, GaugeDef, HISTOGRAMS, HistDef, KeptAgents, ROLLING, exported,
    kept_agents, with_zero_queues,
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
    body: Body<'a>,
}

// Nearly every row is `Acc` (borrowed; owned only for folded rows), so boxing it would
// add an allocation per row to spare a few placeholders their size.
#[allow(clippy::large_enum_variant)]
enum Body<'a> {
    /// A row written on every scrape.
    Acc(Cow<'a, Acc>),
    /// Stands for run `n` of the [`AgentBlock`] (its rows sort where this one does).
    Run(usize),
}

/// Up to three label values without a heap allocation per row.
#[derive(Default, Clone, Copy)]
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

    /// The values without the last (the key): what the rows of one run share.
    fn prefix(&self) -> &[&'a str] {
        &self.v[..self.n.saturating_sub(1)]
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

/// Runs of the agent block shorter than this are copied into the current chunk; longer
/// ones are handed out as their own (shared) chunks.
const COPY_BELOW: usize = 16 * 1024;

/// Sample writer: a value is formatted as `f64`'s `Display` (what `TextEncoder`
/// writes), through `itoa` when it is a whole number (most samples) and `ryu` when it
/// is a fraction in the range where `ryu` writes the same text.
struct Out<'s> {
    buf: Vec<u8>,
    int: itoa::Buffer,
    float: ryu::Buffer,
    /// Takes each full chunk; `false` when the reader is gone.
    sink: &'s mut dyn FnMut(Bytes) -> bool,
    gone: bool,
}

impl<'s> Out<'s> {
    fn new(sink: &'s mut dyn FnMut(Bytes) -> bool) -> Out<'s> {
        Out {
            buf: Vec::with_capacity(CHUNK + CHUNK / 4),
            int: itoa::Buffer::new(),
            float: ryu::Buffer::new(),
            sink,
            gone: false,
        }
    }

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
        self.gone = !(self.sink)(Bytes::from(full));
    }

    /// Write text rendered earlier (a run of the agent block): small runs are copied,
    /// large ones handed out as they are, after what is buffered.
    fn pieces(&mut self, pieces: &[Bytes]) {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        if len < COPY_BELOW {
            for p in pieces {
                self.buf.extend_from_slice(p);
            }
            self.maybe_flush();
            return;
        }
        self.flush();
        for p in pieces {
            if self.gone {
                return;
            }
            self.gone = !(self.sink)(p.clone());
        }
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
        } else if let Some(s) = in_range_for_ryu(v)
            .then(|| self.float.format_finite(v))
            .filter(|s| !is_tie(v, s))
        {
            self.buf.extend_from_slice(s.as_bytes());
        } else {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(self.buf, "{v}");
        }
    }
}

/// Whether `ryu` writes `v` in `Display`'s notation: both print the shortest digits
/// that round-trip, but `ryu` switches to exponent notation outside [1e-5, 1e16) and
/// prints whole numbers with a `.0`. Inside this range the two texts are the same at a
/// quarter of the cost, except at a tie ([`is_tie`]).
fn in_range_for_ryu(v: f64) -> bool {
    v.fract() != 0.0 && (1e-5..1e14).contains(&v.abs())
}

/// Whether `v` lies exactly midway between two shortest candidates, `printed` (ryu's
/// plain-decimal text of it) being one: then ryu rounds the last digit half to even and
/// `Display` rounds it half up, and the texts differ (-90896891695788.625 is
/// "-90896891695788.62" to ryu, "-90896891695788.63" to `Display`: found by the
/// property test below). A tie needs the exact binary value's decimal expansion to be
/// one digit longer than the printed one, ending in 5; a dyadic `m · 2^q` with `m` odd
/// and `q < 0` has exactly `-q` fractional digits, the last a 5. So the check is exact:
/// no tie is missed, and nothing else is sent to `Display`'s slower path.
fn is_tie(v: f64, printed: &str) -> bool {
    let exact = exact_fraction_digits(v);
    // Most values (ratios, seconds) are no short dyadic: their expansions run to dozens
    // of digits, longer than the whole text, and the text need not be read.
    if exact > printed.len() {
        return false;
    }
    let printed_digits = printed.split_once('.').map_or(0, |(_, f)| f.len());
    exact == printed_digits + 1
}

/// The number of fractional digits of `v`'s exact decimal expansion (finite `v`).
fn exact_fraction_digits(v: f64) -> usize {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    // value = mantissa · 2^exp, as IEEE 754 lays it out (subnormals without the
    // implicit bit).
    let (mantissa, exp) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    };
    if mantissa == 0 {
        return 0;
    }
    let q = exp + mantissa.trailing_zeros() as i32;
    usize::try_from(-q).unwrap_or(0)
}

/// One per-dimension family.
#[derive(Clone, Copy)]
enum Fam {
    Counter(&'static CounterDef),
    Hist(&'static HistDef),
    Gauge(&'static GaugeDef),
}

impl Fam {
    fn all() -> impl Iterator<Item = Fam> {
        COUNTERS
            .iter()
            .map(Fam::Counter)
            .chain(HISTOGRAMS.iter().map(Fam::Hist))
            .chain(ROLLING.iter().map(Fam::Gauge))
    }

    fn name(self) -> &'static str {
        match self {
            Fam::Counter(c) => c.name,
            Fam::Hist(h) => h.name,
            Fam::Gauge(g) => g.name,
        }
    }
}

/// Which rows of a snapshot a row list holds: the centre's (`all`, channels, queues),
/// written on every scrape, or the agent part's (teams, agents), kept in an
/// [`AgentBlock`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Centre,
    Agents,
}

impl Part {
    fn has(self, d: Dimension) -> bool {
        Scope::Centre.has(d) == (self == Part::Centre)
    }
}

/// A part's rows, labelled and sorted: `totals` for the counters and histograms,
/// `rolling` (every window) for the gauges.
struct RowLists<'a> {
    totals: Vec<Row<'a>>,
    rolling: Vec<Row<'a>>,
}

impl<'a> RowLists<'a> {
    fn new(
        snap: &'a LiveSnapshot,
        s: &'a HttpSettings,
        kept: &KeptAgents<'_>,
        part: Part,
    ) -> RowLists<'a> {
        // The centre part has no team or agent rows: asking `exported` for none also
        // skips folding the agents outside `kept` into `__overflow__` on every scrape.
        let per_agent = s.per_agent_series && part == Part::Agents;
        let mut src: Exported<'a> = exported(&snap.totals, per_agent, kept);
        if part == Part::Centre {
            src = with_zero_queues(src, snap, s);
        }
        let mut totals: Vec<Row<'a>> = src
            .into_iter()
            .filter(|(d, _, _)| part.has(*d))
            .map(|(d, k, acc)| row(None, d, k, acc))
            .collect();
        sort_rows(&mut totals);
        let mut rolling = Vec::new();
        for w in &s.rolling {
            let Some(rows) = snap.rolling_rows(w.minutes) else {
                continue;
            };
            for (d, k, acc) in exported(rows, per_agent, kept) {
                if part.has(d) {
                    rolling.push(row(Some(&w.label), d, k, acc));
                }
            }
        }
        sort_rows(&mut rolling);
        RowLists { totals, rolling }
    }

    /// The rows family `f` is written from.
    fn of(&self, f: Fam) -> &[Row<'a>] {
        match f {
            Fam::Gauge(_) => &self.rolling,
            Fam::Counter(_) | Fam::Hist(_) => &self.totals,
        }
    }
}

fn row<'a>(window: Option<&'a str>, d: Dimension, k: &'a str, acc: Cow<'a, Acc>) -> Row<'a> {
    let mut labels = String::new();
    let mut values = Values::default();
    if let Some(w) = window {
        push_label(&mut labels, "window", w);
        values.push(w);
    }
    dim_label_text(&mut labels, d, k);
    dim_values(&mut values, d, k);
    Row {
        dim: d,
        values,
        labels,
        body: Body::Acc(acc),
    }
}

/// `le="…"` text per bucket bound, then `le="+Inf"`.
fn le_labels(s: &HttpSettings) -> Vec<String> {
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
    le
}

/// A rolling gauge's value on a row, when it has a sample.
fn gauge_value(g: &GaugeDef, s: &HttpSettings, acc: &Acc) -> Option<f64> {
    (g.value)(acc, s.sl_formula).filter(|v| v.is_finite())
}

/// Write the samples of family `f` for `rows` (not its header); runs come from `block`.
fn write_rows(
    f: Fam,
    s: &HttpSettings,
    le: &[String],
    rows: &[Row<'_>],
    block: Option<&AgentBlock>,
    out: &mut Out<'_>,
) {
    for r in rows {
        if out.gone {
            return;
        }
        let acc = match &r.body {
            Body::Acc(acc) => acc,
            Body::Run(n) => {
                if let Some(pieces) = block.and_then(|b| b.run(f, *n)) {
                    out.pieces(pieces);
                }
                continue;
            }
        };
        match f {
            Fam::Counter(c) => out.sample(c.name, "", &r.labels, "", (c.value)(acc)),
            Fam::Hist(h) => {
                let hist = (h.hist)(acc);
                // Clamped non-negative and non-decreasing, as in `metrics::histogram`.
                let mut prev = 0u64;
                for (&ms, le) in bucket_bounds(s, r.dim).iter().zip(le) {
                    prev = prev.max(u64::try_from(hist.count_le(ms)).unwrap_or(0));
                    out.sample(h.name, "_bucket", &r.labels, le, prev as f64);
                }
                let count = prev.max(u64::try_from((h.count)(acc)).unwrap_or(0));
                let inf = le.last().map_or("", String::as_str);
                out.sample(h.name, "_bucket", &r.labels, inf, count as f64);
                let sum = (h.sum_ms)(acc) as f64 / 1000.0;
                out.sample(h.name, "_sum", &r.labels, "", sum);
                out.sample(h.name, "_count", &r.labels, "", count as f64);
            }
            Fam::Gauge(g) => {
                if let Some(v) = gauge_value(g, s, acc) {
                    out.sample(g.name, "", &r.labels, "", v);
                }
            }
        }
        out.maybe_flush();
    }
}

/// Where a run of the agent block sorts: its window (rolling rows) and dimension.
struct RunKey {
    window: Option<String>,
    dim: Dimension,
}

impl RunKey {
    /// The row standing for run `n`: it sorts where the run's rows do (the key `""`
    /// sorts before theirs, and no centre row shares the window and dimension).
    fn placeholder(&self, n: usize) -> Row<'_> {
        let mut values = Values::default();
        if let Some(w) = &self.window {
            values.push(w);
        }
        values.push(self.dim.as_str());
        values.push("");
        Row {
            dim: self.dim,
            values,
            labels: String::new(),
            body: Body::Run(n),
        }
    }
}

/// Split sorted agent-part rows into runs of one window and dimension.
fn runs(rows: &[Row<'_>]) -> Vec<(RunKey, std::ops::Range<usize>)> {
    let mut out: Vec<(RunKey, std::ops::Range<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let prefix = r.values.prefix();
        if let Some((_, range)) = out.last_mut()
            && rows[range.start].values.prefix() == prefix
        {
            range.end = i + 1;
            continue;
        }
        let window = (prefix.len() > 1).then(|| prefix[0].to_owned());
        out.push((RunKey { window, dim: r.dim }, i..i + 1));
    }
    out
}

/// The text of a snapshot's agent part (team and agent rows of every per-dimension
/// family), rendered once for every scrape of that part. See the module docs.
pub struct AgentBlock {
    /// [`LiveSnapshot::agent_part`] of the snapshot it was rendered from.
    part: u64,
    /// The settings it was rendered under (a reload makes a new block).
    settings: Arc<HttpSettings>,
    totals_runs: Vec<RunKey>,
    rolling_runs: Vec<RunKey>,
    /// Per family name, the text of each run (in pieces of about [`CHUNK`] bytes).
    text: HashMap<&'static str, Vec<Vec<Bytes>>>,
    /// Rolling gauges with at least one sample among the rows.
    present: HashSet<&'static str>,
}

impl AgentBlock {
    /// Render the agent part of `snap` under `settings`.
    pub fn build(snap: &LiveSnapshot, settings: Arc<HttpSettings>) -> AgentBlock {
        let s = &*settings;
        let (kept, _) = kept_agents(snap, s);
        let lists = RowLists::new(snap, s, &kept, Part::Agents);
        let le = le_labels(s);
        let totals_runs = runs(&lists.totals);
        let rolling_runs = runs(&lists.rolling);
        let mut text = HashMap::new();
        let mut present = HashSet::new();
        for f in Fam::all() {
            let rows = lists.of(f);
            let fam_runs = match f {
                Fam::Gauge(_) => &rolling_runs,
                Fam::Counter(_) | Fam::Hist(_) => &totals_runs,
            };
            let mut per_run = Vec::with_capacity(fam_runs.len());
            for (_, range) in fam_runs {
                let mut pieces: Vec<Bytes> = Vec::new();
                let mut keep = |b: Bytes| {
                    // Give back the chunk buffer's unused capacity: the block lives
                    // for seconds and its small runs would otherwise each hold a
                    // chunk's worth of memory.
                    let mut v: Vec<u8> = b.into();
                    v.shrink_to_fit();
                    pieces.push(Bytes::from(v));
                    true
                };
                let mut out = Out::new(&mut keep);
                write_rows(f, s, &le, &rows[range.clone()], None, &mut out);
                out.flush();
                drop(out);
                per_run.push(pieces);
            }
            if let Fam::Gauge(g) = f
                && rows.iter().any(|r| match &r.body {
                    Body::Acc(acc) => gauge_value(g, s, acc).is_some(),
                    Body::Run(_) => false,
                })
            {
                present.insert(g.name);
            }
            text.insert(f.name(), per_run);
        }
        AgentBlock {
            part: snap.agent_part,
            settings,
            totals_runs: totals_runs.into_iter().map(|(k, _)| k).collect(),
            rolling_runs: rolling_runs.into_iter().map(|(k, _)| k).collect(),
            text,
            present,
        }
    }

    fn run(&self, f: Fam, n: usize) -> Option<&[Bytes]> {
        self.text
            .get(f.name())
            .and_then(|runs| runs.get(n))
            .map(Vec::as_slice)
    }

    /// The [`LiveSnapshot::agent_part`] it was rendered from.
    pub fn part(&self) -> u64 {
        self.part
    }

    /// Bytes of text held.
    pub fn len(&self) -> usize {
        self.text.values().flatten().flatten().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn matches(&self, snap: &LiveSnapshot, settings: &HttpSettings) -> bool {
        self.part != 0 && self.part == snap.agent_part && std::ptr::eq(&*self.settings, settings)
    }
}

/// Blocks are rendered ahead of scrapes while `/metrics` was scraped this recently
/// (nobody pays for rendering when nobody scrapes).
const RENDER_AHEAD_FOR: Duration = Duration::from_secs(120);

type AheadJob = (Arc<LiveSnapshot>, Arc<HttpSettings>);

/// The [`AgentBlock`] of the latest agent part, and the thread that renders the next
/// one as soon as it is published (see the module docs).
#[derive(Default)]
pub struct BlockCache {
    latest: Mutex<Option<Arc<AgentBlock>>>,
    /// When `/metrics` last asked for a block.
    last_scrape: Mutex<Option<Instant>>,
    ahead: OnceLock<std::sync::mpsc::Sender<AheadJob>>,
    /// The last agent part sent to the render-ahead thread.
    sent: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are replaced whole, so a panicked holder leaves them valid.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BlockCache {
    /// The block for `snap`'s agent part under `settings`: the kept one when it
    /// matches, else rendered now (and kept). Marks `/metrics` as being scraped.
    pub fn get(
        self: &Arc<Self>,
        snap: &LiveSnapshot,
        settings: &Arc<HttpSettings>,
    ) -> Arc<AgentBlock> {
        *lock(&self.last_scrape) = Some(Instant::now());
        self.start_ahead();
        if let Some(b) = self.cached(snap, settings) {
            return b;
        }
        let b = Arc::new(AgentBlock::build(snap, settings.clone()));
        self.keep(&b);
        b
    }

    pub(super) fn cached(
        &self,
        snap: &LiveSnapshot,
        settings: &HttpSettings,
    ) -> Option<Arc<AgentBlock>> {
        lock(&self.latest)
            .as_ref()
            .filter(|b| b.matches(snap, settings))
            .cloned()
    }

    /// Keep `b` unless a newer agent part's block is kept already (a slow scrape
    /// finishing late must not replace it).
    fn keep(&self, b: &Arc<AgentBlock>) {
        if b.part == 0 {
            return;
        }
        let mut latest = lock(&self.latest);
        if latest.as_ref().is_none_or(|old| old.part <= b.part) {
            *latest = Some(b.clone());
        }
    }

    /// A snapshot was published: render its agent part ahead when it is new and
    /// `/metrics` was scraped recently.
    pub fn published(&self, snap: &Arc<LiveSnapshot>, settings: Arc<HttpSettings>) {
        if snap.agent_part == 0 {
            return;
        }
        let scraped = lock(&self.last_scrape).is_some_and(|t| t.elapsed() < RENDER_AHEAD_FOR);
        if !scraped || self.sent.swap(snap.agent_part, atomic::Ordering::Relaxed) == snap.agent_part
        {
            return;
        }
        if let Some(tx) = self.ahead.get() {
            let _ = tx.send((snap.clone(), settings));
        }
    }

    fn start_ahead(self: &Arc<Self>) {
        self.ahead.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let cache = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("metrics-ahead".into())
                .spawn(move || render_ahead(&rx, &cache));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the /metrics render-ahead thread; scrapes render the agent part themselves");
            }
            tx
        });
    }
}

/// The render-ahead thread: renders the newest queued agent part; ends with the cache.
fn render_ahead(rx: &std::sync::mpsc::Receiver<AheadJob>, cache: &Weak<BlockCache>) {
    while let Ok(mut job) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            job = newer;
        }
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let (snap, settings) = job;
        if cache.cached(&snap, &settings).is_none() {
            cache.keep(&Arc::new(AgentBlock::build(&snap, settings)));
        }
    }
}

/// The per-dimension families of one snapshot: the centre's rows labelled and
/// sorted, the agent part's runs in place.
struct DimFamilies<'a> {
    settings: &'a HttpSettings,
    rows: RowLists<'a>,
    block: &'a AgentBlock,
    le: Vec<String>,
}

impl<'a> DimFamilies<'a> {
    fn new(
        snap: &'a LiveSnapshot,
        kept: &KeptAgents<'_>,
        block: &'a AgentBlock,
    ) -> DimFamilies<'a> {
        let s = &*block.settings;
        let mut rows = RowLists::new(snap, s, kept, Part::Centre);
        let placeholders =
            |keys: &'a [RunKey]| keys.iter().enumerate().map(|(n, k)| k.placeholder(n));
        rows.totals.extend(placeholders(&block.totals_runs));
        rows.rolling.extend(placeholders(&block.rolling_runs));
        sort_rows(&mut rows.totals);
        sort_rows(&mut rows.rolling);
        DimFamilies {
            settings: s,
            rows,
            block,
            le: le_labels(s),
        }
    }

    /// Every family name, sorted, with whether it has a series (a family without
    /// series is left out, as `Registry::gather` leaves it out).
    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        if !self.rows.totals.is_empty() {
            names.extend(COUNTERS.iter().map(|c| c.name));
            names.extend(HISTOGRAMS.iter().map(|h| h.name));
        }
        for g in &ROLLING {
            if self.rows.rolling.iter().any(|r| match &r.body {
                Body::Acc(acc) => gauge_value(g, self.settings, acc).is_some(),
                Body::Run(_) => self.block.present.contains(g.name),
            }) {
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
        let Some(f) = Fam::all().find(|f| f.name() == name) else {
            return;
        };
        match f {
            Fam::Counter(c) => out.header(c.name, c.help, "counter"),
            Fam::Hist(h) => out.header(h.name, h.help, "histogram"),
            Fam::Gauge(g) => out.header(g.name, g.help, "gauge"),
        }
        write_rows(
            f,
            self.settings,
            &self.le,
            self.rows.of(f),
            Some(self.block),
            out,
        );
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

/// The whole `/metrics` body from one snapshot and the [`AgentBlock`] of its agent
/// part (rendered again here if it is another part's): the registry's families (Kafka,
/// `ready`), the snapshot's small families ([`super::metrics::families`]) and its
/// per-dimension families, merged by name as `Registry::gather` would, under the
/// block's settings. Handed to `sink` in chunks of about [`CHUNK`] bytes, each ending
/// on a line; stops early when `sink` returns `false` (the client went away).
pub fn render_chunks(
    registry: &Registry,
    snap: &LiveSnapshot,
    block: &AgentBlock,
    sink: &mut dyn FnMut(Bytes) -> bool,
) -> prometheus::Result<()> {
    let rebuilt;
    let block = if block.part == snap.agent_part {
        block
    } else {
        rebuilt = AgentBlock::build(snap, block.settings.clone());
        &rebuilt
    };
    let settings = &*block.settings;
    let (kept, dropped) = kept_agents(snap, settings);
    let dims = DimFamilies::new(snap, &kept, block);
    let mut small: Vec<MetricFamily> = registry.gather();
    for mut f in super::metrics::families(snap, settings, &kept, dropped) {
        if !f.get_metric().is_empty() {
            sort_metrics(&mut f);
            small.push(f);
        }
    }
    small.sort_by(|a, b| a.name().cmp(b.name()));
    let names = dims.names();
    let mut out = Out::new(sink);
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

/// [`render_chunks`] into one buffer, the agent part rendered afresh.
#[cfg(test)]
pub fn render(
    registry: &Registry,
    snap: &LiveSnapshot,
    settings: &Arc<HttpSettings>,
) -> prometheus::Result<Vec<u8>> {
    let block = AgentBlock::build(snap, settings.clone());
    let mut body = Vec::new();
    render_chunks(registry, snap, &block, &mut |chunk| {
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
        let mut sink = |_: Bytes| true;
        let mut out = Out::new(&mut sink);
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
            -(970_635_653_126_215.0 + 0.25),
            562_949_953_421_312.0 + 0.25,
            99_999_999_999_999.98,
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
            // Ties between two shortest candidates, where ryu rounds half to even and
            // `Display` half up: the property test's find (bits 14039033839954996008,
            // -90896891695788.625) and others with a longer shortest text (2^43 +
            // 1/16, 2^39 + 1/32, 1/2 + 2^-17), written as sums so the exact values
            // show.
            f64::from_bits(14_039_033_839_954_996_008),
            -(90_896_891_695_788.0 + 5.0 / 8.0),
            8_796_093_022_208.0 + 1.0 / 16.0,
            549_755_813_888.0 + 1.0 / 32.0,
            0.5 + 1.0 / 131_072.0,
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
