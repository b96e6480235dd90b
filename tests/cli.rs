//! The command line as a user meets it: help, config validation, environment
//! overrides, clear errors and exit codes.

use std::process::{Command, Output};

fn ccm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccmetrics"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ccmetrics")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_lists_every_command() {
    let o = ccm(&["--help"], &[]);
    assert!(o.status.success());
    for cmd in ["replay", "export", "serve", "check-config", "generate"] {
        assert!(text(&o).contains(cmd), "{cmd} missing from --help");
    }
    let o = ccm(&["export", "--help"], &[]);
    for flag in [
        "--window",
        "--dimension",
        "--from",
        "--to",
        "--format",
        "--config",
    ] {
        assert!(text(&o).contains(flag), "{flag} missing from export --help");
    }
}

#[test]
fn check_config_prints_effective_values_with_env_overrides() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ccmetrics.toml");
    let o = ccm(
        &["check-config", "--config", cfg],
        &[
            ("CCMETRICS__WINDOWS__TIMEZONE", "Asia/Shanghai"),
            ("CCMETRICS__WINDOWS__INTERVALS", "15m,1d"),
            ("CCMETRICS__CSAT__POSITIVE_MIN", "5"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("timezone = \"Asia/Shanghai\""), "{out}");
    assert!(
        out.contains("intervals = [\n    \"15m\",\n    \"1d\",\n]"),
        "{out}"
    );
    assert!(out.contains("positive_min = 5"), "{out}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[windows]\ntimezone = \"Mars/Base\"\n").unwrap();
    let o = ccm(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("IANA time zone"), "{}", text(&o));
    let o = ccm(
        &["check-config", "--config", "/nonexistent/ccmetrics.toml"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("/nonexistent/ccmetrics.toml"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let env = [("CCMETRICS__STORE__URL", db.as_str())];
    let o = ccm(&["export", "--window", "30m", "--dimension", "queue"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("not a configured interval"),
        "{}",
        text(&o)
    );
    let o = ccm(
        &["export", "--window", "15m", "--dimension", "planet"],
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not one of all, channel, queue, team, agent"),
        "{}",
        text(&o)
    );
    let o = ccm(
        &[
            "export",
            "--window",
            "15m",
            "--dimension",
            "queue",
            "--from",
            "yesterday",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("RFC 3339"), "{}", text(&o));
    let o = ccm(&["replay", "--input", "/nonexistent/events.jsonl"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}

#[test]
fn replay_twice_gives_the_same_snapshots_and_reads_gzip() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let env = [("CCMETRICS__STORE__URL", db.as_str())];
    let events = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/basic_voice/events.jsonl"
    ))
    .unwrap();
    let gz = dir.path().join("events.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&events).unwrap();
    enc.finish().unwrap();
    let export = || {
        let o = ccm(
            &[
                "export",
                "--window",
                "1d",
                "--dimension",
                "all",
                "--format",
                "jsonl",
            ],
            &env,
        );
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    for _ in 0..2 {
        let o = ccm(&["replay", "--input", gz.to_str().unwrap()], &env);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("accepted         20"), "{}", text(&o));
    }
    let out = export();
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["offered"], 5, "not doubled by the second replay: {out}");
    assert_eq!(row["revision"], 1);
    assert_eq!(row["answer_rate"], 0.6);
}

#[test]
fn replay_copies_rejected_messages_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let dead = dir.path().join("dead.jsonl");
    let case = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/late_and_duplicates"
    );
    let o = ccm(
        &[
            "replay",
            "--config",
            &format!("{case}/config.toml"),
            "--input",
            &format!("{case}/events.jsonl"),
            "--flush-every",
            "1",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
        &[("CCMETRICS__STORE__URL", db.as_str())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dead letters: 4 written"), "{}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["too_late", "invalid_json", "unknown_type", "missing_field"]
    );
    assert_eq!(lines[1]["message"], "not json at all");
    assert_eq!(lines[1]["partition"], "replay");
    assert!(
        lines[3]["detail"].as_str().unwrap().contains("queue"),
        "{:?}",
        lines[3]
    );
}

#[test]
fn export_filters_by_window_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let env = [("CCMETRICS__STORE__URL", db.as_str())];
    let case = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/basic_voice");
    let cfg = format!("{case}/config.toml");
    let o = ccm(
        &[
            "replay",
            "--config",
            &cfg,
            "--input",
            &format!("{case}/events.jsonl"),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--config",
            &cfg,
            "--window",
            "15m",
            "--dimension",
            "queue",
        ];
        args.extend_from_slice(extra);
        let o = ccm(&args, &env);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(export(&[]).len(), 3);
    // --from is inclusive, --to exclusive, both on window_start; offsets are honoured.
    assert_eq!(
        export(&["--from", "2026-11-23T17:15:00+08:00"]),
        [
            "2026-11-23T09:15:00Z,2026-11-23T09:30:00Z,15m,queue,billing",
            "2026-11-23T09:15:00Z,2026-11-23T09:30:00Z,15m,queue,support"
        ]
    );
    assert_eq!(
        export(&["--to", "2026-11-23T09:15:00Z"]),
        ["2026-11-23T09:00:00Z,2026-11-23T09:15:00Z,15m,queue,support"]
    );
}

/// Every golden case replayed and exported on PostgreSQL (a fresh database on the test
/// server, see `ccmetrics::store::testing`) gives the same summary and the same CSV as
/// on SQLite. One database serves all cases in turn: each replay replaces its partition.
#[test]
fn replay_and_export_on_postgres_match_sqlite() {
    use ccmetrics::store::testing::TestDb;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt
        .block_on(TestDb::create())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("x.db").display());
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    // Only replay cases: `tests/golden/scoring/` holds the scoring runs (tests/scoring.rs).
    let mut cases: Vec<std::path::PathBuf> = std::fs::read_dir(&golden)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 3,
        "golden cases missing in {}",
        golden.display()
    );

    // The replay summary (minus its timing line), then each export the case checks.
    let outputs = |url: &str, case: &std::path::Path| -> Vec<String> {
        let env = [("CCMETRICS__STORE__URL", url)];
        let cfg = case.join("config.toml").display().to_string();
        let events = case.join("events.jsonl").display().to_string();
        let mut args = vec!["replay", "--config", &cfg, "--input", &events];
        let extra = std::fs::read_to_string(case.join("replay.args")).unwrap_or_default();
        args.extend(extra.split_whitespace());
        let o = ccm(&args, &env);
        assert!(o.status.success(), "{}: {}", case.display(), text(&o));
        let summary: String = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("elapsed"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut out = vec![summary];
        let mut csvs: Vec<String> = std::fs::read_dir(case)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".csv").map(str::to_owned)
            })
            .collect();
        csvs.sort();
        for name in csvs {
            let (window, dimension) = name.split_once('_').unwrap();
            let o = ccm(
                &[
                    "export",
                    "--config",
                    &cfg,
                    "--window",
                    window,
                    "--dimension",
                    dimension,
                ],
                &env,
            );
            assert!(o.status.success(), "{}: {}", case.display(), text(&o));
            let csv = String::from_utf8(o.stdout).unwrap();
            assert!(csv.lines().count() > 1, "{name}: no rows in {csv}");
            out.push(csv);
        }
        out
    };
    // Drop the database whatever the comparison does.
    let compared = std::panic::catch_unwind(|| {
        for case in &cases {
            let on_pg = outputs(&pg.url, case);
            let on_sqlite = outputs(&sqlite, case);
            assert_eq!(on_pg, on_sqlite, "{}", case.display());
        }
    });
    rt.block_on(pg.drop_db()).unwrap_or_else(|e| panic!("{e}"));
    if let Err(panic) = compared {
        std::panic::resume_unwind(panic);
    }
}

/// `replay` with every closed contact spilled as soon as it is packed exports exactly
/// what a replay that keeps every contact in memory exports, on a simulated day with
/// repeat contacts, late surveys and duplicates; and it did spill, into scratch files
/// under `--spill-dir` that are gone when the replay ends. So does a replay with the
/// spill off that starts spilling midway, once it holds more than `[windows]
/// spill_above` contacts; `--spill-above never` never does.
#[test]
fn replay_with_spilled_contacts_equals_replay_without() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let o = ccm(
        &[
            "generate",
            "--events",
            "60000",
            "--agents",
            "40",
            "--queues",
            "5",
            "--contacts-per-hour",
            "400",
            "--seed",
            "4",
            "--out",
            events.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let run = |name: &str, spill_above: Option<&str>, env: &[(&str, &str)]| {
        let db = format!("sqlite://{}", dir.path().join(name).display());
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("CCMETRICS__STORE__URL", &db));
        env.push(("RUST_LOG", "info"));
        let mut args = vec![
            "replay",
            "--log-json",
            "--flush-every",
            "2000",
            "--spill-dir",
            scratch.to_str().unwrap(),
            "--input",
            events.to_str().unwrap(),
        ];
        if let Some(above) = spill_above {
            args.extend(["--spill-above", above]);
        }
        let o = ccm(&args, &env);
        let summary = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", text(&o));
        // The store is closed, not dropped: SQLite has moved its write-ahead log into
        // the database file, which alone holds the replay (the log is gone or empty).
        let wal = dir.path().join(format!("{name}-wal"));
        let left = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert_eq!(left, 0, "{} left behind", wal.display());
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        let mut out = String::new();
        for (window, dim) in [
            ("15m", "queue"),
            ("1d", "agent"),
            ("1h", "team"),
            ("1d", "all"),
        ] {
            let o = ccm(
                &[
                    "export",
                    "--window",
                    window,
                    "--dimension",
                    dim,
                    "--format",
                    "jsonl",
                ],
                &env,
            );
            assert!(o.status.success(), "{}", text(&o));
            out.push_str(&String::from_utf8(o.stdout).unwrap());
        }
        (out, log, summary)
    };
    let (kept, kept_log, kept_summary) = run(
        "kept.db",
        Some("never"),
        &[("CCMETRICS__WINDOWS__SPILL", "false")],
    );
    assert!(!kept_log.contains("scratch files"), "{kept_log}");
    assert!(!kept_summary.contains("contacts spilled"), "{kept_summary}");
    let (spilled, log, _) = run(
        "spilled.db",
        Some("never"),
        &[
            ("CCMETRICS__WINDOWS__SPILL", "true"),
            ("CCMETRICS__WINDOWS__SPILL_AFTER", "0s"),
        ],
    );
    let n = kept.lines().count();
    assert!(n > 500, "only {n} rows exported");
    assert!(kept.contains("\"fcr_rate\""), "{kept}");
    assert!(kept == spilled, "exports differ with spilling");
    // The spill off, but the replay holds more than `[windows] spill_above` (300)
    // contacts after a few flushes.
    let (midway, midway_log, midway_summary) = run(
        "midway.db",
        None,
        &[
            ("CCMETRICS__WINDOWS__SPILL", "false"),
            ("CCMETRICS__WINDOWS__SPILL_ABOVE", "300"),
            ("CCMETRICS__WINDOWS__SPILL_AFTER", "0s"),
        ],
    );
    assert!(kept == midway, "exports differ with spilling from midway");
    let started = log_line(&midway_log, "more contacts held than the spill limit");
    let at = started["fields"]["events"].as_u64().unwrap_or(0);
    assert!(at > 0 && at < 60_000, "{started}");
    assert!(started["fields"]["contacts_held"].as_u64().unwrap_or(0) > 300);
    let spilled_midway = midway_summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("contacts spilled "))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no spill in the summary: {midway_summary}"));
    assert!(spilled_midway > 300, "{midway_summary}");
    let line = log_line(&log, "closed contacts held in scratch files");
    let peak = line["fields"]["peak"].as_u64().unwrap_or(0);
    assert!(peak > 1_000, "only {peak} contacts spilled");
    // The scratch directory was under --spill-dir, and is gone with its files.
    let used = std::path::PathBuf::from(line["fields"]["dir"].as_str().unwrap_or_default());
    assert_eq!(used.parent(), Some(scratch.as_path()), "{line}");
    assert!(!used.exists(), "{} left behind", used.display());
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    // Nothing of the spill went to the store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spilled_rows = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("spilled.db").display());
        let store = ccmetrics::store::Store::open(&url).await.unwrap();
        store.spill_scan("replay", |_, _, _| {}).await.unwrap()
    });
    assert_eq!(spilled_rows, 0);
}

/// The first line of a `--log-json` log whose message contains `needle`.
fn log_line(log: &str, needle: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
        })
        .unwrap_or_else(|| panic!("no {needle:?} in the log: {log}"))
}

/// A spill directory that cannot be used is a clear error before any event is read,
/// also when the spill is off but would start past `--spill-above` contacts (hours
/// into a back-fill is too late to find out); one that would never be used is
/// reported unused.
#[test]
fn replay_with_an_unusable_spill_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let events = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/basic_voice/events.jsonl"
    );
    let missing = dir.path().join("no-such-dir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let replay = |spill: &str, spill_above: &str| {
        let o = ccm(
            &[
                "replay",
                "--spill-dir",
                missing.to_str().unwrap(),
                "--spill-above",
                spill_above,
                "--input",
                events,
            ],
            &[
                ("CCMETRICS__STORE__URL", &db),
                ("CCMETRICS__WINDOWS__SPILL", spill),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.success(), err)
    };
    for (spill, above) in [("true", "never"), ("false", "2000000")] {
        let (ok, err) = replay(spill, above);
        assert!(!ok, "spill {spill}, --spill-above {above}");
        assert!(
            err.contains("creating the spill's scratch directory in")
                && err.contains("no-such-dir"),
            "{err}"
        );
    }
    // With the spill off and never started, the directory is not used, and the replay
    // says so.
    let (ok, err) = replay("false", "never");
    assert!(ok, "{err}");
    assert!(err.contains("--spill-dir is not used"), "{err}");
    // A limit that is not a number is refused by name.
    let (ok, err) = replay("false", "lots");
    assert!(!ok);
    assert!(
        err.contains("\"lots\" is neither a number of contacts nor `never`"),
        "{err}"
    );
}

/// `[windows.dimensions]` set from the environment: a replay keeping agents at 1h and
/// 1d writes the same 1h and 1d agent rows as one keeping everything, no 15m agent
/// rows, and exporting those is a clear error, not an empty file.
#[test]
fn replay_keeps_only_the_configured_dimension_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let events = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/basic_voice/events.jsonl"
    );
    let every = format!("sqlite://{}", dir.path().join("every.db").display());
    let fewer = format!("sqlite://{}", dir.path().join("fewer.db").display());
    let keep = ("CCMETRICS__WINDOWS__DIMENSIONS__AGENT", "1h,1d");
    for env in [
        vec![("CCMETRICS__STORE__URL", every.as_str())],
        vec![("CCMETRICS__STORE__URL", fewer.as_str()), keep],
    ] {
        let o = ccm(&["replay", "--input", events], &env);
        assert!(o.status.success(), "{}", text(&o));
    }
    let export = |db: &str, window: &str, dimension: &str, kept: bool| {
        let mut env = vec![("CCMETRICS__STORE__URL", db)];
        if kept {
            env.push(keep);
        }
        let args = [
            "export",
            "--window",
            window,
            "--dimension",
            dimension,
            "--format",
            "jsonl",
        ];
        ccm(&args, &env)
    };
    for window in ["1h", "1d"] {
        let a = export(&every, window, "agent", false);
        let b = export(&fewer, window, "agent", true);
        assert!(
            a.status.success() && b.status.success(),
            "{}{}",
            text(&a),
            text(&b)
        );
        assert!(!a.stdout.is_empty());
        assert_eq!(a.stdout, b.stdout, "{window} agent rows");
    }
    // The store holds no 15m agent rows: read without the setting, the export is empty.
    assert!(export(&every, "15m", "agent", false).stdout.len() > 10);
    let none = export(&fewer, "15m", "agent", false);
    assert!(
        none.status.success() && none.stdout.is_empty(),
        "{}",
        text(&none)
    );
    let refused = export(&fewer, "15m", "agent", true);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains(
            "agent windows are not kept at 15m ([windows.dimensions] agent = [\"1h\", \"1d\"])"
        ),
        "{}",
        text(&refused)
    );
    // Other dimensions keep every interval.
    let q = export(&fewer, "15m", "queue", true);
    assert_eq!(q.stdout, export(&every, "15m", "queue", false).stdout);
    assert!(!q.stdout.is_empty());
}

/// A flush point at the very end of the input is not acted on: `finish` flushes every
/// window anyway, and a flush just before it wrote rows that the final write then
/// revised (revision 2 where a replay of the same events otherwise writes revision 1).
#[test]
fn replay_does_not_flush_just_before_the_end_of_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let case = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/transfer_to_queue_wrap_timeout"
    );
    let events = format!("{case}/events.jsonl");
    let config = format!("{case}/config.toml");
    let n = std::fs::read_to_string(&events).unwrap().lines().count();
    let export = |db: &str| {
        let env = [("CCMETRICS__STORE__URL", db)];
        let args = [
            "export",
            "--config",
            &config,
            "--window",
            "15m",
            "--dimension",
        ];
        ["all", "queue", "agent"].map(|dimension| {
            let o = ccm(
                &[&args[..], &[dimension, "--format", "jsonl"]].concat(),
                &env,
            );
            assert!(o.status.success(), "{}", text(&o));
            String::from_utf8(o.stdout).unwrap()
        })
    };
    let mut exports = Vec::new();
    // Every n events (a flush point after the last event), then never within the input.
    for every in [n, n + 1] {
        let db = format!(
            "sqlite://{}",
            dir.path().join(format!("{every}.db")).display()
        );
        let o = ccm(
            &[
                "replay",
                "--config",
                &config,
                "--input",
                &events,
                "--flush-every",
                &every.to_string(),
            ],
            &[("CCMETRICS__STORE__URL", db.as_str())],
        );
        assert!(o.status.success(), "{}", text(&o));
        exports.push(export(&db));
    }
    for out in &exports[0] {
        assert!(!out.is_empty());
        for line in out.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["revision"], 1, "written once: {line}");
        }
    }
    assert_eq!(exports[0], exports[1]);
}
