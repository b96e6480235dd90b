//! Unit tests: one per definition in `docs/metrics.md`.

use std::collections::BTreeMap;

use super::*;
use crate::event::{AgentState, decode};

const T0: Millis = 1_795_392_000_000; // 2026-11-23T00:00:00Z

/// Build an event line: `ev("e1", "contact.offered", 10.0, r#""contact_id":"c1","channel":"voice","queue":"q""#)`
/// with `secs` after T0.
fn ev(id: &str, kind: &str, secs: f64, extra: &str) -> Event<'static> {
    let ts = T0 + (secs * 1000.0) as i64;
    let sep = if extra.is_empty() { "" } else { "," };
    let line = format!(r#"{{"event_id":"{id}","type":"{kind}","ts":{ts}{sep}{extra}}}"#);
    decode(line.as_bytes())
        .map(Event::into_owned)
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

type Key = (Interval, Millis, Dimension, String);

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

fn run(cfg: EngineConfig, events: Vec<Event<'static>>) -> (Engine, BTreeMap<Key, Acc>) {
    let mut e = Engine::new(cfg);
    for x in events {
        e.apply(x);
    }
    let mut out = BTreeMap::new();
    merge(&mut out, e.flush_all());
    (e, out)
}

/// Sum of the 1d windows for a dimension key (tests stay inside one day).
fn day(out: &BTreeMap<Key, Acc>, dim: Dimension, key: &str) -> Acc {
    let mut a = Acc::default();
    for ((iv, _, d, k), acc) in out {
        if *iv == Interval::Day && *d == dim && k == key {
            a.merge(acc);
        }
    }
    a
}

fn c(id: &str) -> String {
    format!(r#""contact_id":"{id}""#)
}

fn offered(id: &str, contact: &str, secs: f64, queue: &str) -> Event<'static> {
    ev(
        id,
        "contact.offered",
        secs,
        &format!(
            r#"{},"channel":"voice","queue":"{queue}","customer_id":"cust-{contact}""#,
            c(contact)
        ),
    )
}

fn with_agent(id: &str, kind: &str, contact: &str, secs: f64, agent: &str) -> Event<'static> {
    ev(
        id,
        kind,
        secs,
        &format!(r#"{},"agent_id":"{agent}","team":"t-{agent}""#, c(contact)),
    )
}

fn plain(id: &str, kind: &str, contact: &str, secs: f64) -> Event<'static> {
    ev(id, kind, secs, &c(contact))
}

#[test]
fn queue_outcome_counts_when_contact_leaves_the_queue() {
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered("1", "a", 0.0, "q"),
            with_agent("2", "contact.answered", "a", 12.0, "x"),
            offered("3", "b", 10.0, "q"),
            plain("4", "contact.abandoned", "b", 13.0),
            offered("5", "c", 20.0, "q"),
            plain("6", "contact.abandoned", "c", 50.0),
            offered("7", "d", 30.0, "q"), // still waiting: in no interval
        ],
    );
    let q = day(&out, Dimension::Queue, "q");
    assert_eq!(
        (q.offered, q.answered, q.abandoned, q.short_abandoned),
        (3, 1, 2, 1)
    );
    assert_eq!(
        (q.answered_within, q.abandoned_within, q.wait_sum_ms),
        (1, 1, 12_000)
    );
    assert_eq!(day(&out, Dimension::All, ALL_KEY).offered, 3);
    assert_eq!(day(&out, Dimension::Channel, "voice").offered, 3);
    // Attributed to the leave time: contact c (offered 00:00:20) left at 00:00:50.
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(15)],
        ..EngineConfig::default()
    };
    let (_, out) = run(
        cfg,
        vec![
            offered("1", "a", 890.0, "q"),
            plain("2", "contact.abandoned", "a", 910.0),
        ],
    );
    let starts: Vec<Millis> = out.keys().map(|k| k.1).collect();
    assert!(starts.iter().all(|&s| s == T0 + 900_000), "{starts:?}");
}

#[test]
fn service_level_formulas() {
    use crate::config::SlFormula::*;
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered("1", "a", 0.0, "q"),
            with_agent("2", "contact.answered", "a", 20.0, "x"), // inclusive: within
            offered("3", "b", 0.0, "q"),
            with_agent("4", "contact.answered", "b", 21.0, "x"),
            offered("5", "c", 0.0, "q"),
            plain("6", "contact.abandoned", "c", 3.0), // short, within
            offered("7", "d", 0.0, "q"),
            plain("8", "contact.abandoned", "d", 60.0),
        ],
    );
    let q = day(&out, Dimension::Queue, "q");
    assert_eq!(crate::kpi::service_level(&q, Offered), Some(0.25));
    assert_eq!(crate::kpi::service_level(&q, Answered), Some(0.5));
    assert_eq!(crate::kpi::service_level(&q, RemovedWithin), Some(0.5));
    assert_eq!(
        crate::kpi::service_level(&q, ExclShortAbandons),
        Some(1.0 / 3.0)
    );
}

#[test]
fn agent_presentations_answers_and_abandons() {
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered("1", "a", 0.0, "q"),
            with_agent("2", "contact.routed", "a", 1.0, "x"),
            with_agent("3", "contact.routed", "a", 15.0, "y"), // x did not answer
            with_agent("4", "contact.answered", "a", 18.0, "y"),
            offered("5", "b", 0.0, "q"),
            with_agent("6", "contact.answered", "b", 5.0, "x"), // no routed: one presentation
            offered("7", "c", 0.0, "q"),
            with_agent("8", "contact.routed", "c", 2.0, "y"),
            plain("9", "contact.abandoned", "c", 9.0),
        ],
    );
    let x = day(&out, Dimension::Agent, "x");
    assert_eq!((x.offered, x.answered, x.abandoned), (2, 1, 0));
    let y = day(&out, Dimension::Agent, "y");
    assert_eq!((y.offered, y.answered, y.abandoned), (2, 1, 1));
    assert_eq!(y.wait_sum_ms, 18_000);
    let t = day(&out, Dimension::Team, "t-y");
    assert_eq!((t.offered, t.answered, t.abandoned), (2, 1, 1));
}

#[test]
fn handle_time_talk_hold_wrap_and_wrap_timeout() {
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered("1", "a", 0.0, "q"),
            with_agent("2", "contact.answered", "a", 10.0, "x"),
            ev(
                "3",
                "contact.ended",
                110.0,
                &format!(r#"{},"hold_ms":20000"#, c("a")),
            ), // talk 80 + hold 20
            plain("4", "contact.wrapped", "a", 140.0), // wrap 30
            offered("5", "b", 0.0, "q"),
            with_agent("6", "contact.answered", "b", 0.0, "x"),
            ev(
                "7",
                "contact.ended",
                60.0,
                &format!(r#"{},"talk_ms":50000,"hold_ms":5000"#, c("b")),
            ),
            ev(
                "8",
                "contact.wrapped",
                70.0,
                &format!(r#"{},"wrap_ms":15000"#, c("b")),
            ), // 50+5+15
            offered("9", "c", 0.0, "q"),
            with_agent("10", "contact.answered", "c", 0.0, "x"),
            plain("11", "contact.ended", "c", 100.0),
            plain("12", "contact.wrapped", "c", 100.0 + 601.0), // after wrap_timeout: ignored
        ],
    );
    let x = day(&out, Dimension::Agent, "x");
    assert_eq!(x.handled, 3);
    assert_eq!(x.handle_sum_ms, 130_000 + 70_000 + 100_000);
    assert_eq!(day(&out, Dimension::Queue, "q").handle_sum_ms, 300_000);
}

#[test]
fn waiting_wrap_completes_when_watermark_passes_timeout() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(15)],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    for x in [
        offered("1", "a", 0.0, "q"),
        with_agent("2", "contact.answered", "a", 10.0, "x"),
        plain("3", "contact.ended", "a", 100.0),
    ] {
        e.apply(x);
    }
    let mut out = BTreeMap::new();
    merge(&mut out, e.flush());
    assert!(out.is_empty(), "nothing closed yet");
    // Watermark = 100 s + 10 min wrap timeout: the segment completes at `ended`, late for the
    // flushed-or-not 00:00 window, and comes out on the next flush.
    e.advance_to(T0 + 1_300_000);
    merge(&mut out, e.flush());
    assert_eq!(day_like(&out, Dimension::Agent, "x").handled, 1);
    assert_eq!(day_like(&out, Dimension::Agent, "x").handle_sum_ms, 90_000);
}

/// The wrap timers hold exactly the contacts still waiting for a wrap, each once, at
/// its current deadline: a wrap or another end takes the old entry out, so no timer
/// fires for a contact that needs nothing; a checkpoint carries them exactly.
#[test]
fn wrap_timers_hold_only_waiting_contacts() {
    let timers = |e: &Engine| -> Vec<(Millis, ContactKey)> {
        e.wrap_deadlines
            .iter()
            .flat_map(|(d, ids)| ids.iter().map(move |id| (*d, *id)))
            .collect()
    };
    let mut e = Engine::new(EngineConfig::default());
    for x in [
        offered("1", "a", 0.0, "q"),
        with_agent("2", "contact.answered", "a", 10.0, "x"),
        plain("3", "contact.ended", "a", 100.0),
        offered("4", "b", 0.0, "q"),
        with_agent("5", "contact.answered", "b", 10.0, "x"),
        plain("6", "contact.ended", "b", 50.0),
    ] {
        e.apply(x);
    }
    let (a, b) = (key_of("a"), key_of("b"));
    let ten_min = 600_000;
    assert_eq!(
        timers(&e),
        vec![(T0 + 50_000 + ten_min, b), (T0 + 100_000 + ten_min, a)]
    );
    // An earlier end of `b` (out of order) moves its timer; a wrap of `a` removes its.
    e.apply(plain("7", "contact.ended", "b", 30.0));
    e.apply(plain("8", "contact.wrapped", "a", 130.0));
    assert_eq!(timers(&e), vec![(T0 + 30_000 + ten_min, b)]);
    assert_eq!(e.wrap_of.len(), 1);
    // Restored from a checkpoint, the engine knows the same timers and indexes them.
    let r = Engine::restore(EngineConfig::default(), &e.checkpoint().unwrap()).unwrap();
    assert_eq!(timers(&r), timers(&e));
    assert_eq!(r.wrap_of, e.wrap_of);
    // Past the deadline the waiting one completes and nothing is left.
    e.advance_to(T0 + 30_000 + ten_min + 300_000);
    assert!(timers(&e).is_empty() && e.wrap_of.is_empty());
    let mut out = BTreeMap::new();
    merge(&mut out, e.flush_all());
    assert_eq!(day(&out, Dimension::Agent, "x").handled, 2);
}

fn day_like(out: &BTreeMap<Key, Acc>, dim: Dimension, key: &str) -> Acc {
    let mut a = Acc::default();
    for ((_, _, d, k), acc) in out {
        if *d == dim && k == key {
            a.merge(acc);
        }
    }
    a
}

#[test]
fn transfer_splits_segments() {
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered("1", "a", 0.0, "q"),
            with_agent("2", "contact.answered", "a", 10.0, "x"),
            ev(
                "3",
                "contact.transferred",
                70.0,
                &format!(r#"{},"agent_id":"x","to_agent_id":"y""#, c("a")),
            ),
            plain("4", "contact.ended", "a", 170.0),
            plain("5", "contact.wrapped", "a", 180.0),
            plain("6", "contact.resolved", "a", 180.0),
        ],
    );
    let x = day(&out, Dimension::Agent, "x");
    assert_eq!((x.handled, x.handle_sum_ms), (1, 60_000));
    let y = day(&out, Dimension::Agent, "y");
    assert_eq!((y.handled, y.handle_sum_ms), (1, 110_000));
    // Resolution goes to the last handling agent, and a transferred contact is not FCR.
    assert_eq!((y.resolved, y.fcr), (1, 0));
    assert_eq!(
        day(&out, Dimension::Queue, "q").offered,
        1,
        "one queue outcome"
    );
}

/// `contact.offered` of `contact` on chat queue `q` by customer `who`.
fn offered_for(id: &str, contact: &str, secs: f64, who: &str) -> Event<'static> {
    ev(
        id,
        "contact.offered",
        secs,
        &format!(
            r#"{},"channel":"chat","queue":"q","customer_id":"{who}""#,
            c(contact)
        ),
    )
}

#[test]
fn a_repeat_customer_is_seen_after_a_restore_and_by_every_contact() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(60)],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg.clone());
    for x in [
        offered_for("1", "a", 0.0, "k"),
        with_agent("2", "contact.answered", "a", 5.0, "x"),
        plain("3", "contact.resolved", "a", 100.0),
        offered_for("4", "b", 3_600.0, "k"),
        offered_for("5", "z", 3_600.0, "lonely"),
    ] {
        e.apply(x);
    }
    let marks = |e: &Engine| -> Vec<bool> {
        ["a", "b", "z"]
            .iter()
            .map(|id| e.contacts[&key_of(id)].shared)
            .collect()
    };
    assert_eq!(marks(&e), [true, true, false]);
    let mut r = Engine::restore(cfg, &e.checkpoint().unwrap()).unwrap();
    assert_eq!(marks(&r), [true, true, false], "marks rebuilt on restore");
    // A late event re-derives contact a: b, the customer's repeat, still fails its FCR.
    let late = ev(
        "6",
        "survey.responded",
        200.0,
        &format!(r#"{},"score":5"#, c("a")),
    );
    for engine in [&mut e, &mut r] {
        engine.apply(late.clone());
        engine.advance_to(T0 + 86_400_000 * 8);
        let mut out = BTreeMap::new();
        merge(&mut out, engine.flush_all());
        let x = day_like(&out, Dimension::Agent, "x");
        assert_eq!((x.resolved, x.fcr), (1, 0));
    }
}

#[test]
fn fcr_repeat_reopen_and_provisional_correction() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(60)],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    for x in [
        offered_for("1", "a", 0.0, "k1"),
        with_agent("2", "contact.answered", "a", 5.0, "x"),
        plain("3", "contact.resolved", "a", 100.0),
        offered_for("4", "b", 0.0, "k2"),
        with_agent("5", "contact.answered", "b", 5.0, "x"),
        plain("6", "contact.resolved", "b", 100.0),
        plain("7", "contact.reopened", "b", 200.0),
    ] {
        e.apply(x);
    }
    // Two hours later: the first hour is flushed with a provisional FCR for contact a.
    e.advance_to(T0 + 2 * 3_600_000 + 600_000);
    let mut out = BTreeMap::new();
    merge(&mut out, e.flush());
    let x = day_like(&out, Dimension::Agent, "x");
    assert_eq!((x.resolved, x.fcr), (2, 1));
    // Customer k1 comes back within 7 days: a's FCR is corrected in the flushed hour.
    e.apply(offered_for("8", "c", 3.0 * 86_400.0, "k1"));
    e.advance_to(T0 + 3 * 86_400_000 + 3_600_000);
    let correction = e.flush();
    let first_hour: Vec<&SnapshotDelta> = correction
        .iter()
        .filter(|d| d.start == T0 && d.dimension == Dimension::Agent)
        .collect();
    assert_eq!(first_hour.len(), 1, "{first_hour:?}");
    assert_eq!((first_hour[0].acc.resolved, first_hour[0].acc.fcr), (0, -1));
    merge(&mut out, correction);
    assert_eq!(day_like(&out, Dimension::Agent, "x").fcr, 0);
    // A repeat after the FCR window does not fail it.
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            offered_for("1", "a", 0.0, "k"),
            with_agent("2", "contact.answered", "a", 1.0, "x"),
            plain("3", "contact.resolved", "a", 10.0),
            offered_for("4", "b", 10.0 + 7.0 * 86_400.0 + 1.0, "k"),
        ],
    );
    assert_eq!(day(&out, Dimension::Agent, "x").fcr, 1);
}

#[test]
fn contact_facts_attribution_csat_conversion_qa_frt() {
    let (_, out) = run(
        EngineConfig::default(),
        vec![
            ev(
                "1",
                "contact.offered",
                0.0,
                &format!(r#"{},"channel":"chat","queue":"sales""#, c("a")),
            ),
            with_agent("2", "contact.answered", "a", 10.0, "x"),
            with_agent("3", "contact.first_response", "a", 40.0, "x"),
            with_agent("3b", "contact.first_response", "a", 50.0, "x"), // only the first counts
            ev(
                "4",
                "contact.converted",
                60.0,
                &format!(r#"{},"amount":19.99"#, c("a")),
            ),
            ev(
                "5",
                "contact.converted",
                70.0,
                &format!(r#"{},"amount":5.01"#, c("a")),
            ),
            ev(
                "6",
                "survey.responded",
                500.0,
                &format!(r#"{},"score":4"#, c("a")),
            ), // last handler x
            ev(
                "7",
                "survey.responded",
                510.0,
                &format!(r#"{},"score":2,"agent_id":"z""#, c("a")),
            ),
            ev(
                "8",
                "qa.scored",
                900.0,
                &format!(r#"{},"score":87.5,"agent_id":"x""#, c("a")),
            ),
        ],
    );
    let x = day(&out, Dimension::Agent, "x");
    assert_eq!((x.frt_count, x.frt_sum_ms), (1, 40_000));
    assert_eq!((x.converted, x.revenue), (1, 250_000));
    assert_eq!(
        (x.csat_responses, x.csat_positive, x.csat_sum),
        (1, 1, 40_000)
    );
    assert_eq!((x.qa_count, x.qa_sum), (1, 875_000));
    let z = day(&out, Dimension::Agent, "z");
    assert_eq!((z.csat_responses, z.csat_positive), (1, 0));
    // z's team is unknown: team rows still add up to the agent rows.
    assert_eq!(day(&out, Dimension::Team, UNKNOWN_KEY).csat_responses, 1);
    let ch = day(&out, Dimension::Channel, "chat");
    assert_eq!((ch.csat_responses, ch.converted, ch.answered), (2, 1, 1));
}

#[test]
fn duplicates_out_of_order_and_too_late() {
    let evs = vec![
        offered("1", "a", 0.0, "q"),
        with_agent("2", "contact.answered", "a", 12.0, "x"),
        plain("3", "contact.ended", "a", 72.0),
        plain("4", "contact.wrapped", "a", 80.0),
    ];
    let (_, sorted) = run(EngineConfig::default(), evs.clone());
    let mut shuffled: Vec<Event<'static>> = evs.iter().rev().cloned().collect();
    shuffled.extend(evs.iter().cloned()); // every event twice
    let (e, out) = run(EngineConfig::default(), shuffled);
    assert_eq!(out, sorted);
    assert_eq!((e.stats().accepted, e.stats().duplicates), (4, 4));

    let mut e = Engine::new(EngineConfig::default());
    e.apply(offered("1", "a", 8.0 * 86_400.0, "q"));
    let late = e.apply(offered("2", "b", 0.0, "q"));
    assert_eq!(late, Outcome::Rejected(RejectReason::TooLate));
    assert_eq!(e.stats().rejected.get(&RejectReason::TooLate), Some(&1));
}

#[test]
fn late_event_within_horizon_corrects_flushed_window() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(15)],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    e.apply(offered("1", "a", 0.0, "q"));
    e.apply(plain("2", "contact.abandoned", "a", 30.0));
    e.apply(offered("3", "b", 3600.0, "q")); // watermark far past the first window
    let first = e.flush();
    let q0 = first
        .iter()
        .find(|d| d.start == T0 && d.dimension == Dimension::Queue)
        .unwrap();
    assert_eq!((q0.acc.offered, q0.acc.abandoned), (1, 1));
    // A late answer for contact b's queue-mate arrives: a new contact in the flushed window.
    e.apply(offered("4", "c", 60.0, "q"));
    e.apply(with_agent("5", "contact.answered", "c", 70.0, "x"));
    assert_eq!(e.stats().late_applied, 2);
    let fix = e.flush();
    let q0 = fix
        .iter()
        .find(|d| d.start == T0 && d.dimension == Dimension::Queue)
        .unwrap();
    assert_eq!(
        (q0.acc.offered, q0.acc.answered, q0.acc.abandoned),
        (1, 1, 0),
        "delta only"
    );
}

#[test]
fn idle_advance_closes_windows() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Minutes(15)],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg);
    e.apply(offered("1", "a", 0.0, "q"));
    e.apply(plain("2", "contact.abandoned", "a", 30.0));
    assert!(e.flush().is_empty(), "watermark still inside the window");
    e.advance_to(T0 + 20 * 60_000);
    assert!(
        !e.flush().is_empty(),
        "wall clock advance closed the interval"
    );
}

#[test]
fn dst_day_is_one_window_of_25_hours() {
    let cfg = EngineConfig {
        intervals: vec![Interval::Day],
        tz: jiff::tz::TimeZone::get("America/New_York").unwrap(),
        ..EngineConfig::default()
    };
    let fall_back = 1_793_505_600_000; // 2026-11-01T04:00:00Z = local midnight
    let mut e = Engine::new(cfg);
    for (i, h) in [0.5, 24.5].into_iter().enumerate() {
        let t = fall_back + (h * 3_600_000.0) as i64;
        let line = format!(
            r#"{{"event_id":"o{i}","type":"contact.offered","ts":{t},"contact_id":"c{i}","channel":"voice","queue":"q"}}"#
        );
        e.apply(decode(line.as_bytes()).unwrap());
        let line = format!(
            r#"{{"event_id":"a{i}","type":"contact.abandoned","ts":{},"contact_id":"c{i}"}}"#,
            t + 1000
        );
        e.apply(decode(line.as_bytes()).unwrap());
    }
    let out = e.flush_all();
    let all: Vec<_> = out
        .iter()
        .filter(|d| d.dimension == Dimension::All)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "both contacts are on the same 25-hour local day"
    );
    assert_eq!(all[0].end - all[0].start, 25 * 3_600_000);
    assert_eq!(all[0].acc.offered, 2);
}

#[test]
fn rolling_window_covers_last_minutes() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(offered("1", "a", 0.0, "q"));
    e.apply(plain("2", "contact.abandoned", "a", 5.0));
    e.apply(offered("3", "b", 600.0, "q"));
    e.apply(with_agent("4", "contact.answered", "b", 610.0, "x"));
    let r5: Vec<_> = e
        .rolling(5)
        .into_iter()
        .filter(|r| r.0 == Dimension::Queue)
        .collect();
    assert_eq!((r5[0].2.offered, r5[0].2.answered), (1, 1));
    let r15: Vec<_> = e
        .rolling(15)
        .into_iter()
        .filter(|r| r.0 == Dimension::Queue)
        .collect();
    assert_eq!(r15[0].2.offered, 2);
}

#[test]
fn runaway_contact_is_capped() {
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..MAX_EVENTS_PER_CONTACT + 5 {
        e.apply(ev(
            &format!("x{i}"),
            "qa.scored",
            i as f64,
            r#""contact_id":"same","agent_id":"a","score":50"#,
        ));
    }
    assert_eq!(e.stats().accepted as usize, MAX_EVENTS_PER_CONTACT);
    assert_eq!(
        e.stats().rejected.get(&RejectReason::ContactOverflow),
        Some(&5)
    );
}

#[test]
fn events_turned_away_leave_a_packed_contact_unpacked_and_listed() {
    // A packed contact is unpacked to check an event against its events. When the
    // event is turned away (a duplicate, or past the cap), packing it again at once
    // made every further such event cost a decode and an encode of the whole list
    // (the fuzzer's slow inputs). It must stay unpacked, listed, and be packed again
    // once `pack_after_ms` has passed without a change.
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: 60_000,
        live: false,
        ..EngineConfig::default()
    });
    let qa = |id: &str, secs: f64| {
        ev(
            id,
            "qa.scored",
            secs,
            r#""contact_id":"same","agent_id":"a","score":50"#,
        )
    };
    for i in 0..MAX_EVENTS_PER_CONTACT {
        e.apply(qa(&format!("x{i}"), i as f64));
    }
    let same = key_of("same");
    let state = |e: &Engine| {
        let c = &e.contacts[&same];
        (c.packed.is_some(), c.queued)
    };
    // Another contact's event moves the clock on; the flush packs the full one.
    e.apply(offered("o1", "other", 2_000.0, "q"));
    e.flush();
    assert_eq!(state(&e), (true, false), "packed, not listed");

    for i in 0..20 {
        e.apply(qa(&format!("y{i}"), 2_000.0)); // past the cap
        e.apply(qa(&format!("x{i}"), i as f64)); // a duplicate
        assert_eq!(state(&e), (false, true), "after turned-away event {i}");
    }
    assert_eq!(e.stats().duplicates, 20);
    assert_eq!(
        e.stats().rejected.get(&RejectReason::ContactOverflow),
        Some(&20)
    );
    assert_eq!(e.contacts[&same].events.len(), MAX_EVENTS_PER_CONTACT);

    // Not due yet a minute of event time later; packed again after more than that.
    e.apply(offered("o2", "other2", 2_030.0, "q"));
    e.flush();
    assert_eq!(state(&e), (false, true), "packed before pack_after_ms");
    e.apply(offered("o3", "other3", 2_100.0, "q"));
    e.flush();
    assert_eq!(state(&e), (true, false), "packed again");
}

#[test]
fn team_learned_later_moves_facts_out_of_unknown() {
    let transfer = ev(
        "3",
        "contact.transferred",
        60.0,
        &format!(r#"{},"agent_id":"x","team":"tx","to_agent_id":"y""#, c("a")),
    );
    let events = vec![
        offered("1", "a", 0.0, "q"),
        with_agent("2", "contact.answered", "a", 10.0, "x"),
        transfer,
        plain("4", "contact.ended", "a", 160.0),
        plain("5", "contact.wrapped", "a", 170.0),
        // y's team is first named by an unrelated agent.state event, after the fact.
        ev(
            "6",
            "agent.state",
            400.0,
            r#""agent_id":"y","team":"ty","state":"available""#,
        ),
    ];
    let (_, out) = run(EngineConfig::default(), events.clone());
    assert_eq!(day(&out, Dimension::Team, "ty").handled, 1);
    assert_eq!(day(&out, Dimension::Team, UNKNOWN_KEY).handled, 0);
    // The same events in another order give the same rows.
    let (_, reversed) = run(EngineConfig::default(), events.into_iter().rev().collect());
    assert_eq!(out, reversed);
}

fn state(id: &str, agent: &str, secs: f64, st: &str) -> Event<'static> {
    ev(
        id,
        "agent.state",
        secs,
        &format!(r#""agent_id":"{agent}","team":"red","state":"{st}""#),
    )
}

/// Waiting = offered and not yet answered / abandoned / ended; the oldest wait per
/// queue is the earliest offer still waiting, whatever the arrival order.
#[test]
fn floor_waiting_contacts_per_queue() {
    let mut e = Engine::new(EngineConfig::default());
    for x in [
        offered("o1", "c1", 10.0, "sales"),
        offered("o3", "c3", 30.0, "sales"),
        with_agent("a1", "contact.answered", "c1", 40.0, "ann"),
        offered("o2", "c2", 20.0, "support"),
        offered("o4", "c4", 25.0, "sales"),
        plain("x4", "contact.abandoned", "c4", 50.0),
    ] {
        e.apply(x);
    }
    let f = e.floor(T0 + 100_000);
    let got: Vec<(&str, usize, Millis)> = f
        .waiting
        .iter()
        .map(|w| (w.queue.as_str(), w.waiting, w.oldest_since))
        .collect();
    assert_eq!(
        got,
        [("sales", 1, T0 + 30_000), ("support", 1, T0 + 20_000)]
    );
    // Late-arriving answer of c3 stops its wait.
    e.apply(with_agent("a3", "contact.answered", "c3", 35.0, "bob"));
    let f = e.floor(T0 + 100_000);
    assert_eq!(f.waiting.len(), 1);
    assert_eq!(f.waiting[0].queue, "support");
}

/// Agent state: the newest state wins; time per state is split at interval
/// boundaries by actual time; occupancy = (busy + wrap) / (logged in − away).
#[test]
fn floor_agent_states_and_occupancy() {
    let mut e = Engine::new(EngineConfig::default()); // finest interval 15m
    // 00:10 available, 00:14 busy, 00:20 wrap, 00:22 away, 00:25 available.
    for x in [
        state("s1", "ann", 600.0, "available"),
        state("s2", "ann", 840.0, "busy"),
        state("s4", "ann", 1320.0, "away"),
        state("s3", "ann", 1200.0, "wrap"), // out of order: older than "away"
        state("s5", "ann", 1500.0, "available"),
    ] {
        e.apply(x);
    }
    let f = e.floor(T0 + 1_740_000); // 00:29
    let a = &f.agents[0];
    assert_eq!((a.agent.as_str(), a.team.as_str()), ("ann", "red"));
    assert_eq!(a.state, AgentState::Available);
    assert_eq!(a.since, T0 + 1_500_000);
    // Interval 00:15–00:30 so far: busy 00:15–00:22 (the late "wrap" cannot change
    // history already replaced by a newer state) = 7 min, away 3 min, available 4 min.
    assert_eq!(f.interval_start, Some(T0 + 900_000));
    assert_eq!(a.interval_ms, [240_000, 420_000, 0, 180_000, 0]);
    let occ = live::occupancy(&a.interval_ms).unwrap();
    assert!((occ - 420.0 / 660.0).abs() < 1e-12, "{occ}");
    // Checkpoints keep the floor.
    let bytes = e.checkpoint().unwrap();
    let r = Engine::restore(EngineConfig::default(), &bytes).unwrap();
    assert_eq!(r.floor(T0 + 1_740_000), f);
}

/// Today's figures and trend come from facts of the day of "now" only.
#[test]
fn floor_today_counts_the_current_day() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(offered("o1", "c1", 10.0, "sales"));
    e.apply(with_agent("a1", "contact.answered", "c1", 15.0, "ann"));
    e.apply(offered("o2", "c2", 20.0, "sales"));
    e.apply(plain("x2", "contact.abandoned", "c2", 30.0));
    let f = e.floor(T0 + 60_000);
    let sales = f
        .today
        .iter()
        .find(|(d, k, _)| *d == Dimension::Queue && k == "sales")
        .map(|(_, _, a)| a.clone())
        .unwrap();
    assert_eq!((sales.offered, sales.answered, sales.abandoned), (2, 1, 1));
    assert_eq!((sales.wait_sum_ms, sales.wait_count), (5_000, 1));
    // Counts and sums only: today's figures never need a percentile.
    assert!(f.today.iter().all(|(_, _, a)| a.wait_hist.is_empty()
        && a.handle_hist.is_empty()
        && a.frt_hist.is_empty()));
    assert!(
        f.trend.iter().any(|(s, d, k, a)| *s == T0
            && *d == Dimension::Queue
            && k == "sales"
            && a.offered == 2)
    );
    // The next day: nothing yet.
    assert!(e.floor(T0 + 86_400_000 + 1).today.is_empty());
}

/// The simulated centre the stream-level engine tests use: small (60 agents, 2,000
/// contacts an hour) so that 40,000 events cover hours, with 5 % late events.
fn small_centre(seed: u64) -> crate::source::sim::SimConfig {
    crate::source::sim::SimConfig {
        seed,
        contacts_per_hour: 2_000.0,
        agents: 60,
        late_rate: 0.05,
        ..Default::default()
    }
}

/// Packing settled contacts must change no figure: the same simulated stream (late,
/// duplicate and out-of-order events included) through an engine that packs every
/// contact at each flush and one that never packs gives identical snapshots, and a
/// checkpoint taken with packed contacts restores to the same result.
#[test]
fn packing_settled_contacts_changes_no_figure() {
    use crate::source::sim::Simulator;
    let mut sim = Simulator::new(small_centre(11));
    let lines: Vec<String> = (0..40_000).map(|_| sim.next_line().1).collect();
    let engine = |pack_after_ms: i64| {
        Engine::new(EngineConfig {
            pack_after_ms,
            live: false,
            ..EngineConfig::default()
        })
    };
    // Packed at once; after a minute (open contacts after `OPEN_PACK_FACTOR` minutes,
    // through `open_queue`); never.
    let mut always = engine(0);
    let mut later = engine(60_000);
    let mut never = engine(i64::MAX);
    let (mut out_a, mut out_l, mut out_n) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut packed_seen, mut open_seen) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        let owned = ev.into_owned();
        let want = never.apply(owned.clone());
        assert_eq!(always.apply(owned.clone()), want, "{line}");
        assert_eq!(later.apply(owned), want, "{line}");
        if i % 500 == 499 {
            merge(&mut out_a, always.flush());
            merge(&mut out_l, later.flush());
            merge(&mut out_n, never.flush());
            packed_seen = packed_seen.max(always.contacts_packed());
            open_seen = open_seen.max(later.open_queue.len());
            assert_eq!(never.contacts_packed(), 0);
        }
        if i == 20_000 {
            // Continue from a checkpoint holding packed contacts.
            let bytes = always.checkpoint().unwrap();
            always = Engine::restore(always.config().clone(), &bytes).unwrap();
            let bytes = later.checkpoint().unwrap();
            later = Engine::restore(later.config().clone(), &bytes).unwrap();
        }
    }
    assert!(packed_seen > 100, "packing never happened ({packed_seen})");
    assert!(
        open_seen > 10,
        "no open contact was held back ({open_seen})"
    );
    merge(&mut out_a, always.flush_all());
    merge(&mut out_l, later.flush_all());
    merge(&mut out_n, never.flush_all());
    assert!(!out_n.is_empty());
    assert_eq!(out_a, out_n);
    assert_eq!(out_l, out_n);
    assert_eq!(always.stats(), never.stats());
    assert_eq!(later.stats(), never.stats());
}

/// An open contact (offered, answered, not ended) is packed only after
/// `OPEN_PACK_FACTOR` times `pack_after_ms` without a change, a finished one after
/// `pack_after_ms`. One that ends while held back is packed when its entry in the
/// open queue comes due, not before.
#[test]
fn open_contacts_are_packed_later() {
    let minute = 60_000;
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: minute,
        live: false,
        ..EngineConfig::default()
    });
    let packed = |e: &Engine, id: &str| e.contacts[&key_of(id)].packed.is_some();
    e.apply(offered("f1", "done", 0.0, "q"));
    e.apply(with_agent("f2", "contact.answered", "done", 1.0, "a2"));
    e.apply(with_agent("f3", "contact.ended", "done", 2.0, "a2"));
    e.apply(offered("o1", "open", 2.0, "q"));
    e.apply(with_agent("o2", "contact.answered", "open", 2.0, "a1"));
    e.apply(offered("l1", "late-end", 2.0, "q"));
    // Events elsewhere move the clock; flushes pack what is due.
    let tick = |e: &mut Engine, secs: f64, n: &str| {
        e.apply(offered(n, n, secs, "q2"));
        e.flush();
    };
    tick(&mut e, 150.0, "x1");
    assert!(
        packed(&e, "done"),
        "a finished contact is packed after a minute"
    );
    assert!(!packed(&e, "open"), "an open contact is held unpacked");
    assert!(!packed(&e, "late-end"));
    assert_eq!(e.open_queue.len(), 2);
    // `late-end` is abandoned at 160 s: its open entry (listed at 2 s) decides.
    e.apply(with_agent(
        "l2",
        "contact.abandoned",
        "late-end",
        160.0,
        "a3",
    ));
    tick(&mut e, 230.0, "x2");
    assert!(
        !packed(&e, "late-end"),
        "held back until 4 minutes after 2 s"
    );
    assert!(!packed(&e, "open"));
    tick(&mut e, 4.0 * 60.0 + 3.0, "x3");
    assert!(
        packed(&e, "late-end"),
        "finished, unchanged for over a minute"
    );
    assert!(packed(&e, "open"), "open, unchanged for four minutes");
    // The clock's own contacts are open too: `x1`, due a minute after 150 s, is
    // held back in its turn.
    assert!(!packed(&e, "x1"));
    assert_eq!(e.open_queue.len(), 1);
}

/// The bit packing sets so that a spill candidate need not be decoded
/// (`Contact::spill_ok`) never lets go a contact that decoding would keep (unfinished,
/// or with a fact waiting for its agent's team), across a checkpoint (which drops the
/// bit, so decoding decides again); and, before that, it is set for most packed
/// contacts, or it would save nothing.
#[test]
fn the_spill_bit_never_frees_what_decoding_keeps() {
    use crate::source::sim::Simulator;
    let mut sim = Simulator::new(small_centre(13));
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: 0,
        live: false,
        ..EngineConfig::default()
    });
    let (mut known_free, mut decoded_free, mut kept) = (0u64, 0u64, 0u64);
    for i in 0..40_000 {
        let line = sim.next_line().1;
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        e.apply(ev.into_owned());
        if i % 500 == 499 {
            e.flush();
            for (_, c) in e.contacts.iter().filter(|(_, c)| c.packed.is_some()) {
                let decoded = e.free_to_spill_decoded(c);
                match (c.spill_ok, decoded) {
                    (true, false) => panic!("packed as free, but decoding keeps it: {c:?}"),
                    (false, false) => kept += 1,
                    // Restored contacts are all decoded: count before the checkpoint.
                    (true, true) if i < 20_000 => known_free += 1,
                    (false, true) if i < 20_000 => decoded_free += 1,
                    _ => {}
                }
            }
        }
        if i == 20_000 {
            let bytes = e.checkpoint().unwrap();
            e = Engine::restore(e.config().clone(), &bytes).unwrap();
        }
    }
    assert!(kept > 0, "no packed contact was held back ({kept})");
    // The simulated agents' teams are known: a contact answered by an agent whose team
    // no event has named yet, finished, packed.
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: 0,
        live: false,
        ..EngineConfig::default()
    });
    let nameless = |id: &str, kind: &str, secs: f64| {
        ev(id, kind, secs, &format!(r#"{},"agent_id":"nn""#, c("t1")))
    };
    e.apply(offered("t1", "t1", 0.0, "q"));
    e.apply(nameless("t2", "contact.answered", 10.0));
    e.apply(nameless("t3", "contact.ended", 100.0));
    e.apply(nameless("t4", "contact.wrapped", 110.0));
    e.apply(offered("t5", "later", 4_000.0, "q"));
    e.flush();
    let c1 = &e.contacts[&key_of("t1")];
    assert!(c1.packed.is_some());
    assert!(
        !c1.spill_ok,
        "packed as free while its facts wait for a team"
    );
    assert!(!e.free_to_spill_decoded(c1));
    assert!(
        known_free > 10 * decoded_free,
        "the bit spared few decodings: {known_free} known free, {decoded_free} decoded free"
    );
}

/// Applying a settle's facts, and taking a flush's windows, on helper threads must
/// change no figure: the same simulated stream through an engine that always lends
/// its windows to helpers and one that never does gives identical snapshots at every
/// flush, and identical stats.
/// (Only an engine without live views puts derivations off until a settle.)
#[test]
fn settling_on_a_helper_thread_changes_no_figure() {
    use crate::source::sim::Simulator;
    let mut sim = Simulator::new(small_centre(12));
    let lines: Vec<String> = (0..30_000).map(|_| sim.next_line().1).collect();
    let engine = |min: usize| {
        let mut e = Engine::new(EngineConfig {
            live: false,
            ..EngineConfig::default()
        });
        e.set_helper_min(min);
        e
    };
    let mut helped = engine(1);
    let mut inline = engine(usize::MAX);
    for (i, line) in lines.iter().enumerate() {
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        let owned = ev.into_owned();
        assert_eq!(helped.apply(owned.clone()), inline.apply(owned), "{line}");
        if i % 700 == 699 {
            // Exactly equal, not merged: each flush's deltas one by one.
            assert_eq!(helped.flush(), inline.flush(), "flush after line {i}");
        }
    }
    assert!(helped.settles_helped() > 20, "{}", helped.settles_helped());
    assert_eq!(inline.settles_helped(), 0);
    assert!(helped.takes_helped() > 20, "{}", helped.takes_helped());
    assert_eq!(inline.takes_helped(), 0);
    // Packing ran beside the helped takes.
    assert!(helped.contacts_packed() > 0);
    let (a, b) = (helped.finish(), inline.finish());
    assert!(!b.is_empty());
    assert_eq!(a, b);
    assert_eq!(helped.stats(), inline.stats());
}

/// `finish_in_parts` hands out exactly `finish`'s deltas: in parts of whole windows,
/// each part sorted by key and at least the asked size but the last; with earlier
/// flushes behind it (so coarser windows already written get corrections), and with
/// intervals that do not nest (every interval updated per fact).
#[test]
fn finishing_in_parts_hands_out_the_deltas_of_finish() {
    use crate::source::sim::Simulator;
    let mut sim = Simulator::new(small_centre(21));
    let lines: Vec<String> = (0..30_000).map(|_| sim.next_line().1).collect();
    let nesting = EngineConfig {
        live: false,
        ..EngineConfig::default()
    };
    let mut not_nesting = nesting.clone();
    not_nesting.intervals = vec![Interval::Minutes(15), Interval::Minutes(40), Interval::Day];
    for cfg in [nesting, not_nesting] {
        let (mut whole, mut in_parts) = (Engine::new(cfg.clone()), Engine::new(cfg));
        for (i, line) in lines.iter().enumerate() {
            let Ok(ev) = decode(line.as_bytes()) else {
                continue;
            };
            let owned = ev.into_owned();
            assert_eq!(whole.apply(owned.clone()), in_parts.apply(owned), "{line}");
            if i % 9_000 == 8_999 {
                assert_eq!(whole.flush(), in_parts.flush(), "flush after line {i}");
            }
        }
        let expected = whole.finish();
        let rows = 100;
        let parts: Vec<Vec<SnapshotDelta>> = match in_parts.finish_in_parts(rows) {
            Ok(parts) => parts.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(
            parts.len() > 3,
            "{} parts of {} deltas",
            parts.len(),
            expected.len()
        );
        let window = |d: &SnapshotDelta| (d.interval, d.start);
        let mut seen = std::collections::BTreeSet::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(
                i + 1 == parts.len() || part.len() >= rows,
                "part {i}: {}",
                part.len()
            );
            assert!(
                part.is_sorted_by_key(|d| (d.interval, d.start, d.dimension, d.key.clone())),
                "part {i} is not in key order"
            );
            // Whole windows: no window's deltas in two parts.
            let windows: std::collections::BTreeSet<_> = part.iter().map(window).collect();
            for w in windows {
                assert!(seen.insert(w), "window {w:?} split across parts");
            }
        }
        let mut all: Vec<SnapshotDelta> = parts.into_iter().flatten().collect();
        all.sort_by(|a, b| {
            (a.interval, a.start, a.dimension, &a.key).cmp(&(
                b.interval,
                b.start,
                b.dimension,
                &b.key,
            ))
        });
        assert_eq!(all, expected);
        assert_eq!(whole.stats(), in_parts.stats());
    }
}

/// A [`spill::MemSpill`] with hooks for tests: what `put` does to a contact before
/// keeping it, and a failure reported once.
#[derive(Default)]
struct TestSpill {
    inner: spill::MemSpill,
    on_put: Option<fn(&mut spill::SpilledContact)>,
    failure: Option<std::io::Error>,
}

impl spill::Spill for TestSpill {
    fn put(&mut self, mut c: spill::SpilledContact) {
        if let Some(f) = self.on_put {
            f(&mut c);
        }
        self.inner.put(c);
    }
    fn take(&mut self, key: ContactKey) -> Option<spill::SpilledContact> {
        self.inner.take(key)
    }
    fn take_customer(&mut self, customer: CustomerKey) -> Vec<spill::SpilledContact> {
        self.inner.take_customer(customer)
    }
    fn expire(&mut self, before: Millis) {
        self.inner.expire(before);
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn failure(&mut self) -> Option<std::io::Error> {
        self.failure.take()
    }
}

/// A spill that failed while the last contacts were derived stops `finish_in_parts`
/// before any part: those derivations may have missed contacts it could not give back.
#[test]
fn finishing_in_parts_reports_a_failed_spill_first() {
    let mut e = Engine::new(EngineConfig {
        live: false,
        ..EngineConfig::default()
    });
    e.set_spill(Box::new(TestSpill {
        failure: Some(std::io::Error::other("disk gone")),
        ..TestSpill::default()
    }));
    e.apply(offered("e1", "c1", 10.0, "q"));
    match e.finish_in_parts(1) {
        Ok(_) => panic!("a failed spill went unreported"),
        Err(err) => assert_eq!(err.to_string(), "disk gone"),
    }
}

/// A contact read back from the spill whose bytes do not decode (a damaged row or
/// file) has lost its events to the engine: from then on the engine refuses to give a
/// checkpoint or its last figures, so nothing derived without those events is stored
/// (`serve` stops at its next commit, `replay` before its next write).
#[test]
fn a_damaged_contact_from_the_spill_stops_the_figures_from_being_stored() {
    use crate::source::sim::{SimConfig, Simulator};
    let mut sim = Simulator::new(SimConfig {
        // Few customers: repeat contacts read spilled ones back.
        customers: 300,
        ..small_centre(12)
    });
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: 0,
        spill_after_ms: 0,
        ..EngineConfig::default()
    });
    // Every body kept is overwritten with bytes that do not decode.
    e.set_spill(Box::new(TestSpill {
        on_put: Some(|c| c.body = std::sync::Arc::from(&[0xff_u8; 4][..])),
        ..TestSpill::default()
    }));
    let mut damaged_at = None;
    for i in 0..40_000 {
        let line = sim.next_line().1;
        if let Ok(ev) = decode(line.as_bytes()) {
            e.apply(ev.into_owned());
        }
        if i % 500 == 499 {
            e.flush();
            if e.damage().is_none() {
                e.checkpoint().expect("no damage read back yet");
            }
        }
        if e.damage().is_some() {
            damaged_at = Some(i);
            break;
        }
    }
    assert!(damaged_at.is_some(), "no spilled contact was read back");
    let what = e.damage().unwrap().to_owned();
    assert!(what.contains("spilled contact"), "{what}");
    match e.checkpoint() {
        Err(checkpoint::CheckpointError::SpillDamaged { what: w }) => assert_eq!(w, what),
        other => panic!(
            "a checkpoint after the damage: {:?}",
            other.map(|b| b.len())
        ),
    }
    match e.finish_in_parts(1000) {
        Ok(_) => panic!("the last figures were given after the damage"),
        Err(err) => assert_eq!(err.to_string(), what),
    }
}

/// `[windows.dimensions]`: an engine that keeps some dimensions at fewer intervals
/// writes, at every flush, exactly the deltas of one that keeps everything, less the
/// (interval, dimension) pairs it does not keep; also where keeping fewer changes how
/// a dimension's windows are built (derived from its own finest interval instead of
/// updated per fact, the 40m case), and for a dimension kept at none.
#[test]
fn kept_dimensions_write_the_same_figures_for_what_they_keep() {
    use crate::source::sim::Simulator;
    use Dimension::*;
    use Interval::{Day, Minutes};
    let mut sim = Simulator::new(small_centre(7));
    let lines: Vec<String> = (0..20_000).map(|_| sim.next_line().1).collect();
    let nested = vec![Minutes(15), Minutes(60), Day];
    let uneven = vec![Minutes(15), Minutes(40), Day];
    type Kept = Vec<(Dimension, Vec<Interval>)>;
    let cases: Vec<(Vec<Interval>, Kept)> = vec![
        (nested.clone(), vec![(Agent, vec![Day])]),
        (
            nested.clone(),
            vec![
                (Agent, vec![Minutes(60), Day]),
                (Queue, vec![Minutes(15)]),
                (Team, vec![]),
            ],
        ),
        (nested, vec![(All, vec![Minutes(60)]), (Channel, vec![Day])]),
        (
            uneven,
            vec![
                (Agent, vec![Minutes(40), Day]),
                (Queue, vec![Minutes(15), Day]),
            ],
        ),
    ];
    for (intervals, kept) in cases {
        let kept: BTreeMap<Dimension, Vec<Interval>> = kept.into_iter().collect();
        let engine = |kept: BTreeMap<Dimension, Vec<Interval>>| {
            Engine::new(EngineConfig {
                intervals: intervals.clone(),
                kept,
                live: false,
                ..EngineConfig::default()
            })
        };
        let mut every = engine(BTreeMap::new());
        let mut fewer = engine(kept.clone());
        // Its settles apply facts on the helper thread, which gets the plan too.
        fewer.set_helper_min(1);
        let keeps = |d: &SnapshotDelta| {
            kept.get(&d.dimension)
                .is_none_or(|k| k.contains(&d.interval))
        };
        let mut written = 0;
        let mut left_out = 0;
        let mut compare = |all: Vec<SnapshotDelta>, some: Vec<SnapshotDelta>, at: &str| {
            let (want, dropped): (Vec<_>, Vec<_>) = all.into_iter().partition(keeps);
            written += want.len();
            left_out += dropped.len();
            assert_eq!(some, want, "{kept:?} {at}");
        };
        for (i, line) in lines.iter().enumerate() {
            let Ok(ev) = decode(line.as_bytes()) else {
                continue;
            };
            let owned = ev.into_owned();
            assert_eq!(fewer.apply(owned.clone()), every.apply(owned), "{line}");
            if i % 900 == 899 {
                compare(
                    every.flush(),
                    fewer.flush(),
                    &format!("flush after line {i}"),
                );
            }
            if i == 10_000 {
                // A checkpoint restores under the same kept set only: the windows in
                // memory were planned for it.
                let bytes = fewer.checkpoint().unwrap();
                let refused = Engine::restore(every.config().clone(), &bytes).err();
                assert!(
                    matches!(refused, Some(checkpoint::CheckpointError::Settings { .. })),
                    "{refused:?}"
                );
                fewer = Engine::restore(fewer.config().clone(), &bytes).unwrap();
                fewer.set_helper_min(1);
            }
        }
        compare(every.finish(), fewer.finish(), "finish");
        assert!(
            written > 100 && left_out > 100,
            "{kept:?}: {written} kept, {left_out} not"
        );
        assert!(fewer.settles_helped() > 5, "{}", fewer.settles_helped());
        assert_eq!(every.stats(), fewer.stats());
    }
}

/// The contacts table holds a contact inline in every slot, full or empty: its size is
/// the engine's largest per-contact cost (docs/performance.md, "Replay's memory
/// peaks"). Growing it back (a `Vec` instead of a `ThinVec`, a wider field) should be
/// a decision, not an accident.
#[test]
fn a_contacts_table_slot_stays_96_bytes() {
    assert_eq!(std::mem::size_of::<(ContactKey, Contact)>(), 96);
}

/// A held event is 56 bytes: its three durations are 4 bytes each as `Option<Ms>`
/// (8 as `Option<u32>`, 72 in all). Events are most of an open contact's memory, and
/// the smaller list is fewer cache lines to scan per event (docs/performance.md,
/// "twentieth round").
#[test]
fn a_held_event_stays_56_bytes() {
    assert_eq!(std::mem::size_of::<super::contact::CEvent>(), 56);
}

/// `Ms` is written as the plain number of milliseconds (checkpoints written before it
/// held `Option<u32>` read the same), and holds every duration decoding lets through.
#[test]
fn durations_keep_their_value_and_their_bytes() {
    use super::contact::Ms;
    for v in [0, 1, 59_000, 30 * 24 * 3_600_000, u32::MAX - 1] {
        assert_eq!(Ms::new(v).get(), v);
        let bytes = postcard::to_allocvec(&Some(Ms::new(v))).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&Some(v)).unwrap());
        assert_eq!(
            postcard::from_bytes::<Option<Ms>>(&bytes).unwrap(),
            Some(Ms::new(v))
        );
    }
    assert_eq!(
        Ms::new(u32::MAX).get(),
        u32::MAX - 1,
        "the one value it cannot hold"
    );
    assert_eq!(std::mem::size_of::<Option<Ms>>(), 4);
}

/// Spilling closed, settled contacts out of memory must change no figure either: an
/// engine that spills every closed contact at each flush (and takes them back when a
/// late event, a repeat contact of the customer or a wrap timer reaches them) gives
/// the snapshots and counts of one that keeps everything, across a checkpoint and
/// restore that hands the spill over.
#[test]
fn spilling_settled_contacts_changes_no_figure() {
    use super::spill::{MemSpill, Spill, SpilledContact};
    use crate::source::sim::{SimConfig, Simulator};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A MemSpill that counts what came back.
    struct Counting(MemSpill, Arc<AtomicU64>);
    impl Spill for Counting {
        fn put(&mut self, c: SpilledContact) {
            self.0.put(c)
        }
        fn take(&mut self, key: u128) -> Option<SpilledContact> {
            let c = self.0.take(key);
            self.1.fetch_add(c.is_some() as u64, Ordering::Relaxed);
            c
        }
        fn take_customer(&mut self, customer: u128) -> Vec<SpilledContact> {
            let v = self.0.take_customer(customer);
            self.1.fetch_add(v.len() as u64, Ordering::Relaxed);
            v
        }
        fn expire(&mut self, before: Millis) {
            self.0.expire(before)
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    let mut sim = Simulator::new(SimConfig {
        // Few customers: many repeat contacts reach spilled ones.
        customers: 300,
        ..small_centre(12)
    });
    let lines: Vec<String> = (0..40_000).map(|_| sim.next_line().1).collect();
    let cfg = |spill_after_ms: i64| EngineConfig {
        pack_after_ms: 0,
        spill_after_ms,
        live: true,
        // Short enough that contacts expire, spilled and held alike, within the run.
        correction_horizon_ms: 4 * 3_600_000,
        ..EngineConfig::default()
    };
    let taken = Arc::new(AtomicU64::new(0));
    let mut spilling = Engine::new(cfg(0));
    spilling.set_spill(Box::new(Counting(MemSpill::default(), taken.clone())));
    let mut kept = Engine::new(cfg(0));
    let (mut out_s, mut out_k) = (BTreeMap::new(), BTreeMap::new());
    let mut spilled_seen = 0;
    for (i, line) in lines.iter().enumerate() {
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        let owned = ev.into_owned();
        assert_eq!(spilling.apply(owned.clone()), kept.apply(owned), "{line}");
        if i % 500 == 499 {
            merge(&mut out_s, spilling.flush());
            merge(&mut out_k, kept.flush());
            spilled_seen = spilled_seen.max(spilling.contacts_spilled());
            assert_eq!(kept.contacts_spilled(), 0);
            // Spilling removes contacts at every flush; the tables give the room back
            // (`compact_contacts`): never more room than they hold plus a chunk.
            let chunk = super::table::SLAB_CHUNK;
            let (len, cap) = (spilling.contacts.len(), spilling.contacts.capacity());
            assert!(cap - len <= len + chunk, "{len} contacts, capacity {cap}");
            let (len, cap) = (spilling.customers.len(), spilling.customers.capacity());
            assert!(cap - len <= len + chunk, "{len} customers, capacity {cap}");
            let now = spilling.max_ts.unwrap();
            assert_eq!(spilling.floor(now), kept.floor(now), "live floor after {i}");
        }
        if i == 20_000 {
            let bytes = spilling.checkpoint().unwrap();
            let sp = spilling.take_spill().unwrap();
            spilling = Engine::restore(spilling.config().clone(), &bytes).unwrap();
            spilling.set_spill(sp);
        }
    }
    assert!(
        spilled_seen > 300,
        "spilling never happened ({spilled_seen})"
    );
    let taken = taken.load(Ordering::Relaxed);
    assert!(
        taken > 50,
        "spilled contacts were never taken back ({taken})"
    );
    // `finish` hands out what `flush_all` does, then lets go of the contacts.
    merge(&mut out_s, spilling.finish());
    merge(&mut out_k, kept.flush_all());
    assert!(!out_k.is_empty());
    assert_eq!(out_s, out_k);
    assert!(kept.open_contacts() > 0);
    assert_eq!(spilling.open_contacts(), 0);
    assert_eq!(spilling.contacts_spilled(), 0);
    assert_eq!(spilling.stats(), kept.stats());
    assert_eq!(spilling.stats().expired, kept.stats().expired);
}

/// A spill set in the middle of a stream (`replay --spill-above`, once memory holds
/// too many contacts) changes no figure: the contacts packed before it are handed to
/// it at the next flushes, the later ones as they settle, and the snapshots and
/// counts are those of an engine that never spills.
#[test]
fn a_spill_set_mid_stream_changes_no_figure() {
    use super::spill::MemSpill;
    use crate::source::sim::{SimConfig, Simulator};

    let mut sim = Simulator::new(SimConfig {
        customers: 300,
        ..small_centre(21)
    });
    let lines: Vec<String> = (0..30_000).map(|_| sim.next_line().1).collect();
    let cfg = EngineConfig {
        pack_after_ms: 0,
        spill_after_ms: 0,
        live: false,
        correction_horizon_ms: 4 * 3_600_000,
        ..EngineConfig::default()
    };
    let (mut late, mut kept) = (Engine::new(cfg.clone()), Engine::new(cfg));
    let (mut out_l, mut out_k) = (BTreeMap::new(), BTreeMap::new());
    let (mut held_at_set, mut spilled_seen) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        let owned = ev.into_owned();
        assert_eq!(late.apply(owned.clone()), kept.apply(owned), "{line}");
        if i % 500 == 499 {
            merge(&mut out_l, late.flush());
            merge(&mut out_k, kept.flush());
            spilled_seen = spilled_seen.max(late.contacts_spilled());
            if i == 14_999 {
                assert_eq!(late.contacts_spilled(), 0);
                held_at_set = late.open_contacts();
                late.set_spill(Box::new(MemSpill::default()));
            }
        }
    }
    assert!(held_at_set > 500, "only {held_at_set} contacts held");
    assert!(
        spilled_seen > 300,
        "spilling never happened ({spilled_seen})"
    );
    merge(&mut out_l, late.finish());
    merge(&mut out_k, kept.flush_all());
    assert!(!out_k.is_empty());
    assert_eq!(out_l, out_k);
    assert_eq!(late.stats(), kept.stats());
}

/// The running rolling sums equal a fresh merge of the minute buckets, whatever the
/// order of facts, retractions (late events, corrections) and clock moves.
#[test]
fn running_rolling_sums_equal_merged_buckets() {
    use crate::source::sim::{SimConfig, Simulator};
    let mut sim = Simulator::new(SimConfig {
        contacts_per_hour: 3_000.0,
        agents: 40,
        ..small_centre(5)
    });
    let mut e = Engine::new(EngineConfig::default());
    let mut compared = 0;
    for i in 0..30_000 {
        let line = sim.next_line().1;
        if let Ok(ev) = decode(line.as_bytes()) {
            e.apply(ev);
        }
        if i % 997 == 0 {
            let now = e.max_ts.unwrap();
            for &m in &e.cfg.rolling_minutes.clone() {
                let mut want = e.agg.rolling_from(aggregate::rolling_start(now, m));
                want.retain(|_, a| !a.is_zero());
                let got = e.agg.rolling(now, m, |_| true);
                assert_eq!(got, want, "window {m}m after {i} events");
                compared += got.len();
            }
        }
    }
    assert!(compared > 1000, "compared only {compared} rows");
}

/// An agent's totals since start keep latency histograms only with
/// `agent_total_hists` (`[http] per_agent_buckets`): their counts and sums are the same
/// either way, and queue totals always keep theirs.
#[test]
fn agent_totals_keep_histograms_only_when_asked() {
    for hists in [false, true] {
        let mut e = Engine::new(EngineConfig {
            agent_total_hists: hists,
            ..EngineConfig::default()
        });
        e.apply(offered("o1", "c1", 10.0, "sales"));
        e.apply(with_agent("a1", "contact.answered", "c1", 15.0, "ann"));
        e.apply(plain("e1", "contact.ended", "c1", 75.0));
        e.advance_to(T0 + 3_600_000);
        let totals = e.totals_of(Scope::All);
        let row = |d: Dimension, k: &str| {
            totals
                .iter()
                .find(|(rd, rk, _)| *rd == d && rk == k)
                .map(|(_, _, a)| a.clone())
                .unwrap()
        };
        let (agent, queue) = (row(Dimension::Agent, "ann"), row(Dimension::Queue, "sales"));
        assert_eq!((agent.wait_count, agent.wait_sum_ms), (1, 5_000), "{hists}");
        assert_eq!(agent.handled, 1, "{hists}");
        assert_eq!(!agent.wait_hist.is_empty(), hists);
        assert_eq!(!agent.handle_hist.is_empty(), hists);
        assert_eq!(queue.wait_hist.count(), 1);
        assert_eq!(queue.wait_count, 1);
    }
}

/// An engine without live views puts derivations off until the windows are read
/// ([`Engine::touch`]); every flush must hand out exactly what deriving at once gives,
/// through agents changing teams, events without a team, repeat customers, late
/// events, wrap timeouts, expiry, the spill and a checkpoint.
#[test]
fn putting_derivations_off_changes_no_flush() {
    use crate::source::sim::{SimConfig, Simulator};
    use spill::MemSpill;
    let mut sim = Simulator::new(SimConfig {
        // Repeats hours apart: a repeat re-derives a contact near the horizon's edge,
        // which expiry then takes.
        customers: 4_000,
        ..small_centre(21)
    });
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(21);
    let events: Vec<Event<'static>> = (0..40_000)
        .filter_map(|_| {
            decode(sim.next_line().1.as_bytes())
                .ok()
                .map(Event::into_owned)
        })
        .map(|mut ev| {
            if ev.team.is_some() {
                match rng.random_range(0..1000) {
                    // An agent moves to another team (and back, later).
                    0..20 => {
                        let a = ev.agent_id.as_deref().unwrap_or("");
                        ev.team = Some(format!("moved-{}", a.len() % 3).into());
                    }
                    // Events without a team: their facts wait for the agent's.
                    20..120 => ev.team = None,
                    _ => {}
                }
            }
            ev
        })
        .collect();
    // Flushes every few minutes of event time, and hours apart (expiry then runs
    // between flushes, as events move the clock).
    for (spilling, flush_every) in [(false, 1_500), (true, 1_500), (false, 16_000)] {
        let cfg = |live: bool| EngineConfig {
            live,
            pack_after_ms: 60_000,
            spill_after_ms: 0,
            // Short enough that contacts expire within the run.
            correction_horizon_ms: 4 * 3_600_000,
            ..EngineConfig::default()
        };
        let (mut now, mut later) = (Engine::new(cfg(true)), Engine::new(cfg(false)));
        if spilling {
            now.set_spill(Box::new(MemSpill::default()));
            later.set_spill(Box::new(MemSpill::default()));
        }
        let (mut rows, mut most_stale) = (0, 0);
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(now.apply(ev.clone()), later.apply(ev.clone()), "{ev:?}");
            most_stale = most_stale.max(later.stale.len());
            if i % flush_every == flush_every - 1 {
                let (a, b) = (now.flush(), later.flush());
                same_deltas(&a, &b, &format!("flush after {i} events, spill {spilling}"));
                rows += a.len();
            }
            if i == 20_000 {
                let bytes = later.checkpoint().unwrap();
                let sp = later.take_spill();
                later = Engine::restore(later.config().clone(), &bytes).unwrap();
                if let Some(sp) = sp {
                    later.set_spill(sp);
                }
            }
        }
        same_deltas(
            &now.flush_all(),
            &later.finish(),
            &format!("end, spill {spilling}"),
        );
        assert_eq!(now.stats(), later.stats());
        assert!(rows > 1_000, "compared only {rows} rows");
        assert!(
            most_stale > 100,
            "derivations were not put off ({most_stale})"
        );
    }
}

/// Equal delta lists, or the first difference (the whole lists run to megabytes).
fn same_deltas(a: &[SnapshotDelta], b: &[SnapshotDelta], what: &str) {
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!(
            "{what}: {} and {} deltas, first difference at {i}:\n{:?}\n{:?}",
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        );
    }
}

/// A repeat contact changes its customer's earlier contact's FCR; when that contact
/// leaves at the horizon in the same step, it leaves re-derived (an engine that puts
/// derivations off settles them before expiry), not with its FCR as it was.
#[test]
fn a_contact_expiring_right_after_a_repeat_leaves_re_derived() {
    let run = |live: bool| {
        let mut e = Engine::new(EngineConfig {
            live,
            correction_horizon_ms: 3_600_000,
            ..EngineConfig::default()
        });
        let mut out = BTreeMap::new();
        for x in [
            offered_for("o1", "c1", 0.0, "kim"),
            with_agent("a1", "contact.answered", "c1", 10.0, "ann"),
            plain("e1", "contact.ended", "c1", 60.0),
            plain("r1", "contact.resolved", "c1", 70.0),
        ] {
            e.apply(x);
        }
        merge(&mut out, e.flush());
        // Past the horizon (1 h) plus the allowed lateness (5 min) from c1's last event:
        // this offer re-derives c1 (a repeat: no longer FCR), then expiry takes c1.
        e.apply(offered_for("o2", "c2", 3_600.0 + 300.0 + 80.0, "kim"));
        assert!(!e.contacts.contains_key(&key_of("c1")), "c1 did not expire");
        merge(&mut out, e.flush_all());
        out
    };
    let (now, later) = (run(true), run(false));
    let fcr = |out: &BTreeMap<Key, Acc>| -> i64 {
        out.iter()
            .filter(|(k, _)| k.2 == Dimension::All && k.0 == Interval::Day)
            .map(|(_, a)| a.fcr)
            .sum()
    };
    assert_eq!(fcr(&now), 0, "{now:?}");
    assert_eq!(now, later);
}

/// A contact is listed for packing once, however many events change it: the queue
/// held an entry per event before, and packing looked up each one (a cache miss per
/// stale entry). Packing still happens, checkpoints and flushes included.
#[test]
fn a_contact_is_listed_for_packing_once() {
    use crate::source::sim::Simulator;
    let mut sim = Simulator::new(small_centre(5));
    let mut e = Engine::new(EngineConfig {
        pack_after_ms: 60_000,
        live: false,
        ..EngineConfig::default()
    });
    let (mut most_packed, mut applied) = (0, 0);
    for i in 0..30_000 {
        let line = sim.next_line().1;
        let Ok(ev) = decode(line.as_bytes()) else {
            continue;
        };
        e.apply(ev.into_owned());
        applied += 1;
        if i % 100 != 99 {
            continue;
        }
        if i % 700 == 699 {
            e.flush();
            most_packed = most_packed.max(e.contacts_packed());
        }
        let listed = e.contacts.values().filter(|c| c.queued).count();
        let entries = e.pack_queue.len() + e.open_queue.len();
        assert!(
            entries <= e.contacts.len() && listed <= entries,
            "after {i} events: {entries} entries, {listed} listed, {} contacts",
            e.contacts.len()
        );
        // Every unpacked contact is listed, so it will be packed.
        assert!(e.contacts.values().all(|c| c.queued || c.packed.is_some()));
        if i == 14_999 {
            let bytes = e.checkpoint().unwrap();
            e = Engine::restore(e.config().clone(), &bytes).unwrap();
        }
    }
    assert!(applied > 25_000);
    assert!(most_packed > 100, "packing never happened ({most_packed})");
}

#[test]
fn a_contact_gets_room_for_a_typical_contact_at_once() {
    let mut e = Engine::new(EngineConfig {
        live: false,
        ..EngineConfig::default()
    });
    let room = |e: &Engine| e.contacts[&key_of("c1")].events.capacity();
    e.apply(offered("e1", "c1", 0.0, "q"));
    assert!(room(&e) >= FIRST_EVENTS, "room for {} events", room(&e));
    let first = e.contacts[&key_of("c1")].events.as_ptr();
    for i in 1..FIRST_EVENTS {
        e.apply(with_agent(
            &format!("r{i}"),
            "contact.routed",
            "c1",
            i as f64,
            "a1",
        ));
    }
    assert_eq!(e.contacts[&key_of("c1")].events.len(), FIRST_EVENTS);
    // Not moved: no reallocation (and no copy) while the list filled.
    assert_eq!(e.contacts[&key_of("c1")].events.as_ptr(), first);
    // Packed, it is held at its exact length; a new event unpacks it and the list
    // grows past the first room as a vector does.
    e.contacts.get_mut(&key_of("c1")).unwrap().pack(e.unknown);
    e.apply(with_agent("e99", "contact.routed", "c1", 99.0, "a1"));
    assert_eq!(e.contacts[&key_of("c1")].events.len(), FIRST_EVENTS + 1);
    assert!(room(&e) > FIRST_EVENTS);
}
