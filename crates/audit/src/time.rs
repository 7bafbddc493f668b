//! Timestamps: milliseconds since the Unix epoch, written as RFC 3339 UTC.
//!
//! Written by hand rather than with a date crate: the log needs exactly one output form
//! (`YYYY-MM-DDTHH:MM:SS.mmmZ`, always UTC, always milliseconds, so that the text is
//! canonical and sorts as it compares) and one lenient input form for `--since`; the
//! calendar arithmetic is the proleptic Gregorian day count, a dozen lines.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text is not an RFC 3339 date-time.
    #[error("`{0}` is not an RFC 3339 date-time such as 2025-01-31T12:00:00Z")]
    Syntax(String),
    /// The time is before 1970 or after 9999.
    #[error("`{0}` is outside the years 1970 to 9999")]
    Range(String),
}

/// A point in time, in whole milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339's four-digit year can name.
const MAX_MILLIS: u64 = 253_402_300_799_999;

impl Timestamp {
    /// The current system time (the epoch if the clock reads before it).
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self::from_unix_millis(u64::try_from(since.as_millis()).unwrap_or(MAX_MILLIS))
    }

    /// The instant `millis` milliseconds after the epoch, clamped to year 9999.
    pub fn from_unix_millis(millis: u64) -> Self {
        Self(millis.min(MAX_MILLIS))
    }

    /// The instant `secs` seconds after the epoch, clamped to year 9999.
    pub fn from_unix_secs(secs: u64) -> Self {
        Self::from_unix_millis(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub fn unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// Parses an RFC 3339 date-time (`T` or `t` or space between date and time, optional
    /// fraction, `Z` or a `±HH:MM` offset). Fractions finer than a millisecond are dropped.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let syntax = || TimeError::Syntax(text.to_owned());
        let b = text.as_bytes();
        let num = |from: usize, len: usize| -> Result<i64, TimeError> {
            let digits = b.get(from..from + len).ok_or_else(syntax)?;
            digits.iter().try_fold(0i64, |acc, d| {
                d.is_ascii_digit()
                    .then(|| acc * 10 + i64::from(d - b'0'))
                    .ok_or_else(syntax)
            })
        };
        let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
        if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
            return Err(syntax());
        }
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        let mut pos = 19;
        let mut millis = 0i64;
        if at(pos, b".") {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                if pos - start < 3 {
                    millis = millis * 10 + i64::from(b.get(pos).map_or(0, |d| d - b'0'));
                }
                pos += 1;
            }
            if pos == start {
                return Err(syntax());
            }
            for _ in (pos - start)..3 {
                millis *= 10;
            }
        }
        let offset_minutes = if at(pos, b"Zz") && pos + 1 == b.len() {
            0
        } else if at(pos, b"+-") && at(pos + 3, b":") && pos + 6 == b.len() {
            let sign = if at(pos, b"-") { -1 } else { 1 };
            let (oh, om) = (num(pos + 1, 2)?, num(pos + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(syntax());
            }
            sign * (oh * 60 + om)
        } else {
            return Err(syntax());
        };
        // RFC 3339 §5.7: second 60 is a leap second; it is read as the following second.
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(syntax());
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        let total = secs * 1000 + millis;
        u64::try_from(total)
            .ok()
            .filter(|m| *m <= MAX_MILLIS)
            .map(Self)
            .ok_or_else(|| TimeError::Range(text.to_owned()))
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (eras of 400 years).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = i64::try_from(self.0).unwrap_or(0);
        let (secs, ms) = (millis / 1000, millis % 1000);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_instants_format_canonically() {
        assert_eq!(
            Timestamp::from_unix_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-02-29 is a leap day (divisible by 400).
        assert_eq!(
            Timestamp::from_unix_millis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(MAX_MILLIS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn formatted_time_parses_back_to_itself() {
        for millis in [0, 1, 999, 86_399_999, 1_700_000_000_000, 4_102_444_800_000] {
            let t = Timestamp::from_unix_millis(millis);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t));
        }
    }

    #[test]
    fn offsets_and_fractions_are_understood() {
        let utc = Timestamp::parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T13:30:00+01:30"),
            Ok(utc)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.5Z").map(Timestamp::unix_millis),
            Ok(utc.unix_millis() + 500)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.123456789Z").map(Timestamp::unix_millis),
            Ok(utc.unix_millis() + 123)
        );
    }

    #[test]
    fn malformed_or_impossible_times_are_refused() {
        for bad in [
            "",
            "2025-01-31",
            "2025-01-31T12:00:00",
            "2025-02-30T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-31T24:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00+0100",
            "2025-01-31T12:00:00Zjunk",
            "１９７０-01-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Timestamp::parse_rfc3339("1969-12-31T23:59:59Z"),
            Err(TimeError::Range(_))
        ));
    }
}
