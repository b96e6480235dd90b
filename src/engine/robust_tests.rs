//! Robustness (issue 7): contacts that never finish are released and counted as
//! `expired`; a flood of distinct keys is folded into `__overflow__` within the
//! configured limits; both survive a checkpoint.

use super::limits::{KeyDim, KeyLimits, OVERFLOW_KEY};
use super::*;
use crate::event::decode;

const T0: Millis = 1_795_392_000_000; // 2026-11-23T00:00:00Z
const DAY: f64 = 86_400.0;

fn ev(line: String) -> Event<'static> {
    decode(line.as_bytes())
        .map(Event::into_owned)
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn at(secs: f64) -> Millis {
    T0 + (secs * 1000.0) as i64
}

fn offered(id: &str, contact: &str, secs: f64, queue: &str, customer: &str) -> Event<'static> {
    ev(format!(
        r#"{{"event_id":"{id}","type":"contact.offered","ts":{},"contact_id":"{contact}","channel":"voice","queue":"{queue}","customer_id":"{customer}"}}"#,
        at(secs)
    ))
}

fn answered(id: &str, contact: &str, secs: f64, agent: &str, team: &str) -> Event<'static> {
    ev(format!(
        r#"{{"event_id":"{id}","type":"contact.answered","ts":{},"contact_id":"{contact}","agent_id":"{agent}","team":"{team}"}}"#,
        at(secs)
    ))
}

fn simple(id: &str, kind: &str, contact: &str, secs: f64) -> Event<'static> {
    ev(format!(
        r#"{{"event_id":"{id}","type":"{kind}","ts":{},"contact_id":"{contact}"}}"#,
        at(secs)
    ))
}

#[test]
fn contacts_that_never_finish_are_released_at_the_horizon_and_counted() {
    let mut e = Engine::new(EngineConfig::default());
    // Never finishes: offered and answered, then nothing.
    e.apply(offered("1", "stuck", 0.0, "q", "k1"));
    e.apply(answered("2", "stuck", 5.0, "a", "t"));
    // Finishes: abandoned, and ended.
    e.apply(offered("3", "gone", 0.0, "q", "k2"));
    e.apply(simple("4", "contact.abandoned", "gone", 9.0));
    e.apply(offered("5", "done", 0.0, "q", "k3"));
    e.apply(answered("6", "done", 2.0, "a", "t"));
    e.apply(simple("7", "contact.ended", "done", 60.0));
    // Only a late survey: it never started here, so it did not expire either.
    e.apply(ev(format!(
        r#"{{"event_id":"8","type":"survey.responded","ts":{},"contact_id":"orphan","score":4}}"#,
        at(10.0)
    )));
    assert_eq!(e.open_contacts(), 4);
    // Within the horizon nothing is released.
    e.apply(offered("9", "later", 6.0 * DAY, "q", "k4"));
    e.flush();
    assert_eq!((e.open_contacts(), e.stats().expired), (5, 0));
    // Past watermark - horizon (7 days + lateness) the old four are released; only the
    // unfinished one counts as expired.
    e.apply(offered("10", "much-later", 8.0 * DAY, "q", "k5"));
    e.flush();
    assert_eq!(e.open_contacts(), 2, "old contacts released");
    assert_eq!(e.stats().expired, 1);
    // Its id is gone too: a straggler for it is too late, not a new contact.
    assert_eq!(
        e.apply(simple("11", "contact.ended", "stuck", 20.0)),
        Outcome::Rejected(RejectReason::TooLate)
    );
    // The counter survives a checkpoint.
    let bytes = e.checkpoint().unwrap();
    let r = Engine::restore(EngineConfig::default(), &bytes).unwrap();
    assert_eq!(r.stats().expired, 1);
    assert_eq!(r.open_contacts(), 2);
}

/// Expiry follows event time, not flushes: `serve` flushes only when it prepares a
/// store commit, so with commits behind, contacts past the horizon used to stay.
#[test]
fn contacts_past_the_horizon_are_released_without_a_flush() {
    let mut e = Engine::new(EngineConfig {
        correction_horizon_ms: 5 * 60_000,
        allowed_lateness_ms: 30_000,
        ..EngineConfig::default()
    });
    e.apply(offered("1", "stuck", 0.0, "q", "k1"));
    e.apply(answered("2", "stuck", 5.0, "a", "t"));
    // Other contacts keep event time moving for 20 minutes; nothing is flushed.
    for i in 0..40 {
        let t = 30.0 * f64::from(i + 1);
        e.apply(offered(
            &format!("o{i}"),
            &format!("c{i}"),
            t,
            "q",
            &format!("k{i}"),
        ));
        e.apply(simple(
            &format!("a{i}"),
            "contact.abandoned",
            &format!("c{i}"),
            t + 1.0,
        ));
    }
    // Held: the contacts of the last horizon + lateness (5.5 min, 11 of them) and at
    // most one expiry period (horizon / 8) more; "stuck" is gone and counted.
    assert!(
        e.open_contacts() <= 14,
        "{} contacts held",
        e.open_contacts()
    );
    assert_eq!(e.stats().expired, 1);
    // An idle partition's wall-clock advance releases the rest.
    e.advance_to(at(3_600.0));
    assert_eq!(e.open_contacts(), 0);
}

#[test]
fn a_flood_of_distinct_keys_is_folded_into_overflow() {
    let limits = KeyLimits {
        agents: 3,
        teams: 2,
        queues: 2,
        customers: 4,
    };
    let cfg = EngineConfig {
        intervals: vec![Interval::Day],
        limits,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg.clone());
    let n = 2000;
    for i in 0..n {
        let c = format!("c{i}");
        let s = i as f64;
        e.apply(offered(
            &format!("o{i}"),
            &c,
            s,
            &format!("q{i}"),
            &format!("k{i}"),
        ));
        e.apply(answered(
            &format!("a{i}"),
            &c,
            s + 0.5,
            &format!("ag{i}"),
            &format!("t{i}"),
        ));
    }
    let st = e.stats().clone();
    assert_eq!(st.accepted, 2 * n as u64, "every event still counts");
    // Keys admitted first keep their names; every later one is folded and counted.
    assert_eq!(st.overflowed.get(&KeyDim::Queue), Some(&(n as u64 - 2)));
    assert_eq!(st.overflowed.get(&KeyDim::Agent), Some(&(n as u64 - 3)));
    assert_eq!(st.overflowed.get(&KeyDim::Team), Some(&(n as u64 - 2)));
    assert_eq!(st.overflowed.get(&KeyDim::Customer), Some(&(n as u64 - 4)));
    // Memory: the interner holds the fixed names plus the admitted few, not 8 000.
    assert!(e.syms.len() < 30, "{} names interned", e.syms.len());
    assert!(e.customers.len() <= 4);

    let out = e.flush_all();
    let keys = |d: Dimension| -> BTreeMap<String, i64> {
        out.iter()
            .filter(|x| x.dimension == d)
            .map(|x| (x.key.clone(), x.acc.offered + x.acc.answered))
            .collect()
    };
    let queues = keys(Dimension::Queue);
    assert_eq!(
        queues.keys().map(String::as_str).collect::<Vec<_>>(),
        ["__overflow__", "q0", "q1"]
    );
    assert_eq!(queues.get(OVERFLOW_KEY).copied(), Some(2 * (n as i64 - 2)));
    let agents = keys(Dimension::Agent);
    assert_eq!(agents.len(), 4, "{agents:?}");
    assert!(agents.contains_key(OVERFLOW_KEY));
    // Nothing is lost: the centre still sees every contact.
    let all: i64 = out
        .iter()
        .filter(|x| x.dimension == Dimension::All)
        .map(|x| x.acc.offered)
        .sum();
    assert_eq!(all, n as i64);

    // Admission survives a checkpoint: an admitted key stays itself, a new one folds.
    let bytes = e.checkpoint().unwrap();
    let mut r = Engine::restore(cfg, &bytes).unwrap();
    assert_eq!(r.stats().overflowed, st.overflowed);
    r.apply(offered("x1", "cx", 10.0, "q1", "kx"));
    r.apply(offered("x2", "cy", 10.0, "brand-new", "ky"));
    assert_eq!(
        r.stats().overflowed.get(&KeyDim::Queue),
        Some(&(n as u64 - 1))
    );
}

#[test]
fn stats_merge_adds_the_new_counters() {
    let mut a = Stats {
        expired: 2,
        ..Stats::default()
    };
    a.overflowed.insert(KeyDim::Agent, 3);
    let mut b = Stats {
        expired: 1,
        ..Stats::default()
    };
    b.overflowed.insert(KeyDim::Agent, 1);
    b.overflowed.insert(KeyDim::Queue, 5);
    a.merge(&b);
    assert_eq!(a.expired, 3);
    assert_eq!(a.overflowed.get(&KeyDim::Agent), Some(&4));
    assert_eq!(a.overflowed.get(&KeyDim::Queue), Some(&5));
}

#[test]
fn a_format_2_checkpoint_still_restores() {
    // Format 3 appended one segment (expired, overflowed, admission) after the floor;
    // format 4 packs contacts. `checkpoint_as` writes the older layouts.
    let mut e = Engine::new(EngineConfig::default());
    e.apply(simple("1", "contact.abandoned", "c1", 0.0));
    e.apply(simple("2", "contact.abandoned", "c2", 60.0));
    let v3 = e.checkpoint_as(3);
    let r3 = Engine::restore(EngineConfig::default(), &v3).unwrap();
    assert_eq!(r3.open_contacts(), 2);
    assert_eq!(r3.stats(), e.stats());
    let v2 = e.checkpoint_as(2);
    assert_eq!(v2[0], 2);
    let mut r = Engine::restore(EngineConfig::default(), &v2).unwrap();
    assert_eq!(r.open_contacts(), 2);
    assert_eq!(r.stats(), e.stats());
    // Names are admitted afresh after such a restore.
    r.apply(offered("3", "c3", 90.0, "q", "k"));
    assert!(r.stats().overflowed.is_empty());
}

/// Agent-state ids are remembered for an hour or two of event time, not the 7-day
/// horizon: a day of state changes leaves only the last hours' ids, and a redelivery
/// older than that is accepted but changes nothing on the floor.
#[test]
fn agent_state_ids_are_kept_for_hours_not_the_horizon() {
    let state = |id: &str, agent: &str, secs: f64, s: &str| {
        ev(format!(
            r#"{{"event_id":"{id}","type":"agent.state","ts":{},"agent_id":"{agent}","team":"t","state":"{s}"}}"#,
            at(secs)
        ))
    };
    let mut e = Engine::new(EngineConfig::default());
    assert_eq!(e.apply(state("first", "a", 0.0, "busy")), Outcome::Accepted);
    assert_eq!(
        e.apply(state("first", "a", 0.0, "busy")),
        Outcome::Duplicate
    );
    // A state change every minute for a day, across 100 agents.
    for m in 1..1_440 {
        let agent = format!("b{}", m % 100);
        let s = if m % 2 == 0 { "busy" } else { "available" };
        e.apply(state(&format!("s{m}"), &agent, m as f64 * 60.0, s));
        e.flush();
    }
    let held = e.agent_state_ids();
    assert!(held <= 180, "{held} agent-state ids held after a day");
    let before = e.floor(at(DAY)).agents.clone();
    // The first event again, a day late: no longer known, accepted, and no effect.
    assert_eq!(e.apply(state("first", "a", 0.0, "busy")), Outcome::Accepted);
    assert_eq!(e.floor(at(DAY)).agents, before);
    assert_eq!(e.stats().duplicates, 1);

    // Late states scattered over the past days (inside the horizon, so accepted) while
    // the clock stands still: each opens an hour of its own, and a look-up probes
    // every hour held, so the hours before the dedup window go at once rather than
    // at the next hourly expiry.
    for h in 2..150 {
        let secs = DAY - f64::from(h) * 3_600.0;
        e.apply(state(&format!("late{h}"), "c", secs, "busy"));
        assert!(
            e.seen_by_hour.len() <= 3,
            "{} hours held",
            e.seen_by_hour.len()
        );
    }
    // A redelivery inside the window is still caught.
    assert_eq!(
        e.apply(state("recent", "c", DAY, "away")),
        Outcome::Accepted
    );
    assert_eq!(
        e.apply(state("recent", "c", DAY, "away")),
        Outcome::Duplicate
    );
}

/// The agent → team map is held densely by symbol, so a corrupt checkpoint naming a
/// symbol far past the interner's names would size it by that number (2^32 slots of
/// 4 bytes). Restore refuses such a checkpoint instead, and still takes one whose
/// symbols are all known.
#[test]
fn a_checkpoint_naming_unknown_symbols_in_the_team_map_is_refused() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(answered("1", "c1", 10.0, "agent-1", "alpha"));
    let agent = e.syms.get("agent-1").expect("interned").raw();
    let team = e.syms.get("alpha").expect("interned").raw();
    let known = e.checkpoint_with_agent_team(agent, team);
    let r = Engine::restore(EngineConfig::default(), &known).expect("known symbols restore");
    assert_eq!(
        r.agent_team.get(r.syms.get("agent-1").unwrap()),
        r.syms.get("alpha")
    );
    for (a, t) in [(u32::MAX, team), (agent, u32::MAX)] {
        let corrupt = e.checkpoint_with_agent_team(a, t);
        assert!(
            matches!(
                Engine::restore(EngineConfig::default(), &corrupt),
                Err(checkpoint::CheckpointError::Damaged { what })
                    if what.contains("agent -> team map")
            ),
            "agent {a}, team {t}"
        );
    }
}

/// Format 5 ends with a checksum: a checkpoint damaged anywhere (a flipped bit, a copy
/// cut short) is refused as damaged instead of decoded into other figures. Format 4,
/// written before the checksum, still restores.
#[test]
fn a_damaged_checkpoint_is_refused_by_its_checksum() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(offered("1", "c1", 0.0, "q", "k"));
    e.apply(answered("2", "c1", 30.0, "agent-1", "alpha"));
    let bytes = e.checkpoint().unwrap();
    assert_eq!(bytes[0], 5);
    Engine::restore(EngineConfig::default(), &bytes).expect("an intact checkpoint restores");
    let damaged = |what: &str, b: &[u8]| match Engine::restore(EngineConfig::default(), b) {
        Err(checkpoint::CheckpointError::Damaged { what }) => what,
        Err(other) => panic!("{what}: refused, but not as damaged: {other}"),
        Ok(_) => panic!("{what}: restored"),
    };
    for at in [1, bytes.len() / 2, bytes.len() - 9, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        assert!(
            damaged("flipped", &flipped).contains("checksum"),
            "byte {at}"
        );
    }
    assert!(damaged("cut", &bytes[..bytes.len() - 3]).contains("checksum"));
    assert!(damaged("stub", &bytes[..5]).contains("too short"));
    let message = Engine::restore(EngineConfig::default(), &bytes[..bytes.len() - 1])
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("start the partition afresh"), "{message}");

    let v4 = e.checkpoint_as(4);
    assert_eq!(v4[0], 4);
    let r = Engine::restore(EngineConfig::default(), &v4).expect("format 4 restores");
    assert_eq!(r.stats(), e.stats());
    assert_eq!(r.open_contacts(), e.open_contacts());
}

/// Behind a matching checksum, restore still checks what the engine later indexes,
/// decodes or adds to on trust: a checkpoint a bug could write is refused with what is
/// wrong, rather than panicking or wrapping later (the `checkpoint` fuzz target).
#[test]
fn a_checkpoint_consistent_in_its_bytes_but_not_its_meaning_is_refused() {
    use checkpoint::Damage;
    // Contacts packed as soon as they settle; c2 keeps a window open.
    let cfg = EngineConfig {
        pack_after_ms: 0,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg.clone());
    e.apply(offered("1", "c1", 0.0, "q", "k"));
    e.apply(answered("2", "c1", 30.0, "agent-1", "alpha"));
    e.apply(simple("3", "contact.ended", "c1", 300.0));
    e.flush();
    e.apply(offered("4", "c2", 3.0 * 3_600.0, "q", "k2"));
    e.apply(answered(
        "5",
        "c2",
        3.0 * 3_600.0 + 20.0,
        "agent-1",
        "alpha",
    ));
    e.flush();
    e.apply(simple("6", "contact.abandoned", "c3", 3.0 * 3_600.0 + 60.0));
    assert!(e.contacts_packed() > 0, "no packed contact to damage");
    for (damage, says) in [
        (Damage::Interval, "interval"),
        (Damage::Packed, "packed events"),
        (Damage::Counter, "2^62"),
        (Damage::Stats, "2^62"),
    ] {
        let bytes = e
            .checkpoint_damaged(damage)
            .unwrap_or_else(|| panic!("{damage:?}: nothing to damage"));
        match Engine::restore(cfg.clone(), &bytes) {
            Err(checkpoint::CheckpointError::Damaged { what }) => {
                assert!(what.contains(says), "{damage:?}: {what}");
            }
            Err(other) => panic!("{damage:?}: refused, but not as damaged: {other}"),
            Ok(_) => panic!("{damage:?}: restored"),
        }
    }
    // The same engine's own checkpoint restores.
    let r = Engine::restore(cfg, &e.checkpoint().unwrap()).unwrap();
    assert_eq!(r.stats(), e.stats());
}
