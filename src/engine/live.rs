//! The live floor: who is waiting right now, what every agent is doing and since when,
//! and agent state time per interval (occupancy). Current state, not history: it is
//! not windowed into snapshots, but it is part of the engine checkpoint so a restarted
//! partition still knows who is waiting.
//!
//! Still pure: "now" is passed in by the caller (the engine clock, or the wall clock
//! while the input is live), never read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Dimension;
use super::acc::Acc;
use super::aggregate::DimKey;
use super::contact::{CEvent, Fact};
use super::intern::Sym;
use super::window::{Interval, Windower};
use super::{ContactKey, HashMap};
use crate::event::{AgentState, EventType, Millis};

/// A contact waiting in a queue: offered, not yet answered, responded to, abandoned or
/// ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub queue: Option<Sym>,
    pub since: Millis,
}

/// An agent's current state and the time spent per state in the current and the
/// previous interval of the finest configured interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNow {
    pub state: AgentState,
    pub since: Millis,
    /// `(interval start, ms per state)` of closed state segments, split at interval
    /// boundaries by actual time; the open segment is added when read.
    pub current: (Millis, [i64; 5]),
    pub previous: (Millis, [i64; 5]),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Floor {
    pub(super) waiting: HashMap<ContactKey, Waiting>,
    pub(super) agents: HashMap<Sym, AgentNow>,
    /// Agent states older than the agent's current one: they cannot change the current
    /// state (the newest wins) and are counted here.
    pub(super) stale_states: u64,
    /// Today's figures (the day, in the configured time zone, of the newest fact).
    pub(super) today: Option<Today>,
}

/// Accumulators of one day for the wallboard: per dimension key for the day, and per
/// finest interval for the centre and each queue (the trend line).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Today {
    pub day: Millis,
    pub accs: super::HashMap<DimKey, Acc>,
    pub intervals: BTreeMap<Millis, super::HashMap<DimKey, Acc>>,
}

/// Whether a contact's events (sorted by time) leave it waiting, and where.
pub fn waiting_of(events: &[CEvent]) -> Option<Waiting> {
    let mut w = None;
    for e in events {
        match e.kind {
            EventType::ContactOffered => {
                w = Some(Waiting {
                    queue: e.queue,
                    since: e.ts,
                })
            }
            EventType::ContactAnswered
            | EventType::ContactFirstResponse
            | EventType::ContactAbandoned
            | EventType::ContactEnded
            | EventType::ContactResolved => w = None,
            _ => {}
        }
    }
    w
}

/// Index of `s` in [`AgentState::ALL`], the order of the per-state arrays.
pub fn state_index(s: AgentState) -> usize {
    AgentState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

impl Floor {
    pub fn set_waiting(&mut self, ck: ContactKey, w: Option<Waiting>) {
        match w {
            Some(w) => {
                self.waiting.insert(ck, w);
            }
            None => {
                self.waiting.remove(&ck);
            }
        }
    }

    /// Add or retract a fact in today's accumulators. `day` and `interval` are the
    /// starts of the fact's day and finest interval. Facts of earlier days are not
    /// today's; the first fact of a later day starts a new day.
    ///
    /// Without latency histograms: the wallboard shows counts, rates and means for
    /// today, never percentiles, and a histogram per agent gains bins with every new
    /// value all day long (in every partition's engine: the soak's RSS grew with it).
    pub fn apply_today(
        &mut self,
        f: &Fact,
        sign: i64,
        dims: &[DimKey],
        day: Millis,
        interval: Millis,
    ) {
        match &self.today {
            Some(t) if day < t.day => return,
            Some(t) if day == t.day => {}
            _ => {
                self.today = Some(Today {
                    day,
                    ..Today::default()
                })
            }
        }
        let Some(t) = self.today.as_mut() else { return };
        for dk in dims {
            t.accs
                .entry(*dk)
                .or_default()
                .apply_counts(&f.measure, sign);
            if matches!(dk.0, Dimension::All | Dimension::Queue) {
                t.intervals
                    .entry(interval)
                    .or_default()
                    .entry(*dk)
                    .or_default()
                    .apply_counts(&f.measure, sign);
            }
        }
    }

    pub fn forget_contact(&mut self, ck: &ContactKey) {
        self.waiting.remove(ck);
    }

    /// An `agent.state` event. The newest state wins; the segment it closes is split
    /// across interval boundaries into the per-interval state times.
    pub fn agent_state(
        &mut self,
        agent: Sym,
        state: AgentState,
        ts: Millis,
        grid: (&mut Windower, Interval),
    ) {
        match self.agents.get_mut(&agent) {
            None => {
                let (start, _) = grid.0.window(grid.1, ts);
                self.agents.insert(
                    agent,
                    AgentNow {
                        state,
                        since: ts,
                        current: (start, [0; 5]),
                        previous: (Millis::MIN, [0; 5]),
                    },
                );
            }
            Some(a) if ts < a.since => self.stale_states += 1,
            Some(a) => {
                add_segment(a, a.state, a.since, ts, grid);
                a.state = state;
                a.since = ts;
            }
        }
    }

    /// Per agent: state, since, and ms per state in the interval containing `now`
    /// (closed segments plus the open one up to `now`).
    pub fn agents_at(
        &self,
        now: Millis,
        windower: &mut Windower,
        interval: Interval,
    ) -> Vec<(Sym, &AgentNow, [i64; 5])> {
        let (start, _) = windower.window(interval, now);
        self.agents
            .iter()
            .map(|(s, a)| {
                let mut copy = a.clone();
                let (state, since) = (copy.state, copy.since);
                if now > since {
                    add_segment(&mut copy, state, since, now, (&mut *windower, interval));
                }
                let ms = if copy.current.0 == start {
                    copy.current.1
                } else {
                    [0; 5]
                };
                (*s, a, ms)
            })
            .collect()
    }
}

/// Add state `s` over `[from, to)` to the agent's interval buckets, split at interval
/// boundaries; only the current and previous intervals are kept.
fn add_segment(
    a: &mut AgentNow,
    s: AgentState,
    from: Millis,
    to: Millis,
    grid: (&mut Windower, Interval),
) {
    let i = state_index(s);
    // Only the current and previous intervals are kept (a day at most each): a longer
    // segment's older part would be split only to be thrown away.
    let mut t = from.max(to.saturating_sub(2 * 86_400_000));
    while t < to {
        let (start, end) = grid.0.window(grid.1, t);
        let until = end.min(to);
        if start > a.current.0 {
            a.previous = a.current;
            a.current = (start, [0; 5]);
        }
        if start == a.current.0 {
            a.current.1[i] += until - t;
        } else if start == a.previous.0 {
            a.previous.1[i] += until - t;
        }
        t = until;
    }
}

/// Occupancy = (busy + wrap) / (logged in − away), where logged in is every state but
/// offline. `None` when the denominator is 0.
pub fn occupancy(ms: &[i64; 5]) -> Option<f64> {
    let [available, busy, wrap, _away, _offline] = *ms;
    let denom = available + busy + wrap;
    (denom > 0).then(|| (busy + wrap) as f64 / denom as f64)
}
