//! A realistic, deterministic contact-centre simulator emitting canonical v1 events.
//!
//! Used by `serve --source sim` (live numbers without Kafka), by benchmarks (millions of
//! lines to a JSONL file) and by tests. The same [`SimConfig`] (seed included) always
//! gives the same lines in the same order.
//!
//! # Model
//!
//! A discrete-event simulation driven by a time-ordered heap of scheduled actions:
//!
//! - Contacts arrive as a Poisson process (`contacts_per_hour`) over the channels (voice
//!   50 %, chat 25 %, email 15 %, ticket 7 %, social 3 %) and weighted queues (`sales`,
//!   `support`, `billing`, `vip`, `returns`, `tech`, then `q7`, `q8`, …).
//! - Each queue is served by two teams (chosen to balance the load); a contact that
//!   waited long enough overflows to any agent. An agent handles one voice contact, or
//!   up to three digital ones at once (chat, email, ticket, social), and a couple of
//!   idle agents per queue are kept for calls. A contact nobody can take waits in its
//!   queue (calls first, then the longest waiting) until an agent frees up or its
//!   patience runs out, so an overloaded centre shows longer waits and more abandons.
//!   About 12 contacts per hour per agent is a healthy load. Agents take breaks and log
//!   off now and then; every change of their state is an `agent.state` event carrying
//!   `team`.
//! - Lifecycle: `contact.offered` → `contact.routed` (about 5 % ring unanswered and are
//!   routed again) → `contact.answered` after an exponential wait, ringing and any
//!   wait for a free agent (mean ≈ 20–25 s for voice and chat at the default load,
//!   minutes to hours for social, email and ticket) or
//!   `contact.abandoned` (≈ 8 %, a third of them within 5 s) → `contact.first_response`
//!   (digital channels) → `contact.transferred` (≈ 5 %, to an agent or to a queue, the
//!   latter followed by a new `contact.offered`) → `contact.ended` (2–8 min of talk,
//!   `talk_ms`/`hold_ms` sometimes) → `contact.wrapped` (≈ 90 %, 10–90 s later,
//!   `wrap_ms` sometimes) → `contact.resolved` (≈ 80 %, `contact.reopened` for ≈ 2 % of
//!   those), `contact.converted` (≈ 10 % of `sales`, amount 5.00–500.00),
//!   `survey.responded` (≈ 20 %, 1–5 skewed positive) and `qa.scored` (≈ 3 %, 60–100).
//! - Customers come back: an abandoning caller often calls again within minutes, an
//!   unresolved (and now and then a resolved) contact is followed by another within
//!   days, and the customer pool (`customers` ids live at once) hands out a returning
//!   customer now and then, so first-contact resolution fails for about one in five.
//!
//! Delivery faults are layered on top: `duplicate_rate` re-emits identical lines (same
//! `event_id`), `out_of_order_rate` delays events by up to 2 minutes and `late_rate` by
//! 10–60 minutes. [`Simulator::next_line`] returns lines in *emission* order with their
//! emission time, which never decreases (a live source sleeps until it). Timestamps
//! are RFC 3339 (UTC, milliseconds) on about half the lines and epoch milliseconds on
//! the others.
//!
//! Memory is bounded by the contacts in flight (and follow-ups scheduled days ahead),
//! never by the number of events generated: finished contacts leave nothing behind.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::event::{AgentState, Channel, EventType, Millis};

/// 2026-01-05T00:00:00Z, a Monday: the default start of simulated time.
pub const DEFAULT_START_MS: Millis = 1_767_571_200_000;

/// Simulator settings. Every field has a sensible default ([`SimConfig::default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of the only random source: same config, same lines.
    pub seed: u64,
    /// Number of agents (1–60 000).
    pub agents: usize,
    /// Number of teams (at most `agents`); agents are assigned round-robin.
    pub teams: usize,
    /// Number of queues: `sales`, `support`, `billing`, `vip`, `returns`, `tech`, `q7`, …
    pub queues: usize,
    /// Customer ids live at once (at most 10 000 000); a new contact usually takes a
    /// slot over for a new customer, sometimes it is the slot's returning customer.
    pub customers: usize,
    /// Simulated time of the first events (UTC ms); must lie in years 2000–2099. The
    /// default is a fixed date so runs are reproducible; a live demo sets "now".
    pub start_ms: Millis,
    /// Mean rate of contacts started, returning customers included (Poisson arrivals).
    pub contacts_per_hour: f64,
    /// Fraction of events emitted twice (identical line, same `event_id`).
    pub duplicate_rate: f64,
    /// Fraction of events delayed by up to 2 minutes.
    pub out_of_order_rate: f64,
    /// Fraction of events delayed by 10–60 minutes (past the default allowed lateness).
    pub late_rate: f64,
}

impl SimConfig {
    /// This centre scaled to emit about `rate` events per second: measures its event
    /// rate over an hour of simulated time, then scales contacts and agents.
    pub fn sized_for_rate(self, rate: f64) -> SimConfig {
        self.sized_for_rate_after(rate, 0)
    }

    /// Like [`SimConfig::sized_for_rate`], but measures the event rate of the hour that
    /// follows `warmup_ms` of simulated time, where a [`warmed_up`] simulator starts
    /// emitting. The first hours of a cold simulator are not representative: a contact
    /// emits events for hours to days after its offer (email and ticket waits, resolution,
    /// QA, reopens, callbacks), so the event rate of a cold start climbs for a day and
    /// sizing on its first hour overshoots the steady rate.
    pub fn sized_for_rate_after(self, rate: f64, warmup_ms: Millis) -> SimConfig {
        let mut probe = warmed_up(self.clone(), warmup_ms);
        let mut n = 0u64;
        let end = self.start_ms + 3_600_000;
        while probe.next_line().0 < end {
            n += 1;
        }
        let per_s = (n as f64 / 3600.0).max(1e-3);
        let scale = rate / per_s;
        SimConfig {
            contacts_per_hour: self.contacts_per_hour * scale,
            agents: ((self.agents as f64 * scale).round() as usize).clamp(1, 60_000),
            ..self
        }
    }
}

/// A simulator that has already run for `warmup_ms` of simulated time before
/// `cfg.start_ms`: its first line is the first one emitted at or after `start_ms`, and
/// everything before is generated and dropped. Contacts, follow-ups and callbacks are
/// then in flight as in a centre that has been open for that long, so the event rate
/// and the mix of events are (nearly) steady from the first line: the soak's input.
pub fn warmed_up(cfg: SimConfig, warmup_ms: Millis) -> Simulator {
    let start = cfg.start_ms;
    let mut s = Simulator::new(SimConfig {
        start_ms: start.saturating_sub(warmup_ms.max(0)),
        ..cfg
    });
    s.skip_until(start);
    s
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            agents: 50,
            teams: 5,
            queues: 6,
            customers: 20_000,
            start_ms: DEFAULT_START_MS,
            contacts_per_hour: 600.0,
            duplicate_rate: 0.01,
            out_of_order_rate: 0.02,
            late_rate: 0.0,
        }
    }
}

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

const NO_AGENT: u16 = u16::MAX;
const MAX_AGENTS: usize = 60_000;
/// 4 bytes of state per customer slot.
const MAX_CUSTOMERS: usize = 10_000_000;
/// Capacity units of an agent: a voice contact takes all of them, a digital one takes 1.
const CAPACITY: u8 = 3;
/// Share of contacts started by returning customers (callbacks after an abandon, after
/// an unresolved contact, or after a resolution that did not hold) in steady state:
/// fresh arrivals make up the rest of `contacts_per_hour`.
const RETURNING_SHARE: f64 = 0.155;
/// Idle agents a queue keeps for calls before digital work may take one of them.
const VOICE_RESERVE: usize = 2;

const QUEUE_NAMES: [&str; 6] = ["sales", "support", "billing", "vip", "returns", "tech"];
const QUEUE_WEIGHTS: [f64; 6] = [25.0, 30.0, 15.0, 5.0, 10.0, 15.0];
const EXTRA_QUEUE_WEIGHT: f64 = 8.0;
const TEAM_NAMES: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];
const AWAY_REASONS: [&str; 4] = ["break", "lunch", "meeting", "training"];
/// Cumulative channel mix, in `Channel::ALL` order.
const CHANNEL_CDF: [f64; 5] = [0.50, 0.75, 0.90, 0.97, 1.0];
/// Survey score weights for 1..=5 (percent).
const SURVEY_CDF: [u32; 5] = [5, 12, 25, 55, 100];

/// Per-channel behaviour.
struct ChannelModel {
    /// Mean of the exponential wait before the contact is routed.
    wait_mean_ms: f64,
    /// Ring / pick-up time between routed and answered.
    ring_ms: (i64, i64),
    /// After this long in queue the contact may go to any agent.
    overflow_after_ms: i64,
    /// Waiting longer than this, the contact abandons.
    patience_ms: i64,
    /// Probability that the customer gives up before being answered.
    abandon_p: f64,
    /// Range of abandon waits when not a short abandon.
    abandon_ms: (i64, i64),
}

fn model(ch: Channel) -> ChannelModel {
    match ch {
        Channel::Voice => ChannelModel {
            wait_mean_ms: 15_000.0,
            ring_ms: (2 * SEC, 6 * SEC),
            overflow_after_ms: 30 * SEC,
            patience_ms: 10 * MIN,
            abandon_p: 0.11,
            abandon_ms: (5 * SEC, 4 * MIN),
        },
        Channel::Chat => ChannelModel {
            wait_mean_ms: 15_000.0,
            ring_ms: (SEC, 4 * SEC),
            overflow_after_ms: 30 * SEC,
            patience_ms: 10 * MIN,
            abandon_p: 0.09,
            abandon_ms: (5 * SEC, 4 * MIN),
        },
        Channel::Email => ChannelModel {
            wait_mean_ms: 45.0 * 60_000.0,
            ring_ms: (SEC, 30 * SEC),
            overflow_after_ms: 2 * HOUR,
            patience_ms: DAY,
            abandon_p: 0.01,
            abandon_ms: (MIN, 4 * HOUR),
        },
        Channel::Ticket => ChannelModel {
            wait_mean_ms: 120.0 * 60_000.0,
            ring_ms: (SEC, 30 * SEC),
            overflow_after_ms: 4 * HOUR,
            patience_ms: DAY,
            abandon_p: 0.01,
            abandon_ms: (MIN, 4 * HOUR),
        },
        Channel::Social => ChannelModel {
            wait_mean_ms: 10.0 * 60_000.0,
            ring_ms: (SEC, 20 * SEC),
            overflow_after_ms: 30 * MIN,
            patience_ms: 2 * HOUR,
            abandon_p: 0.05,
            abandon_ms: (30 * SEC, HOUR),
        },
    }
}

fn units(ch: Channel) -> u8 {
    if ch == Channel::Voice { CAPACITY } else { 1 }
}

/// The small, copyable state of one contact; every scheduled action carries a copy, so
/// a finished contact leaves nothing behind.
#[derive(Clone, Copy, Debug)]
struct Core {
    /// Contact number (the id is `sim-<seed>-c<n>`).
    n: u64,
    /// Time of the current offer.
    offer_t: Millis,
    /// Start of the current handling segment.
    seg_start: Millis,
    customer_slot: u32,
    customer_gen: u32,
    agent: u16,
    /// Agent that last failed to answer (excluded once from re-routing).
    missed: u16,
    queue: u16,
    channel: Channel,
}

#[derive(Clone, Copy, Debug)]
enum Act {
    Arrival,
    /// A returning customer starts a new contact.
    Callback,
    /// The contact is offered again (after a transfer to a queue).
    Reoffer,
    /// An agent comes back from a break or logs in.
    AgentOn(u16),
    /// Try to route, else wait for an agent; `aux` is the abandon deadline.
    Route,
    /// A waiting contact (slot; `aux` is the wait id) gives up if still waiting.
    WaitExpire(u32),
    /// A waiting contact (slot; `aux` is the wait id) may now go to any agent.
    Overflow(u32),
    /// Route to an agent who will not answer before the customer hangs up at `aux`.
    RingAbandon,
    /// The routed agent did not answer; `aux` is the abandon deadline.
    NoAnswer,
    Answer,
    FirstResponse,
    Transfer,
    End,
    /// Wrap-up done after `aux` ms; `bool`: a `contact.wrapped` event is sent.
    WrapDone(bool),
    Abandon,
    /// `bool`: the contact is reopened later.
    Resolve(bool),
    Reopen,
    Convert,
    Survey,
    Qa,
}

#[derive(Clone, Copy, Debug)]
struct Action {
    t: Millis,
    seq: u64,
    aux: i64,
    act: Act,
    core: Core,
}

// A min-heap on (t, seq): `BinaryHeap` is a max-heap, so the order is reversed.
impl Ord for Action {
    fn cmp(&self, other: &Self) -> Ordering {
        other.t.cmp(&self.t).then(other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Action {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}
impl Eq for Action {}

/// A contact waiting for an agent.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    wid: u64,
    core: Core,
    deadline: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    On,
    Away(u8),
    Offline,
}

#[derive(Clone, Copy, Debug)]
struct Agent {
    units: u8,
    talking: u8,
    wrapping: u8,
    presence: Presence,
    /// Last state sent (`None`: not logged in yet).
    shown: Option<AgentState>,
    idle_since: Millis,
}

/// The generator. See the module docs for the model.
pub struct Simulator {
    cfg: SimConfig,
    rng: SmallRng,
    now: Millis,
    seq: u64,
    next_event: u64,
    next_contact: u64,
    mean_gap_ms: f64,
    actions: BinaryHeap<Action>,
    /// Lines emitted on time, in event-time order.
    ready: VecDeque<(Millis, String)>,
    /// Delayed lines and duplicates, by (emission time, seq).
    delayed: BinaryHeap<Reverse<(Millis, u64, String)>>,
    agents: Vec<Agent>,
    agent_names: Vec<String>,
    agent_team: Vec<u16>,
    team_names: Vec<String>,
    queue_names: Vec<String>,
    queue_cdf: Vec<f64>,
    /// Agents of the teams serving each queue.
    queue_agents: Vec<Vec<u16>>,
    /// `serves[team * queues + queue]`.
    serves: Vec<bool>,
    /// Contacts waiting for a free agent (slots reused via `free_slots`) and, per
    /// (queue, voice | digital), their arrival order as (slot, wait id).
    waiting: Vec<Option<Waiting>>,
    free_slots: Vec<u32>,
    n_waiting: usize,
    fifos: Vec<VecDeque<(u32, u64)>>,
    next_wait: u64,
    customer_gen: Vec<u32>,
    event_prefix: String,
    contact_prefix: String,
    /// Cached `YYYY-MM-DDT` of `date_day`.
    date_day: i64,
    date_text: String,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let agents = cfg.agents.clamp(1, MAX_AGENTS);
        let teams = cfg.teams.clamp(1, agents);
        let queues = cfg.queues.clamp(1, usize::from(u16::MAX));
        let customers = cfg.customers.clamp(1, MAX_CUSTOMERS);
        let rate = if cfg.contacts_per_hour.is_finite() && cfg.contacts_per_hour > 0.0 {
            cfg.contacts_per_hour.clamp(0.01, 1e8)
        } else {
            0.01
        };
        let cfg = SimConfig {
            agents,
            teams,
            queues,
            customers,
            contacts_per_hour: rate,
            duplicate_rate: clamp_p(cfg.duplicate_rate),
            out_of_order_rate: clamp_p(cfg.out_of_order_rate),
            late_rate: clamp_p(cfg.late_rate),
            ..cfg
        };

        let team_names: Vec<String> = (0..teams)
            .map(|t| match TEAM_NAMES.get(t) {
                Some(n) => (*n).to_owned(),
                None => format!("team{}", t + 1),
            })
            .collect();
        let queue_names: Vec<String> = (0..queues)
            .map(|q| match QUEUE_NAMES.get(q) {
                Some(n) => (*n).to_owned(),
                None => format!("q{}", q + 1),
            })
            .collect();
        let mut total = 0.0;
        let mut queue_cdf: Vec<f64> = (0..queues)
            .map(|q| {
                total += QUEUE_WEIGHTS.get(q).copied().unwrap_or(EXTRA_QUEUE_WEIGHT);
                total
            })
            .collect();
        for w in &mut queue_cdf {
            *w /= total;
        }
        let agent_team: Vec<u16> = (0..agents).map(|a| (a % teams) as u16).collect();
        let agent_names: Vec<String> = (0..agents).map(|a| format!("agent-{:03}", a + 1)).collect();
        let serving = serving_teams(&queue_cdf, teams);
        let mut serves = vec![false; teams * queues];
        for (q, ts) in serving.iter().enumerate() {
            for &t in ts {
                serves[t * queues + q] = true;
            }
        }
        let queue_agents: Vec<Vec<u16>> = serving
            .into_iter()
            .map(|ts| {
                (0..agents)
                    .filter(|a| ts.contains(&(a % teams)))
                    .map(|a| a as u16)
                    .collect()
            })
            .collect();

        let start = cfg.start_ms;
        let mut sim = Simulator {
            rng: SmallRng::seed_from_u64(cfg.seed),
            now: start,
            seq: 0,
            next_event: 0,
            next_contact: 0,
            mean_gap_ms: 3_600_000.0 / (rate * (1.0 - RETURNING_SHARE)),
            actions: BinaryHeap::new(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            agents: vec![
                Agent {
                    units: 0,
                    talking: 0,
                    wrapping: 0,
                    presence: Presence::Offline,
                    shown: None,
                    idle_since: start,
                };
                agents
            ],
            agent_names,
            agent_team,
            team_names,
            queue_names,
            queue_cdf,
            queue_agents,
            serves,
            waiting: Vec::new(),
            free_slots: Vec::new(),
            n_waiting: 0,
            fifos: vec![VecDeque::new(); 2 * queues],
            next_wait: 0,
            customer_gen: vec![0; customers],
            event_prefix: format!("sim-{}-", cfg.seed),
            contact_prefix: format!("sim-{}-c", cfg.seed),
            date_day: i64::MIN,
            date_text: String::new(),
            cfg,
        };
        let none = sim.blank_core();
        for a in 0..agents {
            let t = start + sim.rng.random_range(0..5 * SEC);
            sim.schedule(t, Act::AgentOn(a as u16), 0, none);
        }
        let first = start + sim.gap();
        sim.schedule(first, Act::Arrival, 0, none);
        sim
    }

    /// The effective configuration (out-of-range values clamped).
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Next event as a JSON line (no trailing newline) and its *emission time* (ms).
    /// Lines come out in emission order: event time, except for the configured
    /// out-of-order / late events and duplicates, whose emission time is later.
    pub fn next_line(&mut self) -> (Millis, String) {
        loop {
            let next_action = self.actions.peek().map_or(Millis::MAX, |a| a.t);
            let delayed_at = self.delayed.peek().map(|Reverse((t, _, _))| *t);
            if let Some(&(r, _)) = self.ready.front()
                && delayed_at.is_none_or(|d| r <= d)
                && let Some(line) = self.ready.pop_front()
            {
                return line;
            }
            if let Some(d) = delayed_at
                && d <= next_action
                && let Some(Reverse((t, _, line))) = self.delayed.pop()
            {
                return (t, line);
            }
            self.step();
        }
    }

    /// Generate and drop every line emitted before `t`: the next line is the first one
    /// emitted at or after it.
    pub fn skip_until(&mut self, t: Millis) {
        loop {
            if self.ready.front().is_some_and(|(r, _)| *r < t) {
                self.ready.pop_front();
            } else if self.delayed.peek().is_some_and(|Reverse((d, _, _))| *d < t) {
                self.delayed.pop();
            } else if self.actions.peek().is_some_and(|a| a.t < t) {
                self.step();
            } else {
                return;
            }
        }
    }

    fn blank_core(&self) -> Core {
        Core {
            n: 0,
            offer_t: self.now,
            seg_start: self.now,
            customer_slot: 0,
            customer_gen: 0,
            agent: NO_AGENT,
            missed: NO_AGENT,
            queue: 0,
            channel: Channel::Voice,
        }
    }

    fn schedule(&mut self, t: Millis, act: Act, aux: i64, core: Core) {
        self.seq += 1;
        self.actions.push(Action {
            t,
            seq: self.seq,
            aux,
            act,
            core,
        });
    }

    fn gap(&mut self) -> i64 {
        (self.exp(self.mean_gap_ms) as i64).max(1)
    }

    fn exp(&mut self, mean: f64) -> f64 {
        let u: f64 = self.rng.random();
        -mean * (1.0 - u).ln()
    }

    fn range(&mut self, (lo, hi): (i64, i64)) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn step(&mut self) {
        let Some(a) = self.actions.pop() else {
            // Unreachable in practice (an arrival is always scheduled); stay live anyway.
            let core = self.blank_core();
            self.schedule(self.now + 1, Act::Arrival, 0, core);
            return;
        };
        self.now = a.t;
        let t = a.t;
        let c = a.core;
        match a.act {
            Act::Arrival => {
                let next = t + self.gap();
                self.schedule(next, Act::Arrival, 0, c);
                let core = self.new_contact(t, None);
                self.offer(t, core, true);
            }
            Act::Callback => {
                let core = self.new_contact(t, Some(c));
                self.offer(t, core, true);
            }
            Act::Reoffer => self.offer(t, c, false),
            Act::AgentOn(ag) => {
                if let Some(agent) = self.agents.get_mut(usize::from(ag)) {
                    agent.presence = Presence::On;
                    agent.idle_since = t;
                }
                self.refresh(ag, t);
                self.feed(ag, t);
                self.refresh(ag, t);
            }
            Act::Route => self.route(t, c, a.aux),
            Act::WaitExpire(slot) => {
                if let Some(w) = self.take_waiting(slot, a.aux as u64) {
                    self.abandon(t, w.core);
                }
            }
            Act::Overflow(slot) => {
                let waiting = self.waiting.get(slot as usize).copied().flatten();
                if let Some(w) = waiting.filter(|w| w.wid == a.aux as u64)
                    && let Some(ag) = self.pick_agent(&w.core, true, NO_AGENT)
                    && self.take_waiting(slot, w.wid).is_some()
                {
                    self.connect(t, w.core, ag, w.deadline);
                }
            }
            Act::RingAbandon => self.ring_abandon(t, c, a.aux),
            Act::NoAnswer => {
                let mut c = c;
                self.release(c.agent, c.channel, t);
                c.missed = c.agent;
                c.agent = NO_AGENT;
                self.route(t, c, a.aux);
            }
            Act::Answer => self.answer(t, c),
            Act::FirstResponse => {
                let mut s = self.contact_line(EventType::ContactFirstResponse, t, &c);
                self.push_agent(&mut s, c.agent);
                self.finish(t, s);
            }
            Act::Transfer => self.transfer(t, c),
            Act::End => self.end(t, c),
            Act::WrapDone(emit) => self.wrap_done(t, c, a.aux, emit),
            Act::Abandon => self.abandon(t, c),
            Act::Resolve(reopen) => {
                let mut s = self.contact_line(EventType::ContactResolved, t, &c);
                self.push_agent(&mut s, c.agent);
                self.finish(t, s);
                if reopen {
                    let at = t + self.range((HOUR, 2 * DAY));
                    self.schedule(at, Act::Reopen, 0, c);
                }
            }
            Act::Reopen => {
                let mut s = self.contact_line(EventType::ContactReopened, t, &c);
                self.push_customer(&mut s, &c);
                self.finish(t, s);
            }
            Act::Convert => {
                let cents = self.rng.random_range(500..=50_000u64);
                let mut s = self.contact_line(EventType::ContactConverted, t, &c);
                self.push_agent(&mut s, c.agent);
                s.push_str(",\"amount\":");
                push_u64(&mut s, cents / 100);
                s.push('.');
                push_2(&mut s, (cents % 100) as u32);
                self.finish(t, s);
            }
            Act::Survey => {
                let p = self.rng.random_range(0..100u32);
                let score = SURVEY_CDF.iter().position(|&w| p < w).unwrap_or(4) + 1;
                let mut s = self.contact_line(EventType::SurveyResponded, t, &c);
                self.push_customer(&mut s, &c);
                s.push_str(",\"score\":");
                push_u64(&mut s, score as u64);
                self.finish(t, s);
            }
            Act::Qa => {
                let score = self.rng.random_range(60..=100u64);
                let mut s = self.contact_line(EventType::QaScored, t, &c);
                self.push_agent(&mut s, c.agent);
                s.push_str(",\"score\":");
                push_u64(&mut s, score);
                self.finish(t, s);
            }
        }
    }

    /// A new contact; `returning` carries the customer (and likely channel / queue) of
    /// an earlier contact.
    fn new_contact(&mut self, t: Millis, returning: Option<Core>) -> Core {
        self.next_contact += 1;
        let mut c = self.blank_core();
        c.n = self.next_contact;
        c.offer_t = t;
        c.seg_start = t;
        match returning {
            Some(prev) => {
                c.customer_slot = prev.customer_slot;
                c.customer_gen = prev.customer_gen;
                c.channel = if self.chance(0.7) {
                    prev.channel
                } else {
                    self.pick_channel()
                };
                c.queue = if self.chance(0.7) {
                    prev.queue
                } else {
                    self.pick_queue()
                };
            }
            None => {
                let slot = self.rng.random_range(0..self.customer_gen.len());
                // Usually a new customer takes over the slot; otherwise it is a returning one.
                if self.chance(0.9) {
                    self.customer_gen[slot] = self.customer_gen[slot].wrapping_add(1);
                }
                c.customer_slot = slot as u32;
                c.customer_gen = self.customer_gen[slot];
                c.channel = self.pick_channel();
                c.queue = self.pick_queue();
            }
        }
        c
    }

    fn pick_channel(&mut self) -> Channel {
        let u: f64 = self.rng.random();
        let i = CHANNEL_CDF.iter().position(|&p| u < p).unwrap_or(0);
        Channel::ALL[i]
    }

    fn pick_queue(&mut self) -> u16 {
        let u: f64 = self.rng.random();
        let i = self.queue_cdf.partition_point(|&p| p <= u);
        i.min(self.queue_cdf.len() - 1) as u16
    }

    fn offer(&mut self, t: Millis, mut c: Core, may_abandon: bool) {
        c.offer_t = t;
        c.agent = NO_AGENT;
        c.missed = NO_AGENT;
        let mut s = self.contact_line(EventType::ContactOffered, t, &c);
        self.push_customer(&mut s, &c);
        self.finish(t, s);
        let m = model(c.channel);
        if may_abandon && self.chance(m.abandon_p) {
            let wait = if c.channel == Channel::Voice || c.channel == Channel::Chat {
                if self.chance(0.35) {
                    self.range((500, 5 * SEC))
                } else {
                    self.range(m.abandon_ms)
                }
            } else {
                self.range(m.abandon_ms)
            };
            if wait >= 12 * SEC && self.chance(0.25) {
                let ring = self.range((3 * SEC, 10 * SEC));
                self.schedule(t + wait - ring, Act::RingAbandon, t + wait, c);
            } else {
                self.schedule(t + wait, Act::Abandon, 0, c);
            }
        } else {
            let wait = self.exp(m.wait_mean_ms) as i64;
            let deadline = t + m.patience_ms;
            self.schedule((t + wait).min(deadline), Act::Route, deadline, c);
        }
    }

    /// The best free agent for `c`: longest idle for voice, the busiest agent with room
    /// for digital work. Digital work takes an idle agent only while a few others stay
    /// idle for calls (or once it has waited long enough to overflow).
    fn pick_agent(&self, c: &Core, overflow: bool, exclude: u16) -> Option<u16> {
        let need = units(c.channel);
        let voice = c.channel == Channel::Voice;
        let mut best: Option<(u16, (u8, Millis))> = None;
        let mut idle = 0usize;
        let mut consider = |ag: u16| {
            if ag == exclude || ag == c.missed {
                return;
            }
            let Some(a) = self.agents.get(usize::from(ag)) else {
                return;
            };
            if a.presence != Presence::On || a.units + need > CAPACITY {
                return;
            }
            if a.units == 0 {
                idle += 1;
            }
            let key = if voice {
                (0, a.idle_since)
            } else {
                (CAPACITY - a.units, a.idle_since)
            };
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((ag, key));
            }
        };
        if overflow {
            (0..self.agents.len() as u16).for_each(&mut consider);
        } else {
            self.queue_agents[usize::from(c.queue)]
                .iter()
                .copied()
                .for_each(&mut consider);
        }
        match best {
            Some((_, (free, _)))
                if !voice && !overflow && free == CAPACITY && idle <= VOICE_RESERVE =>
            {
                None
            }
            b => b.map(|(ag, _)| ag),
        }
    }

    fn reserve(&mut self, ag: u16, ch: Channel) {
        if let Some(a) = self.agents.get_mut(usize::from(ag)) {
            a.units = a.units.saturating_add(units(ch));
        }
    }

    fn adjust(&mut self, ag: u16, talking: i8, wrapping: i8) {
        if let Some(a) = self.agents.get_mut(usize::from(ag)) {
            a.talking = a.talking.saturating_add_signed(talking);
            a.wrapping = a.wrapping.saturating_add_signed(wrapping);
        }
    }

    /// Free the capacity `ch` took on `ag` and give it waiting work; an agent left idle
    /// may take a break.
    fn release(&mut self, ag: u16, ch: Channel, t: Millis) {
        let Some(a) = self.agents.get_mut(usize::from(ag)) else {
            return;
        };
        a.units = a.units.saturating_sub(units(ch));
        if self.n_waiting > 0 {
            self.refresh(ag, t);
            self.feed(ag, t);
        }
        let a = &mut self.agents[usize::from(ag)];
        if a.units == 0 && a.talking == 0 && a.wrapping == 0 && a.presence == Presence::On {
            a.idle_since = t;
            let u: f64 = self.rng.random();
            if u < 0.003 {
                self.agents[usize::from(ag)].presence = Presence::Offline;
                let back = t + self.range((30 * MIN, 2 * HOUR));
                let core = self.blank_core();
                self.schedule(back, Act::AgentOn(ag), 0, core);
            } else if u < 0.035 {
                let reason = self.rng.random_range(0..AWAY_REASONS.len() as u8);
                self.agents[usize::from(ag)].presence = Presence::Away(reason);
                let back = t + self.range((5 * MIN, 15 * MIN));
                let core = self.blank_core();
                self.schedule(back, Act::AgentOn(ag), 0, core);
            }
        }
        self.refresh(ag, t);
    }

    /// Give an agent with free capacity the contacts waiting for it: calls first (when
    /// it is idle), then the longest waiting, from the queues its team serves or, once
    /// overflowed, from any queue.
    fn feed(&mut self, ag: u16, t: Millis) {
        let Some(&team) = self.agent_team.get(usize::from(ag)) else {
            return;
        };
        let queues = self.queue_names.len();
        while self.n_waiting > 0 {
            let Some(a) = self.agents.get(usize::from(ag)).copied() else {
                return;
            };
            if a.presence != Presence::On || a.units >= CAPACITY {
                return;
            }
            let mut best: Option<(usize, (bool, Millis))> = None;
            for k in 0..self.fifos.len() {
                let voice = k % 2 == 0;
                if voice && a.units > 0 {
                    continue;
                }
                // Drop entries that already left (answered through overflow, abandoned).
                let head = loop {
                    let Some(&(slot, wid)) = self.fifos[k].front() else {
                        break None;
                    };
                    match self.waiting.get(slot as usize).copied().flatten() {
                        Some(w) if w.wid == wid => break Some(w),
                        _ => {
                            self.fifos[k].pop_front();
                        }
                    }
                };
                let Some(w) = head else { continue };
                let served = self.serves[usize::from(team) * queues + k / 2];
                if w.core.missed == ag
                    || (!served && t - w.core.offer_t < model(w.core.channel).overflow_after_ms)
                {
                    continue;
                }
                let key = (!voice, w.core.offer_t);
                if best.is_none_or(|(_, b)| key < b) {
                    best = Some((k, key));
                }
            }
            let Some((k, _)) = best else { return };
            let Some((slot, wid)) = self.fifos[k].pop_front() else {
                return;
            };
            if let Some(w) = self.take_waiting(slot, wid) {
                self.connect(t, w.core, ag, w.deadline);
            }
        }
    }

    fn take_waiting(&mut self, slot: u32, wid: u64) -> Option<Waiting> {
        let entry = self.waiting.get_mut(slot as usize)?;
        let w = entry.take_if(|w| w.wid == wid)?;
        self.free_slots.push(slot);
        self.n_waiting -= 1;
        Some(w)
    }

    fn enqueue(&mut self, t: Millis, c: Core, deadline: Millis) {
        self.next_wait += 1;
        self.n_waiting += 1;
        let wid = self.next_wait;
        let w = Waiting {
            wid,
            core: c,
            deadline,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.waiting[slot as usize] = Some(w);
                slot
            }
            None => {
                self.waiting.push(Some(w));
                (self.waiting.len() - 1) as u32
            }
        };
        let k = usize::from(c.queue) * 2 + usize::from(c.channel != Channel::Voice);
        self.fifos[k].push_back((slot, wid));
        self.schedule(deadline.max(t), Act::WaitExpire(slot), wid as i64, c);
        let overflow_at = c.offer_t + model(c.channel).overflow_after_ms;
        if overflow_at > t && overflow_at < deadline {
            self.schedule(overflow_at, Act::Overflow(slot), wid as i64, c);
        }
    }

    /// Send `agent.state` when the agent's visible state changed.
    fn refresh(&mut self, ag: u16, t: Millis) {
        let Some(&a) = self.agents.get(usize::from(ag)) else {
            return;
        };
        let (state, reason) = match a.presence {
            Presence::Offline => (AgentState::Offline, Some("logout")),
            Presence::Away(r) => (AgentState::Away, AWAY_REASONS.get(usize::from(r)).copied()),
            Presence::On if a.talking > 0 => (AgentState::Busy, None),
            Presence::On if a.wrapping > 0 => (AgentState::Wrap, None),
            Presence::On => (AgentState::Available, None),
        };
        if a.shown == Some(state) || (a.shown.is_none() && state == AgentState::Offline) {
            return;
        }
        if let Some(a) = self.agents.get_mut(usize::from(ag)) {
            a.shown = Some(state);
        }
        let mut s = self.head(EventType::AgentState, t);
        self.push_agent(&mut s, ag);
        s.push_str(",\"state\":\"");
        s.push_str(state.as_str());
        s.push('"');
        if let Some(r) = reason {
            s.push_str(",\"reason\":\"");
            s.push_str(r);
            s.push('"');
        }
        self.finish(t, s);
    }

    fn route(&mut self, t: Millis, c: Core, deadline: Millis) {
        let overflow = t - c.offer_t >= model(c.channel).overflow_after_ms;
        match self.pick_agent(&c, overflow, NO_AGENT) {
            Some(ag) => self.connect(t, c, ag, deadline),
            None => self.enqueue(t, c, deadline),
        }
    }

    /// Route `c` to `ag`, who answers after ringing (or, now and then, does not).
    fn connect(&mut self, t: Millis, mut c: Core, ag: u16, deadline: Millis) {
        self.reserve(ag, c.channel);
        c.agent = ag;
        let mut s = self.contact_line(EventType::ContactRouted, t, &c);
        self.push_agent(&mut s, ag);
        self.finish(t, s);
        if c.missed == NO_AGENT && self.chance(0.05) {
            let at = t + self.range((10 * SEC, 20 * SEC));
            self.schedule(at, Act::NoAnswer, deadline, c);
        } else {
            let at = t + self.range(model(c.channel).ring_ms);
            self.schedule(at, Act::Answer, 0, c);
        }
    }

    fn ring_abandon(&mut self, t: Millis, mut c: Core, abandon_at: Millis) {
        if let Some(ag) = self.pick_agent(&c, false, NO_AGENT) {
            self.reserve(ag, c.channel);
            c.agent = ag;
            let mut s = self.contact_line(EventType::ContactRouted, t, &c);
            self.push_agent(&mut s, ag);
            self.finish(t, s);
        }
        self.schedule(abandon_at, Act::Abandon, 0, c);
    }

    fn abandon(&mut self, t: Millis, c: Core) {
        let s = self.contact_line(EventType::ContactAbandoned, t, &c);
        self.finish(t, s);
        if c.agent != NO_AGENT {
            self.release(c.agent, c.channel, t);
        }
        if self.chance(0.4) {
            let at = t + self.range((MIN, 30 * MIN));
            self.schedule(at, Act::Callback, 0, c);
        }
    }

    fn answer(&mut self, t: Millis, mut c: Core) {
        let mut s = self.contact_line(EventType::ContactAnswered, t, &c);
        self.push_agent(&mut s, c.agent);
        self.finish(t, s);
        self.adjust(c.agent, 1, 0);
        self.refresh(c.agent, t);
        c.seg_start = t;
        let talk = self.range((2 * MIN, 8 * MIN));
        if c.channel != Channel::Voice {
            let fr = match c.channel {
                Channel::Chat => self.range((5 * SEC, 40 * SEC)),
                _ => self.range((30 * SEC, 3 * MIN)),
            };
            self.schedule(t + fr.min(talk / 4), Act::FirstResponse, 0, c);
        }
        if self.chance(0.05) {
            let at = t + (talk as f64 * self.rng.random_range(0.3..0.7)) as i64;
            self.schedule(at, Act::Transfer, 0, c);
        } else {
            self.schedule(t + talk, Act::End, 0, c);
        }
    }

    fn transfer(&mut self, t: Millis, mut c: Core) {
        let from = c.agent;
        let to_agent = if self.chance(0.6) {
            self.pick_agent(&c, false, from)
        } else {
            None
        };
        let to_queue = match to_agent {
            None if self.queue_names.len() > 1 => {
                let q = self.rng.random_range(1..self.queue_names.len() as u16);
                Some((c.queue + q) % self.queue_names.len() as u16)
            }
            _ => None,
        };
        if to_agent.is_none() && to_queue.is_none() {
            let at = t + self.range((MIN, 5 * MIN));
            self.schedule(at, Act::End, 0, c);
            return;
        }
        let mut s = self.contact_line(EventType::ContactTransferred, t, &c);
        self.push_agent(&mut s, from);
        if let Some(b) = to_agent {
            s.push_str(",\"to_agent_id\":\"");
            s.push_str(&self.agent_names[usize::from(b)]);
            s.push('"');
        }
        if let Some(q) = to_queue {
            s.push_str(",\"to_queue\":\"");
            s.push_str(&self.queue_names[usize::from(q)]);
            s.push('"');
        }
        self.finish(t, s);
        self.adjust(from, -1, 0);
        self.release(from, c.channel, t);
        if let Some(b) = to_agent {
            self.reserve(b, c.channel);
            self.adjust(b, 1, 0);
            self.refresh(b, t);
            c.agent = b;
            c.seg_start = t;
            let at = t + self.range((MIN, 5 * MIN));
            self.schedule(at, Act::End, 0, c);
        } else if let Some(q) = to_queue {
            c.queue = q;
            c.agent = NO_AGENT;
            let at = t + self.range((500, 3 * SEC));
            self.schedule(at, Act::Reoffer, 0, c);
        }
    }

    fn end(&mut self, t: Millis, c: Core) {
        let seg = (t - c.seg_start).max(0);
        let mut s = self.contact_line(EventType::ContactEnded, t, &c);
        self.push_agent(&mut s, c.agent);
        match c.channel {
            Channel::Voice if self.chance(0.6) => {
                let hold = if self.chance(0.3) {
                    self.range((10 * SEC, (seg / 2).min(90 * SEC)))
                } else {
                    0
                };
                let hold = hold.min(seg);
                s.push_str(",\"talk_ms\":");
                push_u64(&mut s, (seg - hold) as u64);
                s.push_str(",\"hold_ms\":");
                push_u64(&mut s, hold as u64);
            }
            Channel::Chat if self.chance(0.3) => {
                s.push_str(",\"talk_ms\":");
                push_u64(&mut s, seg as u64);
            }
            _ => {}
        }
        self.finish(t, s);
        self.adjust(c.agent, -1, 1);
        self.refresh(c.agent, t);
        let wrap = self.range((10 * SEC, 90 * SEC));
        let emit = self.chance(0.9);
        self.schedule(t + wrap, Act::WrapDone(emit), wrap, c);
    }

    fn wrap_done(&mut self, t: Millis, c: Core, wrap_ms: i64, emit: bool) {
        if emit {
            let mut s = self.contact_line(EventType::ContactWrapped, t, &c);
            self.push_agent(&mut s, c.agent);
            if self.chance(0.5) {
                s.push_str(",\"wrap_ms\":");
                push_u64(&mut s, wrap_ms as u64);
            }
            self.finish(t, s);
        }
        self.adjust(c.agent, 0, -1);
        self.release(c.agent, c.channel, t);

        // Follow-ups: each carries its own copy of the contact.
        if self.chance(0.8) {
            let delay = match c.channel {
                Channel::Voice | Channel::Chat => self.range((0, 5 * SEC)),
                _ => self.range((MIN, 8 * HOUR)),
            };
            let reopen = self.chance(0.02);
            self.schedule(t + delay, Act::Resolve(reopen), 0, c);
            // Resolved, yet the customer is back within days now and then.
            if self.chance(0.08) {
                let at = t + delay + self.range((HOUR, 5 * DAY));
                self.schedule(at, Act::Callback, 0, c);
            }
        } else if self.chance(0.35) {
            let at = t + self.range((HOUR, 3 * DAY));
            self.schedule(at, Act::Callback, 0, c);
        }
        if c.queue == 0 && self.chance(0.1) {
            let at = t + self.range((0, MIN));
            self.schedule(at, Act::Convert, 0, c);
        }
        if self.chance(0.2) {
            let at = t + self.range((2 * MIN, HOUR));
            self.schedule(at, Act::Survey, 0, c);
        }
        if self.chance(0.03) {
            let at = t + self.range((HOUR, DAY));
            self.schedule(at, Act::Qa, 0, c);
        }
    }

    // ---- rendering ----

    /// `{"event_id":…,"type":…,"ts":…` — `ts` as RFC 3339 (UTC, ms) or epoch ms, half each.
    fn head(&mut self, kind: EventType, t: Millis) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("{\"event_id\":\"");
        s.push_str(&self.event_prefix);
        self.next_event += 1;
        push_u64(&mut s, self.next_event);
        s.push_str("\",\"type\":\"");
        s.push_str(kind.as_str());
        s.push_str("\",\"ts\":");
        if self.rng.random::<bool>() {
            s.push('"');
            self.push_rfc3339(&mut s, t);
            s.push('"');
        } else {
            push_i64(&mut s, t);
        }
        s
    }

    fn contact_line(&mut self, kind: EventType, t: Millis, c: &Core) -> String {
        let mut s = self.head(kind, t);
        s.push_str(",\"contact_id\":\"");
        s.push_str(&self.contact_prefix);
        push_u64(&mut s, c.n);
        s.push_str("\",\"channel\":\"");
        s.push_str(c.channel.as_str());
        s.push_str("\",\"queue\":\"");
        s.push_str(&self.queue_names[usize::from(c.queue)]);
        s.push('"');
        s
    }

    fn push_agent(&self, s: &mut String, ag: u16) {
        let Some(name) = self.agent_names.get(usize::from(ag)) else {
            return;
        };
        s.push_str(",\"agent_id\":\"");
        s.push_str(name);
        s.push_str("\",\"team\":\"");
        s.push_str(&self.team_names[usize::from(self.agent_team[usize::from(ag)])]);
        s.push('"');
    }

    fn push_customer(&self, s: &mut String, c: &Core) {
        s.push_str(",\"customer_id\":\"cust-");
        push_u64(s, u64::from(c.customer_slot));
        s.push('-');
        push_u64(s, u64::from(c.customer_gen));
        s.push('"');
    }

    fn push_rfc3339(&mut self, s: &mut String, t: Millis) {
        let day = t.div_euclid(DAY);
        if day != self.date_day {
            let (y, m, d) = civil_from_days(day);
            self.date_text.clear();
            push_4(&mut self.date_text, y);
            self.date_text.push('-');
            push_2(&mut self.date_text, m);
            self.date_text.push('-');
            push_2(&mut self.date_text, d);
            self.date_text.push('T');
            self.date_day = day;
        }
        s.push_str(&self.date_text);
        let ms = t.rem_euclid(DAY);
        push_2(s, (ms / HOUR) as u32);
        s.push(':');
        push_2(s, (ms / MIN % 60) as u32);
        s.push(':');
        push_2(s, (ms / SEC % 60) as u32);
        s.push('.');
        let frac = (ms % SEC) as u32;
        s.push(digit(frac / 100));
        push_2(s, frac % 100);
        s.push('Z');
    }

    /// Close the line and queue it for emission, with the configured delivery faults.
    fn finish(&mut self, t: Millis, mut s: String) {
        s.push('}');
        let u: f64 = self.rng.random();
        let delay = if u < self.cfg.late_rate {
            self.range((10 * MIN, HOUR))
        } else if u < self.cfg.late_rate + self.cfg.out_of_order_rate {
            self.range((1, 2 * MIN))
        } else {
            0
        };
        let at = t + delay;
        if self.cfg.duplicate_rate > 0.0 && self.chance(self.cfg.duplicate_rate) {
            let again = if self.rng.random::<bool>() {
                0
            } else {
                self.range((1, MIN))
            };
            self.seq += 1;
            self.delayed
                .push(Reverse((at + again, self.seq, s.clone())));
        }
        if delay == 0 {
            self.ready.push_back((t, s));
        } else {
            self.seq += 1;
            self.delayed.push(Reverse((at, self.seq, s)));
        }
    }
}

/// An endless stream of `(emission time, line)`.
impl Iterator for Simulator {
    type Item = (Millis, String);
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_line())
    }
}

/// Write `events` lines of a simulation to `out`, one JSON object per line.
pub fn write_jsonl(cfg: SimConfig, events: u64, out: &mut impl Write) -> io::Result<()> {
    let mut sim = Simulator::new(cfg);
    let mut w = io::BufWriter::with_capacity(1 << 20, out);
    for _ in 0..events {
        let (_, line) = sim.next_line();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// The teams serving each queue: two per queue (one when there is a single team),
/// chosen greedily, busiest queue first, so every team carries about the same load.
fn serving_teams(queue_cdf: &[f64], teams: usize) -> Vec<Vec<usize>> {
    let weight = |q: usize| queue_cdf[q] - if q == 0 { 0.0 } else { queue_cdf[q - 1] };
    let mut order: Vec<usize> = (0..queue_cdf.len()).collect();
    order.sort_by(|&a, &b| weight(b).total_cmp(&weight(a)).then(a.cmp(&b)));
    let per_queue = teams.min(2);
    let mut load = vec![0.0f64; teams];
    let mut out = vec![Vec::new(); queue_cdf.len()];
    for q in order {
        let mut by_load: Vec<usize> = (0..teams).collect();
        by_load.sort_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)));
        for &t in &by_load[..per_queue] {
            load[t] += weight(q) / per_queue as f64;
            out[q].push(t);
        }
    }
    out
}

fn clamp_p(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Proleptic Gregorian (year, month, day) of days since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y.clamp(0, 9999) as u32, m as u32, d as u32)
}

fn digit(d: u32) -> char {
    char::from(b'0' + (d % 10) as u8)
}

fn push_2(s: &mut String, v: u32) {
    s.push(digit(v / 10));
    s.push(digit(v));
}

fn push_4(s: &mut String, v: u32) {
    push_2(s, v / 100);
    push_2(s, v % 100);
}

fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

fn push_i64(s: &mut String, v: i64) {
    if v < 0 {
        s.push('-');
    }
    push_u64(s, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::event::{Event, decode};

    fn lines(cfg: SimConfig, n: usize) -> Vec<(Millis, String)> {
        Simulator::new(cfg).take(n).collect()
    }

    fn seeded(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_same_lines() {
        let a = lines(seeded(7), 5_000);
        assert_eq!(a, lines(seeded(7), 5_000));
        assert_ne!(a, lines(seeded(8), 5_000));
    }

    #[test]
    fn every_line_decodes() {
        let cfg = SimConfig {
            late_rate: 0.01,
            ..seeded(3)
        };
        for (_, line) in lines(cfg, 10_000) {
            if let Err(e) = decode(line.as_bytes()) {
                panic!("rejected {e}: {line}");
            }
        }
    }

    #[test]
    fn emission_time_never_decreases() {
        let cfg = SimConfig {
            out_of_order_rate: 0.05,
            late_rate: 0.02,
            duplicate_rate: 0.05,
            ..seeded(11)
        };
        let mut last = Millis::MIN;
        let mut reordered = 0;
        let mut max_ts = Millis::MIN;
        for (at, line) in lines(cfg, 50_000) {
            assert!(at >= last, "emission time went back: {at} < {last}");
            last = at;
            let ev = decode(line.as_bytes()).unwrap();
            assert!(at >= ev.ts, "emitted before it happened");
            if ev.ts < max_ts {
                reordered += 1;
            }
            max_ts = max_ts.max(ev.ts);
        }
        // About 7 % of events are delayed; most of them land behind later events.
        assert!((1_500..6_000).contains(&reordered), "reordered {reordered}");
    }

    #[test]
    fn duplicates_are_identical_and_near_the_rate() {
        let n = 100_000;
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut dups = 0;
        for (_, line) in lines(seeded(5), n) {
            let ev = decode(line.as_bytes()).unwrap();
            let id = ev.event_id.into_owned();
            match seen.get(&id) {
                Some(first) => {
                    assert_eq!(first, &line);
                    dups += 1;
                }
                None => {
                    seen.insert(id, line);
                }
            }
        }
        let rate = dups as f64 / n as f64;
        assert!((0.007..0.013).contains(&rate), "duplicate rate {rate}");
        let none = SimConfig {
            duplicate_rate: 0.0,
            ..seeded(5)
        };
        let ids: HashSet<String> = lines(none, 20_000)
            .into_iter()
            .map(|(_, l)| decode(l.as_bytes()).unwrap().event_id.into_owned())
            .collect();
        assert_eq!(ids.len(), 20_000);
    }

    #[test]
    fn all_types_states_and_both_ts_formats_appear() {
        let mut types = HashSet::new();
        let mut states = HashSet::new();
        let mut channels = HashSet::new();
        let (mut text_ts, mut num_ts) = (0, 0);
        for (_, line) in lines(seeded(9), 100_000) {
            let ev = decode(line.as_bytes()).unwrap();
            types.insert(ev.kind);
            if let Some(s) = ev.state {
                states.insert(s);
            }
            if let Some(c) = ev.channel {
                channels.insert(c);
            }
            if line.contains("\"ts\":\"") {
                text_ts += 1
            } else {
                num_ts += 1
            }
        }
        assert_eq!(types.len(), EventType::ALL.len(), "{types:?}");
        assert_eq!(states.len(), AgentState::ALL.len(), "{states:?}");
        assert_eq!(channels.len(), Channel::ALL.len());
        assert!((0.45..0.55).contains(&(text_ts as f64 / (text_ts + num_ts) as f64)));
    }

    #[test]
    fn contact_outcomes_are_realistic() {
        let events: Vec<Event> = lines(
            SimConfig {
                duplicate_rate: 0.0,
                ..seeded(21)
            },
            200_000,
        )
        .into_iter()
        .map(|(_, l)| decode(l.as_bytes()).unwrap().into_owned())
        .collect();
        let count = |k: EventType| events.iter().filter(|e| e.kind == k).count() as f64;
        let offered: HashSet<&str> = events
            .iter()
            .filter(|e| e.kind == EventType::ContactOffered)
            .filter_map(|e| e.contact_id.as_deref())
            .collect();
        let contacts = offered.len() as f64;
        let abandoned = count(EventType::ContactAbandoned) / contacts;
        let transferred = count(EventType::ContactTransferred) / count(EventType::ContactAnswered);
        let resolved = count(EventType::ContactResolved) / contacts;
        assert!(
            (0.06..0.11).contains(&abandoned),
            "abandon rate {abandoned}"
        );
        assert!(
            (0.03..0.07).contains(&transferred),
            "transfer rate {transferred}"
        );
        assert!((0.65..0.85).contains(&resolved), "resolve rate {resolved}");
        // Voice answers mostly within a minute of the offer.
        let mut offer_at: HashMap<&str, Millis> = HashMap::new();
        let mut waits = Vec::new();
        for e in &events {
            let id = e.contact_id.as_deref().unwrap_or("");
            match e.kind {
                EventType::ContactOffered => {
                    offer_at.insert(id, e.ts);
                }
                EventType::ContactAnswered if e.channel == Some(Channel::Voice) => {
                    if let Some(t) = offer_at.get(id) {
                        waits.push(e.ts - t);
                    }
                }
                _ => {}
            }
        }
        let mean = waits.iter().sum::<i64>() as f64 / waits.len() as f64;
        assert!(
            (15_000.0..60_000.0).contains(&mean),
            "mean voice wait {mean} ms"
        );
        // Customers come back, so FCR can fail.
        let mut per_customer: HashMap<&str, usize> = HashMap::new();
        for e in events
            .iter()
            .filter(|e| e.kind == EventType::ContactOffered)
        {
            *per_customer
                .entry(e.customer_id.as_deref().unwrap_or(""))
                .or_default() += 1;
        }
        let repeat =
            per_customer.values().filter(|&&n| n > 1).count() as f64 / per_customer.len() as f64;
        assert!((0.03..0.4).contains(&repeat), "repeat customers {repeat}");
    }

    #[test]
    fn agent_states_follow_the_work() {
        // Replaying the stream in order: an agent is shown busy exactly while talking,
        // and never receives a contact while away or offline.
        let mut shown: HashMap<String, AgentState> = HashMap::new();
        let mut talking: HashMap<String, i32> = HashMap::new();
        let cfg = SimConfig {
            duplicate_rate: 0.0,
            out_of_order_rate: 0.0,
            ..seeded(4)
        };
        for (_, line) in lines(cfg, 50_000) {
            let e = decode(line.as_bytes()).unwrap();
            let agent = e.agent_id.clone().unwrap_or_default().into_owned();
            match e.kind {
                EventType::AgentState => {
                    assert!(e.team.is_some());
                    let state = e.state.unwrap();
                    let n = talking.get(&agent).copied().unwrap_or(0);
                    assert_eq!(state == AgentState::Busy, n > 0, "{line} while talking {n}");
                    shown.insert(agent, state);
                }
                EventType::ContactRouted | EventType::ContactAnswered => {
                    let s = shown.get(&agent).copied();
                    assert!(
                        !matches!(s, None | Some(AgentState::Away | AgentState::Offline)),
                        "{line} while {s:?}"
                    );
                    if e.kind == EventType::ContactAnswered {
                        *talking.entry(agent).or_default() += 1;
                    }
                }
                EventType::ContactTransferred => {
                    *talking.entry(agent).or_default() -= 1;
                    if let Some(to) = e.to_agent_id {
                        *talking.entry(to.into_owned()).or_default() += 1;
                    }
                }
                EventType::ContactEnded => *talking.entry(agent).or_default() -= 1,
                _ => {}
            }
        }
        assert!(talking.values().all(|&n| n >= 0));
    }

    #[test]
    fn rfc3339_matches_jiff() {
        let mut sim = Simulator::new(SimConfig::default());
        let mut rng = SmallRng::seed_from_u64(1);
        for t in [
            946_684_800_000,
            951_782_400_000,
            4_102_444_799_999,
            DEFAULT_START_MS,
        ]
        .into_iter()
        .chain((0..2_000).map(|_| rng.random_range(946_684_800_000..4_102_444_800_000)))
        {
            let mut s = String::new();
            sim.push_rfc3339(&mut s, t);
            let expect = jiff::Timestamp::from_millisecond(t).unwrap();
            assert_eq!(s, format!("{expect:.3}").replace("+00:00", "Z"), "{t}");
            assert_eq!(crate::event::decode::parse_rfc3339(&s), Some(t));
        }
    }

    /// Events emitted per hour of simulated time from `sim`'s next line on, `hours` in a row.
    fn hourly_counts(sim: &mut Simulator, from: Millis, hours: usize) -> Vec<u64> {
        let mut counts = vec![0u64; hours];
        loop {
            let (t, _) = sim.next_line();
            let h = ((t - from) / HOUR) as usize;
            if h >= hours {
                return counts;
            }
            counts[h] += 1;
        }
    }

    #[test]
    fn warmed_up_starts_at_start_and_zero_warmup_is_the_cold_simulator() {
        let cfg = seeded(5);
        let warm: Vec<_> = warmed_up(cfg.clone(), 0).take(2_000).collect();
        assert_eq!(warm, lines(cfg.clone(), 2_000));
        let mut s = warmed_up(cfg.clone(), 6 * HOUR);
        let first = s.next_line();
        assert!(first.0 >= cfg.start_ms, "{} < {}", first.0, cfg.start_ms);
        assert!(
            first.0 < cfg.start_ms + MIN,
            "the first line comes right away"
        );
        // Not the cold simulator's first line: contacts are already in flight.
        assert_ne!(first, lines(cfg, 1)[0]);
    }

    /// Why the soak warms the simulator up: cold, its event rate climbs for hours (a
    /// contact's events spread over hours to days after its offer); warmed up for a day
    /// it is steady from the first hour, and sized for a rate it delivers that rate.
    #[test]
    fn a_warmed_up_simulator_runs_at_a_steady_rate() {
        let cfg = SimConfig {
            seed: 9,
            agents: 200,
            contacts_per_hour: 2_400.0,
            ..SimConfig::default()
        };
        let start = cfg.start_ms;
        let cold = hourly_counts(&mut Simulator::new(cfg.clone()), start, 4);
        assert!(
            (cold[0] as f64) < 0.9 * cold[3] as f64,
            "a cold start ramps up: {cold:?}"
        );
        let warm = hourly_counts(&mut warmed_up(cfg.clone(), DAY), start, 4);
        let mean = warm.iter().sum::<u64>() as f64 / 4.0;
        for n in &warm {
            assert!(
                (*n as f64 - mean).abs() < 0.05 * mean,
                "warmed up for a day, every hour is within 5 % of the mean: {warm:?}"
            );
        }
        // Sized on the hour after the warm-up, it delivers the rate asked for.
        let sized = cfg.sized_for_rate_after(5.0, DAY);
        let got = hourly_counts(&mut warmed_up(sized, DAY), start, 2);
        for n in got {
            let per_s = n as f64 / 3600.0;
            assert!((per_s - 5.0).abs() < 0.25, "{per_s} events/s for 5 asked");
        }
    }

    #[test]
    fn write_jsonl_writes_n_lines() {
        let mut out = Vec::new();
        write_jsonl(SimConfig::default(), 1_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1_000);
        assert!(text.ends_with('\n'));
        let expected: Vec<String> = lines(SimConfig::default(), 1_000)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn odd_configs_still_generate() {
        let cfg = SimConfig {
            agents: 1,
            teams: 9,
            queues: 12,
            customers: 0,
            contacts_per_hour: 0.0,
            ..seeded(2)
        };
        for (_, line) in lines(cfg, 2_000) {
            decode(line.as_bytes()).unwrap();
        }
        // Overloaded: contacts queue up and give up; the waiting list stays bounded by
        // patience, not by the number of events.
        let busy = SimConfig {
            agents: 3,
            contacts_per_hour: 5_000.0,
            ..seeded(2)
        };
        let mut sim = Simulator::new(busy);
        let mut abandoned = 0;
        for _ in 0..100_000 {
            let (_, line) = sim.next_line();
            if decode(line.as_bytes()).unwrap().kind == EventType::ContactAbandoned {
                abandoned += 1;
            }
        }
        assert!(abandoned > 10_000, "abandoned {abandoned}");
        assert!(
            // At most a day of digital arrivals (email and ticket wait up to 24 h).
            sim.waiting.len() < 30_000,
            "waiting slots {}",
            sim.waiting.len()
        );
        assert_eq!(sim.n_waiting, sim.waiting.iter().flatten().count());
    }
}
