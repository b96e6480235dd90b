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
use super::contact::{CEvent, Fact};
use super::intern::{Interner, Sym};
use super::limits::{Admission, KeyDim};
use super::{
    Contact, ContactKey, CustomerKey, Dimension, Engine, EngineConfig, HashMap, HashSet, Stats,
};
use crate::event::Millis;

/// A contact as checkpoint formats 1 to 3 stored it (before packing).
#[derive(Serialize, Deserialize)]
struct LegacyContact {
    events: Vec<CEvent>,
    facts: Vec<Fact>,
    customer: Option<CustomerKey>,
    first_offer: Option<Millis>,
    last_ts: Millis,
}

impl<C> State<C> {
    fn map_contacts<D>(self, mut f: impl FnMut(C) -> D) -> State<D> {
        State {
            intervals: self.intervals,
            timezone: self.timezone,
            names: self.names,
            seen_by_hour: self.seen_by_hour,
            contacts: self.contacts.into_iter().map(|(k, c)| (k, f(c))).collect(),
            customers: self.customers,
            agent_team: self.agent_team,
            awaiting_team: self.awaiting_team,
            wrap_deadlines: self.wrap_deadlines,
            agg: self.agg,
            max_ts: self.max_ts,
            last_expiry: self.last_expiry,
            stats: self.stats,
        }
    }
}

impl State<LegacyContact> {
    fn upgrade(self) -> State {
        self.map_contacts(|c| Contact {
            events: c.events.into(),
            facts: c.facts.into(),
            customer: super::held(c.customer),
            first_offer_ms: c.first_offer.unwrap_or(super::NO_OFFER),
            last_ts: c.last_ts,
            ..Contact::default()
        })
    }
}

/// Bumped whenever the layout below changes; formats 1 to 4 still restore (1 to 3
/// upgraded, 1 to 4 without a checksum to check).
const FORMAT_VERSION: u8 = 5;

/// Format 5 ends with the xxh3-64 (little-endian) of every byte before it, the
/// version byte included. A checkpoint comes back from the store after a restart or a
/// rebalance; damage to it (a disk, a hand edit, a copy cut short) is refused as such,
/// rather than decoded into other figures or an engine that fails later.
const CHECKSUM_FROM: u8 = 5;
const CHECKSUM_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot encode the engine checkpoint: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode the engine checkpoint: {0}")]
    Decode(postcard::Error),
    #[error("empty checkpoint")]
    Empty,
    #[error(
        "the engine checkpoint is damaged: {what}; the partition cannot continue from it. \
         Restore the store from a backup, or start the partition afresh (delete its checkpoint, \
         snapshots and spilled contacts, then replay)"
    )]
    Damaged { what: String },
    #[error(
        "a contact read back from the spill is damaged: {what}; its events are lost to the \
         engine, so the partition stops before storing figures without them. Restore the \
         store from a backup, or start the partition afresh (delete its checkpoint, \
         snapshots and spilled contacts, then replay)"
    )]
    SpillDamaged { what: String },
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

/// Format 4 added packed contacts; formats 1 to 3 stored [`LegacyContact`].
#[derive(Serialize, Deserialize)]
struct State<C = Contact> {
    intervals: Vec<String>,
    timezone: String,
    names: Vec<Box<str>>,
    /// Encoded as before this was a set per hour (a list per hour): same bytes.
    seen_by_hour: BTreeMap<Millis, HashSet<u128>>,
    contacts: super::table::KeyTable<C>,
    customers: super::table::KeyTable<super::CustomerContacts>,
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

/// The intervals, then one `dimension=15m+1d` entry per dimension that keeps fewer
/// than all of them (`[windows.dimensions]`): a default configuration records what
/// it recorded before the setting existed, so its checkpoints still restore; one that
/// keeps a dimension's windows differently is refused, since the windows in memory
/// were planned for the old set (which interval is updated per fact, which merged).
fn settings(cfg: &EngineConfig) -> (Vec<String>, String) {
    let mut intervals: Vec<String> = cfg.intervals.iter().map(|i| i.to_string()).collect();
    let masks = cfg.kept_masks();
    let every = cfg.every_interval();
    for (d, mask) in Dimension::ALL.into_iter().zip(masks) {
        if mask != every {
            let kept: Vec<String> = cfg
                .intervals
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, iv)| iv.to_string())
                .collect();
            intervals.push(format!("{}={}", d.as_str(), kept.join("+")));
        }
    }
    (
        intervals,
        cfg.tz.iana_name().unwrap_or("(fixed offset)").to_owned(),
    )
}

impl Engine {
    /// Serialise the engine's state. The state is moved out for encoding and put
    /// back, so this needs `&mut self` but copies nothing but the agent → team map,
    /// which the engine holds densely and the format stores as a map.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>, CheckpointError> {
        // A checkpoint commits the figures derived so far; none may be after damage.
        if let Some(what) = &self.damaged {
            return Err(CheckpointError::SpillDamaged { what: what.clone() });
        }
        self.settle();
        let (intervals, timezone) = settings(&self.cfg);
        let state = State {
            intervals,
            timezone,
            names: self.syms.names().to_vec(),
            seen_by_hour: std::mem::take(&mut self.seen_by_hour),
            contacts: std::mem::take(&mut self.contacts),
            customers: std::mem::take(&mut self.customers),
            // Stored as a map, as before the engine held it densely.
            agent_team: self.agent_team.iter().collect(),
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
            .map(|mut buf| {
                seal(&mut buf);
                buf
            })
            .map_err(CheckpointError::Encode);
        // Put everything back whether or not encoding worked.
        self.seen_by_hour = state.seen_by_hour;
        self.contacts = state.contacts;
        self.customers = state.customers;
        self.awaiting_team = state.awaiting_team;
        self.wrap_deadlines = state.wrap_deadlines;
        self.agg.put_state(state.agg);
        self.stats = state.stats;
        encoded
    }

    /// An engine continuing from `bytes` (made by [`Engine::checkpoint`]) under `cfg`.
    pub fn restore(cfg: EngineConfig, bytes: &[u8]) -> Result<Engine, CheckpointError> {
        let (&version, _) = bytes.split_first().ok_or(CheckpointError::Empty)?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(CheckpointError::Version { found: version });
        }
        let body = if version >= CHECKSUM_FROM {
            &checked(bytes)?[1..]
        } else {
            &bytes[1..]
        };
        let (s, rest): (State, &[u8]) = if version >= 4 {
            postcard::take_from_bytes(body).map_err(CheckpointError::Decode)?
        } else {
            let (legacy, rest): (State<LegacyContact>, &[u8]) =
                postcard::take_from_bytes(body).map_err(CheckpointError::Decode)?;
            (legacy.upgrade(), rest)
        };
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
                what: "[windows] intervals (with [windows.dimensions])",
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
        // What the engine later indexes or decodes on trust, checked now: a checkpoint
        // consistent in its bytes (format 5's checksum) can still be a bug's.
        if let Err(what) = s.agg.check(cfg.intervals.len()) {
            return Err(CheckpointError::Damaged { what: what.into() });
        }
        if let Some((key, _)) = s.contacts.iter().find(|(_, c)| !c.packed_decodes()) {
            return Err(CheckpointError::Damaged {
                what: format!("the packed events of contact {key:032x} do not decode"),
            });
        }
        // The agent -> team map is held densely by symbol: a symbol past the
        // interner's names would size it by that number, up to 2^32 slots.
        let known = s.names.len();
        if s.agent_team
            .iter()
            .any(|(a, t)| a.index() >= known || t.index() >= known)
        {
            return Err(CheckpointError::Damaged {
                what: "the agent -> team map names a symbol past the names held".into(),
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
        e.syms = std::sync::Arc::new(syms);
        e.seen_by_hour = s.seen_by_hour;
        e.contacts = s.contacts;
        e.customers = s.customers;
        e.agent_team = s.agent_team.into_iter().collect();
        e.awaiting_team = s.awaiting_team;
        e.wrap_deadlines = s.wrap_deadlines;
        e.index_wrap_deadlines();
        e.mark_shared_customers();
        e.agg.put_state(s.agg);
        e.max_ts = s.max_ts;
        e.last_expiry = s.last_expiry;
        e.stats = s.stats;
        e.stats.expired = extra.expired;
        e.stats.overflowed = extra.overflowed;
        if !e.stats.plausible() {
            return Err(CheckpointError::Damaged {
                what: "an input counter is past 2^62".into(),
            });
        }
        // A format-2 checkpoint has no admission: names are admitted afresh as they
        // come, up to the limits.
        e.admission = extra.admission;
        e.floor = floor;
        e.queue_unpacked();
        e.agg.rebuild_rolling(e.max_ts);
        Ok(e)
    }
}

/// Appends the checksum of everything in `buf` (format 5 on).
fn seal(buf: &mut Vec<u8>) {
    let sum = xxhash_rust::xxh3::xxh3_64(buf);
    buf.extend_from_slice(&sum.to_le_bytes());
}

/// `bytes` without their checksum, once it matches (format 5 on).
fn checked(bytes: &[u8]) -> Result<&[u8], CheckpointError> {
    let Some(split) = bytes.len().checked_sub(CHECKSUM_BYTES).filter(|n| *n > 0) else {
        return Err(CheckpointError::Damaged {
            what: format!("{} bytes, too short to hold its checksum", bytes.len()),
        });
    };
    let (data, stored) = bytes.split_at(split);
    let mut le = [0; CHECKSUM_BYTES];
    le.copy_from_slice(stored);
    let (stored, computed) = (u64::from_le_bytes(le), xxhash_rust::xxh3::xxh3_64(data));
    if stored != computed {
        return Err(CheckpointError::Damaged {
            what: format!(
                "its checksum does not match its {} bytes (stored {stored:016x}, computed {computed:016x})",
                bytes.len()
            ),
        });
    }
    Ok(data)
}

/// Damage done to a checkpoint behind a matching checksum, for tests of restore's
/// checks.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Damage {
    /// A window names an interval past the configured ones.
    Interval,
    /// A packed contact's bytes do not decode.
    Packed,
    /// An accumulator's count past 2^62.
    Counter,
    /// An input counter past 2^62.
    Stats,
}

#[cfg(test)]
impl Engine {
    /// This engine's checkpoint with `damage` done to its state, sealed again: the
    /// bytes are consistent, their meaning is not. `None` when the state has nothing
    /// to damage that way.
    pub(crate) fn checkpoint_damaged(&mut self, damage: Damage) -> Option<Vec<u8>> {
        self.checkpoint_edited(|s| match damage {
            Damage::Interval => s
                .agg
                .renumber_a_window(u8::try_from(s.intervals.len()).unwrap()),
            Damage::Packed => s
                .contacts
                .iter_mut()
                .find_map(|(_, c)| c.packed.as_mut())
                .map(|b| *b = Box::new([0xff; 3]))
                .is_some(),
            Damage::Counter => s.agg.an_acc_mut().map(|a| a.offered = 1 << 62).is_some(),
            Damage::Stats => {
                s.stats.read = u64::MAX;
                true
            }
        })
    }

    /// This engine's checkpoint with `team` recorded as `agent`'s team, symbols given
    /// by number whether or not the interner holds them: for tests of a corrupt map.
    pub(crate) fn checkpoint_with_agent_team(&mut self, agent: u32, team: u32) -> Vec<u8> {
        let sym = |n: u32| Sym::from_raw(std::num::NonZeroU32::new(n).unwrap());
        self.checkpoint_edited(|s| {
            s.agent_team.insert(sym(agent), sym(team));
            true
        })
        .unwrap()
    }

    /// This engine's checkpoint with its state changed by `edit`, sealed again as the
    /// engine seals its own: the damage is in the meaning, not the bytes. `None` when
    /// `edit` found nothing to change.
    fn checkpoint_edited(&mut self, edit: impl FnOnce(&mut State) -> bool) -> Option<Vec<u8>> {
        let bytes = self.checkpoint().unwrap();
        let data = checked(&bytes).unwrap();
        let (mut s, rest): (State, &[u8]) = postcard::take_from_bytes(&data[1..]).unwrap();
        let done = edit(&mut s);
        let mut out = postcard::to_extend(&s, vec![bytes[0]]).unwrap();
        out.extend_from_slice(rest);
        seal(&mut out);
        done.then_some(out)
    }

    /// This engine's state in an older checkpoint `version` (1 to 4), as the
    /// binaries of that format wrote it: for tests of the upgrade path.
    pub(crate) fn checkpoint_as(&mut self, version: u8) -> Vec<u8> {
        let mut bytes = self.checkpoint().unwrap();
        bytes.truncate(bytes.len() - CHECKSUM_BYTES);
        if version == 4 {
            bytes[0] = 4;
            return bytes;
        }
        let (s, rest): (State, &[u8]) = postcard::take_from_bytes(&bytes[1..]).unwrap();
        let (floor, extra): (super::live::Floor, &[u8]) = postcard::take_from_bytes(rest).unwrap();
        let legacy = s.map_contacts(|mut c| {
            c.unpack();
            LegacyContact {
                // Before the vectors move out of `c` (fields are built in this order).
                first_offer: c.first_offer(),
                events: c.events.into(),
                facts: c.facts.into(),
                customer: c.customer.map(std::num::NonZeroU128::get),
                last_ts: c.last_ts,
            }
        });
        let mut out = postcard::to_extend(&legacy, vec![version]).unwrap();
        if version >= 2 {
            out = postcard::to_extend(&floor, out).unwrap();
        }
        if version >= 3 {
            out.extend_from_slice(extra);
        }
        out
    }
}
