//! Output of a scoring run: `scores.csv`, `scores.json`, a self-contained
//! `report.html` and the summary table printed by the command.

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::kpi::{Cell, fmt_num};

use super::{AgentScore, Outcome};

fn opt(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_default()
}

/// Section ids in first-seen order (main scheme first).
fn section_columns(o: &Outcome) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in &o.agents {
        for it in &a.items {
            if let Some(s) = &it.section
                && !out.contains(s)
            {
                out.push(s.clone());
            }
        }
    }
    out
}

/// `scores.csv`: one row per agent; per item its value and points, then the total,
/// grade before and after caps, rank, coefficient and bonus.
pub fn write_csv(o: &Outcome, out: &mut impl Write) -> io::Result<()> {
    let sections = section_columns(o);
    let mut header: Vec<String> = [
        "agent_id",
        "name",
        "team",
        "queue_group",
        "scope",
        "scheme",
        "status",
        "handled",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for id in &o.item_columns {
        header.push(format!("{id}_value"));
        header.push(format!("{id}_points"));
    }
    for s in &sections {
        header.push(format!("section_{s}"));
    }
    for c in [
        "total",
        "qualified_grade",
        "grade",
        "rank",
        "coefficient",
        "base",
        "bonus",
        "fcr_provisional",
        "note",
    ] {
        header.push(c.to_owned());
    }
    writeln!(out, "{}", header.join(","))?;
    for a in &o.agents {
        let text = |s: &str| Cell::Text(s.to_owned()).to_csv();
        let mut f: Vec<String> = vec![
            text(&a.agent_id),
            text(&a.name),
            text(&a.team),
            text(&a.queue_group),
            text(&a.scope),
            text(&a.scheme),
            a.status.as_str().to_owned(),
            a.handled.to_string(),
        ];
        for id in &o.item_columns {
            match a.items.iter().find(|i| &i.id == id) {
                Some(i) => {
                    f.push(opt(i.value));
                    f.push(opt(i.points));
                }
                None => f.extend([String::new(), String::new()]),
            }
        }
        for s in &sections {
            f.push(opt(a
                .sections
                .iter()
                .find(|(id, _)| id == s)
                .map(|(_, v)| *v)));
        }
        f.push(opt(a.total));
        f.push(text(a.qualified_grade.as_deref().unwrap_or("")));
        f.push(text(a.grade.as_deref().unwrap_or("")));
        f.push(a.rank.map(|r| r.to_string()).unwrap_or_default());
        f.push(opt(a.coefficient));
        f.push(opt(a.base));
        f.push(opt(a.bonus));
        f.push(a.fcr_provisional.to_string());
        f.push(text(&a.note));
        writeln!(out, "{}", f.join(","))?;
    }
    Ok(())
}

/// `scores.json`: the whole outcome (every item of every scorecard, summaries, warnings).
pub fn write_json(o: &Outcome, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, o)?;
    out.write_all(b"\n")
}

/// The table printed by `ccmetrics score`.
pub fn summary_table(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scores {} ({} – {}, {}) · scheme {} · scope {}{}",
        o.period.label,
        o.period.first,
        o.period.last,
        o.timezone,
        o.scheme,
        o.scope.as_str(),
        if o.fcr_provisional {
            " · FCR provisional"
        } else {
            ""
        }
    );
    let w = o
        .agents
        .iter()
        .map(|a| a.agent_id.chars().count())
        .chain([5])
        .max()
        .unwrap_or(5);
    let sw = o
        .agents
        .iter()
        .map(|a| a.scope.chars().count())
        .chain([5])
        .max()
        .unwrap_or(5);
    let _ = writeln!(
        s,
        "{:<w$}  {:<sw$}  {:>5}  {:>8}  {:<5}  {:>5}  {:>10}  status",
        "agent", "scope", "rank", "total", "grade", "coef", "bonus"
    );
    for a in &o.agents {
        let _ = writeln!(
            s,
            "{:<w$}  {:<sw$}  {:>5}  {:>8}  {:<5}  {:>5}  {:>10}  {}",
            a.agent_id,
            a.scope,
            a.rank.map(|r| r.to_string()).unwrap_or_default(),
            a.total.map(|t| format!("{t:.2}")).unwrap_or_default(),
            a.grade.as_deref().unwrap_or("-"),
            opt(a.coefficient),
            a.bonus.map(|b| format!("{b:.2}")).unwrap_or_default(),
            status_text(a),
        );
    }
    let counts: Vec<String> = o
        .grade_names
        .iter()
        .map(|g| {
            let n = o
                .agents
                .iter()
                .filter(|a| a.grade.as_deref() == Some(g))
                .count();
            format!("{g} {n}")
        })
        .collect();
    let _ = writeln!(s, "grades: {}", counts.join(" · "));
    s
}

fn status_text(a: &AgentScore) -> String {
    if a.note.is_empty() {
        a.status.as_str().to_owned()
    } else {
        format!("{}: {}", a.status.as_str(), a.note)
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.5em 1em}.muted{color:#777}\
details{margin:.4em 0;border:1px solid #ddd;padding:.3em .8em}summary{cursor:pointer;font-weight:600}\
.grade{display:inline-block;min-width:1.6em;text-align:center;border-radius:3px;background:#234;color:#fff;padding:0 .3em}";

/// `report.html`: one file with inline CSS and SVG, no scripts or external assets.
pub fn html(o: &Outcome) -> String {
    let mut h = String::new();
    let title = format!("Scores {} · {}", o.period.label, o.scheme);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(h, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        h,
        "<p>{}<br>Period {} to {} ({}), scope: {}{}.</p>",
        esc(&o.scheme_title),
        o.period.first,
        o.period.last,
        esc(&o.timezone),
        o.scope.as_str(),
        if o.excluded_dates.is_empty() {
            String::new()
        } else {
            format!(
                "; excluded dates: {}",
                o.excluded_dates
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !o.warnings.is_empty() {
        h.push_str("<div class=\"warn\"><strong>Warnings</strong><ul>");
        for w in &o.warnings {
            let _ = write!(h, "<li>{}</li>", esc(w));
        }
        h.push_str("</ul></div>\n");
    }

    h.push_str("<h2>Grade distribution</h2>\n");
    h.push_str(&chart(o));
    h.push_str("<table><tr><th>scheme</th><th>scope</th><th>scored</th><th>grade</th><th>qualified</th><th>cap</th><th>final</th></tr>\n");
    for s in &o.scopes {
        for g in &s.grades {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&s.scheme),
                esc(&s.scope),
                s.scored,
                esc(&g.grade),
                g.qualified,
                g.cap.map(|c| c.to_string()).unwrap_or_else(|| "–".into()),
                g.final_count
            );
        }
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Team summary</h2>\n<table><tr><th>team</th><th>agents</th><th>scored</th><th>average total</th><th>grades</th><th>bonus</th><th>team KPIs (merged)</th></tr>\n");
    for t in &o.teams {
        let grades: Vec<String> = o
            .grade_names
            .iter()
            .filter_map(|g| t.grades.get(g).map(|n| format!("{g} {n}")))
            .collect();
        let kpis: Vec<String> = t
            .kpis
            .iter()
            .map(|(k, v)| format!("{k} {}", v.map(fmt_num).unwrap_or_else(|| "–".into())))
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&t.team),
            t.agents,
            t.scored,
            opt(t.average_total),
            esc(&grades.join(", ")),
            opt(t.bonus_total),
            esc(&kpis.join(" · "))
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Agents</h2>\n<table><tr><th>agent</th><th>team</th><th>scope</th><th>rank</th><th>total</th><th>grade</th><th>coefficient</th><th>bonus</th><th>status</th></tr>\n");
    for a in &o.agents {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#a-{0}\">{0}</a> {1}</td><td>{2}</td><td>{3}</td><td class=\"n\">{4}</td><td class=\"n\">{5}</td><td>{6}</td><td class=\"n\">{7}</td><td class=\"n\">{8}</td><td>{9}</td></tr>",
            esc(&a.agent_id),
            esc(&a.name),
            esc(&a.team),
            esc(&a.scope),
            a.rank.map(|r| r.to_string()).unwrap_or_default(),
            a.total.map(|t| format!("{t:.2}")).unwrap_or_default(),
            a.grade
                .as_deref()
                .map(|g| format!("<span class=\"grade\">{}</span>", esc(g)))
                .unwrap_or_default(),
            opt(a.coefficient),
            a.bonus.map(|b| format!("{b:.2}")).unwrap_or_default(),
            esc(&status_text(a))
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Scorecards</h2>\n");
    for a in &o.agents {
        let _ = writeln!(
            h,
            "<details id=\"a-{}\" open><summary>{} {} · {} · total {} · grade {}</summary>",
            esc(&a.agent_id),
            esc(&a.agent_id),
            esc(&a.name),
            esc(&a.scheme),
            a.total
                .map(|t| format!("{t:.2}"))
                .unwrap_or_else(|| "–".into()),
            esc(a.grade.as_deref().unwrap_or("–"))
        );
        let _ = writeln!(
            h,
            "<p class=\"muted\">handled {}, scope {}{}{}</p>",
            a.handled,
            esc(&a.scope),
            if a.note.is_empty() {
                String::new()
            } else {
                format!(" · {}", esc(&a.note))
            },
            if a.fcr_provisional {
                " · FCR provisional"
            } else {
                ""
            }
        );
        h.push_str("<table><tr><th>item</th><th>source</th><th>value</th><th>target</th><th>rule</th><th>points</th><th>of</th><th>note</th></tr>\n");
        for i in &a.items {
            let _ = writeln!(
                h,
                "<tr><td>{}{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&i.label),
                i.section
                    .as_deref()
                    .map(|s| format!(" <span class=\"muted\">({})</span>", esc(s)))
                    .unwrap_or_default(),
                esc(&i.source),
                i.value.map(fmt_num).unwrap_or_else(|| "–".into()),
                esc(&i.target),
                esc(&i.rule),
                i.points.map(fmt_num).unwrap_or_else(|| "–".into()),
                fmt_num(i.max_points),
                esc(&i.note)
            );
        }
        for (s, v) in &a.sections {
            let _ = writeln!(
                h,
                "<tr><td colspan=\"5\">section {} (weighted)</td><td class=\"n\">{}</td><td></td><td></td></tr>",
                esc(s),
                fmt_num(*v)
            );
        }
        h.push_str("</table></details>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// Horizontal bars: agents per final grade (all scopes), with the count qualified
/// before caps as an outline, so the effect of the caps is visible.
fn chart(o: &Outcome) -> String {
    let rows: Vec<(&str, usize, usize)> = o
        .grade_names
        .iter()
        .map(|g| {
            let fin = o
                .agents
                .iter()
                .filter(|a| a.grade.as_deref() == Some(g))
                .count();
            let q = o
                .agents
                .iter()
                .filter(|a| a.qualified_grade.as_deref() == Some(g))
                .count();
            (g.as_str(), fin, q)
        })
        .collect();
    let max = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(0).max(1);
    let (bar_w, row_h) = (400.0, 26.0);
    let height = rows.len() as f64 * row_h + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"560\" height=\"{height}\" role=\"img\" aria-label=\"grade distribution\">\n"
    );
    for (i, (g, fin, q)) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let wf = bar_w * *fin as f64 / max as f64;
        let wq = bar_w * *q as f64 / max as f64;
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{:.0}\" font-size=\"14\">{}</text>\
<rect x=\"40\" y=\"{y:.0}\" width=\"{wf:.1}\" height=\"18\" fill=\"#3a6ea5\"/>\
<rect x=\"40\" y=\"{y:.0}\" width=\"{wq:.1}\" height=\"18\" fill=\"none\" stroke=\"#e07000\" stroke-dasharray=\"4 2\"/>\
<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\">{fin} (qualified {q})</text>",
            y + 14.0,
            esc(g),
            40.0 + wf.max(wq) + 6.0,
            y + 14.0
        );
    }
    s.push_str("</svg>\n<p class=\"muted\">Filled: final grade after caps; dashed: grade qualified for by total.</p>\n");
    s
}
