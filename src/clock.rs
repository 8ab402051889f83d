//! Civil time without a date-time crate: Click's `sign_time` is `YYYY-MM-DD HH:mm:ss` with no
//! zone, and logs and `check` show certificate expiry dates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now as `YYYY-MM-DD HH:mm:ss` in UTC+5 (Tashkent), the zone Click's `sign_time` most likely uses.
pub fn tashkent_now() -> String {
    format_unix(unix_now() + 5 * 3600)
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:mm:ss` (proleptic Gregorian, no zone).
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads Click's `sign_time` (`YYYY-MM-DD HH:mm:ss`, no zone) as a local time `offset_secs`
/// east of UTC; returns Unix seconds, or None when it is not a valid date-time of that shape.
pub fn parse_sign_time(text: &str, offset_secs: i32) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[usize::try_from(mo - 1).ok()?] {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - i64::from(offset_secs))
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_unix(1_714_566_645), "2024-05-01 12:30:45");
        assert_eq!(format_unix(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn sign_time_round_trips_in_a_zone() {
        for t in [0, 951_782_400, 1_714_566_645, 1_735_689_599] {
            assert_eq!(parse_sign_time(&format_unix(t), 0), Some(t));
            assert_eq!(
                parse_sign_time(&format_unix(t + 5 * 3600), 5 * 3600),
                Some(t)
            );
        }
        for bad in [
            "2024-02-30 00:00:00",
            "2023-02-29 00:00:00",
            "2024-05-01T12:30:45",
            "2024-05-01 24:00:00",
            "2024-5-1 1:2:3",
            "",
            "2024-05-01 12:30:4x",
        ] {
            assert_eq!(parse_sign_time(bad, 0), None, "{bad}");
        }
        assert_eq!(
            parse_sign_time("2024-02-29 00:00:00", 0),
            Some(1_709_164_800)
        );
    }
}
