//! Shared harness of the Kafka end-to-end tests: a real broker per test (tansu,
//! started by scripts/kafka-broker.sh, which installs it when missing), the real `ccmetrics` binary
//! for `produce`, `serve`, `replay` and `export`, and waits on conditions with
//! timeouts.
#![allow(dead_code)] // each test binary uses a different part

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ccmetrics");

/// How long a daemon may take to catch up with a test's topic.
pub const CATCH_UP: Duration = Duration::from_secs(180);

/// A fresh PostgreSQL database of the test's own (dropped with `drop_db`), and the
/// runtime its handle lives on.
pub fn pg_db() -> (tokio::runtime::Runtime, ccmetrics::store::testing::TestDb) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt
        .block_on(ccmetrics::store::testing::TestDb::create())
        .unwrap_or_else(|e| panic!("{e}"));
    (rt, db)
}

/// The Kafka tests run one at a time: each starts several daemons, and side by side
/// on a 2-core machine they would measure the machine, not the daemon.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A broker of the test's own: a fresh tansu (in memory) on a free port, stopped on
/// drop, so no test sees another's topics, groups or leftovers.
pub struct Broker {
    pub addr: String,
    pid: u32,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// A broker that tells its clients to connect to `advertised` (a proxy in front of
    /// it) instead of its own address.
    pub fn start_advertising(advertised: &str) -> Broker {
        Broker::start_with(&[("TANSU_ADVERTISED", advertised)])
    }

    fn start_with(env: &[(&str, &str)]) -> Broker {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-broker.sh");
        let pid_file = tempfile::NamedTempFile::new().unwrap();
        let out = Command::new("bash")
            .arg(script)
            .env("TANSU_PID_FILE", pid_file.path())
            .envs(env.iter().copied())
            .output()
            .expect("running scripts/kafka-broker.sh");
        assert!(
            out.status.success(),
            "starting the test broker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let pid = std::fs::read_to_string(pid_file.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Broker { addr, pid }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        jiff::Timestamp::now().as_millisecond() % 1_000_000
    )
}

pub fn create_topic(broker: &str, name: &str, partitions: u32) {
    let out = Command::new("tansu")
        .args(["topic", "create", "--broker"])
        .arg(format!("tcp://{broker}"))
        .args(["--partitions", &partitions.to_string(), name])
        .output()
        .expect("running `tansu topic create` (is tansu on PATH?)");
    assert!(
        out.status.success(),
        "creating topic {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One test's world: a temp dir, a topic, a group, a store and a config file.
pub struct World {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub dead_letter_topic: String,
    pub group: String,
    pub store_url: String,
    pub config: PathBuf,
}

impl World {
    pub fn new(name: &str, partitions: u32, store_url: Option<String>) -> World {
        let broker = Broker::start();
        let bootstrap = broker.addr.clone();
        World::on(broker, &bootstrap, name, partitions, store_url)
    }

    /// A world whose clients (daemons, producers) reach the broker only through a proxy
    /// the test can cut: the broker advertises the proxy's address.
    pub fn behind_proxy(name: &str, partitions: u32) -> (World, proxy::Proxy) {
        let proxy = proxy::Proxy::listen();
        let broker = Broker::start_advertising(&proxy.addr());
        proxy.forward_to(&broker.addr);
        let w = World::on(broker, &proxy.addr(), name, partitions, None);
        (w, proxy)
    }

    /// `bootstrap`: the address the config names (the broker's, or a proxy's).
    fn on(
        broker: Broker,
        bootstrap: &str,
        name: &str,
        partitions: u32,
        store_url: Option<String>,
    ) -> World {
        let mut dir = tempfile::tempdir().unwrap();
        // Daemon logs and stores for a post-mortem: CCMETRICS_TEST_KEEP=1.
        if std::env::var_os("CCMETRICS_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let topic = unique(name);
        let dead_letter_topic = format!("{topic}-dlq");
        create_topic(&broker.addr, &topic, partitions);
        create_topic(&broker.addr, &dead_letter_topic, 1);
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("kafka.db").display()));
        let group = format!("{topic}-group");
        let config = dir.path().join("ccmetrics.toml");
        std::fs::write(
            &config,
            format!(
                r#"[store]
url = "{store_url}"
[windows]
idle_timeout = "2s"
[http]
listen = "127.0.0.1:0"
[kafka]
brokers = "{bootstrap}"
topics = ["{topic}"]
group_id = "{group}"
dead_letter_topic = "{dead_letter_topic}"
commit_interval = "300ms"
[kafka.properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"#
            ),
        )
        .unwrap();
        World {
            broker,
            dir,
            topic,
            dead_letter_topic,
            group,
            store_url,
            config,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Simulated events (with the simulator's duplicates and out-of-order delays),
    /// stamped from two days ago: within the correction horizon of the wall clock, so
    /// the daemon's idle advance (wall clock) can never make them too late.
    pub fn generate(&self, events: u64, seed: u64) -> PathBuf {
        let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
        let start = start.round(jiff::Unit::Second).unwrap().to_string();
        let out = self.path(&format!("events-{seed}.jsonl"));
        let st = Command::new(BIN)
            .args([
                "generate",
                "--events",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--agents", "60", "--queues", "6", "--start", &start])
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    /// Publish `input` with one record per batch: tansu 0.6 loses the rest of a batch
    /// when a fetch starts inside it, which a consumer resuming from a stored offset does.
    pub fn produce(&self, input: &Path, extra: &[&str]) -> std::process::Child {
        Command::new(BIN)
            .args(["produce", "--property", "batch.num.messages=1", "--config"])
            .arg(&self.config)
            .arg("--input")
            .arg(input)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn produce_all(&self, input: &Path) {
        let out = self.produce(input, &[]).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "produce failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn serve(&self, name: &str) -> Daemon {
        Daemon::start(&self.config, &self.path(&format!("{name}.log")), &[])
    }

    /// A daemon in consumer group `group` instead of the configured one. Offsets live
    /// in the store, keyed by topic partition, so a new group resumes exactly where the
    /// old one committed. Used after a kill -9: tansu 0.6 never evicts a dead member
    /// from its group, so a restarted member of the same group would wait forever for
    /// the dead one's partitions (real Kafka evicts it after `session.timeout.ms`).
    pub fn serve_in_group(&self, name: &str, group: &str) -> Daemon {
        Daemon::start(
            &self.config,
            &self.path(&format!("{name}.log")),
            &[("CCMETRICS__KAFKA__GROUP_ID", group)],
        )
    }

    /// The merged exports the daemon's store holds.
    pub fn exports(&self) -> String {
        exports(&self.config, &[])
    }

    /// The same exports from `replay` of `inputs` into a store of its own.
    pub fn replay_exports(&self, inputs: &[&Path]) -> String {
        let url = format!("sqlite://{}", self.path("replay.db").display());
        let env = [("CCMETRICS__STORE__URL", url.as_str())];
        let mut c = Command::new(BIN);
        c.args(["replay", "--config"]).arg(&self.config);
        for i in inputs {
            c.arg("--input").arg(i);
        }
        let out = c.envs(env).output().unwrap();
        assert!(
            out.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exports(&self.config, &env)
    }

    /// Wait until the daemon's exports equal `expected`, then return.
    pub fn wait_for_exports(&self, expected: &str, timeout: Duration) {
        let mut last = String::new();
        let start = Instant::now();
        loop {
            last = self.exports_or(last);
            if last == expected {
                return;
            }
            if start.elapsed() > timeout {
                let diff: Vec<String> = expected
                    .lines()
                    .zip(last.lines())
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .map(|(a, b)| format!("  replay: {a}\n  kafka:  {b}"))
                    .collect();
                panic!(
                    "exports still differ after {timeout:?} ({} vs {} lines):\n{}",
                    expected.lines().count(),
                    last.lines().count(),
                    diff.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn exports_or(&self, previous: String) -> String {
        // The store may be busy (a SQLite writer): keep the previous answer then.
        std::panic::catch_unwind(|| self.exports()).unwrap_or(previous)
    }
}

/// Every export the tests compare, concatenated, without the `revision` column: the
/// figures must be equal, but how many commits produced them (the revision) depends on
/// how the work was split.
pub fn exports(config: &Path, env: &[(&str, &str)]) -> String {
    let mut all = String::new();
    for (window, dims) in [
        ("15m", &["all", "channel", "queue", "team", "agent"][..]),
        ("1d", &["queue", "agent"][..]),
    ] {
        for d in dims {
            let out = Command::new(BIN)
                .args(["export", "--window", window, "--dimension", d, "--config"])
                .arg(config)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "export: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8(out.stdout).unwrap().lines() {
                let cut = line.rfind(',').unwrap_or(line.len());
                all.push_str(&line[..cut]);
                all.push('\n');
            }
        }
    }
    all
}

/// A running `ccmetrics serve`.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    /// Its stderr, quoted when it fails (the test's folder is gone by then).
    log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let base = listen_address(&mut stdout)
            .unwrap_or_else(|first| panic!("no address in {first:?}; see {}", log.display()));
        Daemon {
            child,
            base,
            log: log.to_path_buf(),
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let r = reqwest::get(format!("{}{path}", self.base)).await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.ok()?))
        })
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let (_, body) = self.get("/api/v1/status")?;
        serde_json::from_str(&body).ok()
    }

    /// How many partitions it owns now (0 while it does not answer).
    pub fn partitions_owned(&self) -> usize {
        self.status()
            .map_or(0, |s| s["partitions"].as_array().map_or(0, Vec::len))
    }

    /// Events read (accepted + duplicates + rejected) over the partitions it owns now.
    pub fn read(&self) -> u64 {
        self.status()
            .and_then(|s| s["stats"]["read"].as_u64())
            .unwrap_or(0)
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `ccmetrics_store_commits_total{result="error"}` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most `timeout`) for the exit: its status and how long it
    /// took from the signal.
    pub fn terminate(mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let started = Instant::now();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let status = wait_for("the daemon to exit after SIGTERM", timeout, || {
            self.child.try_wait().unwrap()
        });
        (status, started.elapsed())
    }

    /// Waits (at most `timeout`) for the daemon to exit by itself: its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for("the daemon to exit", timeout, || {
            self.child.try_wait().unwrap()
        })
    }

    /// SIGTERM; the daemon must commit and exit 0 within the timeout.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let status = wait_for(
            "the daemon to exit after SIGTERM",
            Duration::from_secs(30),
            || self.child.try_wait().unwrap(),
        );
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "serve exited with {status}; the last lines of its log:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base URL (`http://HOST:PORT`) from `serve`'s first stdout line, which names
/// its `/metrics` address; `Err(line)` when the line has none.
pub fn listen_address(stdout: &mut impl BufRead) -> Result<String, String> {
    let mut first = String::new();
    stdout.read_line(&mut first).map_err(|e| e.to_string())?;
    first
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics,"))
        .map(|w| w.trim_end_matches("/metrics,").to_owned())
        .ok_or(first)
}
