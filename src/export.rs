//! Merged snapshot export (rows, CSV / JSONL). See the store module.
//!
//! One row per (window, dimension, key) merged across partitions: identifying columns,
//! the derived KPIs of `kpi::KPI_COLUMNS`, then the row's revision so consumers can
//! spot corrected windows. CSV and JSONL carry the same columns in the same order.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use crate::config::SlFormula;
use crate::engine::window::fmt_utc;
use crate::kpi::{self, Cell, KPI_COLUMNS};
use crate::store::StoredRow;

/// Output format of `export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            _ => Err(format!("format {s:?} must be csv or jsonl")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        })
    }
}

/// The identifying columns that start every row.
pub const ID_COLUMNS: [&str; 5] = ["window_start", "window_end", "window", "dimension", "key"];

/// Full header: [`ID_COLUMNS`], then `kpi::KPI_COLUMNS`, then `revision`.
pub fn columns() -> Vec<&'static str> {
    ID_COLUMNS
        .iter()
        .chain(KPI_COLUMNS.iter())
        .chain(["revision"].iter())
        .copied()
        .collect()
}

/// The cells of one row, in [`columns`] order. Times are RFC 3339 UTC.
pub fn row_cells(row: &StoredRow, formula: SlFormula) -> Vec<Cell> {
    let mut cells = Vec::with_capacity(ID_COLUMNS.len() + KPI_COLUMNS.len() + 1);
    cells.push(Cell::Text(fmt_utc(row.start)));
    cells.push(Cell::Text(fmt_utc(row.end)));
    cells.push(Cell::Text(row.window.clone()));
    cells.push(Cell::Text(row.dimension.as_str().to_owned()));
    cells.push(Cell::Text(row.key.clone()));
    cells.extend(kpi::kpis(&row.acc, formula));
    cells.push(Cell::Int(row.revision));
    cells
}

/// Write `rows` with a header (CSV) or as one JSON object per line (JSONL); `\n` line
/// endings either way. The tests' way in; `export` writes through [`Writer`] as it
/// reads.
#[cfg(test)]
pub fn write(
    rows: &[StoredRow],
    formula: SlFormula,
    format: Format,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut w = Writer::new(formula, format, out)?;
    for row in rows {
        w.row(row)?;
    }
    Ok(())
}

/// Writes an export row by row as the rows are read (`Store::query_each`), so an
/// export of any length holds one row: the header (CSV) when made, then a line per
/// [`Writer::row`].
pub struct Writer<'o, W: Write> {
    cols: Vec<&'static str>,
    formula: SlFormula,
    format: Format,
    out: &'o mut W,
}

impl<'o, W: Write> Writer<'o, W> {
    pub fn new(formula: SlFormula, format: Format, out: &'o mut W) -> io::Result<Self> {
        let cols = columns();
        if format == Format::Csv {
            writeln!(out, "{}", cols.join(","))?;
        }
        Ok(Writer {
            cols,
            formula,
            format,
            out,
        })
    }

    pub fn row(&mut self, row: &StoredRow) -> io::Result<()> {
        let cells = row_cells(row, self.formula);
        match self.format {
            Format::Csv => {
                let line: Vec<String> = cells.iter().map(Cell::to_csv).collect();
                writeln!(self.out, "{}", line.join(","))
            }
            Format::Jsonl => {
                write_json_object(&self.cols, &cells, self.out)?;
                self.out.write_all(b"\n")
            }
        }
    }
}

/// Written by hand because `serde_json::Map` sorts its keys (the `preserve_order`
/// feature is off), and the keys must come in column order like the CSV header.
fn write_json_object(cols: &[&str], cells: &[Cell], out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"{")?;
    for (i, (col, cell)) in cols.iter().zip(cells).enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, col)?;
        out.write_all(b":")?;
        serde_json::to_writer(&mut *out, &cell.to_json())?;
    }
    out.write_all(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Dimension;
    use crate::engine::acc::{Acc, Measure};

    const HEADER: &str = "window_start,window_end,window,dimension,key,offered,answered,abandoned,short_abandoned,\
answer_rate,abandon_rate,abandon_rate_excl_short,service_level,asa_s,wait_p50_s,wait_p90_s,handled,aht_s,aht_p50_s,\
aht_p90_s,frt_count,frt_avg_s,frt_p50_s,frt_p90_s,resolved,fcr,fcr_rate,csat_responses,csat,csat_avg,converted,\
conversion_rate,revenue,avg_order_value,qa_count,qa_avg,revision";

    const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    fn row(key: &str, acc: Acc) -> StoredRow {
        StoredRow {
            window: "1h".into(),
            start: T0,
            end: T0 + 3_600_000,
            dimension: Dimension::Queue,
            key: key.into(),
            acc,
            revision: 3,
        }
    }

    fn busy() -> Acc {
        let mut a = Acc::default();
        a.apply(
            &Measure::QueueOutcome {
                answered: true,
                wait_ms: 10_000,
                short: false,
                within: true,
            },
            1,
        );
        a.apply(
            &Measure::QueueOutcome {
                answered: false,
                wait_ms: 40_000,
                short: false,
                within: false,
            },
            1,
        );
        a.apply(&Measure::Handled { handle_ms: 300_000 }, 1);
        a
    }

    fn out(rows: &[StoredRow], format: Format) -> String {
        let mut buf = Vec::new();
        write(rows, SlFormula::Offered, format, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn header_is_exact() {
        assert_eq!(columns().join(","), HEADER);
        assert_eq!(out(&[], Format::Csv), format!("{HEADER}\n"));
        assert_eq!(out(&[], Format::Jsonl), "");
        assert_eq!(
            row_cells(&row("x", busy()), SlFormula::Offered).len(),
            columns().len()
        );
    }

    #[test]
    fn csv_rows_and_empty_ratios() {
        let text = out(
            &[row("sales", busy()), row("idle", Acc::default())],
            Format::Csv,
        );
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert_eq!(lines[3], "", "ends with a newline, no CR");
        assert!(!text.contains('\r'));
        let cols = columns();
        let cell = |line: &str, name: &str| {
            let i = cols.iter().position(|c| *c == name).unwrap();
            line.split(',').nth(i).unwrap().to_owned()
        };
        let busy = lines[1];
        assert!(
            busy.starts_with("2026-11-23T00:00:00Z,2026-11-23T01:00:00Z,1h,queue,sales,2,1,1,0,"),
            "{busy}"
        );
        assert_eq!(cell(busy, "answer_rate"), "0.5");
        assert_eq!(cell(busy, "service_level"), "0.5");
        assert_eq!(cell(busy, "asa_s"), "10");
        assert_eq!(cell(busy, "aht_s"), "300");
        assert_eq!(cell(busy, "fcr_rate"), "");
        assert_eq!(cell(busy, "revision"), "3");
        let idle = lines[2];
        assert_eq!(idle.split(',').count(), cols.len());
        for name in [
            "answer_rate",
            "abandon_rate",
            "service_level",
            "asa_s",
            "wait_p50_s",
            "aht_s",
            "csat",
            "qa_avg",
        ] {
            assert_eq!(cell(idle, name), "", "{name}");
        }
        assert_eq!(cell(idle, "offered"), "0");
    }

    #[test]
    fn csv_quotes_keys() {
        let text = out(&[row("Smith, \"J\"", Acc::default())], Format::Csv);
        let line = text.lines().nth(1).unwrap();
        assert!(line.contains(",queue,\"Smith, \"\"J\"\"\",0,"), "{line}");
    }

    #[test]
    fn jsonl_keys_in_column_order_with_nulls() {
        let text = out(
            &[row("a,b", busy()), row("idle", Acc::default())],
            Format::Jsonl,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with("}\n"));
        for line in &lines {
            // Keys appear in exactly the header order.
            let mut at = 0;
            for col in columns() {
                let needle = format!("\"{col}\":");
                let pos = line[at..]
                    .find(&needle)
                    .unwrap_or_else(|| panic!("{col} out of order in {line}"));
                at += pos + needle.len();
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v.as_object().unwrap().len(), columns().len());
        }
        assert!(lines[0].starts_with(
            "{\"window_start\":\"2026-11-23T00:00:00Z\",\"window_end\":\"2026-11-23T01:00:00Z\",\"window\":\"1h\",\
             \"dimension\":\"queue\",\"key\":\"a,b\",\"offered\":2,"
        ));
        let busy: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(busy["answer_rate"], 0.5);
        assert_eq!(busy["fcr_rate"], serde_json::Value::Null);
        assert_eq!(busy["revision"], 3);
        let idle: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(idle["answer_rate"], serde_json::Value::Null);
        assert_eq!(idle["asa_s"], serde_json::Value::Null);
        assert_eq!(idle["offered"], 0);
    }

    #[test]
    fn parses_format() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("jsonl".parse::<Format>(), Ok(Format::Jsonl));
        assert!("json".parse::<Format>().is_err());
        assert_eq!(Format::Jsonl.to_string(), "jsonl");
    }
}
