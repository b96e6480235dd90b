//! End-to-end tests over real TCP on 127.0.0.1 with reqwest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::metrics::test_support::rolling_values;
use super::*;
use crate::config::{Config, SlFormula};
use crate::engine::acc::{Acc, Measure};
use crate::engine::{Dimension, Engine, EngineConfig, Stats};
use crate::event::RejectReason;
use crate::kpi;

struct Server {
    base: String,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(cfg: &Config) -> Server {
        let state = Arc::new(AppState::new(cfg).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(
            listener,
            state.clone(),
            cfg.http.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            base,
            state,
            stop,
            handle,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.base)).await.unwrap()
    }

    async fn text(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn acc(measures: &[Measure]) -> Acc {
    let mut a = Acc::default();
    for m in measures {
        a.apply(m, 1);
    }
    a
}

fn answered(wait_s: u64, within: bool) -> Measure {
    Measure::QueueOutcome {
        answered: true,
        wait_ms: wait_s * 1000,
        short: false,
        within,
    }
}

fn abandoned(wait_s: u64, short: bool, within: bool) -> Measure {
    Measure::QueueOutcome {
        answered: false,
        wait_ms: wait_s * 1000,
        short,
        within,
    }
}

/// Queue "sales": 6 offered, 4 answered (waits 3, 12, 20, 25 s; 3 within 20 s),
/// 2 abandoned (one short, one within), 2 handled (300 s, 200 s), one first response
/// (60 s), 2 resolved (1 FCR), 2 CSAT (1 positive), 1 conversion of 9.99.
fn sales() -> Acc {
    acc(&[
        answered(3, true),
        answered(12, true),
        answered(20, true),
        answered(25, false),
        abandoned(2, true, true),
        abandoned(40, false, false),
        Measure::Handled { handle_ms: 300_000 },
        Measure::Handled { handle_ms: 200_000 },
        Measure::FirstResponse { frt_ms: 60_000 },
        Measure::Resolved { fcr: true },
        Measure::Resolved { fcr: false },
        Measure::Csat {
            score: 50_000,
            positive: true,
        },
        Measure::Csat {
            score: 20_000,
            positive: false,
        },
        Measure::Converted {
            first: true,
            amount: 99_900,
        },
    ])
}

fn agent(n: usize) -> Acc {
    let mut ms = vec![Measure::Presented; n];
    ms.push(Measure::AgentAnswered {
        wait_ms: Some(5000),
        within: true,
    });
    ms.push(Measure::Handled { handle_ms: 100_000 });
    acc(&ms)
}

fn rows() -> Vec<(Dimension, String, Acc)> {
    let mut v = vec![
        (Dimension::All, "all".to_owned(), sales()),
        (Dimension::Channel, "voice".to_owned(), sales()),
        (Dimension::Queue, "sales".to_owned(), sales()),
        (Dimension::Team, "red".to_owned(), agent(4)),
    ];
    for (i, name) in ["a1", "a2", "a3", "a4"].into_iter().enumerate() {
        v.push((Dimension::Agent, name.to_owned(), agent(i + 1)));
    }
    v
}

fn snapshot() -> LiveSnapshot {
    let mut stats = Stats {
        read: 10,
        accepted: 7,
        duplicates: 1,
        late_applied: 1,
        expired: 4,
        ..Stats::default()
    };
    stats.rejected.insert(RejectReason::InvalidJson, 2);
    stats
        .overflowed
        .insert(crate::engine::limits::KeyDim::Queue, 5);
    LiveSnapshot {
        stats,
        watermark: Some(1_700_000_000_000),
        clock: Some(1_700_000_300_000),
        open_contacts: 3,
        totals: rows().into(),
        rolling: vec![
            (5, Vec::new().into()),
            (15, rows().into()),
            (60, rows().into()),
        ],
        flushes: 4,
        last_flush_ms: Some(1_700_000_299_000),
        partitions: Vec::new(),
        ..LiveSnapshot::default()
    }
}

/// Several partitions' views shown as one: counts add, same keys merge, the
/// watermark is the lowest.
#[test]
fn merged_snapshots_add_up() {
    let a = snapshot();
    let mut b = snapshot();
    b.watermark = Some(1_600_000_000_000);
    b.partitions.push(crate::http::PartitionStatus {
        partition: "kafka:t:1".into(),
        ..Default::default()
    });
    let m = LiveSnapshot::merge(vec![a.clone(), b]);
    assert_eq!(m.stats.read, 20);
    assert_eq!(m.stats.rejected.get(&RejectReason::InvalidJson), Some(&4));
    assert_eq!(m.watermark, Some(1_600_000_000_000));
    assert_eq!(m.open_contacts, 6);
    assert_eq!(m.totals.len(), a.totals.len());
    for ((d1, k1, x), (d2, k2, y)) in a.totals.iter().zip(&m.totals) {
        assert_eq!((d1, k1), (d2, k2));
        assert_eq!(y.offered, 2 * x.offered);
    }
    assert_eq!(m.rolling_rows(15).map(SplitRows::len), Some(a.totals.len()));
    assert_eq!(m.partitions.len(), 1);
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the text exposition format (enough for our own output).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        let (name, mut rest) = match series.split_once('{') {
            Some((n, r)) => (n, r),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while let Some((k, r)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next().unwrap() {
                    (_, '\\') => match chars.next().unwrap().1 {
                        'n' => v.push('\n'),
                        c => v.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => v.push(c),
                }
            };
            labels.insert(k.trim_start_matches(',').to_owned(), v);
            rest = &r[end + 1..];
        }
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn find<'a>(s: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.iter()
        .filter(|x| {
            x.name == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn one(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = find(s, name, labels);
    assert_eq!(f.len(), 1, "{name} {labels:?}: {f:?}");
    f[0].value
}

#[tokio::test]
async fn probes_follow_readiness_and_shutdown_is_graceful() {
    let srv = Server::start(&Config::default()).await;
    assert_eq!(srv.text("/healthz").await, "ok");
    assert_eq!(srv.get("/readyz").await.status(), 503);
    srv.state.set_ready(true);
    assert_eq!(srv.text("/readyz").await, "ready");
    srv.state.set_ready(false);
    assert_eq!(srv.get("/readyz").await.status(), 503);
    assert_eq!(srv.get("/nope").await.status(), 404);
    srv.shutdown().await;
}

#[tokio::test]
async fn metrics_exposition() {
    let srv = Server::start(&Config::default()).await;
    srv.state.publish(snapshot());
    let r = srv.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let ct = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = parse(&text);

    // Every sample belongs to a family announced with HELP and TYPE.
    let typed: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    let helped: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split_once(' ').unwrap().0)
        .collect();
    assert_eq!(typed.keys().copied().collect::<BTreeSet<_>>(), helped);
    for s in &samples {
        let family = match typed.get(s.name.as_str()) {
            Some(_) => s.name.as_str(),
            None => s
                .name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count"),
        };
        assert!(typed.contains_key(family), "untyped sample {}", s.name);
        assert!(family.starts_with("ccmetrics_"), "{family}");
        if typed[family] == "counter" {
            assert!(family.ends_with("_total"), "{family}");
        }
    }

    // Process-wide.
    assert_eq!(one(&samples, "ccmetrics_events_read_total", &[]), 10.0);
    assert_eq!(one(&samples, "ccmetrics_events_accepted_total", &[]), 7.0);
    assert_eq!(one(&samples, "ccmetrics_events_duplicate_total", &[]), 1.0);
    assert_eq!(
        one(&samples, "ccmetrics_events_late_applied_total", &[]),
        1.0
    );
    assert_eq!(one(&samples, "ccmetrics_contacts_expired_total", &[]), 4.0);
    for (kind, want) in [
        ("agent", 0.0),
        ("team", 0.0),
        ("queue", 5.0),
        ("customer", 0.0),
    ] {
        assert_eq!(
            one(
                &samples,
                "ccmetrics_keys_overflowed_total",
                &[("kind", kind)]
            ),
            want
        );
    }
    for r in RejectReason::ALL {
        let want = if r == RejectReason::InvalidJson {
            2.0
        } else {
            0.0
        };
        assert_eq!(
            one(
                &samples,
                "ccmetrics_events_rejected_total",
                &[("reason", r.as_str())]
            ),
            want
        );
    }
    assert_eq!(
        one(&samples, "ccmetrics_watermark_timestamp_seconds", &[]),
        1_700_000_000.0
    );
    assert_eq!(one(&samples, "ccmetrics_open_contacts", &[]), 3.0);
    assert_eq!(one(&samples, "ccmetrics_snapshot_flushes_total", &[]), 4.0);
    assert_eq!(typed["ccmetrics_watermark_timestamp_seconds"], "gauge");

    // Counters per dimension, with the dimension-named key label.
    let q = [("dimension", "queue"), ("queue", "sales")];
    assert_eq!(one(&samples, "ccmetrics_contacts_offered_total", &q), 6.0);
    assert_eq!(
        one(&samples, "ccmetrics_contacts_answered_within_sl_total", &q),
        3.0
    );
    assert_eq!(
        one(&samples, "ccmetrics_contacts_short_abandoned_total", &q),
        1.0
    );
    assert_eq!(one(&samples, "ccmetrics_revenue_total", &q), 9.99);
    assert_eq!(
        one(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("dimension", "all")]
        ),
        6.0
    );
    assert_eq!(
        one(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("channel", "voice")]
        ),
        6.0
    );
    let all = find(
        &samples,
        "ccmetrics_contacts_offered_total",
        &[("dimension", "all")],
    );
    assert_eq!(all[0].labels.len(), 1, "the all row has no key label");

    // Histogram: cumulative, SL threshold and short-abandon bounds present, +Inf == count.
    let buckets = find(&samples, "ccmetrics_wait_seconds_bucket", &q);
    let les: Vec<&str> = buckets.iter().map(|b| b.labels["le"].as_str()).collect();
    assert!(
        les.contains(&"20") && les.contains(&"5") && les.last() == Some(&"+Inf"),
        "{les:?}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].value <= w[1].value),
        "{buckets:?}"
    );
    let le = |v: &str| buckets.iter().find(|b| b.labels["le"] == v).unwrap().value;
    assert_eq!(
        (le("2"), le("5"), le("15"), le("20"), le("30"), le("+Inf")),
        (0.0, 1.0, 2.0, 3.0, 4.0, 4.0)
    );
    assert_eq!(one(&samples, "ccmetrics_wait_seconds_count", &q), 4.0);
    assert_eq!(one(&samples, "ccmetrics_wait_seconds_sum", &q), 60.0);
    assert_eq!(one(&samples, "ccmetrics_handle_seconds_sum", &q), 500.0);
    assert_eq!(
        one(&samples, "ccmetrics_first_response_seconds_count", &q),
        1.0
    );
    assert_eq!(typed["ccmetrics_wait_seconds"], "histogram");

    // Rolling gauges: per window, omitted for an empty window.
    let rq = [
        ("window", "15m"),
        ("dimension", "queue"),
        ("queue", "sales"),
    ];
    assert_eq!(
        one(&samples, "ccmetrics_rolling_answer_rate", &rq),
        4.0 / 6.0
    );
    assert_eq!(
        one(&samples, "ccmetrics_rolling_service_level", &rq),
        3.0 / 6.0
    );
    assert_eq!(one(&samples, "ccmetrics_rolling_asa_seconds", &rq), 15.0);
    assert_eq!(one(&samples, "ccmetrics_rolling_aht_seconds", &rq), 250.0);
    assert_eq!(
        one(
            &samples,
            "ccmetrics_rolling_offered",
            &[("window", "1h"), ("dimension", "all")]
        ),
        6.0
    );
    assert!(find(&samples, "ccmetrics_rolling_offered", &[("window", "5m")]).is_empty());

    // Per-agent series are off by default.
    assert!(
        samples
            .iter()
            .all(|s| !s.labels.contains_key("agent") && !s.labels.contains_key("team"))
    );
    assert!(samples.iter().all(|s| {
        s.labels
            .get("dimension")
            .is_none_or(|d| d != "agent" && d != "team")
    }));
    assert!(!text.contains("ccmetrics_agent_series_dropped"));
    srv.shutdown().await;
}

#[tokio::test]
async fn empty_snapshot_still_renders() {
    let srv = Server::start(&Config::default()).await;
    let samples = parse(&srv.text("/metrics").await);
    assert_eq!(one(&samples, "ccmetrics_events_read_total", &[]), 0.0);
    assert_eq!(
        find(&samples, "ccmetrics_events_rejected_total", &[]).len(),
        RejectReason::ALL.len()
    );
    assert!(find(&samples, "ccmetrics_watermark_timestamp_seconds", &[]).is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn per_agent_series_are_capped() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    cfg.http.max_agent_series = 2;
    let srv = Server::start(&cfg).await;
    srv.state.publish(snapshot());
    let samples = parse(&srv.text("/metrics").await);
    let agents: BTreeSet<&str> = find(
        &samples,
        "ccmetrics_contacts_offered_total",
        &[("dimension", "agent")],
    )
    .iter()
    .map(|s| s.labels["agent"].as_str())
    .collect();
    assert_eq!(agents, BTreeSet::from(["a1", "a2", "__overflow__"]));
    assert_eq!(
        one(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("agent", "a2")]
        ),
        2.0
    );
    // a3 (3 presented) + a4 (4 presented) folded.
    assert_eq!(
        one(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("agent", "__overflow__")]
        ),
        7.0
    );
    assert_eq!(
        one(
            &samples,
            "ccmetrics_handle_seconds_count",
            &[("agent", "__overflow__")]
        ),
        2.0
    );
    assert_eq!(one(&samples, "ccmetrics_agent_series_dropped", &[]), 2.0);
    assert_eq!(
        one(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("dimension", "team"), ("team", "red")]
        ),
        4.0
    );
    // Rolling gauges use the same agent set.
    let rolling: BTreeSet<&str> = find(
        &samples,
        "ccmetrics_rolling_offered",
        &[("window", "15m"), ("dimension", "agent")],
    )
    .iter()
    .map(|s| s.labels["agent"].as_str())
    .collect();
    assert_eq!(rolling, agents);
    assert_eq!(
        one(
            &samples,
            "ccmetrics_rolling_answer_rate",
            &[("window", "15m"), ("agent", "__overflow__")]
        ),
        2.0 / 7.0
    );
    srv.shutdown().await;

    // Under the cap nothing is folded, and the gauge says so.
    cfg.http.max_agent_series = 10;
    let srv = Server::start(&cfg).await;
    srv.state.publish(snapshot());
    let samples = parse(&srv.text("/metrics").await);
    assert!(
        find(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("agent", "__overflow__")]
        )
        .is_empty()
    );
    assert_eq!(
        find(
            &samples,
            "ccmetrics_contacts_offered_total",
            &[("dimension", "agent")]
        )
        .len(),
        4
    );
    assert_eq!(one(&samples, "ccmetrics_agent_series_dropped", &[]), 0.0);
    srv.shutdown().await;
}

#[tokio::test]
async fn rolling_json() {
    let srv = Server::start(&Config::default()).await;
    srv.state.publish(snapshot());
    let body = srv.text("/api/v1/rolling?window=15m&dimension=queue").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["window"], "15m");
    assert_eq!(v["clock"], "2023-11-14T22:18:20Z");
    let got = v["rows"].as_array().unwrap();
    assert_eq!(got.len(), 1);
    let row = &got[0];
    assert_eq!(
        (row["dimension"].as_str(), row["key"].as_str()),
        (Some("queue"), Some("sales"))
    );
    // Hand-computed from `sales()`.
    assert_eq!(row["offered"], 6);
    assert_eq!(row["answer_rate"].as_f64(), Some(4.0 / 6.0));
    assert_eq!(row["service_level"].as_f64(), Some(0.5));
    assert_eq!(row["abandon_rate_excl_short"].as_f64(), Some(1.0 / 5.0));
    assert_eq!(row["asa_s"].as_f64(), Some(15.0));
    assert_eq!(row["aht_s"].as_f64(), Some(250.0));
    assert_eq!(row["fcr_rate"].as_f64(), Some(0.5));
    assert_eq!(row["csat"].as_f64(), Some(0.5));
    assert_eq!(row["csat_avg"].as_f64(), Some(3.5));
    assert_eq!(row["revenue"].as_f64(), Some(9.99));
    assert!(row["qa_avg"].is_null());
    // Every KPI column, as `kpi::kpis` derives it, in column order.
    let cells = kpi::kpis(&sales(), SlFormula::Offered);
    let obj = row.as_object().unwrap();
    assert_eq!(obj.len(), 2 + kpi::KPI_COLUMNS.len());
    for (name, cell) in kpi::KPI_COLUMNS.iter().zip(&cells) {
        assert_eq!(obj[*name], cell.to_json(), "{name}");
    }
    let pos = |k: &str| body.find(&format!("\"{k}\":")).unwrap();
    assert!(
        pos("dimension") < pos("key")
            && pos("key") < pos("offered")
            && pos("offered") < pos("answer_rate")
    );
    assert!(pos("answer_rate") < pos("qa_avg"));

    // Unfiltered: every dimension, agents included; any spelling of a configured window.
    let v: serde_json::Value = srv
        .get("/api/v1/rolling?window=60m")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["window"], "1h");
    assert_eq!(v["rows"].as_array().unwrap().len(), rows().len());
    let v: serde_json::Value = srv
        .get("/api/v1/rolling?window=300s")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["window"].as_str(), v["rows"].as_array().map(Vec::len)),
        (Some("5m"), Some(0))
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_params_are_400_with_json_error() {
    let srv = Server::start(&Config::default()).await;
    for q in [
        "",
        "?window=7m",
        "?window=soon",
        "?window=15m&dimension=floor",
        "?window=15m&dimensions=queue",
        "?window=15m&window=5m",
    ] {
        let r = srv.get(&format!("/api/v1/rolling{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        assert!(
            r.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{q}: {v}"
        );
    }
    let v: serde_json::Value = srv
        .get("/api/v1/rolling?window=7m")
        .await
        .json()
        .await
        .unwrap();
    assert!(v["error"].as_str().unwrap().contains("5m, 15m, 1h"), "{v}");
    srv.shutdown().await;
}

#[tokio::test]
async fn parameterless_json_endpoints_reject_unknown_params() {
    let srv = Server::start(&Config::default()).await;
    for path in ["/api/v1/status", "/api/v1/floor", "/api/v1/floor/stream"] {
        for q in ["?window=15m", "?verbose", "?token=a&token=b"] {
            let r = srv.get(&format!("{path}{q}")).await;
            assert_eq!(r.status(), 400, "{path}{q}");
            let v: serde_json::Value = r.json().await.unwrap();
            let e = v["error"].as_str().unwrap_or_default();
            assert!(
                e.contains(path) && e.contains("no query parameters"),
                "{path}{q}: {v}"
            );
        }
    }
    // The guard's query form of the token is not an unknown parameter.
    assert_eq!(srv.get("/api/v1/status?token=x").await.status(), 200);
    assert_eq!(srv.get("/api/v1/floor?token=x").await.status(), 200);
    srv.shutdown().await;
}

#[tokio::test]
async fn rolling_accepts_the_token_in_the_query() {
    let mut cfg = Config::default();
    cfg.http.token = "s3cret".into();
    let srv = Server::start(&cfg).await;
    assert_eq!(srv.get("/api/v1/rolling?window=15m").await.status(), 401);
    assert_eq!(
        srv.get("/api/v1/rolling?window=15m&token=s3cret")
            .await
            .status(),
        200
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn slow_requests_time_out_with_503() {
    let state = Arc::new(AppState::new(&Config::default()).unwrap());
    let r = with_timeout(
        router(state).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        ),
        std::time::Duration::from_millis(200),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, r).await });
    let started = std::time::Instant::now();
    let resp = reqwest::get(format!("{base}/slow")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("timed out"), "{v}");
    // Fast routes are not affected.
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    server.abort();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let mut cfg = Config::default();
    cfg.http.max_connections = 2;
    let srv = Server::start(&cfg).await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    // Two idle connections take both slots.
    let a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/healthz", srv.base);
    let third = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // Not served while both slots are held ...
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the limit"
    );
    // ... and served as soon as one closes.
    drop(a);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("the waiting connection was not served after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(b);
    srv.shutdown().await;
}

#[tokio::test]
async fn reloaded_settings_show_in_metrics_and_floor() {
    let srv = Server::start(&Config::default()).await;
    let target = |metrics: &str| {
        one(
            &parse(metrics),
            "ccmetrics_queue_target",
            &[("queue", "vip"), ("kpi", "service_level")],
        )
    };
    let mut cfg = Config::default();
    cfg.targets.queues.insert(
        "vip".into(),
        crate::config::QueueTargets {
            service_level: 0.9,
            ..Default::default()
        },
    );
    srv.state.set_settings(HttpSettings::from_config(&cfg));
    assert_eq!(target(&srv.text("/metrics").await), 0.9);
    let floor: serde_json::Value = srv.get("/api/v1/floor").await.json().await.unwrap();
    assert!(floor.to_string().contains("vip"), "{floor}");
    srv.shutdown().await;
}

#[tokio::test]
async fn status_json() {
    let srv = Server::start(&Config::default()).await;
    let v: serde_json::Value = srv.get("/api/v1/status").await.json().await.unwrap();
    assert_eq!(v["ready"], false);
    assert!(v["watermark"].is_null() && v["clock"].is_null());
    srv.state.publish(snapshot());
    srv.state.set_ready(true);
    let v: serde_json::Value = srv.get("/api/v1/status").await.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["watermark"], "2023-11-14T22:13:20Z");
    assert_eq!(v["clock"], "2023-11-14T22:18:20Z");
    assert_eq!(v["open_contacts"], 3);
    assert_eq!(v["stats"]["read"], 10);
    assert_eq!(v["stats"]["rejected_total"], 2);
    assert_eq!(v["stats"]["rejected"]["invalid_json"], 2);
    assert_eq!(v["stats"]["rejected"]["too_late"], 0);
    assert_eq!(v["rolling_windows"], serde_json::json!(["5m", "15m", "1h"]));
    srv.shutdown().await;
}

/// The rolling gauges restate `kpi::kpis` formulas; they must not drift apart.
#[test]
fn rolling_gauges_match_kpi_formulas() {
    let column = |name: &str| kpi::KPI_COLUMNS.iter().position(|c| *c == name).unwrap();
    for f in [
        SlFormula::Offered,
        SlFormula::Answered,
        SlFormula::RemovedWithin,
        SlFormula::ExclShortAbandons,
    ] {
        for a in [sales(), agent(3), Acc::default()] {
            let cells = kpi::kpis(&a, f);
            for (gauge, value) in rolling_values(&a, f) {
                let col = match gauge {
                    "ccmetrics_rolling_offered" => "offered",
                    "ccmetrics_rolling_answer_rate" => "answer_rate",
                    "ccmetrics_rolling_abandon_rate" => "abandon_rate",
                    "ccmetrics_rolling_service_level" => "service_level",
                    "ccmetrics_rolling_asa_seconds" => "asa_s",
                    "ccmetrics_rolling_aht_seconds" => "aht_s",
                    other => panic!("unmapped gauge {other}"),
                };
                let want = match &cells[column(col)] {
                    kpi::Cell::Int(i) => Some(*i as f64),
                    kpi::Cell::Num(x) => *x,
                    kpi::Cell::Text(t) => panic!("{t}"),
                };
                assert_eq!(value, want, "{gauge} {f:?}");
            }
        }
    }
}

#[test]
fn capture_matches_configured_windows() {
    let cfg = Config::default();
    let engine = Engine::new(EngineConfig::from_config(&cfg));
    let snap = LiveSnapshot::capture(&engine, 0, None);
    let settings = HttpSettings::from_config(&cfg);
    let minutes: Vec<u32> = snap.rolling.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        minutes,
        settings
            .rolling
            .iter()
            .map(|w| w.minutes)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        settings
            .bucket_bounds_ms
            .iter()
            .filter(|&&b| b == 20_000 || b == 5_000)
            .count(),
        2
    );
    assert!(settings.bucket_bounds_ms.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn odd_thresholds_become_bucket_bounds() {
    let mut cfg = Config::default();
    cfg.metrics.service_level_threshold = "25s".parse().unwrap();
    cfg.metrics.short_abandon = "2500ms".parse().unwrap();
    let s = HttpSettings::from_config(&cfg);
    assert!(s.bucket_bounds_ms.contains(&25_000) && s.bucket_bounds_ms.contains(&2_500));
    assert!(s.bucket_bounds_ms.windows(2).all(|w| w[0] < w[1]));
    let state = AppState::with_settings(s).unwrap();
    state.publish(snapshot());
    let buf = exposition::render(state.registry(), &state.snapshot(), &state.settings()).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.contains("le=\"2.5\"") && text.contains("le=\"25\""));
}

/// `promtool check metrics` (format + lint) on real output, when promtool is installed.
#[tokio::test]
async fn promtool_accepts_metrics() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    cfg.http.max_agent_series = 2;
    let srv = Server::start(&cfg).await;
    super::memory::MemoryCollector::register(srv.state.registry()).unwrap();
    let mut snap = snapshot();
    // Label values that need escaping.
    snap.totals.push((
        Dimension::Queue,
        "q \"quoted\" \\ back\nslash".to_owned(),
        sales(),
    ));
    srv.state.publish(snap);
    let text = srv.text("/metrics").await;
    srv.shutdown().await;

    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: promtool not on PATH, skipping `promtool check metrics`");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool check metrics:\n{msg}\n---\n{text}"
    );
}

/// A centre-only capture completed with the agent part of a full capture of the same
/// engine is the full capture: nothing is lost or doubled by capturing agents less
/// often, and rows stay sorted.
#[test]
fn centre_capture_spliced_with_agents_equals_full_capture() {
    use crate::engine::Scope;
    use crate::source::sim::{SimConfig, Simulator};
    let mut sim = Simulator::new(SimConfig {
        seed: 3,
        agents: 30,
        contacts_per_hour: 1_500.0,
        ..SimConfig::default()
    });
    let mut e = Engine::new(EngineConfig::default());
    for _ in 0..5_000 {
        if let Ok(ev) = crate::event::decode(sim.next_line().1.as_bytes()) {
            e.apply(ev);
        }
    }
    let full = LiveSnapshot::capture_of(&e, 1, None, Scope::All);
    let mut centre = LiveSnapshot::capture_of(&e, 1, None, Scope::Centre);
    assert!(centre.floor.agents.is_empty());
    assert!(centre.totals.iter().all(|(d, _, _)| Scope::Centre.has(*d)));
    assert!(full.totals.iter().any(|(d, _, _)| *d == Dimension::Agent));
    assert!(!full.floor.agents.is_empty());
    assert_eq!(centre.agent_part, 0);
    assert_ne!(full.agent_part, 0);
    centre.splice_agents_from(&full);
    assert_eq!(centre.agent_part, full.agent_part);
    // `now_ms` is read from the wall clock per capture; the rest must be equal.
    centre.now_ms = full.now_ms;
    assert_eq!(centre.totals, full.totals);
    assert_eq!(centre.rolling, full.rolling);
    assert_eq!(centre.floor, full.floor);
    // Shared, not copied: splicing costs no allocation per agent.
    assert!(centre.totals.shares_agents_with(&full.totals));
    for ((_, c), (_, f)) in centre.rolling.iter().zip(&full.rolling) {
        assert!(c.shares_agents_with(f));
    }
    assert!(Arc::ptr_eq(&centre.floor.agents, &full.floor.agents));
    assert!(centre.floor.today.shares_agents_with(&full.floor.today));
    assert!(
        full.floor
            .today
            .iter()
            .any(|(d, _, _)| *d == Dimension::Agent)
    );
    // One list in (dimension, key) order, the agent part after the centre's rows.
    let keys: Vec<(Dimension, &str)> = centre
        .totals
        .iter()
        .map(|(d, k, _)| (*d, k.as_str()))
        .collect();
    assert!(keys.is_sorted(), "{keys:?}");
}

/// Returns fixed families, for the reference registry below.
struct Fixed(Vec<prometheus::proto::MetricFamily>);

impl prometheus::core::Collector for Fixed {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        Vec::new()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.clone()
    }
}

/// A realistic snapshot: simulated events through a live engine, plus rows that test
/// the edges (label values that need escaping, the engine's own `__overflow__` agent).
fn simulated_snapshot(cfg: &Config) -> LiveSnapshot {
    use crate::source::sim::{SimConfig, Simulator};
    let mut sim = Simulator::new(SimConfig {
        agents: 60,
        queues: 5,
        contacts_per_hour: 3000.0,
        ..SimConfig::default()
    });
    let mut e = Engine::new(EngineConfig::from_config(cfg));
    let decoder = crate::event::Decoder::default();
    for _ in 0..20_000 {
        let line = sim.next_line().1;
        if let Ok(ev) = decoder.decode(line.as_bytes()) {
            e.apply(ev);
        }
    }
    let mut snap = LiveSnapshot::capture(&e, 3, Some(1_700_000_000_000));
    for d in [Dimension::Queue, Dimension::Agent, Dimension::Team] {
        snap.totals
            .push((d, "q \"quoted\" \\ back\nslash".to_owned(), sales()));
    }
    snap.totals
        .push((Dimension::Agent, metrics::OVERFLOW_KEY.to_owned(), sales()));
    if let Some((_, rows)) = snap.rolling.first_mut() {
        rows.push((Dimension::Agent, metrics::OVERFLOW_KEY.to_owned(), sales()));
    }
    snap
}

/// The directly written `/metrics` body is byte for byte what `TextEncoder` writes
/// for the same families built as `prometheus` structures and ordered by
/// `Registry::gather`: per-agent series on (with and without folding) and off, a
/// configured queue without traffic, label values that need escaping.
#[test]
fn exposition_matches_text_encoder() {
    for (per_agent, max_agents, buckets) in [
        (true, 1000, false),
        (true, 1000, true),
        (true, 7, false),
        (false, 500, false),
    ] {
        let mut cfg = Config::default();
        cfg.http.per_agent_series = per_agent;
        cfg.http.max_agent_series = max_agents;
        cfg.http.per_agent_buckets = buckets;
        cfg.targets
            .queues
            .insert("quiet queue".to_owned(), cfg.targets.default.clone());
        let state = AppState::new(&cfg).unwrap();
        state.set_ready(true);
        let snap = simulated_snapshot(&cfg);
        let settings = state.settings();
        let fast = exposition::render(state.registry(), &snap, &settings).unwrap();

        let mut families = state.registry().gather();
        let (kept, dropped) = metrics::kept_agents(&snap, &settings);
        families.extend(metrics::families(&snap, &settings, &kept, dropped));
        families.extend(metrics::dimension_families(&snap, &settings));
        let reference = prometheus::Registry::new();
        reference.register(Box::new(Fixed(families))).unwrap();
        let mut expected = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &reference.gather(),
            &mut expected,
        )
        .unwrap();
        let (fast, expected) = (
            String::from_utf8(fast).unwrap(),
            String::from_utf8(expected).unwrap(),
        );
        // Sanity: the case is not trivial.
        let lines = expected.lines().count();
        assert!(
            lines > if per_agent { 2000 } else { 200 },
            "{per_agent} {max_agents}: {lines}"
        );
        assert_eq!(
            expected.contains("agent=\"__overflow__\""),
            per_agent,
            "{per_agent} {max_agents}"
        );
        if fast != expected {
            let first = fast.lines().zip(expected.lines()).position(|(a, b)| a != b);
            panic!(
                "per_agent {per_agent} max {max_agents}: bodies differ ({} vs {} lines), first at line {first:?}: {:?} vs {:?}",
                fast.lines().count(),
                expected.lines().count(),
                first.and_then(|i| fast.lines().nth(i)),
                first.and_then(|i| expected.lines().nth(i)),
            );
        }
    }
}

/// An agent literally keyed `__overflow__` (the engine's cardinality fold) and the
/// agents folded by `max_agent_series` share one series, never two.
#[test]
fn overflow_agent_appears_once() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    cfg.http.max_agent_series = 7;
    let state = AppState::new(&cfg).unwrap();
    let snap = simulated_snapshot(&cfg);
    let body = exposition::render(state.registry(), &snap, &state.settings()).unwrap();
    let body = String::from_utf8(body).unwrap();
    let series: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with("ccmetrics_contacts_offered_total{") && l.contains("__overflow__")
        })
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
}

/// A body of many chunks arrives over HTTP whole and in order: the streamed
/// `/metrics` equals the body rendered in one piece.
#[tokio::test]
async fn metrics_streams_the_whole_body() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    cfg.http.max_agent_series = 100_000;
    cfg.http.per_agent_buckets = true;
    let srv = Server::start(&cfg).await;
    let mut snap = simulated_snapshot(&cfg);
    for i in 0..500 {
        snap.totals
            .push((Dimension::Agent, format!("bulk-{i:04}"), sales()));
    }
    srv.state.publish(snap);
    let text = srv.text("/metrics").await;
    let expected = exposition::render(
        srv.state.registry(),
        &srv.state.snapshot(),
        &srv.state.settings(),
    )
    .unwrap();
    srv.shutdown().await;
    assert!(
        text.len() > 4 * exposition::CHUNK,
        "only {} bytes: not a multi-chunk body",
        text.len()
    );
    assert!(text == String::from_utf8(expected).unwrap());
    assert!(text.ends_with('\n'));
}

/// Rendering stops as soon as the reader is gone (a scraper that hung up does not
/// keep a thread writing megabytes nobody reads).
#[test]
fn rendering_stops_when_the_reader_is_gone() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    cfg.http.per_agent_buckets = true;
    let state = AppState::new(&cfg).unwrap();
    let mut snap = simulated_snapshot(&cfg);
    for i in 0..500 {
        snap.totals
            .push((Dimension::Agent, format!("bulk-{i:04}"), sales()));
    }
    let settings = state.settings();
    let mut all = 0;
    let block = exposition::AgentBlock::build(&snap, settings.clone());
    exposition::render_chunks(state.registry(), &snap, &block, &mut |_| {
        all += 1;
        true
    })
    .unwrap();
    assert!(all > 4, "{all} chunks");
    let mut calls = 0;
    exposition::render_chunks(state.registry(), &snap, &block, &mut |_| {
        calls += 1;
        false
    })
    .unwrap();
    assert_eq!(calls, 1);
}

/// Agent histograms carry only `+Inf`, `_sum` and `_count` unless `per_agent_buckets`;
/// queue and team histograms always carry every bucket.
#[test]
fn agent_histogram_buckets_are_opt_in() {
    for buckets in [false, true] {
        let mut cfg = Config::default();
        cfg.http.per_agent_series = true;
        cfg.http.per_agent_buckets = buckets;
        let state = AppState::new(&cfg).unwrap();
        let snap = simulated_snapshot(&cfg);
        let body = exposition::render(state.registry(), &snap, &state.settings()).unwrap();
        let body = String::from_utf8(body).unwrap();
        let count = |dim: &str, what: &str| {
            body.lines()
                .filter(|l| l.starts_with("ccmetrics_wait_seconds_bucket{"))
                .filter(|l| l.contains(&format!("dimension=\"{dim}\"")) && l.contains(what))
                .count()
        };
        let agents = body
            .lines()
            .filter(|l| l.starts_with("ccmetrics_handle_seconds_count{dimension=\"agent\""))
            .count();
        assert!(agents > 10, "{agents}");
        assert_eq!(count("agent", "le=\"+Inf\""), agents);
        assert!(count("queue", "le=\"20\"") > 0);
        assert!(count("team", "le=\"20\"") > 0);
        assert_eq!(
            count("agent", "le=\"20\"") > 0,
            buckets,
            "buckets {buckets}"
        );
    }
}

/// The lines of a `/metrics` body that belong to agent series.
fn agent_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| l.contains("dimension=\"agent\""))
        .collect()
}

/// `/metrics` reuses the rendered agent part only while it is current: a new capture
/// of the agents (new figures) or a settings reload renders it again, a centre
/// publication spliced with the same agent part reuses it, and every body is what a
/// fresh render of the published snapshot gives.
#[tokio::test]
async fn metrics_reuses_the_agent_part_only_while_it_is_current() {
    use crate::engine::Scope;
    use crate::source::sim::{SimConfig, Simulator};
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    let srv = Server::start(&cfg).await;
    let st = srv.state.clone();
    let fresh = |st: &AppState| {
        let body = exposition::render(st.registry(), &st.snapshot(), &st.settings()).unwrap();
        String::from_utf8(body).unwrap()
    };
    let mut sim = Simulator::new(SimConfig {
        seed: 5,
        agents: 40,
        contacts_per_hour: 2_000.0,
        ..SimConfig::default()
    });
    let mut e = Engine::new(EngineConfig::from_config(&cfg));
    let mut feed = |e: &mut Engine, n: usize| {
        for _ in 0..n {
            if let Ok(ev) = crate::event::decode(sim.next_line().1.as_bytes()) {
                e.apply(ev);
            }
        }
    };
    feed(&mut e, 4_000);
    st.publish(LiveSnapshot::capture(&e, 1, None));
    let first = srv.text("/metrics").await;
    assert_eq!(first, fresh(&st));
    assert!(st.agent_block_kept(&st.snapshot()));
    assert!(
        agent_lines(&first).len() > 100,
        "{}",
        agent_lines(&first).len()
    );

    // New agent figures: the kept block is another part's, so it is not used.
    feed(&mut e, 4_000);
    let full = Arc::new(LiveSnapshot::capture(&e, 2, None));
    st.publish_arc(full.clone());
    assert_eq!(
        st.agent_block(&full, &st.settings()).part(),
        full.agent_part
    );
    let second = srv.text("/metrics").await;
    assert_eq!(second, fresh(&st));
    assert_ne!(agent_lines(&second), agent_lines(&first));

    // The centre moves on, the agent part is the same capture: the block is reused
    // (the agent lines are those of `full`), the centre's lines are new.
    feed(&mut e, 4_000);
    let mut centre = LiveSnapshot::capture_of(&e, 3, None, Scope::Centre);
    centre.splice_agents_from(&full);
    st.publish(centre);
    assert!(st.agent_block_kept(&st.snapshot()));
    let third = srv.text("/metrics").await;
    assert_eq!(third, fresh(&st));
    assert_eq!(agent_lines(&third), agent_lines(&second));
    assert_ne!(third, second);

    // A reload (fewer agents with series of their own) renders the agent part again.
    let mut reloaded = cfg.clone();
    reloaded.http.max_agent_series = 5;
    st.set_settings(HttpSettings::from_config(&reloaded));
    assert!(!st.agent_block_kept(&st.snapshot()));
    let fourth = srv.text("/metrics").await;
    assert_eq!(fourth, fresh(&st));
    let agents = |body: &str| -> BTreeSet<String> {
        agent_lines(body)
            .iter()
            .filter_map(|l| l.split("agent=\"").nth(1))
            .filter_map(|r| r.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    // Five agents and `__overflow__`.
    assert_eq!(agents(&fourth).len(), 6, "{:?}", agents(&fourth));
    assert!(agents(&third).len() > 6);
    srv.shutdown().await;
}

/// While `/metrics` is scraped, a newly published agent part is rendered ahead on
/// the render-ahead thread (the next scrape finds it ready); before any scrape
/// nothing is rendered.
#[test]
fn a_new_agent_part_is_rendered_ahead_while_metrics_is_scraped() {
    let mut cfg = Config::default();
    cfg.http.per_agent_series = true;
    let state = AppState::new(&cfg).unwrap();
    state.publish(simulated_snapshot(&cfg));
    state.publish(simulated_snapshot(&cfg));
    assert!(!state.agent_block_kept(&state.snapshot()));

    let _ = state.agent_block(&state.snapshot(), &state.settings());
    assert!(state.agent_block_kept(&state.snapshot()));
    state.publish(simulated_snapshot(&cfg));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !state.agent_block_kept(&state.snapshot()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new agent part was not rendered ahead within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
