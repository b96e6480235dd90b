//! Hostile input (issue 7): every kind of bad message a producer we do not control
//! can send gets its documented reject reason, quickly, without a panic.

use super::{Decoder, FIXED_SCALE, RejectReason, decode};

/// A valid `contact.ended` with one field replaced by `field_json` (`"k":v`), or
/// appended when `k` is new.
fn ended_with(field: &str, value: &str) -> String {
    let mut fields = vec![
        ("event_id", "\"e1\"".to_owned()),
        ("type", "\"contact.ended\"".to_owned()),
        ("ts", "1795396502123".to_owned()),
        ("contact_id", "\"c1\"".to_owned()),
    ];
    match fields.iter_mut().find(|(k, _)| *k == field) {
        Some(f) => f.1 = value.to_owned(),
        None => fields.push((field, value.to_owned())),
    }
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn reason_of(bytes: &[u8]) -> RejectReason {
    match decode(bytes) {
        Ok(e) => panic!(
            "accepted {:?}: {e:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
        ),
        Err(r) => r.reason,
    }
}

fn assert_reason(bytes: &[u8], want: RejectReason) {
    assert_eq!(
        reason_of(bytes),
        want,
        "{:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
    );
}

#[test]
fn the_base_message_is_valid() {
    assert!(decode(ended_with("talk_ms", "1").as_bytes()).is_ok());
}

#[test]
fn not_json_and_truncated_json() {
    for m in [
        "hello",
        "{",
        "{\"event_id\":\"e1\",\"type\":\"contact.ended\"",
        "{\"event_id\":\"e1\",\"type\":\"contact.end",
        "{'event_id':'e1'}",
        "{\"event_id\":\"e1\",}",
        "{} {}",
        "\u{feff}{}",
    ] {
        assert_reason(m.as_bytes(), RejectReason::InvalidJson);
    }
    let full = ended_with("talk_ms", "1500");
    for cut in 1..full.len() {
        // Every proper prefix of a valid event is rejected, none accepted.
        assert!(decode(&full.as_bytes()[..cut]).is_err(), "prefix {cut}");
    }
}

#[test]
fn json_that_is_not_an_object() {
    for m in [
        "[]",
        "[1,2]",
        "\"contact.ended\"",
        "42",
        "-1.5",
        "null",
        "true",
    ] {
        assert_reason(m.as_bytes(), RejectReason::NotObject);
    }
}

#[test]
fn an_array_is_not_decoded_as_an_event() {
    // Regression: serde's derived struct accepted a sequence positionally.
    assert_reason(
        br#"["e1","contact.ended",1795396502123,"c1"]"#,
        RejectReason::NotObject,
    );
    assert_reason(b"  [\"e1\"]  ", RejectReason::NotObject);
    assert_reason(b"[1,", RejectReason::InvalidJson);
}

#[test]
fn depth_bomb_is_bounded() {
    // No stack overflow at any depth: values that are skipped (the top level of a
    // non-object, unknown fields, a `ts` of the wrong type) are skipped iteratively by
    // the parser, and a known field stops at its first wrong token. Allowed up to 16 MiB
    // here; by default the size limit (64 KiB) bounds the work first.
    let big = Decoder {
        max_message_bytes: 16 << 20,
        ..Decoder::default()
    };
    let depth = 1_000_000;
    let bomb = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let obj_bomb = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let t = std::time::Instant::now();
    let reason = |m: &str| {
        big.decode(m.as_bytes())
            .map(|e| e.kind)
            .map_err(|r| r.reason)
    };
    assert_eq!(reason(&bomb), Err(RejectReason::NotObject));
    assert_eq!(reason(&obj_bomb), Err(RejectReason::MissingField));
    assert_eq!(
        reason(&ended_with("ts", &bomb)),
        Err(RejectReason::InvalidTimestamp)
    );
    assert_eq!(
        reason(&ended_with("queue", &bomb)),
        Err(RejectReason::InvalidField)
    );
    // Unknown fields are ignored, however deep.
    assert_eq!(
        reason(&ended_with("extra", &bomb)),
        Ok(super::EventType::ContactEnded)
    );
    // Unbalanced: still no overflow, just broken JSON.
    assert_eq!(reason(&"[".repeat(depth)), Err(RejectReason::InvalidJson));
    assert_eq!(
        reason(&ended_with("extra", &"[".repeat(depth))),
        Err(RejectReason::InvalidJson)
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // At the default size limit it is not even parsed.
    assert_reason(bomb.as_bytes(), RejectReason::Oversize);
}

#[test]
fn ten_megabyte_message() {
    let huge = ended_with("note", &format!("\"{}\"", "x".repeat(10 << 20)));
    let t = std::time::Instant::now();
    assert_reason(huge.as_bytes(), RejectReason::Oversize);
    assert!(t.elapsed() < std::time::Duration::from_millis(100));
    // Allowed by the configuration, the same message is parsed and the unknown field
    // ignored; a 10 MB id is too long.
    let big = Decoder {
        max_message_bytes: 16 << 20,
        ..Decoder::default()
    };
    assert!(big.decode(huge.as_bytes()).is_ok());
    let huge_id = ended_with("contact_id", &format!("\"{}\"", "c".repeat(10 << 20)));
    assert_eq!(
        big.decode(huge_id.as_bytes()).unwrap_err().reason,
        RejectReason::InvalidField
    );
}

#[test]
fn invalid_utf8_and_nul_bytes() {
    // Invalid UTF-8 inside a known string, as the whole message, or overlong.
    let mut bad_id = ended_with("contact_id", "\"c\u{1}\"").into_bytes();
    let pos = bad_id.iter().position(|b| *b == 1).unwrap();
    bad_id[pos] = 0xff;
    assert_reason(&bad_id, RejectReason::InvalidJson);
    assert_reason(b"\xff\xfe\x00{", RejectReason::InvalidJson);
    assert_reason(b"{\"event_id\":\"\xc0\xaf\"}", RejectReason::InvalidJson);
    // Every kind of ill-formed sequence, at every offset of a 90-byte run of an id in a
    // ~200-byte message (the usual message is ~170 bytes), so that it also straddles
    // and follows the SIMD check's 64-byte block boundary at byte 128, is caught before
    // the flat path takes the string as it is.
    let long_id = format!("\"{}\u{1}{}\"", "c".repeat(90), "d".repeat(40));
    for seq in [
        &b"\xed\xa0\x80"[..], // a surrogate
        b"\xe0\x80\xaf",      // overlong
        b"\xf4\x90\x80\x80",  // above U+10FFFF
        b"\xe2\x82",          // cut short
        b"\x80",              // a lone continuation byte
    ] {
        for shift in 0..90 {
            let mut msg = ended_with("contact_id", &long_id).into_bytes();
            let at = msg.iter().position(|b| *b == 1).unwrap() - shift;
            msg.splice(at..=at, seq.iter().copied());
            assert_reason(&msg, RejectReason::InvalidJson);
        }
    }
    // A raw NUL (or any control byte) inside a string is not JSON; outside one neither.
    let mut raw_nul = ended_with("contact_id", "\"c\u{1}\"").into_bytes();
    raw_nul[pos] = 0;
    assert_reason(&raw_nul, RejectReason::InvalidJson);
    let mut nul_outside = ended_with("talk_ms", "1").into_bytes();
    nul_outside.insert(1, 0);
    assert_reason(&nul_outside, RejectReason::InvalidJson);
    assert_reason(b"\0", RejectReason::InvalidJson);
    assert_reason(b"", RejectReason::InvalidJson);
    // An escaped NUL is valid JSON, but not in an identifier.
    for field in ["event_id", "contact_id", "queue", "agent_id", "customer_id"] {
        assert_reason(
            ended_with(field, "\"a\\u0000b\"").as_bytes(),
            RejectReason::InvalidField,
        );
        // Unescaped DEL and a C1 control (U+0085, two bytes) are valid JSON strings,
        // read by the flat path, which lets validation skip the search for controls
        // only in a message of printable ASCII: these are not.
        for v in ["\"a\u{7f}b\"", "\"a\u{85}b\"", "\"\u{85}\""] {
            assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidField);
        }
    }
}

#[test]
fn huge_and_empty_ids() {
    let at_limit = format!("\"{}\"", "x".repeat(128));
    assert!(decode(ended_with("contact_id", &at_limit).as_bytes()).is_ok());
    let over = format!("\"{}\"", "x".repeat(129));
    // Multi-byte characters count in bytes: 43 × 3 bytes = 129.
    let over_utf8 = format!("\"{}\"", "€".repeat(43));
    for field in [
        "event_id",
        "contact_id",
        "queue",
        "agent_id",
        "team",
        "customer_id",
        "to_agent_id",
        "to_queue",
    ] {
        for v in [&over, &over_utf8, &"\"\"".to_owned()] {
            assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidField);
        }
    }
}

#[test]
fn numbers_out_of_range() {
    for (field, v) in [
        ("talk_ms", "1e20"),
        ("hold_ms", "2592000001"),
        ("wrap_ms", "18446744073709551616"),
        ("amount", "1e13"),
        // Beyond f64 altogether: the parser reports it, classified as a bad field.
        ("talk_ms", "1e400"),
        ("amount", "-1e400"),
    ] {
        assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidField);
    }
    for ts in [
        "9223372036854775808",
        "99999999999999999999999",
        "-9223372036854775809",
    ] {
        assert_reason(
            ended_with("ts", ts).as_bytes(),
            RejectReason::InvalidTimestamp,
        );
    }
    // Beyond f64 the parser does not say which field it was in.
    assert_reason(
        ended_with("ts", "1e400").as_bytes(),
        RejectReason::InvalidField,
    );
}

#[test]
fn negative_and_nan_like_durations_and_amounts() {
    for field in ["talk_ms", "hold_ms", "wrap_ms", "amount"] {
        for v in [
            "-1",
            "-0.5",
            "\"NaN\"",
            "\"Infinity\"",
            "\"12\"",
            "true",
            "[]",
        ] {
            assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidField);
        }
        // Not JSON at all.
        for v in ["NaN", "Infinity", "-Infinity", "0x10", "+1"] {
            assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidJson);
        }
    }
    // -0 is zero, not negative.
    let zero = ended_with("talk_ms", "-0");
    let e = decode(zero.as_bytes()).unwrap();
    assert_eq!(e.talk_ms, Some(0));
}

#[test]
fn scores_outside_the_scale() {
    let survey = |score: &str| {
        format!(
            r#"{{"event_id":"e","type":"survey.responded","ts":1795396502123,"contact_id":"c","score":{score}}}"#
        )
    };
    let qa = |score: &str| {
        format!(
            r#"{{"event_id":"e","type":"qa.scored","ts":1795396502123,"contact_id":"c","agent_id":"a","score":{score}}}"#
        )
    };
    for s in ["0", "6", "4.5", "-1", "1e300", "1e400", "\"5\""] {
        assert_reason(survey(s).as_bytes(), RejectReason::InvalidField);
    }
    for s in ["100.01", "-0.1", "1e300", "\"90\""] {
        assert_reason(qa(s).as_bytes(), RejectReason::InvalidField);
    }
    assert_eq!(
        decode(survey("5").as_bytes()).unwrap().score,
        Some(5 * FIXED_SCALE)
    );
    assert_eq!(
        decode(qa("100").as_bytes()).unwrap().score,
        Some(100 * FIXED_SCALE)
    );
}

#[test]
fn unknown_type_and_wrong_field_types() {
    for t in ["\"contact.exploded\"", "\"CONTACT.ENDED\"", "\"\""] {
        assert_reason(ended_with("type", t).as_bytes(), RejectReason::UnknownType);
    }
    for (field, v) in [
        ("type", "7"),
        ("event_id", "1"),
        ("contact_id", "{}"),
        ("queue", "[\"q\"]"),
        ("channel", "true"),
        ("channel", "\"fax\""),
        ("state", "\"asleep\""),
        ("agent_id", "1.5"),
    ] {
        assert_reason(ended_with(field, v).as_bytes(), RejectReason::InvalidField);
    }
    // A field given twice.
    let twice = ended_with("talk_ms", "1").replace("}", ",\"talk_ms\":2}");
    assert_reason(twice.as_bytes(), RejectReason::InvalidField);
}

#[test]
fn missing_required_fields() {
    for field in ["event_id", "type", "ts", "contact_id"] {
        assert_reason(
            ended_with(field, "null").as_bytes(),
            RejectReason::MissingField,
        );
    }
    assert_reason(
        br#"{"event_id":"e","type":"contact.offered","ts":1795396502123,"contact_id":"c","channel":"voice"}"#,
        RejectReason::MissingField,
    );
    assert_reason(
        br#"{"event_id":"e","type":"contact.converted","ts":1795396502123,"contact_id":"c"}"#,
        RejectReason::MissingField,
    );
    assert_reason(b"{}", RejectReason::MissingField);
}

#[test]
fn timestamps_in_bad_formats_and_bogus_years() {
    for ts in [
        "\"yesterday\"",
        "\"2026-11-23\"",
        "\"2026-11-23T09:15:02\"",
        "\"23/11/2026 09:15\"",
        "\"2026-13-01T00:00:00Z\"",
        "\"2026-11-23T25:00:00Z\"",
        "\"1795396502123\"",
        "1795396502123.0",
        "1.795396502123e12",
        "true",
        "[]",
        "{}",
        // Year 1970: epoch 0, epoch seconds sent by mistake, the text form.
        "0",
        "-1",
        "1795396502",
        "\"1970-01-01T00:00:00Z\"",
        // Year 9999 and the edge of the accepted range.
        "\"9999-12-31T23:59:59Z\"",
        "253402300799000",
        "\"2100-01-01T00:00:00Z\"",
        "\"1999-12-31T23:59:59.999Z\"",
    ] {
        assert_reason(
            ended_with("ts", ts).as_bytes(),
            RejectReason::InvalidTimestamp,
        );
    }
    assert!(decode(ended_with("ts", "\"2000-01-01T00:00:00Z\"").as_bytes()).is_ok());
    assert!(decode(ended_with("ts", "\"2099-12-31T23:59:59.999Z\"").as_bytes()).is_ok());
}
