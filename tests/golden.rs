//! Golden-file suite: every folder in `tests/golden/` is a scenario.
//!
//! - `events.jsonl`: the input, replayed with `ccmetrics replay` (extra arguments in
//!   `replay.args`, config in `config.toml`);
//! - `<window>_<dimension>.csv`: the expected `ccmetrics export` output;
//! - `summary.txt` (optional): the expected replay summary, minus the timing line.
//!
//! Adding a case is adding a folder. `GOLDEN_BLESS=1 cargo test --test golden` writes
//! the current outputs (review every number before committing them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ccmetrics")
}

fn run(args: &[&str], db: &Path, dir: &Path) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(args).env(
        "CCMETRICS__STORE__URL",
        format!("sqlite://{}", db.display()),
    );
    let cfg = dir.join("config.toml");
    if cfg.exists() {
        cmd.arg("--config").arg(cfg);
    }
    let out = cmd.output().expect("run ccmetrics");
    assert!(
        out.status.success(),
        "{args:?} failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn check_case(dir: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("golden.db");
    let events = dir.join("events.jsonl");
    let mut args = vec![
        "replay".to_owned(),
        "--input".to_owned(),
        events.display().to_string(),
    ];
    if let Ok(extra) = std::fs::read_to_string(dir.join("replay.args")) {
        args.extend(extra.split_whitespace().map(str::to_owned));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let summary = run(&argv, &db, dir);
    let summary: String = summary
        .lines()
        .filter(|l| !l.trim_start().starts_with("elapsed"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bless = std::env::var_os("GOLDEN_BLESS").is_some();
    let mut failures = Vec::new();
    let mut compare = |name: &str, got: &str| {
        let path = dir.join(name);
        if bless {
            std::fs::write(&path, got).expect("write golden");
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                path.display()
            ));
        }
    };
    compare("summary.txt", &summary);
    let mut expected: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read case dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    expected.sort();
    assert!(
        !expected.is_empty(),
        "{} has no expected <window>_<dimension>.csv",
        dir.display()
    );
    for path in expected {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name");
        let (window, dimension) = stem.split_once('_').expect("<window>_<dimension>.csv");
        let got = run(
            &["export", "--window", window, "--dimension", dimension],
            &db,
            dir,
        );
        compare(&format!("{stem}.csv"), &got);
    }
    failures
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "golden cases missing");
    let failures: Vec<String> = cases.iter().flat_map(|c| check_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
