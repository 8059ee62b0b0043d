//! `Retry-After` (RFC 9110 section 10.2.3): delta-seconds, or an HTTP date in any of the three
//! formats of section 5.6.7 that recipients must accept. The value is the provider's, so it is
//! parsed without trusting its range: delays saturate instead of overflowing, and the policy's
//! cap (`refresh.retry_after_max`) is applied by the caller, which knows the policy.
//!
//! Not the `httpdate` crate: it reads RFC 850's two-digit year with a fixed 1970 pivot where
//! RFC 9110 requires the 50-year rule, and it refuses a wrong weekday or a date before 1970,
//! which this parser reads as a date (the weekday is redundant) and as no delay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host::unix_time::since_epoch;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The delay a `Retry-After` value asks for, from `now`; `None` when it is neither
/// delta-seconds nor an HTTP date. A date in the past is no delay; delta-seconds too large for
/// a `u64` saturate (RFC 9110 allows any number of digits).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let when = http_date(value, now)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37 1994`). `now` places
/// RFC 850's two-digit year (section 5.6.7: more than 50 years ahead means the past century).
fn http_date(value: &str, now: SystemTime) -> Option<SystemTime> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let (year, month, day, time) = match fields.as_slice() {
        [day_name, day, month, year, time, "GMT"] if is_day(day_name, &DAYS) => (
            four_digits(year)?,
            month_number(month)?,
            two_digits(day)?,
            *time,
        ),
        [day_name, date, time, "GMT"] if is_day(day_name, &LONG_DAYS) => {
            let mut parts = date.split('-');
            let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let year = century(two_digits(yy)?, now);
            (year, month_number(month)?, two_digits(day)?, *time)
        }
        // asctime pads a one-digit day with a space, which the split has already eaten.
        [day_name, month, day, time, year] if DAYS.contains(day_name) => {
            let day = digits::<1>(day).or_else(|| two_digits(day))?;
            (four_digits(year)?, month_number(month)?, day, *time)
        }
        _ => return None,
    };
    let (hour, minute, second) = clock(time)?;
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    // Before 1970 is as good as now for a delay; the cast is safe for years 0000-9999.
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// `Sun,` in IMF-fixdate, `Sunday,` in RFC 850.
fn is_day(field: &str, names: &[&str]) -> bool {
    field.strip_suffix(',').is_some_and(|d| names.contains(&d))
}

fn digits<const N: usize>(s: &str) -> Option<u32> {
    (s.len() == N && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn two_digits(s: &str) -> Option<u32> {
    digits::<2>(s)
}

fn four_digits(s: &str) -> Option<u32> {
    digits::<4>(s)
}

fn month_number(s: &str) -> Option<u32> {
    MONTHS.iter().position(|m| *m == s).map(|i| i as u32 + 1)
}

/// `HH:MM:SS`; a leap second (60) is accepted as RFC 9110 allows.
fn clock(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (h, m, sec) = (two_digits(h)?, two_digits(m)?, two_digits(sec)?);
    (h < 24 && m < 60 && sec <= 60).then_some((h, m, sec))
}

/// The year of RFC 850's two-digit `yy`: the latest year ending in `yy` that is at most 50
/// years after `now` (one more than 50 years ahead is taken for the past century's).
fn century(yy: u32, now: SystemTime) -> u32 {
    let days = since_epoch(now).as_secs() / 86_400;
    // Days to years is close enough here: the rule is about decades. A clock past year 9999
    // reads as 9999, the last year a four-digit date can name.
    let this_year = (1970 + days / 146_097 * 400 + days % 146_097 * 400 / 146_097).min(9999) as u32;
    let latest = this_year + 50;
    let year = latest - latest % 100 + yy;
    if year > latest { year - 100 } else { year }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1994-11-06 08:49:37 UTC, the example of RFC 9110.
    fn example() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn delta_seconds_saturate() {
        let now = example();
        assert_eq!(parse_retry_after("120", now), secs(120));
        assert_eq!(parse_retry_after(" 0 ", now), secs(0));
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            secs(u64::MAX)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            secs(u64::MAX)
        );
    }

    #[test]
    fn the_three_date_formats_of_rfc_9110() {
        // Thirty seconds after the example, in each format.
        let now = example();
        for date in [
            "Sun, 06 Nov 1994 08:50:07 GMT",
            "Sunday, 06-Nov-94 08:50:07 GMT",
            "Sun Nov  6 08:50:07 1994",
        ] {
            assert_eq!(parse_retry_after(date, now), secs(30), "{date}");
        }
        // A date already past is no delay.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            secs(0)
        );
        assert_eq!(parse_retry_after("Sun Nov 06 08:00:00 1994", now), secs(0));
    }

    #[test]
    fn far_dates_are_parsed_not_overflowed() {
        let now = example();
        let end = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert_eq!(end, Duration::from_secs(253_402_300_799 - 784_111_777));
        assert_eq!(
            parse_retry_after("Fri Dec 31 23:59:59 9999", now),
            Some(end)
        );
        // Leap days exist only in leap years.
        assert!(parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", now).is_some());
        assert_eq!(
            parse_retry_after("Sat, 29 Feb 2025 00:00:00 GMT", now),
            None
        );
    }

    #[test]
    fn rfc_850_years_more_than_50_years_ahead_are_the_past_century() {
        // In 1994, "44" is 2044 (50 years ahead) and "45" is 1945 (past: no delay).
        let now = example();
        let y2044 = parse_retry_after("Wednesday, 06-Nov-44 08:49:37 GMT", now).unwrap();
        assert!(y2044 > Duration::from_secs(49 * 365 * 86_400), "{y2044:?}");
        assert_eq!(
            parse_retry_after("Tuesday, 06-Nov-45 08:49:37 GMT", now),
            secs(0)
        );
    }

    #[test]
    fn anything_else_is_no_retry_after() {
        let now = example();
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "+30",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Noe 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 06 Nov 19940 08:49:37 GMT",
            "Funday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 94",
            "Sun Nov +6 08:49:37 1994",
            "\u{0}\u{7f}",
            "日, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_text_and_any_clock_never_panic(value in ".{0,48}", now_secs in any::<u64>()) {
                let now = UNIX_EPOCH.checked_add(Duration::from_secs(now_secs)).unwrap_or(UNIX_EPOCH);
                let _ = parse_retry_after(&value, now);
                let _ = parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now);
            }

            #[test]
            fn every_valid_imf_fixdate_round_trips(secs in 0u64..253_402_300_800) {
                let now = UNIX_EPOCH;
                let days = secs / 86_400;
                let (y, m, d) = civil(days as i64);
                let rem = secs % 86_400;
                let date = format!(
                    "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
                    DAYS[((days + 3) % 7) as usize],
                    MONTHS[m as usize - 1],
                    rem / 3600, rem % 3600 / 60, rem % 60
                );
                prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(secs)), "{}", date);
            }
        }

        /// Howard Hinnant's `civil_from_days`, the inverse of `days_from_civil`.
        fn civil(days: i64) -> (i64, i64, i64) {
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            (yoe + era * 400 + i64::from(m <= 2), m, d)
        }
    }
}
