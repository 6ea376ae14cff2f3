//! Property tests of the deadline header parsers and encoders: no input makes them
//! panic, and what is encoded parses back (exactly, or rounded down by less than
//! one unit).

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use palisade_timeout::deadline::header::{
    DEADLINE_MS, GRPC_TIMEOUT, HeaderError, encode_deadline_ms, encode_grpc_timeout,
    parse_deadline_ms, parse_grpc_timeout, timeout_from_headers,
};
use proptest::prelude::*;

/// Arbitrary durations, weighted towards the ranges where the encoding changes.
fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..=99_999_999).prop_map(Duration::from_nanos),
        (0u64..=200_000_000_000).prop_map(Duration::from_micros),
        (0u64..=20_000_000_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// Bytes that look like header values, some of them nearly valid.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32),
        "[0-9]{0,12}[HMSmunsx]?".prop_map(String::into_bytes),
        "[-+ ]?[0-9]{1,9}(\\.[0-9])?[HMSmun ]?".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parsers_never_panic_on_any_bytes(bytes in header_bytes()) {
        let grpc = parse_grpc_timeout(&bytes);
        let ms = parse_deadline_ms(&bytes);
        // What parses is bounded by the grammar's limits.
        if let Ok(d) = grpc {
            prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
        }
        if let Ok(d) = ms {
            prop_assert!(d <= Duration::from_millis(9_999_999_999));
            prop_assert!(bytes.iter().all(u8::is_ascii_digit) && bytes.len() <= 10);
        }
        if bytes.is_empty() {
            prop_assert_eq!(grpc, Err(HeaderError::Empty));
            prop_assert_eq!(ms, Err(HeaderError::Empty));
        }
        // Through a header map too, when http accepts the bytes as a value.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, value.clone());
            headers.append(DEADLINE_MS, value);
            let mut errors = 0;
            let left = timeout_from_headers(&headers, |_, _| errors += 1);
            prop_assert_eq!(left.is_none(), errors == 2);
        }
    }

    #[test]
    fn parsers_never_panic_on_any_string(s in "\\PC{0,24}") {
        let _ = parse_grpc_timeout(&s);
        let _ = parse_deadline_ms(&s);
    }

    #[test]
    fn whole_milliseconds_round_trip_exactly(ms in 0u64..=99_999_999) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_grpc_timeout(encode_grpc_timeout(d)), Ok(d));
        prop_assert_eq!(parse_deadline_ms(encode_deadline_ms(d)), Ok(d));
    }

    #[test]
    fn large_whole_milliseconds_round_trip_in_the_ms_header(ms in 0u64..=9_999_999_999) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_deadline_ms(encode_deadline_ms(d)), Ok(d));
    }

    #[test]
    fn any_duration_round_trips_rounded_down(d in durations()) {
        let grpc = parse_grpc_timeout(encode_grpc_timeout(d));
        prop_assert!(grpc.is_ok(), "{:?} encoded unparseably", d);
        let grpc = grpc.unwrap_or_default();
        prop_assert!(grpc <= d, "grpc-timeout extended {:?} to {:?}", d, grpc);
        // Within one unit of the unit chosen, unless the value saturated.
        let unit = if d.as_millis() <= 99_999_999 {
            Duration::from_millis(1)
        } else if d.as_secs() <= 99_999_999 {
            Duration::from_secs(1)
        } else if d.as_secs() / 60 <= 99_999_999 {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(3600)
        };
        let saturated = d.as_secs() / 3600 > 99_999_999;
        prop_assert!(saturated || d - grpc < unit, "{:?} lost {:?}", d, d - grpc);

        let ms = parse_deadline_ms(encode_deadline_ms(d));
        prop_assert!(ms.is_ok());
        let ms = ms.unwrap_or_default();
        prop_assert!(ms <= d);
        let saturated = d.as_millis() > 9_999_999_999;
        prop_assert!(saturated || d - ms < Duration::from_millis(1));
    }

    #[test]
    fn every_valid_grpc_value_parses(n in 0u64..=99_999_999, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
        let text = format!("{n}{unit}");
        let expected = match unit {
            'H' => Duration::from_secs(n * 3600),
            'M' => Duration::from_secs(n * 60),
            'S' => Duration::from_secs(n),
            'm' => Duration::from_millis(n),
            'u' => Duration::from_micros(n),
            _ => Duration::from_nanos(n),
        };
        prop_assert_eq!(parse_grpc_timeout(&text), Ok(expected));
    }
}
