//! The scheme file: a TOML description of how agents are scored (`docs/scoring.md`).
//!
//! Parsing happens in two steps: serde reads the raw tables (unknown keys and wrong
//! types are errors there, with the position toml reports), then [`validate`] turns
//! them into a [`Scheme`] whose rules are known to be computable. Every error names
//! the file, the line and the key, because a scheme is edited by hand by people who
//! are not developers.

use std::ops::Range;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use serde::Deserialize;
use toml::Spanned;

use super::metric::Metric;

/// Why a scheme could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    #[error("cannot read scheme {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` is 1-based; `key` is the TOML key the problem is about, when known.
    #[error("{}", fmt_invalid(path, *line, key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
}

fn fmt_invalid(path: &Path, line: usize, key: Option<&str>, message: &str) -> String {
    match key {
        Some(k) => format!(
            "invalid scheme {}, line {line}, key `{k}`: {message}",
            path.display()
        ),
        None => format!("invalid scheme {}, line {line}: {message}", path.display()),
    }
}

/// Which agents are compared with each other (ranks and grade caps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The roster's `team` column.
    Team,
    /// The roster's `queue_group` column.
    QueueGroup,
    /// Everyone scored by the scheme.
    Centre,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Team => "team",
            Scope::QueueGroup => "queue_group",
            Scope::Centre => "centre",
        }
    }
}

/// How a cap share becomes a number of agents for a scope of `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapRounding {
    /// floor(share × n): a cap is never exceeded, small teams may get nobody.
    #[default]
    Floor,
    /// share × n rounded half up.
    Round,
    /// floor(share × n), but at least one agent when the share is above zero.
    AtLeastOne,
}

impl CapRounding {
    /// Number of agents a `share` (0–1) of `n` allows.
    pub fn count(self, share: f64, n: usize) -> usize {
        // The epsilon keeps 0.3 × 10 = 2.9999999999999996 at 3.
        let exact = share * n as f64 + 1e-9;
        let c = match self {
            CapRounding::Floor => exact.floor(),
            CapRounding::Round => (exact + 0.5).floor(),
            CapRounding::AtLeastOne => {
                if share > 0.0 {
                    exact.floor().max(1.0)
                } else {
                    0.0
                }
            }
        };
        (c.max(0.0) as usize).min(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Higher,
    Lower,
}

impl Direction {
    /// `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Higher => a > b,
            Direction::Lower => a < b,
        }
    }
}

/// One threshold of a `bands` rule: the first band the value satisfies gives its points.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Band {
    pub bound: Bound,
    pub threshold: f64,
    pub points: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// value ≥ threshold (`min`)
    AtLeast,
    /// value > threshold (`over`)
    Over,
    /// value ≤ threshold (`max`)
    AtMost,
    /// value < threshold (`under`)
    Under,
}

impl Bound {
    pub fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Bound::AtLeast => v >= t,
            Bound::Over => v > t,
            Bound::AtMost => v <= t,
            Bound::Under => v < t,
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            Bound::AtLeast => "≥",
            Bound::Over => ">",
            Bound::AtMost => "≤",
            Bound::Under => "<",
        }
    }
}

/// How an item's value becomes points (formulas in `docs/scoring.md`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Rule {
    Linear {
        weight: f64,
        floor: f64,
        target: f64,
    },
    Bands {
        bands: Vec<Band>,
        otherwise: f64,
    },
    Deduction {
        max: f64,
        target: f64,
        unit: f64,
        per_unit: f64,
        min: f64,
        whole_units: bool,
    },
    Rank {
        points: Vec<f64>,
        last: Option<f64>,
        above_average: Option<f64>,
    },
    Manual {
        weight: f64,
        scale: f64,
    },
}

/// Where an item's value comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A KPI of the agent's merged period snapshot.
    Metric { metric: Metric },
    /// A score from the manual CSV; with `raters`, the rater-weighted mean (360 review).
    Manual {
        name: String,
        raters: Vec<(String, f64)>,
    },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Item {
    pub id: String,
    pub label: String,
    /// Index into [`Scheme::sections`], when the scheme has sections.
    pub section: Option<usize>,
    pub source: Source,
    pub direction: Direction,
    pub rule: Rule,
    /// Points when the value is missing (no data for the metric, no manual score).
    pub missing_points: f64,
}

impl Item {
    /// The most points the item can give (for the scorecard's "of" column).
    pub fn max_points(&self) -> f64 {
        match &self.rule {
            Rule::Linear { weight, .. } | Rule::Manual { weight, .. } => *weight,
            Rule::Bands { bands, otherwise } => {
                bands.iter().map(|b| b.points).fold(*otherwise, f64::max)
            }
            Rule::Deduction { max, .. } => *max,
            Rule::Rank {
                points,
                above_average,
                ..
            } => points
                .iter()
                .copied()
                .chain(*above_average)
                .fold(0.0, f64::max),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Section {
    pub id: String,
    pub label: String,
    /// Share of the total, in points of the total (e.g. 70 of 100).
    pub weight: f64,
    /// The section's points are clamped to `[0, max]` and scaled to `weight`.
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Grade {
    pub name: String,
    /// Lowest total that qualifies.
    pub min: f64,
    /// Forced-distribution cap (0–1) inside the scope.
    pub max_share: Option<f64>,
    /// Guideline only: a warning when fewer agents end in the grade.
    pub min_share: Option<f64>,
    pub coefficient: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionAction {
    Exclude,
    Scheme(Box<Scheme>),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Protection {
    /// Agents hired less than this many months before the period end are protected.
    pub months: u32,
    pub action: ProtectionAction,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scheme {
    pub name: String,
    pub title: String,
    pub description: String,
    pub scope: Scope,
    /// Fewer handled contacts in the period: "insufficient data", not scored.
    pub min_handled: i64,
    pub excluded_dates: Vec<Date>,
    pub cap_rounding: CapRounding,
    /// Metrics that order agents with equal totals (each in its own direction), before
    /// the agent id.
    pub tie_break: Vec<(Metric, Direction)>,
    pub protection: Option<Protection>,
    pub sections: Vec<Section>,
    pub items: Vec<Item>,
    /// Highest `min` first; the last one is the floor grade.
    pub grades: Vec<Grade>,
}

impl Scheme {
    /// Metric items' metrics, for the team summary and the FCR warning.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out: Vec<Metric> = Vec::new();
        for it in &self.items {
            if let Source::Metric { metric } = &it.source
                && !out.contains(metric)
            {
                out.push(metric.clone());
            }
        }
        out
    }

    pub fn grade_index(&self, name: &str) -> Option<usize> {
        self.grades.iter().position(|g| g.name == name)
    }

    /// Index of the highest grade whose `min` the total reaches (the floor grade when none).
    pub fn qualified_grade(&self, total: f64) -> usize {
        self.grades
            .iter()
            .position(|g| total >= g.min)
            .unwrap_or(self.grades.len().saturating_sub(1))
    }
}

// ---- raw TOML ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheme {
    name: Spanned<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_scope")]
    scope: Scope,
    min_handled: Option<Spanned<i64>>,
    #[serde(default)]
    excluded_dates: Vec<Spanned<String>>,
    #[serde(default)]
    cap_rounding: CapRounding,
    #[serde(default)]
    tie_break: Vec<Spanned<String>>,
    protection: Option<Spanned<RawProtection>>,
    #[serde(default)]
    sections: Vec<Spanned<RawSection>>,
    #[serde(default)]
    items: Vec<Spanned<RawItem>>,
    #[serde(default)]
    grades: Vec<Spanned<RawGrade>>,
}

fn default_scope() -> Scope {
    Scope::Centre
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtection {
    months: u32,
    action: String,
    scheme: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    id: String,
    #[serde(default)]
    label: String,
    weight: f64,
    max: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrade {
    name: String,
    min: f64,
    max_share: Option<f64>,
    min_share: Option<f64>,
    #[serde(default = "one")]
    coefficient: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBand {
    min: Option<f64>,
    over: Option<f64>,
    max: Option<f64>,
    under: Option<f64>,
    points: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: String,
    #[serde(default)]
    label: String,
    section: Option<String>,
    metric: Option<String>,
    manual: Option<String>,
    direction: Option<Direction>,
    rule: String,
    #[serde(default)]
    missing_points: f64,
    // linear / manual
    weight: Option<f64>,
    floor: Option<f64>,
    target: Option<f64>,
    reference: Option<f64>,
    uplift: Option<f64>,
    scale: Option<f64>,
    raters: Option<toml::Table>,
    // bands
    bands: Option<Vec<RawBand>>,
    otherwise: Option<f64>,
    // deduction
    max: Option<f64>,
    unit: Option<f64>,
    per_unit: Option<f64>,
    min: Option<f64>,
    #[serde(default)]
    whole_units: bool,
    // rank
    points: Option<Vec<f64>>,
    last: Option<f64>,
    above_average: Option<f64>,
}

// ---- loading ----------------------------------------------------------------------

/// Read and validate a scheme file (and its protection scheme, if it names one).
pub fn load(path: &Path) -> Result<Scheme, SchemeError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemeError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path, true)
}

/// Parse scheme text; `path` is used in messages and to resolve a protection scheme.
pub fn parse(text: &str, path: &Path, allow_protection: bool) -> Result<Scheme, SchemeError> {
    let raw: RawScheme = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (line, key) = line_and_key(text, span.start);
        SchemeError::Invalid {
            path: path.to_owned(),
            line,
            key,
            message: e.message().trim().to_owned(),
        }
    })?;
    Validator { text, path }.scheme(raw, allow_protection)
}

/// 1-based line of byte `offset`, and the key written on that line (`key = …`), if any.
fn line_and_key(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..offset].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('{'));
    (line_no, key)
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    /// An error about `key` inside the table spanning `span`: the line is the key's own
    /// line when it is written there, else the table's first line.
    fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> SchemeError {
        // toml spans a `[[table]]` by its header only, and a value without its key, so
        // the key is looked for from the start of the span's line to the next header.
        let at = span.start.min(self.text.len());
        let begin = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
        let mut offset = at;
        let mut pos = begin;
        for (n, l) in self.text[begin..].split_inclusive('\n').enumerate() {
            let t = l.trim_start();
            if n > 0 && t.starts_with('[') {
                break;
            }
            let t = t.trim_start_matches(['{', ',', ' ']);
            let k = t.split_once('=').map(|(k, _)| k.trim().trim_matches('"'));
            if k == Some(key) {
                offset = pos + (l.len() - l.trim_start().len());
                break;
            }
            pos += l.len();
        }
        let (line, _) = line_and_key(self.text, offset);
        SchemeError::Invalid {
            path: self.path.to_owned(),
            line,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn scheme(&self, raw: RawScheme, allow_protection: bool) -> Result<Scheme, SchemeError> {
        let whole = 0..self.text.len();
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.err(&raw.name.span(), "name", "must not be empty"));
        }
        let min_handled = raw.min_handled.as_ref().map_or(0, |m| *m.get_ref());
        if let Some(m) = &raw.min_handled
            && min_handled < 0
        {
            return Err(self.err(&m.span(), "min_handled", "must be ≥ 0"));
        }
        let mut excluded_dates = Vec::new();
        for d in &raw.excluded_dates {
            let date: Date = d.get_ref().trim().parse().map_err(|_| {
                self.err(
                    &d.span(),
                    "excluded_dates",
                    format!("{:?} is not a date like 2026-11-14", d.get_ref()),
                )
            })?;
            excluded_dates.push(date);
        }
        excluded_dates.sort();
        excluded_dates.dedup();
        let mut tie_break = Vec::new();
        for m in &raw.tie_break {
            let metric =
                Metric::parse(m.get_ref()).map_err(|e| self.err(&m.span(), "tie_break", e))?;
            let dir = metric.default_direction().unwrap_or(Direction::Higher);
            tie_break.push((metric, dir));
        }
        let protection = match raw.protection {
            None => None,
            Some(p) => Some(self.protection(p, allow_protection)?),
        };
        let mut sections: Vec<Section> = Vec::new();
        for s in &raw.sections {
            let span = s.span();
            let s = s.get_ref();
            if sections.iter().any(|x| x.id == s.id) {
                return Err(self.err(&span, "id", format!("section {:?} is defined twice", s.id)));
            }
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(self.err(&span, "weight", "must be a number ≥ 0"));
            }
            if !(s.max.is_finite() && s.max > 0.0) {
                return Err(self.err(&span, "max", "must be a number > 0"));
            }
            sections.push(Section {
                id: s.id.clone(),
                label: if s.label.is_empty() {
                    s.id.clone()
                } else {
                    s.label.clone()
                },
                weight: s.weight,
                max: s.max,
            });
        }
        if raw.items.is_empty() {
            return Err(self.err(
                &whole,
                "items",
                "a scheme needs at least one [[items]] table",
            ));
        }
        let mut items: Vec<Item> = Vec::new();
        for it in &raw.items {
            let item = self.item(it, &sections)?;
            if items.iter().any(|x| x.id == item.id) {
                return Err(self.err(
                    &it.span(),
                    "id",
                    format!("item {:?} is defined twice", item.id),
                ));
            }
            items.push(item);
        }
        if raw.grades.is_empty() {
            return Err(self.err(
                &whole,
                "grades",
                "a scheme needs at least one [[grades]] table",
            ));
        }
        let mut grades: Vec<Grade> = Vec::new();
        for g in &raw.grades {
            let span = g.span();
            let g = g.get_ref();
            if g.name.trim().is_empty() {
                return Err(self.err(&span, "name", "must not be empty"));
            }
            if grades.iter().any(|x| x.name == g.name) {
                return Err(self.err(
                    &span,
                    "name",
                    format!("grade {:?} is defined twice", g.name),
                ));
            }
            if grades.iter().any(|x| x.min == g.min) || !g.min.is_finite() {
                return Err(self.err(
                    &span,
                    "min",
                    "must be a number, different from every other grade's min",
                ));
            }
            if let Some(last) = grades.last()
                && g.min > last.min
            {
                return Err(self.err(
                    &span,
                    "min",
                    "grades must be listed from the highest min down",
                ));
            }
            for (key, share) in [("max_share", g.max_share), ("min_share", g.min_share)] {
                if let Some(s) = share
                    && !(0.0..=1.0).contains(&s)
                {
                    return Err(self.err(&span, key, "is a share from 0 to 1 (0.10 = 10 %)"));
                }
            }
            if let (Some(lo), Some(hi)) = (g.min_share, g.max_share)
                && lo > hi
            {
                return Err(self.err(&span, "min_share", "must not exceed max_share"));
            }
            if !g.coefficient.is_finite() || g.coefficient < 0.0 {
                return Err(self.err(&span, "coefficient", "must be a number ≥ 0"));
            }
            grades.push(Grade {
                name: g.name.clone(),
                min: g.min,
                max_share: g.max_share,
                min_share: g.min_share,
                coefficient: g.coefficient,
            });
        }
        Ok(Scheme {
            name,
            title: raw.title,
            description: raw.description,
            scope: raw.scope,
            min_handled,
            excluded_dates,
            cap_rounding: raw.cap_rounding,
            tie_break,
            protection,
            sections,
            items,
            grades,
        })
    }

    fn protection(
        &self,
        p: Spanned<RawProtection>,
        allow: bool,
    ) -> Result<Protection, SchemeError> {
        let span = p.span();
        let p = p.into_inner();
        if !allow {
            return Err(self.err(
                &span,
                "protection",
                "a protection scheme cannot have a protection section of its own",
            ));
        }
        let action = match (p.action.as_str(), p.scheme) {
            ("exclude", None) => ProtectionAction::Exclude,
            ("exclude", Some(_)) => {
                return Err(self.err(&span, "scheme", "only with action = \"scheme\""));
            }
            ("scheme", Some(file)) => {
                let base = self.path.parent().unwrap_or(Path::new("."));
                let sub = base.join(&file);
                let text = std::fs::read_to_string(&sub).map_err(|e| {
                    self.err(
                        &span,
                        "scheme",
                        format!("cannot read {}: {e}", sub.display()),
                    )
                })?;
                ProtectionAction::Scheme(Box::new(parse(&text, &sub, false)?))
            }
            ("scheme", None) => {
                return Err(self.err(
                    &span,
                    "scheme",
                    "action = \"scheme\" needs scheme = \"FILE.toml\" (relative to this file)",
                ));
            }
            (other, _) => {
                return Err(self.err(
                    &span,
                    "action",
                    format!("{other:?} must be \"exclude\" or \"scheme\""),
                ));
            }
        };
        Ok(Protection {
            months: p.months,
            action,
        })
    }

    fn item(&self, it: &Spanned<RawItem>, sections: &[Section]) -> Result<Item, SchemeError> {
        let span = it.span();
        let r = it.get_ref();
        let e = |key: &str, msg: String| self.err(&span, key, msg);
        let id = r.id.trim().to_owned();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(e("id", format!("{:?} must be letters, digits or _", r.id)));
        }
        let section = match (&r.section, sections.is_empty()) {
            (None, true) => None,
            (Some(s), false) => Some(
                sections
                    .iter()
                    .position(|x| &x.id == s)
                    .ok_or_else(|| e("section", format!("no [[sections]] has id {s:?}")))?,
            ),
            (Some(_), true) => {
                return Err(e("section", "the scheme defines no [[sections]]".into()));
            }
            (None, false) => {
                return Err(e(
                    "section",
                    format!("item {id:?} needs a section: the scheme has [[sections]]"),
                ));
            }
        };
        let source = match (&r.metric, &r.manual, r.rule.as_str()) {
            (Some(_), Some(_), _) => {
                return Err(e(
                    "manual",
                    "an item has either metric or manual, not both".into(),
                ));
            }
            (Some(m), None, _) => Source::Metric {
                metric: Metric::parse(m).map_err(|m| e("metric", m))?,
            },
            (None, Some(name), _) => Source::Manual {
                name: name.clone(),
                raters: self.raters(r, &e)?,
            },
            (None, None, "manual") => Source::Manual {
                name: id.clone(),
                raters: self.raters(r, &e)?,
            },
            (None, None, _) => {
                return Err(e(
                    "metric",
                    format!("item {id:?} needs metric = \"…\" or manual = \"…\""),
                ));
            }
        };
        if r.raters.is_some() && matches!(source, Source::Metric { .. }) {
            return Err(e("raters", "only manual items have raters".into()));
        }
        let direction = match (&r.direction, &source) {
            (Some(d), _) => *d,
            (None, Source::Metric { metric }) => metric.default_direction().ok_or_else(|| {
                e(
                    "direction",
                    format!(
                        "metric {:?} has no natural direction: say higher or lower",
                        metric.name()
                    ),
                )
            })?,
            (None, Source::Manual { .. }) => Direction::Higher,
        };
        let num = |key: &str, v: Option<f64>| -> Result<f64, SchemeError> {
            match v {
                Some(x) if x.is_finite() => Ok(x),
                Some(_) => Err(e(key, "must be a finite number".into())),
                None => Err(e(key, format!("a {} rule needs {key} = …", r.rule))),
            }
        };
        // Keys that belong to other rule types are errors, not silently ignored: a
        // `target` on a bands item is a sign the author expects something else.
        let allowed: &[&str] = match r.rule.as_str() {
            "linear" => &["weight", "floor", "target", "reference", "uplift"],
            "bands" => &["bands", "otherwise"],
            "deduction" => &["max", "target", "unit", "per_unit", "min", "whole_units"],
            "rank" => &["points", "last", "above_average"],
            "manual" => &["weight", "scale"],
            other => {
                return Err(e(
                    "rule",
                    format!("{other:?} must be one of linear, bands, deduction, rank, manual"),
                ));
            }
        };
        let present = [
            ("weight", r.weight.is_some()),
            ("floor", r.floor.is_some()),
            ("target", r.target.is_some()),
            ("reference", r.reference.is_some()),
            ("uplift", r.uplift.is_some()),
            ("scale", r.scale.is_some()),
            ("bands", r.bands.is_some()),
            ("otherwise", r.otherwise.is_some()),
            ("max", r.max.is_some()),
            ("unit", r.unit.is_some()),
            ("per_unit", r.per_unit.is_some()),
            ("min", r.min.is_some()),
            ("whole_units", r.whole_units),
            ("points", r.points.is_some()),
            ("last", r.last.is_some()),
            ("above_average", r.above_average.is_some()),
        ];
        for (key, is) in present {
            if is && !allowed.contains(&key) {
                return Err(e(key, format!("not used by a {} rule", r.rule)));
            }
        }
        let rule = match r.rule.as_str() {
            "linear" => {
                let weight = num("weight", r.weight)?;
                let floor = num("floor", r.floor)?;
                let target = match (r.target, r.reference) {
                    (Some(_), Some(_)) => {
                        return Err(e("reference", "give target or reference, not both".into()));
                    }
                    (Some(t), None) => num("target", Some(t))?,
                    (None, Some(reference)) => {
                        // "industry mean + 10 %": better than the reference by the uplift.
                        let up = r.uplift.unwrap_or(0.0);
                        match direction {
                            Direction::Higher => reference * (1.0 + up),
                            Direction::Lower => reference * (1.0 - up),
                        }
                    }
                    (None, None) => num("target", None)?,
                };
                if r.uplift.is_some() && r.reference.is_none() {
                    return Err(e("uplift", "only with reference = …".into()));
                }
                let ok = match direction {
                    Direction::Higher => target > floor,
                    Direction::Lower => target < floor,
                };
                if !ok {
                    let key = if r.target.is_some() {
                        "target"
                    } else {
                        "reference"
                    };
                    return Err(e(
                        key,
                        format!(
                            "target {target} must be {} floor {floor} (direction {})",
                            if direction == Direction::Higher {
                                "above"
                            } else {
                                "below"
                            },
                            if direction == Direction::Higher {
                                "higher"
                            } else {
                                "lower"
                            },
                        ),
                    ));
                }
                Rule::Linear {
                    weight,
                    floor,
                    target,
                }
            }
            "bands" => {
                let raw_bands = r.bands.as_ref().ok_or_else(|| {
                    e(
                        "bands",
                        "a bands rule needs bands = [{ min = …, points = … }, …]".into(),
                    )
                })?;
                let mut bands = Vec::new();
                for b in raw_bands {
                    let given: Vec<(Bound, f64)> = [
                        (Bound::AtLeast, b.min),
                        (Bound::Over, b.over),
                        (Bound::AtMost, b.max),
                        (Bound::Under, b.under),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
                    let [(bound, threshold)] = given[..] else {
                        return Err(e(
                            "bands",
                            "each band has exactly one of min, over (higher is better) or max, under (lower is better)".into(),
                        ));
                    };
                    let fits = match direction {
                        Direction::Higher => matches!(bound, Bound::AtLeast | Bound::Over),
                        Direction::Lower => matches!(bound, Bound::AtMost | Bound::Under),
                    };
                    if !fits {
                        return Err(e(
                            "bands",
                            format!(
                                "direction is {}: use {}",
                                if direction == Direction::Higher {
                                    "higher"
                                } else {
                                    "lower"
                                },
                                if direction == Direction::Higher {
                                    "min or over"
                                } else {
                                    "max or under"
                                }
                            ),
                        ));
                    }
                    if let Some(prev) = bands.last().map(|p: &Band| p.threshold)
                        && !direction.better(prev, threshold)
                        && prev != threshold
                    {
                        return Err(e(
                            "bands",
                            "bands are checked in order, best first: thresholds must get worse"
                                .into(),
                        ));
                    }
                    bands.push(Band {
                        bound,
                        threshold,
                        points: num("bands", Some(b.points))?,
                    });
                }
                if bands.is_empty() {
                    return Err(e("bands", "needs at least one band".into()));
                }
                Rule::Bands {
                    bands,
                    otherwise: num("otherwise", Some(r.otherwise.unwrap_or(0.0)))?,
                }
            }
            "deduction" => {
                let max = num("max", r.max)?;
                let unit = num("unit", Some(r.unit.unwrap_or(1.0)))?;
                if unit <= 0.0 {
                    return Err(e("unit", "must be > 0".into()));
                }
                let min = num("min", Some(r.min.unwrap_or(0.0)))?;
                if min > max {
                    return Err(e("min", "must not exceed max".into()));
                }
                Rule::Deduction {
                    max,
                    target: num("target", r.target)?,
                    unit,
                    per_unit: num("per_unit", r.per_unit)?,
                    min,
                    whole_units: r.whole_units,
                }
            }
            "rank" => {
                let points = r.points.clone().unwrap_or_default();
                if points.is_empty() && r.last.is_none() && r.above_average.is_none() {
                    return Err(e(
                        "points",
                        "a rank rule needs points = [first, second, …], last or above_average"
                            .into(),
                    ));
                }
                if matches!(source, Source::Manual { .. }) {
                    return Err(e("rule", "rank needs a metric".into()));
                }
                Rule::Rank {
                    points,
                    last: r.last,
                    above_average: r.above_average,
                }
            }
            _ => {
                if !matches!(source, Source::Manual { .. }) {
                    return Err(e(
                        "rule",
                        "a manual rule takes its value from manual = \"…\"".into(),
                    ));
                }
                let weight = num("weight", r.weight)?;
                let scale = num("scale", Some(r.scale.unwrap_or(weight)))?;
                if scale <= 0.0 {
                    return Err(e("scale", "must be > 0".into()));
                }
                Rule::Manual { weight, scale }
            }
        };
        Ok(Item {
            label: if r.label.is_empty() {
                id.clone()
            } else {
                r.label.clone()
            },
            id,
            section,
            source,
            direction,
            rule,
            missing_points: num("missing_points", Some(r.missing_points))?,
        })
    }

    fn raters(
        &self,
        r: &RawItem,
        e: &dyn Fn(&str, String) -> SchemeError,
    ) -> Result<Vec<(String, f64)>, SchemeError> {
        let Some(t) = &r.raters else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (k, v) in t {
            let w = v
                .as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| {
                    e(
                        "raters",
                        format!("weight of rater {k:?} must be a number ≥ 0"),
                    )
                })?;
            out.push((k.clone(), w));
        }
        let sum: f64 = out.iter().map(|(_, w)| w).sum();
        if sum <= 0.0 {
            return Err(e(
                "raters",
                "rater weights must add up to more than 0".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Scheme, SchemeError> {
        parse(text, Path::new("s.toml"), true)
    }

    const MINIMAL: &str = "name = \"t\"\n\
        [[items]]\nid = \"csat\"\nmetric = \"csat\"\nrule = \"linear\"\nweight = 10\nfloor = 0.5\ntarget = 0.9\n\
        [[grades]]\nname = \"A\"\nmin = 5\n[[grades]]\nname = \"B\"\nmin = 0\n";

    /// (line, key, fragment of the message)
    fn invalid(text: &str) -> (usize, Option<String>, String) {
        match parse_str(text) {
            Err(SchemeError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an invalid scheme, got {other:?}"),
        }
    }

    #[test]
    fn shipped_schemes_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemes");
        for name in ["ecommerce", "callcenter", "balanced"] {
            let s = load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(s.name, name);
        }
        let e = load(&dir.join("ecommerce.toml")).unwrap();
        // reference × (1 + uplift), and × (1 − uplift) for lower-is-better.
        let Rule::Linear { target, .. } = e.items[0].rule else {
            panic!()
        };
        assert!((target - 0.935).abs() < 1e-12);
        let Rule::Linear { target, .. } = e.items[2].rule else {
            panic!()
        };
        assert!((target - 45.0).abs() < 1e-12);
        assert_eq!(e.items[2].direction, Direction::Lower);
        assert_eq!(e.qualified_grade(90.0), 0);
        assert_eq!(e.qualified_grade(89.9999), 1);
        assert_eq!(e.qualified_grade(-5.0), 3);
    }

    #[test]
    fn errors_name_line_and_key() {
        assert!(parse_str(MINIMAL).is_ok());
        // Unknown metric: line 4, key metric.
        let (line, key, msg) = invalid(&MINIMAL.replace("metric = \"csat\"", "metric = \"csatt\""));
        assert_eq!((line, key.as_deref()), (4, Some("metric")));
        assert!(msg.contains("unknown metric \"csatt\""), "{msg}");
        // A typo in a key: toml/serde reports it with its position.
        let (line, _, msg) = invalid(&MINIMAL.replace("target = 0.9", "targt = 0.9"));
        assert_eq!(line, 8);
        assert!(msg.contains("unknown field `targt`"), "{msg}");
        // Wrong type: the key is read from the line.
        let (line, key, _) = invalid(&MINIMAL.replace("weight = 10", "weight = \"ten\""));
        assert_eq!((line, key.as_deref()), (6, Some("weight")));
        // Inconsistent numbers: target must be better than floor.
        let (line, key, msg) = invalid(&MINIMAL.replace("target = 0.9", "target = 0.4"));
        assert_eq!((line, key.as_deref()), (8, Some("target")));
        assert!(msg.contains("above floor"), "{msg}");
        // A key of another rule type.
        let (line, key, _) =
            invalid(&MINIMAL.replace("target = 0.9", "target = 0.9\nper_unit = 2"));
        assert_eq!((line, key.as_deref()), (9, Some("per_unit")));
        // Unknown rule.
        let (line, key, msg) = invalid(&MINIMAL.replace("rule = \"linear\"", "rule = \"linar\""));
        assert_eq!((line, key.as_deref()), (5, Some("rule")));
        assert!(
            msg.contains("linear, bands, deduction, rank, manual"),
            "{msg}"
        );
        // Grades out of order.
        let (line, key, _) = invalid(&MINIMAL.replace("min = 0\n", "min = 50\n"));
        assert_eq!((line, key.as_deref()), (14, Some("min")));
        // The message a user sees.
        let e = parse_str(&MINIMAL.replace("floor = 0.5", "floor = 0.95")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid scheme s.toml, line 8, key `target`: target 0.9 must be above floor 0.95 (direction higher)"
        );
    }

    #[test]
    fn bands_and_deduction_validation() {
        let bands = "name = \"t\"\n[[items]]\nid = \"frt\"\nmetric = \"frt_avg_s\"\nrule = \"bands\"\n\
            bands = [{ max = 60, points = 10 }, { max = 30, points = 6 }]\n\
            [[grades]]\nname = \"A\"\nmin = 0\n";
        let (line, key, msg) = invalid(bands);
        assert_eq!((line, key.as_deref()), (6, Some("bands")));
        assert!(msg.contains("best first"), "{msg}");
        let (_, _, msg) = invalid(&bands.replace("max = 30", "min = 30"));
        assert!(msg.contains("direction is lower"), "{msg}");
        assert!(parse_str(&bands.replace("max = 30", "max = 180")).is_ok());
        let ded = "name = \"t\"\n[[items]]\nid = \"ar\"\nmetric = \"answer_rate\"\nrule = \"deduction\"\n\
            max = 30\ntarget = 0.95\nunit = 0\nper_unit = 2\n[[grades]]\nname = \"A\"\nmin = 0\n";
        let (line, key, _) = invalid(ded);
        assert_eq!((line, key.as_deref()), (8, Some("unit")));
    }

    #[test]
    fn sections_raters_and_protection() {
        let s = "name = \"t\"\n[[sections]]\nid = \"core\"\nweight = 70\nmax = 100\n\
            [[items]]\nid = \"review\"\nsection = \"core\"\nmanual = \"review\"\nrule = \"manual\"\nweight = 100\nscale = 100\n\
            raters = { peer = 0.2, manager = 0.5, self = 0.3 }\n[[grades]]\nname = \"A\"\nmin = 0\n";
        let ok = parse_str(s).unwrap();
        assert_eq!(ok.items[0].section, Some(0));
        let (line, key, _) = invalid(&s.replace("section = \"core\"", "section = \"cor\""));
        assert_eq!((line, key.as_deref()), (8, Some("section")));
        let (_, key, _) = invalid(&s.replace("section = \"core\"\n", ""));
        assert_eq!(key.as_deref(), Some("section"));
        let (line, key, _) = invalid(&s.replace("peer = 0.2", "peer = \"a lot\""));
        assert_eq!((line, key.as_deref()), (13, Some("raters")));
        let p = format!("{s}[protection]\nmonths = 3\naction = \"scheme\"\n");
        let (_, key, msg) = invalid(&p);
        assert_eq!(key.as_deref(), Some("scheme"));
        assert!(msg.contains("needs scheme"), "{msg}");
        let p = format!("{s}[protection]\nmonths = 3\naction = \"exclude\"\n");
        assert_eq!(
            parse_str(&p).unwrap().protection.unwrap().action,
            ProtectionAction::Exclude
        );
    }
}
