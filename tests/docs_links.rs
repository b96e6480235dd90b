//! Every link between the project's own Markdown files resolves: the file exists, and
//! an anchor (`#…`) names a heading of it, slugged as GitHub slugs headings.
//!
//! Why a test: `docs/performance.md` alone carries over a hundred links into its own
//! round-by-round log, by anchors that change whenever a heading's wording does. A
//! broken one sends a reader looking for a figure to the top of a 6,000-line page.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The Markdown files checked: the top level's and `docs/`'s.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [root.to_path_buf(), root.join("docs")] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// A heading's anchor as GitHub makes it: lower case, backticks and punctuation other
/// than `-` and `_` dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of `text` outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter_map(move |(i, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        (!fenced).then_some((i + 1, line))
    })
}

/// The anchors of a file's headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(title) = line.get(hashes..).and_then(|r| r.strip_prefix(' ')) else {
            continue;
        };
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let a = slug(title);
        let n = seen.entry(a.clone()).or_insert(0);
        out.insert(if *n == 0 { a } else { format!("{a}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of a line's inline links `](target)`.
fn link_targets(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = line.get(at + 2..)?;
            rest.find(')').and_then(|end| rest.get(..end))
        })
        .collect()
}

#[test]
fn links_between_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    let texts: HashMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).unwrap()))
        .collect();
    let headings: HashMap<&PathBuf, HashSet<String>> =
        texts.iter().map(|(f, t)| (f, anchors(t))).collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, text) in &texts {
        let dir = file.parent().unwrap();
        for (n, line) in prose_lines(text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target, None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                checked += 1;
                let here = format!("{}:{n}", file.strip_prefix(root).unwrap().display());
                if !linked.exists() {
                    broken.push(format!("{here}: no file {path}"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let canonical = linked.canonicalize().unwrap();
                let Some(known) = headings
                    .iter()
                    .find(|(f, _)| f.canonicalize().unwrap() == canonical)
                    .map(|(_, a)| a)
                else {
                    continue; // not a Markdown file of ours: only its existence is checked
                };
                if !known.contains(anchor) {
                    broken.push(format!("{here}: no heading #{anchor} in {path:?}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the scan broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug(
            "The contact's slot reused, and a new Intel Xeon host, thirty-ninth round (2026-12-07, Intel Xeon)"
        ),
        "the-contacts-slot-reused-and-a-new-intel-xeon-host-thirty-ninth-round-2026-12-07-intel-xeon"
    );
    assert_eq!(slug("`/metrics` ≤ 50 ms"), "metrics--50-ms");
    let a = anchors("# A\n```\n# not a heading\n```\n## A\n#### B c\n#hashtag\n");
    let want: HashSet<String> = ["a", "a-1", "b-c"].map(String::from).into();
    assert_eq!(a, want);
}
