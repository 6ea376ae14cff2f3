//! Reading and writing the two deadline headers Palisade understands.
//!
//! - `grpc-timeout` ([`GRPC_TIMEOUT`]), as the gRPC over HTTP/2 spec defines it: 1 to
//!   8 ASCII digits followed by one unit, `H` (hours), `M` (minutes), `S` (seconds),
//!   `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds). `"250m"` is 250 ms.
//! - `x-palisade-deadline-ms` ([`DEADLINE_MS`]): the time left, in whole
//!   milliseconds, as 1 to 10 ASCII digits. `"250"` is 250 ms.
//!
//! Both carry the time *left* (relative to when the request is sent), not a point in
//! time, so the two hosts' clocks need not agree. The parsers take bytes (a header
//! value need not be UTF-8), never panic, and say what was wrong ([`HeaderError`]).
//! Signs, spaces, decimal points and anything else outside the grammar are
//! [`Malformed`](HeaderError::Malformed). The encoders round *down*, so a deadline is
//! never extended by crossing a hop.
//!
//! ```
//! use palisade_timeout::deadline::header::{
//!     HeaderError, encode_deadline_ms, encode_grpc_timeout, parse_deadline_ms,
//!     parse_grpc_timeout,
//! };
//! use std::time::Duration;
//!
//! assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
//! assert_eq!(parse_grpc_timeout("3S"), Ok(Duration::from_secs(3)));
//! assert_eq!(parse_grpc_timeout("-5m"), Err(HeaderError::Malformed));
//! assert_eq!(parse_grpc_timeout("123456789m"), Err(HeaderError::TooLarge));
//! assert_eq!(parse_grpc_timeout("5"), Err(HeaderError::BadUnit));
//! assert_eq!(parse_deadline_ms(b"1500"), Ok(Duration::from_millis(1500)));
//! assert_eq!(parse_deadline_ms(b"\xff"), Err(HeaderError::Malformed));
//!
//! assert_eq!(encode_grpc_timeout(Duration::from_micros(1_500_900)), "1500m");
//! assert_eq!(encode_deadline_ms(Duration::from_micros(1_500_900)), "1500");
//! ```

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `grpc-timeout` header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Palisade's `x-palisade-deadline-ms` header.
pub const DEADLINE_MS: HeaderName = HeaderName::from_static("x-palisade-deadline-ms");

/// The most digits a `grpc-timeout` value may have.
pub const GRPC_TIMEOUT_MAX_DIGITS: usize = 8;

/// The most digits an `x-palisade-deadline-ms` value may have.
pub const DEADLINE_MS_MAX_DIGITS: usize = 10;

const GRPC_MAX_VALUE: u64 = 99_999_999;
const DEADLINE_MS_MAX_VALUE: u64 = 9_999_999_999;

/// Why a deadline header value was refused. The [`as_str`](Self::as_str) words are
/// the `reason` label of `palisade_deadline_header_errors_total`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderError {
    /// The value was empty.
    Empty,
    /// The value is not in the header's grammar: a sign, a space, a decimal point, a
    /// non-digit, non-ASCII or non-UTF-8 bytes, or no digits at all.
    Malformed,
    /// `grpc-timeout` only: the unit is missing or is not one of `H M S m u n`.
    BadUnit,
    /// More digits than the header allows (8 for `grpc-timeout`, 10 for
    /// `x-palisade-deadline-ms`).
    TooLarge,
    /// The header appeared more than once in one request.
    Duplicate,
}

impl HeaderError {
    /// Every reason, in declaration order.
    pub const ALL: [HeaderError; 5] = [
        HeaderError::Empty,
        HeaderError::Malformed,
        HeaderError::BadUnit,
        HeaderError::TooLarge,
        HeaderError::Duplicate,
    ];

    /// The snake_case word used as the metric label and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            HeaderError::Empty => "empty",
            HeaderError::Malformed => "malformed",
            HeaderError::BadUnit => "bad_unit",
            HeaderError::TooLarge => "too_large",
            HeaderError::Duplicate => "duplicate",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::Empty => "empty value",
            HeaderError::Malformed => "malformed value",
            HeaderError::BadUnit => "missing or unknown unit",
            HeaderError::TooLarge => "too many digits",
            HeaderError::Duplicate => "header given more than once",
        })
    }
}

impl std::error::Error for HeaderError {}

/// One of the two deadline headers. The [`as_str`](Self::as_str) words (the header
/// names) are the `header` label of `palisade_deadline_header_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadlineHeader {
    /// `grpc-timeout`.
    GrpcTimeout,
    /// `x-palisade-deadline-ms`.
    DeadlineMs,
}

impl DeadlineHeader {
    /// Both headers.
    pub const ALL: [DeadlineHeader; 2] = [DeadlineHeader::GrpcTimeout, DeadlineHeader::DeadlineMs];

    /// The header's name, e.g. `grpc-timeout`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadlineHeader::GrpcTimeout => "grpc-timeout",
            DeadlineHeader::DeadlineMs => "x-palisade-deadline-ms",
        }
    }

    /// The header's name as an [`HeaderName`].
    pub fn name(self) -> HeaderName {
        match self {
            DeadlineHeader::GrpcTimeout => GRPC_TIMEOUT,
            DeadlineHeader::DeadlineMs => DEADLINE_MS,
        }
    }

    /// Parses a value of this header.
    pub fn parse(self, value: impl AsRef<[u8]>) -> Result<Duration, HeaderError> {
        match self {
            DeadlineHeader::GrpcTimeout => parse_grpc_timeout(value),
            DeadlineHeader::DeadlineMs => parse_deadline_ms(value),
        }
    }

    /// Encodes `timeout` as a value of this header (rounding down).
    pub fn encode(self, timeout: Duration) -> HeaderValue {
        match self {
            DeadlineHeader::GrpcTimeout => encode_grpc_timeout(timeout),
            DeadlineHeader::DeadlineMs => encode_deadline_ms(timeout),
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether the parser of this header can return `reason` (for zero-filling only
    /// the metric series that can move).
    pub(crate) const fn can_fail_with(self, reason: HeaderError) -> bool {
        !matches!(
            (self, reason),
            (DeadlineHeader::DeadlineMs, HeaderError::BadUnit)
        )
    }
}

impl fmt::Display for DeadlineHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads 1..=`max_digits` ASCII digits. Checks the grammar before the length, so a
/// long run of garbage is `Malformed`, a long run of digits `TooLarge`.
fn parse_digits(digits: &[u8], max_digits: usize) -> Result<u64, HeaderError> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::Malformed);
    }
    if digits.len() > max_digits {
        return Err(HeaderError::TooLarge);
    }
    // At most 10 digits: cannot overflow a u64.
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(value: impl AsRef<[u8]>) -> Result<Duration, HeaderError> {
    let value = value.as_ref();
    let Some((&unit, digits)) = value.split_last() else {
        return Err(HeaderError::Empty);
    };
    let unit: fn(u64) -> Duration = match unit {
        b'H' => |n| Duration::from_secs(n * 3600),
        b'M' => |n| Duration::from_secs(n * 60),
        b'S' => Duration::from_secs,
        b'm' => Duration::from_millis,
        b'u' => Duration::from_micros,
        b'n' => Duration::from_nanos,
        _ => {
            // "5" (no unit) and "5x" (unknown unit) are unit errors; "-", "5 " and
            // non-ASCII endings are not in the grammar at all.
            return Err(if unit.is_ascii_alphanumeric() {
                HeaderError::BadUnit
            } else {
                HeaderError::Malformed
            });
        }
    };
    // At most 99,999,999 hours: fits a Duration's u64 seconds.
    parse_digits(digits, GRPC_TIMEOUT_MAX_DIGITS).map(unit)
}

/// Parses an `x-palisade-deadline-ms` value: 1 to 10 ASCII digits of milliseconds.
pub fn parse_deadline_ms(value: impl AsRef<[u8]>) -> Result<Duration, HeaderError> {
    let value = value.as_ref();
    if value.is_empty() {
        return Err(HeaderError::Empty);
    }
    parse_digits(value, DEADLINE_MS_MAX_DIGITS).map(Duration::from_millis)
}

/// Writes `n` and an optional unit into a header value without a formatting
/// allocation (the header value itself owns its bytes).
fn header_value(n: u64, unit: Option<u8>) -> HeaderValue {
    let mut buf = [0u8; 21];
    let mut end = buf.len();
    if let Some(unit) = unit {
        end -= 1;
        buf[end] = unit;
    }
    let mut start = end;
    let mut n = n;
    loop {
        start -= 1;
        // `n % 10` is a single digit.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let end = if unit.is_some() { end + 1 } else { end };
    // Digits and an ASCII letter are always a valid header value.
    HeaderValue::from_bytes(&buf[start..end]).unwrap_or(HeaderValue::from_static("0"))
}

/// Encodes `timeout` as a `grpc-timeout` value, in whole milliseconds (`"<n>m"`,
/// rounded down) when that fits 8 digits (up to about 27.7 hours), else in whole
/// seconds, minutes or hours; saturates at `99999999H`.
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis();
    if millis <= u128::from(GRPC_MAX_VALUE) {
        // Checked above: fits a u64.
        return header_value(millis as u64, Some(b'm'));
    }
    let secs = timeout.as_secs();
    if secs <= GRPC_MAX_VALUE {
        return header_value(secs, Some(b'S'));
    }
    if secs / 60 <= GRPC_MAX_VALUE {
        return header_value(secs / 60, Some(b'M'));
    }
    header_value((secs / 3600).min(GRPC_MAX_VALUE), Some(b'H'))
}

/// Encodes `timeout` as an `x-palisade-deadline-ms` value: whole milliseconds,
/// rounded down, saturating at `9999999999` (about 115 days).
pub fn encode_deadline_ms(timeout: Duration) -> HeaderValue {
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    header_value(millis.min(DEADLINE_MS_MAX_VALUE), None)
}

/// Reads the time left that a request's headers carry: the shorter of
/// `grpc-timeout` and `x-palisade-deadline-ms` when both are readable, the readable
/// one when only one is, `None` when neither is. A header given more than once is
/// refused as [`Duplicate`](HeaderError::Duplicate). Every refused header is
/// reported to `on_error` and otherwise treated as absent.
///
/// ```
/// use http::HeaderMap;
/// use palisade_timeout::deadline::header::{DeadlineHeader, HeaderError, timeout_from_headers};
/// use std::time::Duration;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-timeout", "2S".parse().unwrap());
/// headers.insert("x-palisade-deadline-ms", "-1".parse().unwrap());
/// let mut errors = Vec::new();
/// let left = timeout_from_headers(&headers, |h, e| errors.push((h, e)));
/// assert_eq!(left, Some(Duration::from_secs(2)));
/// assert_eq!(errors, [(DeadlineHeader::DeadlineMs, HeaderError::Malformed)]);
/// ```
pub fn timeout_from_headers(
    headers: &HeaderMap,
    mut on_error: impl FnMut(DeadlineHeader, HeaderError),
) -> Option<Duration> {
    let mut shortest: Option<Duration> = None;
    for header in DeadlineHeader::ALL {
        let mut values = headers.get_all(header.name()).iter();
        let parsed = match (values.next(), values.next()) {
            (None, _) => continue,
            (Some(value), None) => header.parse(value),
            (Some(_), Some(_)) => Err(HeaderError::Duplicate),
        };
        match parsed {
            Ok(left) => shortest = Some(shortest.map_or(left, |s| s.min(left))),
            Err(e) => on_error(header, e),
        }
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_follows_the_spec() {
        let ok = |s: &str| parse_grpc_timeout(s).unwrap();
        assert_eq!(ok("1H"), Duration::from_secs(3600));
        assert_eq!(ok("2M"), Duration::from_secs(120));
        assert_eq!(ok("3S"), Duration::from_secs(3));
        assert_eq!(ok("4m"), Duration::from_millis(4));
        assert_eq!(ok("5u"), Duration::from_micros(5));
        assert_eq!(ok("6n"), Duration::from_nanos(6));
        assert_eq!(ok("0m"), Duration::ZERO);
        assert_eq!(ok("00000010m"), Duration::from_millis(10));
        assert_eq!(ok("99999999H"), Duration::from_secs(99_999_999 * 3600));

        let err = |s: &[u8]| parse_grpc_timeout(s).unwrap_err();
        assert_eq!(err(b""), HeaderError::Empty);
        assert_eq!(err(b"m"), HeaderError::Malformed);
        assert_eq!(err(b"-5m"), HeaderError::Malformed);
        assert_eq!(err(b"+5m"), HeaderError::Malformed);
        assert_eq!(err(b" 5m"), HeaderError::Malformed);
        assert_eq!(err(b"5 m"), HeaderError::Malformed);
        assert_eq!(err(b"5m "), HeaderError::Malformed);
        assert_eq!(err(b"1.5S"), HeaderError::Malformed);
        assert_eq!(err(b"\xff5m"), HeaderError::Malformed);
        assert_eq!(err(b"5\xff"), HeaderError::Malformed);
        assert_eq!(err(b"5"), HeaderError::BadUnit);
        assert_eq!(err(b"5s"), HeaderError::BadUnit);
        assert_eq!(err(b"5ms"), HeaderError::BadUnit);
        assert_eq!(err(b"123456789m"), HeaderError::TooLarge);
        assert_eq!(err(&[b'9'; 4096]), HeaderError::BadUnit);
        let mut huge = vec![b'9'; 4096];
        huge.push(b'H');
        assert_eq!(err(&huge), HeaderError::TooLarge);
    }

    #[test]
    fn deadline_ms_is_a_plain_count() {
        assert_eq!(parse_deadline_ms("0"), Ok(Duration::ZERO));
        assert_eq!(parse_deadline_ms("250"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_deadline_ms("9999999999"),
            Ok(Duration::from_millis(9_999_999_999))
        );
        assert_eq!(parse_deadline_ms(""), Err(HeaderError::Empty));
        assert_eq!(parse_deadline_ms("10000000000"), Err(HeaderError::TooLarge));
        assert_eq!(parse_deadline_ms("-1"), Err(HeaderError::Malformed));
        assert_eq!(parse_deadline_ms("1e3"), Err(HeaderError::Malformed));
        assert_eq!(parse_deadline_ms("250ms"), Err(HeaderError::Malformed));
        assert_eq!(parse_deadline_ms("２５０"), Err(HeaderError::Malformed));
    }

    #[test]
    fn encoders_round_down_and_saturate() {
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0m");
        assert_eq!(encode_grpc_timeout(Duration::from_nanos(999_999)), "0m");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(295)), "295m");
        assert_eq!(
            encode_grpc_timeout(Duration::from_millis(99_999_999)),
            "99999999m"
        );
        assert_eq!(
            encode_grpc_timeout(Duration::from_millis(100_000_000)),
            "100000S"
        );
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(100_000_000)),
            "1666666M"
        );
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(99_999_999 * 60 + 60)),
            "1666666H"
        );
        assert_eq!(encode_grpc_timeout(Duration::MAX), "99999999H");
        assert_eq!(encode_deadline_ms(Duration::from_millis(295)), "295");
        assert_eq!(encode_deadline_ms(Duration::MAX), "9999999999");
    }

    #[test]
    fn headers_combine_to_the_shorter_and_refuse_duplicates() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout_from_headers(&h, |_, _| panic!("no errors")), None);
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("300m"));
        h.insert(DEADLINE_MS, HeaderValue::from_static("200"));
        assert_eq!(
            timeout_from_headers(&h, |_, _| panic!("no errors")),
            Some(Duration::from_millis(200))
        );
        h.append(DEADLINE_MS, HeaderValue::from_static("100"));
        let mut errors = Vec::new();
        assert_eq!(
            timeout_from_headers(&h, |hd, e| errors.push((hd, e))),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            errors,
            [(DeadlineHeader::DeadlineMs, HeaderError::Duplicate)]
        );
    }
}
