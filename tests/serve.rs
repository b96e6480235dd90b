//! The daemon end to end: `serve --source stdin` fed a golden scenario, observed over
//! HTTP, stopped with SIGTERM; its snapshots must equal what `replay` produced for the
//! same events (tests/golden/basic_voice).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(url: &str) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let r = reqwest::get(url).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    })
}

#[test]
fn serve_from_stdin_matches_replay_and_stops_cleanly() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/basic_voice");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"sqlite://{}\"\n[windows]\ntimezone = \"UTC\"\nintervals = [\"15m\", \"1d\"]\nidle_timeout = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            tmp.path().join("serve.db").display()
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
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics,"))
        .map(|w| w.trim_end_matches("/metrics,").to_owned())
        .unwrap_or_else(|| panic!("no address in {first:?}"));

    let events = std::fs::read(case.join("events.jsonl")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&events).unwrap();
    stdin.write_all(b"this line is not json\n").unwrap();
    drop(stdin);

    assert_eq!(get(&format!("{base}/healthz")).map(|r| r.0), Some(200));
    wait_for("ready", Duration::from_secs(10), || {
        get(&format!("{base}/readyz")).filter(|r| r.0 == 200)
    });
    // All 20 events accepted, and the idle wall-clock advance has moved the watermark
    // past every interval (the input ends at 09:29; the wall clock is later).
    wait_for(
        "events processed and the watermark advanced by the wall clock",
        Duration::from_secs(20),
        || {
            let (_, body) = get(&format!("{base}/api/v1/status"))?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let wm: jiff::Timestamp = v["watermark"].as_str()?.parse().ok()?;
            let flushed: jiff::Timestamp = v["last_flush"].as_str()?.parse().ok()?;
            (v["stats"]["accepted"] == 20
                && wm > "2026-11-23T10:00:00Z".parse().ok()?
                && flushed > jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5))
            .then_some(())
        },
    );
    let (_, metrics) = get(&format!("{base}/metrics")).unwrap();
    assert!(
        metrics.contains("ccmetrics_events_rejected_total{reason=\"invalid_json\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("ccmetrics_contacts_offered_total{dimension=\"queue\",queue=\"support\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "ccmetrics_wait_seconds_bucket{dimension=\"queue\",queue=\"support\",le=\"20\"} 1"
        ),
        "{metrics}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for("exit after SIGTERM", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "serve exited with {exit}");

    let export = Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args([
            "export",
            "--window",
            "15m",
            "--dimension",
            "queue",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let want = std::fs::read_to_string(case.join("15m_queue.csv")).unwrap();
    assert_eq!(String::from_utf8(export.stdout).unwrap(), want);
}
