//! RFC 3339 (UTC) for the ledger's Unix-microsecond times, on top of [`crate::clock`]'s civil
//! calendar, so the commands need no date-time crate.

use crate::clock;

/// `2024-05-01T07:30:45.123456Z`: the full precision the ledger keeps (JSON output).
pub fn rfc3339_micros(us: i64) -> String {
    let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    format!("{}.{frac:06}Z", civil(secs))
}

/// `2024-05-01T07:30:45Z`: whole seconds, for tables a person reads.
pub fn rfc3339_secs(us: i64) -> String {
    format!("{}Z", civil(us.div_euclid(1_000_000)))
}

fn civil(secs: i64) -> String {
    // `format_unix` writes `YYYY-MM-DD HH:mm:ss`; RFC 3339 puts a `T` between the two.
    clock::format_unix(secs).replacen(' ', "T", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_714_548_645_000_042),
            "2024-05-01T07:30:45.000042Z"
        );
        assert_eq!(rfc3339_secs(1_714_548_645_999_999), "2024-05-01T07:30:45Z");
        // Leap day, and before the epoch (floor, not truncation toward zero).
        assert_eq!(rfc3339_secs(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339_secs(-1), "1969-12-31T23:59:59Z");
    }
}
