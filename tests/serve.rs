//! The daemon end to end: `serve --source stdin` fed a golden scenario, observed over
//! HTTP, stopped with SIGTERM; its snapshots must equal what `replay` produced for the
//! same events (tests/golden/basic_voice).

mod support;

use std::io::{BufReader, Write};
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
    let base = support::listen_address(&mut stdout)
        .unwrap_or_else(|first| panic!("no address in {first:?}"));

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
    // The process's memory, read at the scrape: its RSS, and jemalloc's live bytes.
    let sample = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let rss = sample("process_resident_memory_bytes ");
    assert!(rss > 1e6, "{rss}");
    let (_, status) = get(&format!("{base}/api/v1/status")).unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["memory"]["rss"].as_f64().unwrap() > 1e6, "{status}");
    // jemalloc's account only in a build with it (the binary is built with the
    // features this test is).
    if cfg!(all(target_os = "linux", feature = "alloc-stats")) {
        let allocated = sample("ccmetrics_allocator_bytes{kind=\"allocated\"} ");
        assert!(allocated > 1e5 && allocated < rss, "{rss} {allocated}");
        assert!(
            status["memory"]["allocator"]["allocated"].as_f64().unwrap() > 1e5,
            "{status}"
        );
    } else {
        assert!(!metrics.contains("ccmetrics_allocator_bytes"), "{metrics}");
        assert!(status["memory"]["allocator"].is_null(), "{status}");
    }
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

/// `ccmetrics_queue_target{queue="vip",kpi="service_level"}` as served now.
fn vip_target(base: &str) -> Option<f64> {
    let (_, m) = get(&format!("{base}/metrics"))?;
    m.lines().find_map(|l| {
        l.strip_prefix("ccmetrics_queue_target{queue=\"vip\",kpi=\"service_level\"} ")?
            .parse()
            .ok()
    })
}

#[test]
fn sighup_reloads_targets_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("serve.toml");
    let log = tmp.path().join("serve.log");
    let write = |vip_sl: &str, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[store]\nurl = \"sqlite://{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}\n[targets.queues.vip]\nservice_level = {vip_sl}\n",
                tmp.path().join("serve.db").display()
            ),
        )
        .unwrap();
    };
    write("0.8", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args(["serve", "--source", "sim", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = support::listen_address(&mut stdout)
        .unwrap_or_else(|first| panic!("no address in {first:?}"));
    wait_for("the first target", Duration::from_secs(20), || {
        (vip_target(&base)? == 0.8).then_some(())
    });
    let hup = |child: &std::process::Child| {
        let st = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let log_has = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(needle)
    };

    // A changed target is applied; a changed shutdown timeout only logged.
    write("0.9", "[serve]\nshutdown_timeout = \"7s\"\n");
    hup(&child);
    wait_for("the reloaded target", Duration::from_secs(20), || {
        (vip_target(&base)? == 0.9).then_some(())
    });
    wait_for("the needs-restart line", Duration::from_secs(10), || {
        log_has("needs restart").then_some(())
    });
    assert!(log_has("serve.shutdown_timeout"));

    // An invalid file (a ratio out of range) is rejected; the old values stay.
    write("90", "");
    hup(&child);
    wait_for("the rejection line", Duration::from_secs(10), || {
        log_has("config reload rejected").then_some(())
    });
    assert!(log_has("must be a ratio"));
    assert_eq!(vip_target(&base), Some(0.9));
    // And a file that is not TOML at all.
    std::fs::write(&cfg, "[targets\nbroken").unwrap();
    hup(&child);
    wait_for("the second rejection", Duration::from_secs(10), || {
        let n = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("config reload rejected")
            .count();
        (n >= 2).then_some(())
    });
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    assert_eq!(vip_target(&base), Some(0.9));
    assert_eq!(get(&format!("{base}/healthz")).map(|r| r.0), Some(200));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = wait_for("exit after SIGTERM", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "serve exited with {exit}");
}
