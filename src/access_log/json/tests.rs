use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::access_log::tests::request as record;

fn parse(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[test]
fn control_characters_quotes_and_backslashes_are_escaped() {
    let mut out = Vec::new();
    string(&mut out, b"a\"b\\c\nd\re\tf\x00g\x1fh\x7fi");
    assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\re\\tf\\u0000g\\u001fh\x7fi\"".to_vec());
    assert_eq!(parse(&out), "a\"b\\c\nd\re\tf\u{0}g\u{1f}h\u{7f}i");
}

#[test]
fn bytes_that_are_not_utf8_become_replacement_characters() {
    let mut out = Vec::new();
    string(&mut out, b"/caf\xc3\xa9/\xff\xfe/x\xc3");
    assert_eq!(parse(&out), "/café/\u{FFFD}\u{FFFD}/x\u{FFFD}");
}

#[test]
fn durations_are_written_as_serde_json_writes_the_rounded_f64() {
    for micros in [0u64, 1, 9, 10, 100, 999, 1000, 1500, 1050, 1005, 12_000, 123_456_789, 60_000_001] {
        let mut out = Vec::new();
        millis(&mut out, Duration::from_micros(micros));
        let ours = String::from_utf8(out).unwrap();
        assert_eq!(ours.parse::<f64>().unwrap(), micros as f64 / 1e3, "{micros} µs: {ours}");
        assert_eq!(ours, serde_json::to_string(&(micros as f64 / 1e3)).unwrap(), "{micros} µs");
    }
    let mut out = Vec::new();
    millis(&mut out, Duration::from_nanos(1_499_500));
    assert_eq!(out, b"1.5", "rounded to the nearest microsecond");
}

#[test]
fn times_are_rfc3339_utc_with_milliseconds_across_seconds() {
    let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_599_999);
    for (offset, want) in
        [(0, "2025-12-31T23:59:59.999Z"), (1, "2026-01-01T00:00:00.000Z"), (124, "2026-01-01T00:00:00.123Z")]
    {
        let mut out = Vec::new();
        write_time(&mut out, base + Duration::from_millis(offset));
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

proptest! {
    /// The word-at-a-time check says what the table says, for any bytes
    /// (lengths around the word size, every byte value likely).
    #[test]
    fn plain_agrees_with_the_table(bytes in proptest::collection::vec(
        prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\')], 0..40))
    {
        prop_assert_eq!(plain(&bytes), bytes.iter().all(|&b| PLAIN[usize::from(b)]), "{:?}", bytes);
    }

    /// The date and time of day agree with humantime's RFC 3339 up to 9999.
    #[test]
    fn date_time_agrees_with_humantime(secs in 0u64..253_402_300_800) {
        let ours = date_time(secs);
        let theirs = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        prop_assert_eq!(std::str::from_utf8(&ours).unwrap(), &theirs[..19]);
    }

    /// Any bytes in a path or method: the line parses as JSON and carries
    /// the same text back (lossily decoded where it was not UTF-8).
    #[test]
    fn hostile_bytes_always_give_a_json_line_that_round_trips(
        path in proptest::collection::vec(any::<u8>(), 0..64),
        method in "[\\x00-\\x7f]{0,12}",
        route in any::<String>(),
    ) {
        let path_text = String::from_utf8_lossy(&path).into_owned();
        let mut rec = record(&method, &path_text);
        rec.route = Some(&route);
        let mut out = Vec::new();
        write_line(&mut out, &rec, SystemTime::UNIX_EPOCH);
        prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        prop_assert_eq!(out.last(), Some(&b'\n'));
        let v = parse(&out);
        prop_assert_eq!(v["path"].as_str(), Some(path_text.as_str()));
        prop_assert_eq!(v["method"].as_str(), Some(method.as_str()));
        prop_assert_eq!(v["route"].as_str(), Some(route.as_str()));
        // Raw bytes go through the same escaping.
        let mut raw = Vec::new();
        string(&mut raw, &path);
        let decoded = parse(&raw);
        prop_assert_eq!(decoded.as_str(), Some(path_text.as_str()));
    }
}
