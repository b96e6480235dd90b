//! Engine checkpoints: the whole per-partition state (open contacts, dedup memory,
//! FCR customers, pending wrap timers, open and not-yet-merged windows, live views,
//! the clock and the input counters) as bytes, and back.
//!
//! The Kafka daemon writes a checkpoint in the same store transaction as the deltas it
//! flushed and the partition's next offset, so a restarted or reassigned partition
//! continues exactly where the committed results stop. Still pure: bytes in, bytes out.
//!
//! Format: a version byte, then `postcard`. The checkpoint records the settings that
//! give its numbers their meaning (intervals, time zone); restoring under different
//! ones is refused rather than silently mixing window grids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aggregate::AggState;
use super::intern::{Interner, Sym};
use super::limits::{Admission, KeyDim};
use super::{Contact, ContactKey, CustomerKey, Engine, EngineConfig, HashMap, HashSet, Stats};
use crate::event::Millis;

/// Bumped whenever the layout below changes; older checkpoints are refused.
const FORMAT_VERSION: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot encode the engine checkpoint: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode the engine checkpoint: {0}")]
    Decode(postcard::Error),
    #[error("empty checkpoint")]
    Empty,
    #[error(
        "checkpoint format {found} is not supported by this version (expects {FORMAT_VERSION})"
    )]
    Version { found: u8 },
    #[error(
        "checkpoint was written with {what} {stored:?} but the configuration now says {configured:?}; \
         restore the old setting, or start the partition afresh (delete its checkpoint and snapshots, then replay)"
    )]
    Settings {
        what: &'static str,
        stored: String,
        configured: String,
    },
}

#[derive(Serialize, Deserialize)]
struct State {
    intervals: Vec<String>,
    timezone: String,
    names: Vec<Box<str>>,
    seen_by_hour: BTreeMap<Millis, Vec<u128>>,
    contacts: HashMap<ContactKey, Contact>,
    customers: HashMap<CustomerKey, Vec<ContactKey>>,
    agent_team: HashMap<Sym, Sym>,
    awaiting_team: HashMap<Sym, Vec<ContactKey>>,
    wrap_deadlines: BTreeMap<Millis, Vec<ContactKey>>,
    agg: AggState,
    max_ts: Option<Millis>,
    last_expiry: Millis,
    stats: Stats,
}

/// Appended in format 3, after the floor: robustness counters and key admission.
/// A separate segment so that format-2 checkpoints (without it) still restore.
#[derive(Serialize, Deserialize, Default)]
struct Extra {
    expired: u64,
    overflowed: BTreeMap<KeyDim, u64>,
    admission: Admission,
}

fn settings(cfg: &EngineConfig) -> (Vec<String>, String) {
    (
        cfg.intervals.iter().map(|i| i.to_string()).collect(),
        cfg.tz.iana_name().unwrap_or("(fixed offset)").to_owned(),
    )
}

impl Engine {
    /// Serialise the engine's state. The state is moved out for encoding and put
    /// back, so this needs `&mut self` but copies nothing.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>, CheckpointError> {
        let (intervals, timezone) = settings(&self.cfg);
        let state = State {
            intervals,
            timezone,
            names: self.syms.names().to_vec(),
            seen_by_hour: std::mem::take(&mut self.seen_by_hour),
            contacts: std::mem::take(&mut self.contacts),
            customers: std::mem::take(&mut self.customers),
            agent_team: std::mem::take(&mut self.agent_team),
            awaiting_team: std::mem::take(&mut self.awaiting_team),
            wrap_deadlines: std::mem::take(&mut self.wrap_deadlines),
            agg: self.agg.take_state(),
            max_ts: self.max_ts,
            last_expiry: self.last_expiry,
            stats: std::mem::take(&mut self.stats),
        };
        // Version 2 appends the live floor to version 1's body, so a version-1
        // checkpoint still restores (with an empty floor).
        let encoded = postcard::to_extend(&state, vec![FORMAT_VERSION])
            .and_then(|buf| postcard::to_extend(&self.floor, buf))
            .and_then(|buf| {
                let extra = Extra {
                    expired: state.stats.expired,
                    overflowed: state.stats.overflowed.clone(),
                    admission: self.admission.clone(),
                };
                postcard::to_extend(&extra, buf)
            })
            .map_err(CheckpointError::Encode);
        // Put everything back whether or not encoding worked.
        self.seen_by_hour = state.seen_by_hour;
        self.contacts = state.contacts;
        self.customers = state.customers;
        self.agent_team = state.agent_team;
        self.awaiting_team = state.awaiting_team;
        self.wrap_deadlines = state.wrap_deadlines;
        self.agg.put_state(state.agg);
        self.stats = state.stats;
        encoded
    }

    /// An engine continuing from `bytes` (made by [`Engine::checkpoint`]) under `cfg`.
    pub fn restore(cfg: EngineConfig, bytes: &[u8]) -> Result<Engine, CheckpointError> {
        let (&version, body) = bytes.split_first().ok_or(CheckpointError::Empty)?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(CheckpointError::Version { found: version });
        }
        let (s, rest): (State, &[u8]) =
            postcard::take_from_bytes(body).map_err(CheckpointError::Decode)?;
        let (floor, extra) = match version {
            1 => (super::live::Floor::default(), Extra::default()),
            2 => (
                postcard::from_bytes(rest).map_err(CheckpointError::Decode)?,
                Extra::default(),
            ),
            _ => {
                let (floor, rest) =
                    postcard::take_from_bytes(rest).map_err(CheckpointError::Decode)?;
                (
                    floor,
                    postcard::from_bytes(rest).map_err(CheckpointError::Decode)?,
                )
            }
        };
        let (intervals, timezone) = settings(&cfg);
        if s.intervals != intervals {
            return Err(CheckpointError::Settings {
                what: "[windows] intervals",
                stored: s.intervals.join(","),
                configured: intervals.join(","),
            });
        }
        if s.timezone != timezone {
            return Err(CheckpointError::Settings {
                what: "[windows] timezone",
                stored: s.timezone,
                configured: timezone,
            });
        }
        let mut e = Engine::new(cfg);
        let syms = Interner::from_names(s.names);
        // `Engine::new` interned `unknown`, `all` and the channels first, so a
        // checkpoint's interner starts with the same ids.
        if !syms.names().starts_with(e.syms.names()) {
            return Err(CheckpointError::Decode(
                postcard::Error::DeserializeBadEncoding,
            ));
        }
        e.syms = syms;
        e.seen = s
            .seen_by_hour
            .values()
            .flatten()
            .copied()
            .collect::<HashSet<u128>>();
        e.seen_by_hour = s.seen_by_hour;
        e.contacts = s.contacts;
        e.customers = s.customers;
        e.agent_team = s.agent_team;
        e.awaiting_team = s.awaiting_team;
        e.wrap_deadlines = s.wrap_deadlines;
        e.agg.put_state(s.agg);
        e.max_ts = s.max_ts;
        e.last_expiry = s.last_expiry;
        e.stats = s.stats;
        e.stats.expired = extra.expired;
        e.stats.overflowed = extra.overflowed;
        // A format-2 checkpoint has no admission: names are admitted afresh as they
        // come, up to the limits.
        e.admission = extra.admission;
        e.floor = floor;
        Ok(e)
    }
}
