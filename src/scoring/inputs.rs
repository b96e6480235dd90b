//! The CSV inputs of a scoring run: the agent roster, manual scores and bonus bases.
//!
//! Small hand-edited files, so the reader is strict and its errors name the file and
//! line. Columns are found by header name (any order, extra columns ignored); `#`
//! lines and blank lines are skipped; fields may be double-quoted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}, line {line}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One agent of the roster.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RosterEntry {
    pub name: String,
    pub team: String,
    pub queue_group: String,
    pub hire_date: Option<Date>,
}

/// agent_id → roster entry.
pub type Roster = BTreeMap<String, RosterEntry>;

/// (agent_id, item name) → (rater, score) rows; rater is "" when the file has none.
pub type ManualScores = BTreeMap<(String, String), Vec<(String, f64)>>;

/// agent_id → bonus base.
pub type Bases = BTreeMap<String, f64>;

struct Table {
    path: PathBuf,
    header: Vec<String>,
    /// (1-based line, fields)
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path, required: &[&str]) -> Result<Table, InputError> {
        let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
            path: path.to_owned(),
            source,
        })?;
        Table::parse(&text, path, required)
    }

    fn parse(text: &str, path: &Path, required: &[&str]) -> Result<Table, InputError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let invalid = |line, message: String| InputError::Invalid {
            path: path.to_owned(),
            line,
            message,
        };
        let (hline, h) = lines.next().ok_or_else(|| {
            invalid(
                1,
                format!("empty file: expected a header with {}", required.join(",")),
            )
        })?;
        let header: Vec<String> = split(h)
            .map_err(|m| invalid(hline, m))?
            .into_iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        for r in required {
            if !header.iter().any(|c| c == r) {
                return Err(invalid(
                    hline,
                    format!(
                        "header has no {r:?} column (expected {}; got {})",
                        required.join(","),
                        header.join(",")
                    ),
                ));
            }
        }
        let mut rows = Vec::new();
        for (n, l) in lines {
            let fields = split(l).map_err(|m| invalid(n, m))?;
            if fields.len() > header.len() {
                return Err(invalid(
                    n,
                    format!("{} fields, the header has {}", fields.len(), header.len()),
                ));
            }
            rows.push((n, fields));
        }
        Ok(Table {
            path: path.to_owned(),
            header,
            rows,
        })
    }

    fn get<'a>(&self, fields: &'a [String], col: &str) -> &'a str {
        self.header
            .iter()
            .position(|c| c == col)
            .and_then(|i| fields.get(i))
            .map_or("", |s| s.trim())
    }

    fn err(&self, line: usize, message: String) -> InputError {
        InputError::Invalid {
            path: self.path.clone(),
            line,
            message,
        }
    }

    fn number(&self, line: usize, fields: &[String], col: &str) -> Result<f64, InputError> {
        let s = self.get(fields, col);
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.err(line, format!("{col} {s:?} is not a number")))
    }

    fn agent<'a>(&self, line: usize, fields: &'a [String]) -> Result<&'a str, InputError> {
        let a = self.get(fields, "agent_id");
        if a.is_empty() {
            return Err(self.err(line, "agent_id is empty".into()));
        }
        Ok(a)
    }
}

/// Split one CSV line (RFC 4180 quoting within the line).
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

/// `agent_id,name,team,queue_group,hire_date` (only agent_id required).
pub fn read_roster(path: &Path) -> Result<Roster, InputError> {
    let t = Table::read(path, &["agent_id"])?;
    let mut out = Roster::new();
    for (line, f) in &t.rows {
        let agent = t.agent(*line, f)?;
        let hire = t.get(f, "hire_date");
        let hire_date = if hire.is_empty() {
            None
        } else {
            Some(hire.parse::<Date>().map_err(|_| {
                t.err(
                    *line,
                    format!("hire_date {hire:?} is not a date like 2026-08-15"),
                )
            })?)
        };
        let entry = RosterEntry {
            name: t.get(f, "name").to_owned(),
            team: t.get(f, "team").to_owned(),
            queue_group: t.get(f, "queue_group").to_owned(),
            hire_date,
        };
        if out.insert(agent.to_owned(), entry).is_some() {
            return Err(t.err(*line, format!("agent {agent:?} is listed twice")));
        }
    }
    Ok(out)
}

/// `agent_id,item,score[,rater]`: one score per row; several rows for the same agent
/// and item (e.g. several peers) are averaged per rater.
pub fn read_manual(path: &Path) -> Result<ManualScores, InputError> {
    let t = Table::read(path, &["agent_id", "item", "score"])?;
    let mut out = ManualScores::new();
    for (line, f) in &t.rows {
        let agent = t.agent(*line, f)?;
        let item = t.get(f, "item");
        if item.is_empty() {
            return Err(t.err(*line, "item is empty".into()));
        }
        let score = t.number(*line, f, "score")?;
        let rater = t.get(f, "rater").to_ascii_lowercase();
        out.entry((agent.to_owned(), item.to_owned()))
            .or_default()
            .push((rater, score));
    }
    Ok(out)
}

/// `agent_id,base`.
pub fn read_bases(path: &Path) -> Result<Bases, InputError> {
    let t = Table::read(path, &["agent_id", "base"])?;
    let mut out = Bases::new();
    for (line, f) in &t.rows {
        let agent = t.agent(*line, f)?;
        let base = t.number(*line, f, "base")?;
        if out.insert(agent.to_owned(), base).is_some() {
            return Err(t.err(*line, format!("agent {agent:?} is listed twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.csv");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn quoting() {
        assert_eq!(
            split("a,\"b,c\",\"d\"\"e\"").unwrap(),
            vec!["a", "b,c", "d\"e"]
        );
        assert!(split("a,\"b").is_err());
    }

    #[test]
    fn manual_rows_and_errors() {
        let (_d, p) = write(
            "# 360 review\nagent_id,item,rater,score\nli,review,peer,80\nli,review,Manager,\"90\"\nwang,growth,,7.5\n",
        );
        let m = read_manual(&p).unwrap();
        assert_eq!(
            m[&("li".to_owned(), "review".to_owned())],
            vec![("peer".to_owned(), 80.0), ("manager".to_owned(), 90.0)]
        );
        assert_eq!(
            m[&("wang".to_owned(), "growth".to_owned())],
            vec![(String::new(), 7.5)]
        );
        let (_d, p) = write("agent_id,item,score\nli,review,good\n");
        let e = read_manual(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("score \"good\""), "{e}");
        let (_d, p) = write("agent,item,score\n");
        let e = read_manual(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("\"agent_id\""), "{e}");
    }

    #[test]
    fn roster_and_bases() {
        let (_d, p) = write(
            "agent_id,name,team,queue_group,hire_date\nli,Li Na,east,sales,2026-09-15\nwang,,west,,\n",
        );
        let r = read_roster(&p).unwrap();
        assert_eq!(r["li"].team, "east");
        assert_eq!(r["li"].hire_date.unwrap().to_string(), "2026-09-15");
        assert_eq!(r["wang"].hire_date, None);
        let (_d, p) = write("agent_id,hire_date\nli,15/09/2026\n");
        assert!(read_roster(&p).unwrap_err().to_string().contains("line 2"));
        let (_d, p) = write("agent_id,base\nli,1000\nli,2000\n");
        assert!(
            read_bases(&p)
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
    }
}
