//! Sizes in config files: a whole number of bytes (`16384`) or a string with a binary unit
//! (`"16KiB"`, `"1MiB"`, `"64MiB"`, `"512B"`).

use std::fmt;

use serde::{de, Deserialize, Deserializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }

    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024 * 1024)
    }

    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} does not start with a whole number"))?;
        let scale = match unit {
            "" | "B" => 1,
            "KiB" => 1024,
            "MiB" => 1024 * 1024,
            "GiB" => 1024 * 1024 * 1024,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit (use B, KiB, MiB or GiB)"
                ))
            }
        };
        n.checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    /// As `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}B"),
        }
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a string such as \"1MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("512B"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("16KiB"), Ok(ByteSize::kib(16)));
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize::mib(1)));
        for bad in ["1MB", "1.5MiB", "MiB", "-1", "1 MiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
