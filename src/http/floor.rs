//! The live floor over HTTP: its Prometheus gauges, and the JSON view behind
//! `/api/v1/floor`, its Server-Sent-Events stream and the wallboard page.
//!
//! Everything here is derived at read time from one published [`LiveSnapshot`], so a
//! tile, the agent table and the gauges always agree with each other.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::{Value, json};

use crate::config::QueueTargets;
use crate::engine::acc::Acc;
use crate::engine::live::{occupancy, state_index};
use crate::engine::{ALL_KEY, Dimension};
use crate::event::{AgentState, FIXED_SCALE, Millis};
use crate::kpi;

use super::metrics::{family, gauge, label};
use super::state::{HttpSettings, LiveSnapshot};

/// `(name, help, type, labels)` of the floor families.
pub const FAMILIES: [(&str, &str, MetricType, &[&str]); 6] = [
    (
        "ccmetrics_waiting_contacts",
        "Contacts waiting now (offered, not yet answered, responded to, abandoned or ended).",
        MetricType::GAUGE,
        &["dimension", "queue"],
    ),
    (
        "ccmetrics_oldest_wait_seconds",
        "How long the longest-waiting contact has waited (0 when nobody waits).",
        MetricType::GAUGE,
        &["dimension", "queue"],
    ),
    (
        "ccmetrics_agents",
        "Agents by current state (agents known from agent.state events).",
        MetricType::GAUGE,
        &["dimension", "team", "state"],
    ),
    (
        "ccmetrics_occupancy",
        "(busy + wrap) / (logged in - away) over the current interval so far.",
        MetricType::GAUGE,
        &["dimension", "team"],
    ),
    (
        "ccmetrics_agent_state_seconds",
        "Time the agent has been in its current state (per-agent series only).",
        MetricType::GAUGE,
        &["agent", "state"],
    ),
    (
        "ccmetrics_queue_target",
        "Configured target per queue and KPI ([targets]): minimums for answer_rate and service_level, maximums for abandon_rate and oldest_wait_seconds.",
        MetricType::GAUGE,
        &["queue", "kpi"],
    ),
];

/// Queues the floor knows: configured ones, and every queue seen in the totals or
/// waiting now.
pub fn known_queues(snap: &LiveSnapshot, s: &HttpSettings) -> BTreeSet<String> {
    let mut q: BTreeSet<String> = s.targets.queues.keys().cloned().collect();
    q.extend(
        snap.totals
            .iter()
            .filter(|(d, _, _)| *d == Dimension::Queue)
            .map(|(_, k, _)| k.clone()),
    );
    q.extend(snap.floor.waiting.iter().map(|w| w.queue.clone()));
    q
}

fn secs(ms: Millis) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// The floor families for `/metrics`; `kept` are the agents allowed their own series.
pub fn families(
    snap: &LiveSnapshot,
    s: &HttpSettings,
    kept: &super::metrics::KeptAgents<'_>,
) -> Vec<MetricFamily> {
    let queues = known_queues(snap, s);
    let now = snap.now_ms;
    let waiting: BTreeMap<String, (usize, Millis)> = snap
        .waiting()
        .into_iter()
        .map(|(q, n, oldest)| (q, (n, oldest)))
        .collect();
    let (mut waiting_m, mut oldest_m) = (Vec::new(), Vec::new());
    for q in std::iter::once(ALL_KEY).chain(queues.iter().map(String::as_str)) {
        let labels = if q == ALL_KEY {
            vec![label("dimension", "all")]
        } else {
            vec![label("dimension", "queue"), label("queue", q)]
        };
        let (n, oldest) = waiting.get(q).copied().unwrap_or((0, now));
        waiting_m.push(gauge(labels.clone(), n as f64));
        oldest_m.push(gauge(labels, if n == 0 { 0.0 } else { secs(now - oldest) }));
    }

    // Agents by state and occupancy, per team and for the centre.
    let mut by_team: BTreeMap<&str, ([usize; 5], [i64; 5])> = BTreeMap::new();
    let mut centre = ([0usize; 5], [0i64; 5]);
    for a in snap.floor.agents.iter() {
        let t = by_team.entry(a.team.as_str()).or_default();
        let i = state_index(a.state);
        t.0[i] += 1;
        centre.0[i] += 1;
        for k in 0..5 {
            t.1[k] += a.interval_ms[k];
            centre.1[k] += a.interval_ms[k];
        }
    }
    let (mut agents_m, mut occ_m) = (Vec::new(), Vec::new());
    let teams = std::iter::once((None, &centre)).chain(by_team.iter().map(|(t, v)| (Some(*t), v)));
    for (team, (counts, ms)) in teams {
        let base = match team {
            None => vec![label("dimension", "all")],
            Some(t) => vec![label("dimension", "team"), label("team", t)],
        };
        for st in AgentState::ALL {
            let mut l = base.clone();
            l.push(label("state", st.as_str()));
            agents_m.push(gauge(l, counts[state_index(st)] as f64));
        }
        if let Some(o) = occupancy(ms) {
            occ_m.push(gauge(base, o));
        }
    }

    let mut in_state = Vec::new();
    if s.per_agent_series {
        for a in snap
            .floor
            .agents
            .iter()
            .filter(|a| kept.contains(a.agent.as_str()))
        {
            in_state.push(gauge(
                vec![label("agent", &a.agent), label("state", a.state.as_str())],
                secs(now - a.since),
            ));
        }
    }

    let mut targets = Vec::new();
    for q in &queues {
        let t = s.targets.for_queue(q);
        for (kpi, v) in [
            ("answer_rate", t.answer_rate),
            ("service_level", t.service_level),
            ("abandon_rate", t.abandon_rate),
            ("oldest_wait_seconds", t.max_wait.0.as_secs_f64()),
        ] {
            targets.push(gauge(vec![label("queue", q), label("kpi", kpi)], v));
        }
    }

    let metrics = [waiting_m, oldest_m, agents_m, occ_m, in_state, targets];
    metrics
        .into_iter()
        .zip(FAMILIES)
        .map(|(m, (name, help, ty, _))| family(name, help, ty, m))
        .collect()
}

/// Traffic-light status of one KPI against its target: `ok`, `amber` (within the
/// warning margin of the target) or `red` (breached); `none` without a value.
fn status(value: Option<f64>, target: f64, higher_is_better: bool, margin: f64) -> &'static str {
    let Some(v) = value else { return "none" };
    let (breached, close) = if higher_is_better {
        (v < target, v < target + margin)
    } else {
        (v > target, v > target - margin)
    };
    if breached {
        "red"
    } else if close {
        "amber"
    } else {
        "ok"
    }
}

fn kpi_json(a: Option<&Acc>, s: &HttpSettings) -> Value {
    let empty = Acc::default();
    let a = a.unwrap_or(&empty);
    let fx = FIXED_SCALE as f64;
    json!({
        "offered": a.offered,
        "answered": a.answered,
        "abandoned": a.abandoned,
        "handled": a.handled,
        "answer_rate": kpi::answer_rate(a),
        "abandon_rate": kpi::abandon_rate(a),
        "service_level": kpi::service_level(a, s.sl_formula),
        "asa_s": kpi::asa_s(a),
        "aht_s": kpi::aht_s(a),
        "csat": (a.csat_responses != 0).then(|| a.csat_positive as f64 / a.csat_responses as f64),
        "csat_avg": (a.csat_responses != 0).then(|| a.csat_sum as f64 / a.csat_responses as f64 / fx),
    })
}

fn targets_json(t: &QueueTargets) -> Value {
    json!({
        "service_level": t.service_level,
        "answer_rate": t.answer_rate,
        "abandon_rate": t.abandon_rate,
        "max_wait_s": t.max_wait.0.as_secs_f64(),
    })
}

/// The rolling window shown as "current": the one as long as the finest interval
/// when configured, else the shortest.
fn current_window(s: &HttpSettings) -> Option<&super::state::RollingWindow> {
    s.rolling
        .iter()
        .find(|w| i64::from(w.minutes) * 60_000 == s.finest_interval_ms)
        .or_else(|| s.rolling.iter().min_by_key(|w| w.minutes))
}

/// The whole floor as JSON: `/api/v1/floor`, each SSE message, and the wallboard's
/// data. Times are UTC ms; durations seconds; ratios 0–1 (`null` without data).
/// `input_down_since`: since when the source has reached no input (the figures stand
/// still meanwhile), `null` while it does.
pub fn view(snap: &LiveSnapshot, s: &HttpSettings, input_down_since: Option<i64>) -> Value {
    let now = snap.now_ms;
    let window = current_window(s);
    let rows = |dim: Dimension| -> BTreeMap<&str, &Acc> {
        window
            .and_then(|w| snap.rolling_rows(w.minutes))
            .into_iter()
            .flatten()
            .filter(|(d, _, _)| *d == dim)
            .map(|(_, k, a)| (k.as_str(), a))
            .collect()
    };
    let today = |dim: Dimension| -> BTreeMap<&str, &Acc> {
        snap.floor
            .today
            .iter()
            .filter(|(d, _, _)| *d == dim)
            .map(|(_, k, a)| (k.as_str(), a))
            .collect()
    };
    let (cur_q, cur_all) = (rows(Dimension::Queue), rows(Dimension::All));
    let (today_q, today_all) = (today(Dimension::Queue), today(Dimension::All));
    let today_agents = today(Dimension::Agent);
    let waiting: BTreeMap<String, (usize, Millis)> = snap
        .waiting()
        .into_iter()
        .map(|(q, n, o)| (q, (n, o)))
        .collect();

    // Agent-state counts per team (a queue tile shows its configured teams' agents,
    // or the whole centre's when none are configured).
    let mut team_counts: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    let mut centre_counts = [0usize; 5];
    for a in snap.floor.agents.iter() {
        team_counts.entry(a.team.as_str()).or_default()[state_index(a.state)] += 1;
        centre_counts[state_index(a.state)] += 1;
    }
    let counts_json = |c: &[usize; 5]| -> Value {
        AgentState::ALL
            .iter()
            .map(|st| (st.as_str().to_owned(), json!(c[state_index(*st)])))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };

    let tile = |q: &str| -> Value {
        let t = if q == ALL_KEY {
            &s.targets.default
        } else {
            s.targets.for_queue(q)
        };
        let (cur, day) = if q == ALL_KEY {
            (
                cur_all.get(ALL_KEY).copied(),
                today_all.get(ALL_KEY).copied(),
            )
        } else {
            (cur_q.get(q).copied(), today_q.get(q).copied())
        };
        let (n, oldest) = waiting.get(q).copied().unwrap_or((0, now));
        let oldest_s = if n == 0 { 0.0 } else { secs(now - oldest) };
        let mut counts = [0usize; 5];
        if q != ALL_KEY && !t.teams.is_empty() {
            for team in &t.teams {
                if let Some(c) = team_counts.get(team.as_str()) {
                    for i in 0..5 {
                        counts[i] += c[i];
                    }
                }
            }
        } else {
            counts = centre_counts;
        }
        let cur_json = kpi_json(cur, s);
        let sl = cur_json["service_level"].as_f64();
        let ar = cur_json["answer_rate"].as_f64();
        let ab = cur_json["abandon_rate"].as_f64();
        let trend: Vec<Value> = snap
            .floor
            .trend
            .iter()
            .filter(|(_, d, k, _)| {
                (q == ALL_KEY && *d == Dimension::All) || (*d == Dimension::Queue && k == q)
            })
            .map(|(start, _, _, a)| {
                json!({"start": start, "offered": a.offered,
                       "service_level": kpi::service_level(a, s.sl_formula)})
            })
            .collect();
        json!({
            "queue": q,
            "waiting": n,
            "oldest_wait_s": oldest_s,
            "targets": targets_json(t),
            "current": cur_json,
            "today": kpi_json(day, s),
            "agents": counts_json(&counts),
            "trend": trend,
            "status": {
                "service_level": status(sl, t.service_level, true, 0.05),
                "answer_rate": status(ar, t.answer_rate, true, 0.02),
                "abandon_rate": status(ab, t.abandon_rate, false, 0.02),
                "oldest_wait": status(Some(oldest_s), t.max_wait.0.as_secs_f64(), false,
                                      t.max_wait.0.as_secs_f64() * 0.25),
            },
        })
    };
    let queues: Vec<Value> = known_queues(snap, s).iter().map(|q| tile(q)).collect();
    let agents: Vec<Value> = snap
        .floor
        .agents
        .iter()
        .map(|a| {
            let day = today_agents.get(a.agent.as_str()).copied();
            let k = kpi_json(day, s);
            json!({
                "agent": a.agent,
                "team": a.team,
                "state": a.state.as_str(),
                "since": a.since,
                "in_state_s": secs(now - a.since),
                "handled_today": k["handled"],
                "aht_today_s": k["aht_s"],
                "csat_today": k["csat"],
                "occupancy": occupancy(&a.interval_ms),
            })
        })
        .collect();
    json!({
        "now": now,
        "input_down_since": input_down_since,
        "current_window": window.map(|w| w.label.clone()),
        "interval_start": snap.floor.interval_start,
        "day_start": snap.floor.day_start,
        "centre": tile(ALL_KEY),
        "queues": queues,
        "agents": agents,
    })
}
