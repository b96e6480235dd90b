//! Period-end scoring (`ccmetrics score`, `docs/scoring.md`): agents are scored from
//! their day snapshots merged exactly over a period, by a scheme file.
//!
//! - `scheme.rs`: the scheme file (TOML) and its validation;
//! - `metric.rs`: metric names → values, through `kpi::kpis` (one definition per KPI);
//! - `period.rs`: month / quarter / year / date range → local days → UTC bounds;
//! - `rules.rs`: linear, bands, deduction, rank and manual rules, rater weights;
//! - `grades.rs`: grade caps (forced distribution) cascading down;
//! - `inputs.rs`: roster, manual scores and bonus bases (CSV);
//! - `report.rs`: `scores.csv`, `scores.json`, `report.html`, the stdout table.
//!
//! Only [`read_period`] does I/O (it reads the store); [`score`] is a pure function of
//! its inputs, so a scoring run is reproducible from the same snapshots and files.

pub mod grades;
pub mod inputs;
pub mod metric;
pub mod period;
pub mod report;
pub mod rules;
pub mod scheme;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::config::SlFormula;
use crate::engine::Dimension;
use crate::engine::acc::Acc;
use crate::store::{Store, StoreError, StoredRow};

use inputs::{Bases, ManualScores, Roster};
use metric::{Metric, Values};
use period::Period;
use scheme::{ProtectionAction, Rule, Scheme, Scope, Source};

/// The window label of the snapshots scoring reads.
pub const DAY_WINDOW: &str = "1d";

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(
        "manual scores: agent {agent:?}, item {item:?}: rater {rater:?} is not one of the item's raters ({known})"
    )]
    UnknownRater {
        agent: String,
        item: String,
        rater: String,
        known: String,
    },
    #[error("{0}")]
    Period(#[from] period::PeriodError),
}

/// What the store holds for a period.
#[derive(Clone, Debug, Default)]
pub struct PeriodData {
    /// `1d` agent rows with a window start inside the period (merged across partitions).
    pub days: Vec<StoredRow>,
    /// End of the newest `1d` row at or after the period start, any dimension `all` or
    /// `agent`: how far the data reach (for the FCR provisional rule).
    pub newest_end: Option<i64>,
}

/// Read the period's day snapshots. The caller checks that `1d` is configured.
pub async fn read_period(store: &Store, period: &Period) -> Result<PeriodData, StoreError> {
    let days = store
        .query(
            DAY_WINDOW,
            Dimension::Agent,
            Some(period.start_ms),
            Some(period.end_ms),
        )
        .await?;
    let later = store
        .query(DAY_WINDOW, Dimension::All, Some(period.start_ms), None)
        .await?;
    let newest_end = days.iter().chain(&later).map(|r| r.end).max();
    Ok(PeriodData { days, newest_end })
}

/// FCR is provisional while the data do not reach `fcr_window` past the period end:
/// a repeat contact in that time can still turn a period's resolution into a non-FCR.
/// Decided from the data, not the clock, so a run is reproducible.
pub fn fcr_provisional(period: &Period, newest_end: Option<i64>, fcr_window_ms: i64) -> bool {
    newest_end.is_none_or(|n| n < period.end_ms.saturating_add(fcr_window_ms))
}

/// Everything one scoring run needs; see [`score`].
pub struct Run<'a> {
    pub scheme: &'a Scheme,
    pub period: &'a Period,
    pub tz: &'a TimeZone,
    /// `1d` agent rows of the period ([`PeriodData::days`]).
    pub days: &'a [StoredRow],
    pub roster: Option<&'a Roster>,
    pub manual: &'a ManualScores,
    pub bases: Option<&'a Bases>,
    pub sl_formula: SlFormula,
    pub fcr_provisional: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scored,
    /// Fewer handled contacts than the scheme's `min_handled`: not a zero, no grade.
    InsufficientData,
    /// In the protection period and the scheme excludes protected agents.
    Protected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scored => "scored",
            Status::InsufficientData => "insufficient_data",
            Status::Protected => "protected",
        }
    }
}

/// One item of one agent's scorecard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ItemScore {
    pub id: String,
    pub label: String,
    pub section: Option<String>,
    /// Metric name, or `manual:NAME`.
    pub source: String,
    pub value: Option<f64>,
    pub target: String,
    pub rule: String,
    /// None when the agent is not scored.
    pub points: Option<f64>,
    pub max_points: f64,
    pub note: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentScore {
    pub agent_id: String,
    pub name: String,
    pub team: String,
    pub queue_group: String,
    /// The scope group the agent is ranked and capped in (team name, queue group, `centre`).
    pub scope: String,
    pub scheme: String,
    pub status: Status,
    pub handled: i64,
    pub items: Vec<ItemScore>,
    /// Section totals scaled to their weights (empty without sections).
    pub sections: Vec<(String, f64)>,
    pub total: Option<f64>,
    pub qualified_grade: Option<String>,
    pub grade: Option<String>,
    /// Position in the scope after the tie rule (1 = best).
    pub rank: Option<usize>,
    pub coefficient: Option<f64>,
    pub base: Option<f64>,
    pub bonus: Option<f64>,
    pub fcr_provisional: bool,
    pub note: String,
}

/// One grade's counts in one scope.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GradeCount {
    pub grade: String,
    pub qualified: usize,
    pub cap: Option<usize>,
    pub final_count: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ScopeSummary {
    pub scheme: String,
    pub scope: String,
    pub scored: usize,
    pub grades: Vec<GradeCount>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TeamSummary {
    pub team: String,
    pub agents: usize,
    pub scored: usize,
    pub average_total: Option<f64>,
    /// Final grade → agents (all schemes).
    pub grades: BTreeMap<String, usize>,
    pub bonus_total: Option<f64>,
    /// The main scheme's metrics over the team's merged snapshots (exact, not an
    /// average of agents).
    pub kpis: Vec<(String, Option<f64>)>,
}

/// The result of a run; serialised as `scores.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub scheme: String,
    pub scheme_title: String,
    pub period: Period,
    pub timezone: String,
    pub scope: Scope,
    pub fcr_provisional: bool,
    /// Excluded dates inside the period (their snapshots were left out).
    pub excluded_dates: Vec<Date>,
    /// Item ids in column order (main scheme first, then protection-only items).
    pub item_columns: Vec<String>,
    /// Grade names of the main scheme, best first, then the protection scheme's others.
    pub grade_names: Vec<String>,
    pub agents: Vec<AgentScore>,
    pub scopes: Vec<ScopeSummary>,
    pub teams: Vec<TeamSummary>,
    pub warnings: Vec<String>,
    /// The scheme as validated (targets computed, grades ordered): what was applied.
    pub scheme_definition: Scheme,
}

/// Round to 4 decimals: totals are compared for grades and ties after this, so binary
/// noise (89.99999999999999) cannot decide a grade.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

struct Prepared {
    agent: String,
    acc: Acc,
    values: Values,
}

/// Score every agent of the period (pure: no I/O, no clock).
pub fn score(run: &Run) -> Result<Outcome, ScoreError> {
    let main = run.scheme;
    let mut warnings = Vec::new();
    let empty_roster = Roster::new();
    let roster = run.roster.unwrap_or(&empty_roster);

    // Agents: everyone with data in the period, and everyone on the roster.
    let days = by_agent(run.days);
    let mut agents: BTreeSet<String> = days.keys().map(|k| (*k).to_owned()).collect();
    if agents.is_empty() {
        warnings.push(format!(
            "the store has no 1d agent snapshots from {} to {}: replay or serve first?",
            run.period.first, run.period.last
        ));
    }
    agents.extend(roster.keys().cloned());
    if run.roster.is_some() {
        let missing: Vec<&str> = agents
            .iter()
            .filter(|a| !roster.contains_key(*a))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "{} agent(s) with data are not on the roster (team \"unknown\"): {}",
                missing.len(),
                missing.join(", ")
            ));
        }
    } else if main.scope != Scope::Centre {
        warnings.push(format!(
            "scope is {} but no --roster was given: every agent is in group \"unknown\"",
            main.scope.as_str()
        ));
    }

    let protected_scheme = match main.protection.as_ref().map(|p| &p.action) {
        Some(ProtectionAction::Scheme(s)) => Some(s.as_ref()),
        _ => None,
    };
    check_manual(run.manual, main, protected_scheme, &agents, &mut warnings)?;
    let scores_fcr = std::iter::once(main)
        .chain(protected_scheme)
        .any(|s| s.metrics().iter().any(Metric::uses_fcr));
    if run.fcr_provisional && scores_fcr {
        warnings.push(format!(
            "the FCR window after {} has not closed in the data yet: fcr figures are provisional (rows marked fcr_provisional)",
            run.period.last
        ));
    }
    let in_period: Vec<Date> = main
        .excluded_dates
        .iter()
        .copied()
        .filter(|d| run.period.contains(*d))
        .collect();
    for d in &main.excluded_dates {
        if !run.period.contains(*d) {
            warnings.push(format!("excluded date {d} is outside the period"));
        }
    }

    // Pools: the main scheme, and the protection scheme (or exclusion).
    let mut pools: Vec<(&Scheme, Vec<String>)> = vec![(main, Vec::new())];
    if let Some(s) = protected_scheme {
        pools.push((s, Vec::new()));
    }
    let mut out_agents = Vec::new();
    let period_after = run.period.last.tomorrow().unwrap_or(run.period.last);
    for a in &agents {
        let hired = roster.get(a).and_then(|e| e.hire_date);
        let protected = match (&main.protection, hired) {
            (Some(p), Some(h)) => period::add_months(h, p.months).is_some_and(|d| d > period_after),
            _ => false,
        };
        match (protected, protected_scheme) {
            (false, _) => pools[0].1.push(a.clone()),
            (true, Some(_)) => pools[1].1.push(a.clone()),
            (true, None) => {
                let acc = merged(&days, a, &in_period, run.tz)?;
                out_agents.push(unscored(
                    run,
                    main,
                    a,
                    &acc,
                    Status::Protected,
                    format!(
                        "protection period: hired {} (within {} months of the period end)",
                        hired.map(|h| h.to_string()).unwrap_or_default(),
                        main.protection.as_ref().map_or(0, |p| p.months)
                    ),
                    roster,
                ));
            }
        }
    }

    let mut scopes = Vec::new();
    for (scheme, members) in &pools {
        // The main scheme's excluded dates apply to every pool: an outage day is an
        // outage day for everyone. A protection scheme may add its own.
        let mut excluded = in_period.clone();
        excluded.extend(
            scheme
                .excluded_dates
                .iter()
                .filter(|d| run.period.contains(**d)),
        );
        let mut groups: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
        for a in members {
            let acc = merged(&days, a, &excluded, run.tz)?;
            if acc.handled < scheme.min_handled {
                out_agents.push(unscored(
                    run,
                    scheme,
                    a,
                    &acc,
                    Status::InsufficientData,
                    format!(
                        "insufficient data: {} handled, the scheme needs {}",
                        acc.handled, scheme.min_handled
                    ),
                    roster,
                ));
                continue;
            }
            let values = Values::new(&acc, run.sl_formula);
            groups
                .entry(scope_key(scheme.scope, roster.get(a)))
                .or_default()
                .push(Prepared {
                    agent: a.clone(),
                    acc,
                    values,
                });
        }
        for (key, group) in groups {
            let (rows, summary, w) = score_group(run, scheme, &key, &group, roster);
            out_agents.extend(rows);
            scopes.push(summary);
            warnings.extend(w);
        }
    }

    // Report order: scope, scored agents by rank, then the others by id.
    out_agents.sort_by(|a, b| {
        (a.scheme != main.name)
            .cmp(&(b.scheme != main.name))
            .then_with(|| a.scope.cmp(&b.scope))
            .then_with(|| a.rank.is_none().cmp(&b.rank.is_none()))
            .then_with(|| a.rank.cmp(&b.rank))
            .then_with(|| a.agent_id.cmp(&b.agent_id))
    });

    let mut item_columns: Vec<String> = main.items.iter().map(|i| i.id.clone()).collect();
    let mut grade_names: Vec<String> = main.grades.iter().map(|g| g.name.clone()).collect();
    if let Some(s) = protected_scheme {
        for i in &s.items {
            if !item_columns.contains(&i.id) {
                item_columns.push(i.id.clone());
            }
        }
        for g in &s.grades {
            if !grade_names.contains(&g.name) {
                grade_names.push(g.name.clone());
            }
        }
    }
    let teams = team_summaries(run, &days, &out_agents, &in_period)?;
    Ok(Outcome {
        scheme: main.name.clone(),
        scheme_title: main.title.clone(),
        period: run.period.clone(),
        timezone: run.tz.iana_name().unwrap_or("UTC").to_owned(),
        scope: main.scope,
        fcr_provisional: run.fcr_provisional,
        excluded_dates: in_period,
        item_columns,
        grade_names,
        agents: out_agents,
        scopes,
        teams,
        warnings,
        scheme_definition: main.clone(),
    })
}

/// Manual CSV rows must name raters the item knows; items no scheme uses are worth a
/// warning (a typo in the item column would otherwise silently score 0).
fn check_manual(
    manual: &ManualScores,
    main: &Scheme,
    other: Option<&Scheme>,
    agents: &BTreeSet<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ScoreError> {
    let items: Vec<&scheme::Item> = main
        .items
        .iter()
        .chain(other.into_iter().flat_map(|s| s.items.iter()))
        .collect();
    let mut unused = BTreeSet::new();
    let mut strangers = BTreeSet::new();
    for ((agent, name), rows) in manual {
        if !agents.contains(agent) {
            strangers.insert(agent.clone());
        }
        let users: Vec<&&scheme::Item> = items
            .iter()
            .filter(|i| matches!(&i.source, Source::Manual { name: n, .. } if n == name))
            .collect();
        if users.is_empty() {
            unused.insert(name.clone());
        }
        for it in users {
            let Source::Manual { raters, .. } = &it.source else {
                continue;
            };
            if raters.is_empty() {
                continue;
            }
            for (rater, _) in rows {
                if !raters.iter().any(|(r, _)| r == rater) {
                    return Err(ScoreError::UnknownRater {
                        agent: agent.clone(),
                        item: name.clone(),
                        rater: rater.clone(),
                        known: raters
                            .iter()
                            .map(|(r, _)| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
    }
    if !unused.is_empty() {
        warnings.push(format!(
            "manual scores for items the scheme does not use: {}",
            unused.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !strangers.is_empty() {
        warnings.push(format!(
            "manual scores for agents with neither data nor a roster entry: {}",
            strangers.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The agent's day rows merged exactly (counters summed, histograms merged), minus
/// the excluded days.
fn merged(
    days: &ByAgent,
    agent: &str,
    excluded: &[Date],
    tz: &TimeZone,
) -> Result<Acc, ScoreError> {
    let skip: BTreeSet<i64> = excluded
        .iter()
        .map(|d| period::day_start_ms(*d, tz))
        .collect::<Result<_, _>>()?;
    let mut acc = Acc::default();
    for r in days
        .get(agent)
        .into_iter()
        .flatten()
        .filter(|r| !skip.contains(&r.start))
    {
        acc.merge(&r.acc);
    }
    Ok(acc)
}

/// Day rows by agent, indexed once: a year of a large centre is ~10⁵ rows.
type ByAgent<'a> = BTreeMap<&'a str, Vec<&'a StoredRow>>;

fn by_agent(days: &[StoredRow]) -> ByAgent<'_> {
    let mut out = ByAgent::new();
    for r in days {
        out.entry(r.key.as_str()).or_default().push(r);
    }
    out
}

fn scope_key(scope: Scope, entry: Option<&inputs::RosterEntry>) -> String {
    let pick = |s: Option<&String>| {
        s.filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| crate::engine::UNKNOWN_KEY.to_owned())
    };
    match scope {
        Scope::Team => pick(entry.map(|e| &e.team)),
        Scope::QueueGroup => pick(entry.map(|e| &e.queue_group)),
        Scope::Centre => "centre".to_owned(),
    }
}

fn item_value(
    run: &Run,
    item: &scheme::Item,
    agent: &str,
    values: &Values,
) -> (Option<f64>, String) {
    match &item.source {
        Source::Metric { metric } => {
            let v = values.get(metric);
            let note = if v.is_none() {
                format!("no data for {}", metric.name())
            } else if run.fcr_provisional && metric.uses_fcr() {
                "provisional".to_owned()
            } else {
                String::new()
            };
            (v, note)
        }
        Source::Manual { name, raters } => {
            let rows = run.manual.get(&(agent.to_owned(), name.clone()));
            let v = rows.and_then(|rows| {
                if raters.is_empty() {
                    let n = rows.len() as f64;
                    (n > 0.0).then(|| rows.iter().map(|(_, s)| s).sum::<f64>() / n)
                } else {
                    rules::rater_weighted(rows, raters)
                }
            });
            let note = match (v, rows) {
                (None, _) => format!("no manual score for {name}"),
                (Some(_), Some(rows)) if !raters.is_empty() => {
                    let given: BTreeSet<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
                    let missing: Vec<&str> = raters
                        .iter()
                        .map(|(r, _)| r.as_str())
                        .filter(|r| !given.contains(r))
                        .collect();
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("no {} rating: weights renormalised", missing.join("/"))
                    }
                }
                _ => String::new(),
            };
            (v, note)
        }
    }
}

fn source_name(item: &scheme::Item) -> String {
    match &item.source {
        Source::Metric { metric } => metric.name().to_owned(),
        Source::Manual { name, .. } => format!("manual:{name}"),
    }
}

fn unscored(
    run: &Run,
    scheme: &Scheme,
    agent: &str,
    acc: &Acc,
    status: Status,
    note: String,
    roster: &Roster,
) -> AgentScore {
    let values = Values::new(acc, run.sl_formula);
    let e = roster.get(agent).cloned().unwrap_or_default();
    let items = scheme
        .items
        .iter()
        .map(|it| {
            let (value, _) = item_value(run, it, agent, &values);
            ItemScore {
                id: it.id.clone(),
                label: it.label.clone(),
                section: it.section.map(|s| scheme.sections[s].id.clone()),
                source: source_name(it),
                value,
                target: rules::describe_target(it),
                rule: rules::describe(it),
                points: None,
                max_points: it.max_points(),
                note: String::new(),
            }
        })
        .collect();
    AgentScore {
        agent_id: agent.to_owned(),
        scope: scope_key(scheme.scope, roster.get(agent)),
        name: e.name,
        team: e.team,
        queue_group: e.queue_group,
        scheme: scheme.name.clone(),
        status,
        handled: acc.handled,
        items,
        sections: Vec::new(),
        total: None,
        qualified_grade: None,
        grade: None,
        rank: None,
        coefficient: None,
        base: run.bases.and_then(|b| b.get(agent).copied()),
        bonus: None,
        fcr_provisional: run.fcr_provisional,
        note,
    }
}

/// Score one scope group: item points (ranks inside the group), totals, order, grades
/// with caps, bonus.
fn score_group(
    run: &Run,
    scheme: &Scheme,
    key: &str,
    group: &[Prepared],
    roster: &Roster,
) -> (Vec<AgentScore>, ScopeSummary, Vec<String>) {
    // values[i][j]: item j of agent i
    let mut cells: Vec<Vec<ItemScore>> = Vec::with_capacity(group.len());
    for p in group {
        let row = scheme
            .items
            .iter()
            .map(|it| {
                let (value, mut note) = item_value(run, it, &p.agent, &p.values);
                let points = match value {
                    Some(v) => rules::points(&it.rule, it.direction, v),
                    None => {
                        if it.missing_points != 0.0 {
                            note.push_str(&format!(": {} points", rules::num(it.missing_points)));
                        }
                        Some(it.missing_points)
                    }
                };
                ItemScore {
                    id: it.id.clone(),
                    label: it.label.clone(),
                    section: it.section.map(|s| scheme.sections[s].id.clone()),
                    source: source_name(it),
                    value,
                    target: rules::describe_target(it),
                    rule: rules::describe(it),
                    points,
                    max_points: it.max_points(),
                    note,
                }
            })
            .collect();
        cells.push(row);
    }
    // Rank items need the whole group.
    for (j, it) in scheme.items.iter().enumerate() {
        if let Rule::Rank {
            points,
            last,
            above_average,
        } = &it.rule
        {
            let vals: Vec<Option<f64>> = cells.iter().map(|r| r[j].value).collect();
            let pts = rules::rank_points(&vals, it.direction, points, *last, *above_average);
            for (row, p) in cells.iter_mut().zip(pts) {
                if row[j].value.is_some() {
                    row[j].points = Some(p);
                } else {
                    row[j].points = Some(it.missing_points);
                }
            }
        }
    }
    // Totals.
    let mut totals = Vec::with_capacity(group.len());
    let mut section_totals = Vec::with_capacity(group.len());
    for row in &cells {
        let pts = |pred: &dyn Fn(&ItemScore) -> bool| -> f64 {
            row.iter()
                .filter(|c| pred(c))
                .map(|c| c.points.unwrap_or(0.0))
                .sum()
        };
        if scheme.sections.is_empty() {
            totals.push(round4(pts(&|_| true)));
            section_totals.push(Vec::new());
        } else {
            let mut secs = Vec::new();
            let mut total = 0.0;
            for s in &scheme.sections {
                let raw = pts(&|c| c.section.as_deref() == Some(s.id.as_str()));
                let scaled = s.weight * raw.clamp(0.0, s.max) / s.max;
                secs.push((s.id.clone(), round4(scaled)));
                total += scaled;
            }
            totals.push(round4(total));
            section_totals.push(secs);
        }
    }
    // Order: total, then the tie-break metrics, then the agent id.
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| {
        totals[b]
            .partial_cmp(&totals[a])
            .unwrap_or(Ordering::Equal)
            .then_with(|| {
                for (m, dir) in &scheme.tie_break {
                    let (x, y) = (group[a].values.get(m), group[b].values.get(m));
                    let o = match (x, y) {
                        (Some(x), Some(y)) if dir.better(x, y) => Ordering::Less,
                        (Some(x), Some(y)) if dir.better(y, x) => Ordering::Greater,
                        (Some(_), None) => Ordering::Less,
                        (None, Some(_)) => Ordering::Greater,
                        _ => Ordering::Equal,
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            })
            .then_with(|| group[a].agent.cmp(&group[b].agent))
    });
    let qualified: Vec<usize> = order
        .iter()
        .map(|&i| scheme.qualified_grade(totals[i]))
        .collect();
    let finals = grades::apply_caps(&qualified, &scheme.grades, scheme.cap_rounding);
    let scope_label = match scheme.scope {
        Scope::Centre => "the centre".to_owned(),
        s => format!("{} {key}", s.as_str()),
    };
    let warnings = grades::distribution_warnings(
        &format!("{} ({})", scope_label, scheme.name),
        &finals,
        &scheme.grades,
        scheme.cap_rounding,
    );
    let n = group.len();
    let summary = ScopeSummary {
        scheme: scheme.name.clone(),
        scope: key.to_owned(),
        scored: n,
        grades: scheme
            .grades
            .iter()
            .enumerate()
            .map(|(g, grade)| GradeCount {
                grade: grade.name.clone(),
                qualified: qualified.iter().filter(|&&q| q == g).count(),
                cap: grade.max_share.map(|s| scheme.cap_rounding.count(s, n)),
                final_count: finals.iter().filter(|&&f| f == g).count(),
            })
            .collect(),
    };
    let mut rows = Vec::with_capacity(n);
    for (pos, &i) in order.iter().enumerate() {
        let p = &group[i];
        let (q, f) = (qualified[pos], finals[pos]);
        let grade = &scheme.grades[f];
        let e = roster.get(&p.agent).cloned().unwrap_or_default();
        let base = run.bases.and_then(|b| b.get(&p.agent).copied());
        let mut note = String::new();
        if f != q {
            // Name every cap the agent was moved past, so the cascade is explainable.
            let caps: Vec<String> = scheme.grades[q..f]
                .iter()
                .map(|g| {
                    let share = g.max_share.unwrap_or(0.0);
                    format!(
                        "{} ≤ {} % allows {} of {n}",
                        g.name,
                        rules::num(share * 100.0),
                        scheme.cap_rounding.count(share, n)
                    )
                })
                .collect();
            note = format!(
                "qualified for {}; moved to {} by the caps in {scope_label} ({})",
                scheme.grades[q].name,
                grade.name,
                caps.join("; ")
            );
        }
        rows.push(AgentScore {
            agent_id: p.agent.clone(),
            name: e.name,
            team: e.team,
            queue_group: e.queue_group,
            scope: key.to_owned(),
            scheme: scheme.name.clone(),
            status: Status::Scored,
            handled: p.acc.handled,
            items: std::mem::take(&mut cells[i]),
            sections: std::mem::take(&mut section_totals[i]),
            total: Some(totals[i]),
            qualified_grade: Some(scheme.grades[q].name.clone()),
            grade: Some(grade.name.clone()),
            rank: Some(pos + 1),
            coefficient: Some(grade.coefficient),
            base,
            bonus: base.map(|b| round4(b * grade.coefficient)),
            fcr_provisional: run.fcr_provisional,
            note,
        });
    }
    (rows, summary, warnings)
}

/// Per roster team: counts, average total, grades, bonus and the main scheme's metrics
/// over the team's merged snapshots.
fn team_summaries(
    run: &Run,
    days: &ByAgent,
    agents: &[AgentScore],
    excluded: &[Date],
) -> Result<Vec<TeamSummary>, ScoreError> {
    let mut by_team: BTreeMap<String, Vec<&AgentScore>> = BTreeMap::new();
    for a in agents {
        let team = if a.team.is_empty() {
            crate::engine::UNKNOWN_KEY.to_owned()
        } else {
            a.team.clone()
        };
        by_team.entry(team).or_default().push(a);
    }
    let metrics = run.scheme.metrics();
    let mut out = Vec::new();
    for (team, members) in by_team {
        let mut acc = Acc::default();
        for a in &members {
            acc.merge(&merged(days, &a.agent_id, excluded, run.tz)?);
        }
        let values = Values::new(&acc, run.sl_formula);
        let totals: Vec<f64> = members.iter().filter_map(|a| a.total).collect();
        let bonuses: Vec<f64> = members.iter().filter_map(|a| a.bonus).collect();
        let mut grades = BTreeMap::new();
        for a in &members {
            if let Some(g) = &a.grade {
                *grades.entry(g.clone()).or_insert(0) += 1;
            }
        }
        out.push(TeamSummary {
            team,
            agents: members.len(),
            scored: totals.len(),
            average_total: (!totals.is_empty())
                .then(|| round4(totals.iter().sum::<f64>() / totals.len() as f64)),
            grades,
            bonus_total: (!bonuses.is_empty()).then(|| round4(bonuses.iter().sum())),
            kpis: std::iter::once(("handled".to_owned(), Some(acc.handled as f64)))
                .chain(
                    metrics
                        .iter()
                        .filter(|m| m.name() != "handled")
                        .map(|m| (m.name().to_owned(), values.get(m))),
                )
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::acc::Measure;
    use std::path::Path;

    const DAY: i64 = 86_400_000;

    fn tz() -> TimeZone {
        TimeZone::UTC
    }

    fn nov() -> Period {
        Period::parse("2026-11", &tz()).unwrap()
    }

    /// A `1d` agent row on November `day` (UTC) with `measures`.
    fn row(agent: &str, day: i64, measures: &[Measure]) -> StoredRow {
        let start = nov().start_ms + (day - 1) * DAY;
        let mut acc = Acc::default();
        for m in measures {
            acc.apply(m, 1);
        }
        StoredRow {
            window: "1d".into(),
            start,
            end: start + DAY,
            dimension: Dimension::Agent,
            key: agent.into(),
            acc,
            revision: 1,
        }
    }

    fn handled(n: usize) -> Vec<Measure> {
        vec![Measure::Handled { handle_ms: 60_000 }; n]
    }

    fn scheme(text: &str) -> Scheme {
        scheme::parse(text, Path::new("test.toml"), true).unwrap()
    }

    fn run<'a>(s: &'a Scheme, p: &'a Period, tz: &'a TimeZone, days: &'a [StoredRow]) -> Run<'a> {
        static MANUAL: std::sync::OnceLock<ManualScores> = std::sync::OnceLock::new();
        Run {
            scheme: s,
            period: p,
            tz,
            days,
            roster: None,
            manual: MANUAL.get_or_init(ManualScores::new),
            bases: None,
            sl_formula: SlFormula::Offered,
            fcr_provisional: false,
        }
    }

    fn agent<'a>(o: &'a Outcome, id: &str) -> &'a AgentScore {
        o.agents.iter().find(|a| a.agent_id == id).unwrap()
    }

    const P90: &str = "name = \"p90\"\n[[items]]\nid = \"frt\"\nmetric = \"frt_p90_s\"\nrule = \"linear\"\n\
        weight = 100\nfloor = 110\ntarget = 10\n[[grades]]\nname = \"A\"\nmin = 0\n";

    #[test]
    fn period_p90_comes_from_merged_histograms() {
        // Day 1: nine first responses of 10 s; day 2: one of 100 s. The period's p90 is
        // ~10 s (9 of 10 values); an average of the daily p90s would be 55 s.
        let days = vec![
            row("a", 1, &vec![Measure::FirstResponse { frt_ms: 10_000 }; 9]),
            row("a", 2, &[Measure::FirstResponse { frt_ms: 100_000 }]),
        ];
        let (s, p, tz) = (scheme(P90), nov(), tz());
        let o = score(&run(&s, &p, &tz, &days)).unwrap();
        let v = agent(&o, "a").items[0].value.unwrap();
        assert!((v - 10.0).abs() < 0.1, "{v}");
        let mut merged = days[0].acc.clone();
        merged.merge(&days[1].acc);
        assert_eq!(
            Some(v),
            Values::new(&merged, SlFormula::Offered).get(&Metric::parse("frt_p90_s").unwrap())
        );
    }

    #[test]
    fn excluded_dates_leave_their_days_out() {
        let text = P90.replace(
            "name = \"p90\"",
            "name = \"p90\"\nexcluded_dates = [\"2026-11-02\", \"2026-12-25\"]",
        );
        let days = vec![
            row("a", 1, &vec![Measure::FirstResponse { frt_ms: 10_000 }; 9]),
            row("a", 2, &[Measure::FirstResponse { frt_ms: 100_000 }]),
            row("a", 3, &[Measure::FirstResponse { frt_ms: 10_000 }]),
        ];
        let (s, p, tz) = (scheme(&text), nov(), tz());
        let o = score(&run(&s, &p, &tz, &days)).unwrap();
        assert_eq!(o.excluded_dates.len(), 1);
        assert!(
            o.warnings
                .iter()
                .any(|w| w.contains("2026-12-25 is outside")),
            "{:?}",
            o.warnings
        );
        let a = agent(&o, "a");
        // Without day 2 every response took 10 s: full points.
        assert!((a.items[0].value.unwrap() - 10.0).abs() < 0.1);
        assert!((a.total.unwrap() - 100.0).abs() < 1.5, "{:?}", a.total);
    }

    const TWO: &str = "name = \"main\"\nscope = \"team\"\nmin_handled = 3\ntie_break = [\"handled\"]\n\
        [[items]]\nid = \"csat\"\nmetric = \"csat\"\nrule = \"linear\"\nweight = 50\nfloor = 0\ntarget = 1\nmissing_points = 10\n\
        [[items]]\nid = \"volume\"\nmetric = \"handled\"\nrule = \"rank\"\npoints = [5]\n\
        [[grades]]\nname = \"A\"\nmin = 40\nmax_share = 0.5\n[[grades]]\nname = \"B\"\nmin = 0\n";

    #[test]
    fn insufficient_data_missing_values_ties_and_scopes() {
        let happy = Measure::Csat {
            score: 50_000,
            positive: true,
        };
        let mut x = handled(4);
        x.push(happy);
        let mut y = handled(5);
        y.push(happy);
        let days = vec![
            row("x", 1, &x),          // csat 1 → 50, volume 4
            row("y", 1, &y),          // csat 1 → 50, volume 5 → first, +5
            row("z", 1, &handled(3)), // no survey → missing_points 10
            row("w", 1, &handled(2)), // below min_handled
            row("v", 1, &handled(9)), // team south, alone
        ];
        let mut roster = Roster::new();
        for (a, t) in [
            ("x", "north"),
            ("y", "north"),
            ("z", "north"),
            ("w", "north"),
            ("v", "south"),
        ] {
            roster.insert(
                a.into(),
                inputs::RosterEntry {
                    team: t.into(),
                    ..Default::default()
                },
            );
        }
        let (s, p, tz) = (scheme(TWO), nov(), tz());
        let mut r = run(&s, &p, &tz, &days);
        r.roster = Some(&roster);
        let o = score(&r).unwrap();
        let (x, y, z, w, v) = (
            agent(&o, "x"),
            agent(&o, "y"),
            agent(&o, "z"),
            agent(&o, "w"),
            agent(&o, "v"),
        );
        assert_eq!((y.total, y.rank), (Some(55.0), Some(1)));
        assert_eq!((x.total, x.rank), (Some(50.0), Some(2)));
        assert_eq!(z.total, Some(10.0));
        assert!(
            z.items[0].note.contains("no data for csat"),
            "{}",
            z.items[0].note
        );
        // North has 3 scored agents: the A cap (50 %, floor) allows 1, so x moves to B.
        assert_eq!(y.grade.as_deref(), Some("A"));
        assert_eq!(
            (x.qualified_grade.as_deref(), x.grade.as_deref()),
            (Some("A"), Some("B"))
        );
        assert_eq!(w.status, Status::InsufficientData);
        assert_eq!((w.total, w.grade.as_ref()), (None, None));
        // South: one agent, no ranking possible, its own cap.
        assert_eq!((v.scope.as_str(), v.total), ("south", Some(10.0)));
        assert_eq!(o.scopes.len(), 2);
        let north = o.teams.iter().find(|t| t.team == "north").unwrap();
        assert_eq!((north.agents, north.scored), (4, 3));
        // Team KPIs come from the merged team snapshot: 14 handled in north.
        assert_eq!(north.kpis[0], ("handled".to_owned(), Some(14.0)));
    }

    #[test]
    fn equal_totals_are_ordered_by_tie_break_then_id() {
        let days = vec![
            row("b", 1, &handled(4)),
            row("a", 1, &handled(4)),
            row("c", 1, &handled(6)),
        ];
        let text = TWO.replace("points = [5]", "points = [0]");
        let (s, p, tz) = (scheme(&text), nov(), tz());
        let o = score(&run(&s, &p, &tz, &days)).unwrap();
        // All totals are 10 (missing csat): handled decides (c), then the agent id.
        let order: Vec<&str> = o.agents.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(order, vec!["c", "a", "b"]);
    }

    #[test]
    fn protection_scores_new_hires_on_their_own_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let sub = "name = \"probation\"\nscope = \"centre\"\n[[items]]\nid = \"volume\"\nmetric = \"handled\"\n\
            rule = \"linear\"\nweight = 100\nfloor = 0\ntarget = 10\n[[grades]]\nname = \"P\"\nmin = 50\n[[grades]]\nname = \"F\"\nmin = 0\n";
        std::fs::write(dir.path().join("probation.toml"), sub).unwrap();
        let main = format!(
            "{TWO}[protection]\nmonths = 3\naction = \"scheme\"\nscheme = \"probation.toml\"\n"
        );
        let s = scheme::parse(&main, &dir.path().join("main.toml"), true).unwrap();
        let mut roster = Roster::new();
        for (a, hired) in [
            ("old", "2025-01-01"),
            ("new", "2026-09-02"),
            ("edge", "2026-09-01"),
        ] {
            roster.insert(
                a.into(),
                inputs::RosterEntry {
                    team: "north".into(),
                    hire_date: Some(hired.parse().unwrap()),
                    ..Default::default()
                },
            );
        }
        let days = vec![
            row("old", 1, &handled(5)),
            row("new", 1, &handled(5)),
            row("edge", 1, &handled(5)),
        ];
        let (p, tz) = (nov(), tz());
        let mut r = run(&s, &p, &tz, &days);
        r.roster = Some(&roster);
        let o = score(&r).unwrap();
        // Hired 2026-09-02: three months later is 2026-12-02, after the period: protected.
        let new = agent(&o, "new");
        assert_eq!(
            (new.scheme.as_str(), new.grade.as_deref(), new.total),
            ("probation", Some("P"), Some(50.0))
        );
        // Hired 2026-09-01: three full months by 2026-12-01: the main scheme.
        assert_eq!(agent(&o, "edge").scheme, "main");
        assert_eq!(o.grade_names, vec!["A", "B", "P", "F"]);
        assert_eq!(o.item_columns, vec!["csat", "volume"]);
    }

    #[test]
    fn scope_keys_come_from_the_roster() {
        let e = inputs::RosterEntry {
            team: "east".into(),
            queue_group: "sales".into(),
            ..Default::default()
        };
        assert_eq!(scope_key(Scope::Team, Some(&e)), "east");
        assert_eq!(scope_key(Scope::QueueGroup, Some(&e)), "sales");
        assert_eq!(scope_key(Scope::Centre, Some(&e)), "centre");
        assert_eq!(scope_key(Scope::QueueGroup, None), "unknown");
        let no_group = inputs::RosterEntry {
            team: "east".into(),
            ..Default::default()
        };
        assert_eq!(scope_key(Scope::QueueGroup, Some(&no_group)), "unknown");
    }

    #[test]
    fn fcr_window_closes_with_the_data() {
        let p = nov();
        assert!(fcr_provisional(&p, None, 7 * DAY));
        assert!(fcr_provisional(&p, Some(p.end_ms + 6 * DAY), 7 * DAY));
        assert!(!fcr_provisional(&p, Some(p.end_ms + 7 * DAY), 7 * DAY));
    }

    #[test]
    fn unknown_rater_is_an_error() {
        let text = "name = \"m\"\n[[items]]\nid = \"review\"\nrule = \"manual\"\nweight = 10\n\
            raters = { peer = 1, manager = 1 }\n[[grades]]\nname = \"A\"\nmin = 0\n";
        let s = scheme(text);
        let mut manual = ManualScores::new();
        manual.insert(("a".into(), "review".into()), vec![("boss".into(), 5.0)]);
        let (p, tz) = (nov(), tz());
        let mut r = run(&s, &p, &tz, &[]);
        r.manual = &manual;
        let e = score(&r).unwrap_err().to_string();
        assert!(
            e.contains("rater \"boss\"") && e.contains("manager, peer"),
            "{e}"
        );
        manual.insert(
            ("a".into(), "review".into()),
            vec![("peer".into(), 4.0), ("manager".into(), 8.0)],
        );
        let days = [row("a", 1, &handled(1))];
        let mut r = run(&s, &p, &tz, &days);
        r.manual = &manual;
        let o = score(&r).unwrap();
        // Equal weights: (4 + 8) / 2 = 6 of 10.
        assert_eq!(agent(&o, "a").items[0].value, Some(6.0));
        assert_eq!(agent(&o, "a").total, Some(6.0));
    }
}
