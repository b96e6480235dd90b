//! The wallboard in a real headless Chromium (Debian `chromium`): `serve --source
//! stdin` fed a fixed event set stamped around now; the page, updated over
//! Server-Sent Events, must show the expected numbers, turn the breached queue red,
//! list the agents; and the JSON API must refuse requests without the token.
//! A screenshot is kept in `target/wallboard.png` as a test artifact.
//! A second test runs the Kafka source behind a proxy (`support::proxy`) and cuts
//! it: the page must say that its figures are not live while no broker answers.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "floor-secret";

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(url: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let mut r = reqwest::Client::new().get(url);
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    })
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fixed floor, stamped relative to `now` (ms).
fn events(now: i64) -> String {
    let at = |s: i64| now - s * 1000;
    let mut v = Vec::new();
    let mut push = |line: String| v.push(line);
    // sales: 4 offered, 3 answered within 10 s, 1 abandoned → answer rate 75 % < 95 %.
    for (i, c) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        let t = 300 - 30 * i as i64;
        push(format!(
            r#"{{"event_id":"o-{c}","type":"contact.offered","ts":{},"contact_id":"{c}","channel":"voice","queue":"sales","customer_id":"k-{c}"}}"#,
            at(t)
        ));
        if i < 3 {
            push(format!(
                r#"{{"event_id":"a-{c}","type":"contact.answered","ts":{},"contact_id":"{c}","agent_id":"bob","team":"blue"}}"#,
                at(t - 8)
            ));
        } else {
            push(format!(
                r#"{{"event_id":"x-{c}","type":"contact.abandoned","ts":{},"contact_id":"{c}"}}"#,
                at(t - 40)
            ));
        }
    }
    // support: 2 offered and answered within 5 s; one more waiting for 10 s.
    for (i, c) in ["p1", "p2"].iter().enumerate() {
        let t = 200 - 20 * i as i64;
        push(format!(
            r#"{{"event_id":"o-{c}","type":"contact.offered","ts":{},"contact_id":"{c}","channel":"chat","queue":"support","customer_id":"k-{c}"}}"#,
            at(t)
        ));
        push(format!(
            r#"{{"event_id":"a-{c}","type":"contact.answered","ts":{},"contact_id":"{c}","agent_id":"ann","team":"blue"}}"#,
            at(t - 5)
        ));
    }
    push(format!(
        r#"{{"event_id":"o-p3","type":"contact.offered","ts":{},"contact_id":"p3","channel":"chat","queue":"support","customer_id":"k-p3"}}"#,
        at(10)
    ));
    push(format!(
        r#"{{"event_id":"st-ann","type":"agent.state","ts":{},"agent_id":"ann","team":"blue","state":"available"}}"#,
        at(120)
    ));
    push(format!(
        r#"{{"event_id":"st-bob","type":"agent.state","ts":{},"agent_id":"bob","team":"blue","state":"busy"}}"#,
        at(60)
    ));
    v.join("\n") + "\n"
}

/// A headless Chromium driven over WebDriver (Debian `chromium-driver`), so the test
/// can wait on the page's own condition (a floor message rendered) instead of a fixed
/// delay; the stream never ends, so a plain `--dump-dom` has nothing to wait for.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Browser {
    fn start() -> Browser {
        let chromedriver = "/usr/bin/chromedriver";
        assert!(
            std::path::Path::new(chromedriver).exists(),
            "the wallboard test needs Debian's chromium and chromium-driver (scripts/test.sh installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            rt.block_on(http.get(format!("{base}/status")).send()).ok()
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1400"]}}}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            rt,
            http,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .json(&body.unwrap_or(serde_json::json!({}))),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let text = self
            .rt
            .block_on(async { req.send().await?.text().await })
            .expect("WebDriver call");
        let v: serde_json::Value = serde_json::from_str(&text).expect("WebDriver JSON");
        // W3C WebDriver wraps every answer in {"value": …}.
        v.get("value").cloned().unwrap_or(v)
    }

    fn session(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn script(&self, js: &str) -> serde_json::Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({"script": js, "args": []})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's DOM once it has rendered a floor message with `offered_today` contacts,
/// and a screenshot of it.
fn rendered_page(url: &str, offered_today: u64, screenshot: &std::path::Path) -> String {
    let b = Browser::start();
    b.session("POST", "/url", Some(serde_json::json!({"url": url})));
    wait_for(
        "the wallboard to render the floor",
        Duration::from_secs(30),
        || {
            let n = b.script(
            "const e = document.querySelector('[data-queue=\"all\"] [data-testid=\"offered-today\"]'); return e ? e.textContent : null;",
        );
            (n.as_str() == Some(&offered_today.to_string())).then_some(())
        },
    );
    let png = b.session("GET", "/screenshot", None);
    let bytes = base64_decode(png.as_str().expect("screenshot data"));
    std::fs::write(screenshot, bytes).unwrap();
    b.script("return document.documentElement.outerHTML;")
        .as_str()
        .unwrap()
        .to_owned()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The text of the first element with `data-testid="{id}"` after `from` in `html`.
fn testid<'a>(html: &'a str, from: usize, id: &str) -> &'a str {
    let needle = format!("data-testid=\"{id}\"");
    let at = html[from..]
        .find(&needle)
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no {id} after {from}"));
    let open = at + html[at..].find('>').unwrap() + 1;
    let close = open + html[open..].find('<').unwrap();
    html[open..close].trim()
}

#[test]
fn wallboard_shows_the_floor_and_turns_red_on_breach() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("wallboard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[store]
url = "sqlite://{}"
[http]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[targets.queues.sales]
answer_rate = 0.95
service_level = 0.80
[targets.queues.support]
answer_rate = 0.50
service_level = 0.50
max_wait = "120s"
"#,
            tmp.path().join("w.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args(["serve", "--source", "stdin", "--config"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let _d = Daemon(child);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics,"))
        .map(|w| w.trim_end_matches("/metrics,").to_owned())
        .unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    stdin.write_all(events(now).as_bytes()).unwrap();
    stdin.flush().unwrap();

    // The token guards the JSON API and the page, not the probes or /metrics.
    assert_eq!(get(&format!("{base}/api/v1/floor"), None).unwrap().0, 401);
    assert_eq!(get(&format!("{base}/wallboard"), None).unwrap().0, 401);
    assert_eq!(get(&format!("{base}/healthz"), None).unwrap().0, 200);
    let floor = wait_for(
        "every event in the floor view",
        Duration::from_secs(30),
        || {
            let (code, body) = get(&format!("{base}/api/v1/floor"), Some(TOKEN))?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200
                && v["centre"]["today"]["offered"] == 6
                && v["agents"].as_array()?.len() == 2)
                .then_some(v)
        },
    );
    let sales = floor["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "sales")
        .unwrap();
    assert_eq!(sales["current"]["answer_rate"], 0.75);
    assert_eq!(sales["status"]["answer_rate"], "red");
    let support = floor["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "support")
        .unwrap();
    assert_eq!(support["waiting"], 1);
    assert_eq!(support["status"]["answer_rate"], "ok");
    let (_, metrics) = get(&format!("{base}/metrics"), None).unwrap();
    for needle in [
        "ccmetrics_waiting_contacts{dimension=\"queue\",queue=\"support\"} 1",
        "ccmetrics_agents{dimension=\"all\",state=\"busy\"} 1",
        "ccmetrics_queue_target{queue=\"sales\",kpi=\"answer_rate\"} 0.95",
        "ccmetrics_ready 1",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle:?}");
    }

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wallboard.png");
    let html = rendered_page(&format!("{base}/wallboard?token={TOKEN}"), 6, &shot);
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    eprintln!("wallboard screenshot: {}", shot.display());
    let tile = |q: &str| {
        html.find(&format!("data-queue=\"{q}\""))
            .unwrap_or_else(|| panic!("no tile for {q} in the page:\n{html}"))
    };
    let (s, p, all) = (tile("sales"), tile("support"), tile("all"));
    assert!(
        html[s..].starts_with("data-queue=\"sales\" data-status=\"red\""),
        "sales tile not red"
    );
    assert_eq!(testid(&html, s, "ar"), "75.0 %");
    assert_eq!(testid(&html, s, "offered"), "4");
    assert!(
        html[p..].starts_with("data-queue=\"support\" data-status=\"ok\""),
        "support tile not ok"
    );
    assert_eq!(testid(&html, p, "waiting"), "1");
    // A contact counts as offered once it leaves the queue (docs/metrics.md): the
    // waiting one is not in the rates yet.
    assert_eq!(testid(&html, p, "ar"), "100.0 %");
    assert_eq!(testid(&html, all, "offered-today"), "6");
    assert!(
        html.contains("data-agent=\"ann\"") && html.contains("data-agent=\"bob\""),
        "agent table"
    );
    assert!(
        html.contains("<td class=\"st-busy\">busy</td>"),
        "bob's state"
    );
}

/// With the broker out of reach the figures stand still; the page must not go on
/// calling them live. It says so within seconds of the cut, and goes back to "live"
/// once the broker answers again.
#[test]
fn wallboard_says_its_figures_are_not_live_while_kafka_is_away() {
    let _serial = support::serial();
    let (w, proxy) = support::World::behind_proxy("wallboard-outage", 1);
    let events = w.generate(2_000, 41);
    w.produce_all(&events);
    let d = w.serve("serve");
    wait_for(
        "the daemon to read the topic",
        Duration::from_secs(120),
        || (d.read() >= 2_000).then_some(()),
    );
    let b = Browser::start();
    b.session(
        "POST",
        "/url",
        Some(serde_json::json!({"url": format!("{}/wallboard", d.base)})),
    );
    let conn = || {
        let v = b.script(
            "const c = document.getElementById('conn'); return [c.textContent, c.className];",
        );
        (
            v[0].as_str().unwrap_or_default().to_owned(),
            v[1].as_str().unwrap_or_default().to_owned(),
        )
    };
    wait_for("the page to say live", Duration::from_secs(30), || {
        let (text, class) = conn();
        (text.starts_with("live") && class.is_empty()).then_some(())
    });

    let outage = proxy.cut();
    let (text, _) = wait_for("the page to say not live", Duration::from_secs(30), || {
        let (text, class) = conn();
        (class == "down").then_some((text, class))
    });
    assert!(text.starts_with("not live: no input since "), "{text}");
    let floor: serde_json::Value =
        serde_json::from_str(&d.get("/api/v1/floor").unwrap().1).unwrap();
    assert!(
        floor["input_down_since"].is_i64(),
        "{}",
        floor["input_down_since"]
    );
    drop(outage);

    wait_for(
        "the page to say live again",
        Duration::from_secs(60),
        || {
            let (text, class) = conn();
            (text.starts_with("live") && class.is_empty()).then_some(())
        },
    );
    let floor: serde_json::Value =
        serde_json::from_str(&d.get("/api/v1/floor").unwrap().1).unwrap();
    assert!(floor["input_down_since"].is_null());
    d.stop();
}
