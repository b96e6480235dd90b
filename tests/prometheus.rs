//! The alerting rules and the Grafana dashboard against a real Prometheus (the Debian
//! package's `/usr/bin/prometheus`, on loopback, scraping and evaluating every second)
//! scraping the real daemon (`serve --source stdin`) fed a known event set:
//!
//! - `recording_rules_and_alerts`: every recording rule of `deploy/prometheus/rules.yml`
//!   gives the exact expected value per queue, and the KPI alerts become active
//!   (pending: their `for:` is minutes) for `sales` and not for `support`.
//! - `dashboard_queries_return_data`: every panel query and variable of
//!   `deploy/grafana/ccmetrics.json` parses and returns data.
//!
//! - `promtool_unit_tests_of_the_rules`: `promtool check rules` and `promtool test
//!   rules deploy/prometheus/rules.test.yml` (every alert firing, pending and held back
//!   on synthetic series, the robustness alerts included) pass.
//!
//! The first two tests share one Prometheus and one daemon (started by whichever test comes
//! first, stopped when the last one ends).
//!
//! Counters and `increase()`: Prometheus reads a counter that first appears with its
//! final value as no increase at all. So the daemon is fed in two batches: a warm-up
//! that creates the `sales` and `support` queue series with every counter still 0 (one
//! chat per queue that gets a first response but no answer or abandon yet, so it
//! counts nowhere), then, once Prometheus has scraped those zeros, the measured batch.
//! This does not depend on the daemon exporting configured queues at zero from start.
//! Because every counter of a ratio then starts at 0 in the same scrape, all of them
//! get the same extrapolation in `rate()`, and the ratios are exact; `increase()` itself
//! is extrapolated to the range end, so `queue:ccmetrics_offered:increase15m` is checked
//! to lie in [20, 22) for 20 contacts.
//!
//! The Kafka-only metrics (`ccmetrics_kafka_*`, `ccmetrics_store_commit*`) do not exist
//! with the stdin source: their recording rule and dashboard panels are checked to
//! parse, and listed on stdout as not checked for data.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// From the same Debian package as `PROMETHEUS`.
const PROMTOOL: &str = "/usr/bin/promtool";
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/rules.yml");
const RULES_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/rules.test.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ccmetrics.json");
/// Metrics only the Kafka source exports (docs/prometheus.md).
const KAFKA_ONLY: [&str; 2] = ["ccmetrics_kafka_", "ccmetrics_store_commit"];
const TIMEOUT: Duration = Duration::from_secs(90);

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A child process killed (and reaped) on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client: a runtime of the calling test's own.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        }
    }

    /// `(status, body)`, or the connection error.
    fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<(u16, String), String> {
        self.rt.block_on(async {
            let r = self
                .client
                .get(url)
                .query(query)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = r.status().as_u16();
            let body = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
            Ok((status, body))
        })
    }
}

/// The shared world: Prometheus scraping the daemon, both events batches applied.
struct Floor {
    // Fields drop in order: processes before the directory they write to.
    prometheus: Proc,
    daemon: Proc,
    _stdin: ChildStdin,
    prom: String,
    dir: tempfile::TempDir,
}

fn daemon_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("ccmetrics.toml");
    let mut text = format!(
        r#"[store]
url = "sqlite://{}"

[windows]
timezone = "UTC"

[http]
listen = "127.0.0.1:0"
per_agent_series = true
"#,
        dir.join("x.db").display()
    );
    // The answer-rate target (0.9) is above sales' 0.8 and below support's 1.0.
    for queue in ["sales", "support"] {
        text.push_str(&format!(
            "\n[targets.queues.{queue}]\nanswer_rate = 0.9\nservice_level = 0.8\nabandon_rate = 0.1\nmax_wait = \"1h\"\n"
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn start_daemon(dir: &Path) -> (Proc, ChildStdin, String) {
    let log = dir.join("ccmetrics.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args(["serve", "--source", "stdin", "--config"])
        .arg(daemon_config(dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let proc = Proc { child, log };
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics,"))
        .map(|w| {
            w.trim_start_matches("http://")
                .trim_end_matches("/metrics,")
                .to_owned()
        })
        .unwrap_or_else(|| {
            panic!(
                "no address in the daemon's first line {first:?}; its log:\n{}",
                log_tail(&proc.log)
            )
        });
    (proc, stdin, addr)
}

/// Prometheus on a free loopback port scraping `target`, with rules.yml loaded.
fn start_prometheus(dir: &Path, target: &str, http: &Http) -> (Proc, String) {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install the Debian package prometheus \
         (apt-get install prometheus; scripts/test.sh does this when run as root)"
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {RULES}\n\
             scrape_configs:\n  - job_name: ccmetrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    // A free port can be taken between the probe and Prometheus' bind: try a few.
    let mut last = String::new();
    for attempt in 0..3 {
        let port = free_port();
        let log = dir.join(format!("prometheus-{attempt}.log"));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("tsdb-{attempt}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        let mut proc = Proc { child, log };
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = proc.child.try_wait().unwrap() {
                last = format!("prometheus exited with {status}:\n{}", log_tail(&proc.log));
                break;
            }
            if matches!(http.get(&format!("{base}/-/ready"), &[]), Ok((200, _))) {
                return (proc, base);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if last.is_empty() {
            last = format!("not ready after 30 s:\n{}", log_tail(&proc.log));
        }
    }
    panic!("could not start Prometheus: {last}");
}

/// One JSONL line: `event_id`, `type`, `ts` (epoch milliseconds) and string fields.
fn ev(id: &str, kind: &str, ts: i64, fields: &[(&str, &str)]) -> String {
    let mut v = json!({"event_id": id, "type": kind, "ts": ts});
    for (k, x) in fields {
        v[*k] = json!(x);
    }
    v.to_string() + "\n"
}

/// Warm-up: one chat per queue with a first response but no outcome yet. It creates
/// the queue series with every counter at 0 (and is not waiting).
fn warm_up(t0: i64) -> String {
    let mut out = String::new();
    for queue in ["sales", "support"] {
        let c = format!("warm-{queue}");
        let offer = [
            ("contact_id", c.as_str()),
            ("channel", "chat"),
            ("queue", queue),
        ];
        out += &ev(&format!("{c}-o"), "contact.offered", t0, &offer);
        let reply = [
            ("contact_id", c.as_str()),
            ("agent_id", "agent-01"),
            ("team", "alpha"),
        ];
        out += &ev(
            &format!("{c}-f"),
            "contact.first_response",
            t0 + 2_000,
            &reply,
        );
    }
    out
}

/// Agents and teams of the measured batch.
const AGENTS: [(&str, &str); 4] = [
    ("agent-01", "alpha"),
    ("agent-02", "alpha"),
    ("agent-03", "bravo"),
    ("agent-04", "bravo"),
];

/// The measured batch, contacts offered from `base` on, one a second:
/// - sales: 20 offered; 16 answered after 2, 4, 6, 8, 10, 12, 14, 20 (8 within the
///   20 s service-level threshold, inclusive), 21, 25, 30, 35, 40, 45, 50 and 60 s
///   (ASA 382 / 16 s); 4 abandoned after 3 and 5 s (short: at most 5 s), 30 and 90 s.
/// - support: 20 offered, answered after 1 to 20 s (ASA 210 / 20 s).
///
/// Every answered contact is routed, answered, ended 60 s later and wrapped 10 s after
/// that (handled); agents report states; one contact per queue is still waiting.
fn measured(base: i64, now: i64) -> String {
    let mut out = String::new();
    for ((agent, team), state) in AGENTS.iter().zip(["busy", "available", "wrap", "away"]) {
        let id = |n: u32| format!("state-{agent}-{n}");
        let fields = |state| [("agent_id", *agent), ("team", *team), ("state", state)];
        out += &ev(&id(1), "agent.state", base - 60_000, &fields("available"));
        out += &ev(&id(2), "agent.state", now - 20_000, &fields(state));
    }
    let sales_answered = [2, 4, 6, 8, 10, 12, 14, 20, 21, 25, 30, 35, 40, 45, 50, 60];
    let sales_abandoned = [3, 5, 30, 90];
    let mut contacts: Vec<(&str, i64, bool)> = Vec::new();
    contacts.extend(sales_answered.iter().map(|w| ("sales", *w, true)));
    contacts.extend(sales_abandoned.iter().map(|w| ("sales", *w, false)));
    contacts.extend((1..=20).map(|w| ("support", w, true)));
    for (n, (queue, wait_s, answered)) in contacts.into_iter().enumerate() {
        let c = format!("{queue}-{n:02}");
        let id = |suffix: &str| format!("{c}-{suffix}");
        let offered = base + n as i64 * 1_000;
        let left = offered + wait_s * 1_000;
        let (agent, team) = AGENTS[n % AGENTS.len()];
        let customer = format!("cust-{c}");
        let offer = [
            ("contact_id", c.as_str()),
            ("channel", "voice"),
            ("queue", queue),
            ("customer_id", customer.as_str()),
        ];
        out += &ev(&id("o"), "contact.offered", offered, &offer);
        if !answered {
            out += &ev(
                &id("x"),
                "contact.abandoned",
                left,
                &[("contact_id", c.as_str())],
            );
            continue;
        }
        let by = [
            ("contact_id", c.as_str()),
            ("agent_id", agent),
            ("team", team),
        ];
        out += &ev(&id("r"), "contact.routed", left - 500, &by);
        out += &ev(&id("a"), "contact.answered", left, &by);
        out += &ev(&id("e"), "contact.ended", left + 60_000, &by[..2]);
        out += &ev(&id("w"), "contact.wrapped", left + 70_000, &by[..2]);
    }
    for queue in ["sales", "support"] {
        let c = format!("waiting-{queue}");
        let offer = [
            ("contact_id", c.as_str()),
            ("channel", "voice"),
            ("queue", queue),
        ];
        out += &ev(&c, "contact.offered", now - 30_000, &offer);
    }
    out
}

/// `/api/v1/query` at the current time: the result vector, or why not.
fn query(http: &Http, prom: &str, expr: &str) -> Result<Vec<Value>, String> {
    let (status, body) = http.get(&format!("{prom}/api/v1/query"), &[("query", expr)])?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body:?}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("query {expr:?}: {status} {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// `label value → sample value` of an instant vector.
fn by_label(result: &[Value], label: &str) -> BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|s| {
            let key = s["metric"][label].as_str()?.to_owned();
            let v = s["value"][1].as_str()?.parse().ok()?;
            Some((key, v))
        })
        .collect()
}

impl Floor {
    fn start(http: &Http) -> Floor {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, mut stdin, addr) = start_daemon(dir.path());
        let (prometheus, prom) = start_prometheus(dir.path(), &addr, http);
        let floor_dbg = |what: &str, daemon: &Proc, prometheus: &Proc| {
            format!(
                "{what}\n--- daemon log:\n{}\n--- prometheus log:\n{}",
                log_tail(&daemon.log),
                log_tail(&prometheus.log)
            )
        };
        wait_for(
            "Prometheus to scrape the daemon (up == 1) and load the rules",
            TIMEOUT,
            || {
                let up = query(http, &prom, r#"up{job="ccmetrics"} == 1"#)?;
                let (_, rules) = http.get(&format!("{prom}/api/v1/rules"), &[])?;
                if up.is_empty() || !rules.contains("queue:ccmetrics_answer_rate") {
                    return Err(floor_dbg("not yet", &daemon, &prometheus));
                }
                Ok(())
            },
        );

        let now = now_ms();
        stdin.write_all(warm_up(now - 240_000).as_bytes()).unwrap();
        stdin.flush().unwrap();
        let zeros = r#"{__name__=~"ccmetrics_contacts_(offered|answered|abandoned|short_abandoned|answered_within_sl)_total|ccmetrics_wait_seconds_(sum|count)",dimension="queue",queue=~"sales|support"} == 0"#;
        wait_for(
            "Prometheus to scrape the warm-up: 7 zero counters per queue",
            TIMEOUT,
            || match query(http, &prom, zeros)?.len() {
                14 => Ok(()),
                n => Err(floor_dbg(&format!("{n} zero series"), &daemon, &prometheus)),
            },
        );

        let now = now_ms();
        stdin
            .write_all(measured(now - 180_000, now).as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        wait_for(
            "Prometheus to scrape the measured batch (20 offered per queue)",
            TIMEOUT,
            || {
                let r = query(
                    http,
                    &prom,
                    r#"ccmetrics_contacts_offered_total{dimension="queue"}"#,
                )?;
                let got = by_label(&r, "queue");
                if got.get("sales") == Some(&20.0) && got.get("support") == Some(&20.0) {
                    Ok(())
                } else {
                    Err(floor_dbg(&format!("{got:?}"), &daemon, &prometheus))
                }
            },
        );
        Floor {
            prometheus,
            daemon,
            _stdin: stdin,
            prom,
            dir,
        }
    }

    /// The floor shared by this binary's tests: started by the first caller, stopped
    /// when the last holder drops it.
    fn shared(http: &Http) -> Arc<Floor> {
        static SHARED: Mutex<Weak<Floor>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.upgrade() {
            return f;
        }
        let f = Arc::new(Floor::start(http));
        *slot = Arc::downgrade(&f);
        f
    }

    fn logs(&self) -> String {
        format!(
            "(test dir {})\n--- daemon log:\n{}\n--- prometheus log:\n{}",
            self.dir.path().display(),
            log_tail(&self.daemon.log),
            log_tail(&self.prometheus.log)
        )
    }
}

/// The rules' own unit tests, run by the real promtool: a failing `exp_alerts` (or a
/// rule promtool rejects) fails `cargo test`, not only `scripts/test.sh`.
#[test]
fn promtool_unit_tests_of_the_rules() {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install the Debian package prometheus"
    );
    for args in [["check", "rules", RULES], ["test", "rules", RULES_TEST]] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {PROMTOOL}: {e}"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn recording_rules_and_alerts() {
    let http = Http::new();
    let floor = Floor::shared(&http);
    let prom = &floor.prom;

    // Exact values per rule: (rule, sales, support); see `measured`.
    let ratios = [
        (
            "queue:ccmetrics_answer_rate:ratio_rate15m",
            16.0 / 20.0,
            1.0,
        ),
        (
            "queue:ccmetrics_service_level:ratio_rate15m",
            8.0 / 20.0,
            1.0,
        ),
        (
            "queue:ccmetrics_abandon_rate:ratio_rate15m",
            4.0 / 20.0,
            0.0,
        ),
        (
            "queue:ccmetrics_abandon_rate_excl_short:ratio_rate15m",
            2.0 / 18.0,
            0.0,
        ),
        (
            "queue:ccmetrics_asa_seconds:rate15m",
            382.0 / 16.0,
            210.0 / 20.0,
        ),
    ];
    wait_for(
        "the recording rules to give the expected values",
        TIMEOUT,
        || {
            let mut wrong = Vec::new();
            for (rule, sales, support) in ratios {
                let got = by_label(&query(&http, prom, rule)?, "queue");
                for (queue, want) in [("sales", sales), ("support", support)] {
                    let g = got.get(queue).copied();
                    if !g.is_some_and(|g| (g - want).abs() <= 1e-9) {
                        wrong.push(format!("{rule}{{queue={queue:?}}} = {g:?}, want {want}"));
                    }
                }
            }
            // increase() extrapolates to the end of the range (up to one scrape
            // interval past the last sample), so 20 contacts read as a bit more.
            let offered = by_label(
                &query(&http, prom, "queue:ccmetrics_offered:increase15m")?,
                "queue",
            );
            for queue in ["sales", "support"] {
                match offered.get(queue) {
                    Some(v) if (20.0 - 1e-9..22.0).contains(v) => {}
                    v => wrong.push(format!(
                        "queue:ccmetrics_offered:increase15m{{queue={queue:?}}} = {v:?}, want [20, 22)"
                    )),
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("{}\n{}", wrong.join("\n"), floor.logs()))
            }
        },
    );
    // Kafka only: parses, has no data with the stdin source.
    assert!(
        query(&http, prom, "job:ccmetrics_kafka_consumer_lag:sum")
            .unwrap()
            .is_empty(),
        "job:ccmetrics_kafka_consumer_lag:sum has data without Kafka"
    );

    // The KPI alerts: `for:` is minutes, so pending proves the expression matched.
    let alerts = wait_for("the sales KPI alerts to become active", TIMEOUT, || {
        let (_, body) = http.get(&format!("{prom}/api/v1/alerts"), &[])?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
        let active = |name: &str| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["queue"] == "sales"
                    && (a["state"] == "pending" || a["state"] == "firing")
            })
        };
        if [
            "CcmetricsAnswerRateBelowTarget",
            "CcmetricsServiceLevelBelowTarget",
            "CcmetricsAbandonRateAboveTarget",
        ]
        .iter()
        .all(|n| active(n))
        {
            Ok(alerts)
        } else {
            Err(format!("{body}\n{}", floor.logs()))
        }
    });
    let answer_rate = alerts
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == "CcmetricsAnswerRateBelowTarget"
                && a["labels"]["queue"] == "sales"
        })
        .unwrap();
    assert_eq!(
        answer_rate["labels"]["severity"], "warning",
        "{answer_rate}"
    );
    let description = answer_rate["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("answered 80% of") && description.ends_with("the target is 90%."),
        "{description}"
    );
    // support meets its targets; nobody waits an hour; the daemon is up and ready.
    let unexpected: Vec<&Value> = alerts
        .iter()
        .filter(|a| {
            a["labels"]["queue"] == "support"
                || [
                    "CcmetricsOldestWaitAboveLimit",
                    "CcmetricsDown",
                    "CcmetricsNotReady",
                    "CcmetricsAbsent",
                    "CcmetricsEventsRejected",
                    "CcmetricsConsumerPaused",
                    "CcmetricsKeysOverflowed",
                    "CcmetricsContactsExpiring",
                    "CcmetricsEventsFromTheFuture",
                ]
                .iter()
                .any(|n| a["labels"]["alertname"] == *n)
        })
        .collect();
    assert!(unexpected.is_empty(), "unexpected alerts: {unexpected:?}");
}

/// Grafana's substitutions for the test's data: multi-value variables as Grafana
/// formats them in a regex matcher, intervals as a short dashboard range would.
fn substitute(expr: &str) -> String {
    let vars = [
        ("queue", "(sales|support)"),
        ("team", "(alpha|bravo)"),
        ("agent", "(agent-01|agent-03)"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "1h"),
    ];
    let mut out = expr.to_owned();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

#[test]
fn dashboard_queries_return_data() {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );

    // Every query target of every panel (rows may nest panels when collapsed).
    let mut targets = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {:?} must use the datasource variable",
            p["title"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
            let expr = t["expr"].as_str().unwrap();
            let label = format!(
                "{} / {}",
                p["title"].as_str().unwrap(),
                t["refId"].as_str().unwrap()
            );
            targets.push((label, substitute(expr)));
        }
    }
    assert!(targets.len() >= 20, "only {} panel queries", targets.len());

    let http = Http::new();
    let floor = Floor::shared(&http);
    let prom = &floor.prom;

    // Variables: `label_values(SELECTOR, LABEL)` must list the test's values.
    let want: BTreeMap<&str, BTreeSet<&str>> = [
        ("queue", ["sales", "support"].into()),
        ("team", ["alpha", "bravo"].into()),
        ("agent", AGENTS.iter().map(|(a, _)| *a).collect()),
    ]
    .into();
    for (name, values) in &want {
        let v = vars
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(")"))
            .unwrap_or_else(|| panic!("variable {name}: {q}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let label = label.trim();
        assert_eq!(label, *name, "variable {name} lists label {label}");
        let expr = format!("count by ({label}) ({selector})");
        let got = wait_for(&format!("variable {name}: {expr}"), TIMEOUT, || {
            let r = query(&http, prom, &expr)?;
            let got: BTreeSet<String> = by_label(&r, label).into_keys().collect();
            if values.iter().all(|x| got.contains(*x)) {
                Ok(got)
            } else {
                Err(format!("{got:?}\n{}", floor.logs()))
            }
        });
        println!("variable {name}: {got:?}");
    }

    // Every target parses; every one but the Kafka-only ones returns data. Rates need
    // two samples in their 1m range: poll until all have data (or time out).
    let kafka_only = |e: &str| KAFKA_ONLY.iter().any(|m| e.contains(m));
    let mut missing: Vec<String> = Vec::new();
    let start = Instant::now();
    loop {
        missing.clear();
        for (label, expr) in &targets {
            match query(&http, prom, expr) {
                Err(e) if e.contains("bad_data") => {
                    panic!("panel {label}: {expr} does not parse: {e}")
                }
                Err(e) => missing.push(format!("{label}: {expr}: {e}")),
                Ok(r) if r.is_empty() && !kafka_only(expr) => {
                    missing.push(format!("{label}: {expr}: no data"))
                }
                Ok(_) => {}
            }
        }
        if missing.is_empty() || start.elapsed() > TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (label, expr) in targets.iter().filter(|(_, e)| kafka_only(e)) {
        println!("note: {label}: {expr}: Kafka source only, checked to parse, not for data");
    }
    assert!(
        missing.is_empty(),
        "panel queries without data after {TIMEOUT:?}:\n{}\n{}",
        missing.join("\n"),
        floor.logs()
    );
}
