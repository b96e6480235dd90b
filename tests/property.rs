//! The engine against a naive oracle: for random event sets, applied shuffled, with
//! duplicates and flushes at random points, the merged snapshots must equal a
//! recompute-from-scratch over the final, sorted, deduplicated set.

use std::collections::{BTreeMap, HashMap, HashSet};

use ccmetrics::engine::acc::Acc;
use ccmetrics::engine::contact::{self, CEvent, Ctx, Ms, Side};
use ccmetrics::engine::intern::Interner;
use ccmetrics::engine::window::{Interval, Windower};
use ccmetrics::engine::{ALL_KEY, Dimension, Engine, EngineConfig, SnapshotDelta, UNKNOWN_KEY};
use ccmetrics::event::{Channel, Event, EventType, Millis};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const T0: Millis = 1_795_392_000_000;
type Key = (Interval, Millis, Dimension, String);

fn base(id: String, kind: EventType, ts: Millis, contact: &str) -> Event<'static> {
    Event {
        event_id: id.into(),
        kind,
        ts,
        contact_id: Some(contact.to_owned().into()),
        channel: None,
        queue: None,
        agent_id: None,
        team: None,
        customer_id: None,
        to_agent_id: None,
        to_queue: None,
        talk_ms: None,
        hold_ms: None,
        wrap_ms: None,
        amount: None,
        score: None,
        state: None,
        reason: None,
    }
}

/// A random but plausible-to-hostile event set: lifecycles with random gaps, missing
/// steps, repeats by a few customers, transfers, surveys, conversions, QA.
fn scenario(seed: u64, contacts: usize) -> Vec<Event<'static>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut n = 0;
    let mut id = || {
        n += 1;
        format!("e{n}")
    };
    for ci in 0..contacts {
        let contact = format!("c{ci}");
        let agent = |r: &mut SmallRng| format!("a{}", r.random_range(0..4));
        let with_agent = |mut e: Event<'static>, a: &str| {
            e.team = Some(format!("team-{}", &a[1..]).into());
            e.agent_id = Some(a.to_owned().into());
            e
        };
        let mut t = T0 + rng.random_range(0..4 * 3_600_000);
        let mut o = base(id(), EventType::ContactOffered, t, &contact);
        o.channel = Some(Channel::ALL[rng.random_range(0..5)]);
        o.queue = Some(format!("q{}", rng.random_range(0..3)).into());
        if rng.random_bool(0.7) {
            o.customer_id = Some(format!("k{}", rng.random_range(0..(contacts / 3 + 1))).into());
        }
        if rng.random_bool(0.95) {
            out.push(o.clone());
        }
        let a1 = agent(&mut rng);
        if rng.random_bool(0.5) {
            t += rng.random_range(0..20_000);
            out.push(with_agent(
                base(id(), EventType::ContactRouted, t, &contact),
                &a1,
            ));
        }
        t += rng.random_range(0..60_000);
        if rng.random_bool(0.2) {
            out.push(base(id(), EventType::ContactAbandoned, t, &contact));
            continue;
        }
        out.push(with_agent(
            base(id(), EventType::ContactAnswered, t, &contact),
            &a1,
        ));
        if rng.random_bool(0.5) {
            t += rng.random_range(0..90_000);
            out.push(with_agent(
                base(id(), EventType::ContactFirstResponse, t, &contact),
                &a1,
            ));
        }
        if rng.random_bool(0.15) {
            t += rng.random_range(0..300_000);
            let mut tr = with_agent(base(id(), EventType::ContactTransferred, t, &contact), &a1);
            tr.to_agent_id = Some(agent(&mut rng).into());
            out.push(tr);
        }
        t += rng.random_range(0..600_000);
        let mut end = base(id(), EventType::ContactEnded, t, &contact);
        if rng.random_bool(0.3) {
            end.hold_ms = Some(rng.random_range(0..30_000));
        }
        if rng.random_bool(0.9) {
            out.push(end);
        }
        if rng.random_bool(0.8) {
            // Sometimes beyond the 10 min wrap timeout.
            t += rng.random_range(0..700_000);
            out.push(base(id(), EventType::ContactWrapped, t, &contact));
        }
        if rng.random_bool(0.7) {
            t += rng.random_range(0..60_000);
            out.push(base(id(), EventType::ContactResolved, t, &contact));
            if rng.random_bool(0.1) {
                out.push(base(id(), EventType::ContactReopened, t + 1000, &contact));
            }
        }
        if rng.random_bool(0.2) {
            let mut cv = base(id(), EventType::ContactConverted, t + 5000, &contact);
            cv.amount = Some(rng.random_range(0..5_000_000));
            out.push(cv);
        }
        if rng.random_bool(0.3) {
            let mut s = base(
                id(),
                EventType::SurveyResponded,
                t + rng.random_range(0..3_600_000),
                &contact,
            );
            s.score = Some(rng.random_range(1..=5) * 10_000);
            out.push(s);
        }
        if rng.random_bool(0.1) {
            let mut q = with_agent(
                base(id(), EventType::QaScored, t + 7_200_000, &contact),
                &a1,
            );
            q.score = Some(rng.random_range(0..=1_000_000));
            out.push(q);
        }
    }
    out
}

fn merge(out: &mut BTreeMap<Key, Acc>, deltas: Vec<SnapshotDelta>) {
    for d in deltas {
        let k = (d.interval, d.start, d.dimension, d.key);
        let a = out.entry(k.clone()).or_default();
        a.merge(&d.acc);
        if a.is_zero() {
            out.remove(&k);
        }
    }
}

/// The oracle: no dedup set, no retraction, no watermark — sort, group, derive once.
fn oracle(cfg: &EngineConfig, events: &[Event<'static>]) -> BTreeMap<Key, Acc> {
    let mut syms = Interner::default();
    let unknown = syms.intern(UNKNOWN_KEY);
    let all = syms.intern(ALL_KEY);
    let channels = Channel::ALL.map(|c| syms.intern(c.as_str()));
    let mut seen = HashSet::new();
    let mut by_contact: BTreeMap<String, Vec<CEvent>> = BTreeMap::new();
    let mut agent_team = HashMap::new();
    let mut customers: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        if !seen.insert(e.event_id.clone()) {
            continue;
        }
        let agent = e.agent_id.as_deref().map(|a| syms.intern(a));
        let team = e.team.as_deref().map(|a| syms.intern(a));
        if let (Some(a), Some(t)) = (agent, team) {
            agent_team.insert(a, t);
        }
        by_contact
            .entry(e.contact_id.clone().unwrap_or_default().into_owned())
            .or_default()
            .push(CEvent {
                ts: e.ts,
                kind: e.kind,
                id_hash: xxhash_rust::xxh3::xxh3_128(e.event_id.as_bytes()) as u64,
                agent,
                team,
                queue: e.queue.as_deref().map(|q| syms.intern(q)),
                channel: e.channel,
                to_agent: e.to_agent_id.as_deref().map(|a| syms.intern(a)),
                talk_ms: e.talk_ms.map(|v| Ms::new(v as u32)),
                hold_ms: e.hold_ms.map(|v| Ms::new(v as u32)),
                wrap_ms: e.wrap_ms.map(|v| Ms::new(v as u32)),
                value: e.amount.or(e.score).unwrap_or(0),
            });
        if let (Some(c), Some(k)) = (&e.contact_id, &e.customer_id) {
            customers
                .entry(c.to_string())
                .or_insert_with(|| k.to_string());
        }
    }
    for evs in by_contact.values_mut() {
        evs.sort_by_key(|e| e.sort_key());
    }
    let first_offer = |evs: &[CEvent]| {
        evs.iter()
            .find(|e| e.kind == EventType::ContactOffered)
            .map(|e| e.ts)
    };
    let mut windower = Windower::new(cfg.tz.clone());
    let mut out: BTreeMap<Key, Acc> = BTreeMap::new();
    for (cid, evs) in &by_contact {
        let repeats: Vec<Millis> = match customers.get(cid) {
            Some(k) => by_contact
                .iter()
                .filter(|(other, _)| *other != cid && customers.get(*other) == Some(k))
                .filter_map(|(_, o)| first_offer(o))
                .collect(),
            None => vec![],
        };
        let at = |a| agent_team.get(&a).copied();
        let ctx = Ctx {
            rules: &cfg.rules,
            watermark: Millis::MAX,
            repeat_offers: &repeats,
            unknown,
            channels: &channels,
            agent_team: &at,
        };
        for f in contact::derive(evs, &ctx).facts {
            let mut dims = vec![];
            if f.side != Side::Agent {
                dims.extend([
                    (Dimension::All, all),
                    (Dimension::Channel, f.channel),
                    (Dimension::Queue, f.queue),
                ]);
            }
            if let (true, Some(a)) = (f.side != Side::Queue, f.agent) {
                dims.extend([(Dimension::Team, f.team), (Dimension::Agent, a)]);
            }
            for iv in &cfg.intervals {
                let (start, _) = windower.window(*iv, f.ts);
                for (d, k) in &dims {
                    out.entry((*iv, start, *d, syms.name(*k).to_owned()))
                        .or_default()
                        .apply(&f.measure, 1);
                }
            }
        }
    }
    out.retain(|_, a| !a.is_zero());
    out
}

fn check(seed: u64, contacts: usize, dup_rate: f64, flush_every: usize) {
    check_with(
        seed,
        contacts,
        dup_rate,
        flush_every,
        EngineConfig::default().intervals,
    );
}

fn check_with(
    seed: u64,
    contacts: usize,
    dup_rate: f64,
    flush_every: usize,
    intervals: Vec<Interval>,
) {
    let cfg = EngineConfig {
        tz: jiff::tz::TimeZone::get("America/New_York").unwrap(),
        intervals,
        ..EngineConfig::default()
    };
    let events = scenario(seed, contacts);
    let expected = oracle(&cfg, &events);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut input = events.clone();
    let dups: Vec<Event<'static>> = events
        .iter()
        .filter(|_| rng.random_bool(dup_rate))
        .cloned()
        .collect();
    input.extend(dups);
    input.shuffle(&mut rng);
    let mut engine = Engine::new(cfg);
    let mut got = BTreeMap::new();
    for (i, e) in input.into_iter().enumerate() {
        engine.apply(e);
        if flush_every > 0 && i % flush_every == 0 {
            merge(&mut got, engine.flush());
        }
    }
    merge(&mut got, engine.flush_all());
    assert_eq!(engine.stats().accepted as usize, events.len());
    if got != expected {
        for k in expected.keys().chain(got.keys()).collect::<HashSet<_>>() {
            if expected.get(k) != got.get(k) {
                panic!(
                    "seed {seed}: {k:?}\n expected {:?}\n got      {:?}",
                    expected.get(k),
                    got.get(k)
                );
            }
        }
    }
}

/// The Kafka daemon's recovery contract, without Kafka: at every flush the deltas and
/// a checkpoint are "committed" together with the input position; at random points
/// the process "crashes" (everything since the last commit is lost), restores the
/// checkpoint and re-reads the input from the committed position. The committed
/// snapshots must still equal the oracle: nothing lost, nothing counted twice.
fn check_crashes(seed: u64, contacts: usize, dup_rate: f64, flush_every: usize, crash_rate: f64) {
    let cfg = EngineConfig::default();
    let events = scenario(seed, contacts);
    let expected = oracle(&cfg, &events);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc4a5);
    let mut input = events.clone();
    let dups: Vec<Event<'static>> = events
        .iter()
        .filter(|_| rng.random_bool(dup_rate))
        .cloned()
        .collect();
    input.extend(dups);
    input.shuffle(&mut rng);

    let mut committed: BTreeMap<Key, Acc> = BTreeMap::new();
    let mut engine = Engine::new(cfg.clone());
    let mut checkpoint = engine.checkpoint().unwrap();
    let mut committed_pos = 0;
    let mut uncommitted: Vec<SnapshotDelta> = Vec::new();
    let mut pos = 0;
    let mut crashes = 0;
    while pos < input.len() {
        engine.apply(input[pos].clone());
        pos += 1;
        if pos % flush_every.max(1) == 0 {
            uncommitted.extend(engine.flush());
            // Commit: deltas + state + position, atomically.
            merge(&mut committed, std::mem::take(&mut uncommitted));
            checkpoint = engine.checkpoint().unwrap();
            committed_pos = pos;
        }
        if crashes < 50 && rng.random_bool(crash_rate) {
            crashes += 1;
            uncommitted.clear();
            engine = Engine::restore(cfg.clone(), &checkpoint).unwrap();
            pos = committed_pos;
        }
    }
    merge(&mut committed, engine.flush_all());
    assert_eq!(engine.stats().accepted as usize, events.len());
    assert_eq!(committed, expected, "seed {seed}: {crashes} crashes");
}

/// `default` cases, or `PROPTEST_CASES` when set: CI runs the defaults, a longer hunt
/// for rare draws sets the variable (proptest's own default reads it too, but the
/// counts set here would override it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]
    #[test]
    fn engine_equals_oracle(seed in any::<u64>(), contacts in 1usize..60, dup in 0.0f64..0.5, flush_every in 0usize..40) {
        check(seed, contacts, dup, flush_every);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]
    #[test]
    fn crash_and_restore_from_checkpoints_equals_oracle(seed in any::<u64>(), contacts in 1usize..60, dup in 0.0f64..0.3, flush_every in 1usize..40, crash in 0.0f64..0.1) {
        check_crashes(seed, contacts, dup, flush_every, crash);
    }
}

#[test]
fn crashes_on_a_larger_set() {
    check_crashes(5, 1500, 0.05, 53, 0.01);
}

/// A checkpoint taken under one interval grid cannot be restored under another.
#[test]
fn checkpoint_refuses_other_intervals() {
    let mut e = Engine::new(EngineConfig::default());
    for ev in scenario(1, 5) {
        e.apply(ev);
    }
    let bytes = e.checkpoint().unwrap();
    let other = EngineConfig {
        intervals: vec!["30m".parse().unwrap()],
        ..EngineConfig::default()
    };
    let err = Engine::restore(other, &bytes).err().unwrap().to_string();
    assert!(err.contains("intervals"), "{err}");
    assert!(Engine::restore(EngineConfig::default(), &bytes[..bytes.len() / 2]).is_err());
    assert!(Engine::restore(EngineConfig::default(), &[]).is_err());
}

#[test]
fn larger_set_in_sorted_and_shuffled_order() {
    check(7, 2000, 0.05, 97);
}

/// Intervals that do not nest (10 min does not divide 15 min) take the per-interval
/// path instead of merging coarse windows from the finest.
#[test]
fn intervals_that_do_not_nest() {
    let ivs = ["10m", "15m", "1d"].map(|s| s.parse().unwrap()).to_vec();
    check_with(11, 500, 0.05, 13, ivs);
}

/// Replay runs without live views; the snapshots must not depend on that.
#[test]
fn live_views_do_not_change_snapshots() {
    let events = scenario(3, 300);
    let run = |live: bool| {
        let mut e = Engine::new(EngineConfig {
            live,
            ..EngineConfig::default()
        });
        let mut got = BTreeMap::new();
        for (i, ev) in events.iter().cloned().enumerate() {
            e.apply(ev);
            if i % 17 == 0 {
                merge(&mut got, e.flush());
            }
        }
        merge(&mut got, e.flush_all());
        got
    };
    assert_eq!(run(true), run(false));
}
