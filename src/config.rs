//! The typed configuration: TOML file + `CCMETRICS__SECTION__KEY` environment overrides,
//! defaults for everything, and validation with messages a user can act on.
//!
//! Startup, `check-config` and `replay` all go through [`Config::load`], so the path
//! that is validated is the path that runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::Dimension;
use crate::engine::window::Interval;

/// Environment prefix: `CCMETRICS__STORE__URL=sqlite://x.db` overrides `[store] url`.
pub const ENV_PREFIX: &str = "CCMETRICS";

/// `[windows] intervals` may list at most this many (the engine keeps them as bit
/// sets; a day has fewer whole-minute divisors that make sense as windows anyway).
pub const MAX_INTERVALS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: config::ConfigError,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A duration written like `20s`, `5m`, `7d` (humantime syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn ms(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
    fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("bad duration {s:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which published service-level formula is exported as `service_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlFormula {
    /// answered_within / offered (default).
    Offered,
    /// answered_within / answered (Asterisk).
    Answered,
    /// (answered_within + abandoned_within) / offered (Amazon Connect "removed within X").
    RemovedWithin,
    /// answered_within / (offered − short_abandoned).
    ExclShortAbandons,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created when missing) or `postgres://…` (an existing database).
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/ccmetrics.db".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// IANA zone in which intervals (and days) are aligned.
    pub timezone: String,
    pub intervals: Vec<Interval>,
    /// Per dimension (`all`, `channel`, `queue`, `team`, `agent`), which of
    /// `intervals` its windows are kept and written at; a dimension not listed keeps
    /// every interval, an empty list none. Per-agent 15-minute rows are most of a
    /// large centre's snapshot rows (10 000 agents: 960 000 a day) and of a replay's
    /// store time; a centre that reads agents per hour and day only says
    /// `agent = ["1h", "1d"]`.
    pub dimensions: BTreeMap<String, Vec<Interval>>,
    pub allowed_lateness: Dur,
    pub correction_horizon: Dur,
    pub rolling: Vec<Dur>,
    /// With no input for this long, the watermark follows the wall clock (serve only).
    pub idle_timeout: Dur,
    /// An event stamped more than this ahead of the wall clock is rejected as `future`
    /// (serve and replay): one device with a broken clock must not push the watermark
    /// forward and close every window early.
    pub max_clock_skew: Dur,
    /// Move closed contacts out of memory into the store once nothing has changed
    /// them for `spill_after` of event time (`serve` from Kafka and `replay`; see
    /// `engine::spill`). Off, every contact of the correction horizon stays in memory
    /// and in every checkpoint. The default hour lets the follow-ups that come soon
    /// (a survey minutes after the call, a callback) find the contact in memory, while
    /// the days of the horizon live in the store.
    pub spill: bool,
    pub spill_after: Dur,
    /// With `spill = false`: an engine (a `replay`, or one Kafka partition in `serve`)
    /// starts spilling as `spill = true` would at the first flush (replay) or commit
    /// (serve) where it holds more than this many contacts, so memory and checkpoints
    /// level off instead of growing with the correction horizon's week; `"never"`
    /// keeps every contact of the horizon. Unset: [`REPLAY_SPILL_ABOVE`] for
    /// `replay` (its `--spill-above` overrides the setting) and
    /// [`SERVE_SPILL_ABOVE`] per partition for `serve`, whose every commit writes
    /// the contacts it holds into the partition's checkpoint.
    pub spill_above: Option<SpillAbove>,
    /// A contact unchanged for this long (event time) is packed: its events and facts
    /// held as one compact byte string, about a third of the memory, and unpacked when
    /// touched again. A contact still open (offered, not yet ended or abandoned) is
    /// packed after four times this instead: its next event is all but certain.
    /// Shorter holds less memory and costs CPU whenever a late event of a packed
    /// contact arrives (docs/performance.md, "Engine memory and CPU, one more round"
    /// and "thirty-seventh round").
    pub pack_after: Dur,
}

/// `replay`'s default `[windows] spill_above`: about 1.3 GB of held contacts (~660
/// bytes each), which no benchmark of docs/performance.md reaches (its 10 M-event
/// set holds 1.3 M) and a 10,000-agent centre at 120,000 contacts an hour reaches
/// after about 17 hours of events (docs/performance.md, "fortieth round").
pub const REPLAY_SPILL_ABOVE: u64 = 2_000_000;

/// `serve`'s default `[windows] spill_above`, per partition: about 66 MB of held
/// contacts, each of them also in every commit's checkpoint. A 500-agent centre
/// at 6,000 contacts an hour on six partitions reaches it after about four days of
/// its week-long horizon; a 10,000-agent one at 120,000 after about five hours.
pub const SERVE_SPILL_ABOVE: u64 = 100_000;

/// `[windows] spill_above`: a number of contacts, or never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpillAbove {
    Contacts(u64),
    Never,
}

impl SpillAbove {
    /// The limit, or `None` for never.
    pub fn contacts(self) -> Option<u64> {
        match self {
            SpillAbove::Contacts(n) => Some(n),
            SpillAbove::Never => None,
        }
    }
}

impl FromStr for SpillAbove {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "never" => Ok(SpillAbove::Never),
            t => t
                .replace('_', "")
                .parse()
                .map(SpillAbove::Contacts)
                .map_err(|_| format!("{s:?} is neither a number of contacts nor `never`")),
        }
    }
}

impl<'de> Deserialize<'de> for SpillAbove {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A TOML integer, or a string: `never`, or a number as the environment gives it.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(SpillAbove::Contacts(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for SpillAbove {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SpillAbove::Contacts(n) => s.serialize_u64(*n),
            SpillAbove::Never => s.serialize_str("never"),
        }
    }
}

impl WindowsConfig {
    /// Past how many contacts held an engine starts spilling: `flag` (a command
    /// line's override), else `spill_above`, else the command's `default`. `None`
    /// when it spills from the start (`spill = true`) or never does.
    pub fn spill_limit(&self, flag: Option<SpillAbove>, default: u64) -> Option<usize> {
        match self.spill {
            true => None,
            false => flag
                .or(self.spill_above)
                .unwrap_or(SpillAbove::Contacts(default))
                .contacts()
                // Compared with a count of contacts held; beyond `usize` is never.
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// Whether `dimension`'s windows are kept at `interval` (one of `intervals`).
    pub fn keeps(&self, dimension: Dimension, interval: Interval) -> bool {
        self.intervals.contains(&interval)
            && self
                .dimensions
                .get(dimension.as_str())
                .is_none_or(|ivs| ivs.contains(&interval))
    }

    /// `[windows.dimensions]` by dimension (validated names; an unknown one, which
    /// validation refuses, is left out).
    pub fn kept(&self) -> BTreeMap<Dimension, Vec<Interval>> {
        self.dimensions
            .iter()
            .filter_map(|(name, ivs)| Some((Dimension::parse(name)?, ivs.clone())))
            .collect()
    }
}

/// Intervals as the config writes them: `15m, 1h, 1d`.
pub fn join(ivs: &[Interval]) -> String {
    ivs.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            timezone: "UTC".into(),
            intervals: vec![Interval::Minutes(15), Interval::Minutes(60), Interval::Day],
            dimensions: BTreeMap::new(),
            allowed_lateness: Dur::secs(300),
            correction_horizon: Dur::secs(7 * 86_400),
            rolling: vec![Dur::secs(300), Dur::secs(900), Dur::secs(3600)],
            idle_timeout: Dur::secs(30),
            max_clock_skew: Dur::secs(600),
            // Off from the start: spilling costs time on every closed contact (a 10
            // M-event replay of a 10,000-agent centre about 1.2x as long), which a
            // stream that fits in memory need not pay. It starts by itself past
            // `spill_above` contacts, so a back-fill of weeks or a week of `serve`
            // does not grow with the horizon (docs/performance.md, "Spilling closed
            // contacts" and "fortieth round").
            spill: false,
            spill_after: Dur::secs(3600),
            spill_above: None,
            // Long enough that a call's or chat's burst of events (offer, answer,
            // end, wrap) mostly finds it unpacked; short enough that unpacked contacts
            // are a few minutes of traffic. 3 min rather than the earlier 10: 4–6 %
            // less peak memory at the same CPU (docs/performance.md, "Engine memory and
            // CPU, one more round").
            pack_after: Dur::secs(180),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub service_level_threshold: Dur,
    pub service_level_formula: SlFormula,
    pub short_abandon: Dur,
    pub wrap_timeout: Dur,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            service_level_threshold: Dur::secs(20),
            service_level_formula: SlFormula::Offered,
            short_abandon: Dur::secs(5),
            wrap_timeout: Dur::secs(600),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcrConfig {
    pub window: Dur,
}

impl Default for FcrConfig {
    fn default() -> Self {
        FcrConfig {
            window: Dur::secs(7 * 86_400),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsatConfig {
    pub scale_min: i64,
    pub scale_max: i64,
    pub positive_min: i64,
}

impl Default for CsatConfig {
    fn default() -> Self {
        CsatConfig {
            scale_min: 1,
            scale_max: 5,
            positive_min: 4,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Per-agent Prometheus series (off by default: one series set per agent).
    pub per_agent_series: bool,
    /// Cardinality guard: at most this many agents get series; the rest are summed
    /// into `agent="__overflow__"`.
    pub max_agent_series: usize,
    /// Latency histogram buckets on agent series too (off by default: an agent's
    /// wait, handle and first-response histograms then carry only `le="+Inf"`,
    /// `_sum` and `_count`, enough for averages; percentiles per agent come from the
    /// snapshots). Buckets are 17 of an agent's ~20 samples per histogram: with them
    /// 10 000 agents are ~0.9 M samples a scrape, without them ~0.4 M. Read at start-up
    /// only: the engine keeps an agent's latency histograms since start only when it is
    /// on (`EngineConfig::agent_total_hists`).
    pub per_agent_buckets: bool,
    /// Bearer token for the JSON API and the wallboard (`/metrics`, `/healthz` and
    /// `/readyz` stay open). Empty: no token. Prefer `CCMETRICS__HTTP__TOKEN`.
    pub token: String,
    /// A request whose response has not started within this time gets `503`
    /// (streams such as the SSE feed are not cut: the limit is on the response head).
    pub request_timeout: Dur,
    /// At most this many client connections at once; further ones wait in the
    /// listen backlog until one closes (a flood of clients cannot exhaust memory or
    /// file descriptors).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            per_agent_series: false,
            max_agent_series: 500,
            per_agent_buckets: false,
            token: String::new(),
            request_timeout: Dur::secs(10),
            max_connections: 256,
        }
    }
}

/// Service targets of one queue: what the wallboard colours and the alert rules
/// compare against (exported as `ccmetrics_queue_target{queue,kpi}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueTargets {
    /// Minimum service level (ratio 0–1).
    pub service_level: f64,
    /// Minimum answer rate (ratio 0–1).
    pub answer_rate: f64,
    /// Maximum abandon rate (ratio 0–1).
    pub abandon_rate: f64,
    /// Maximum time the oldest waiting contact may wait.
    pub max_wait: Dur,
    /// Teams staffing the queue: the wallboard tile counts their agents by state
    /// (events do not tie agents to queues). Empty: the tile shows the whole centre's.
    pub teams: Vec<String>,
}

impl Default for QueueTargets {
    fn default() -> Self {
        QueueTargets {
            service_level: 0.80,
            answer_rate: 0.95,
            abandon_rate: 0.05,
            max_wait: Dur::secs(60),
            teams: Vec::new(),
        }
    }
}

/// Per-queue targets: `default` for every queue, `queues.NAME` to override one. A
/// queue named here is known from start-up: its tile and its counter series exist
/// (at zero) before its first contact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TargetsConfig {
    pub default: QueueTargets,
    pub queues: std::collections::BTreeMap<String, QueueTargets>,
}

/// A store URL safe to print: the password of `scheme://user:password@host/…` masked.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl TargetsConfig {
    pub fn for_queue(&self, queue: &str) -> &QueueTargets {
        self.queues.get(queue).unwrap_or(&self.default)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Messages larger than this are rejected as `oversize`.
    pub max_message_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_message_bytes: 64 * 1024,
        }
    }
}

/// How many distinct keys one engine (one partition) keeps per dimension. Beyond the
/// limit a new agent / team / queue is counted under the key `__overflow__`, and a new
/// customer is not remembered for first-contact resolution; either way the event is
/// counted in `ccmetrics_keys_overflowed_total{kind}`. Agents, teams and queues
/// are counted over the engine's lifetime (their names are interned for good);
/// customers are those currently remembered (released with the correction horizon).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CardinalityConfig {
    pub max_agents: usize,
    pub max_teams: usize,
    pub max_queues: usize,
    pub max_customers: usize,
}

impl Default for CardinalityConfig {
    fn default() -> Self {
        CardinalityConfig {
            max_agents: 50_000,
            max_teams: 5_000,
            max_queues: 5_000,
            max_customers: 5_000_000,
        }
    }
}

/// How the `serve` process itself behaves.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// On SIGTERM / Ctrl-C: how long the daemon may take to stop consuming, commit
    /// every partition (open windows included) and exit 0. Past it the process exits
    /// with status 1, leaving whatever it had not committed to be re-read.
    pub shutdown_timeout: Dur,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            shutdown_timeout: Dur::secs(30),
        }
    }
}

/// Consumer-group partition assignment (eager protocols only: see [`KafkaConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    Range,
    Roundrobin,
    /// Incremental (cooperative) rebalancing. Works with real Kafka; the test broker
    /// (tansu 0.6) does not support it, so it is not the default.
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// librdkafka's `partition.assignment.strategy` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::Roundrobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// A librdkafka property value as written in TOML: strings, numbers and booleans are
/// passed as their text. Dotted keys written unquoted (`sasl.mechanism = "PLAIN"`) or
/// read through the `config` crate arrive as nested tables and are joined back.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PropValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Table(std::collections::BTreeMap<String, PropValue>),
}

/// The Kafka source of `serve` and the `produce` command.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated (`host:port,host:port`). Empty: Kafka is off
    /// and `serve` uses the simulator unless `--source` says otherwise.
    pub brokers: String,
    /// Topics consumed by `serve`; `produce` writes to the first.
    pub topics: Vec<String>,
    pub group_id: String,
    /// Where rejected messages are copied (original bytes, reason in headers). Empty:
    /// no copies (rejections are still counted and logged).
    pub dead_letter_topic: String,
    pub assignment_strategy: AssignmentStrategy,
    /// How often each partition's flushed windows, engine state and next offset are
    /// committed to the store (one transaction per partition). Shorter: less to
    /// re-read after a crash, more writes.
    pub commit_interval: Dur,
    /// Name of this instance in the store's ownership records (default host-pid).
    pub instance_id: String,
    /// Backpressure: when this many messages have been read but not yet committed to
    /// the store (summed over the owned partitions; e.g. the store is down), the
    /// consumer pauses its partitions until commits bring it below half of it.
    pub max_pending_events: u64,
    /// Any librdkafka property, passed through unchanged (SASL, TLS, timeouts …).
    /// Environment: `CCMETRICS_RDKAFKA_<NAME>` with `.` written as `_` (and a literal
    /// `_` as `__`), e.g. `CCMETRICS_RDKAFKA_SASL_PASSWORD` sets `sasl.password`.
    pub properties: std::collections::BTreeMap<String, PropValue>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topics: vec!["ccmetrics.events".into()],
            group_id: "ccmetrics".into(),
            dead_letter_topic: "ccmetrics.dead-letter".into(),
            assignment_strategy: AssignmentStrategy::Range,
            commit_interval: Dur::secs(5),
            instance_id: String::new(),
            max_pending_events: 1_000_000,
            properties: std::collections::BTreeMap::new(),
        }
    }
}

/// librdkafka properties ccmetrics sets itself: changing them would break the
/// offsets-with-results contract.
const RESERVED_KAFKA_PROPERTIES: [&str; 5] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "partition.assignment.strategy",
];

/// Environment prefix of pass-through librdkafka properties.
pub const RDKAFKA_ENV_PREFIX: &str = "CCMETRICS_RDKAFKA_";

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// The pass-through librdkafka properties, flattened to `name → text`, with the
    /// `CCMETRICS_RDKAFKA_*` environment variables applied over the file's values.
    pub fn librdkafka_properties(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        fn flatten(
            prefix: &str,
            v: &PropValue,
            out: &mut std::collections::BTreeMap<String, String>,
        ) {
            let text = match v {
                PropValue::Text(s) => s.clone(),
                PropValue::Int(i) => i.to_string(),
                PropValue::Float(f) => f.to_string(),
                PropValue::Bool(b) => b.to_string(),
                PropValue::Table(t) => {
                    for (k, v) in t {
                        flatten(&format!("{prefix}.{k}"), v, out);
                    }
                    return;
                }
            };
            out.insert(prefix.to_owned(), text);
        }
        for (k, v) in &self.properties {
            flatten(k, v, &mut out);
        }
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix(RDKAFKA_ENV_PREFIX) {
                out.insert(env_property_name(name), v);
            }
        }
        out
    }

    /// The owner name recorded in the store when this instance claims a partition.
    pub fn owner(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ccmetrics".into());
        format!("{host}-{}", std::process::id())
    }
}

/// Dotted names of the leaves that differ between two TOML trees.
fn diff_keys(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => diff_keys(&name, v, w, out),
                    _ => out.push(name),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// `SASL_PASSWORD` → `sasl.password`; `__` stands for a literal `_`.
fn env_property_name(name: &str) -> String {
    name.to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_")
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub windows: WindowsConfig,
    pub metrics: MetricsConfig,
    pub fcr: FcrConfig,
    pub csat: CsatConfig,
    pub http: HttpConfig,
    pub input: InputConfig,
    pub cardinality: CardinalityConfig,
    pub kafka: KafkaConfig,
    pub targets: TargetsConfig,
    pub serve: ServeConfig,
}

/// The keys a running `serve` applies on SIGHUP. Everything else is read at start-up
/// only: it shapes stored figures (windows, thresholds, attribution rules), open
/// connections (store, brokers, listen address) or the Prometheus series layout
/// (histogram bucket bounds include the service-level threshold).
pub const RELOADABLE_KEYS: [&str; 5] = [
    "targets",
    "metrics.service_level_formula",
    "http.per_agent_series",
    "http.max_agent_series",
    "http.token",
];

/// The outcome of [`Config::reload`].
#[derive(Debug)]
pub struct Reload {
    /// The running config with the reloadable keys taken from the new file.
    pub effective: Config,
    /// Reloadable keys whose value changed (applied).
    pub applied: Vec<String>,
    /// Keys that changed but need a restart (ignored until then).
    pub needs_restart: Vec<String>,
}

impl Config {
    /// Load `path` (TOML) with environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        let shown = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into());
        if let Some(p) = path {
            b = b.add_source(
                config::File::from(p)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        b = b.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("windows.intervals")
                .with_list_parse_key("windows.rolling")
                .with_list_parse_key("windows.dimensions.all")
                .with_list_parse_key("windows.dimensions.channel")
                .with_list_parse_key("windows.dimensions.queue")
                .with_list_parse_key("windows.dimensions.team")
                .with_list_parse_key("windows.dimensions.agent")
                .with_list_parse_key("kafka.topics")
                .try_parsing(true),
        );
        let cfg: Config = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Read {
                path: shown,
                source,
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if jiff::tz::TimeZone::get(&self.windows.timezone).is_err() {
            return bad(format!(
                "[windows] timezone {:?} is not an IANA time zone (e.g. \"Asia/Shanghai\", \"America/New_York\", \"UTC\")",
                self.windows.timezone
            ));
        }
        if self.windows.intervals.is_empty() {
            return bad("[windows] intervals must name at least one interval".into());
        }
        if self.windows.intervals.len() > MAX_INTERVALS {
            return bad(format!(
                "[windows] intervals lists {} intervals; at most {MAX_INTERVALS} are supported",
                self.windows.intervals.len()
            ));
        }
        for (name, ivs) in &self.windows.dimensions {
            if Dimension::parse(name).is_none() {
                return bad(format!(
                    "[windows.dimensions] {name:?} is not a dimension (all, channel, queue, team, agent)"
                ));
            }
            if let Some(iv) = ivs.iter().find(|iv| !self.windows.intervals.contains(iv)) {
                return bad(format!(
                    "[windows.dimensions] {name} lists {iv}, which is not one of [windows] intervals ({}); add it there first",
                    join(&self.windows.intervals)
                ));
            }
        }
        let w = &self.windows;
        if w.correction_horizon < w.allowed_lateness {
            return bad(format!(
                "[windows] correction_horizon ({}) must be >= allowed_lateness ({})",
                w.correction_horizon, w.allowed_lateness
            ));
        }
        if w.correction_horizon < self.fcr.window {
            return bad(format!(
                "[windows] correction_horizon ({}) must be >= [fcr] window ({}), or FCR could not be corrected",
                w.correction_horizon, self.fcr.window
            ));
        }
        if w.rolling
            .iter()
            .any(|r| r.0.as_secs() < 60 || r.0.as_secs() % 60 != 0 || r.0.as_secs() > 86_400)
        {
            return bad(
                "[windows] rolling windows must be whole minutes between 1m and 24h".into(),
            );
        }
        let c = &self.csat;
        if !(c.scale_min < c.scale_max && (c.scale_min..=c.scale_max).contains(&c.positive_min)) {
            return bad(format!(
                "[csat] needs scale_min < scale_max and positive_min within the scale (got {}..{}, positive_min {})",
                c.scale_min, c.scale_max, c.positive_min
            ));
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres")) {
            return bad(format!(
                "[store] url {:?} must start with sqlite:// or postgres://",
                self.store.url
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "[http] listen {:?} is not an address like 127.0.0.1:9464",
                self.http.listen
            ));
        }
        let targets = std::iter::once(("default".to_owned(), &self.targets.default)).chain(
            self.targets
                .queues
                .iter()
                .map(|(k, v)| (format!("queues.{k}"), v)),
        );
        for (name, t) in targets {
            for (what, v) in [
                ("service_level", t.service_level),
                ("answer_rate", t.answer_rate),
                ("abandon_rate", t.abandon_rate),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return bad(format!(
                        "[targets.{name}] {what} = {v} must be a ratio between 0 and 1 (0.8 for 80 %)"
                    ));
                }
            }
        }
        let k = &self.kafka;
        if k.enabled() {
            if k.topics.is_empty() || k.topics.iter().any(|t| t.trim().is_empty()) {
                return bad("[kafka] topics must name at least one topic, none empty".into());
            }
            if k.group_id.trim().is_empty() {
                return bad("[kafka] group_id must not be empty".into());
            }
            if k.topics.contains(&k.dead_letter_topic) {
                return bad(format!(
                    "[kafka] dead_letter_topic {:?} is also a consumed topic: rejected messages would be consumed again",
                    k.dead_letter_topic
                ));
            }
            if let Some(key) = k
                .librdkafka_properties()
                .keys()
                .find(|p| RESERVED_KAFKA_PROPERTIES.contains(&p.as_str()))
            {
                return bad(format!(
                    "[kafka.properties] {key:?} is managed by ccmetrics (offsets live in the store); remove it"
                ));
            }
        }
        if k.commit_interval.0 < Duration::from_millis(100) {
            return bad("[kafka] commit_interval must be at least 100ms".into());
        }
        let card = &self.cardinality;
        if [
            card.max_agents,
            card.max_teams,
            card.max_queues,
            card.max_customers,
        ]
        .contains(&0)
        {
            return bad("[cardinality] limits must be at least 1".into());
        }
        if k.max_pending_events < 100 {
            return bad("[kafka] max_pending_events must be at least 100".into());
        }
        if self.serve.shutdown_timeout.0 < Duration::from_secs(1) {
            return bad("[serve] shutdown_timeout must be at least 1s".into());
        }
        if self.http.request_timeout.0 < Duration::from_millis(100) {
            return bad("[http] request_timeout must be at least 100ms".into());
        }
        if self.http.max_connections == 0 {
            return bad("[http] max_connections must be at least 1".into());
        }
        if self.input.max_message_bytes < 256 {
            return bad("[input] max_message_bytes must be at least 256".into());
        }
        Ok(())
    }

    /// Merge a newly loaded (already validated) config into this running one: the
    /// [`RELOADABLE_KEYS`] come from `new`, everything else stays, and every changed
    /// key is listed as applied or needing a restart.
    pub fn reload(&self, new: &Config) -> Reload {
        let mut effective = self.clone();
        effective.targets = new.targets.clone();
        effective.metrics.service_level_formula = new.metrics.service_level_formula;
        effective.http.per_agent_series = new.http.per_agent_series;
        effective.http.max_agent_series = new.http.max_agent_series;
        effective.http.token = new.http.token.clone();
        let mut changed = Vec::new();
        match (toml::Value::try_from(self), toml::Value::try_from(new)) {
            (Ok(old), Ok(new)) => diff_keys("", &old, &new, &mut changed),
            // Not expected (the config is plain data); report it rather than guess.
            _ => changed.push("(config could not be compared)".into()),
        }
        let reloadable = |k: &str| {
            RELOADABLE_KEYS
                .iter()
                .any(|r| k == *r || k.starts_with(&format!("{r}.")))
        };
        let (applied, needs_restart) = changed.into_iter().partition(|k| reloadable(k));
        Reload {
            effective,
            applied,
            needs_restart,
        }
    }

    /// The validated time zone.
    pub fn tz(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.windows.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    pub fn decoder(&self) -> crate::event::Decoder {
        crate::event::Decoder {
            max_message_bytes: self.input.max_message_bytes,
            csat_scale_min: self.csat.scale_min,
            csat_scale_max: self.csat.scale_max,
        }
    }

    /// The effective config as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(s: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(s.as_bytes()).unwrap();
        Config::load(Some(f.path()))
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_str("").unwrap();
        assert_eq!(c.metrics.service_level_threshold, Dur::secs(20));
        assert_eq!(
            redact_url("postgres://cc:s3cret@db:5432/cc"),
            "postgres://cc:***@db:5432/cc"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(c.windows.intervals.len(), 3);
    }

    #[test]
    fn parses_and_rejects() {
        let c = load_str("[windows]\ntimezone = \"Asia/Shanghai\"\nintervals = [\"30m\", \"1d\"]\n[metrics]\nservice_level_formula = \"removed_within\"\n").unwrap();
        assert_eq!(
            c.windows.intervals,
            vec![Interval::Minutes(30), Interval::Day]
        );
        assert_eq!(c.metrics.service_level_formula, SlFormula::RemovedWithin);
        assert!(
            load_str("[windows]\ntimezone = \"Mars/Olympus\"\n")
                .unwrap_err()
                .to_string()
                .contains("IANA")
        );
        assert!(load_str("[windows]\nintervals = [\"7m\"]\n").is_err());
        assert!(load_str("[windows]\ntypo = 1\n").is_err());
        assert!(
            load_str("[fcr]\nwindow = \"8d\"\n")
                .unwrap_err()
                .to_string()
                .contains("correction_horizon")
        );
        assert!(load_str("[metrics]\nshort_abandon = \"five\"\n").is_err());
    }

    #[test]
    fn kept_dimensions_are_validated_and_reach_the_engine() {
        let c = load_str("[windows.dimensions]\nagent = [\"1h\", \"1d\"]\nteam = []\n").unwrap();
        assert!(c.windows.keeps(Dimension::Agent, Interval::Day));
        assert!(!c.windows.keeps(Dimension::Agent, Interval::Minutes(15)));
        assert!(!c.windows.keeps(Dimension::Team, Interval::Day));
        assert!(c.windows.keeps(Dimension::Queue, Interval::Minutes(15)));
        let e = crate::engine::EngineConfig::from_config(&c);
        // Bits over [15m, 1h, 1d], dimensions in `Dimension::ALL` order.
        assert_eq!(e.kept_masks(), [0b111, 0b111, 0b111, 0, 0b110]);
        assert_eq!(
            crate::engine::EngineConfig::default().kept_masks(),
            [0b111; 5]
        );
        let e = load_str("[windows.dimensions]\nagents = [\"1d\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"agents\" is not a dimension"), "{e}");
        let e = load_str("[windows.dimensions]\nagent = [\"30m\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent lists 30m, which is not one of [windows] intervals (15m, 1h, 1d)"),
            "{e}"
        );
        assert!(load_str("[windows.dimensions]\nagent = [\"7m\"]\n").is_err());
        // check-config shows it back as it reads it.
        let shown = c.to_toml();
        assert!(shown.contains("[windows.dimensions]"), "{shown}");
        let back = load_str(&shown).unwrap();
        assert_eq!(back.windows.dimensions, c.windows.dimensions);
    }

    #[test]
    fn spill_above_is_a_number_or_never() {
        let unset = load_str("").unwrap();
        assert_eq!(unset.windows.spill_above, None);
        assert_eq!(unset.windows.spill_limit(None, 7), Some(7));
        let flag = Some(SpillAbove::Contacts(9));
        assert_eq!(unset.windows.spill_limit(flag, 7), Some(9));
        let n = load_str("[windows]\nspill_above = 5000\n").unwrap();
        assert_eq!(n.windows.spill_limit(None, 7), Some(5000));
        // The command line's flag wins over the file.
        assert_eq!(n.windows.spill_limit(Some(SpillAbove::Never), 7), None);
        assert_eq!(n.windows.spill_limit(flag, 7), Some(9));
        let never = load_str("[windows]\nspill_above = \"never\"\n").unwrap();
        assert_eq!(never.windows.spill_limit(None, 7), None);
        assert_eq!(never.windows.spill_limit(flag, 7), Some(9));
        // With the spill on from the start there is nothing to start.
        let on = load_str("[windows]\nspill = true\nspill_above = 5000\n").unwrap();
        assert_eq!(on.windows.spill_limit(None, 7), None);
        assert_eq!(on.windows.spill_limit(flag, 7), None);
        let e = load_str("[windows]\nspill_above = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither a number of contacts nor `never`"),
            "{e}"
        );
        assert!(load_str("[windows]\nspill_above = -3\n").is_err());
        // As the environment gives it.
        assert_eq!("2_000_000".parse(), Ok(SpillAbove::Contacts(2_000_000)));
        // Shown by check-config and read back.
        let shown = toml::to_string(&never).unwrap();
        assert!(shown.contains("spill_above = \"never\""), "{shown}");
        let back: Config = toml::from_str(&shown).unwrap();
        assert_eq!(back.windows.spill_above, Some(SpillAbove::Never));
    }

    #[test]
    fn pack_after_reaches_the_engine() {
        let default = crate::engine::EngineConfig::from_config(&load_str("").unwrap());
        assert_eq!(default.pack_after_ms, 180_000);
        let c = load_str("[windows]\npack_after = \"10m\"\n").unwrap();
        assert_eq!(
            crate::engine::EngineConfig::from_config(&c).pack_after_ms,
            600_000
        );
        assert!(load_str("[windows]\npack_after = \"soon\"\n").is_err());
    }

    #[test]
    fn kafka_section() {
        let c = load_str(
            "[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"a\", \"b\"]\nassignment_strategy = \"roundrobin\"\n\
             [kafka.properties]\n\"sasl.mechanism\" = \"PLAIN\"\nsocket.timeout.ms = 1000\n\"enable.idempotence\" = true\n",
        )
        .unwrap();
        assert!(c.kafka.enabled());
        assert_eq!(c.kafka.topics, ["a", "b"]);
        assert_eq!(c.kafka.assignment_strategy, AssignmentStrategy::Roundrobin);
        let p = c.kafka.librdkafka_properties();
        assert_eq!(p.get("sasl.mechanism").map(String::as_str), Some("PLAIN"));
        assert_eq!(p.get("socket.timeout.ms").map(String::as_str), Some("1000"));
        assert_eq!(
            p.get("enable.idempotence").map(String::as_str),
            Some("true")
        );
        let e = load_str(
            "[kafka]\nbrokers = \"x:1\"\n[kafka.properties]\n\"enable.auto.commit\" = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("enable.auto.commit"), "{e}");
        let e =
            load_str("[kafka]\nbrokers = \"x:1\"\ntopics = [\"t\"]\ndead_letter_topic = \"t\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("dead_letter_topic"), "{e}");
        assert!(load_str("[kafka]\nassignment_strategy = \"sticky\"\n").is_err());
        assert!(!load_str("").unwrap().kafka.enabled());
    }

    #[test]
    fn reload_applies_only_reloadable_keys() {
        let old = load_str("[targets.default]\nservice_level = 0.8\n").unwrap();
        let new = load_str(
            "[targets.default]\nservice_level = 0.9\n[targets.queues.vip]\nanswer_rate = 0.99\n\
             [metrics]\nservice_level_formula = \"answered\"\nservice_level_threshold = \"30s\"\n\
             [store]\nurl = \"sqlite://other.db\"\n[serve]\nshutdown_timeout = \"5s\"\n",
        )
        .unwrap();
        let r = old.reload(&new);
        assert_eq!(r.effective.targets.default.service_level, 0.9);
        assert_eq!(r.effective.targets.for_queue("vip").answer_rate, 0.99);
        assert_eq!(
            r.effective.metrics.service_level_formula,
            SlFormula::Answered
        );
        // Not reloadable: kept, and reported.
        assert_eq!(r.effective.metrics.service_level_threshold, Dur::secs(20));
        assert_eq!(r.effective.store.url, old.store.url);
        assert_eq!(
            r.needs_restart,
            [
                "metrics.service_level_threshold",
                "serve.shutdown_timeout",
                "store.url"
            ]
        );
        assert!(
            r.applied
                .contains(&"targets.default.service_level".to_owned())
        );
        assert!(r.applied.contains(&"targets.queues.vip".to_owned()));
        let same = old.reload(&old);
        assert!(same.applied.is_empty() && same.needs_restart.is_empty());
        // Agent histogram buckets need a restart: the engine keeps an agent's
        // histograms since start only when they were on at start-up.
        let buckets = load_str("[http]\nper_agent_buckets = true\n").unwrap();
        let r = old.reload(&buckets);
        assert!(!r.effective.http.per_agent_buckets);
        assert_eq!(r.needs_restart, ["http.per_agent_buckets"]);
    }

    #[test]
    fn process_limits_are_validated() {
        assert!(load_str("[kafka]\nmax_pending_events = 5\n").is_err());
        assert!(load_str("[serve]\nshutdown_timeout = \"0s\"\n").is_err());
        assert!(load_str("[http]\nmax_connections = 0\n").is_err());
        let c = load_str("").unwrap();
        assert_eq!(c.serve.shutdown_timeout, Dur::secs(30));
        assert_eq!(c.kafka.max_pending_events, 1_000_000);
    }

    #[test]
    fn env_property_names() {
        assert_eq!(env_property_name("SASL_PASSWORD"), "sasl.password");
        assert_eq!(env_property_name("SSL_KEY_PASSWORD"), "ssl.key.password");
        assert_eq!(env_property_name("A__B_C"), "a_b.c");
    }
}
