//! Hostile input end to end (issue 7): a stream mixing every kind of bad message with
//! good events, through the real `ccmetrics replay`. Every good event counts exactly
//! as in a clean run, every bad one is rejected with its reason, counted and
//! dead-lettered, and a far-future event in the middle neither counts nor closes
//! windows early.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn ccm(args: &[&str], db: &Path) -> Output {
    let url = format!("sqlite://{}", db.display());
    Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args(args)
        .env("CCMETRICS__STORE__URL", url)
        .output()
        .expect("run ccmetrics")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every bad message, with the reason it must be rejected for.
fn hostile() -> Vec<(Vec<u8>, &'static str)> {
    let ok = |extra: &str| -> Vec<u8> {
        format!(
            r#"{{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1"{extra}}}"#
        )
        .into_bytes()
    };
    let depth = 30_000; // under the 64 KiB message limit
    let mut invalid_utf8 = ok("");
    let at = invalid_utf8.len() - 3;
    invalid_utf8[at] = 0xff;
    let mut raw_nul = ok("");
    raw_nul[at] = 0;
    vec![
        (b"not json at all".to_vec(), "invalid_json"),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T"#.to_vec(),
            "invalid_json",
        ),
        (b"[1,2,3]".to_vec(), "not_object"),
        (b"\"contact.ended\"".to_vec(), "not_object"),
        (
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            "not_object",
        ),
        (
            // Nested inside a field the decoder reads: its first token is wrong.
            ok(&format!(r#","queue":{}{}"#, "[".repeat(depth), "]".repeat(depth))),
            "invalid_field",
        ),
        (ok(&format!(r#","note":"{}""#, "x".repeat(10 << 20))), "oversize"),
        (invalid_utf8, "invalid_json"),
        (raw_nul, "invalid_json"),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T00:01:00Z","contact_id":"a\u0000b"}"#.to_vec(),
            "invalid_field",
        ),
        (
            format!(
                r#"{{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T00:01:00Z","contact_id":"{}"}}"#,
                "c".repeat(5000)
            )
            .into_bytes(),
            "invalid_field",
        ),
        (ok(r#","talk_ms":1e20"#), "invalid_field"),
        (ok(r#","talk_ms":1e400"#), "invalid_field"),
        (ok(r#","hold_ms":-5"#), "invalid_field"),
        (ok(r#","wrap_ms":"NaN""#), "invalid_field"),
        (ok(r#","talk_ms":NaN"#), "invalid_json"),
        (
            br#"{"event_id":"bad","type":"contact.converted","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1","amount":-10}"#.to_vec(),
            "invalid_field",
        ),
        (
            br#"{"event_id":"bad","type":"survey.responded","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1","score":9}"#.to_vec(),
            "invalid_field",
        ),
        (
            br#"{"event_id":"bad","type":"qa.scored","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1","agent_id":"a","score":101}"#.to_vec(),
            "invalid_field",
        ),
        (
            br#"{"event_id":"bad","type":"contact.exploded","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1"}"#.to_vec(),
            "unknown_type",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T00:01:00Z"}"#.to_vec(),
            "missing_field",
        ),
        (
            br#"{"event_id":"bad","type":"contact.offered","ts":"2026-11-02T00:01:00Z","contact_id":"bad-1","channel":"voice"}"#.to_vec(),
            "missing_field",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"2026-11-02T00:01:00Z","contact_id":7}"#.to_vec(),
            "invalid_field",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"yesterday","contact_id":"bad-1"}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"2026-11-02 00:01","contact_id":"bad-1"}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":1793577660,"contact_id":"bad-1"}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"1970-01-01T00:00:00Z","contact_id":"bad-1"}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            br#"{"event_id":"bad","type":"contact.ended","ts":"9999-12-31T23:59:59Z","contact_id":"bad-1"}"#.to_vec(),
            "invalid_timestamp",
        ),
    ]
}

/// A valid event from a device whose clock is decades ahead: it would move the
/// watermark past every window if it were applied.
const FAR_FUTURE: &[u8] = br#"{"event_id":"future-1","type":"contact.offered","ts":"2090-01-01T00:00:00Z","contact_id":"future-c","channel":"voice","queue":"q-future"}"#;

fn replay(
    dir: &Path,
    name: &str,
    input: &Path,
    config: &Path,
    extra: &[&str],
) -> (String, Vec<serde_json::Value>, String) {
    let db = dir.join(format!("{name}.db"));
    let dead = dir.join(format!("{name}.dead.jsonl"));
    let mut args = vec![
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = ccm(&args, &db);
    assert!(o.status.success(), "{}", text(&o));
    let letters = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Everything the store holds, every window and dimension.
    let mut export = String::new();
    for window in ["15m", "1d"] {
        for dim in ["all", "queue", "team", "agent"] {
            let o = ccm(
                &[
                    "export",
                    "--config",
                    config.to_str().unwrap(),
                    "--window",
                    window,
                    "--dimension",
                    dim,
                ],
                &db,
            );
            assert!(o.status.success(), "{}", text(&o));
            export.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        letters,
        export,
    )
}

fn summary_count(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| {
            let l = l.trim_start();
            l.strip_prefix(label)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {label:?} in\n{summary}"))
}

#[test]
fn hostile_stream_rejects_each_bad_message_and_counts_every_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[windows]\ntimezone = \"UTC\"\nintervals = [\"15m\", \"1d\"]\n",
    )
    .unwrap();
    let clean = dir.path().join("clean.jsonl");
    let g = ccm(
        &[
            "generate",
            "--events",
            "4000",
            "--agents",
            "40",
            "--queues",
            "4",
            "--out",
            clean.to_str().unwrap(),
        ],
        &dir.path().join("unused.db"),
    );
    assert!(g.status.success(), "{}", text(&g));
    let good: Vec<Vec<u8>> = std::fs::read(&clean)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert!(good.len() >= 4000);

    // Spread the bad messages through the stream, the far-future one in the middle.
    let bad = hostile();
    let mut mixed: Vec<u8> = Vec::new();
    let step = good.len() / (bad.len() + 2);
    let mut bad_iter = bad.iter();
    for (i, line) in good.iter().enumerate() {
        if i > 0
            && i % step == 0
            && let Some((b, _)) = bad_iter.next()
        {
            mixed.extend_from_slice(b);
            mixed.push(b'\n');
        }
        if i == good.len() / 2 {
            mixed.extend_from_slice(FAR_FUTURE);
            mixed.push(b'\n');
        }
        mixed.extend_from_slice(line);
        mixed.push(b'\n');
    }
    assert!(bad_iter.next().is_none(), "every bad message placed");
    let mixed_path = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed_path, &mixed).unwrap();

    let started = std::time::Instant::now();
    let (clean_sum, clean_letters, clean_export) =
        replay(dir.path(), "clean", &clean, &config, &[]);
    let (sum, letters, export) = replay(dir.path(), "mixed", &mixed_path, &config, &[]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "hostile input must not hang the replay"
    );

    // Good events: all counted, and the results are those of the clean run.
    assert_eq!(
        summary_count(&sum, "accepted"),
        summary_count(&clean_sum, "accepted"),
        "{sum}"
    );
    assert_eq!(
        summary_count(&sum, "events read"),
        summary_count(&clean_sum, "events read") + bad.len() as u64 + 1
    );
    assert_eq!(export, clean_export, "snapshots differ from the clean run");
    assert!(export.lines().count() > 20, "{export}");

    // Bad ones: each with its reason, counted and dead-lettered.
    let clean_reasons: Vec<&str> = clean_letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        clean_reasons.is_empty(),
        "the generated data is clean: {clean_reasons:?}"
    );
    let mut expected: Vec<&str> = bad.iter().map(|(_, r)| *r).collect();
    expected.push("future");
    let got: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_unstable();
    assert_eq!(got_sorted, expected_sorted);
    let mut per_reason = std::collections::BTreeMap::<&str, u64>::new();
    for r in &expected {
        *per_reason.entry(r).or_default() += 1;
    }
    assert_eq!(summary_count(&sum, "rejected"), expected.len() as u64);
    for (reason, n) in per_reason {
        assert_eq!(summary_count(&sum, reason), n, "{reason} in\n{sum}");
    }
    let future = letters
        .iter()
        .find(|l| l["reason"] == "future")
        .expect("future dead letter");
    assert!(
        future["detail"]
            .as_str()
            .unwrap()
            .contains("max_clock_skew"),
        "{future}"
    );
    assert_eq!(future["message"].as_str().unwrap().as_bytes(), FAR_FUTURE);

    // The check is what protects the windows: with the skew opened up, the same
    // event is applied and everything after it is judged too late.
    let lax = dir.path().join("lax.toml");
    std::fs::write(
        &lax,
        "[windows]\ntimezone = \"UTC\"\nintervals = [\"15m\", \"1d\"]\nmax_clock_skew = \"100years\"\n",
    )
    .unwrap();
    let (lax_sum, _, lax_export) = replay(dir.path(), "lax", &mixed_path, &lax, &[]);
    assert!(summary_count(&lax_sum, "too_late") > 100, "{lax_sum}");
    assert_ne!(lax_export, clean_export);

    // `--now` pins the reference instant: ten years before the data, every good event
    // is `future` too; so a recorded replay gives the same answer whenever it runs.
    let (pinned, _, _) = replay(
        dir.path(),
        "pinned",
        &mixed_path,
        &config,
        &["--now", "2016-01-01T00:00:00Z"],
    );
    assert_eq!(summary_count(&pinned, "accepted"), 0, "{pinned}");
}

fn wait_for<T>(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn get(url: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async { reqwest::get(url).await.ok()?.text().await.ok() })
}

/// `serve` applies the same checks: a far-future event in the middle of the stream is
/// rejected as `future`, counted on /metrics and dead-lettered, and the windows come
/// out as in `replay` of the clean scenario; a tiny agent limit folds and counts.
#[test]
fn serve_rejects_future_events_and_folds_keys_beyond_the_limits() {
    use std::io::{BufReader, Write};
    use std::process::Stdio;
    use std::time::Duration;

    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/basic_voice");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("serve.toml");
    let dead = tmp.path().join("dead.jsonl");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"sqlite://{}\"\n[windows]\ntimezone = \"UTC\"\nintervals = [\"15m\", \"1d\"]\nidle_timeout = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n[cardinality]\nmax_agents = 1\n",
            tmp.path().join("serve.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
        .args(["serve", "--source", "stdin", "--dead-letter"])
        .arg(&dead)
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = support::listen_address(&mut stdout)
        .unwrap_or_else(|first| panic!("no address in {first:?}"));

    let events = std::fs::read_to_string(case.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let mut stdin = child.stdin.take().unwrap();
    for (i, l) in lines.iter().enumerate() {
        if i == lines.len() / 2 {
            stdin.write_all(FAR_FUTURE).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
        stdin.write_all(l.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    drop(stdin);

    let metrics = wait_for("every event processed", Duration::from_secs(20), || {
        let m = get(&format!("{base}/metrics"))?;
        m.contains("ccmetrics_events_accepted_total 20")
            .then_some(m)
    });
    assert!(
        metrics.contains("ccmetrics_events_rejected_total{reason=\"future\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ccmetrics_events_rejected_total{reason=\"too_late\"} 1"),
        "{metrics}"
    );
    // As in tests/serve.rs: let the idle wall-clock advance close every interval (and
    // complete the segments waiting for a wrap) before stopping.
    wait_for(
        "the watermark advanced by the wall clock and flushed",
        Duration::from_secs(20),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&get(&format!("{base}/api/v1/status"))?).ok()?;
            let wm: jiff::Timestamp = v["watermark"].as_str()?.parse().ok()?;
            let flushed: jiff::Timestamp = v["last_flush"].as_str()?.parse().ok()?;
            (wm > "2026-11-23T10:00:00Z".parse().ok()?
                && flushed > jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5))
            .then_some(())
        },
    );
    let folded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ccmetrics_keys_overflowed_total{kind=\"agent\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(folded >= 1.0, "{metrics}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for("exit after SIGTERM", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "serve exited with {exit}");

    let letters = std::fs::read_to_string(&dead).unwrap();
    let letters: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "future");

    // Windows were not closed early: the queue snapshots equal the golden replay.
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
    assert!(export.status.success(), "{}", text(&export));
    let want = std::fs::read_to_string(case.join("15m_queue.csv")).unwrap();
    assert_eq!(String::from_utf8(export.stdout).unwrap(), want);
}

#[test]
fn robustness_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    for (toml, want) in [
        (
            "[cardinality]\nmax_agents = 0\n",
            "[cardinality] limits must be at least 1",
        ),
        ("[windows]\nmax_clock_skew = \"soon\"\n", "max_clock_skew"),
        ("[cardinality]\nmax_tenants = 5\n", "max_tenants"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let o = ccm(&["check-config", "--config", path.to_str().unwrap()], &db);
        assert_eq!(o.status.code(), Some(1), "{toml}: {}", text(&o));
        assert!(text(&o).contains(want), "{toml}: {}", text(&o));
    }
    let o = ccm(
        &[
            "replay",
            "--input",
            "/dev/null",
            "--now",
            "2026-11-23T00:00:00",
        ],
        &db,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("RFC 3339"), "{}", text(&o));
}
