//! `ccmetrics score` end to end, with the real binary.
//!
//! Golden cases: every folder in `tests/golden/scoring/` is one scoring run.
//! - `events.jsonl` + `config.toml`: replayed into a fresh SQLite store;
//! - `score.args`: the `score` arguments, whitespace-separated; `$ROOT` is the
//!   repository (for the shipped schemes in `config/schemes/`), `$CASE` the case folder;
//! - expected outputs: `scores.csv`, `summary.txt` (stdout without the "wrote …" line)
//!   and `warnings.txt` (stderr);
//! - `README.md`: the arithmetic behind the expected numbers.
//!
//! Adding a case is adding a folder. `GOLDEN_BLESS=1 cargo test --test scoring` writes
//! the current outputs: check every number against the case's README before committing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ccmetrics"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn replay(db: &Path, config: &Path, events: &Path) {
    ok(
        bin()
            .args(["replay", "--config"])
            .arg(config)
            .arg("--input")
            .arg(events)
            .env(
                "CCMETRICS__STORE__URL",
                format!("sqlite://{}", db.display()),
            )
            .output()
            .expect("run replay"),
        "replay",
    );
}

fn check_case(dir: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("scoring.db");
    let config = dir.join("config.toml");
    replay(&db, &config, &dir.join("events.jsonl"));
    let out_dir = tmp.path().join("out");
    let args = std::fs::read_to_string(dir.join("score.args")).expect("score.args");
    let args: Vec<String> = args
        .split_whitespace()
        .map(|a| {
            a.replace("$ROOT", &root().display().to_string())
                .replace("$CASE", &dir.display().to_string())
        })
        .collect();
    let o = ok(
        bin()
            .arg("score")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .arg("--out")
            .arg(&out_dir)
            .env(
                "CCMETRICS__STORE__URL",
                format!("sqlite://{}", db.display()),
            )
            .output()
            .expect("run score"),
        &format!("score {}", dir.display()),
    );
    let stdout: String = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("wrote "))
        .map(|l| format!("{l}\n"))
        .collect();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let csv = std::fs::read_to_string(out_dir.join("scores.csv")).expect("scores.csv");

    // The JSON and HTML reports carry the same agents as the CSV.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("scores.json")).expect("scores.json"),
    )
    .expect("scores.json is JSON");
    let html = std::fs::read_to_string(out_dir.join("report.html")).expect("report.html");
    let agents = json["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), csv.lines().count() - 1);
    for a in agents {
        let id = a["agent_id"].as_str().expect("agent_id");
        assert!(
            html.contains(&format!("id=\"a-{id}\"")),
            "{id} has no scorecard"
        );
        assert!(a["items"].as_array().is_some_and(|i| !i.is_empty()));
    }
    assert!(html.contains("<svg") && !html.contains("<script"));

    let bless = std::env::var_os("GOLDEN_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, got) in [
        ("scores.csv", &csv),
        ("summary.txt", &stdout),
        ("warnings.txt", &stderr),
    ] {
        let path = dir.join(name);
        if bless {
            std::fs::write(&path, got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if &want != got {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    failures
}

#[test]
fn golden_scoring_cases() {
    let dir = root().join("tests/golden/scoring");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/golden/scoring")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("score.args").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "scoring golden cases missing");
    let failures: Vec<String> = cases.iter().flat_map(|c| check_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn score(args: &[&str], db: &Path) -> (bool, String) {
    let o = bin()
        .arg("score")
        .args(args)
        .env(
            "CCMETRICS__STORE__URL",
            format!("sqlite://{}", db.display()),
        )
        .output()
        .expect("run score");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn invalid_scheme_names_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let scheme = tmp.path().join("bad.toml");
    let shipped = std::fs::read_to_string(root().join("config/schemes/balanced.toml")).unwrap();
    // Line 40 of balanced.toml is the fcr item's `metric = "fcr_rate"`.
    let line = shipped.lines().nth(39).unwrap();
    assert_eq!(line, "metric = \"fcr_rate\"");
    std::fs::write(&scheme, shipped.replace(line, "metric = \"fcr_rat\"")).unwrap();
    let out = tmp.path().join("out");
    let (ok, text) = score(
        &[
            "--scheme",
            scheme.to_str().unwrap(),
            "--period",
            "2026-11",
            "--out",
            out.to_str().unwrap(),
        ],
        &db,
    );
    assert!(!ok);
    assert!(
        text.contains("line 40, key `metric`: unknown metric \"fcr_rat\""),
        "{text}"
    );
    assert!(!out.exists(), "no reports for an invalid scheme");

    // A syntax-level error (a string where a number belongs) is located too.
    std::fs::write(&scheme, shipped.replace("min = 95\n", "min = \"95\"\n")).unwrap();
    let (ok, text) = score(
        &[
            "--scheme",
            scheme.to_str().unwrap(),
            "--period",
            "2026-11",
            "--out",
            out.to_str().unwrap(),
        ],
        &db,
    );
    assert!(!ok);
    assert!(text.contains("key `min`"), "{text}");
    assert!(
        text.contains(&format!("{}, line ", scheme.display())),
        "{text}"
    );
}

#[test]
fn help_lists_the_options() {
    let o = bin()
        .args(["score", "--help"])
        .output()
        .expect("run score --help");
    let text = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--scheme",
        "--period",
        "--from",
        "--to",
        "--manual",
        "--roster",
        "--bonus-base",
        "--exclude-date",
        "--out",
        "--config",
    ] {
        assert!(text.contains(flag), "{flag} missing from score --help");
    }
}

#[test]
fn usage_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let scheme = root().join("config/schemes/ecommerce.toml");
    let scheme = scheme.to_str().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let (ok, text) = score(
        &["--scheme", scheme, "--period", "2026-13", "--out", out],
        &db,
    );
    assert!(!ok);
    assert!(text.contains("2026-Q4"), "{text}");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[windows]\nintervals = [\"15m\", \"1h\"]\n").unwrap();
    let (ok, text) = score(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--scheme",
            scheme,
            "--period",
            "2026-11",
            "--out",
            out,
        ],
        &db,
    );
    assert!(!ok);
    assert!(text.contains("has no 1d"), "{text}");
    let (ok, text) = score(&["--scheme", scheme, "--out", out], &db);
    assert!(!ok);
    assert!(text.contains("--period"), "{text}");
    let manual = tmp.path().join("m.csv");
    std::fs::write(&manual, "agent_id,item,rater,score\na1,behaviour,boss,90\n").unwrap();
    let (ok, text) = score(
        &[
            "--scheme",
            scheme,
            "--period",
            "2026-11",
            "--manual",
            manual.to_str().unwrap(),
            "--out",
            out,
        ],
        &db,
    );
    assert!(!ok);
    assert!(text.contains("rater \"boss\""), "{text}");
}
