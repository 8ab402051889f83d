//! `X-Request-Id`: one id per request, kept from the client when it is a sane token, so the
//! gateway's log line, the backend's logs and the client can be matched up.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

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

/// 16 hex digits: a per-process random key hashing a counter, unique within a process and
/// unlikely to repeat across restarts.
fn generate() -> HeaderValue {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEY.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let n = h.finish();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 16];
    for (i, c) in text.iter_mut().enumerate() {
        *c = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0000000000000000"))
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
            assert_eq!(h.get_all(&HEADER).iter().count(), 1);
        }
        let (a, b) = (ensure(&mut HeaderMap::new()), ensure(&mut HeaderMap::new()));
        assert_ne!(a, b);
    }
}
