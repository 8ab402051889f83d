//! Durations in config files: an integer with a unit, `250ms`, `10s`, `5m`, `1h`, `7d` (days:
//! the ledger keeps rows for `90d`, and `payments --since 7d` reads as one would say it).
//! A bare number is refused, so `timeout = 30` cannot be read as milliseconds by one person
//! and seconds by another.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A [`Duration`] read from `"<integer><ms|s|m|h|d>"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(s: u64) -> Self {
        Span(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Span(Duration::from_millis(ms))
    }

    pub fn parse(text: &str) -> Result<Span, String> {
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("{text:?} has no unit: write e.g. \"{text}s\" (units: ms, s, m, h, d)")
        })?;
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} does not start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit (use ms, s, m, h or d)"
                ))
            }
        };
        Ok(Span(d))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reads the string form; a number is refused with the string to write instead, since
/// `connect_timeout = 2` is the first thing anyone types and "expected a string" does not say
/// what string.
impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Span;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"2s\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Span, E> {
                Span::parse(text).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Span, E> {
                Err(E::custom(bare_number(n, &format!("{n}s"))))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Span, E> {
                Err(E::custom(bare_number(n, &format!("{}s", n.unsigned_abs()))))
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Span, E> {
                // Seconds, most likely: 1.5 is 1500ms.
                let ms = (n.abs() * 1000.0).round();
                Err(E::custom(bare_number(n, &format!("{ms}ms"))))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The message for a duration written as a number, with the string to write instead.
fn bare_number(written: impl fmt::Display, instead: &str) -> String {
    format!(
        "{written} is a bare number: write a duration with its unit, in quotes: \"{instead}\" (units: ms, s, m, h, d)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(Span::parse("250ms"), Ok(Span::millis(250)));
        assert_eq!(Span::parse("10s"), Ok(Span::secs(10)));
        assert_eq!(Span::parse("2m"), Ok(Span::secs(120)));
        assert_eq!(Span::parse("1h"), Ok(Span::secs(3600)));
        assert_eq!(Span::parse("7d"), Ok(Span::secs(7 * 86_400)));
        assert_eq!(Span::parse("90d"), Ok(Span::secs(7_776_000)));
        assert_eq!(Span::parse("0d"), Ok(Span::secs(0)));
        // Saturates instead of overflowing; config validation bounds what is accepted.
        assert_eq!(
            Span::parse("18446744073709551615d"),
            Ok(Span::secs(u64::MAX))
        );
        for bad in [
            "10", "s", "1.5s", "10 s", "-1s", "10sec", "", "1D", "d", "7days", "1w",
        ] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Span::millis(1500).to_string(), "1500ms");
        assert_eq!(
            Span::parse("10").unwrap_err(),
            "\"10\" has no unit: write e.g. \"10s\" (units: ms, s, m, h, d)"
        );
        assert_eq!(Span::secs(2).to_string(), "2s");
    }
}
