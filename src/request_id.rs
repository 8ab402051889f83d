//! `X-Request-Id`: one id per request, kept from the client when it is a sane token, so the
//! gateway's log line, the backend's logs and the client can be matched up.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::click::hex;

pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Keeps a well-formed incoming id (1 to 64 of `[A-Za-z0-9._-]`), else sets a new one.
/// Returns the id in force.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&HEADER).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        let ok = (1..=64).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            return v.clone();
        }
    }
    let id = generate();
    headers.insert(HEADER.clone(), id.clone());
    id
}

/// 16 hex digits: a counter started at a random point, scrambled by splitmix64 (a bijection,
/// so ids never repeat within a process, and restarts start elsewhere). Ids need to be
/// unique, not secret.
fn generate() -> HeaderValue {
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    });
    let n = splitmix64(start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)));
    let mut text = [0u8; 16];
    hex::encode_into(&n.to_be_bytes(), &mut text);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0000000000000000"))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(&HEADER, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(ensure(&mut h), "abc-123_x.y");
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            let mut h = HeaderMap::new();
            h.insert(&HEADER, HeaderValue::from_str(bad).unwrap());
            let id = ensure(&mut h);
            assert_eq!(id.len(), 16, "{bad:?}");
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
                "{id:?}"
            );
            assert_eq!(h.get_all(&HEADER).iter().count(), 1);
        }
        let (a, b) = (ensure(&mut HeaderMap::new()), ensure(&mut HeaderMap::new()));
        assert_ne!(a, b);
    }
}
