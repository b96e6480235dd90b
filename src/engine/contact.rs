//! Contact joins and attribution: from one contact's events to the facts it
//! contributes. This file *is* the definition in `docs/metrics.md`; keep them together.
//!
//! [`derive`] is a pure function of the contact's (deduplicated) events, the
//! customer's other contacts and the watermark. The engine re-derives a contact on
//! every change and applies only the difference to the windows, so the result never
//! depends on arrival order: out-of-order, late and duplicate events give the same
//! facts as a clean, sorted stream.

use std::num::NonZeroU32;

use smallvec::SmallVec;
use thin_vec::ThinVec;

use super::acc::Measure;
use super::intern::Sym;
use crate::event::{Channel, EventType, Millis};

/// A contact event in compact, interned form.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CEvent {
    pub ts: Millis,
    pub kind: EventType,
    /// Hash of `event_id`: a deterministic tie-break for equal (ts, kind).
    pub id_hash: u64,
    pub agent: Option<Sym>,
    pub team: Option<Sym>,
    pub queue: Option<Sym>,
    pub channel: Option<Channel>,
    pub to_agent: Option<Sym>,
    /// Durations fit in u32 ms (decoding caps them at 30 days).
    pub talk_ms: Option<Ms>,
    pub hold_ms: Option<Ms>,
    pub wrap_ms: Option<Ms>,
    /// `amount` of a conversion or `score` of a survey / QA (fixed point); decoding
    /// guarantees the one its type needs is present.
    pub value: i64,
}

/// A duration in milliseconds that makes `Option<Ms>` 4 bytes, as `Option<Sym>` is: a
/// contact holds three per event, and at 8 bytes each an event was 72 bytes, now 56
/// (docs/performance.md, "twentieth round"). Held as the value + 1, so the one value
/// it cannot hold is `u32::MAX` ms (49 days), which becomes `u32::MAX - 1`; decoding
/// caps durations at 30 days. Written by serde (checkpoints) as the plain `u32`, so the
/// bytes are those of an `Option<u32>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ms(NonZeroU32);

impl Ms {
    pub fn new(ms: u32) -> Ms {
        Ms(NonZeroU32::MIN.saturating_add(ms))
    }

    pub fn get(self) -> u32 {
        self.0.get() - 1
    }
}

impl From<Ms> for u64 {
    fn from(ms: Ms) -> u64 {
        u64::from(ms.get())
    }
}

impl serde::Serialize for Ms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.get())
    }
}

impl<'de> serde::Deserialize<'de> for Ms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ms, D::Error> {
        <u32 as serde::Deserialize>::deserialize(d).map(Ms::new)
    }
}

impl CEvent {
    pub fn sort_key(&self) -> (Millis, EventType, u64) {
        (self.ts, self.kind, self.id_hash)
    }
}

/// Which dimensions a fact counts in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Side {
    /// all, channel, queue (queue outcomes).
    Queue,
    /// agent, team (presentations, agent answers and abandons).
    Agent,
    /// every dimension (handling, resolution, surveys, conversion, QA, first response).
    Both,
}

/// One attributed contribution of a contact to the interval holding `ts`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Fact {
    pub ts: Millis,
    pub side: Side,
    pub measure: Measure,
    pub queue: Sym,
    pub channel: Sym,
    pub agent: Option<Sym>,
    pub team: Sym,
}

/// Settings the definitions depend on (all durations in ms).
#[derive(Clone, Debug)]
pub struct Rules {
    pub sl_threshold_ms: i64,
    pub short_abandon_ms: i64,
    pub wrap_timeout_ms: i64,
    pub fcr_window_ms: i64,
    /// CSAT positive threshold, fixed point.
    pub csat_positive_min: i64,
}

/// What `derive` needs besides the contact's own events.
pub struct Ctx<'a> {
    pub rules: &'a Rules,
    /// Current watermark: a handling segment with no wrap completes at `ended` once the
    /// watermark passes `ended + wrap_timeout`.
    pub watermark: Millis,
    /// First-offer times of the same customer's *other* contacts (FCR repeats).
    pub repeat_offers: &'a [Millis],
    /// Interned `"unknown"`: the key of a missing queue, channel or team.
    pub unknown: Sym,
    /// Interned channel names, indexed like `Channel::ALL`.
    pub channels: &'a [Sym; 5],
    /// Last team reported for an agent by any event (fallback for team attribution).
    pub agent_team: &'a dyn Fn(Sym) -> Option<Sym>,
}

/// A handling segment whose conversation ended and which waits for its wrap.
#[derive(Clone, Copy, Debug)]
struct Pending {
    agent: Sym,
    team: Sym,
    queue: Sym,
    channel: Sym,
    ended: Millis,
    talk_hold_ms: u64,
}

impl Pending {
    /// The segment's handled fact, completing at `ts` with `wrap_ms` of wrap-up.
    fn completed(&self, ts: Millis, wrap_ms: u64) -> Fact {
        Fact {
            ts,
            side: Side::Both,
            measure: Measure::Handled {
                handle_ms: self.talk_hold_ms + wrap_ms,
            },
            queue: self.queue,
            channel: self.channel,
            agent: Some(self.agent),
            team: self.team,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    agent: Sym,
    start: Millis,
}

#[derive(Clone, Copy, Debug)]
struct Offer {
    ts: Millis,
    queue: Sym,
    channel: Sym,
}

/// Output of [`derive`]: the facts and, when a segment still waits for its wrap, the
/// watermark at which the contact must be derived again.
#[derive(Debug, Default)]
pub struct Derived {
    /// A `ThinVec`, the type the engine keeps a contact's facts in (`engine::Contact`),
    /// so that [`derive`] hands out what a contact keeps; the engine derives into a
    /// scratch list ([`derive_into`]) and keeps an exact-size copy.
    pub facts: ThinVec<Fact>,
    pub wrap_deadline: Option<Millis>,
}

fn dur(a: Millis, b: Millis) -> u64 {
    u64::try_from(b.saturating_sub(a)).unwrap_or(0)
}

/// Derive the facts of one contact from its events sorted by [`CEvent::sort_key`].
pub fn derive(events: &[CEvent], ctx: &Ctx<'_>) -> Derived {
    derive_into(events, ctx, ThinVec::with_capacity(events.len() + 2))
}

/// [`derive`] into `buf` (cleared first): the engine passes its scratch list, whose
/// capacity stays, so deriving allocates nothing in the usual case.
pub fn derive_into(events: &[CEvent], ctx: &Ctx<'_>, mut buf: ThinVec<Fact>) -> Derived {
    let r = ctx.rules;
    let unknown = ctx.unknown;
    buf.clear();
    let mut out = Derived {
        facts: buf,
        wrap_deadline: None,
    };

    // Whole-contact properties: FCR fails on any transfer or reopen, whenever it happened.
    let transferred = events
        .iter()
        .any(|e| e.kind == EventType::ContactTransferred);
    let reopened = events.iter().any(|e| e.kind == EventType::ContactReopened);
    let first_offer = events
        .iter()
        .find(|e| e.kind == EventType::ContactOffered)
        .map(|e| e.ts);
    // Channel is set on the offer; later events inherit it, and an event carrying one
    // stands in when the offer is missing (late or lost).
    let contact_channel = events.iter().find_map(|e| e.channel);
    let chan_sym = |c: Option<Channel>| match c {
        Some(c) => ctx.channels[Channel::ALL.iter().position(|x| *x == c).unwrap_or(0)],
        None => unknown,
    };

    let mut offer: Option<Offer> = None;
    let mut outcome_done = false;
    // Small per-contact sets on the stack: derive runs for every event.
    let mut presented: SmallVec<[Sym; 4]> = SmallVec::new();
    let mut answered_by: SmallVec<[Sym; 4]> = SmallVec::new();
    let mut last_routed: Option<Sym> = None;
    let mut segment: Option<Segment> = None;
    let mut pending: Option<Pending> = None;
    let mut last_handler: Option<Sym> = None;
    let mut teams: SmallVec<[(Sym, Sym); 4]> = SmallVec::new();
    let mut frt_done = false;
    let mut resolved_done = false;
    let mut converted_done = false;

    for e in events {
        if let (Some(a), Some(t)) = (e.agent, e.team) {
            match teams.iter_mut().find(|(x, _)| *x == a) {
                Some(slot) => slot.1 = t,
                None => teams.push((a, t)),
            }
        }
        let team_of = |agent: Sym, own: Option<Sym>| -> Sym {
            own.or_else(|| teams.iter().find(|(a, _)| *a == agent).map(|(_, t)| *t))
                .or_else(|| (ctx.agent_team)(agent))
                .unwrap_or(unknown)
        };
        let queue = offer.map(|o| o.queue).or(e.queue).unwrap_or(unknown);
        let channel = offer
            .map(|o| o.channel)
            .unwrap_or_else(|| chan_sym(contact_channel));
        let fact = |side, measure, agent: Option<Sym>, team| Fact {
            ts: e.ts,
            side,
            measure,
            queue,
            channel,
            agent,
            team,
        };
        // Contact-level facts: the event's agent, else the last handling agent.
        let attributed = |out: &mut Derived, measure| {
            let agent = e.agent.or(last_handler);
            let team = match agent {
                Some(a) => team_of(a, e.team),
                None => e.team.unwrap_or(unknown),
            };
            out.facts.push(fact(Side::Both, measure, agent, team));
        };

        match e.kind {
            EventType::ContactOffered => {
                offer = Some(Offer {
                    ts: e.ts,
                    queue: e.queue.unwrap_or(unknown),
                    channel: chan_sym(e.channel.or(contact_channel)),
                });
                outcome_done = false;
                presented.clear();
                answered_by.clear();
                last_routed = None;
            }
            EventType::ContactRouted => {
                if let Some(a) = e.agent {
                    out.facts.push(fact(
                        Side::Agent,
                        Measure::Presented,
                        Some(a),
                        team_of(a, e.team),
                    ));
                    if !presented.contains(&a) {
                        presented.push(a);
                    }
                    last_routed = Some(a);
                }
            }
            EventType::ContactAnswered => {
                let Some(a) = e.agent else { continue };
                if answered_by.contains(&a) {
                    // The same agent answering the same offer twice is one answer.
                    continue;
                }
                answered_by.push(a);
                let wait = offer.map(|o| dur(o.ts, e.ts));
                let within = wait.is_some_and(|w| w as i64 <= r.sl_threshold_ms);
                let team = team_of(a, e.team);
                if !presented.contains(&a) {
                    presented.push(a);
                    out.facts
                        .push(fact(Side::Agent, Measure::Presented, Some(a), team));
                }
                out.facts.push(fact(
                    Side::Agent,
                    Measure::AgentAnswered {
                        wait_ms: wait,
                        within,
                    },
                    Some(a),
                    team,
                ));
                if let (Some(o), false) = (offer, outcome_done) {
                    let w = dur(o.ts, e.ts);
                    let m = Measure::QueueOutcome {
                        answered: true,
                        wait_ms: w,
                        short: false,
                        within: w as i64 <= r.sl_threshold_ms,
                    };
                    out.facts.push(fact(Side::Queue, m, Some(a), team));
                    outcome_done = true;
                }
                if segment.is_none() {
                    segment = Some(Segment {
                        agent: a,
                        start: e.ts,
                    });
                }
                last_handler = Some(a);
            }
            EventType::ContactAbandoned => {
                let (Some(o), false) = (offer, outcome_done) else {
                    continue;
                };
                let w = dur(o.ts, e.ts);
                let m = Measure::QueueOutcome {
                    answered: false,
                    wait_ms: w,
                    short: w as i64 <= r.short_abandon_ms,
                    within: w as i64 <= r.sl_threshold_ms,
                };
                out.facts.push(fact(Side::Queue, m, None, unknown));
                outcome_done = true;
                if let Some(a) = last_routed.filter(|a| !answered_by.contains(a)) {
                    out.facts.push(fact(
                        Side::Agent,
                        Measure::AgentAbandoned,
                        Some(a),
                        team_of(a, None),
                    ));
                }
            }
            EventType::ContactFirstResponse => {
                let Some(t0) = first_offer else { continue };
                if frt_done {
                    continue;
                }
                frt_done = true;
                attributed(
                    &mut out,
                    Measure::FirstResponse {
                        frt_ms: dur(t0, e.ts),
                    },
                );
            }
            EventType::ContactTransferred => {
                if let Some(s) = segment.take() {
                    let m = Measure::Handled {
                        handle_ms: dur(s.start, e.ts),
                    };
                    out.facts
                        .push(fact(Side::Both, m, Some(s.agent), team_of(s.agent, None)));
                }
                if let Some(to) = e.to_agent {
                    segment = Some(Segment {
                        agent: to,
                        start: e.ts,
                    });
                    last_handler = Some(to);
                }
            }
            EventType::ContactEnded => {
                if let Some(s) = segment.take() {
                    let hold = e.hold_ms.map_or(0, u64::from);
                    // Without an explicit talk time, talk is the connected time minus hold,
                    // so talk + hold is never more than the conversation lasted.
                    let talk = e
                        .talk_ms
                        .map(u64::from)
                        .unwrap_or_else(|| dur(s.start, e.ts).saturating_sub(hold));
                    pending = Some(Pending {
                        agent: s.agent,
                        team: team_of(s.agent, None),
                        queue,
                        channel,
                        ended: e.ts,
                        talk_hold_ms: talk + hold,
                    });
                }
            }
            EventType::ContactWrapped => {
                if let Some(p) = pending.filter(|p| e.ts - p.ended <= r.wrap_timeout_ms) {
                    let wrap = e
                        .wrap_ms
                        .map(u64::from)
                        .unwrap_or_else(|| dur(p.ended, e.ts));
                    out.facts.push(p.completed(e.ts, wrap));
                    pending = None;
                }
            }
            EventType::ContactResolved => {
                if resolved_done {
                    continue;
                }
                resolved_done = true;
                let repeat = ctx
                    .repeat_offers
                    .iter()
                    .any(|&t| t > e.ts && t - e.ts <= r.fcr_window_ms);
                attributed(
                    &mut out,
                    Measure::Resolved {
                        fcr: !transferred && !reopened && !repeat,
                    },
                );
            }
            EventType::ContactConverted => {
                let first = !converted_done;
                converted_done = true;
                attributed(
                    &mut out,
                    Measure::Converted {
                        first,
                        amount: e.value,
                    },
                );
            }
            EventType::SurveyResponded => {
                let score = e.value;
                attributed(
                    &mut out,
                    Measure::Csat {
                        score,
                        positive: score >= r.csat_positive_min,
                    },
                );
            }
            EventType::QaScored => attributed(&mut out, Measure::Qa { score: e.value }),
            EventType::ContactReopened | EventType::AgentState => {}
        }
    }

    if let Some(p) = pending {
        let deadline = p.ended.saturating_add(r.wrap_timeout_ms);
        if ctx.watermark >= deadline {
            out.facts.push(p.completed(p.ended, 0));
        } else {
            out.wrap_deadline = Some(deadline);
        }
    }
    out.facts.sort_unstable();
    out
}
