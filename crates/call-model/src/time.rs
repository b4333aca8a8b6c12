//! Timestamps as the Call resource writes them: UTC, millisecond precision, `2025-01-13T12:47:31.000Z`.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A point in time, normalised to UTC and truncated to whole milliseconds.
///
/// Outreach writes timestamps with milliseconds; truncating on input means what is stored, filtered
/// on and written back out are the same value, so a range filter never disagrees with what a
/// client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not an RFC 3339 date-time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 date-time such as 2025-01-13T12:47:31.000Z")]
pub struct TimestampError;

impl Timestamp {
    /// The canonical text (UTC, milliseconds, `Z`) of a timestamp that has one: every stored
    /// and written one; `None` for one chrono must write (its `Display`).
    pub(crate) fn canonical_bytes(self) -> Option<[u8; 24]> {
        canonical::write(self)
    }

    /// Milliseconds since the Unix epoch.
    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Truncates a chrono date-time to milliseconds.
    pub fn from_datetime(at: DateTime<Utc>) -> Timestamp {
        Timestamp(at.timestamp_millis())
    }

    /// Parses any RFC 3339 form (any offset, any fraction) into UTC milliseconds.
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        if let Some(at) = canonical::parse(text.as_bytes()) {
            return Ok(at);
        }
        DateTime::parse_from_rfc3339(text)
            .map(|at| Timestamp(at.with_timezone(&Utc).timestamp_millis()))
            .map_err(|_| TimestampError)
    }

    /// A calendar date, `YYYY-MM-DD`, as the start of that day in UTC.
    pub fn parse_date(text: &str) -> Result<Timestamp, TimestampError> {
        if text.len() != 10 {
            return Err(TimestampError);
        }
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|at| Timestamp(at.and_utc().timestamp_millis()))
            .ok_or(TimestampError)
    }

    /// The chrono value.
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = canonical::write(*self) {
            // The bytes are ASCII digits and separators.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The canonical text as a plain string, without the formatting machinery.
        match canonical::write(*self) {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }
}

/// Reads a timestamp from a string, borrowed where the input allows, without allocating one.
struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date-time string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
        Timestamp::parse(text).map_err(E::custom)
    }
}

/// The canonical form, `YYYY-MM-DDTHH:MM:SS.mmmZ` (years 0 to 9999), read and written by hand:
/// it is every stored and every written timestamp, and chrono's general RFC 3339 parser and
/// formatter (with its `String`) took a tenth of the time of reading a call and writing its
/// document. Anything else is left to chrono, so the results are chrono's (a test compares
/// them over the whole range).
mod canonical {
    use super::Timestamp;

    const MILLIS_PER_DAY: i64 = 86_400_000;
    const LEN: usize = 24;

    /// The timestamp in the canonical form, or `None` for any other form (or a date chrono
    /// would refuse, or a leap second), which the caller hands to chrono.
    pub(super) fn parse(text: &[u8]) -> Option<Timestamp> {
        if text.len() != LEN
            || text[4] != b'-'
            || text[7] != b'-'
            || text[10] != b'T'
            || text[13] != b':'
            || text[16] != b':'
            || text[19] != b'.'
            || text[23] != b'Z'
        {
            return None;
        }
        let number = |from: usize, to: usize| -> Option<i64> {
            text[from..to].iter().try_fold(0i64, |n, &digit| {
                digit
                    .is_ascii_digit()
                    .then(|| n * 10 + i64::from(digit - b'0'))
            })
        };
        let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
        let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
        let millis = number(20, 23)?;
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let time = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
        Some(Timestamp(days * MILLIS_PER_DAY + time))
    }

    /// The canonical text of `at`, or `None` outside years 0 to 9999.
    pub(super) fn write(at: Timestamp) -> Option<[u8; LEN]> {
        let days = at.0.div_euclid(MILLIS_PER_DAY);
        let time = at.0.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: i64| {
            for slot in out[at..at + width].iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, time / 3_600_000);
        put(14, 2, time / 60_000 % 60);
        put(17, 2, time / 1000 % 60);
        put(20, 3, time % 1000);
        Some(out)
    }

    fn is_leap(year: i64) -> bool {
        year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
    }

    fn days_in_month(year: i64, month: i64) -> i64 {
        match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The proleptic Gregorian date of a day since 1970-01-01 (H. Hinnant's
    /// `civil_from_days`).
    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let days = days + 719_468;
        let era = days.div_euclid(146_097);
        let day_of_era = days - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_utc_with_milliseconds() {
        let at = Timestamp::parse("2025-01-13T13:47:31.123456+01:00").unwrap();
        assert_eq!(at.to_string(), "2025-01-13T12:47:31.123Z");
        assert_eq!(
            Timestamp::parse("2025-01-13T12:47:31Z")
                .unwrap()
                .to_string(),
            "2025-01-13T12:47:31.000Z"
        );
    }

    /// The canonical form's own reader and writer agree with chrono everywhere: over the whole
    /// range of years it writes, at both ends of it and around leap days, and on malformed
    /// variants of the canonical text.
    #[test]
    fn the_canonical_form_is_read_and_written_as_chrono_does() {
        let chrono_text = |at: Timestamp| {
            at.to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        let chrono_parse = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc).timestamp_millis())
                .ok()
        };
        let first = Timestamp::parse("0000-01-01T00:00:00.000Z")
            .unwrap()
            .millis();
        let last = Timestamp::parse("9999-12-31T23:59:59.999Z")
            .unwrap()
            .millis();
        let mut samples = vec![first, last, first - 1, last + 1, 0, -1, 951_782_400_000];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let span = (last - first) as u64 + 3;
            samples.push(first - 1 + (state % span) as i64);
        }
        for millis in samples {
            let at = Timestamp(millis);
            let text = at.to_string();
            assert_eq!(text, chrono_text(at), "{millis}");
            assert_eq!(serde_json::to_string(&at).unwrap(), format!("\"{text}\""));
            assert_eq!(
                Timestamp::parse(&text).ok().map(Timestamp::millis),
                chrono_parse(&text)
            );
        }
        for text in [
            "2024-02-29T12:00:00.000Z",
            "2023-02-29T12:00:00.000Z",
            "1900-02-29T00:00:00.000Z",
            "2000-02-29T00:00:00.000Z",
            "2025-04-31T00:00:00.000Z",
            "2025-00-10T00:00:00.000Z",
            "2025-01-10T24:00:00.000Z",
            "2025-01-10T23:60:00.000Z",
            "2016-12-31T23:59:60.000Z",
            "2025-01-10t10:00:00.000Z",
            "2025-01-10 10:00:00.000Z",
            "2025-01-10T10:00:00.000z",
            "2025-01-10T10:00:0x.000Z",
            "+025-01-10T10:00:00.000Z",
            "2025-01-10T10:00:00,000Z",
        ] {
            assert_eq!(
                Timestamp::parse(text).ok().map(Timestamp::millis),
                chrono_parse(text),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        assert_eq!(Timestamp::parse("yesterday"), Err(TimestampError));
        assert_eq!(
            Timestamp::parse("2025-13-01T00:00:00Z"),
            Err(TimestampError)
        );
        assert_eq!(Timestamp::parse("2025-01-13"), Err(TimestampError));
    }
}
