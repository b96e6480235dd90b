//! Canonical event format v1: the public contract (see `docs/events.md`).
//!
//! `types` holds the validated, owned form the engine consumes; `decode` turns one
//! JSON message into it or into a [`Reject`] with a stable reason.

pub mod decode;
#[cfg(test)]
mod hostile_tests;

use std::borrow::Cow;
use std::num::NonZeroU128;

pub use decode::{Decoder, Reject, RejectReason, decode};

/// Event time: UTC milliseconds since the Unix epoch.
pub type Millis = i64;

/// Every event type of format v1, in the order used to break timestamp ties when a
/// contact's events are sorted (a contact is offered before it is answered, and so on).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum EventType {
    ContactOffered,
    ContactRouted,
    ContactAnswered,
    ContactAbandoned,
    ContactFirstResponse,
    ContactTransferred,
    ContactEnded,
    ContactWrapped,
    ContactResolved,
    ContactReopened,
    ContactConverted,
    SurveyResponded,
    QaScored,
    AgentState,
}

impl EventType {
    pub const ALL: [EventType; 14] = [
        EventType::ContactOffered,
        EventType::ContactRouted,
        EventType::ContactAnswered,
        EventType::ContactAbandoned,
        EventType::ContactFirstResponse,
        EventType::ContactTransferred,
        EventType::ContactEnded,
        EventType::ContactWrapped,
        EventType::ContactResolved,
        EventType::ContactReopened,
        EventType::ContactConverted,
        EventType::SurveyResponded,
        EventType::QaScored,
        EventType::AgentState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ContactOffered => "contact.offered",
            EventType::ContactRouted => "contact.routed",
            EventType::ContactAnswered => "contact.answered",
            EventType::ContactAbandoned => "contact.abandoned",
            EventType::ContactFirstResponse => "contact.first_response",
            EventType::ContactTransferred => "contact.transferred",
            EventType::ContactEnded => "contact.ended",
            EventType::ContactWrapped => "contact.wrapped",
            EventType::ContactResolved => "contact.resolved",
            EventType::ContactReopened => "contact.reopened",
            EventType::ContactConverted => "contact.converted",
            EventType::SurveyResponded => "survey.responded",
            EventType::QaScored => "qa.scored",
            EventType::AgentState => "agent.state",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Contact-scoped events carry a `contact_id` and are joined per contact.
    pub fn is_contact_scoped(self) -> bool {
        !matches!(self, EventType::AgentState)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Channel {
    Voice,
    Chat,
    Email,
    Ticket,
    Social,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Voice,
        Channel::Chat,
        Channel::Email,
        Channel::Ticket,
        Channel::Social,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Voice => "voice",
            Channel::Chat => "chat",
            Channel::Email => "email",
            Channel::Ticket => "ticket",
            Channel::Social => "social",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum AgentState {
    Available,
    Busy,
    Wrap,
    Away,
    Offline,
}

impl AgentState {
    pub const ALL: [AgentState; 5] = [
        AgentState::Available,
        AgentState::Busy,
        AgentState::Wrap,
        AgentState::Away,
        AgentState::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Available => "available",
            AgentState::Busy => "busy",
            AgentState::Wrap => "wrap",
            AgentState::Away => "away",
            AgentState::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<AgentState> {
        AgentState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A validated canonical event. Every invariant of `docs/events.md` holds here: the
/// required fields of its type are present and in range.
///
/// Strings borrow from the input message where they can (no escapes), so decoding a
/// typical message allocates nothing; [`Event::into_owned`] detaches it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub kind: EventType,
    pub ts: Millis,
    pub contact_id: Option<Cow<'a, str>>,
    pub channel: Option<Channel>,
    pub queue: Option<Cow<'a, str>>,
    pub agent_id: Option<Cow<'a, str>>,
    pub team: Option<Cow<'a, str>>,
    pub customer_id: Option<Cow<'a, str>>,
    pub to_agent_id: Option<Cow<'a, str>>,
    pub to_queue: Option<Cow<'a, str>>,
    pub talk_ms: Option<u64>,
    pub hold_ms: Option<u64>,
    pub wrap_ms: Option<u64>,
    /// Order value in fixed point, 1/10 000 of the currency unit (exact sums).
    pub amount: Option<i64>,
    /// Survey score (integer on the CSAT scale) or QA score (0–100), in 1/10 000 units.
    pub score: Option<i64>,
    pub state: Option<AgentState>,
    pub reason: Option<Cow<'a, str>>,
}

impl Event<'_> {
    /// The same event, owning its strings.
    pub fn into_owned(self) -> Event<'static> {
        let own = |c: Option<Cow<'_, str>>| c.map(|s| Cow::Owned(s.into_owned()));
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            kind: self.kind,
            ts: self.ts,
            contact_id: own(self.contact_id),
            channel: self.channel,
            queue: own(self.queue),
            agent_id: own(self.agent_id),
            team: own(self.team),
            customer_id: own(self.customer_id),
            to_agent_id: own(self.to_agent_id),
            to_queue: own(self.to_queue),
            talk_ms: self.talk_ms,
            hold_ms: self.hold_ms,
            wrap_ms: self.wrap_ms,
            amount: self.amount,
            score: self.score,
            state: self.state,
            reason: own(self.reason),
        }
    }
}

/// The 128-bit hash an id is known by inside the engine: contacts, customers and event
/// ids are keyed by it (a collision among 2^128 values is not a practical concern), so
/// the engine holds and compares 16 bytes instead of strings.
pub fn hash_id(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// An event's hashed identities ([`hash_id`]), computed once per event. The engine
/// needs the contact's key at every look-ahead stage and again when it applies the
/// event (hashing the id each time was 4 % of a replay's samples), and finds agents,
/// teams and queues by their names' hashes (another 4 %, on the engine's thread, the
/// replay's critical path; docs/performance.md, "seventeenth round"). `replay`
/// computes them on its decoder threads, beside the event.
///
/// 96 bytes: `replay` holds one per event read ahead (~1.9 MiB at its 10 batches of
/// 2,048 in flight), so the rare `to_agent_id` is hashed where it is used instead, and the
/// optional keys are non-zero (`Option` of a plain `u128` is 32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    /// `event_id`'s hash (duplicate detection).
    pub id: u128,
    contact: Option<NonZeroU128>,
    customer: Option<NonZeroU128>,
    /// The hashes of `agent_id`, `team` and `queue` (0 where the event has none: only
    /// read when it has).
    pub agent: u128,
    pub team: u128,
    pub queue: u128,
}

const _: () = assert!(size_of::<Keys>() == 96);

impl Keys {
    pub fn of(ev: &Event<'_>) -> Keys {
        let non_zero = |id: &str| NonZeroU128::new(hash_id(id)).unwrap_or(NonZeroU128::MIN);
        Keys {
            id: hash_id(&ev.event_id),
            contact: ev.contact_id.as_deref().map(non_zero),
            customer: ev.customer_id.as_deref().map(non_zero),
            agent: ev.agent_id.as_deref().map_or(0, hash_id),
            team: ev.team.as_deref().map_or(0, hash_id),
            queue: ev.queue.as_deref().map_or(0, hash_id),
        }
    }

    /// The keys of a decoded message: the default (no contact, no customer) for a
    /// reject, which the engine never sees.
    pub fn of_decoded(decoded: &Result<Event<'_>, Reject>) -> Keys {
        decoded.as_ref().map(Keys::of).unwrap_or_default()
    }

    /// `contact_id`'s hash, when the event names a contact; never 0 (a hash of 0
    /// becomes 1, one more collision among 2^128).
    pub fn contact(&self) -> Option<u128> {
        self.contact.map(NonZeroU128::get)
    }

    /// `customer_id`'s hash, when the event names a customer; never 0 (a contact holds
    /// it as a `NonZeroU128`).
    pub fn customer(&self) -> Option<u128> {
        self.customer.map(NonZeroU128::get)
    }
}

/// Fixed-point scale of `amount` and `score`: four decimals, so sums and corrections
/// (subtracting what was added) stay exact where `f64` would drift.
pub const FIXED_SCALE: i64 = 10_000;
