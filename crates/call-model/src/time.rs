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
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
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
